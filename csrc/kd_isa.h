/* The per-ISA builds of the KD kernels and how kd.c picks one at run time. */
#ifndef KDTEMP_KD_ISA_H
#define KDTEMP_KD_ISA_H

#include "annealing.h"
#include "kd.h"

/* AVX2 (+FMA) needs GCC or Clang on x86-64 (function-level target selection) */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(KDTEMP_NO_AVX2)
#define KD_HAVE_AVX2_BUILD 1
#else
#define KD_HAVE_AVX2_BUILD 0
#endif

KD_KERNEL_DECLS(f32_base, float)
KD_MSE_DECL(f32_base, float)
KD_KERNEL_DECLS(f64_base, double)
KD_MSE_DECL(f64_base, double)
#if KD_HAVE_AVX2_BUILD
KD_KERNEL_DECLS(f32_avx2, float)
KD_MSE_DECL(f32_avx2, float)
KD_KERNEL_DECLS(f64_avx2, double)
KD_MSE_DECL(f64_avx2, double)
KD_KERNEL_DECLS(f32_avx512, float)
KD_MSE_DECL(f32_avx512, float)
KD_KERNEL_DECLS(f64_avx512, double)
KD_MSE_DECL(f64_avx512, double)
#endif

/* "avx512", "avx2" or "baseline": the build the entry points run */
const char *kd_isa_name(void);
/* force a build ("baseline", "avx2" if the CPU has AVX2 and FMA, "avx512"
 * if it has AVX-512F too); 0 on success */
int kd_set_isa(const char *name);

#endif
