/* Inline helpers shared by the kernel files (kd_impl.h, annealing_impl.h). */
#ifndef KDTEMP_KD_COMMON_H
#define KDTEMP_KD_COMMON_H

#include <stdint.h>

#include "kd.h"
#include "kd_math.h" /* kd_sum_lanes */

/* Row sums run in KD_LANES independent double accumulators, combined in a
 * fixed order: the compiler can vectorise them without reassociating, and the
 * bits do not depend on SIMD width or thread count. */
#define KD_LANES 8

/* Below this many elements a loop stays on one thread: starting the team
 * costs more than the work. */
#define KD_PARALLEL_MIN_ELEMENTS 32768

/* Rows up to this many classes (every LLM vocabulary so far: Gemma's is
 * 256000) keep their exps between the passes, in per-thread row buffers of
 * C elements (and C doubles for a divergence's terms); longer rows keep the
 * student's only. Reading a buffer back, from L2 or from L3 for the long
 * rows, costs less than the exps and logs it saves: at 151936 classes the
 * kernels ran 1.1x (forward KL, ATKD) to 1.9x (TVD, JSD) faster with the
 * buffers than with 65536 as the limit (2-core EPYC VM, one thread). */
#define KD_CACHE_COLS 262144

static inline int kd_parallel(int n_threads, int64_t n_rows, int64_t n_cols)
{
    return n_threads > 1 && n_rows > 1 && n_rows * n_cols >= KD_PARALLEL_MIN_ELEMENTS;
}

/* Whether the bytes of two row-strided n x C arrays (element size es) can
 * overlap: their address ranges, whatever the strides' signs, intersect. */
static inline int kd_spans_overlap(const void *a, int64_t a_stride, const void *b,
                                   int64_t b_stride, int64_t n, int64_t C, size_t es)
{
    const uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    const int64_t ea = (n - 1) * a_stride, eb = (n - 1) * b_stride;
    const uintptr_t alo = pa + (uintptr_t)((ea < 0 ? ea : 0) * (int64_t)es);
    const uintptr_t ahi = pa + (uintptr_t)(((ea > 0 ? ea : 0) + C) * (int64_t)es);
    const uintptr_t blo = pb + (uintptr_t)((eb < 0 ? eb : 0) * (int64_t)es);
    const uintptr_t bhi = pb + (uintptr_t)(((eb > 0 ? eb : 0) + C) * (int64_t)es);
    return alo < bhi && blo < ahi;
}

static inline int kd_row_counts(const kd_rows *rows, int64_t i)
{
    if (rows->labels && rows->labels[i * rows->labels_stride] == rows->ignore_index)
        return 0;
    if (rows->mask && !rows->mask[i * rows->mask_stride])
        return 0;
    return 1;
}

/* Reduce per-row error codes to the first bad row, whatever the threads. */
#define KD_RECORD_ERROR(code, i, bad_code, bad_row)                              \
    do {                                                                         \
        if ((code) != KD_OK) {                                                   \
            _Pragma("omp critical(kd_status)")                                   \
            if ((i) < (bad_row)) {                                               \
                (bad_row) = (i);                                                 \
                (bad_code) = (code);                                             \
            }                                                                    \
        }                                                                        \
    } while (0)

#endif
