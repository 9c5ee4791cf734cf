#define _GNU_SOURCE
#include "cshim.h"
// Start-up CPU check (hardening issue, class 7): a binary built for AVX-512 VNNI/BF16 or AVX2 that runs on a CPU
// without those instructions would die with SIGILL at its first kernel (or earlier: the compiler vectorizes any
// code with them). This constructor runs before any Swift code, reads cpuid/xgetbv, and stops with a message naming
// the missing features. It is compiled without any ISA flag, so it runs on every x86-64 CPU.
// QOQ_CPU_PRETEND_MISSING=name,name… makes it treat those features as absent (used by the tests).
#if defined(__x86_64__)
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int pretend_missing(const char *name) {
  const char *env = getenv("QOQ_CPU_PRETEND_MISSING");
  if (!env) return 0;
  size_t n = strlen(name);
  for (const char *p = env; *p;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (len == n && strncmp(p, name, n) == 0) return 1;
    if (!comma) break;
    p = comma + 1;
  }
  return 0;
}

struct feature { const char *name; int present; };

int qoq_cpu_has(const char *name) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  unsigned l1c = 0, l7b = 0, l7c = 0, l71a = 0;
  unsigned long long xcr0 = 0;
  if (__get_cpuid(1, &a, &b, &c, &d)) l1c = c;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) { l7b = b; l7c = c; }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) l71a = a;
  if (l1c & (1u << 27)) {  // OSXSAVE: the OS saves the vector registers it reports in XCR0
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = ((unsigned long long)hi << 32) | lo;
  }
  int ymm = (xcr0 & 0x6) == 0x6, zmm = ymm && (xcr0 & 0xE0) == 0xE0;
  struct feature table[] = {
    {"avx2", ymm && (l7b & (1u << 5))}, {"fma", ymm && (l1c & (1u << 12))}, {"f16c", ymm && (l1c & (1u << 29))},
    {"bmi2", (l7b & (1u << 8)) != 0},
    {"avx512f", zmm && (l7b & (1u << 16))}, {"avx512dq", zmm && (l7b & (1u << 17))},
    {"avx512bw", zmm && (l7b & (1u << 30))}, {"avx512vl", zmm && (l7b & (1u << 31))},
    {"avx512_vnni", zmm && (l7c & (1u << 11))}, {"avx512_bf16", zmm && (l71a & (1u << 5))},
    {"avx_vnni", ymm && (l71a & (1u << 4))},
  };
  if (pretend_missing(name)) return 0;
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(table[i].name, name) == 0) return table[i].present;
  return 0;
}

const char *qoq_build_isa(void) {
#if defined(QOQ_REQUIRE_AVX512)
  return "avx512";
#elif defined(QOQ_REQUIRE_AVX2)
  return "avx2";
#else
  return "portable";
#endif
}

__attribute__((constructor)) static void qoq_check_cpu(void) {
#if defined(QOQ_REQUIRE_AVX512)
  static const char *need[] = {"avx2", "fma", "f16c", "bmi2", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                               "avx512_vnni", 0};  /* avx512_bf16 is checked at run time (BF16GEMM.swift) */
#elif defined(QOQ_REQUIRE_AVX2)
  static const char *need[] = {"avx2", "fma", "f16c", "bmi2", 0};
#else
  static const char *need[] = {0};
#endif
  char missing[256] = "";
  for (int i = 0; need[i]; i++) {
    if (!qoq_cpu_has(need[i])) {
      if (missing[0]) strncat(missing, ", ", sizeof missing - strlen(missing) - 1);
      strncat(missing, need[i], sizeof missing - strlen(missing) - 1);
    }
  }
  if (missing[0]) {
    fprintf(stderr, "error: this qoq binary was built for %s and needs CPU features this CPU lacks: %s. "
                    "Rebuild it on this machine (the build detects the CPU), or build with QOQ_ISA=avx2 or "
                    "QOQ_ISA=portable.\n", qoq_build_isa(), missing);
    fflush(stderr);
    _exit(1);
  }
}
#else
int qoq_cpu_has(const char *name) { (void)name; return 0; }
const char *qoq_build_isa(void) { return "portable"; }
#endif

#if defined(__linux__)
#include <sched.h>
int qoq_affinity_cpus(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  return CPU_COUNT(&set);
}
#else
int qoq_affinity_cpus(void) { return 0; }
#endif
