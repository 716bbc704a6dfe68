/* Inline helpers shared by the kernel files (kd_impl.h, annealing_impl.h). */
#ifndef KDTEMP_KD_COMMON_H
#define KDTEMP_KD_COMMON_H

#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kd.h"
#include "kd_math.h" /* kd_sum_lanes */

/* Row sums run in KD_LANES independent double accumulators, combined in a
 * fixed order: the compiler can vectorise them without reassociating, and the
 * bits do not depend on SIMD width or thread count. */
#define KD_LANES 8

/* Below this many elements a loop stays on one thread: starting the team
 * costs more than the work. */
#define KD_PARALLEL_MIN_ELEMENTS 32768

/* Parallel row loops hand out their rows in chunks of at least about this
 * many elements (see kd_team), and run in groups of up to KD_ROW_GROUP rows
 * where a group's rows share work (the deferred logs of forward KL). */
#define KD_CHUNK_ELEMENTS 16384
#define KD_ROW_GROUP 4

/* How long the calling thread waits, spinning, for the rest of its team at
 * the end of a row loop (kd_team_finish), in seconds. */
#define KD_TEAM_SPIN_SECONDS 5e-4

/* A parallel row loop's schedule, and the count of the threads other than
 * the caller that are through it. Each loop is
 *     #pragma omp for schedule(guided, team.chunk) nowait
 * and then kd_team_finish in every thread.
 *
 * A thread that waits at a barrier sleeps once its spin count is used up,
 * at once under OMP_WAIT_POLICY=passive, and on a VM a sleeping thread
 * takes 35-170 us to wake: a 2-thread forward KL of 512 x 100 took 0.17-0.21
 * ms against 0.08 ms on one thread (2-core EPYC VM, passive). So the rows
 * go out in shrinking chunks (guided: a thread that asks gets 1/n of
 * what is left, down to the chunk size), the caller starts on them at once
 * and takes the rest of them if the others come late; and the caller, with
 * no chunk left, spins until the others are through, so that it reaches the
 * region's closing barrier last and does not sleep there. The spin is
 * bounded, the caller's own (no thread spins between calls), and left out
 * when the team has more threads than there are processors. Which thread
 * takes a row does not change that row's bits.
 * 2-core EPYC VM, passive, 2 threads: forward KL 1.3x faster at 4096 x 100,
 * 1.5-1.7x at 256 x 1000, 2x at 512 x 100; the large shapes unchanged. */
typedef struct {
    int64_t chunk; /* loop iterations per chunk */
    int arrived;
} kd_team;

/* the schedule of a row loop whose iterations each cover row_elements */
static inline kd_team kd_team_start(int64_t row_elements)
{
    kd_team t;
    t.chunk = row_elements >= KD_CHUNK_ELEMENTS ? 1 : KD_CHUNK_ELEMENTS / row_elements;
    t.arrived = 0;
    return t;
}

static inline void kd_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Each thread of the team, after its last chunk (with nowait): see kd_team. */
static inline void kd_team_finish(kd_team *t)
{
#if defined(_OPENMP) && _OPENMP >= 201107 /* atomic read / update: OpenMP 3.1 */
    const int n = omp_get_num_threads();
    if (n == 1)
        return;
    if (omp_get_thread_num() != 0) {
#pragma omp atomic update
        t->arrived++;
        return;
    }
    /* with more threads than processors the caller may share its core with
     * the thread it waits for: it waits at the barrier */
    if (n > omp_get_num_procs())
        return;
    const double until = omp_get_wtime() + KD_TEAM_SPIN_SECONDS;
    for (;;) {
        int a;
#pragma omp atomic read
        a = t->arrived;
        if (a >= n - 1 || omp_get_wtime() > until)
            return;
        kd_cpu_relax();
    }
#else
    (void)t;
#endif
}

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
