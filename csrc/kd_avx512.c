/* The KD kernels compiled for AVX-512F (sixteen float lanes, with FMA;
 * POPCNT counts mask bits), picked at run time by kd.c on CPUs that have
 * them. */
#include "kd_isa.h"

#if KD_HAVE_AVX2_BUILD
/* before the target switch: the intrinsics carry their own targets */
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,popcnt"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx2,fma,popcnt")
#endif

#define KD_AVX2_FMA 1
#define KD_AVX512 1
#define KD_ISA avx512
#include "kd_kernels.h"
#undef KD_ISA

#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int kd_avx512_unused; /* ISO C wants a declaration in every file */
#endif
