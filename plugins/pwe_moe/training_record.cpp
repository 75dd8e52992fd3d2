// The training record of a router checkpoint (training_record.hpp) and the options it holds
// (PweMoeAlgorithm::training_record).
#include "training_record.hpp"

#include "fusion/dtype.hpp"
#include "fusion/error.hpp"
#include "pwe_moe.hpp"

namespace fusion::methods {

namespace {

using json = nlohmann::json;

constexpr const char* kSections[] = {"run", "method", "modelpool"};

// The keys of `a` then those of `b` not in `a`, as the record holds them.
std::vector<std::string> union_of_keys(const json& a, const json& b) {
  std::vector<std::string> keys;
  for (auto it = a.begin(); it != a.end(); ++it) keys.push_back(it.key());
  for (auto it = b.begin(); it != b.end(); ++it)
    if (!a.contains(it.key())) keys.push_back(it.key());
  return keys;
}

}  // namespace

std::string shown_value(const json& v) {
  if (v.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + shown_value(v[i]);
    return out + "]";
  }
  return v.dump();
}

std::optional<json> training_record_of(const std::map<std::string, std::string>& metadata, const std::string& origin) {
  auto it = metadata.find(kTrainingRecordKey);
  if (it == metadata.end()) return std::nullopt;
  json record = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  bool ok = record.is_object();
  for (const char* s : kSections) ok = ok && record.contains(s) && record.at(s).is_object();
  FUSION_ENSURE(ok, origin, ": the checkpoint's metadata \"", kTrainingRecordKey,
                "\" is not a training record (a JSON object with \"run\", \"method\" and \"modelpool\")");
  return record;
}

TrainingComparison compare_training_records(const json& recorded, const json& current, int64_t checkpoint_step) {
  const std::string num_steps = option_name(&PweMoeOptions::num_steps);
  TrainingComparison out;
  for (const char* section : kSections) {
    const json& a = recorded.at(section);
    const json& b = current.at(section);
    for (const std::string& key : union_of_keys(a, b)) {
      const std::string was = a.contains(key) ? shown_value(a.at(key)) : "(none)";
      const std::string now = b.contains(key) ? shown_value(b.at(key)) : "(none)";
      if (was == now) continue;
      std::string difference = std::string(section) + "." + key + ": checkpoint " + was + ", config " + now;
      if (std::string(section) == "method" && key == num_steps && a.contains(key) && b.contains(key) &&
          a.at(key).is_number_integer() && b.at(key).is_number_integer()) {
        if (b.at(key).get<int64_t>() >= checkpoint_step) {
          out.num_steps_changed_from = a.at(key).get<int64_t>();
          continue;  // well defined: continue to the new count (docs/pwe_moe.md, "Resuming")
        }
        difference += " (below the checkpoint's step, " + std::to_string(checkpoint_step) + ")";
      }
      out.refused.push_back(difference);
    }
  }
  return out;
}

nlohmann::json PweMoeAlgorithm::training_record(const std::vector<std::string>& experts, const Context& ctx) const {
  using O = PweMoeOptions;
  using P = ParetoWeightEnsemblingOptions;
  const O& o = options_;
  json method = {{"name", name_},
                 {option_name(&P::init_lambda), o.model.init_lambda},
                 {option_name(&P::router_hidden_layers), o.model.router_hidden_layers},
                 {option_name(&P::upscale), o.model.upscale},
                 {option_name(&P::upscale_attn), o.model.upscale_attn},
                 {option_name(&O::lr), o.lr},
                 {option_name(&O::num_steps), o.num_steps},
                 {option_name(&O::save_interval), o.save_interval},
                 {option_name(&O::batch_size), o.batch_size},
                 {option_name(&O::alpha), o.alpha}};
  add_training_options(method);
  return {{"format", 1},
          {"run", {{"seed", ctx.seed()}, {"dtype", dtype_name(ctx.dtype())}}},
          {"method", std::move(method)},
          {"modelpool", {{"models", experts}}},
          {"lr_schedule", json::array({{{"from_step", 0}, {option_name(&O::num_steps), o.num_steps}}})}};
}

void PweMoeEpo::add_training_options(nlohmann::json& method) const {
  method[option_name(&PweMoeOptions::epo_eps)] = options_.epo_eps;
}

}  // namespace fusion::methods
