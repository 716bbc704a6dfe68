/* Both batch cross-entropies DTS needs (shared/spec/dts.md, "What kdtemp
 * adds"), from one pass over the rows of the student's and the teacher's
 * logits:
 *
 *     ce_i(x) = lse(x_i) - x_{i, y_i},   lse(x) = m + log sum_j exp(x_j - m),
 *                                        m = max_j x_j           (t = 1)
 *     student_sum = sum_i ce_i(z),  teacher_sum = sum_i ce_i(v),  count
 *
 * over the rows that count (kd_rows: label != ignore_index and mask). Each
 * row pair is brought in once: the student's row (max, then its sum of
 * exps while it is in cache), then the teacher's. The per-row values are
 * summed in row order after the parallel loop, so the bits do not depend on
 * the thread count; each per-row value is the one kdtemp.ce_loss computes
 * (same operations in the same order). Pure C11, no Python objects; its
 * NumPy twin is kdtemp/reference/dts.py's ce_pair.
 */
#ifndef KDTEMP_CE_PAIR_H
#define KDTEMP_CE_PAIR_H

#include <stdint.h>

#include "kd.h"
#include "kd_isa.h"

/* rows->labels is required. The two arrays have n_rows rows each and may
 * differ in their number of classes; a counted row's label must be in
 * [0, min(student_cols, teacher_cols)). row_ce is scratch of 2 * n_rows
 * doubles (row i: student at 2i, teacher at 2i + 1; skipped rows 0).
 * Errors, reported at the smallest offending row of the first kind found,
 * in this order: KD_ERR_LABEL, then the student's KD_ERR_NONFINITE_STUDENT
 * (with check_finite) / KD_ERR_ALLINF_STUDENT, then the teacher's
 * KD_ERR_*_TEACHER (the order two separate ce_loss calls report them in).
 * On an error only status is meaningful. */
#define KD_CE_PAIR_DECL(SFX, FT)                                                 \
    int kd_ce_pair_##SFX(int64_t n_rows, int64_t student_cols,                   \
                         const FT *student, int64_t student_stride,              \
                         int64_t teacher_cols, const FT *teacher,                \
                         int64_t teacher_stride, const kd_rows *rows,            \
                         int check_finite, double *row_ce,                       \
                         double *student_sum, double *teacher_sum,               \
                         int64_t *count, int n_threads, kd_status *status);

KD_CE_PAIR_DECL(f32, float)
KD_CE_PAIR_DECL(f64, double)

/* the per-ISA builds the two entry points pick from (ce_pair.c) */
KD_CE_PAIR_DECL(f32_base, float)
KD_CE_PAIR_DECL(f64_base, double)
#if KD_HAVE_AVX2_BUILD
KD_CE_PAIR_DECL(f32_avx2, float)
KD_CE_PAIR_DECL(f64_avx2, double)
#endif

#undef KD_CE_PAIR_DECL

#endif
