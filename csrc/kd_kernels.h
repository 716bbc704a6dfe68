/* The KD kernel bodies (kd_impl.h, annealing_impl.h) for float and double, compiled once per
 * instruction set: kd.c includes this with KD_ISA base, kd_avx2.c with
 * KD_ISA avx2 under an AVX2+FMA target, kd_avx512.c with KD_ISA avx512
 * (64-byte vectors: sixteen float / eight double lanes) under AVX-512F. The
 * vector builds fuse the exps' multiply-adds (kd_fma_*), everything else
 * stays unfused (-std=c11); with the lane count of the AVX-512 sums, the
 * builds agree to an ulp or so of each exp, and each gives the same bits for
 * any thread count. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "annealing.h"
#include "kd.h"
#include "kd_common.h"
#include "kd_div.h"
#include "kd_math.h"

#define FT float
#define FT_MAX FLT_MAX
#define SFX f32
#define EXP kd_exp_f32
#define KD_FLOAT_ROWS 1
#ifdef KD_AVX512
#define VL 16
#define VEC kd_v16f
#define VINT kd_v16i
#define VLOAD kd_load_v16f
#define VSTORE kd_store_v16f
#define VLOADTAIL kd_load_tail_v16f
#define VSTORETAIL kd_store_tail_v16f
#define VSEL kd_sel_v16f
#define VMAX kd_max_v16f
#define VHMAX kd_hmax_v16f
#define VANY kd_any_v16i
#define VANY_EQ kd_any_eq_v16f
#define VEXP kd_exp_v16f
#define VEXP_OFF_TOP kd_exp_off_top_v16f
#define VOFF_TOP kd_off_top_v16f
#define VTOPS int64_t
#define VTOPS_COUNT(t) (t)
#define VLOGF kd_logf_v16f
#define VFMA kd_fma_v16f
#define VPARTS 4
#define VPART kd_part_v16f
#define VJOIN(p) kd_join_v16f(p)
#define ACC kd_acc16
#define ACC_ADD kd_acc_add_v16f
#define ACC_MUL kd_acc_mul_v16f
#define ACC_DEV_FIN kd_acc_dev_fin_v16f
#define ACC_WDEV kd_acc_wdev_v16f
#define VADD_CDEV kd_add_cdev_v16f
#define ACC_SUM kd_acc_sum_v16f
#else
#define VL 8
#define VEC kd_v8f
#define VINT kd_v8i
#define VLOAD kd_load_v8f
#define VSTORE kd_store_v8f
#define VLOADTAIL kd_load_tail_v8f
#define VSTORETAIL kd_store_tail_v8f
#define VSEL kd_sel_v8f
#define VMAX kd_max_v8f
#define VHMAX kd_hmax_v8f
#define VANY kd_any_v8i
#define VANY_EQ(x, y) kd_any_v8i((x) == (y))
#define VEXP kd_exp_v8f
#define VEXP_OFF_TOP kd_exp_off_top_v8f
#define VOFF_TOP kd_off_top_v8f
#define VTOPS kd_v8i
#define VTOPS_COUNT kd_count_tops_v8i
#define VLOGF kd_logf_v8f
#define VFMA kd_fma_v8f
#define VPARTS 2
#define VPART kd_part_v8f
#define VJOIN(p) kd_join_v8f((p)[0], (p)[1])
#define ACC kd_acc8
#define ACC_ADD kd_acc_add_v8f
#define ACC_MUL kd_acc_mul_v8f
#define ACC_DEV_FIN kd_acc_dev_fin_v8f
#define ACC_WDEV kd_acc_wdev_v8f
#define VADD_CDEV kd_add_cdev_v8f
#define ACC_SUM kd_acc_sum_v8f
#endif
#include "kd_impl.h"
#include "annealing_impl.h"
#undef FT
#undef FT_MAX
#undef SFX
#undef EXP
#undef VEC
#undef VINT
#undef VLOAD
#undef VSTORE
#undef VLOADTAIL
#undef VSTORETAIL
#undef VSEL
#undef VMAX
#undef VHMAX
#undef VANY
#undef VANY_EQ
#undef VEXP
#undef VEXP_OFF_TOP
#undef VOFF_TOP
#undef VTOPS
#undef VTOPS_COUNT
#undef VLOGF
#undef KD_FLOAT_ROWS
#undef VFMA
#undef VPARTS
#undef VPART
#undef VJOIN
#undef VL
#undef ACC
#undef ACC_ADD
#undef ACC_MUL
#undef ACC_DEV_FIN
#undef ACC_WDEV
#undef VADD_CDEV
#undef ACC_SUM

#define FT double
#define FT_MAX DBL_MAX
#define SFX f64
#define EXP kd_exp_f64
#define KD_FLOAT_ROWS 0
#ifdef KD_AVX512
#define VL 8
#define VEC kd_v8d
#define VINT kd_v8l
#define VLOAD kd_load_v8d
#define VSTORE kd_store_v8d
#define VLOADTAIL kd_load_tail_v8d
#define VSTORETAIL kd_store_tail_v8d
#define VSEL kd_sel_v8d
#define VMAX kd_max_v8d
#define VHMAX kd_hmax_v8d
#define VANY kd_any_v8l
#define VANY_EQ kd_any_eq_v8d
#define VEXP kd_exp_v8d
#define VFMA kd_fma_v8d
#define VPARTS 2
#define VPART kd_part_v8d
#define VJOIN(p) kd_join_v8d(p)
#define ACC kd_v8d
#define ACC_ADD kd_acc_add_v8d
#define ACC_MUL kd_acc_mul_v8d
#define ACC_SUM kd_acc_sum_v8d
#else
#define VL 4
#define VEC kd_v4d
#define VINT kd_v4l
#define VLOAD kd_load_v4d
#define VSTORE kd_store_v4d
#define VLOADTAIL kd_load_tail_v4d
#define VSTORETAIL kd_store_tail_v4d
#define VSEL kd_sel_v4d
#define VMAX kd_max_v4d
#define VHMAX kd_hmax_v4d
#define VANY kd_any_v4l
#define VANY_EQ(x, y) kd_any_v4l((x) == (y))
#define VEXP kd_exp_v4d
#define VFMA kd_fma_v4d
#define VPARTS 1
#define VPART kd_part_v4d
#define VJOIN(p) ((p)[0])
#define ACC kd_v4d
#define ACC_ADD kd_acc_add_v4d
#define ACC_MUL kd_acc_mul_v4d
#define ACC_SUM kd_acc_sum_v4d
#endif
#include "kd_impl.h"
#include "annealing_impl.h"
#undef FT
#undef FT_MAX
#undef SFX
#undef EXP
#undef VEC
#undef VINT
#undef VLOAD
#undef VSTORE
#undef VLOADTAIL
#undef VSTORETAIL
#undef VSEL
#undef VMAX
#undef VHMAX
#undef VANY
#undef VANY_EQ
#undef VEXP
#undef KD_FLOAT_ROWS
#undef VFMA
#undef VPARTS
#undef VPART
#undef VJOIN
#undef VL
#undef ACC
#undef ACC_ADD
#undef ACC_MUL
#undef ACC_SUM
