#include "training.hpp"

#include <cmath>
#include <cstdio>

#include "fusion/error.hpp"

namespace fusion::finetune {

const std::vector<std::string>& trainable_subsets() {
  static const std::vector<std::string> subsets = {"all", "encoder", "mlp", "attention"};
  return subsets;
}

bool is_trainable(const std::string& key, const at::Tensor& t, const std::string& subset) {
  if (!t.is_floating_point()) return false;
  if (subset == "all") return true;
  if (subset == "encoder")
    return key.find(".encoder.layers.") != std::string::npos || key.rfind("transformer.h.", 0) == 0;
  if (subset == "mlp") return key.find(".mlp.") != std::string::npos;
  if (subset == "attention")
    return key.find(".self_attn.") != std::string::npos || key.find(".attn.") != std::string::npos;
  FUSION_FAIL("unknown trainable subset \"", subset, "\" (expected all, encoder, mlp or attention)");
}

std::string short_number(double v) {
  char buf[32];
  if (v != 0.0 && (std::fabs(v) < 1e-3 || std::fabs(v) >= 1e4))
    std::snprintf(buf, sizeof(buf), "%.2e", v);
  else
    std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

}  // namespace fusion::finetune
