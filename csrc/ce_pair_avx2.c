/* kd_ce_pair compiled for AVX2 (picked at run time by ce_pair.c), as
 * kd_avx2.c does for the KD kernels. */
#include "kd_isa.h"

#if KD_HAVE_AVX2_BUILD
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC target("avx2")
#endif

#define ISA avx2
#include "ce_pair_kernels.h"
#undef ISA

#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int kd_ce_pair_avx2_unused; /* ISO C wants a declaration in every file */
#endif
