/* The KD kernels compiled for AVX2 with FMA (picked at run time by kd.c).
 * Kept out of the default flags so that one wheel runs on any x86-64 CPU. */
#include "kd_isa.h"

#if KD_HAVE_AVX2_BUILD
/* before the target switch: the intrinsics carry their own targets */
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif

#define KD_AVX2_FMA 1

#define KD_ISA avx2
#include "kd_kernels.h"
#undef KD_ISA

#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int kd_avx2_unused; /* ISO C wants a declaration in every file */
#endif
