#include <gtest/gtest.h>

#include "fusion/gpt2/tokenizer.hpp"

TEST(Gpt2PreTokenize, Placeholder) { EXPECT_EQ(fusion::gpt2::Gpt2Tokenizer::pre_tokenize("a b").size(), 2u); }
