#pragma once
// Mixed precision ([run] dtype = "bfloat16", or "float16" on CUDA): which dtype the models are kept
// in and which the network computes in, and whether this machine computes bfloat16 natively.
// Host code (not SDK): the benchmarks compile this file in too.
#include <ATen/ATen.h>

#include <string>

namespace fusion::host {

/// What this CPU offers for bfloat16 GEMMs: AVX512-BF16 (CPUID.(7,1):EAX[5], with AVX-512 state
/// enabled by the OS) or AMX-BF16 (CPUID.(7,0):EDX[22], with the tile state enabled). Always false
/// off x86.
struct CpuBf16 {
  bool avx512_bf16 = false;
  bool amx_bf16 = false;
  bool native() const { return avx512_bf16 || amx_bf16; }
  /// "avx512_bf16, amx_bf16", "avx512_bf16" or "none".
  std::string describe() const;
};
CpuBf16 cpu_bf16();

/// The environment variable that forces bfloat16 compute on a CPU without bf16 instructions
/// (LibTorch then emulates it, ~10x slower than float32): for tests and numerics checks only.
constexpr const char* kForceBf16Env = "FUSION_FORCE_BF16";

/// How a run computes.
struct Precision {
  /// The dtype of the model pool's weights, the merges, saved models and task pool tensors
  /// (heads, batches): the requested dtype, or float32 for the mixed-precision dtypes.
  at::ScalarType storage = at::kFloat;
  /// The dtype the network's forward and backward passes run in (the method's Context dtype).
  at::ScalarType compute = at::kFloat;
  /// One line for the log when the request was changed or is emulated ("" otherwise).
  std::string note;
  bool mixed() const { return storage != compute; }
};

/// The precision of a run that asked for `requested` ([run] dtype) on `device`:
/// - float32, float64: that dtype for both (as before mixed precision existed);
/// - bfloat16: mixed precision, weights in float32 and compute in bfloat16, on CUDA, or on a CPU
///   with bf16 instructions (and LibTorch with oneDNN), or where `force_bf16` (FUSION_FORCE_BF16=1)
///   asks for emulation; otherwise float32 compute with a note saying why;
/// - float16: mixed precision with float16 compute on CUDA; float32 on the CPU (LibTorch 1.13 has no
///   float16 GEMM on the CPU), with a note.
/// `cpu` and `have_onednn` describe the machine (cpu_bf16(), at::hasMKLDNN()), so that tests can
/// ask about others.
Precision resolve_precision(at::ScalarType requested, const at::Device& device, const CpuBf16& cpu,
                            bool have_onednn, bool force_bf16);
/// The same for this machine and the environment (FUSION_FORCE_BF16).
Precision resolve_precision(at::ScalarType requested, const at::Device& device);

}  // namespace fusion::host
