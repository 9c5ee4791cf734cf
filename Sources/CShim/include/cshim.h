#pragma once
// Tiny header-only shims for things Swift cannot import directly (see swift-perf.md §1): pause, prefetch, and the
// AVX512-BF16 dot product, whose __m512bh type does not import into Swift.
#if defined(__x86_64__)
#include <immintrin.h>
static inline __attribute__((always_inline)) void shim_pause(void) { __builtin_ia32_pause(); }
/// acc[i] += a.bf16[2i]·b.bf16[2i] + a.bf16[2i+1]·b.bf16[2i+1] for 16 fp32 lanes (vdpbf16ps).
static inline __attribute__((always_inline, target("avx512bf16,avx512f,avx512bw,avx512vl,evex512")))
__m512 shim_dpbf16_ps(__m512 acc, __m512i a, __m512i b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
#else
static inline __attribute__((always_inline)) void shim_pause(void) { }
#endif
static inline __attribute__((always_inline)) void shim_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
/// Whether the CPU (and the OS) supports a feature: "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512dq", "avx512bw",
/// "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni" (the names of /proc/cpuinfo). Always 0 off x86-64.
int qoq_cpu_has(const char *name);
/// The instruction set this build was compiled for: "avx512", "avx2" or "portable".
const char *qoq_build_isa(void);
/// CPUs this process may run on (sched_getaffinity: taskset, cpusets); 0 where unknown.
int qoq_affinity_cpus(void);
