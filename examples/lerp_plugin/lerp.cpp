// An example plugin built outside the fusion tree: linear interpolation between two models,
//   θ = (1 − t) · θ_start + t · θ_end,
// by default from the pretrained model to the first expert. It uses only the installed SDK.
#include <fusion/error.hpp>
#include <fusion/plugin.hpp>
#include <fusion/state_dict.hpp>

#include <string>
#include <utility>
#include <vector>

namespace lerp {

struct LinearInterpolationOptions {
  /// Position between the two models: 0 gives `start`, 1 gives `end`. Default 0.5.
  double t = 0.5;
  /// "pretrained" (default) or an expert's name.
  std::string start = "pretrained";
  /// An expert's name; "" (default) picks the first expert other than `start`.
  std::string end;

  static void bind(fusion::Options<LinearInterpolationOptions>& o) {
    o("t", &LinearInterpolationOptions::t, "position between the models: 0 is start, 1 is end").range(0.0, 1.0);
    o("start", &LinearInterpolationOptions::start, "\"pretrained\" or an expert's name");
    o("end", &LinearInterpolationOptions::end, "an expert's name (\"\": the first expert other than start)");
  }
};

class LinearInterpolation : public fusion::Algorithm {
 public:
  using Options = LinearInterpolationOptions;
  explicit LinearInterpolation(Options options) : options_(std::move(options)) {}

  // At least one expert; the pretrained model only when `start` names it, checked in run().
  static fusion::ComponentInfo info() {
    return {"linear_interpolation", "Linear interpolation between two models: (1 − t) θ_start + t θ_end",
            "https://arxiv.org/abs/1912.05671", {}, fusion::Requirements().experts(1)};
  }

  fusion::Result run(fusion::ModelPool& models, fusion::TaskPool* /*tasks*/, const fusion::Context& ctx) override {
    std::string end = options_.end;
    for (const std::string& name : models.expert_names()) {
      if (end.empty() && name != options_.start) end = name;
    }
    // Messages name options through the binding, so each name is written once (in bind).
    const std::string start_key = "method." + fusion::option_name(&Options::start);
    const std::string end_key = "method." + fusion::option_name(&Options::end);
    FUSION_ENSURE(!end.empty(), end_key, ": the model pool has no expert to interpolate towards");
    const bool from_pretrained = options_.start == "pretrained";
    FUSION_ENSURE(!from_pretrained || models.has_pretrained(), "linear_interpolation needs a pretrained model (",
                  start_key, " is \"pretrained\"): set modelpool.pretrained");
    fusion::ConstModelPtr a = from_pretrained ? models.pretrained() : models.load(options_.start);
    fusion::ConstModelPtr b = models.load(end);
    fusion::check_same_layout(a->parameters(), b->parameters(), options_.start, "expert '" + end + "'");
    // weighted_sum combines floating tensors and takes integer ones from the first model.
    fusion::StateDict merged = fusion::weighted_sum({&a->parameters(), &b->parameters()},
                                                    {1.0 - options_.t, options_.t});
    ctx.log().info("linear_interpolation: t = " + std::to_string(options_.t) + " from " + options_.start +
                   " to " + end);
    fusion::Result result;
    result.add("merged", a->with_parameters(merged.to(ctx.device())),
               {{fusion::option_name(&Options::t), options_.t},
                {fusion::option_name(&Options::start), options_.start},
                {fusion::option_name(&Options::end), end}});
    return result;
  }

 private:
  Options options_;
};

}  // namespace lerp

FUSION_PLUGIN("lerp", "0.1.0", reg) {
  reg.add<lerp::LinearInterpolation>();
}
