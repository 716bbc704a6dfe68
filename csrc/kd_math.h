/* Elementwise math the kernels inline into their row loops.
 *
 * libm's exp is a call per element and blocks vectorisation; these are plain
 * arithmetic plus a bit cast, so GCC/Clang turn the loops that call them into
 * SIMD code at any ISA level. They are exact to about 1 ulp (float) and
 * 2 ulp (double) on the range the kernels use (x <= 0 after the row max is
 * subtracted); -inf gives 0, NaN gives NaN.
 */
#ifndef KDTEMP_KD_MATH_H
#define KDTEMP_KD_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) for float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Cephes'
 * degree-6 polynomial, scale by 2^n through the exponent bits. Results below
 * 2^-126 are flushed to 0: they are at least 38 decades below the row's
 * largest term (which is 1) and cannot change a sum. */
static inline float kd_exp_f32(float x)
{
    const float lo = -87.33654f, hi = 88.37626f;
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    /* round-to-nearest via the 1.5 * 2^23 trick: plain arithmetic, vectorises */
    const float shifter = 12582912.0f;
    float t = xc * 1.44269504088896341f + shifter;
    float n = t - shifter;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&sb, &shifter, sizeof sb);
    int32_t bits = (int32_t)((uint32_t)(tb - sb + 127) << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    y = y * scale;
    y = x < lo ? 0.0f : y;
    return x > hi ? INFINITY : y;
}

/* exp(x) for double: the same scheme with fdlibm's split of ln2 and the Taylor
 * series to degree 13 (truncation error < 1e-17 on |r| <= ln2/2). */
static inline double kd_exp_f64(double x)
{
    const double lo = -708.3964185322641, hi = 709.0;
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
 * the bits of every sum) is fixed. Each lane performs exactly the scalar
 * function's operations. Row sums of float input are accumulated in double:
 * the low and high four lanes in two double vectors. */
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

KD_VINLINE kd_v8f kd_load_v8f(const float *p)
{
    kd_v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}
KD_VINLINE kd_v4d kd_load_v4d(const double *p)
{
    kd_v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}
KD_VINLINE void kd_store_v8f(float *p, kd_v8f v) { memcpy(p, &v, sizeof v); }
KD_VINLINE void kd_store_v4d(double *p, kd_v4d v) { memcpy(p, &v, sizeof v); }

/* m ? a : b, lane by lane (m from a comparison: all ones or all zeros) */
KD_VINLINE kd_v8f kd_sel_v8f(kd_v8i m, kd_v8f a, kd_v8f b)
{
    return (kd_v8f)(((kd_v8i)a & m) | ((kd_v8i)b & ~m));
}
KD_VINLINE kd_v4d kd_sel_v4d(kd_v4l m, kd_v4d a, kd_v4d b)
{
    return (kd_v4d)(((kd_v4l)a & m) | ((kd_v4l)b & ~m));
}

/* accumulators: acc += x, acc += x * y (in double), and their fixed-order sum */
KD_VINLINE void kd_acc_add_v8f(kd_acc8 *acc, kd_v8f x)
{
    kd_v4f lo, hi;
    memcpy(&lo, &x, sizeof lo);
    memcpy(&hi, (const char *)&x + sizeof lo, sizeof hi);
    acc->lo += __builtin_convertvector(lo, kd_v4d);
    acc->hi += __builtin_convertvector(hi, kd_v4d);
}
KD_VINLINE void kd_acc_mul_v8f(kd_acc8 *acc, kd_v8f x, kd_v8f y)
{
    kd_v4f xl, xh, yl, yh;
    memcpy(&xl, &x, sizeof xl);
    memcpy(&xh, (const char *)&x + sizeof xl, sizeof xh);
    memcpy(&yl, &y, sizeof yl);
    memcpy(&yh, (const char *)&y + sizeof yl, sizeof yh);
    acc->lo += __builtin_convertvector(xl, kd_v4d) * __builtin_convertvector(yl, kd_v4d);
    acc->hi += __builtin_convertvector(xh, kd_v4d) * __builtin_convertvector(yh, kd_v4d);
}
KD_VINLINE double kd_acc_sum_v8f(kd_acc8 acc)
{
    double s[8];
    kd_store_v4d(s, acc.lo);
    kd_store_v4d(s + 4, acc.hi);
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}
KD_VINLINE void kd_acc_add_v4d(kd_v4d *acc, kd_v4d x) { *acc += x; }
KD_VINLINE void kd_acc_mul_v4d(kd_v4d *acc, kd_v4d x, kd_v4d y) { *acc += x * y; }
KD_VINLINE double kd_acc_sum_v4d(kd_v4d acc) { return (acc[0] + acc[1]) + (acc[2] + acc[3]); }

/* kd_exp_f32, eight lanes, for x <= 0 (or NaN): every vector exp in the
 * kernels is of (x - row max) / t, so the overflow clamp of the scalar
 * function is left out (two selects of about thirty operations); for those
 * arguments the bits are the scalar function's. */
KD_VINLINE kd_v8f kd_exp_v8f(kd_v8f x)
{
    const kd_v8f zero = {0}, lo = zero - 87.33654f;
    const kd_v8f shifter = zero + 12582912.0f;
    const kd_v8i under = x < lo;
    kd_v8f xc = kd_sel_v8f(under, lo, x);
    kd_v8f t = xc * 1.44269504088896341f + shifter;
    kd_v8f n = t - shifter;
    kd_v8f r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    kd_v8f p = zero + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    kd_v8f y = p * r * r + r + 1.0f;
    kd_v8i bits = (kd_v8i)((kd_v8u)((kd_v8i)t - (kd_v8i)shifter + 127) << 23);
    y = y * (kd_v8f)bits;
    return (kd_v8f)((kd_v8i)y & ~under); /* 0 below the range, -inf included */
}

/* kd_exp_f64, four lanes, for x <= 0 (or NaN), as kd_exp_v8f */
KD_VINLINE kd_v4d kd_exp_v4d(kd_v4d x)
{
    const kd_v4d zero = {0}, lo = zero - 708.3964185322641;
    const kd_v4d shifter = zero + 6755399441055744.0;
    const kd_v4l under = x < lo;
    kd_v4d xc = kd_sel_v4d(under, lo, x);
    kd_v4d t = xc * 1.4426950408889634074 + shifter;
    kd_v4d n = t - shifter;
    kd_v4d r = xc - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    kd_v4d p = zero + 1.0 / 6227020800.0;
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
    kd_v4d y = p * r * r + r + 1.0;
    kd_v4l bits = (kd_v4l)((kd_v4ul)((kd_v4l)t - (kd_v4l)shifter + 1023) << 52);
    y = y * (kd_v4d)bits;
    return (kd_v4d)((kd_v4l)y & ~under);
}

/* log(x) for x > 0, four double lanes: x = m 2^e, m in [sqrt(1/2), sqrt(2)), and
 * log m = 2 atanh(s), s = (m - 1)/(m + 1), |s| <= 0.1716, by its series to
 * s^21 (truncation < 2e-18); 0 gives -inf. Subnormal inputs give a finite
 * value that is not their log: the kernels only take logs of probabilities
 * and multiply them by one at least as small. */
KD_VINLINE kd_v4d kd_log_v4d(kd_v4d x)
{
    const kd_v4d zero = {0}, one = zero + 1.0;
    kd_v4l bits = (kd_v4l)x;
    kd_v4l ei = (bits >> 52) - 1023;
    kd_v4d m = (kd_v4d)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
    kd_v4l big = m > 1.4142135623730951;
    m = kd_sel_v4d(big, m * 0.5, m);
    kd_v4d e = __builtin_convertvector(ei - big, kd_v4d);
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

/* float lanes <-> double lanes: part i (0, 1) of eight floats as four
 * doubles, and back */
KD_VINLINE kd_v4d kd_part_v8f(kd_v8f x, int i)
{
    kd_v4f q;
    memcpy(&q, (const char *)&x + i * sizeof q, sizeof q);
    return __builtin_convertvector(q, kd_v4d);
}
KD_VINLINE kd_v8f kd_join_v8f(kd_v4d lo, kd_v4d hi)
{
    kd_v4f l = __builtin_convertvector(lo, kd_v4f), h = __builtin_convertvector(hi, kd_v4f);
    kd_v8f r;
    memcpy(&r, &l, sizeof l);
    memcpy((char *)&r + sizeof l, &h, sizeof h);
    return r;
}
KD_VINLINE kd_v4d kd_part_v4d(kd_v4d x, int i)
{
    (void)i;
    return x;
}

#endif
