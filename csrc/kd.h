/* Fused knowledge-distillation kernels: loss and gradient in one call.
 *
 * Pure C11, no Python objects. Every array is a 2-D block of rows with
 * contiguous columns; strides are in elements. Formulas: shared/spec/kd.md.
 * Each function exists as _f32 (float) and _f64 (double); row sums are
 * accumulated in double for both (the float KL-type sums in blocks of four
 * float terms: kd_impl.h, rsum).
 */
#ifndef KDTEMP_KD_H
#define KDTEMP_KD_H

#include <stdint.h>

enum kd_divergence {
    KD_DIV_KL = 0,
    KD_DIV_REVERSE_KL,
    KD_DIV_SYMMETRIC_KL,
    KD_DIV_JSD,
    KD_DIV_SKEW_KL,
    KD_DIV_SKEW_REVERSE_KL,
    KD_DIV_TVD,
    KD_DIV_DKD,          /* decoupled KD: alpha TCKD + beta NCKD, needs labels */
    KD_DIV_COUNT
};

/* s_i: 1, tS_i * tT_i, or a constant (ATKD's "base": b^2) */
enum kd_scale { KD_SCALE_NONE = 0, KD_SCALE_T2 = 1, KD_SCALE_CONST = 2 };

enum kd_status_code {
    KD_OK = 0,
    KD_ERR_NONFINITE_STUDENT, /* NaN or +inf in a student row */
    KD_ERR_NONFINITE_TEACHER,
    KD_ERR_ALLINF_STUDENT,    /* a counted row whose logits are all -inf */
    KD_ERR_ALLINF_TEACHER,
    KD_ERR_LABEL,             /* label outside [0, C) that is not ignore_index */
    KD_ERR_ARGUMENT           /* a size or stride the kernel cannot use */
};

/* What went wrong and where: the smallest offending row, so the report does
 * not depend on the thread count. */
typedef struct {
    int code;
    int64_t row;
} kd_status;

/* Optional per-row selectors shared by every loss kernel. A row counts when
 * (labels == NULL || labels[i] != ignore_index) && (mask == NULL || mask[i]). */
typedef struct {
    const int64_t *labels; /* NULL: none */
    int64_t labels_stride;
    int64_t ignore_index;
    const uint8_t *mask; /* NULL: none */
    int64_t mask_stride;
} kd_rows;

typedef struct {
    int divergence;      /* enum kd_divergence */
    double beta;         /* jsd, in (0, 1); dkd: weight of NCKD */
    double alpha;        /* skew_*, in [0, 1); dkd: weight of TCKD */
    int scale;           /* enum kd_scale */
    double scale_value;  /* KD_SCALE_CONST */
    double kd_weight;
    double ce_weight;    /* != 0 needs rows.labels */
    double label_smoothing;
    int check_finite;
    /* ATKD (divergence KL only): tS_i = b (std(z_i) + eps), tT_i likewise,
     * std over the row's finite entries with ddof; the temperature arguments
     * are ignored. With detach_temperature == 0 the gradient includes the
     * terms through tS (spec/atkd.md). */
    int adaptive;
    double base_temperature;
    int ddof;
    double std_eps;
    int detach_temperature;
} kd_params;

/* A temperature per row: t[i * stride]; stride 0 broadcasts one value. */
typedef struct {
    const double *t;
    int64_t stride;
} kd_temps;

/* Per-row statistics of logits at a temperature t (spec/diagnostics.md):
 * max logit, lse(x/t), mean and std of the finite logits (ddof 0), entropy
 * and top-1 probability of softmax(x/t), argmax, and with labels the
 * cross-entropy at t = 1 and whether the argmax is the label. Skipped rows get
 * NaN (argmax -1). */
typedef struct {
    double *max, *lse, *mean, *std, *entropy, *top1, *ce;
    int64_t *argmax;
    uint8_t *correct;
} kd_stats_out;

/* The temperature profile's per-row values, KD_PROFILE_FIELDS per temperature:
 * T^2 KL(pT || pS), T^2 sum_j (pS_j - pT_j)^2 (the squared gradient norm of
 * the row's T^2 KL before the batch division), the teacher's and the
 * student's entropy, the teacher's top-1 probability, lse(v/T) - lse(z/T). */
enum {
    KD_PROFILE_KD = 0,
    KD_PROFILE_GRAD2,
    KD_PROFILE_H_TEACHER,
    KD_PROFILE_H_STUDENT,
    KD_PROFILE_TOP1_TEACHER,
    KD_PROFILE_GAP,
    KD_PROFILE_FIELDS
};

/* A row's first exp pass prefetches the next row while that row's inputs
 * take at most this many bytes (kd.c): three quarters of one core's L2,
 * from sysconf, or 512 KiB where the system does not tell. With the row
 * being computed they then stay in L2, or in the L3 behind it. Sized by
 * the L2 rather than fixed for a 1 MiB one: on a 2 MiB L2 (Xeon VM, one
 * thread, 512 x 151936) it lets CE and the DTS CE pair (two rows of 594
 * KiB) prefetch, 1.15x and 1.35x faster; forward KL's three rows stay
 * over the limit, where prefetching them measured 1.05x slower. */
int64_t kd_prefetch_bytes(void);

/* Count the rows that count and check labels: returns KD_OK or KD_ERR_LABEL
 * (status->row = first bad row). */
int kd_count_rows(const kd_rows *rows, int64_t n_rows, int64_t n_cols,
                  int64_t *count, kd_status *status);

/* Row losses kd_weight * s_i * D_i + ce_weight * ce_i into row_loss[n_rows]
 * (0 for skipped rows) and, when grad != NULL, grad_scale times their
 * gradient with respect to the student into grad (skipped rows zeroed).
 * grad may equal student (in place). student_t_out / teacher_t_out, when not
 * NULL, receive the temperatures each row used (n_rows values). Returns a
 * kd_status_code. On an error a gradient written over the student (in
 * place) leaves it as it was; a separate grad, row_loss and the temperature
 * outputs hold unspecified values in their rows (kd_softmax: the same with
 * out and x). */
#define KD_KERNEL_DECLS(SFX, FT)                                                 \
    int kd_forward_##SFX(int64_t n_rows, int64_t n_cols,                         \
                         const FT *student, int64_t student_stride,              \
                         const FT *teacher, int64_t teacher_stride,              \
                         kd_temps student_t, kd_temps teacher_t,                 \
                         const kd_rows *rows, const kd_params *params,           \
                         double grad_scale, double *row_loss,                    \
                         FT *grad, int64_t grad_stride,                          \
                         double *student_t_out, double *teacher_t_out,           \
                         int n_threads, kd_status *status);                      \
    /* softmax(x / t) or, with log_space, log_softmax(x / t), row by row;        \
     * out may equal x. */                                                        \
    int kd_softmax_##SFX(int64_t n_rows, int64_t n_cols,                         \
                         const FT *x, int64_t x_stride, kd_temps t,              \
                         int log_space, int check_finite,                        \
                         FT *out, int64_t out_stride,                            \
                         int n_threads, kd_status *status);                      \
    /* lse(x_i / t_i) = max_j x_ij / t_i + log sum_j exp((x_ij - max) / t_i)  \
     * into out[n_rows] (ATKD's sharpness). */                                   \
    int kd_lse_##SFX(int64_t n_rows, int64_t n_cols, const FT *x,               \
                     int64_t x_stride, kd_temps t, int check_finite,             \
                     double *out, int n_threads, kd_status *status);             \
    int kd_row_stats_##SFX(int64_t n_rows, int64_t n_cols, const FT *x,         \
                           int64_t x_stride, kd_temps t, const kd_rows *rows,    \
                           int check_finite, const kd_stats_out *out,            \
                           int n_threads, kd_status *status);                    \
    /* row_out[n_rows][n_temps][KD_PROFILE_FIELDS]; skipped rows get zeros */    \
    int kd_profile_##SFX(int64_t n_rows, int64_t n_cols, const FT *student,     \
                         int64_t student_stride, const FT *teacher,              \
                         int64_t teacher_stride, const double *temperatures,     \
                         int64_t n_temps, const kd_rows *rows, int check_finite, \
                         double *row_out, int n_threads, kd_status *status);     \
    /* DTS's two batch cross-entropies at t = 1 from one pass over the row     \
     * pairs: ce_i(x) = lse(x_i) - x_{i, y_i}, student_sum = sum_i ce_i(z),     \
     * teacher_sum = sum_i ce_i(v), over the rows that count (rows->labels     \
     * required). The arrays may differ in their number of classes; a          \
     * counted label must be in [0, min(student_cols, teacher_cols)). row_ce   \
     * is scratch of 2 * n_rows doubles. The per-row values are ce_loss's      \
     * bits, summed in row order. Errors (first row of the first kind):        \
     * KD_ERR_LABEL, then the student's, then the teacher's. */                \
    int kd_ce_pair_##SFX(int64_t n_rows, int64_t student_cols,                   \
                         const FT *student, int64_t student_stride,              \
                         int64_t teacher_cols, const FT *teacher,                \
                         int64_t teacher_stride, const kd_rows *rows,            \
                         int check_finite, double *row_ce,                       \
                         double *student_sum, double *teacher_sum,               \
                         int64_t *count, int n_threads, kd_status *status);

KD_KERNEL_DECLS(f32, float)
KD_KERNEL_DECLS(f64, double)

#endif
