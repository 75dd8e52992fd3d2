// Purpose-built algorithms for the conformance tests: each breaks one rule the suite checks, so
// that `fusion check` must fail naming that check. Never installed; built into its own folder.
#include <ATen/ATen.h>

#include <limits>

#include "fusion/algorithm.hpp"
#include "fusion/plugin.hpp"
#include "fusion/state_dict.hpp"

namespace {

using fusion::ComponentInfo;
using fusion::Context;
using fusion::ModelPool;
using fusion::Requirements;
using fusion::Result;
using fusion::StateDict;
using fusion::TaskPool;

/// Task arithmetic with λ = 1 done in place, in the pool's shared pretrained tensors: the merged
/// model is right, but every later reader of modelpool.pretrained sees it instead of θ₀.
class ModifiesPool : public fusion::Algorithm {
 public:
  static ComponentInfo info() {
    return {"broken_modifies_pool", "θ₀ + Σ τ written into the pool's pretrained model (conformance tests)", "", {},
            Requirements().pretrained().experts(1)};
  }
  Result run(ModelPool& pool, TaskPool*, const Context&) override {
    fusion::ConstModelPtr pretrained = pool.pretrained();
    StateDict& shared = const_cast<fusion::Model&>(*pretrained).parameters();  // the bug
    const StateDict base = shared.clone();
    for (const auto& name : pool.expert_names()) {
      fusion::ModelPtr expert = pool.load(name);
      for (const auto& [key, t] : expert->parameters())
        if (fusion::is_mergeable(t)) shared.at(key).add_(t - base.at(key));
    }
    Result r;
    r.add("merged", pretrained);
    return r;
  }
};

/// The average of the experts with one weight set to NaN (as a division by a zero count would).
class ReturnsNan : public fusion::Algorithm {
 public:
  static ComponentInfo info() {
    return {"broken_nan", "the experts' average with a NaN in it (conformance tests)", "", {},
            Requirements().experts(1)};
  }
  Result run(ModelPool& pool, TaskPool*, const Context&) override {
    StateDict sum;
    const auto names = pool.expert_names();
    fusion::ModelPtr first;
    for (const auto& name : names) {
      fusion::ModelPtr e = pool.load(name);
      if (!first) first = e;
      sum = sum.empty() ? e->parameters().clone() : fusion::add(sum, e->parameters());
    }
    StateDict avg = fusion::scale(sum, 1.0 / static_cast<double>(names.size()));
    for (const auto& [key, t] : avg)
      if (fusion::is_mergeable(t)) {
        t.view(-1)[0].fill_(std::numeric_limits<double>::quiet_NaN());  // the bug
        break;
      }
    Result r;
    r.add("merged", first->with_parameters(std::move(avg)));
    return r;
  }
};

}  // namespace

FUSION_PLUGIN("conformance_broken", "1.0.0", reg) {
  reg.add<ModifiesPool>();
  reg.add<ReturnsNan>();
}
