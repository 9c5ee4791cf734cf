#pragma once
// Tiny header-only shims for things Swift cannot import directly (see swift-perf.md §1).
#if defined(__x86_64__)
#include <immintrin.h>
static inline __attribute__((always_inline)) void shim_pause(void) { __builtin_ia32_pause(); }
#else
static inline __attribute__((always_inline)) void shim_pause(void) { }
#endif
static inline __attribute__((always_inline)) void shim_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
