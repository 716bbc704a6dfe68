/* Elementwise math the kernels inline into their row loops.
 *
 * libm's exp is a call per element and blocks vectorisation; these are plain
 * arithmetic plus a bit cast, so GCC/Clang turn the loops that call them into
 * SIMD code at any ISA level. They are exact to about 1.2 ulp (float; the
 * fused vector builds 1.5 ulp for x >= -10, see KD_EXPF_REDUCE, and the
 * AVX-512 build's table exp 1.8, see kd_exp_keep_v16f) and 2 ulp
 * (double) on the range the kernels use (x <= 0 after the row max is
 * subtracted); -inf gives 0, NaN gives NaN.
 */
#ifndef KDTEMP_KD_MATH_H
#define KDTEMP_KD_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
 * exp(r) = 1 + r + r^2 q(r) with q a degree-4 minimax fit of relative error
 * (1.2 ulp in float arithmetic, fitted by tools/fit_exp.py), scale by 2^n
 * through the exponent bits. Results below 2^-126 are flushed to 0: they are
 * at least 38 decades below the row's largest term (which is 1) and cannot
 * change a sum. */
#define KD_EXPF_Q4 1.381461275741458e-3f
#define KD_EXPF_Q3 8.368710055947304e-3f
#define KD_EXPF_Q2 4.166838899254799e-2f
#define KD_EXPF_Q1 1.666652113199234e-1f
#define KD_EXPF_Q0 4.999999403953552e-1f
#define KD_EXPF_LO (-87.33654f) /* log(2^-126) */
#define KD_EXPF_HI 88.37626f
#define KD_LN2_HI_F 0.693359375f /* ln 2 = HI - LO_NEG, HI with 9 bits */
#define KD_LN2_LO_NEG_F 2.12194440e-4f
#define KD_LN2_F 0.693147182f /* ln 2 rounded to float */
#define KD_SHIFTER_F 12582912.0f /* 1.5 * 2^23: t + it rounds t to an integer */
#define KD_EXPD_LO (-708.3964185322641) /* log(2^-1022) */

static inline float kd_exp_f32(float x)
{
    float xc = x < KD_EXPF_LO ? KD_EXPF_LO : x;
    xc = xc > KD_EXPF_HI ? KD_EXPF_HI : xc;
    float t = xc * 1.44269504088896341f + KD_SHIFTER_F;
    float n = t - KD_SHIFTER_F;
    float r = xc - n * KD_LN2_HI_F;
    r = r + n * KD_LN2_LO_NEG_F;
    float q = KD_EXPF_Q4;
    q = q * r + KD_EXPF_Q3;
    q = q * r + KD_EXPF_Q2;
    q = q * r + KD_EXPF_Q1;
    q = q * r + KD_EXPF_Q0;
    float y = q * (r * r) + r + 1.0f;
    int32_t tb;
    memcpy(&tb, &t, sizeof tb);
    /* t's low bits hold n: (n + 127) << 23 is the float 2^n */
    uint32_t bits = ((uint32_t)tb << 23) + ((127u - 0x4B400000u) << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    y = y * scale;
    y = x < KD_EXPF_LO ? 0.0f : y;
    return x > KD_EXPF_HI ? INFINITY : y;
}

/* exp(x) for double: the same scheme with fdlibm's split of ln2 and the Taylor
 * series to degree 13 (truncation error < 1e-17 on |r| <= ln2/2). */
static inline double kd_exp_f64(double x)
{
    const double lo = KD_EXPD_LO, hi = 709.0;
    double xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52 */
    double t = xc * 1.4426950408889634074 + shifter;
    double n = t - shifter;
    double r = xc - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    double y = p * r * r + r + 1.0;
    int64_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&sb, &shifter, sizeof sb);
    int64_t bits = (int64_t)((uint64_t)(tb - sb + 1023) << 52);
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    y = y * scale;
    y = x < lo ? 0.0 : y;
    return x > hi ? INFINITY : y;
}

/* The vector helpers must inline: passed by value across a call, a vector
 * wider than the ISA's registers goes through memory. */
#define KD_VINLINE static inline __attribute__((always_inline))

/* ---- SIMD lanes ---------------------------------------------------------
 * GCC/Clang vector extensions of 32 bytes (one AVX register, two SSE ones):
 * eight float lanes or four double lanes, on every ISA, so the row loops are
 * SIMD whatever the auto-vectoriser decides and the lane structure (hence
 * the bits of every sum) is fixed. Row sums of float input are accumulated
 * in double (in kd_impl.h's rsum, after blocks of four float terms). */
typedef float kd_v8f __attribute__((vector_size(32)));
typedef int32_t kd_v8i __attribute__((vector_size(32)));
typedef uint32_t kd_v8u __attribute__((vector_size(32)));
typedef float kd_v4f __attribute__((vector_size(16)));
typedef double kd_v4d __attribute__((vector_size(32)));
typedef int64_t kd_v4l __attribute__((vector_size(32)));
typedef uint64_t kd_v4ul __attribute__((vector_size(32)));

/* eight double accumulators for eight float lanes */
typedef struct {
    kd_v4d lo, hi;
} kd_acc8;

/* Unaligned load and store of a vector V of elements E (kd_load_SFX,
 * kd_store_SFX), and m ? a : b lane by lane (kd_sel_SFX; m from a
 * comparison: all ones or all zeros in lanes of the int vector I). */
#define KD_DEFINE_LANE_OPS(SFX, V, I, E)                                         \
    KD_VINLINE V kd_load_##SFX(const E *p)                                       \
    {                                                                            \
        V v;                                                                     \
        memcpy(&v, p, sizeof v);                                                 \
        return v;                                                                \
    }                                                                            \
    KD_VINLINE void kd_store_##SFX(E *p, V v) { memcpy(p, &v, sizeof v); }       \
    KD_VINLINE V kd_sel_##SFX(I m, V a, V b) { return (V)(((I)a & m) | ((I)b & ~m)); }

KD_DEFINE_LANE_OPS(v8f, kd_v8f, kd_v8i, float)
KD_DEFINE_LANE_OPS(v4d, kd_v4d, kd_v4l, double)

/* ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)): the one order every
 * eight-lane double sum is reduced in */
static inline double kd_sum_lanes(const double *s)
{
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* a * b + c. The vector builds (KD_AVX2_FMA) round once, the baseline
 * twice: the builds' results differ in the last bits, each is the same for
 * any thread count. Only the exps use it, where it is a third of the work.
 * Halves of eight float lanes, and four floats to four doubles and back: the
 * same values on every build, through intrinsics in the AVX2 one because
 * GCC lowers the generic forms there to 128-bit pieces through the stack. */
#ifdef KD_AVX2_FMA
#include <immintrin.h>
KD_VINLINE kd_v8f kd_fma_v8f(kd_v8f a, kd_v8f b, kd_v8f c)
{
    return (kd_v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
KD_VINLINE kd_v4d kd_fma_v4d(kd_v4d a, kd_v4d b, kd_v4d c)
{
    return (kd_v4d)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
}
/* v > m ? v : m, NaN v included (vmaxps returns its second operand then) */
KD_VINLINE kd_v8f kd_max_v8f(kd_v8f v, kd_v8f m) { return (kd_v8f)_mm256_max_ps((__m256)v, (__m256)m); }
KD_VINLINE kd_v4d kd_max_v4d(kd_v4d v, kd_v4d m) { return (kd_v4d)_mm256_max_pd((__m256d)v, (__m256d)m); }
KD_VINLINE kd_v4f kd_lo_v8f(kd_v8f x) { return (kd_v4f)_mm256_castps256_ps128((__m256)x); }
KD_VINLINE kd_v4f kd_hi_v8f(kd_v8f x) { return (kd_v4f)_mm256_extractf128_ps((__m256)x, 1); }
KD_VINLINE kd_v4d kd_widen_v4f(kd_v4f x) { return (kd_v4d)_mm256_cvtps_pd((__m128)x); }
KD_VINLINE kd_v4f kd_narrow_v4d(kd_v4d x) { return (kd_v4f)_mm256_cvtpd_ps((__m256d)x); }
KD_VINLINE kd_v8f kd_concat_v4f(kd_v4f lo, kd_v4f hi)
{
    return (kd_v8f)_mm256_insertf128_ps(_mm256_castps128_ps256((__m128)lo), (__m128)hi, 1);
}
/* The first n (< lanes) elements at x, the other lanes `pad`; and the store
 * of the first n lanes. Masked loads and stores: a vector load from a
 * just-written buffer would stall on store forwarding, once per row. */
KD_VINLINE kd_v8i kd_tail_mask_v8(int64_t n)
{
    const kd_v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    return lane < (int32_t)n;
}
KD_VINLINE kd_v4l kd_tail_mask_v4(int64_t n)
{
    const kd_v4l lane = {0, 1, 2, 3};
    return lane < (int64_t)n;
}
KD_VINLINE kd_v8f kd_load_tail_v8f(const float *x, int64_t n, float pad)
{
    const kd_v8i m = kd_tail_mask_v8(n);
    const kd_v8f v = (kd_v8f)_mm256_maskload_ps(x, (__m256i)m);
    return kd_sel_v8f(m, v, (kd_v8f){0} + pad);
}
KD_VINLINE kd_v4d kd_load_tail_v4d(const double *x, int64_t n, double pad)
{
    const kd_v4l m = kd_tail_mask_v4(n);
    const kd_v4d v = (kd_v4d)_mm256_maskload_pd(x, (__m256i)m);
    return kd_sel_v4d(m, v, (kd_v4d){0} + pad);
}
KD_VINLINE void kd_store_tail_v8f(float *x, int64_t n, kd_v8f v)
{
    _mm256_maskstore_ps(x, (__m256i)kd_tail_mask_v8(n), (__m256)v);
}
KD_VINLINE void kd_store_tail_v4d(double *x, int64_t n, kd_v4d v)
{
    _mm256_maskstore_pd(x, (__m256i)kd_tail_mask_v4(n), (__m256d)v);
}
/* The largest lane of a running max (kd_max_* never lets a NaN in), and
 * whether a comparison mask has any lane set: shuffles rather than a loop
 * over the lanes, once per row. */
KD_VINLINE float kd_hmax_v8f(kd_v8f m)
{
    __m128 q = _mm_max_ps(_mm256_castps256_ps128((__m256)m), _mm256_extractf128_ps((__m256)m, 1));
    q = _mm_max_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_max_ss(q, _mm_shuffle_ps(q, q, 1)));
}
KD_VINLINE double kd_hmax_v4d(kd_v4d m)
{
    const __m128d q = _mm_max_pd(_mm256_castpd256_pd128((__m256d)m),
                                 _mm256_extractf128_pd((__m256d)m, 1));
    return _mm_cvtsd_f64(_mm_max_sd(q, _mm_unpackhi_pd(q, q)));
}
KD_VINLINE int kd_any_v8i(kd_v8i m) { return _mm256_movemask_ps((__m256)m) != 0; }
KD_VINLINE int kd_any_v4l(kd_v4l m) { return _mm256_movemask_pd((__m256d)m) != 0; }
#else
KD_VINLINE kd_v8f kd_fma_v8f(kd_v8f a, kd_v8f b, kd_v8f c) { return a * b + c; }
KD_VINLINE kd_v4d kd_fma_v4d(kd_v4d a, kd_v4d b, kd_v4d c) { return a * b + c; }
KD_VINLINE kd_v8f kd_max_v8f(kd_v8f v, kd_v8f m) { return kd_sel_v8f(v > m, v, m); }
KD_VINLINE kd_v4d kd_max_v4d(kd_v4d v, kd_v4d m) { return kd_sel_v4d(v > m, v, m); }
KD_VINLINE kd_v4f kd_lo_v8f(kd_v8f x)
{
    kd_v4f q;
    memcpy(&q, &x, sizeof q);
    return q;
}
KD_VINLINE kd_v4f kd_hi_v8f(kd_v8f x)
{
    kd_v4f q;
    memcpy(&q, (const char *)&x + sizeof q, sizeof q);
    return q;
}
KD_VINLINE kd_v4d kd_widen_v4f(kd_v4f x) { return __builtin_convertvector(x, kd_v4d); }
KD_VINLINE kd_v4f kd_narrow_v4d(kd_v4d x) { return __builtin_convertvector(x, kd_v4f); }
KD_VINLINE kd_v8f kd_concat_v4f(kd_v4f lo, kd_v4f hi)
{
    kd_v8f r;
    memcpy(&r, &lo, sizeof lo);
    memcpy((char *)&r + sizeof lo, &hi, sizeof hi);
    return r;
}
/* the first n (< L) elements through a buffer (no masked loads on SSE2) */
#define KD_DEFINE_BUFFER_TAILS(SFX, V, E, L)                                     \
    KD_VINLINE V kd_load_tail_##SFX(const E *x, int64_t n, E pad)                \
    {                                                                            \
        E buf[L];                                                                \
        for (int k = 0; k < L; k++)                                              \
            buf[k] = k < n ? x[k] : pad;                                         \
        return kd_load_##SFX(buf);                                               \
    }                                                                            \
    KD_VINLINE void kd_store_tail_##SFX(E *x, int64_t n, V v)                    \
    {                                                                            \
        E buf[L];                                                                \
        kd_store_##SFX(buf, v);                                                  \
        memcpy(x, buf, sizeof(E) * (size_t)n);                                   \
    }
KD_DEFINE_BUFFER_TAILS(v8f, kd_v8f, float, 8)
KD_DEFINE_BUFFER_TAILS(v4d, kd_v4d, double, 4)
/* the largest lane, and whether any mask lane is set (as the AVX2 ones) */
#define KD_DEFINE_LANE_REDUCTIONS(SFX, V, I, E, L, ISFX)                         \
    KD_VINLINE E kd_hmax_##SFX(V m)                                              \
    {                                                                            \
        E x = m[0];                                                              \
        for (int k = 1; k < L; k++)                                              \
            x = m[k] > x ? m[k] : x;                                             \
        return x;                                                                \
    }                                                                            \
    KD_VINLINE int kd_any_##ISFX(I m)                                            \
    {                                                                            \
        int any = 0;                                                             \
        for (int k = 0; k < L; k++)                                              \
            any |= m[k] != 0;                                                    \
        return any;                                                              \
    }
KD_DEFINE_LANE_REDUCTIONS(v8f, kd_v8f, kd_v8i, float, 8, v8i)
KD_DEFINE_LANE_REDUCTIONS(v4d, kd_v4d, kd_v4l, double, 4, v4l)
#endif

/* accumulators of float rows: acc += x, acc += x * y (in double; a sum of
 * two floats in float would drop the small terms next to the row's largest,
 * exactly the ones 1 - p and a small KL depend on) */
KD_VINLINE void kd_acc_add_v8f(kd_acc8 *acc, kd_v8f x)
{
    acc->lo += kd_widen_v4f(kd_lo_v8f(x));
    acc->hi += kd_widen_v4f(kd_hi_v8f(x));
}
KD_VINLINE void kd_acc_mul_v8f(kd_acc8 *acc, kd_v8f x, kd_v8f y)
{
    acc->lo += kd_widen_v4f(kd_lo_v8f(x)) * kd_widen_v4f(kd_lo_v8f(y));
    acc->hi += kd_widen_v4f(kd_hi_v8f(x)) * kd_widen_v4f(kd_hi_v8f(y));
}
/* s += d, q += d^2 with d = x - shift in double (exact for float x, shift),
 * and n += 1, over the lanes x > -inf (the others' d is 0; NaN is not
 * counted); shift is a float value */
KD_VINLINE void kd_acc_dev_fin_v8f(kd_acc8 *s, kd_acc8 *q, kd_v8i *n, kd_v8f x, double shift)
{
    const kd_v8i fin = x > -INFINITY;
    *n -= fin; /* (true is -1) */
    x = kd_sel_v8f(fin, x, (kd_v8f){0} + (float)shift);
    const kd_v4d lo = kd_widen_v4f(kd_lo_v8f(x)) - shift, hi = kd_widen_v4f(kd_hi_v8f(x)) - shift;
    s->lo += lo;
    s->hi += hi;
    q->lo = kd_fma_v4d(lo, lo, q->lo);
    q->hi = kd_fma_v4d(hi, hi, q->hi);
}
/* acc += w (x - shift) in double */
KD_VINLINE void kd_acc_wdev_v8f(kd_acc8 *acc, kd_v8f w, kd_v8f x, double shift)
{
    acc->lo = kd_fma_v4d(kd_widen_v4f(kd_lo_v8f(w)), kd_widen_v4f(kd_lo_v8f(x)) - shift, acc->lo);
    acc->hi = kd_fma_v4d(kd_widen_v4f(kd_hi_v8f(w)), kd_widen_v4f(kd_hi_v8f(x)) - shift, acc->hi);
}
#ifdef KD_AVX2_FMA
/* kd_sum_lanes of s0..s3 = lo, s4..s7 = hi in registers (the same additions:
 * hadd gives s0+s1, s4+s5, s2+s3, s6+s7), and of four lanes,
 * (a0 + a1) + (a2 + a3); a reduction per row sum, so it counts at small C */
KD_VINLINE double kd_sum_halves_v4d(kd_v4d lo, kd_v4d hi)
{
    const __m256d t = _mm256_hadd_pd((__m256d)lo, (__m256d)hi);
    const __m128d u = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    return _mm_cvtsd_f64(_mm_add_sd(u, _mm_unpackhi_pd(u, u)));
}
KD_VINLINE double kd_acc_sum_v8f(kd_acc8 acc) { return kd_sum_halves_v4d(acc.lo, acc.hi); }
KD_VINLINE double kd_acc_sum_v4d(kd_v4d acc)
{
    const __m256d t = _mm256_hadd_pd((__m256d)acc, (__m256d)acc);
    return _mm_cvtsd_f64(_mm_add_sd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1)));
}
#else
KD_VINLINE double kd_acc_sum_v8f(kd_acc8 acc)
{
    double s[8];
    kd_store_v4d(s, acc.lo);
    kd_store_v4d(s + 4, acc.hi);
    return kd_sum_lanes(s);
}
KD_VINLINE double kd_acc_sum_v4d(kd_v4d acc) { return (acc[0] + acc[1]) + (acc[2] + acc[3]); }
#endif
KD_VINLINE void kd_acc_add_v4d(kd_v4d *acc, kd_v4d x) { *acc += x; }
KD_VINLINE void kd_acc_mul_v4d(kd_v4d *acc, kd_v4d x, kd_v4d y) { *acc += x * y; }

/* y 2^n, n an integer-valued lane of t - shifter (t holds n in its low
 * mantissa bits), for lanes x >= lo, and 0 below (-inf included): 2^n is
 * built from t's bits. (The AVX-512 build's double exp scales with vscalef
 * instead, one instruction for the three; the products are the same.) */
#define KD_DEFINE_EXP_SCALE(NAME, V, I, U, LO, SHIFT, BIAS)                      \
    KD_VINLINE V NAME(V x, V y, V t, V n)                                        \
    {                                                                            \
        (void)n;                                                                 \
        const I under = x < (V){0} + (LO);                                       \
        const U bits = ((U)t << SHIFT) + (BIAS);                                 \
        return (V)((I)(y * (V)bits) & ~under);                                   \
    }
#define KD_EXPF_SCALE_BIAS ((127u - 0x4B400000u) << 23)
#define KD_EXPD_SCALE_BIAS ((1023ull - 0x4338000000000000ull) << 52)
KD_DEFINE_EXP_SCALE(kd_exp_scale_v8f, kd_v8f, kd_v8i, kd_v8u, KD_EXPF_LO, 23, KD_EXPF_SCALE_BIAS)
KD_DEFINE_EXP_SCALE(kd_exp_scale_v4d, kd_v4d, kd_v4l, kd_v4ul, KD_EXPD_LO, 52,
                    KD_EXPD_SCALE_BIAS)

/* The float exps are most of the work of every kernel; the fused builds
 * (KD_AVX2_FMA) take two of their thirteen operations out:
 * - r = x - n ln2 in one multiply-add by ln 2 rounded to float: r is off by
 *   |n| |ln2_f - ln2| = |n| 1.9e-9. The baseline rounds the product, so it
 *   keeps the two-part ln 2.
 * - 1 + r + r^2 q(r) as 1 + r (1 + r q(r)), two multiply-adds instead of a
 *   multiply, a multiply-add and an add: the same polynomial, whose unfused
 *   Horner form would be 1.4 ulp where the baseline's is 1.1.
 * The exp's error goes from 1.4 ulp to 1.5 ulp for x >= -10 and 5 ulp at
 * KD_EXPF_LO (2^-126, where the terms cannot move a sum). A/B (2-core EPYC
 * VM, float32): forward KL at 4096 x 100 1.04x and 1.01x, the DTS CE pair
 * 1.05x and 1.035x, the one and the other. */
#ifdef KD_AVX2_FMA
#define KD_EXPF_REDUCE(FMA, zero, n, x) FMA(n, (zero) - KD_LN2_F, x)
#define KD_EXPF_FINISH(FMA, zero, q, r) FMA(FMA(q, r, (zero) + 1.0f), r, (zero) + 1.0f)
#else
#define KD_EXPF_REDUCE(FMA, zero, n, x)                                          \
    FMA(n, (zero) + KD_LN2_LO_NEG_F, FMA(n, (zero) - KD_LN2_HI_F, x))
#define KD_EXPF_FINISH(FMA, zero, q, r) (FMA(q, (r) * (r), r) + 1.0f)
#endif

/* kd_exp_f32 on float lanes V (multiply-add FMA, scaling SCALE as above),
 * for x <= 0 (or NaN): every vector exp in the kernels is of
 * (x - row max) / t, so the scalar function's overflow clamp is left out,
 * and so is its underflow clamp: lanes below KD_EXPF_LO compute garbage
 * that SCALE turns into 0 (-inf included). Multiply-adds are fused in the
 * AVX2 and AVX-512 builds. */
#define KD_DEFINE_EXPF(NAME, V, FMA, SCALE)                                      \
    KD_VINLINE V NAME(V x)                                                       \
    {                                                                            \
        const V zero = {0};                                                      \
        const V shifter = zero + KD_SHIFTER_F;                                   \
        V t = FMA(x, zero + 1.44269504088896341f, shifter);                      \
        V n = t - shifter;                                                       \
        V r = KD_EXPF_REDUCE(FMA, zero, n, x);                                   \
        V q = zero + KD_EXPF_Q4;                                                 \
        q = FMA(q, r, zero + KD_EXPF_Q3);                                        \
        q = FMA(q, r, zero + KD_EXPF_Q2);                                        \
        q = FMA(q, r, zero + KD_EXPF_Q1);                                        \
        q = FMA(q, r, zero + KD_EXPF_Q0);                                        \
        V y = KD_EXPF_FINISH(FMA, zero, q, r);                                   \
        return SCALE(x, y, t, n);                                                \
    }

/* kd_exp_f64 on double lanes, for x <= 0 (or NaN), as KD_DEFINE_EXPF */
#define KD_DEFINE_EXPD(NAME, V, FMA, SCALE)                                      \
    KD_VINLINE V NAME(V x)                                                       \
    {                                                                            \
        const V zero = {0};                                                      \
        const V shifter = zero + 6755399441055744.0; /* 1.5 * 2^52 */            \
        V t = FMA(x, zero + 1.4426950408889634074, shifter);                     \
        V n = t - shifter;                                                       \
        V r = FMA(n, zero - 6.93147180369123816490e-01, x);                      \
        r = FMA(n, zero - 1.90821492927058770002e-10, r);                        \
        V p = zero + 1.0 / 6227020800.0;                                         \
        p = FMA(p, r, zero + 1.0 / 479001600.0);                                 \
        p = FMA(p, r, zero + 1.0 / 39916800.0);                                  \
        p = FMA(p, r, zero + 1.0 / 3628800.0);                                   \
        p = FMA(p, r, zero + 1.0 / 362880.0);                                    \
        p = FMA(p, r, zero + 1.0 / 40320.0);                                     \
        p = FMA(p, r, zero + 1.0 / 5040.0);                                      \
        p = FMA(p, r, zero + 1.0 / 720.0);                                       \
        p = FMA(p, r, zero + 1.0 / 120.0);                                       \
        p = FMA(p, r, zero + 1.0 / 24.0);                                        \
        p = FMA(p, r, zero + 1.0 / 6.0);                                         \
        p = FMA(p, r, zero + 0.5);                                               \
        V y = FMA(p, r * r, r) + 1.0;                                            \
        return SCALE(x, y, t, n);                                                \
    }

KD_DEFINE_EXPF(kd_exp_v8f, kd_v8f, kd_fma_v8f, kd_exp_scale_v8f)

/* exp(x) for x < 0, and 0 for x == 0 (a row's maxima, whose exps are 1),
 * counted in *tops (minus one per such lane): the partition sums add these
 * exps in float partials (kd_impl.h, row_sumexp_store_as); kd_off_top_v8f
 * does it to ex = exp(x) computed already */
KD_VINLINE kd_v8f kd_off_top_v8f(kd_v8f x, kd_v8f ex, kd_v8i *tops)
{
    const kd_v8i top = x == (kd_v8f){0};
    *tops -= top; /* (true is -1) */
    return (kd_v8f)((kd_v8i)ex & ~top);
}
KD_VINLINE kd_v8f kd_exp_off_top_v8f(kd_v8f x, kd_v8i *tops)
{
    return kd_off_top_v8f(x, kd_exp_v8f(x), tops);
}
KD_VINLINE int64_t kd_count_tops_v8i(kd_v8i tops)
{
    int64_t n = 0;
    for (int l = 0; l < 8; l++)
        n += tops[l];
    return n;
}

/* log(x) on float lanes V (ints I), for positive normal x (the float-lane
 * divergence terms take it of w in [2^-60, 1]): x = m 2^e with m in
 * [sqrt(1/2), sqrt(2)) by integer arithmetic on the bits, f = m - 1 exactly,
 * log(1 + f) = f - f^2/2 + f^3 P(f) with Cephes' logf polynomial (degree 8,
 * about 1 ulp), e ln 2 added in two parts. */
#define KD_LOGF_SQRTH_BITS 0x3f3504f3 /* sqrt(1/2) */
#define KD_DEFINE_LOGF(NAME, V, I, FMA)                                          \
    KD_VINLINE V NAME(V x)                                                       \
    {                                                                            \
        const V zero = {0};                                                      \
        const I t = (I)x - KD_LOGF_SQRTH_BITS;                                   \
        const I e = t >> 23;                                                     \
        const V f = (V)((t & 0x007fffff) + KD_LOGF_SQRTH_BITS) - 1.0f;           \
        const V ef = __builtin_convertvector(e, V);                              \
        const V z = f * f;                                                       \
        V p = zero + 7.0376836292e-2f;                                           \
        p = FMA(p, f, zero - 1.1514610310e-1f);                                  \
        p = FMA(p, f, zero + 1.1676998740e-1f);                                  \
        p = FMA(p, f, zero - 1.2420140846e-1f);                                  \
        p = FMA(p, f, zero + 1.4249322787e-1f);                                  \
        p = FMA(p, f, zero - 1.6668057665e-1f);                                  \
        p = FMA(p, f, zero + 2.0000714765e-1f);                                  \
        p = FMA(p, f, zero - 2.4999993993e-1f);                                  \
        p = FMA(p, f, zero + 3.3333331174e-1f);                                  \
        V y = FMA(ef, zero - KD_LN2_LO_NEG_F, p * (f * z));                      \
        y = FMA(z, zero - 0.5f, y);                                              \
        return FMA(ef, zero + KD_LN2_HI_F, f + y);                               \
    }
KD_DEFINE_LOGF(kd_logf_v8f, kd_v8f, kd_v8i, kd_fma_v8f)
KD_DEFINE_EXPD(kd_exp_v4d, kd_v4d, kd_fma_v4d, kd_exp_scale_v4d)

/* log(x) for x > 0, four double lanes: x = m 2^e, m in [sqrt(1/2), sqrt(2)), and
 * log m = 2 atanh(s), s = (m - 1)/(m + 1), |s| <= 0.1716, by its series to
 * s^21 (truncation < 2e-18); 0 gives -inf. Subnormal inputs give a finite
 * value that is not their log: the kernels only take logs of probabilities
 * and multiply them by one at least as small. */
KD_VINLINE kd_v4d kd_log_v4d(kd_v4d x)
{
    const kd_v4d zero = {0}, one = zero + 1.0;
    kd_v4l bits = (kd_v4l)x;
    kd_v4d m = (kd_v4d)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
    kd_v4l big = m > 1.4142135623730951;
    m = kd_sel_v4d(big, m * 0.5, m);
    /* the biased exponent (0..2047 for x >= 0) as a double, exactly: put in
     * the mantissa of 2^52 and subtract 2^52 (x86 has no int64 -> double
     * conversion below AVX-512DQ, and GCC makes one a scalar per lane) */
    kd_v4d e = (kd_v4d)((bits >> 52) | 0x4330000000000000LL) - (4503599627370496.0 + 1023.0);
    e = kd_sel_v4d(big, e + 1.0, e);
    kd_v4d s = (m - one) / (m + one);
    kd_v4d s2 = s * s;
    kd_v4d p = zero + 1.0 / 21.0;
    p = p * s2 + 1.0 / 19.0;
    p = p * s2 + 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    kd_v4d lm = 2.0 * s + 2.0 * s * s2 * p;
    kd_v4d r = e * 6.93147180369123816490e-01 + (lm + e * 1.90821492927058770002e-10);
    return kd_sel_v4d(x > zero, r, zero - INFINITY);
}

/* log x (x > 0 finite) for one double: a kd_log_v4d lane, so that a row's
 * log has the same bits taken alone or four rows at a time */
static inline double kd_log_f64(double x)
{
    return kd_log_v4d((kd_v4d){0} + x)[0];
}

/* float lanes <-> double lanes: part i (0, 1) of eight floats as four
 * doubles, and back */
KD_VINLINE kd_v4d kd_part_v8f(kd_v8f x, int i)
{
    return kd_widen_v4f(i ? kd_hi_v8f(x) : kd_lo_v8f(x));
}
KD_VINLINE kd_v8f kd_join_v8f(kd_v4d lo, kd_v4d hi)
{
    return kd_concat_v4f(kd_narrow_v4d(lo), kd_narrow_v4d(hi));
}
/* g + c (x - shift) in double, rounded once; lanes x = -inf add nothing */
KD_VINLINE kd_v8f kd_add_cdev_v8f(kd_v8f g, double c, kd_v8f x, double shift)
{
    const kd_v4d zero = {0}, xl = kd_widen_v4f(kd_lo_v8f(x)), xh = kd_widen_v4f(kd_hi_v8f(x));
    const kd_v4d dl = kd_sel_v4d(xl > -INFINITY, xl - shift, zero);
    const kd_v4d dh = kd_sel_v4d(xh > -INFINITY, xh - shift, zero);
    return kd_join_v8f(kd_fma_v4d(zero + c, dl, kd_widen_v4f(kd_lo_v8f(g))),
                       kd_fma_v4d(zero + c, dh, kd_widen_v4f(kd_hi_v8f(g))));
}
KD_VINLINE kd_v4d kd_part_v4d(kd_v4d x, int i)
{
    (void)i;
    return x;
}

#ifdef KD_AVX512
/* ---- sixteen float / eight double lanes (the AVX-512 build) ---------------
 * The same operations on 64-byte vectors; the row sums' lane structure is
 * sixteen (eight) lanes, so this build's bits differ from the 32-byte
 * builds' in the order of its sums, and are again the same for any thread
 * count. The double-lane terms of the divergences still run on four-double
 * parts. */
typedef float kd_v16f __attribute__((vector_size(64)));
typedef int32_t kd_v16i __attribute__((vector_size(64)));
typedef uint32_t kd_v16u __attribute__((vector_size(64)));
typedef double kd_v8d __attribute__((vector_size(64)));
typedef int64_t kd_v8l __attribute__((vector_size(64)));
typedef uint64_t kd_v8ul __attribute__((vector_size(64)));

typedef struct {
    kd_v8d lo, hi;
} kd_acc16;

KD_DEFINE_LANE_OPS(v16f, kd_v16f, kd_v16i, float)
KD_DEFINE_LANE_OPS(v8d, kd_v8d, kd_v8l, double)
KD_VINLINE kd_v16f kd_max_v16f(kd_v16f v, kd_v16f m) { return (kd_v16f)_mm512_max_ps((__m512)v, (__m512)m); }
KD_VINLINE kd_v8d kd_max_v8d(kd_v8d v, kd_v8d m) { return (kd_v8d)_mm512_max_pd((__m512d)v, (__m512d)m); }
KD_VINLINE kd_v16f kd_fma_v16f(kd_v16f a, kd_v16f b, kd_v16f c)
{
    return (kd_v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
}
KD_VINLINE kd_v8d kd_fma_v8d(kd_v8d a, kd_v8d b, kd_v8d c)
{
    return (kd_v8d)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
}
/* y 2^n for x >= lo, else 0, by vscalef (exact here as the product is) */
KD_VINLINE kd_v8d kd_exp_scale_v8d(kd_v8d x, kd_v8d y, kd_v8d t, kd_v8d n)
{
    (void)t;
    const __mmask8 keep = _mm512_cmp_pd_mask((__m512d)x, _mm512_set1_pd(KD_EXPD_LO), _CMP_NLT_UQ);
    return (kd_v8d)_mm512_maskz_scalef_pd(keep, (__m512d)y, (__m512d)n);
}
/* The float exp of the AVX-512 build, exp(x) for x <= 0 (or NaN) as
 * KD_DEFINE_EXPF, on a finer reduction: x = (16 k + j) ln2/16 + r,
 * |r| <= ln2/32, exp(x) = 2^k 2^(j/16) (1 + r + r^2 (c2 + c3 r)). The 16
 * values 2^(j/16) are one register, picked by vpermd with the low bits of
 * t (which hold n = 16 k + j); 2^k goes into their exponent bits as an
 * integer add (the table holds bits(2^(j/16)) - (j << 19), so that adding
 * t << 19, which is n << 19, adds k << 23). A degree-3 polynomial suffices
 * on the shorter interval, and the lanes to zero come as the last
 * multiply-add's mask: six multiply-adds where KD_DEFINE_EXPF takes eight
 * and a vscalef, which Zen 4 runs on the same two pipes. A sum of exps of a
 * row in L1 ran 1.23x faster, forward KL at 4096 x 100 and 256 x 1000 1.1x
 * and 1.2x, the DTS CE pair 1.07x (1 thread, 2-core EPYC VM). The error is
 * 1.8 ulp for x >= -10 where KD_DEFINE_EXPF's is 1.5: the table's rounding
 * (a second table of its errors, added to exp(r) - 1, took back 0.3 ulp
 * and two thirds of the gain), and 5.3 ulp at KD_EXPF_LO (5.0), where the
 * same reduction by ln 2 rounded to float dominates. Coefficients and table
 * from tools/fit_exp.py --table. */
#define KD_EXPF16_C2 0.5000161528587341f
#define KD_EXPF16_C3 0.16666720807552338f
static const int32_t kd_exp2_16th_bits[16] __attribute__((aligned(64))) = {
    0x3f800000, 0x3f7daac3, 0x3f7b95c2, 0x3f79c3d3, 0x3f7837f0, 0x3f76f532,
    0x3f75fed7, 0x3f75583f, 0x3f7504f3, 0x3f7508a4, 0x3f75672a, 0x3f76248c,
    0x3f7744fd, 0x3f78ccdf, 0x3f7ac0c7, 0x3f7d257d};
KD_VINLINE kd_v16f kd_exp_keep_v16f(kd_v16f x, __mmask16 keep)
{
    const __m512 xs = (__m512)x, shifter = _mm512_set1_ps(KD_SHIFTER_F);
    const __m512 t = _mm512_fmadd_ps(xs, _mm512_set1_ps(16 * 1.44269504088896341f), shifter);
    const __m512 n = _mm512_sub_ps(t, shifter);
    const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-KD_LN2_F / 16), xs);
    const __m512i ti = _mm512_castps_si512(t);
    const __m512 s = _mm512_castsi512_ps(
        _mm512_add_epi32(_mm512_permutexvar_epi32(ti, _mm512_load_si512(kd_exp2_16th_bits)),
                         _mm512_slli_epi32(ti, 19)));
    const __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(KD_EXPF16_C3), r,
                                     _mm512_set1_ps(KD_EXPF16_C2));
    const __m512 u = _mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r); /* exp(r) - 1 */
    return (kd_v16f)_mm512_maskz_fmadd_ps(keep, s, u, s);
}
/* the lanes x >= KD_EXPF_LO (and NaN): below, 2^k leaves the exponent */
KD_VINLINE __mmask16 kd_exp_lanes_v16f(kd_v16f x)
{
    return _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(KD_EXPF_LO), _CMP_NLT_UQ);
}
KD_VINLINE kd_v16f kd_exp_v16f(kd_v16f x) { return kd_exp_keep_v16f(x, kd_exp_lanes_v16f(x)); }
/* kd_exp_off_top_v8f on sixteen lanes: the 0 of the top lanes comes with
 * the last multiply-add's zero mask */
KD_VINLINE __mmask16 kd_top_v16f(kd_v16f x)
{
    return _mm512_cmp_ps_mask((__m512)x, _mm512_setzero_ps(), _CMP_EQ_OQ);
}
KD_VINLINE kd_v16f kd_exp_off_top_v16f(kd_v16f x, int64_t *tops)
{
    const __mmask16 top = kd_top_v16f(x);
    *tops += _mm_popcnt_u32(_cvtmask16_u32(top));
    return kd_exp_keep_v16f(x, _kandn_mask16(top, kd_exp_lanes_v16f(x)));
}
KD_VINLINE kd_v16f kd_off_top_v16f(kd_v16f x, kd_v16f ex, int64_t *tops)
{
    const __mmask16 top = kd_top_v16f(x);
    *tops += _mm_popcnt_u32(_cvtmask16_u32(top));
    return (kd_v16f)_mm512_maskz_mov_ps(_knot_mask16(top), (__m512)ex);
}
KD_DEFINE_LOGF(kd_logf_v16f, kd_v16f, kd_v16i, kd_fma_v16f)
KD_DEFINE_EXPD(kd_exp_v8d, kd_v8d, kd_fma_v8d, kd_exp_scale_v8d)

/* tails: masked loads and stores (no fault beyond the row) */
KD_VINLINE kd_v16f kd_load_tail_v16f(const float *x, int64_t n, float pad)
{
    return (kd_v16f)_mm512_mask_loadu_ps(_mm512_set1_ps(pad), (__mmask16)((1u << n) - 1u), x);
}
KD_VINLINE kd_v8d kd_load_tail_v8d(const double *x, int64_t n, double pad)
{
    return (kd_v8d)_mm512_mask_loadu_pd(_mm512_set1_pd(pad), (__mmask8)((1u << n) - 1u), x);
}
KD_VINLINE void kd_store_tail_v16f(float *x, int64_t n, kd_v16f v)
{
    _mm512_mask_storeu_ps(x, (__mmask16)((1u << n) - 1u), (__m512)v);
}
KD_VINLINE void kd_store_tail_v8d(double *x, int64_t n, kd_v8d v)
{
    _mm512_mask_storeu_pd(x, (__mmask8)((1u << n) - 1u), (__m512d)v);
}

KD_VINLINE float kd_hmax_v16f(kd_v16f m) { return _mm512_reduce_max_ps((__m512)m); }
KD_VINLINE double kd_hmax_v8d(kd_v8d m) { return _mm512_reduce_max_pd((__m512d)m); }
KD_VINLINE int kd_any_v16i(kd_v16i m)
{
    return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
}
KD_VINLINE int kd_any_v8l(kd_v8l m)
{
    return _mm512_test_epi64_mask((__m512i)m, (__m512i)m) != 0;
}
/* whether any lane of x equals y's: from the compare's mask, where
 * kd_any_v16i(x == y) has it moved to a vector and tested back */
KD_VINLINE int kd_any_eq_v16f(kd_v16f x, kd_v16f y)
{
    return _mm512_cmp_ps_mask((__m512)x, (__m512)y, _CMP_EQ_OQ) != 0;
}
KD_VINLINE int kd_any_eq_v8d(kd_v8d x, kd_v8d y)
{
    return _mm512_cmp_pd_mask((__m512d)x, (__m512d)y, _CMP_EQ_OQ) != 0;
}

/* halves: eight floats to eight doubles */
KD_VINLINE kd_v8d kd_widen_lo_v16f(kd_v16f x)
{
    return (kd_v8d)_mm512_cvtps_pd(_mm512_castps512_ps256((__m512)x));
}
KD_VINLINE kd_v8d kd_widen_hi_v16f(kd_v16f x)
{
    return (kd_v8d)_mm512_cvtps_pd(
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)x), 1)));
}
KD_VINLINE void kd_acc_add_v16f(kd_acc16 *acc, kd_v16f x)
{
    acc->lo += kd_widen_lo_v16f(x);
    acc->hi += kd_widen_hi_v16f(x);
}
KD_VINLINE void kd_acc_mul_v16f(kd_acc16 *acc, kd_v16f x, kd_v16f y)
{
    acc->lo += kd_widen_lo_v16f(x) * kd_widen_lo_v16f(y);
    acc->hi += kd_widen_hi_v16f(x) * kd_widen_hi_v16f(y);
}
/* the lanes' count goes to an int64 from the mask (popcount), and the
 * excluded lanes' d to 0 in the masked subtract: 10 vector operations per
 * 16 floats where a count in a vector and a select before the widening
 * took 15 (the row_stats and ATKD std pass: 1.07x and 1.04x) */
KD_VINLINE void kd_acc_dev_fin_v16f(kd_acc16 *s, kd_acc16 *q, int64_t *n, kd_v16f x,
                                    double shift)
{
    const __mmask16 fin = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-INFINITY), _CMP_GT_OQ);
    *n += _mm_popcnt_u32(_cvtmask16_u32(fin));
    const __m512d sh = _mm512_set1_pd(shift);
    const kd_v8d lo = (kd_v8d)_mm512_maskz_sub_pd((__mmask8)fin, (__m512d)kd_widen_lo_v16f(x), sh);
    const kd_v8d hi = (kd_v8d)_mm512_maskz_sub_pd((__mmask8)(_cvtmask16_u32(fin) >> 8),
                                                  (__m512d)kd_widen_hi_v16f(x), sh);
    s->lo += lo;
    s->hi += hi;
    q->lo = kd_fma_v8d(lo, lo, q->lo);
    q->hi = kd_fma_v8d(hi, hi, q->hi);
}
KD_VINLINE void kd_acc_wdev_v16f(kd_acc16 *acc, kd_v16f w, kd_v16f x, double shift)
{
    acc->lo = kd_fma_v8d(kd_widen_lo_v16f(w), kd_widen_lo_v16f(x) - shift, acc->lo);
    acc->hi = kd_fma_v8d(kd_widen_hi_v16f(w), kd_widen_hi_v16f(x) - shift, acc->hi);
}
KD_VINLINE kd_v16f kd_add_cdev_v16f(kd_v16f g, double c, kd_v16f x, double shift)
{
    const kd_v8d zero = {0}, xl = kd_widen_lo_v16f(x), xh = kd_widen_hi_v16f(x);
    const kd_v8d dl = kd_sel_v8d(xl > -INFINITY, xl - shift, zero);
    const kd_v8d dh = kd_sel_v8d(xh > -INFINITY, xh - shift, zero);
    const __m256 lo = _mm512_cvtpd_ps((__m512d)kd_fma_v8d(zero + c, dl, kd_widen_lo_v16f(g)));
    const __m256 hi = _mm512_cvtpd_ps((__m512d)kd_fma_v8d(zero + c, dh, kd_widen_hi_v16f(g)));
    return (kd_v16f)_mm512_castpd_ps(_mm512_insertf64x4(
        _mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
KD_VINLINE double kd_acc_sum_v8d(kd_v8d acc)
{
    return kd_sum_halves_v4d((kd_v4d)_mm512_extractf64x4_pd((__m512d)acc, 0),
                             (kd_v4d)_mm512_extractf64x4_pd((__m512d)acc, 1));
}
/* lanes j and j + 8 first: one eight-lane reduction instead of two, which a
 * short row waits on three times (forward KL's sums: 1.02x at 4096 x 100,
 * 1.06x at 4096 x 16, 1 thread, 2-core EPYC VM) */
KD_VINLINE double kd_acc_sum_v16f(kd_acc16 acc)
{
    return kd_acc_sum_v8d(acc.lo + acc.hi);
}
KD_VINLINE void kd_acc_add_v8d(kd_v8d *acc, kd_v8d x) { *acc += x; }
KD_VINLINE void kd_acc_mul_v8d(kd_v8d *acc, kd_v8d x, kd_v8d y) { *acc += x * y; }

/* four-double parts (the divergence terms) and back */
/* (through the stack these cost more than the double-lane terms they feed;
 * i is a constant wherever they are inlined, so each switch folds to one
 * extract or insert) */
KD_VINLINE kd_v4d kd_part_v16f(kd_v16f x, int i)
{
    const __m512 v = (__m512)x;
    __m128 q;
    switch (i) {
    case 0: q = _mm512_extractf32x4_ps(v, 0); break;
    case 1: q = _mm512_extractf32x4_ps(v, 1); break;
    case 2: q = _mm512_extractf32x4_ps(v, 2); break;
    default: q = _mm512_extractf32x4_ps(v, 3); break;
    }
    return kd_widen_v4f((kd_v4f)q);
}
KD_VINLINE kd_v16f kd_join_v16f(const kd_v4d *p)
{
    __m512 r = _mm512_castps128_ps512((__m128)kd_narrow_v4d(p[0]));
    r = _mm512_insertf32x4(r, (__m128)kd_narrow_v4d(p[1]), 1);
    r = _mm512_insertf32x4(r, (__m128)kd_narrow_v4d(p[2]), 2);
    r = _mm512_insertf32x4(r, (__m128)kd_narrow_v4d(p[3]), 3);
    return (kd_v16f)r;
}
KD_VINLINE kd_v4d kd_part_v8d(kd_v8d x, int i)
{
    return (kd_v4d)(i ? _mm512_extractf64x4_pd((__m512d)x, 1)
                      : _mm512_extractf64x4_pd((__m512d)x, 0));
}
KD_VINLINE kd_v8d kd_join_v8d(const kd_v4d *p)
{
    return (kd_v8d)_mm512_insertf64x4(_mm512_castpd256_pd512((__m256d)p[0]), (__m256d)p[1], 1);
}
#endif

#endif
