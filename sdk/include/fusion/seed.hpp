#pragma once
// Seeds derived from the run's seed, so that every random stream of a run is reproducible and
// independent of the others (and of the order in which they are made).
#include <cstdint>

#include "fusion/export.hpp"

namespace fusion {

/// SplitMix64's finaliser: a bijective mix of 64 bits.
FUSION_SDK_API uint64_t splitmix64(uint64_t x);

/// The seed of the stream tagged (`a`, `b`) of a run with seed `seed`: a mix of all three, so
/// streams with different tags are unrelated and the same tags always give the same seed (a resumed
/// run draws what an uninterrupted one does). Tags are constants of the caller's choosing, e.g. a
/// stream's kind (`a`) and a step or task index (`b`).
FUSION_SDK_API uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0);

}  // namespace fusion
