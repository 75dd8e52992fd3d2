#pragma once
// Fixtures of the text_classification tests: temporary folders, a tiny byte-level tokenizer and tiny
// random GPT-2 checkpoints written as Hugging Face folders.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "error_of.hpp"
#include "fusion/context.hpp"
#include "fusion/gpt2/model.hpp"
#include "fusion/gpt2/tokenizer.hpp"

namespace fusion::text_classification::testing {

namespace fs = std::filesystem;
using fusion::testing::error_of;

inline fs::path data_dir() { return FUSION_TC_TEST_DATA; }
inline fs::path glue_dir() { return data_dir() / "glue"; }

/// A fresh, empty temporary folder, removed when the object goes.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("fusion_tc_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& p) const { return path_ / p; }

 private:
  fs::path path_;
};

inline void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

/// A context for tests: CPU, float32, no progress bars, warnings only, the run directory `run_dir`.
inline Context quiet_context(const fs::path& run_dir = {}) {
  Context::Settings s;
  s.progress = false;
  s.run_dir = run_dir;
  s.logger = std::make_shared<Logger>(LogLevel::Warn);
  return Context(s);
}

/// GPT-2's bytes→unicode table (the byte symbol of each byte, UTF-8).
inline std::vector<std::string> byte_symbols() {
  std::vector<int> cps(256, -1);
  for (int b = 0; b < 256; ++b)
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) cps[b] = b;
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (cps[b] < 0) cps[b] = 256 + n++;
  std::vector<std::string> out;
  for (int cp : cps) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

/// The tiny tokenizer's vocabulary: byte b is id b, "Ġt" 256, "he" 257, <|endoftext|> 258.
constexpr int64_t kTinyVocab = 259;
constexpr int64_t kTinyEos = 258;

/// Writes vocab.json and merges.txt of the tiny tokenizer into `dir`.
inline void write_tiny_tokenizer(const fs::path& dir) {
  const auto sym = byte_symbols();
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[sym[b]] = b;
  vocab[sym[' '] + "t"] = 256;
  vocab["he"] = 257;
  vocab["<|endoftext|>"] = kTinyEos;
  write_text(dir / "vocab.json", vocab.dump());
  write_text(dir / "merges.txt", "#version: 0.2\n" + sym[' '] + " t\nh e\n");
}

/// config.json of a tiny GPT-2 (vocabulary of the tiny tokenizer, 128 positions, d = 16, 2 layers);
/// `labels` non-empty: a GPT2ForSequenceClassification with those classes.
inline nlohmann::json tiny_config(const std::vector<std::string>& labels = {}, int64_t n_embd = 16) {
  nlohmann::json c = {{"model_type", "gpt2"}, {"vocab_size", kTinyVocab}, {"n_positions", 128},
                      {"n_embd", n_embd},     {"n_layer", 2},              {"n_head", 2},
                      {"bos_token_id", kTinyEos}, {"eos_token_id", kTinyEos}};
  if (labels.empty()) {
    c["architectures"] = {"GPT2Model"};
  } else {
    c["architectures"] = {"GPT2ForSequenceClassification"};
    c["pad_token_id"] = kTinyEos;
    nlohmann::json id2label = nlohmann::json::object(), label2id = nlohmann::json::object();
    for (size_t i = 0; i < labels.size(); ++i) {
      id2label[std::to_string(i)] = labels[i];
      label2id[labels[i]] = i;
    }
    c["id2label"] = id2label;
    c["label2id"] = label2id;
  }
  return c;
}

/// A random tiny GPT-2 body (GPT2Model).
inline std::shared_ptr<gpt2::Gpt2Model> tiny_body(uint64_t seed = 1) {
  const nlohmann::json c = tiny_config();
  const auto cfg = gpt2::Gpt2Config::from_json(c, "tiny");
  return std::make_shared<gpt2::Gpt2Model>(gpt2::Gpt2Model::random_parameters(cfg, gpt2::Gpt2Head::kNone, seed), c,
                                           gpt2::Gpt2Head::kNone);
}

/// A tiny GPT2ForSequenceClassification with `labels`, its body from `seed` and its own random head.
inline std::shared_ptr<gpt2::Gpt2Model> tiny_classifier(const std::vector<std::string>& labels, uint64_t seed,
                                                        int64_t n_embd = 16) {
  const nlohmann::json c = tiny_config(labels, n_embd);
  const auto cfg = gpt2::Gpt2Config::from_json(c, "tiny");
  StateDict p = gpt2::Gpt2Model::random_parameters(cfg, gpt2::Gpt2Head::kSequenceClassification, seed);
  // Larger head weights than N(0, 0.02), so predictions differ between rows and classes.
  p.set("score.weight", p.at("score.weight") * 50);
  return std::make_shared<gpt2::Gpt2Model>(p, c, gpt2::Gpt2Head::kSequenceClassification);
}

}  // namespace fusion::text_classification::testing
