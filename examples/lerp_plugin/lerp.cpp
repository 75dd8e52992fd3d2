// An example plugin built outside the fusion tree: linear interpolation between two models,
//   θ = (1 − t) · θ_start + t · θ_end,
// by default from the pretrained model to the first expert. It uses only the installed SDK.
#include <fusion/error.hpp>
#include <fusion/plugin.hpp>
#include <fusion/state_dict.hpp>

#include <memory>
#include <string>
#include <vector>

namespace lerp {

struct LinearInterpolationOptions {
  /// Position between the two models: 0 gives `start`, 1 gives `end`. Default 0.5.
  double t = 0.5;
  /// "pretrained" (default) or an expert's name.
  std::string start = "pretrained";
  /// An expert's name; "" (default) picks the first expert other than `start`.
  std::string end;
};

class LinearInterpolation : public fusion::Algorithm {
 public:
  explicit LinearInterpolation(LinearInterpolationOptions options) : options_(std::move(options)) {}

  static fusion::ComponentInfo info() {
    fusion::ComponentInfo info;
    info.name = "linear_interpolation";
    info.summary = "Linear interpolation between two models: (1 − t) θ_start + t θ_end";
    info.reference = "https://arxiv.org/abs/1912.05671";
    info.schema.add("t", 0.5, "position between the models: 0 is start, 1 is end").range(0.0, 1.0);
    info.schema.add("start", std::string("pretrained"), "\"pretrained\" or an expert's name");
    info.schema.add("end", std::string(""), "an expert's name (\"\": the first expert other than start)");
    return info;
  }

  static std::unique_ptr<fusion::Algorithm> create(const fusion::Context& ctx) {
    const fusion::Config& c = ctx.config();
    return std::make_unique<LinearInterpolation>(
        LinearInterpolationOptions{c.get<double>("t"), c.get<std::string>("start"), c.get<std::string>("end")});
  }

  fusion::Result run(fusion::ModelPool& models, fusion::TaskPool* /*tasks*/, const fusion::Context& ctx) override {
    const std::vector<std::string> experts = models.expert_names();
    std::string end = options_.end;
    for (const std::string& name : experts) {
      if (end.empty() && name != options_.start) end = name;
    }
    FUSION_ENSURE(!end.empty(), "method.end: the model pool has no expert to interpolate towards");
    fusion::ModelPtr a = options_.start == "pretrained" ? models.pretrained() : models.load(options_.start);
    fusion::ModelPtr b = models.load(end);
    fusion::check_same_layout(a->parameters(), b->parameters(), options_.start, "expert '" + end + "'");
    // weighted_sum combines floating tensors and takes integer ones from the first model.
    fusion::StateDict merged = fusion::weighted_sum({&a->parameters(), &b->parameters()},
                                                    {1.0 - options_.t, options_.t});
    ctx.log().info("linear_interpolation: t = " + std::to_string(options_.t) + " from " + options_.start +
                   " to " + end);
    fusion::Result result;
    result.add("merged", a->with_parameters(merged.to(ctx.device())),
               {{"t", options_.t}, {"start", options_.start}, {"end", end}});
    return result;
  }

 private:
  LinearInterpolationOptions options_;
};

}  // namespace lerp

FUSION_PLUGIN("lerp", "0.1.0", reg) {
  reg.add_algorithm(lerp::LinearInterpolation::info(), lerp::LinearInterpolation::create);
}
