/* kd_ce_pair (ce_pair.h): the baseline build of ce_pair_kernels.h and the
 * entry points, which run the AVX2 build (ce_pair_avx2.c) when kd.c's
 * dispatch does (kd_isa_name: the CPU, KDTEMP_DISABLE_AVX2 and _set_isa
 * apply here too). */
#include "ce_pair.h"

#include <stdint.h>
#include <string.h>

#include "kd_isa.h"

#define ISA base
#include "ce_pair_kernels.h"
#undef ISA

#if KD_HAVE_AVX2_BUILD
#define CP_PICK(fn) (strcmp(kd_isa_name(), "avx2") == 0 ? fn##_avx2 : fn##_base)
#else
#define CP_PICK(fn) fn##_base
#endif

#define CP_DISPATCH(SFX, FT)                                                     \
    int kd_ce_pair_##SFX(int64_t n_rows, int64_t student_cols, const FT *student,\
                         int64_t student_stride, int64_t teacher_cols,           \
                         const FT *teacher, int64_t teacher_stride,              \
                         const kd_rows *rows, int check_finite, double *row_ce,  \
                         double *student_sum, double *teacher_sum,               \
                         int64_t *count, int n_threads, kd_status *status)       \
    {                                                                            \
        return CP_PICK(kd_ce_pair_##SFX)(n_rows, student_cols, student,          \
                                         student_stride, teacher_cols, teacher,  \
                                         teacher_stride, rows, check_finite,     \
                                         row_ce, student_sum, teacher_sum,       \
                                         count, n_threads, status);              \
    }

CP_DISPATCH(f32, float)
CP_DISPATCH(f64, double)
