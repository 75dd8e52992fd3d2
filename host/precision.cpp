#include "precision.hpp"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace fusion::host {

std::string CpuBf16::describe() const {
  if (avx512_bf16 && amx_bf16) return "avx512_bf16, amx_bf16";
  if (avx512_bf16) return "avx512_bf16";
  if (amx_bf16) return "amx_bf16";
  return "none";
}

CpuBf16 cpu_bf16() {
  CpuBf16 out;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return out;  // OSXSAVE: XCR0 readable
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const unsigned long long xcr0 = (static_cast<unsigned long long>(xcr0_hi) << 32) | xcr0_lo;
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;            // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;         // XTILECFG, XTILEDATA
  if (__get_cpuid_max(0, nullptr) < 7) return out;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx512f = b & (1u << 16);
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  const unsigned max_sub = a;
  bool avx512_bf16 = false;
  if (max_sub >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    avx512_bf16 = a & (1u << 5);
  }
  out.avx512_bf16 = avx512_bf16 && avx512f && os_avx512;
  out.amx_bf16 = amx_bf16 && amx_tile && os_amx;
#endif
  return out;
}

Precision resolve_precision(at::ScalarType requested, const at::Device& device, const CpuBf16& cpu,
                            bool have_onednn, bool force_bf16) {
  Precision p;
  if (requested != at::kBFloat16 && requested != at::kHalf) {
    p.storage = p.compute = requested;
    return p;
  }
  p.storage = at::kFloat;
  const std::string what = requested == at::kBFloat16 ? "bfloat16" : "float16";
  if (device.is_cuda()) {
    p.compute = requested;
    return p;
  }
  if (requested == at::kHalf) {
    p.compute = at::kFloat;
    p.note = "run.dtype = \"float16\": float16 mixed precision needs CUDA (this LibTorch has no float16 GEMM "
             "on the CPU); computing in float32";
    return p;
  }
  if (cpu.native() && have_onednn) {
    p.compute = at::kBFloat16;
    p.note = "run.dtype = \"" + what + "\": mixed precision, weights in float32, GEMMs in bfloat16 (oneDNN, " +
             cpu.describe() + ")";
    return p;
  }
  const std::string why = !cpu.native() ? "this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16)"
                                        : "this LibTorch was built without oneDNN";
  if (force_bf16) {
    p.compute = at::kBFloat16;
    p.note = "run.dtype = \"" + what + "\": " + why + ", but " + kForceBf16Env +
             " is set: computing in emulated bfloat16 (slow; for checking numerics)";
    return p;
  }
  p.compute = at::kFloat;
  p.note = "run.dtype = \"" + what + "\": " + why + ", so the run computes in float32 (emulating bfloat16 " +
           "would be slower)";
  return p;
}

Precision resolve_precision(at::ScalarType requested, const at::Device& device) {
  const char* force = std::getenv(kForceBf16Env);
  const bool forced = force != nullptr && std::strcmp(force, "") != 0 && std::strcmp(force, "0") != 0;
  return resolve_precision(requested, device, cpu_bf16(), at::hasMKLDNN(), forced);
}

}  // namespace fusion::host
