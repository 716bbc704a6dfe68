/* KD kernels: the baseline instantiation of kd_kernels.h, the row counter,
 * and the public entry points, which run the widest build the CPU has. */
#include "kd.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "kd_common.h"
#include "kd_isa.h"

#define KD_ISA base
#include "kd_kernels.h"
#undef KD_ISA

int kd_count_rows(const kd_rows *rows, int64_t n_rows, int64_t n_cols,
                  int64_t *count, kd_status *status)
{
    int64_t c = 0;
    status->code = KD_OK;
    status->row = -1;
    for (int64_t i = 0; i < n_rows; i++) {
        if (!kd_row_counts(rows, i))
            continue;
        if (rows->labels) {
            int64_t y = rows->labels[i * rows->labels_stride];
            if (y < 0 || y >= n_cols) {
                status->row = i;
                return status->code = KD_ERR_LABEL;
            }
        }
        c++;
    }
    *count = c;
    return KD_OK;
}

int64_t kd_prefetch_bytes(void)
{
    static int64_t bytes = 0; /* every thread computes the same value: a benign race */
    if (bytes == 0) {
        long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
        l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        bytes = l2 > 0 ? (int64_t)l2 / 4 * 3 : 512 * 1024;
    }
    return bytes;
}

/* ---- dispatch ------------------------------------------------------------- */

/* -1: not decided yet, 0: baseline, 1: AVX2 + FMA, 2: AVX-512F (+ POPCNT) */
static int kd_isa_choice = -1;

#if KD_HAVE_AVX2_BUILD
static int kd_cpu_has(int level)
{
    __builtin_cpu_init();
    if (level >= 1 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 0;
    if (level >= 2 && !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("popcnt")))
        return 0;
    return 1;
}

static int kd_env_off(const char *name)
{
    const char *off = getenv(name);
    return off && off[0] && off[0] != '0';
}
#endif

static int kd_isa(void)
{
    int c = kd_isa_choice;
    if (c < 0) {
        c = 0;
#if KD_HAVE_AVX2_BUILD
        /* KDTEMP_DISABLE_AVX2 forces the baseline, KDTEMP_DISABLE_AVX512 AVX2 */
        if (!kd_env_off("KDTEMP_DISABLE_AVX2") && kd_cpu_has(1))
            c = !kd_env_off("KDTEMP_DISABLE_AVX512") && kd_cpu_has(2) ? 2 : 1;
#endif
        kd_isa_choice = c; /* every thread computes the same value: a benign race */
    }
    return c;
}

static const char *const kd_isa_names[] = {"baseline", "avx2", "avx512"};

const char *kd_isa_name(void) { return kd_isa_names[kd_isa()]; }

int kd_set_isa(const char *name)
{
    for (int level = 0; level < 3; level++) {
        if (strcmp(name, kd_isa_names[level]) != 0)
            continue;
#if KD_HAVE_AVX2_BUILD
        if (!kd_cpu_has(level))
            return -1;
#else
        if (level > 0)
            return -1;
#endif
        kd_isa_choice = level;
        return 0;
    }
    return -1;
}

#if KD_HAVE_AVX2_BUILD
#define KD_PICK(fn) (kd_isa() == 2 ? fn##_avx512 : kd_isa() == 1 ? fn##_avx2 : fn##_base)

/* JSD and the skew KLs of double rows spend their time in double-lane logs
 * and divisions. On Intel cores the AVX-512 build runs those 1.2-1.3x slower
 * than the AVX2 one (a 2-core Xeon VM, 256x32000), on AMD's (Zen 4, which
 * splits a 512-bit operation into two 256-bit halves) 1.1x faster (a 2-core
 * EPYC VM, 512x32000): on any CPU but AMD's they keep the AVX2 build. Float
 * rows take their terms in float lanes (kd_impl.h, lane_terms), where the
 * AVX-512 build is the faster one everywhere. */
static int kd_logs_avx2_choice = -1;

static int kd_logs_avx2(void)
{
    int c = kd_logs_avx2_choice;
    if (c < 0) {
        __builtin_cpu_init();
        c = !__builtin_cpu_is("amd");
        kd_logs_avx2_choice = c; /* the same value on every thread, as kd_isa_choice */
    }
    return c;
}

#define KD_PICK_FORWARD(fn, params, FT)                                          \
    (kd_isa() == 2 && sizeof(FT) == sizeof(double) &&                            \
             ((params)->divergence == KD_DIV_JSD ||                              \
              (params)->divergence == KD_DIV_SKEW_KL ||                          \
              (params)->divergence == KD_DIV_SKEW_REVERSE_KL) &&                 \
             kd_logs_avx2()                                                      \
         ? fn##_avx2                                                             \
         : KD_PICK(fn))
#else
#define KD_PICK(fn) fn##_base
#define KD_PICK_FORWARD(fn, params, FT) fn##_base
#endif

#define KD_DISPATCH(SFX, FT)                                                     \
    int kd_forward_##SFX(int64_t n_rows, int64_t n_cols, const FT *student,      \
                         int64_t student_stride, const FT *teacher,              \
                         int64_t teacher_stride, kd_temps student_t,             \
                         kd_temps teacher_t, const kd_rows *rows,                \
                         const kd_params *params, double grad_scale,             \
                         double *row_loss, FT *grad, int64_t grad_stride,        \
                         double *student_t_out, double *teacher_t_out,           \
                         int n_threads, kd_status *status)                       \
    {                                                                            \
        return KD_PICK_FORWARD(kd_forward_##SFX, params, FT)(n_rows, n_cols, student,\
                                         student_stride,                         \
                                         teacher, teacher_stride, student_t,     \
                                         teacher_t, rows, params, grad_scale,    \
                                         row_loss, grad, grad_stride,            \
                                         student_t_out, teacher_t_out,           \
                                         n_threads, status);                     \
    }                                                                            \
    int kd_softmax_##SFX(int64_t n_rows, int64_t n_cols, const FT *x,           \
                         int64_t x_stride, kd_temps t, int log_space,            \
                         int check_finite, FT *out, int64_t out_stride,          \
                         int n_threads, kd_status *status)                       \
    {                                                                            \
        return KD_PICK(kd_softmax_##SFX)(n_rows, n_cols, x, x_stride, t,         \
                                         log_space, check_finite, out,           \
                                         out_stride, n_threads, status);         \
    }                                                                            \
    int kd_lse_##SFX(int64_t n_rows, int64_t n_cols, const FT *x,               \
                     int64_t x_stride, kd_temps t, int check_finite,             \
                     double *out, int n_threads, kd_status *status)              \
    {                                                                            \
        return KD_PICK(kd_lse_##SFX)(n_rows, n_cols, x, x_stride, t,             \
                                     check_finite, out, n_threads, status);      \
    }                                                                            \
    int kd_row_stats_##SFX(int64_t n_rows, int64_t n_cols, const FT *x,         \
                           int64_t x_stride, kd_temps t, const kd_rows *rows,    \
                           int check_finite, const kd_stats_out *out,            \
                           int n_threads, kd_status *status)                     \
    {                                                                            \
        return KD_PICK(kd_row_stats_##SFX)(n_rows, n_cols, x, x_stride, t, rows, \
                                           check_finite, out, n_threads, status);\
    }                                                                            \
    int kd_profile_##SFX(int64_t n_rows, int64_t n_cols, const FT *student,     \
                         int64_t student_stride, const FT *teacher,              \
                         int64_t teacher_stride, const double *temperatures,     \
                         int64_t n_temps, const kd_rows *rows, int check_finite, \
                         double *row_out, int n_threads, kd_status *status)      \
    {                                                                            \
        return KD_PICK(kd_profile_##SFX)(n_rows, n_cols, student, student_stride,\
                                         teacher, teacher_stride, temperatures,  \
                                         n_temps, rows, check_finite, row_out,   \
                                         n_threads, status);                     \
    }                                                                            \
    int kd_ce_pair_##SFX(int64_t n_rows, int64_t student_cols, const FT *student,\
                         int64_t student_stride, int64_t teacher_cols,           \
                         const FT *teacher, int64_t teacher_stride,              \
                         const kd_rows *rows, int check_finite, double *row_ce,  \
                         double *student_sum, double *teacher_sum,               \
                         int64_t *count, int n_threads, kd_status *status)       \
    {                                                                            \
        return KD_PICK(kd_ce_pair_##SFX)(n_rows, student_cols, student,          \
                                         student_stride, teacher_cols, teacher,  \
                                         teacher_stride, rows, check_finite,     \
                                         row_ce, student_sum, teacher_sum,       \
                                         count, n_threads, status);              \
    }                                                                            \
    int kd_mse_##SFX(int64_t n_rows, int64_t n_cols, const FT *student,         \
                     int64_t student_stride, const FT *teacher,                  \
                     int64_t teacher_stride, double phi, const kd_rows *rows,    \
                     int check_finite, double grad_scale, double *row_loss,      \
                     FT *grad, int64_t grad_stride, int n_threads,               \
                     kd_status *status)                                          \
    {                                                                            \
        return KD_PICK(kd_mse_##SFX)(n_rows, n_cols, student, student_stride,    \
                                     teacher, teacher_stride, phi, rows,         \
                                     check_finite, grad_scale, row_loss, grad,   \
                                     grad_stride, n_threads, status);            \
    }

KD_DISPATCH(f32, float)
KD_DISPATCH(f64, double)
