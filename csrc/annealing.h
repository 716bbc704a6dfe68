/* Annealing-KD phase 1: regression of student logits onto the teacher's,
 * scaled by phi (shared/spec/annealing.md). Pure C11.
 *
 *     loss_i = sum_j (z_ij - phi v_ij)^2,   d loss_i / d z_ij = 2 (z_ij - phi v_ij)
 */
#ifndef KDTEMP_ANNEALING_H
#define KDTEMP_ANNEALING_H

#include <stdint.h>

#include "kd.h"

/* Row losses into row_loss[n_rows] (0 for skipped rows) and, when grad is not
 * NULL, grad_scale times their gradient (skipped rows zeroed; grad may be
 * student). With check_finite, any NaN or +-inf in a counted row is an error
 * (KD_ERR_NONFINITE_*, the first such row): a gradient written over the
 * student is then as it was; the rows of row_loss and of a separate grad
 * are unspecified. */
#define KD_MSE_DECL(SFX, FT)                                                     \
    int kd_mse_##SFX(int64_t n_rows, int64_t n_cols,                             \
                     const FT *student, int64_t student_stride,                  \
                     const FT *teacher, int64_t teacher_stride, double phi,      \
                     const kd_rows *rows, int check_finite, double grad_scale,   \
                     double *row_loss, FT *grad, int64_t grad_stride,            \
                     int n_threads, kd_status *status);

KD_MSE_DECL(f32, float)
KD_MSE_DECL(f64, double)

#endif
