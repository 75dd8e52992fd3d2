#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "fusion/context.hpp"
#include "fusion/export.hpp"
#include "fusion/model.hpp"
#include "fusion/model_pool.hpp"
#include "fusion/task_pool.hpp"

namespace fusion {

/// One model an algorithm produced, with what produced it. The model is made on demand by `make`
/// so that a method returning many models (a Pareto set, a λ sweep) never holds them all: the host
/// makes, evaluates, saves and drops each in turn. `make` may be called more than once.
struct FUSION_SDK_API ResultModel {
  std::string label;           ///< unique within a result: "merged", "lambda=0.3", "r=[0.5,0.5]"
  nlohmann::json metadata;     ///< what produced it: {"scaling_factor": 0.3}, {"preference": [...]}
  std::function<ConstModelPtr()> make;
};

/// What Algorithm::run returns: one or more models, and method-level information for the report
/// (timings, counters, the trainable parameter count under "trainable_params").
struct FUSION_SDK_API Result {
  std::vector<ResultModel> models;
  nlohmann::json info = nlohmann::json::object();
  /// True when the models, in order, trace one curve (a λ sweep, PWEMoE's preference grid over two
  /// tasks): the host's Pareto plot joins them with a line. False for models that are not points of
  /// one family (each expert alone, a single merged model). Recorded as "sweep" in report.json.
  bool sweep = false;

  /// Adds an already built model.
  void add(std::string label, ConstModelPtr model, nlohmann::json metadata = nlohmann::json::object());
  /// Adds a model built on demand.
  void add_lazy(std::string label, std::function<ConstModelPtr()> make,
                nlohmann::json metadata = nlohmann::json::object());
};

/// A merging method. Constructed by its factory from a Context holding its checked options; run()
/// is called once. `tasks` is null when the run has no [taskpool] (methods that need data throw
/// fusion::Error saying so).
class FUSION_SDK_API Algorithm {
 public:
  virtual ~Algorithm();
  virtual Result run(ModelPool& models, TaskPool* tasks, const Context& ctx) = 0;
};

}  // namespace fusion
