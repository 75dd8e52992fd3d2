#include "pareto_weight_ensembling.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <map>
#include <sstream>

#include "fusion/error.hpp"
#include "fusion/merging.hpp"

namespace fusion::methods {

bool glob_match(const std::string& pattern, const std::string& name) {
  // Iterative wildcard match with backtracking to the last '*'.
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

}  // namespace

std::string upscale_pattern_problem(const std::vector<std::string>& patterns) {
  for (const std::string& p : patterns)
    if (p.size() <= 2 || p.compare(p.size() - 2, 2, ".*") != 0)
      return ": pattern '" + p + "' must end with \".*\" (it names a module, e.g. \"*.mlp.*\")";
  return "";
}

void ParetoWeightEnsembling::plan(ConstModelPtr pretrained) {
  // The options' own checks, for callers that build the options in code rather than from a config.
  using O = ParetoWeightEnsemblingOptions;
  const std::string upscale = "method." + option_name(&O::upscale);
  FUSION_ENSURE(options_.router_hidden_layers == 1 || options_.router_hidden_layers == 2, "method.",
                option_name(&O::router_hidden_layers), " = ", options_.router_hidden_layers, ": must be 1 or 2");
  FUSION_ENSURE(std::isfinite(options_.init_lambda), "method.", option_name(&O::init_lambda), " is not finite");
  pretrained_ = std::move(pretrained);
  std::vector<std::string> patterns = options_.upscale;
  // Attention modules as each family names them: CLIP's `self_attn`, GPT-2's `attn` (neither pattern
  // matches the other's keys; one that matches nothing is harmless beside one that does).
  if (options_.upscale_attn) {
    patterns.push_back("*.self_attn.*");
    patterns.push_back("*.attn.*");
  }
  FUSION_ENSURE(!patterns.empty(), upscale, " is empty: name at least one parameter group (e.g. \"*.mlp.*\")");
  const std::string bad = upscale_pattern_problem(patterns);
  FUSION_ENSURE(bad.empty(), upscale, bad);
  std::vector<std::string> modules;  // the patterns without their trailing ".*"
  for (const std::string& p : patterns) modules.push_back(p.substr(0, p.size() - 2));
  const StateDict& theta0 = pretrained_->parameters();
  std::map<std::string, size_t> group_index;
  for (const auto& [key, tensor] : theta0) {
    key_order_.push_back(key);
    std::string prefix;
    if (is_mergeable(tensor)) {
      // The shortest dotted prefix (a module, not the parameter itself) matching a pattern.
      for (size_t pos = key.find('.'); pos != std::string::npos && prefix.empty(); pos = key.find('.', pos + 1)) {
        const std::string cand = key.substr(0, pos);
        for (const std::string& m : modules)
          if (glob_match(m, cand)) {
            prefix = cand;
            break;
          }
      }
    }
    if (prefix.empty()) {
      rest_.set(key, tensor);
      if (is_mergeable(tensor)) merged_keys_.push_back(key);
      continue;
    }
    auto it = group_index.find(prefix);
    if (it == group_index.end()) {
      it = group_index.emplace(prefix, groups_.size()).first;
      groups_.push_back(WeightEnsemblingGroup{});
      groups_.back().prefix = prefix;
    }
    WeightEnsemblingGroup& g = groups_[it->second];
    g.keys.push_back(key);
    g.base.push_back(tensor);
    std::vector<int64_t> shape{num_tasks_};
    for (int64_t s : tensor.sizes()) shape.push_back(s);
    g.task_vectors.push_back(at::empty(shape, tensor.options()));
  }
  if (groups_.empty()) {
    std::vector<std::string> sample;
    for (size_t i = 0; i < key_order_.size() && i < 3; ++i) sample.push_back(key_order_[i]);
    FUSION_FAIL(method_, ": the upscale patterns [", join(patterns),
                "] match no parameter of the pretrained model (its keys look like ", join(sample), ")");
  }
  // Task-arithmetic accumulators, in the accumulation dtype, replacing rest_'s merged tensors.
  for (const std::string& key : merged_keys_) {
    const at::Tensor& t = theta0.at(key);
    rest_.set(key, at::zeros(t.sizes(), t.options().dtype(accumulation_dtype(t.scalar_type()))));
  }
}

void ParetoWeightEnsembling::add_expert(size_t t, const Model& expert, const std::string& name) {
  const StateDict& theta0 = pretrained_->parameters();
  check_same_layout(theta0, expert.parameters(), "pretrained", "expert '" + name + "'");
  c10::NoGradGuard no_grad;
  for (WeightEnsemblingGroup& g : groups_) {
    for (size_t k = 0; k < g.keys.size(); ++k) {
      at::Tensor slot = g.task_vectors[k].select(0, static_cast<int64_t>(t));
      slot.copy_(expert.parameters().at(g.keys[k]));
      slot.sub_(g.base[k]);
    }
  }
  for (const std::string& key : merged_keys_) {
    at::Tensor& acc = rest_.at(key);
    acc.add_(expert.parameters().at(key).to(acc.scalar_type()) - theta0.at(key).to(acc.scalar_type()));
  }
}

void ParetoWeightEnsembling::finish(at::Generator generator) {
  const StateDict& theta0 = pretrained_->parameters();
  c10::NoGradGuard no_grad;
  for (const std::string& key : merged_keys_) {
    const at::Tensor& base = theta0.at(key);
    at::Tensor acc = rest_.at(key);
    acc.mul_(options_.init_lambda).add_(base.to(acc.scalar_type()));
    rest_.set(key, acc.to(base.scalar_type()));
  }
  const int64_t T = num_tasks_;
  const at::Device device = pretrained_->parameters().begin()->second.device();
  for (WeightEnsemblingGroup& g : groups_) {
    auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
    if (options_.router_hidden_layers == 2) {
      g.router = {at::empty({2 * T, T}, opts), at::empty({2 * T}, opts), at::empty({T, 2 * T}, opts),
                  at::empty({T}, opts)};
      g.router_names = {g.prefix + ".gate.0.weight", g.prefix + ".gate.0.bias", g.prefix + ".gate.2.weight",
                        g.prefix + ".gate.2.bias"};
    } else {
      g.router = {at::empty({T, T}, opts), at::empty({T}, opts)};
      g.router_names = {g.prefix + ".gate.0.weight", g.prefix + ".gate.0.bias"};
    }
    for (at::Tensor& p : g.router) p.set_requires_grad(true);
  }
  compute_dtype_ = groups_.front().base.front().scalar_type();
  reset_routers(std::move(generator));
}

void ParetoWeightEnsembling::set_compute_dtype(at::ScalarType dtype) {
  FUSION_ENSURE(at::isFloatingType(dtype), method_, ": compute dtype ", dtype, " is not a floating-point type");
  compute_dtype_ = dtype;
  rest_compute_ = StateDict();
  if (dtype == groups_.front().base.front().scalar_type()) return;
  c10::NoGradGuard no_grad;
  for (const auto& [key, t] : rest_) rest_compute_.set(key, is_mergeable(t) ? t.to(dtype) : t);
}

StateDict ParetoWeightEnsembling::compute_parameters(const StateDict& merged) const {
  if (rest_compute_.empty()) return merged;
  StateDict out;
  for (const auto& [key, t] : merged) {
    const at::Tensor* rest = rest_compute_.find(key);
    out.set(key, rest ? *rest : t.to(compute_dtype_));
  }
  return out;
}

void ParetoWeightEnsembling::reset_routers(at::Generator generator) {
  c10::NoGradGuard no_grad;
  for (WeightEnsemblingGroup& g : groups_) {
    for (size_t i = 0; i < g.router.size(); ++i) {
      // Drawn on the CPU so the same seed gives the same routers on every device.
      at::Tensor v = at::empty(g.router[i].sizes(), at::kFloat);
      const bool weight = i % 2 == 0;
      const bool last = i + 1 == g.router.size();
      if (weight) v.normal_(0.0, 0.01, generator);
      else v.fill_(last ? options_.init_lambda : 0.0);
      g.router[i].copy_(v);
    }
  }
}

std::vector<at::Tensor> ParetoWeightEnsembling::router_parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& g : groups_) out.insert(out.end(), g.router.begin(), g.router.end());
  return out;
}

StateDict ParetoWeightEnsembling::router_state() const {
  StateDict sd;
  for (const auto& g : groups_)
    for (size_t i = 0; i < g.router.size(); ++i) sd.set(g.router_names[i], g.router[i]);
  return sd;
}

void ParetoWeightEnsembling::load_router_state(const StateDict& state, const std::string& origin) {
  c10::NoGradGuard no_grad;
  for (auto& g : groups_) {
    for (size_t i = 0; i < g.router.size(); ++i) {
      const at::Tensor* t = state.find(g.router_names[i]);
      FUSION_ENSURE(t != nullptr, origin, ": router weight '", g.router_names[i], "' is missing (was it trained with other ",
                    option_name(&ParetoWeightEnsemblingOptions::upscale), " patterns or ",
                    option_name(&ParetoWeightEnsemblingOptions::router_hidden_layers), "?)");
      FUSION_ENSURE(t->sizes() == g.router[i].sizes(), origin, ": router weight '", g.router_names[i], "' has shape ",
                    t->sizes(), ", expected ", g.router[i].sizes(), " (T = ", num_tasks_, ")");
      FUSION_ENSURE(at::isfinite(*t).all().item<bool>(), origin, ": router weight '", g.router_names[i],
                    "' is not finite");
      g.router[i].copy_(*t);
    }
  }
}

int64_t ParetoWeightEnsembling::num_router_parameters() const {
  int64_t n = 0;
  for (const auto& g : groups_)
    for (const auto& p : g.router) n += p.numel();
  return n;
}

int64_t ParetoWeightEnsembling::task_vector_bytes() const {
  int64_t n = 0;
  for (const auto& g : groups_)
    for (const auto& t : g.task_vectors) n += t.nbytes();
  return n;
}

std::string preference_problem(const std::vector<double>& r) {
  double sum = 0.0;
  for (size_t i = 0; i < r.size(); ++i) {
    if (!std::isfinite(r[i])) return fusion::detail::concat("preference entry ", i, " is not finite");
    if (!(r[i] >= 0)) return fusion::detail::concat("preference entry ", i, " is negative (", r[i], ")");
    sum += r[i];
  }
  return sum > 0 ? "" : "the preference vector is all zero";
}

std::vector<double> ParetoWeightEnsembling::checked_preference(const std::vector<double>& r,
                                                               const std::string& what) const {
  FUSION_ENSURE(static_cast<int64_t>(r.size()) == num_tasks_, what, ": the preference vector has ", r.size(),
                " entries, expected one per task (T = ", num_tasks_, ")");
  const std::string problem = preference_problem(r);
  FUSION_ENSURE(problem.empty(), what, ": ", problem);
  double sum = 0.0;
  for (double v : r) sum += v;
  std::vector<double> out(r);
  for (double& v : out) v /= sum;
  return out;
}

std::vector<at::Tensor> ParetoWeightEnsembling::route(const at::Tensor& r) const {
  FUSION_ENSURE(r.dim() == 1 && r.size(0) == num_tasks_, "pwe_moe: preference tensor of shape ", r.sizes(),
                ", expected [", num_tasks_, "]");
  std::vector<at::Tensor> out;
  out.reserve(groups_.size());
  for (const auto& g : groups_) {
    at::Tensor h = at::linear(r, g.router[0], g.router[1]);
    if (g.router.size() == 4) h = at::linear(at::relu(h), g.router[2], g.router[3]);
    out.push_back(h);
  }
  return out;
}

namespace {
// θ₀ + Σₜ gₜ τₜ as one matrix product: [1, T] × [T, n]; written into `out` (base's shape, dtype and
// device, contiguous) when it is given, by the same kernel.
at::Tensor combine(const at::Tensor& base, const at::Tensor& tv, const at::Tensor& g, at::Tensor out = {}) {
  const int64_t T = tv.size(0);
  if (out.defined()) {
    at::Tensor flat = out.view({1, -1});
    at::addmm_out(flat, base.reshape({1, -1}), g.to(tv.scalar_type()).view({1, T}), tv.view({T, -1}));
    return out;
  }
  return at::addmm(base.reshape({1, -1}), g.to(tv.scalar_type()).view({1, T}), tv.view({T, -1})).view(base.sizes());
}
}  // namespace

StateDict ParetoWeightEnsembling::merge(const std::vector<at::Tensor>& g) const {
  FUSION_ENSURE(g.size() == groups_.size(), "pwe_moe: ", g.size(), " group weights for ", groups_.size(), " groups");
  c10::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> merged;
  for (size_t i = 0; i < groups_.size(); ++i) {
    const auto& grp = groups_[i];
    const at::Tensor gi = g[i].detach();
    for (size_t k = 0; k < grp.keys.size(); ++k) merged[grp.keys[k]] = combine(grp.base[k], grp.task_vectors[k], gi);
  }
  StateDict out;
  for (const std::string& key : key_order_) {
    const at::Tensor* t = rest_.find(key);
    out.set(key, t ? *t : merged.at(key));
  }
  return out;
}

StateDict ParetoWeightEnsembling::merge_differentiable(const at::Tensor& r) const {
  const std::vector<at::Tensor> g = route(r);
  std::map<std::string, at::Tensor> merged;
  for (size_t i = 0; i < groups_.size(); ++i) {
    const auto& grp = groups_[i];
    for (size_t k = 0; k < grp.keys.size(); ++k) merged[grp.keys[k]] = combine(grp.base[k], grp.task_vectors[k], g[i]);
  }
  StateDict out;
  for (const std::string& key : key_order_) {
    const at::Tensor* t = rest_.find(key);
    out.set(key, t ? *t : merged.at(key));
  }
  return out;
}

std::vector<at::Tensor> ParetoWeightEnsembling::group_weight_grads(const StateDict& grads) const {
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> out;
  for (const auto& grp : groups_) {
    at::Tensor dg = at::zeros({num_tasks_}, grp.router[0].options().requires_grad(false));
    for (size_t k = 0; k < grp.keys.size(); ++k) {
      const at::Tensor* gk = grads.find(grp.keys[k]);
      if (gk == nullptr || !gk->defined()) continue;
      const at::Tensor& tv = grp.task_vectors[k];
      dg.add_(at::mv(tv.view({num_tasks_, -1}), gk->to(tv.scalar_type()).reshape({-1})).to(at::kFloat));
    }
    out.push_back(dg);
  }
  return out;
}

ModelPtr ParetoWeightEnsembling::merge_and_unload(const std::vector<double>& r) const {
  const std::vector<double> p = checked_preference(r, method_ + " merge_and_unload");
  c10::NoGradGuard no_grad;
  const at::Device device = groups_.front().router[0].device();
  at::Tensor rt = at::tensor(std::vector<float>(p.begin(), p.end()), at::TensorOptions().dtype(at::kFloat)).to(device);
  std::vector<at::Tensor> g = route(rt);
  return pretrained_->with_parameters(merge(g));
}

void ParetoWeightEnsembling::merge_into(const std::vector<double>& r, Model& model) const {
  const std::vector<double> p = checked_preference(r, method_ + " merge_into");
  c10::NoGradGuard no_grad;
  const at::Device device = groups_.front().router[0].device();
  at::Tensor rt = at::tensor(std::vector<float>(p.begin(), p.end()), at::TensorOptions().dtype(at::kFloat)).to(device);
  const std::vector<at::Tensor> g = route(rt);
  StateDict& params = model.parameters();
  for (size_t i = 0; i < groups_.size(); ++i) {
    const auto& grp = groups_[i];
    for (size_t k = 0; k < grp.keys.size(); ++k) {
      const at::Tensor& base = grp.base[k];
      FUSION_ENSURE(params.contains(grp.keys[k]), method_, " merge_into: the model has no '", grp.keys[k], "'");
      at::Tensor& out = params.at(grp.keys[k]);
      FUSION_ENSURE(out.sizes() == base.sizes() && out.scalar_type() == base.scalar_type() &&
                        out.device() == base.device() && out.is_contiguous(),
                    method_, " merge_into: '", grp.keys[k], "' is not a tensor merge_and_unload made");
      combine(base, grp.task_vectors[k], g[i].detach(), out);
    }
  }
}

std::unique_ptr<ParetoWeightEnsembling> ParetoWeightEnsembling::from_models(
    ConstModelPtr pretrained, const std::vector<ModelPtr>& experts, const std::vector<std::string>& names,
    const ParetoWeightEnsemblingOptions& options, at::Generator generator, const std::string& method) {
  FUSION_ENSURE(pretrained != nullptr, method, ": from_models without a pretrained model");
  FUSION_ENSURE(experts.size() == names.size(), method, ": ", experts.size(), " experts for ", names.size(), " names");
  std::unique_ptr<ParetoWeightEnsembling> pwe(new ParetoWeightEnsembling());
  pwe->options_ = options;
  pwe->method_ = method;
  pwe->num_tasks_ = static_cast<int64_t>(experts.size());
  pwe->expert_names_ = names;
  pwe->plan(pretrained);
  for (size_t t = 0; t < experts.size(); ++t) pwe->add_expert(t, *experts[t], names[t]);
  pwe->finish(std::move(generator));
  return pwe;
}

std::unique_ptr<ParetoWeightEnsembling> ParetoWeightEnsembling::from_pool(ModelPool& pool, const Context& ctx,
                                                                           const ParetoWeightEnsemblingOptions& options,
                                                                           const std::string& method) {
  const std::vector<std::string> names = expert_names_checked(pool, method);
  std::unique_ptr<ParetoWeightEnsembling> pwe(new ParetoWeightEnsembling());
  pwe->options_ = options;
  pwe->method_ = method;
  pwe->num_tasks_ = static_cast<int64_t>(names.size());
  pwe->expert_names_ = names;
  pwe->plan(pretrained_checked(pool, method));
  for (size_t t = 0; t < names.size(); ++t) {
    ModelPtr expert = pool.load(names[t]);  // one expert at a time, dropped at the end of the scope
    pwe->add_expert(t, *expert, names[t]);
  }
  pwe->finish(at::make_generator<at::CPUGeneratorImpl>(ctx.seed()));
  // Mixed precision: a 16-bit run dtype is the compute dtype of float32 models (the host hands the
  // model pool float32 and the method the 16-bit dtype); any other run dtype leaves it as it is.
  if ((ctx.dtype() == at::kBFloat16 || ctx.dtype() == at::kHalf) && ctx.dtype() != pwe->compute_dtype())
    pwe->set_compute_dtype(ctx.dtype());
  return pwe;
}

}  // namespace fusion::methods
