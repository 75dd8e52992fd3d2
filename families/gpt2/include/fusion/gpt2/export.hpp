#pragma once
/// Symbol visibility of libfusion_gpt2. The tree builds with hidden visibility; FUSION_GPT2_API marks
/// what the library exports (the tokenizer and, later, the model types), so each GPT-2 type exists
/// once in a process. Everything else stays inside the library.
#define FUSION_GPT2_API __attribute__((visibility("default")))
