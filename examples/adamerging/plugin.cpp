// The plugin's entry: the handshake and one registration line per component.
#include <fusion/plugin.hpp>

#include "adamerging.hpp"

FUSION_PLUGIN("adamerging", "0.1.0", reg) {
  reg.add<adamerging::TaskWiseAdaMerging>();
}
