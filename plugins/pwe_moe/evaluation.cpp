// What PWEMoE returns once its routers are set: the merged models θ(r) of the evaluated preference
// vectors (the approximate Pareto set, made lazily for the host to evaluate on every task's test
// split: the grid, method.eval_preferences and the random ones; each merged in place over the one
// before when that one is dropped) and the exported models of method.export.
#include <filesystem>
#include <iomanip>
#include <mutex>
#include <set>
#include <sstream>

#include "fusion/error.hpp"
#include "fusion/pareto.hpp"
#include "fusion/seed.hpp"
#include "pwe_moe.hpp"

namespace fusion::methods {

namespace fs = std::filesystem;

namespace {

// The models of the evaluated preference vectors, made one after another into one set of tensors:
// the first by merge_and_unload; each next one by merge_into over the last one's upscaled tensors
// when no one holds that model or any of those tensors any more (the host drops each model before
// it makes the next), else by merge_and_unload again. A grid of N points then allocates the
// upscaled tensors once instead of N times; the values are merge_and_unload's, bit for bit.
class ParetoSetMaker {
 public:
  explicit ParetoSetMaker(std::shared_ptr<const ParetoWeightEnsembling> pwe) : pwe_(std::move(pwe)) {}

  ConstModelPtr make(const std::vector<double>& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (last_ && only_mine()) {
      pwe_->merge_into(r, *last_);
    } else {
      last_ = pwe_->merge_and_unload(r);
    }
    return last_;
  }

 private:
  // Whether this maker holds the last model and its upscaled tensors alone (no model, tensor or
  // view of them elsewhere): then overwriting them changes nothing anyone can see.
  bool only_mine() const {
    if (last_.use_count() != 1) return false;
    for (const WeightEnsemblingGroup& g : pwe_->groups()) {
      for (size_t k = 0; k < g.keys.size(); ++k) {
        const at::Tensor* t = last_->parameters().find(g.keys[k]);
        // A view (merge's tensors are) keeps its base alive: one more owner of the storage.
        if (t == nullptr || t->use_count() != 1 || t->storage().use_count() != (t->is_view() ? 2 : 1)) return false;
        // what merge_into writes into (else a fresh model, rather than an error)
        if (t->scalar_type() != g.base[k].scalar_type() || !t->is_contiguous()) return false;
      }
    }
    return true;
  }

  std::shared_ptr<const ParetoWeightEnsembling> pwe_;
  std::mutex mutex_;
  ModelPtr last_;
};

}  // namespace

std::string PweMoeAlgorithm::preference_label(const std::vector<double>& r, int decimals) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(decimals) << "r=[";
  for (size_t i = 0; i < r.size(); ++i) o << (i ? "," : "") << r[i];
  o << "]";
  return o.str();
}

std::vector<std::vector<double>> PweMoeAlgorithm::evaluation_preferences(int64_t T, uint64_t seed) const {
  std::vector<std::vector<double>> out;
  if (options_.eval_grid) {
    if (T <= 3) {
      out = generate_simplex_grid(static_cast<int>(T), static_cast<int>(options_.eval_grid_m));
    } else {  // as the original did for eight tasks: equal weights, then each task alone
      out.emplace_back(static_cast<size_t>(T), 1.0 / static_cast<double>(T));
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> e(static_cast<size_t>(T), 0.0);
        e[static_cast<size_t>(t)] = 1.0;
        out.push_back(std::move(e));
      }
    }
  }
  for (int64_t i = 0; i < options_.eval_random; ++i)
    out.push_back(dirichlet_preference(T, options_.alpha, derive_seed(seed, 0x6576616cull, static_cast<uint64_t>(i))));
  return out;
}

void PweMoeAlgorithm::check_preference_sizes(size_t num_tasks) const {
  const std::pair<const std::vector<std::vector<double>>*, std::string> lists[] = {
      {&options_.eval_preferences, "method." + option_name(&PweMoeOptions::eval_preferences)},
      {&options_.export_preferences, "method." + option_name(&PweMoeOptions::export_preferences)}};
  for (const auto& [prefs, option] : lists)
    for (size_t i = 0; i < prefs->size(); ++i) {
      const auto& r = (*prefs)[i];
      FUSION_ENSURE(r.size() == num_tasks, option, "[", i, "]: the preference vector has ", r.size(),
                    " entries, expected one per task (T = ", num_tasks, ")");
    }
}

std::vector<std::vector<double>> PweMoeAlgorithm::checked_preferences(const ParetoWeightEnsembling& pwe,
                                                                      const std::vector<std::vector<double>>& prefs,
                                                                      const std::string& option) const {
  std::vector<std::vector<double>> out;
  for (size_t i = 0; i < prefs.size(); ++i)
    out.push_back(pwe.checked_preference(prefs[i], "method." + option + "[" + std::to_string(i) + "]"));
  return out;
}

void PweMoeAlgorithm::export_models(const ParetoWeightEnsembling& pwe, const std::vector<std::vector<double>>& exports,
                                    const ModelPool& models, Result& result, const Context& ctx) const {
  for (const std::vector<double>& r : exports) {
    ModelPtr m = pwe.merge_and_unload(r);
    std::string dir = preference_label(r, 4).substr(2);  // "[0.5000,0.5000]"
    for (char& c : dir)
      if (c == '[' || c == ']' || c == ',') c = '_';
    const fs::path out = ctx.run_dir() / "exports" / ("r" + dir);
    std::error_code ec;
    if (!communicator(ctx).is_main()) continue;  // several processes: rank 0 writes
    fs::create_directories(out.parent_path(), ec);
    models.save(*m, out);
    ctx.log().info(name_ + ": exported " + preference_label(r) + " to " + out.string());
    result.info["exports"].push_back({{"preference", r}, {"path", out.string()}});
  }
}

void PweMoeAlgorithm::add_pareto_set(std::shared_ptr<const ParetoWeightEnsembling> pwe,
                                     const std::vector<std::vector<double>>& chosen, Result& result,
                                     uint64_t seed) const {
  const auto generated = evaluation_preferences(pwe->num_tasks(), seed);
  const size_t n_grid = generated.size() - static_cast<size_t>(options_.eval_random);
  // grid, then the chosen ones (eval_preferences), then the random ones
  std::vector<std::pair<std::vector<double>, const char*>> prefs;
  for (size_t i = 0; i < n_grid; ++i) prefs.emplace_back(generated[i], "grid");
  for (const auto& r : chosen) prefs.emplace_back(r, "eval_preferences");
  for (size_t i = n_grid; i < generated.size(); ++i) prefs.emplace_back(generated[i], "random");
  // Over two tasks the grid runs along one line, r = (1 − t, t); over more it fills a simplex, and
  // chosen or random preferences are not in order: only the grid alone is a curve to draw as one.
  result.sweep = pwe->num_tasks() == 2 && options_.eval_random == 0 && chosen.empty();
  auto maker = std::make_shared<ParetoSetMaker>(pwe);
  std::set<std::string> labels;
  for (size_t i = 0; i < prefs.size(); ++i) {
    std::string label = preference_label(prefs[i].first);
    if (labels.count(label)) label = preference_label(prefs[i].first, 4);
    if (labels.count(label)) label += "#" + std::to_string(i);
    labels.insert(label);
    const std::vector<double> r = prefs[i].first;
    result.add_lazy(label, [maker, r]() { return maker->make(r); },
                    {{"preference", r}, {"source", prefs[i].second}});
  }
}

}  // namespace fusion::methods
