/* kd_ce_pair's body (ce_pair_impl.h) for float and double, compiled once per
 * instruction set, as kd_kernels.h does for the KD kernels: ce_pair.c
 * includes this with ISA base, ce_pair_avx2.c with ISA avx2 under an AVX2
 * target. Both give the same bits (the same lane arithmetic, no contraction
 * under -std=c11). */
#include <math.h>
#include <stdint.h>

#include "ce_pair.h"
#include "kd_common.h"
#include "kd_math.h"

/* float: eight lanes, sums in two double vectors */
#define FT float
#define SFX f32
#define VEC kd_v8f
#define VINT kd_v8i
#define VL 8
#define VLOAD kd_load_v8f
#define VSEL kd_sel_v8f
#define VEXP kd_exp_v8f
#define ACC kd_acc8
#define ACC_ADD kd_acc_add_v8f
#define ACC_SUM kd_acc_sum_v8f
#include "ce_pair_impl.h"
#undef FT
#undef SFX
#undef VEC
#undef VINT
#undef VL
#undef VLOAD
#undef VSEL
#undef VEXP
#undef ACC
#undef ACC_ADD
#undef ACC_SUM

/* double: four lanes */
#define FT double
#define SFX f64
#define VEC kd_v4d
#define VINT kd_v4l
#define VL 4
#define VLOAD kd_load_v4d
#define VSEL kd_sel_v4d
#define VEXP kd_exp_v4d
#define ACC kd_v4d
#define ACC_ADD kd_acc_add_v4d
#define ACC_SUM kd_acc_sum_v4d
#include "ce_pair_impl.h"
#undef FT
#undef SFX
#undef VEC
#undef VINT
#undef VL
#undef VLOAD
#undef VSEL
#undef VEXP
#undef ACC
#undef ACC_ADD
#undef ACC_SUM
