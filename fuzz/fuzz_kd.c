/* libFuzzer harness for the kdtemp C kernels (csrc/kd.h, annealing.h, dts.h).
 *
 * Each input is decoded into one kernel call: which kernel, the dtype, the
 * instruction set, the shape, row strides (contiguous, padded, zero, negative,
 * overlapping rows for the read-only inputs), logits (bulk values plus
 * patches of special values: NaN, +-inf, denormals, +-FLT_MAX, ...),
 * temperatures (scalar or per row, strided), labels, masks, every divergence
 * with its parameters (DKD, ATKD's adaptive mode), the gradient buffer
 * (absent, separate, strided, or the student itself) and 1..3 threads.
 *
 * The harness keeps the preconditions the Python binding enforces before it
 * calls a kernel (fuzz what the kernel promises, not what it never gets):
 * temperatures finite and > 0, n_threads >= 1, beta/alpha in their ranges,
 * label_smoothing in [0, 1], weights and scale_value finite, ddof >= 0,
 * base_temperature and std_eps finite and > 0, grad not overlapping the
 * teacher and either equal to the student or disjoint from it. Every buffer
 * is allocated to the exact span the kernel may touch, so ASan sees any
 * access outside it; the gaps between padded rows hold NaN (inputs) or a
 * sentinel (outputs) so a read or write there shows up in the checks.
 *
 * Checks, besides "no crash, no sanitizer report":
 *   - the status code and row equal those derived independently from the
 *     inputs (first bad row, in the kernel's documented order);
 *   - on an error a student written in place is intact (kd_forward,
 *     softmax, mse) and nothing outside the output rows is written;
 *   - bitwise equality across thread counts, instruction sets, in-place vs
 *     separate gradient, and with vs without the gradient pass;
 *   - skipped rows: loss 0, gradient row 0, temperatures NaN;
 *   - no NaN in any output and a finite gradient when the inputs are in the
 *     "strict" domain (finite or -inf logits, sane parameter magnitudes, see
 *     strict_* below); loss >= 0 for divergences; every gradient row sums to
 *     ~0 (each loss is invariant to adding a constant to a student row);
 *   - in the "benign" domain (moderate logits and temperatures) the loss, and
 *     for fixed temperatures the gradient, agree with a naive long-double
 *     evaluation of the formulas in shared/spec within float tolerances;
 *   - softmax rows sum to 1, log_softmax <= 0, lse >= max / t; mse loss >= 0;
 *     kd_count_rows's count; kd_dts_update's codes and invariants.
 *
 * A failed check prints what and calls abort(), which libFuzzer reports as a
 * crash and saves the input.
 *
 * Build: fuzz/build.sh. Run: fuzz/run.sh SECONDS. See fuzz/README.md.
 */
#ifndef KDFUZZ_BODY

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "annealing.h"
#include "dts.h"
#include "kd.h"
#include "kd_isa.h"

/* ---- the parts of the domain where outputs are checked ------------------
 * Strict: no NaN anywhere, finite gradient. Inputs outside only get the
 * sanitizer, status and determinism checks. */
#define STRICT_T_LO 1e-30 /* temperatures: 1/t must stay representable in float */
#define STRICT_T_HI 1e30
#define STRICT_W 1e6 /* |kd_weight|, |ce_weight|, |scale_value|, |grad_scale| */
#define STRICT_B_LO 1e-3 /* ATKD base_temperature */
#define STRICT_B_HI 1e3
#define STRICT_EPS_LO 1e-12 /* ATKD std_eps */
#define STRICT_EPS_HI 1e3
/* |logit| bound for float64 inputs in the strict domain (float32: any finite):
 * beyond it intermediates overflow double: ATKD s P (~ b^2 x^3), the std, the label-smoothing sum */
#define STRICT_X64 1e100
/* Moderate: strict, and |logit| <= MOD_X, temperatures in [MOD_T_LO, MOD_T_HI]:
 * the gradient is finite and each row sums to ~0 (beyond it float
 * cancellation of huge terms is expected) */
#define MOD_X 1e4
#define MOD_T_LO 1e-3
#define MOD_T_HI 1e3
/* Benign: naive long-double oracle comparisons */
#define BENIGN_X 50.0
#define BENIGN_T_LO 0.25
#define BENIGN_T_HI 16.0
#define BENIGN_C 4096
#define BENIGN_ELEMS (1 << 14) /* n * C */

#define MAX_ELEMS (1 << 16) /* n_rows * n_cols of any output block */

/* the input being run, saved by fail() in the standalone driver */
static const uint8_t *cur_data;
static size_t cur_size;

static void fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "kdfuzz: check failed: %s (%s:%d)\n", what, file, line);
#ifdef KDFUZZ_MAIN
    const char *path = getenv("KDFUZZ_CRASH_FILE") ? getenv("KDFUZZ_CRASH_FILE") : "kdfuzz-crash.bin";
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(cur_data, 1, cur_size, f);
        fclose(f);
        fprintf(stderr, "kdfuzz: input saved to %s\n", path);
    }
#endif
    abort();
}
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond))                                                             \
            fail(#cond, __FILE__, __LINE__);                                     \
    } while (0)
#define CHECKM(cond, ...)                                                        \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "kdfuzz: " __VA_ARGS__);                             \
            fputc('\n', stderr);                                                 \
            fail(#cond, __FILE__, __LINE__);                                     \
        }                                                                        \
    } while (0)

/* ---- input reader: bytes for structure, a PRNG for bulk values ---------- */

typedef struct {
    const uint8_t *p;
    size_t n;
    uint64_t rng;
} rd;

static unsigned u8(rd *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}
static unsigned u16(rd *r) { return u8(r) | (u8(r) << 8); }
static uint64_t u64(rd *r)
{
    uint64_t x = 0;
    for (int k = 0; k < 8; k++)
        x |= (uint64_t)u8(r) << (8 * k);
    return x;
}
static uint64_t rnd(rd *r) /* splitmix64 */
{
    uint64_t z = (r->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static double unif(rd *r) { return (double)(rnd(r) >> 11) * 0x1p-53 * 2.0 - 1.0; } /* [-1, 1) */

/* special logit values; float casts of double-only ones saturate to +-inf */
static const double specials[] = {
    0.0, -0.0, 1.0, -1.0, NAN, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, FLT_MIN,
    1.401298464324817e-45 /* FLT_TRUE_MIN */, -1.401298464324817e-45, 1e4, -1e4,
    88.72, -87.34, 709.78, -745.13, DBL_MAX, -DBL_MAX, 4.9406564584124654e-324,
    1e30, -1e30, 16777217.0, 3e38, -3e38, 1e-30, 0.5, -100.0, 1e150, -1e150, 2.0,
};
#define N_SPECIALS ((unsigned)(sizeof specials / sizeof specials[0]))

static double special_or_raw(rd *r)
{
    unsigned k = u8(r);
    if (k < 224)
        return specials[k % N_SPECIALS];
    uint64_t bits = u64(r);
    double x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

static float to_f32(double x) /* IEEE narrowing without relying on Annex F */
{
    if (x != x)
        return NAN;
    if (x > FLT_MAX)
        return INFINITY;
    if (x < -FLT_MAX)
        return -INFINITY;
    return (float)x;
}

/* temperatures: mostly ordinary, sometimes extreme (still finite and > 0) */
static double temperature(rd *r)
{
    static const double t[] = {1.0, 4.0, 2.0, 0.5, 1.0, 10.0, 0.1, 3.7, 1e-3, 100.0,
                               1e-30, 1e30, 1e-20, 7.0, 0.25, 16.0};
    unsigned k = u8(r);
    if (k < 240)
        return t[k % 16];
    /* any finite positive double (denormals included) */
    uint64_t bits = u64(r) & 0x7fffffffffffffffULL;
    double x;
    memcpy(&x, &bits, sizeof x);
    if (!(isfinite(x) && x > 0))
        x = 1.0;
    return x;
}

static double weight(rd *r)
{
    static const double w[] = {1.0, 0.0, 0.5, 0.9, 0.1, 2.0, -1.0, 9.0, 1e-3, 1e6,
                               1e3, 0.25, 1.0, 1.0, 1e300, -1e-300};
    return w[u8(r) % 16];
}

/* an exact-size block of rows: rows at base + i * stride, i < n, stride may be
 * 0 or negative; returns the pointer to row 0 and the allocation in *alloc */
static void *block(int64_t n, int64_t C, int64_t stride, size_t item, void **alloc,
                   int64_t *span_out)
{
    int64_t a = stride < 0 ? -stride : stride;
    int64_t span = n > 0 ? (n - 1) * a + C : 1;
    *alloc = malloc((size_t)span * item);
    if (!*alloc)
        abort();
    *span_out = span;
    int64_t off = stride < 0 && n > 0 ? (n - 1) * a : 0;
    return (char *)*alloc + (size_t)off * item;
}

/* row stride for a read-only input */
static int64_t in_stride(rd *r, int64_t n, int64_t C)
{
    unsigned m = u8(r);
    int64_t pad = 1 + (m >> 3) % 9;
    switch (m % 6) {
    case 1:
        return C + pad;
    case 2:
        return 0;
    case 3:
        return n > 1 ? -C : C;
    case 4:
        return n > 1 ? -(C + pad) : C + pad;
    case 5: /* overlapping rows (numpy as_strided views are read as given) */
        if (C > 1) {
            int64_t s = 1 + (int64_t)((m >> 3) % (unsigned)(C - 1));
            return (m & 0x80) && n > 1 ? -s : s;
        }
        return C;
    default:
        return C;
    }
}

/* ------------------------------------------------------------------------- */

static int have_avx2, have_avx512, wide_pick;

/* the build an input's `isa` flag picks: baseline (0), or a vector build;
 * which one (AVX2 or AVX-512, when the CPU has both) follows from the input's
 * bytes, so that a replay runs the same one */
static const char *fuzz_isa(int isa)
{
    if (!isa || !have_avx2)
        return "baseline";
    return have_avx512 && wide_pick ? "avx512" : "avx2";
}

/* a row counts when its label is not ignore_index and its mask is not 0 (kd.h) */
static int counts_row(const kd_rows *r, int64_t i)
{
    if (r->labels && r->labels[i * r->labels_stride] == r->ignore_index)
        return 0;
    return !(r->mask && !r->mask[i * r->mask_stride]);
}
static int verbose; /* KDFUZZ_VERBOSE=1: print each decoded kd_forward call */

static int same_dbits(double a, double b) { return memcmp(&a, &b, sizeof a) == 0 || (a != a && b != b); }

typedef long double LD;

static LD lse_ld(const LD *y, int64_t C, int64_t skip)
{
    LD m = -INFINITY;
    for (int64_t j = 0; j < C; j++)
        if (j != skip && y[j] > m)
            m = y[j];
    if (m == -INFINITY)
        return -INFINITY;
    LD s = 0;
    for (int64_t j = 0; j < C; j++)
        if (j != skip)
            s += expl(y[j] - m);
    return m + logl(s);
}

/* xlogy-style term p (lp - lq) with 0 log 0 = 0 */
static LD kl_term(LD p, LD lp, LD lq) { return p > 0 ? p * (lp - lq) : 0; }


#define KDFUZZ_BODY
#define FT float
#define SFX f32
#define FT_MAX_ FLT_MAX
#define TO_FT to_f32
#include "fuzz_kd.c"
#undef FT
#undef SFX
#undef FT_MAX_
#undef TO_FT

#define FT double
#define SFX f64
#define FT_MAX_ DBL_MAX
#define TO_FT (double)
#include "fuzz_kd.c"
#undef FT
#undef SFX
#undef FT_MAX_
#undef TO_FT
#undef KDFUZZ_BODY

/* ---- kd_count_rows --------------------------------------------------------- */

static void fuzz_count_rows(rd *r)
{
    int64_t n = u8(r) % 40, C = 1 + u8(r) % 20;
    int64_t ls = (int64_t[]){1, 2, 0, -1}[u8(r) % 4];
    int64_t ms = (int64_t[]){1, 3, 0, -2}[u8(r) % 4];
    int use_l = u8(r) & 1, use_m = u8(r) & 1;
    int64_t ignore = (int64_t[]){-100, 0, -1, INT64_MIN, INT64_MAX, 3}[u8(r) % 6];
    void *la, *ma;
    int64_t sp;
    int64_t *lab = block(n, 1, ls, sizeof(int64_t), &la, &sp);
    for (int64_t k = 0; k < sp; k++) {
        unsigned b = u8(r);
        ((int64_t *)la)[k] = b < 200 ? (int64_t)(b % (unsigned)(C + 1)) - (b >= 190)
                           : (int64_t[]){-100, INT64_MIN, INT64_MAX, C, -1, 1LL << 40}[b % 6];
    }
    uint8_t *msk = block(n, 1, ms, 1, &ma, &sp);
    for (int64_t k = 0; k < sp; k++)
        ((uint8_t *)ma)[k] = (uint8_t)(u8(r) % 3 == 0 ? 0 : u8(r) | 1);
    kd_rows rows = {use_l ? lab : NULL, ls, ignore, use_m ? msk : NULL, ms};
    int64_t count = -7, exp_count = 0, exp_row = -1;
    for (int64_t i = 0; i < n; i++) {
        if (use_l && lab[i * ls] == ignore)
            continue;
        if (use_m && !msk[i * ms])
            continue;
        if (use_l && (lab[i * ls] < 0 || lab[i * ls] >= C)) {
            exp_row = i;
            break;
        }
        exp_count++;
    }
    kd_status st = {99, 99};
    int rc = kd_count_rows(&rows, n, C, &count, &st);
    if (exp_row >= 0) {
        CHECK(rc == KD_ERR_LABEL && st.code == KD_ERR_LABEL && st.row == exp_row);
    } else {
        CHECK(rc == KD_OK && st.code == KD_OK && count == exp_count);
    }
    free(la);
    free(ma);
}

/* ---- kd_dts_update ------------------------------------------------------- */

static double dts_value(rd *r)
{
    static const double v[] = {4.0, 2.0, 1.0, 0.0, 3.0, 240.0, 0.9, 1.35, 1e-4, -1.0,
                               NAN, INFINITY, -INFINITY, 1e308, -1e308, 0.5, 5e-324, 100.0,
                               1e-300, 8.0, 1.0, 2.5, -0.0, 0.99};
    unsigned k = u8(r);
    if (k < 240)
        return v[k % (sizeof v / sizeof v[0])];
    uint64_t bits = u64(r);
    double x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

static void fuzz_dts(rd *r)
{
    kd_dts_params p;
    double T, e, ceT, ceS;
    if (u8(r) % 4) { /* the recipes' ranges, so every branch of the rule is reached */
        p.initial_temperature = (double[]){4, 3, 2, 1}[u8(r) % 4];
        p.min_temperature = (double[]){2, 1, 0.5, 4}[u8(r) % 4];
        p.max_temperature = (double[]){4, 3, 8, 2}[u8(r) % 4];
        p.total_epochs = (double[]){240, 10, 1, 3.5}[u8(r) % 4];
        p.curve_shape = (double[]){1, 0.5, 2, 0}[u8(r) % 4];
        p.momentum = (double[]){0.9, 0, 0.5, 0.99}[u8(r) % 4];
        p.scale_cap = (double[]){1.35, 1.5, 2, 1}[u8(r) % 4];
        p.gap_eps = (double[]){0, 1e-4, 0.5, 1}[u8(r) % 4];
        p.adaptive = u8(r) % 4 != 0;
        T = (double[]){4, 2.5, 1, 8}[u8(r) % 4];
        e = (double)(u8(r) % 250) / (u8(r) % 2 ? 1.0 : 7.0);
        ceT = u8(r) / 32.0; /* gaps d = ceT - ceS across (-8, 8) */
        ceS = u8(r) / 32.0;
    } else {
        p.initial_temperature = dts_value(r);
        p.min_temperature = dts_value(r);
        p.max_temperature = dts_value(r);
        p.total_epochs = dts_value(r);
        p.curve_shape = dts_value(r);
        p.momentum = dts_value(r);
        p.scale_cap = dts_value(r);
        p.gap_eps = dts_value(r);
        p.adaptive = u8(r) & 1;
        T = dts_value(r), e = dts_value(r), ceT = dts_value(r), ceS = dts_value(r);
    }
    double nt = 12345.0, tg = 54321.0;
    int rc = kd_dts_update(&p, T, e, ceT, ceS, &nt, &tg);

    /* the rule as dts.h states it, operation for operation */
    int exp_rc = KD_DTS_OK;
    double exp_t = 0, exp_tg = 0;
    int params_ok = isfinite(p.initial_temperature) && isfinite(p.min_temperature) &&
                    isfinite(p.max_temperature) && isfinite(p.total_epochs) &&
                    isfinite(p.curve_shape) && isfinite(p.momentum) &&
                    isfinite(p.scale_cap) && isfinite(p.gap_eps) && p.total_epochs > 0 &&
                    p.min_temperature <= p.max_temperature && isfinite(T) && isfinite(e);
    if (!params_ok) {
        exp_rc = KD_DTS_ERR_ARGUMENT;
    } else if (!isfinite(ceT) || !isfinite(ceS)) {
        exp_rc = KD_DTS_ERR_NONFINITE;
    } else {
        double progress = e / p.total_epochs;
        double phase = p.curve_shape * 3.141592653589793 * progress;
        if (!isfinite(phase)) {
            exp_rc = KD_DTS_ERR_ARGUMENT;
        } else {
            double cosine = 0.5 * (1.0 + cos(phase));
            double d = ceT - ceS;
            double target = p.initial_temperature * cosine;
            if (p.adaptive) {
                double den = d + 1.0 + p.gap_eps;
                double a = den == 0.0 ? INFINITY : d / den;
                if (a > 1.0)
                    target = p.initial_temperature * cosine * (a > 2.0 ? p.scale_cap : a);
            }
            if (!(target >= p.min_temperature))
                target = p.min_temperature;
            if (target > p.max_temperature)
                target = p.max_temperature;
            exp_tg = target;
            exp_t = p.momentum * T + (1.0 - p.momentum) * target;
            if (!isfinite(exp_t))
                exp_rc = KD_DTS_ERR_ARGUMENT;
        }
    }
    CHECKM(rc == exp_rc, "dts code %d, expected %d", rc, exp_rc);
    if (rc != KD_DTS_OK) {
        CHECK(nt == 12345.0 && tg == 54321.0); /* outputs untouched */
        return;
    }
    CHECKM(same_dbits(nt, exp_t) && same_dbits(tg, exp_tg), "dts T %.17g target %.17g, expected %.17g %.17g",
           nt, tg, exp_t, exp_tg);
    CHECK(isfinite(nt));
    CHECK(tg >= p.min_temperature && tg <= p.max_temperature);
    if (p.momentum >= 0 && p.momentum < 1) { /* between the old T and the target */
        double lo = fmin(T, tg), hi = fmax(T, tg);
        CHECK(nt >= lo - 4 * DBL_EPSILON * fabs(lo) && nt <= hi + 4 * DBL_EPSILON * fabs(hi));
    }
}

/* ---- argument errors the kernels check themselves ------------------------ */

static void fuzz_argument_errors(rd *r)
{
    kd_status st;
    kd_params p = {0};
    kd_rows rows = {NULL, 0, -100, NULL, 0};
    double one = 1.0, loss[4];
    kd_temps t = {&one, 0};
    float x[8] = {0};
    unsigned k = u8(r) % 7;
    int64_t n = 2, C = 4;
    p.kd_weight = 1.0;
    p.beta = 0.5;
    p.alpha = 0.1;
    const float *teacher = x;
    switch (k) {
    case 0:
        n = -(int64_t)(1 + u8(r));
        break;
    case 1:
        C = -(int64_t)u8(r);
        break;
    case 2:
        p.divergence = (u8(r) & 1) ? KD_DIV_COUNT + (int)u8(r) : -1 - (int)u8(r);
        break;
    case 3:
        p.adaptive = 1;
        p.divergence = 1 + (int)(u8(r) % (KD_DIV_COUNT - 1));
        p.beta = p.divergence == KD_DIV_DKD ? 8.0 : 0.5;
        break;
    case 4:
        teacher = NULL; /* kd_weight != 0 needs a teacher */
        break;
    case 5:
        p.ce_weight = 1.0; /* needs labels */
        break;
    default:
        p.divergence = KD_DIV_DKD; /* needs labels */
        p.beta = 8.0;
        p.alpha = 1.0;
        break;
    }
    st.code = 99;
    int rc = kd_forward_f32(n, C, x, C > 0 ? C : 0, teacher, C > 0 ? C : 0, t, t, &rows, &p,
                            1.0, loss, NULL, 0, NULL, NULL, 1 + (int)(u8(r) % 3), &st);
    CHECK(rc == KD_ERR_ARGUMENT && st.code == KD_ERR_ARGUMENT);
    if (k < 2) {
        CHECK(kd_softmax_f32(n, C, x, 4, t, 0, 1, x, 4, 1, &st) == KD_ERR_ARGUMENT);
        CHECK(kd_lse_f64(n, C, (const double *)x, 2, t, 1, loss, 1, &st) == KD_ERR_ARGUMENT);
        CHECK(kd_mse_f32(n, C, x, 4, x, 4, 1.0, &rows, 1, 1.0, loss, NULL, 0, 1, &st) ==
              KD_ERR_ARGUMENT);
    }
}

/* ---- entry point ----------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        have_avx2 = kd_set_isa("avx2") == 0;
        have_avx512 = kd_set_isa("avx512") == 0;
        verbose = getenv("KDFUZZ_VERBOSE") && getenv("KDFUZZ_VERBOSE")[0] == '1';
        kd_set_isa("baseline");
        init = 1;
    }
    rd r = {data, size, 0};
    unsigned byte_sum = 0;
    for (size_t k = 0; k < size; k++)
        byte_sum += data[k];
    wide_pick = (byte_sum ^ (unsigned)size) & 1;
    cur_data = data;
    cur_size = size;
    unsigned op = u8(&r);
    r.rng = u64(&r);
    unsigned kind = op % 16;
    int f64 = (op >> 4) & 1;
    if (kind < 7) {
        if (f64)
            fuzz_forward_f64(&r);
        else
            fuzz_forward_f32(&r);
    } else if (kind < 9) {
        if (f64)
            fuzz_softmax_f64(&r);
        else
            fuzz_softmax_f32(&r);
    } else if (kind < 10) {
        if (f64)
            fuzz_lse_f64(&r);
        else
            fuzz_lse_f32(&r);
    } else if (kind < 11) {
        if (f64)
            fuzz_mse_f64(&r);
        else
            fuzz_mse_f32(&r);
    } else if (kind < 12) {
        if (f64)
            fuzz_row_stats_f64(&r);
        else
            fuzz_row_stats_f32(&r);
    } else if (kind < 13) {
        if (f64)
            fuzz_profile_f64(&r);
        else
            fuzz_profile_f32(&r);
    } else if (kind < 14) {
        fuzz_count_rows(&r);
    } else if (kind < 15) {
        fuzz_dts(&r);
    } else {
        fuzz_argument_errors(&r);
    }
    kd_set_isa("baseline");
    return 0;
}

/* ---- a driver without libFuzzer (gcc builds, corpus replay) -------------------
 * fuzz_kd_replay FILE...      run each file once (directories: every file)
 * fuzz_kd_replay -r SECONDS [SEED]   random inputs for SECONDS */
#ifdef KDFUZZ_MAIN
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    uint8_t *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, 1 << 20, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int run_path(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        perror(path);
        return 1;
    }
    if (!S_ISDIR(sb.st_mode))
        return run_file(path);
    DIR *d = opendir(path);
    struct dirent *e;
    int rc = 0, n = 0;
    char full[4096];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        rc |= run_file(full);
        n++;
    }
    if (d)
        closedir(d);
    fprintf(stderr, "kdfuzz: replayed %d inputs from %s\n", n, path);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "-r") == 0) {
        double secs = atof(argv[2]);
        uint64_t seed = argc >= 4 ? strtoull(argv[3], NULL, 0) : (uint64_t)time(NULL);
        rd g = {NULL, 0, seed};
        uint8_t buf[512];
        time_t end = time(NULL) + (time_t)secs;
        long runs = 0;
        while (time(NULL) < end) {
            size_t n = 8 + rnd(&g) % (sizeof buf - 8);
            for (size_t k = 0; k < n; k++)
                buf[k] = (uint8_t)rnd(&g);
            LLVMFuzzerTestOneInput(buf, n);
            runs++;
        }
        fprintf(stderr, "kdfuzz: %ld random inputs, seed %llu\n", runs,
                (unsigned long long)seed);
        return 0;
    }
    int rc = 0;
    for (int k = 1; k < argc; k++)
        rc |= run_path(argv[k]);
    return rc;
}
#endif

#else /* KDFUZZ_BODY: one dtype ------------------------------------------------- */

#define KF_CAT_(a, b) a##_##b
#define KF_CAT(a, b) KF_CAT_(a, b)
#define F(fn) KF_CAT(fn, SFX)

/* one logit value from the fuzz input */
static FT F(special)(rd *r) { return TO_FT(special_or_raw(r)); }

/* fill the span of a block with bulk values, then apply patches through
 * the row view (n rows of C at base + i * stride) */
static void F(fill)(rd *r, FT *alloc, int64_t span, FT *base, int64_t n, int64_t C,
                    int64_t stride)
{
    static const double scales[] = {1.0, 4.0, 30.0, 1e-3, 100.0, 1e4, 1e-30, 1e30};
    unsigned mode = u8(r);
    double scale = scales[(mode >> 3) % 8];
    switch (mode % 5) {
    case 1: /* small integers: ties */
        for (int64_t k = 0; k < span; k++)
            alloc[k] = (FT)(int)(rnd(r) % 7) - 3;
        break;
    case 2: { /* one constant: zero spread */
        FT c = F(special)(r);
        if (!isfinite(c))
            c = (FT)1.5;
        for (int64_t k = 0; k < span; k++)
            alloc[k] = c;
        break;
    }
    case 3: /* confident rows: one large entry */
        for (int64_t k = 0; k < span; k++)
            alloc[k] = TO_FT(unif(r) * 2.0 + (rnd(r) % 23 == 0 ? scale * 10 : 0.0));
        break;
    default:
        for (int64_t k = 0; k < span; k++)
            alloc[k] = TO_FT(unif(r) * scale);
        break;
    }
    if (n == 0)
        return;
    unsigned np = u8(r) % 12;
    for (unsigned q = 0; q < np; q++) {
        unsigned kind = u8(r);
        int64_t i = u16(r) % n, j = u16(r) % C;
        FT x = F(special)(r);
        if (kind % 4 == 1) { /* a whole row */
            for (int64_t jj = 0; jj < C; jj++)
                base[i * stride + jj] = x;
        } else if (kind % 4 == 2) { /* a whole column */
            for (int64_t ii = 0; ii < n; ii++)
                base[ii * stride + j] = x;
        } else if (kind % 4 == 3) { /* a row of -inf except one entry */
            for (int64_t jj = 0; jj < C; jj++)
                base[i * stride + jj] = jj == j ? x : -INFINITY;
        } else {
            base[i * stride + j] = x;
        }
    }
}

/* NaN in the gaps between rows: a read there would show in the results */
static void F(poison_gaps)(FT *alloc, int64_t span, FT *base, int64_t n, int64_t C,
                           int64_t stride)
{
    int64_t a = stride < 0 ? -stride : stride;
    if (a <= C || n == 0)
        return;
    (void)base;
    for (int64_t k = 0; k < span; k++)
        if (k % a >= C)
            alloc[k] = NAN;
}

/* row's max and classification, as the kernel's check_row sees it */
typedef struct {
    FT max;
    int nan, posinf, allinf;
    int strict;   /* finite (within the strict bound) or -inf */
    int moderate; /* finite within MOD_X, or -inf */
    int benign;   /* finite within BENIGN_X, or -inf */
    int has_ninf; /* some -inf */
} F(rowinfo);

static F(rowinfo) F(classify)(const FT *x, int64_t C)
{
    F(rowinfo) ri = {(FT)-INFINITY, 0, 0, 0, 1, 1, 1, 0};
    for (int64_t j = 0; j < C; j++) {
        FT v = x[j];
        if (v != v) {
            ri.nan = 1;
            continue;
        }
        if (v > ri.max)
            ri.max = v;
        if (v == INFINITY)
            ri.posinf = 1;
        if (v == -INFINITY) {
            ri.has_ninf = 1;
            continue;
        }
        if (sizeof(FT) == 8 && fabs((double)v) > STRICT_X64)
            ri.strict = 0;
        if (fabs((double)v) > MOD_X)
            ri.moderate = 0;
        if (fabs((double)v) > BENIGN_X)
            ri.benign = 0;
    }
    ri.allinf = ri.max == -INFINITY;
    if (ri.nan || ri.posinf)
        ri.strict = ri.moderate = ri.benign = 0;
    return ri;
}

static int F(row_code)(F(rowinfo) ri, int check_finite, int err_nf, int err_ai)
{
    if (check_finite && (ri.nan || ri.posinf))
        return err_nf;
    if (ri.allinf)
        return err_ai;
    return KD_OK;
}

static int F(same_bits)(FT a, FT b) { return memcmp(&a, &b, sizeof a) == 0 || (a != a && b != b); }

/* ---- the naive oracle (long double, spec formulas) -------------------------- */

/* mean and ddof-std of the finite entries */
static void F(mean_std)(const FT *x, int64_t C, int ddof, LD *mean, LD *sd)
{
    LD s = 0;
    int64_t n = 0;
    for (int64_t j = 0; j < C; j++)
        if (x[j] > -INFINITY) {
            s += x[j];
            n++;
        }
    *mean = n ? s / n : 0;
    LD q = 0;
    for (int64_t j = 0; j < C; j++)
        if (x[j] > -INFINITY)
            q += (x[j] - *mean) * (x[j] - *mean);
    *sd = n - ddof > 0 ? sqrtl(q / (n - ddof)) : 0;
}


/* Row loss of kd_forward and, when g != NULL, its gradient (without
 * grad_scale) for fixed temperatures. Returns 0 when the oracle does not
 * cover the case (then nothing is compared), 2 when the gradient is not
 * determined: a TVD row with pS_j = pT_j up to the dtype's rounding (small
 * integer logits tie them exactly), where |pS_j - pT_j| has no derivative
 * and the sign the kernel's rounding gives picks one subgradient of many
 * (then only the loss is compared). */
static int F(oracle_row)(const FT *z, const FT *v, int64_t C, int64_t y, double tS, double tT,
                         const kd_params *p, LD *loss, LD *g)
{
    const int use_kd = p->kd_weight != 0, use_ce = p->ce_weight != 0;
    LD *a = malloc(sizeof(LD) * (size_t)C * 6);
    LD *b = a + C, *lpS = a + 2 * C, *lpT = a + 3 * C, *pS = a + 4 * C, *pT = a + 5 * C;
    const LD s = p->scale == KD_SCALE_T2 ? (LD)tS * tT
                 : p->scale == KD_SCALE_CONST ? (LD)p->scale_value : 1.0L;
    LD D = 0, ce = 0;
    int tvd_tie = 0;
    for (int64_t j = 0; j < C; j++)
        g ? (void)(g[j] = 0) : (void)0;
    if (use_kd) {
        for (int64_t j = 0; j < C; j++) {
            b[j] = (LD)z[j] / tS;
            a[j] = (LD)v[j] / tT;
        }
        LD ls = lse_ld(b, C, -1), lt = lse_ld(a, C, -1);
        for (int64_t j = 0; j < C; j++) {
            lpS[j] = b[j] - ls;
            lpT[j] = a[j] - lt;
            pS[j] = expl(lpS[j]);
            pT[j] = expl(lpT[j]);
        }
        LD G[1]; (void)G;
        LD sumG = 0;
        LD *Gj = g ? malloc(sizeof(LD) * (size_t)C) : NULL;
        int dkd = p->divergence == KD_DIV_DKD;
        if (dkd) {
            LD lsn = lse_ld(b, C, y), ltn = lse_ld(a, C, y);
            LD l1S = lsn - ls, l1T = ltn - lt; /* log(1 - p_y) */
            LD pSy = pS[y], pTy = pT[y];
            LD tckd = kl_term(pTy, lpT[y], lpS[y]) + kl_term(expl(l1T), l1T, l1S);
            LD nckd = 0;
            if (ltn > -INFINITY) {
                if (lsn == -INFINITY)
                    nckd = INFINITY;
                else
                    for (int64_t j = 0; j < C; j++)
                        if (j != y)
                            nckd += kl_term(expl(a[j] - ltn), a[j] - ltn, b[j] - lsn);
            }
            tckd = tckd > 0 ? tckd : 0;
            nckd = nckd > 0 ? nckd : 0;
            /* a term with weight 0 is absent (no 0 * inf) */
            D = (p->alpha != 0 ? p->alpha * tckd : 0) + (p->beta != 0 ? p->beta * nckd : 0);
            if (g && D < INFINITY) {
                for (int64_t j = 0; j < C; j++) {
                    if (j == y) {
                        g[j] = p->alpha * (pSy - pTy);
                        continue;
                    }
                    LD qS = lsn > -INFINITY ? expl(b[j] - lsn) : 0;
                    LD qT = ltn > -INFINITY ? expl(a[j] - ltn) : 0;
                    g[j] = p->alpha * (pTy - pSy) * qS + (ltn > -INFINITY ? p->beta * (qS - qT) : 0);
                }
                for (int64_t j = 0; j < C; j++)
                    g[j] *= p->kd_weight * s / tS;
            }
        } else {
            for (int64_t j = 0; j < C; j++) {
                LD Mj, dj = 0, hj = 0; /* hj = pS_j dD/dpS_j */
                switch (p->divergence) {
                case KD_DIV_KL:
                    dj = kl_term(pT[j], lpT[j], lpS[j]);
                    hj = -pT[j];
                    break;
                case KD_DIV_REVERSE_KL:
                    dj = kl_term(pS[j], lpS[j], lpT[j]);
                    hj = pS[j] > 0 ? pS[j] * (lpS[j] - lpT[j] + 1) : 0;
                    break;
                case KD_DIV_SYMMETRIC_KL:
                    dj = kl_term(pT[j], lpT[j], lpS[j]) + kl_term(pS[j], lpS[j], lpT[j]);
                    hj = -pT[j] + (pS[j] > 0 ? pS[j] * (lpS[j] - lpT[j] + 1) : 0);
                    break;
                case KD_DIV_JSD:
                    Mj = p->beta * pT[j] + (1 - p->beta) * pS[j];
                    dj = p->beta * kl_term(pT[j], lpT[j], logl(Mj)) +
                         (1 - p->beta) * kl_term(pS[j], lpS[j], logl(Mj));
                    hj = pS[j] > 0 ? (1 - p->beta) * pS[j] * (lpS[j] - logl(Mj)) : 0;
                    break;
                case KD_DIV_SKEW_KL:
                    Mj = p->alpha * pT[j] + (1 - p->alpha) * pS[j];
                    dj = kl_term(pT[j], lpT[j], logl(Mj));
                    hj = Mj > 0 ? -(1 - p->alpha) * pT[j] * pS[j] / Mj : 0;
                    break;
                case KD_DIV_SKEW_REVERSE_KL:
                    Mj = p->alpha * pS[j] + (1 - p->alpha) * pT[j];
                    dj = kl_term(pS[j], lpS[j], logl(Mj));
                    hj = pS[j] > 0 ? pS[j] * (lpS[j] - logl(Mj) + 1) - p->alpha * pS[j] * pS[j] / Mj
                                   : 0;
                    break;
                default: /* TVD */
                    dj = 0.5L * fabsl(pS[j] - pT[j]);
                    hj = 0.5L * pS[j] * ((pS[j] > pT[j]) - (pS[j] < pT[j]));
                    tvd_tie |= pS[j] > 0 &&
                               fabsl(pS[j] - pT[j]) <= 64 * (sizeof(FT) == 4 ? 1.2e-7L : 2.3e-16L) *
                                   fmaxl(pS[j], pT[j]);
                    break;
                }
                D += dj;
                if (Gj)
                    Gj[j] = hj;
                sumG += hj;
            }
            D = D > 0 ? D : 0;
            /* +inf rows: KL keeps (s/tS)(pS - pT), the others 0 (kd.py docs) */
            if (g && (D < INFINITY || p->divergence == KD_DIV_KL))
                for (int64_t j = 0; j < C; j++)
                    g[j] = p->kd_weight * s / tS * (Gj[j] - pS[j] * sumG);
        }
        free(Gj);
    }
    if (use_ce) {
        LD *zz = b; /* temperature 1 */
        for (int64_t j = 0; j < C; j++)
            zz[j] = z[j];
        LD l1 = lse_ld(zz, C, -1), zs = 0;
        for (int64_t j = 0; j < C; j++)
            zs += zz[j];
        const LD eps = p->label_smoothing;
        ce = l1 - (eps != 1 ? (1 - eps) * zz[y] : 0) - (eps != 0 ? eps / C * zs : 0);
        if (g)
            for (int64_t j = 0; j < C; j++)
                g[j] += p->ce_weight * (expl(zz[j] - l1) - (eps / C + (j == y ? 1 - eps : 0)));
    }
    *loss = (use_kd ? p->kd_weight * s * D : 0) + (use_ce ? p->ce_weight * ce : 0);
    free(a);
    return tvd_tie ? 2 : 1;
}

/* ---- kd_forward ---------------------------------------------------------------- */

typedef struct {
    int64_t n, C;
    const FT *z, *v;
    int64_t zs, vs;
    kd_temps ts, tt;
    kd_rows rows;
    kd_params p;
    double grad_scale;
} F(fwd_args);

static int F(call_forward)(const F(fwd_args) *A, double *loss, FT *g, int64_t gs, double *tso,
                           double *tto, int threads, int isa, kd_status *st)
{
    kd_set_isa(fuzz_isa(isa));
    st->code = 99;
    st->row = 99;
    int rc = KF_CAT(kd_forward, SFX)(A->n, A->C, A->z, A->zs, A->v, A->vs, A->ts, A->tt,
                                     &A->rows, &A->p, A->grad_scale, loss, g, gs, tso, tto,
                                     threads, st);
    kd_set_isa("baseline");
    CHECK(rc == st->code);
    return rc;
}

static void F(fuzz_forward)(rd *r)
{
    /* shape */
    unsigned sh = u8(r);
    static const int64_t big_rows[] = {16, 31, 64, 100, 257, 1000, 4096, 40};
    static const int64_t big_cols[] = {63, 64, 65, 127, 129, 1000, 4097, 16384,
                                       16385, 32769, 100003, 255};
    int64_t n = (sh & 3) == 3 ? big_rows[(sh >> 2) % 8] : (int64_t)((sh >> 2) % 10);
    unsigned sc = u8(r);
    int64_t C = (sc & 3) == 3 ? big_cols[(sc >> 2) % 12] : 1 + (int64_t)((sc >> 2) % 40);
    while (n > 1 && n * C > MAX_ELEMS)
        n /= 2;
    if (n * C > MAX_ELEMS)
        C = MAX_ELEMS;

    F(fwd_args) A;
    memset(&A, 0, sizeof A);
    A.n = n;
    A.C = C;
    kd_params *p = &A.p;

    /* parameters */
    unsigned pm = u8(r);
    p->divergence = (int)(pm % KD_DIV_COUNT);
    const int dkd = p->divergence == KD_DIV_DKD;
    p->adaptive = p->divergence == KD_DIV_KL && (u8(r) % 3 == 0);
    p->kd_weight = (pm & 0x80) ? 0.0 : weight(r);
    if (p->kd_weight == 0.0 && !(pm & 0x40))
        p->kd_weight = 1.0;
    unsigned cw = u8(r);
    p->ce_weight = cw % 3 == 0 ? weight(r) : 0.0;
    {
        static const double ls[] = {0.0, 0.1, 1.0, 0.5, 1e-300, 0.999999};
        p->label_smoothing = ls[(cw >> 2) % 6];
    }
    if (dkd) {
        static const double ab[] = {1.0, 8.0, 0.0, 0.5, 2.0, 1e3, 1e-300, 3.0};
        p->alpha = ab[u8(r) % 8];
        p->beta = ab[u8(r) % 8];
    } else {
        static const double be[] = {0.5, 0.1, 0.9, 1e-300, 0.99999999999, 0.3};
        static const double al[] = {0.1, 0.0, 0.5, 0.99999999999, 1e-300, 0.9};
        p->beta = be[u8(r) % 6];
        p->alpha = al[u8(r) % 6];
    }
    unsigned sm = u8(r);
    p->scale = (int)(sm % 3);
    {
        static const double sv[] = {1.0, 4.0, 0.25, 0.0, 1e6, -1.0, 1e300, 16.0};
        p->scale_value = sv[(sm >> 2) % 8];
    }
    p->check_finite = (sm & 0x80) ? 0 : 1;
    if (p->adaptive) {
        static const double bt[] = {1.0, 2.0, 0.5, 1e-3, 1e3, 1e-300, 1e300, 4.0};
        static const double ep[] = {1e-7, 1e-12, 1.0, 1e-300, 1e-3, 1e300, 1e-7, 0.1};
        p->base_temperature = bt[u8(r) % 8];
        p->std_eps = ep[u8(r) % 8];
        p->ddof = (int)(u8(r) % 4);
        p->detach_temperature = u8(r) & 1;
    }
    {
        static const double gsc[] = {1.0, 1.0, 0.5, 0.0, -1.0, 1e-3, 1e300, 0.125};
        A.grad_scale = gsc[u8(r) % 8];
    }
    const int use_kd = p->kd_weight != 0.0, use_ce = p->ce_weight != 0.0;
    const int needs_labels = use_ce || (use_kd && dkd);

    /* logits */
    void *za, *va = NULL;
    int64_t zspan, vspan = 0;
    A.zs = in_stride(r, n, C);
    FT *z = block(n, C, A.zs, sizeof(FT), &za, &zspan);
    F(fill)(r, za, zspan, z, n, C, A.zs);
    F(poison_gaps)(za, zspan, z, n, C, A.zs);
    unsigned tm = u8(r);
    FT *v = NULL;
    int teacher_is_student = 0;
    if (!use_kd && tm % 4 == 0) {
        v = NULL; /* no teacher at all */
    } else if (tm % 7 == 1) {
        v = z; /* kd_loss(z, z): both read-only, same memory */
        A.vs = A.zs;
        teacher_is_student = 1;
    } else {
        A.vs = (tm & 0x10) ? A.zs : in_stride(r, n, C);
        v = block(n, C, A.vs, sizeof(FT), &va, &vspan);
        if (tm % 7 == 2 && A.vs == A.zs) { /* equal content, other memory */
            memcpy(va, za, sizeof(FT) * (size_t)zspan);
            unsigned np = u8(r) % 3; /* a few differences */
            for (unsigned q = 0; q < np && n > 0; q++)
                v[(u16(r) % n) * A.vs + u16(r) % C] = F(special)(r);
        } else {
            F(fill)(r, va, vspan, v, n, C, A.vs);
        }
        F(poison_gaps)(va, vspan, v, n, C, A.vs);
    }
    A.z = z;
    A.v = v;

    /* temperatures */
    void *tsa = NULL, *tta = NULL;
    double ts_scalar = temperature(r), tt_scalar = (u8(r) & 1) ? ts_scalar : temperature(r);
    unsigned tmode = u8(r);
    int64_t tstr[] = {0, 1, 2, -1};
    int64_t tss = tstr[tmode % 4], tts = tstr[(tmode >> 2) % 4];
    int64_t span;
    if (tss == 0 || n == 0) {
        A.ts.t = &ts_scalar;
        A.ts.stride = 0;
    } else {
        double *t = block(n, 1, tss, sizeof(double), &tsa, &span);
        for (int64_t k = 0; k < span; k++)
            ((double *)tsa)[k] = (tmode & 0x10) ? ts_scalar : temperature(r);
        A.ts.t = t;
        A.ts.stride = tss;
    }
    if ((tmode & 0x20) && A.ts.stride != 0) {
        A.tt = A.ts; /* teacher_temperature None: the same array */
    } else if (tts == 0 || n == 0) {
        A.tt.t = &tt_scalar;
        A.tt.stride = 0;
    } else {
        double *t = block(n, 1, tts, sizeof(double), &tta, &span);
        for (int64_t k = 0; k < span; k++)
            ((double *)tta)[k] = temperature(r);
        A.tt.t = t;
        A.tt.stride = tts;
    }
    double poison_t = NAN;
    if (p->adaptive && v && (tmode & 0x40)) { /* ignored in adaptive mode */
        A.ts.t = A.tt.t = &poison_t;
        A.ts.stride = A.tt.stride = 0;
    }

    /* labels and mask */
    unsigned lm = u8(r);
    void *la = NULL, *ma = NULL;
    int64_t ignore = (int64_t[]){-100, 0, -1, INT64_MIN}[(lm >> 4) % 4];
    if (needs_labels || (lm & 1)) {
        int64_t ls = (int64_t[]){1, 2, 0, -1}[(lm >> 1) % 4];
        int64_t *lab = block(n, 1, ls, sizeof(int64_t), &la, &span);
        for (int64_t k = 0; k < span; k++) {
            unsigned b = u8(r);
            ((int64_t *)la)[k] =
                b < 230 ? (int64_t)(rnd(r) % (uint64_t)C)
                        : (int64_t[]){-100, C, -1, INT64_MIN, INT64_MAX, 0, ignore, 1LL << 40}[b % 8];
        }
        A.rows.labels = lab;
        A.rows.labels_stride = ls;
    }
    A.rows.ignore_index = ignore;
    if (lm & 0x40) {
        int64_t ms = (int64_t[]){1, 3, 0, -1}[(lm >> 3) % 4 ^ ((lm >> 7) & 1)];
        uint8_t *m = block(n, 1, ms, 1, &ma, &span);
        for (int64_t k = 0; k < span; k++)
            ((uint8_t *)ma)[k] = (uint8_t)(rnd(r) % 5 == 0 ? 0 : 1 + rnd(r) % 255);
        A.rows.mask = m;
        A.rows.mask_stride = ms;
    }

    /* run configuration */
    unsigned rm = u8(r);
    const int want_grad = (rm & 3) != 0;
    const int threads = 1 + (int)((rm >> 2) % 3);
    const int isa = (rm >> 4) & 1;
    const int want_t = (rm >> 5) & 1;
    /* in place needs rows that do not overlap (the binding passes an `out` that
     * is the student array itself; overlapping rows would be written before
     * they are read) */
    int alias = want_grad && (rm & 3) == 3 && !teacher_is_student &&
                (n <= 1 || A.zs >= C || A.zs <= -C);
    int64_t gs = C;
    if (want_grad && !alias) {
        unsigned gm = u8(r);
        gs = gm % 3 == 1 ? C + 1 + gm % 5 : gm % 3 == 2 && n > 1 ? -C : C;
    }

    if (verbose) {
        fprintf(stderr,
                "kd_forward_%s n=%lld C=%lld zs=%lld vs=%lld teacher=%s div=%d adaptive=%d "
                "kd_w=%g ce_w=%g ls=%g alpha=%g beta=%g scale=%d/%g check_finite=%d "
                "b=%g eps=%g ddof=%d detach=%d grad_scale=%g\n"
                "  temps: ts stride %lld t0=%g, tt stride %lld t0=%g; labels %s (stride %lld) "
                "ignore=%lld mask %s (stride %lld)\n"
                "  run: grad=%d threads=%d isa=%d alias=%d gs=%lld want_t=%d\n",
                sizeof(FT) == 4 ? "f32" : "f64", (long long)n, (long long)C, (long long)A.zs,
                (long long)A.vs, v == NULL ? "none" : teacher_is_student ? "=student" : "own",
                p->divergence, p->adaptive, p->kd_weight, p->ce_weight, p->label_smoothing,
                p->alpha, p->beta, p->scale, p->scale_value, p->check_finite,
                p->base_temperature, p->std_eps, p->ddof, p->detach_temperature, A.grad_scale,
                (long long)A.ts.stride, n ? A.ts.t[0] : A.ts.t[0], (long long)A.tt.stride,
                A.tt.t[0], A.rows.labels ? "yes" : "no", (long long)A.rows.labels_stride,
                (long long)ignore, A.rows.mask ? "yes" : "no", (long long)A.rows.mask_stride,
                want_grad, threads, isa, alias, (long long)gs, want_t);
        for (int64_t i = 0; i < n && i < 8; i++) {
            fprintf(stderr, "  row %lld: ts=%g tt=%g label=%lld mask=%d\n    z:", (long long)i,
                    A.ts.t[i * A.ts.stride], A.tt.t[i * A.tt.stride],
                    A.rows.labels ? (long long)A.rows.labels[i * A.rows.labels_stride] : -1LL,
                    A.rows.mask ? A.rows.mask[i * A.rows.mask_stride] : -1);
            for (int64_t j = 0; j < C && j < 40; j++)
                fprintf(stderr, " %.9g", (double)z[i * A.zs + j]);
            if (v) {
                fprintf(stderr, "\n    v:");
                for (int64_t j = 0; j < C && j < 40; j++)
                    fprintf(stderr, " %.9g", (double)v[i * A.vs + j]);
            }
            fprintf(stderr, "\n");
        }
    }
    /* the expected status */
    int exp_code = KD_OK;
    int64_t exp_row = -1;
    int strict = 1, moderate = 1, benign = C <= BENIGN_C && n * C <= BENIGN_ELEMS;
    int any_ninf = 0;
    int64_t counted = 0;
    for (int64_t i = 0; i < n && exp_code == KD_OK; i++) {
        if (A.rows.labels && A.rows.labels[i * A.rows.labels_stride] == ignore)
            continue;
        if (A.rows.mask && !A.rows.mask[i * A.rows.mask_stride])
            continue;
        counted++;
        int code = KD_OK;
        if (needs_labels) {
            int64_t y = A.rows.labels[i * A.rows.labels_stride];
            if (y < 0 || y >= C)
                code = KD_ERR_LABEL;
        }
        F(rowinfo) zi = F(classify)(z + i * A.zs, C);
        if (code == KD_OK)
            code = F(row_code)(zi, p->check_finite, KD_ERR_NONFINITE_STUDENT, KD_ERR_ALLINF_STUDENT);
        strict &= zi.strict;
        moderate &= zi.moderate;
        any_ninf |= zi.has_ninf;
        benign &= zi.benign;
        if (v) {
            F(rowinfo) vi = F(classify)(v + i * A.vs, C);
            if (code == KD_OK && use_kd)
                code = F(row_code)(vi, p->check_finite, KD_ERR_NONFINITE_TEACHER,
                                   KD_ERR_ALLINF_TEACHER);
            /* a teacher that is given but unused is never checked: outside the
             * strict domain when it holds NaN/+inf (ATKD reads its std) */
            if (use_kd)
                strict &= vi.strict, moderate &= vi.moderate, benign &= vi.benign,
                    any_ninf |= vi.has_ninf;
            if (!use_kd && p->adaptive)
                benign = 0;
        }
        if (!p->adaptive || !v) { /* adaptive without a teacher reads them too */
            double a = A.ts.t[i * A.ts.stride], b = A.tt.t[i * A.tt.stride];
            strict &= a >= STRICT_T_LO && a <= STRICT_T_HI && b >= STRICT_T_LO && b <= STRICT_T_HI;
            moderate &= a >= MOD_T_LO && a <= MOD_T_HI && b >= MOD_T_LO && b <= MOD_T_HI;
            benign &= a >= BENIGN_T_LO && a <= BENIGN_T_HI && b >= BENIGN_T_LO && b <= BENIGN_T_HI;
        }
        if (code != KD_OK) {
            exp_code = code;
            exp_row = i;
        }
    }
    /* weights of opposite signs on an infinite KL and an infinite CE: inf - inf */
    if (any_ninf && (p->kd_weight < 0 || p->ce_weight < 0))
        strict = 0;
    /* weights 0 or of magnitude >= 1e-30: a product like kd_weight * s that
     * underflows to 0 times an infinite KL is NaN */
    strict &= (p->kd_weight == 0 || fabs(p->kd_weight) >= 1e-30) &&
              (p->ce_weight == 0 || fabs(p->ce_weight) >= 1e-30);
    strict &= fabs(p->kd_weight) <= STRICT_W && fabs(p->ce_weight) <= STRICT_W &&
              fabs(A.grad_scale) <= STRICT_W &&
              /* the binding passes 1 or ATKD's b^2 > 0; 0 * an infinite KL is NaN */
              (p->scale != KD_SCALE_CONST ||
               (p->scale_value >= 1.0 / STRICT_W && p->scale_value <= STRICT_W));
    if (dkd)
        strict &= p->alpha <= STRICT_W && p->beta <= STRICT_W;
    if (p->adaptive)
        strict &= p->base_temperature >= STRICT_B_LO && p->base_temperature <= STRICT_B_HI &&
                  p->std_eps >= STRICT_EPS_LO && p->std_eps <= STRICT_EPS_HI;
    moderate &= strict;
    /* weights 0 or in [1e-6, 1e3] (tinier ones underflow the float terms) */
#define KF_W_OK(w) ((w) == 0 || (fabs(w) >= 1e-6 && fabs(w) <= 1e3))
    benign &= KF_W_OK(p->kd_weight) && KF_W_OK(p->ce_weight) && KF_W_OK(A.grad_scale);
    benign &= moderate && fabs(p->kd_weight) <= 1e3 && fabs(p->ce_weight) <= 1e3 &&
              fabs(A.grad_scale) <= 1e3 && (p->scale != KD_SCALE_CONST || fabs(p->scale_value) <= 1e3) &&
              (!dkd || (p->alpha <= 1e3 && p->beta <= 1e3));
    if (p->adaptive)
        benign &= p->std_eps >= 1e-3 && p->base_temperature >= 0.5 && p->base_temperature <= 4;

    /* outputs, pre-filled with sentinels */
    const double SENT = -12345.678;
    const FT GSENT = (FT)-777.25;
    double *loss1 = malloc(sizeof(double) * (size_t)(n + 1));
    double *loss2 = malloc(sizeof(double) * (size_t)(n + 1));
    double *loss3 = malloc(sizeof(double) * (size_t)(n + 1));
    double *tso1 = malloc(sizeof(double) * (size_t)(n + 1)), *tto1 = malloc(sizeof(double) * (size_t)(n + 1));
    double *tso2 = malloc(sizeof(double) * (size_t)(n + 1)), *tto2 = malloc(sizeof(double) * (size_t)(n + 1));
    for (int64_t i = 0; i <= n; i++)
        loss1[i] = loss2[i] = loss3[i] = tso1[i] = tto1[i] = tso2[i] = tto2[i] = SENT;
    void *g1a = NULL, *g2a = NULL;
    int64_t g1span = 0, g2span = 0;
    FT *g1 = NULL, *g2 = NULL;
    if (want_grad) {
        g1 = block(n, C, C, sizeof(FT), &g1a, &g1span);
        for (int64_t k = 0; k < g1span; k++)
            ((FT *)g1a)[k] = GSENT;
        if (!alias) {
            g2 = block(n, C, gs, sizeof(FT), &g2a, &g2span);
            for (int64_t k = 0; k < g2span; k++)
                ((FT *)g2a)[k] = GSENT;
        }
    }
    FT *zcopy = NULL;
    if (alias) {
        zcopy = malloc(sizeof(FT) * (size_t)zspan);
        memcpy(zcopy, za, sizeof(FT) * (size_t)zspan);
    }

    /* run 1: one thread, separate gradient, the fuzzed ISA (the builds differ
     * in the exps' rounding, so bits are compared within one build) */
    kd_status st1, st2, st3, st4;
    int rc1 = F(call_forward)(&A, loss1, g1, C, tso1, tto1, 1, isa, &st1);
    CHECKM(rc1 == exp_code, "kd_forward code %d, expected %d (row %lld)", rc1, exp_code,
           (long long)exp_row);
    if (rc1 != KD_OK)
        CHECKM(st1.row == exp_row, "error row %lld, expected %lld", (long long)st1.row,
               (long long)exp_row);
    /* run 2: the fuzzed configuration (maybe in place) */
    int rc2;
    if (alias) {
        F(fwd_args) B = A;
        rc2 = F(call_forward)(&B, loss2, z, A.zs, want_t ? tso2 : NULL, want_t ? tto2 : NULL,
                              threads, isa, &st2);
    } else {
        rc2 = F(call_forward)(&A, loss2, g2, gs, want_t ? tso2 : NULL, want_t ? tto2 : NULL,
                              threads, isa, &st2);
    }
    CHECK(rc2 == rc1 && st2.row == st1.row);
    /* run 3: no gradient (from the unmodified student) */
    F(fwd_args) A3 = A;
    if (alias)
        A3.z = (const FT *)((const char *)zcopy + ((const char *)z - (const char *)za));
    int rc3 = F(call_forward)(&A3, loss3, NULL, 0, NULL, NULL, threads, isa, &st3);
    CHECK(rc3 == rc1 && st3.row == st1.row);
    /* run 4: the other build: the same status, and each row's loss of the same
     * kind (finite, inf, NaN) */
    double *loss4 = malloc(sizeof(double) * (size_t)(n + 1));
    int rc4 = F(call_forward)(&A3, loss4, NULL, 0, NULL, NULL, threads, !isa, &st4);
    CHECK(rc4 == rc1 && st4.row == st1.row);
    for (int64_t i = 0; rc4 == KD_OK && i < n; i++) {
        /* kd_weight * s beyond the dtype (README: a limit, not a bug) gives
         * inf * 0 = NaN where one build rounds the divergence to 0 and inf
         * where the other leaves it positive */
        const double sw = p->scale == KD_SCALE_T2      ? tso1[i] * tto1[i]
                          : p->scale == KD_SCALE_CONST ? p->scale_value
                                                       : 1.0;
        if (!isfinite(p->kd_weight * sw))
            continue;
        /* a divergence within 16x of the dtype's max (logits of +-DBL_MAX:
         * log-ratios that large) is inf where one build's sum overflows and
         * finite where the other's does not: the same limit */
        const double fin = isfinite(loss3[i]) ? loss3[i] : loss4[i];
        if (isinf(loss3[i]) != isinf(loss4[i]) && isfinite(fin) &&
            fabs(fin) / fabs(p->kd_weight * sw) > DBL_MAX / 16)
            continue;
        CHECKM(isnan(loss4[i]) == isnan(loss3[i]) && isinf(loss4[i]) == isinf(loss3[i]),
               "row %lld loss %.17g on one build, %.17g on the other", (long long)i, loss3[i],
               loss4[i]);
    }
    free(loss4);

    if (rc1 != KD_OK) {
        /* an error leaves a student written in place as it was; the other
         * outputs' rows are unspecified, nothing outside them is written */
        CHECK(loss1[n] == SENT && loss2[n] == SENT && loss3[n] == SENT && tso1[n] == SENT &&
              tto1[n] == SENT && tso2[n] == SENT && tto2[n] == SENT);
        if (g2 && !alias) {
            int64_t a = gs < 0 ? -gs : gs;
            for (int64_t k = 0; k < g2span; k++)
                if (k % a >= C)
                    CHECK(((FT *)g2a)[k] == GSENT);
        }
        if (alias)
            CHECK(memcmp(zcopy, za, sizeof(FT) * (size_t)zspan) == 0);
        goto done;
    }

    /* outputs of one build agree bit for bit across threads, in place, grad or not */
    CHECK(loss1[n] == SENT && loss2[n] == SENT && loss3[n] == SENT);
    for (int64_t i = 0; i < n; i++) {
        CHECKM(same_dbits(loss1[i], loss2[i]), "row %lld loss %.17g vs %.17g (threads %d isa %d alias %d)",
               (long long)i, loss1[i], loss2[i], threads, isa, alias);
        CHECKM(same_dbits(loss1[i], loss3[i]), "row %lld loss with grad %.17g, without %.17g",
               (long long)i, loss1[i], loss3[i]);
        CHECK(same_dbits(tso1[i], tso2[i]) || !want_t);
        CHECK(same_dbits(tto1[i], tto2[i]) || !want_t);
        if (want_grad) {
            const FT *r1 = g1 + i * C, *r2 = alias ? z + i * A.zs : g2 + i * gs;
            for (int64_t j = 0; j < C; j++)
                CHECKM(F(same_bits)(r1[j], r2[j]), "grad[%lld][%lld] %.9g vs %.9g (threads %d isa %d alias %d)",
                       (long long)i, (long long)j, (double)r1[j], (double)r2[j], threads, isa, alias);
        }
    }
    if (want_grad && !alias) { /* gaps between strided gradient rows untouched */
        int64_t a = gs < 0 ? -gs : gs;
        for (int64_t k = 0; k < g2span; k++)
            if (k % a >= C)
                CHECK(((FT *)g2a)[k] == GSENT);
    }

    /* per-row semantics */
    for (int64_t i = 0; i < n; i++) {
        int counts = !(A.rows.labels && A.rows.labels[i * A.rows.labels_stride] == ignore) &&
                     !(A.rows.mask && !A.rows.mask[i * A.rows.mask_stride]);
        const FT *gi = want_grad ? g1 + i * C : NULL;
        if (!counts) {
            CHECK(loss1[i] == 0.0);
            CHECK(isnan(tso1[i]) && isnan(tto1[i]));
            for (int64_t j = 0; gi && j < C; j++)
                CHECK(gi[j] == 0);
            continue;
        }
        /* the student as it was (an in-place run overwrote z) */
        const FT *zi = A3.z + i * A.zs, *vi = v ? v + i * A.vs : NULL;
        if (!p->adaptive || !v) {
            CHECK(tso1[i] == A.ts.t[i * A.ts.stride] && tto1[i] == A.tt.t[i * A.tt.stride]);
        } else if (strict) { /* an unused teacher is not checked: its std may be anything */
            CHECK(tso1[i] > 0 && isfinite(tso1[i]));
            CHECK(!use_kd || (tto1[i] > 0 && isfinite(tto1[i])));
        }
        if (!strict)
            continue;
        /* the row's gradient coefficients (tT for T2, 1/tS for "none") must fit
         * in FT: beyond, inf * 0 is NaN and is outside what is checked */
        {
            double s_ = p->scale == KD_SCALE_T2 ? tso1[i] * tto1[i]
                        : p->scale == KD_SCALE_CONST ? fabs(p->scale_value) : 1.0;
            double cm = fabs(A.grad_scale) * fabs(p->kd_weight) * s_ / tso1[i] * (dkd ? 1 + p->alpha + p->beta : 1);
            if (use_kd && !(cm <= FT_MAX_ * 1e-6))
                continue;
        }
        CHECKM(!isnan(loss1[i]), "NaN loss in row %lld", (long long)i);
        if (!use_ce && p->kd_weight >= 0 && (p->scale != KD_SCALE_CONST || p->scale_value >= 0))
            CHECKM(loss1[i] >= 0, "negative loss %.17g in row %lld", loss1[i], (long long)i);
        if (gi) {
            double sum = 0, sabs = 0;
            int fin = 1;
            for (int64_t j = 0; j < C; j++) {
                fin &= isfinite(gi[j]);
                sum += gi[j];
                sabs += fabs((double)gi[j]);
            }
            for (int64_t j = 0; j < C; j++)
                CHECKM(!isnan(gi[j]), "NaN gradient in row %lld col %lld", (long long)i, (long long)j);
            if (moderate) {
                CHECKM(fin, "non-finite gradient in row %lld", (long long)i);
                /* d/dc loss(z + c) = 0 (ATKD through tS included): the row sums
                 * to ulp-level noise of its terms, whose size is at most the
                 * coefficients in front of the probabilities */
                double tS_ = tso1[i], tT_ = tto1[i];
                double s_ = p->scale == KD_SCALE_T2 ? tS_ * tT_
                            : p->scale == KD_SCALE_CONST ? fabs(p->scale_value) : 1.0;
                double coefmag = fabs(A.grad_scale) *
                                 (use_kd ? fabs(p->kd_weight) * s_ / tS_ * (dkd ? 1 + p->alpha + p->beta : 2) : 0) +
                                 fabs(A.grad_scale) * fabs(p->ce_weight) * 2;
                /* for the divergences other than KL the row sum is coef Q (1 - sum pS),
                 * with Q up to the largest log-ratio |log pS - log pT| (or log M) */
                double Lmax = 1;
                for (int64_t j = 0; j < C; j++) {
                    if (zi[j] > -INFINITY)
                        Lmax = fmax(Lmax, 2 * fabs((double)zi[j] / tS_));
                    if (use_kd && vi[j] > -INFINITY)
                        Lmax = fmax(Lmax, 2 * fabs((double)vi[j] / tT_));
                }
                if (p->divergence != KD_DIV_KL && p->divergence != KD_DIV_DKD && use_kd) {
                    double ab = fmin(fmin(p->alpha > 0 ? p->alpha : 1, 1 - p->alpha),
                                     fmin(p->beta, 1 - p->beta));
                    Lmax += fabs(log(ab));
                }
                double tol = (sizeof(FT) == 4 ? 1.2e-7 : 2.3e-16) * 64 *
                             (sabs + coefmag * (1 + Lmax)) * (1 + sqrt((double)C));
                /* DKD with a student that has no non-target mass and a teacher
                 * that has: NCKD is +inf and its gradient beta (q - pT_nt) with
                 * q = 0 (the README's convention), which sums to -beta; TCKD is
                 * +inf as well (its binary KL has (1 - pT_y) log((1 - pT_y) / 0)),
                 * with no gradient on the massless non-target columns, so its
                 * alpha (pS_y - pT_y) at y is not cancelled either */
                int nckd_inf = 0;
                if (dkd && use_kd && (p->beta != 0.0 || p->alpha != 0.0)) {
                    int64_t yl = A.rows.labels[i * A.rows.labels_stride];
                    int s_mass = 0, t_mass = 0;
                    for (int64_t j = 0; j < C; j++)
                        if (j != yl) {
                            s_mass |= zi[j] > -INFINITY;
                            t_mass |= vi[j] > -INFINITY;
                        }
                    nckd_inf = !s_mass && t_mass;
                }
                CHECKM(fabs(sum) <= tol || C == 1 || nckd_inf,
                       "gradient row %lld sums to %.9g (sum |g| %.9g, coef %.9g)", (long long)i, sum,
                       sabs, coefmag);
            }
        }
        /* the naive oracle */
        if (!benign)
            continue;
        if (p->adaptive && !v)
            continue;
        double tS = tso1[i], tT = tto1[i];
        int64_t y = needs_labels ? A.rows.labels[i * A.rows.labels_stride] : 0;
        if (p->adaptive) {
            LD m, sd;
            F(mean_std)(zi, C, p->ddof, &m, &sd);
            LD otS = p->base_temperature * (sd + p->std_eps);
            F(mean_std)(vi, C, p->ddof, &m, &sd);
            LD otT = p->base_temperature * (sd + p->std_eps);
            CHECKM(fabsl(otS - tS) <= 1e-5L * otS && fabsl(otT - tT) <= 1e-5L * otT,
                   "ATKD temperatures %.17g %.17g, oracle %.17Lg %.17Lg", tS, tT, otS, otT);
        }
        LD ol;
        LD *og = gi ? malloc(sizeof(LD) * (size_t)C) : NULL;
        int with_g = gi && !(p->adaptive && !p->detach_temperature);
        if (F(oracle_row)(zi, vi, C, y, tS, tT, p, &ol, with_g ? og : NULL) == 2)
            with_g = 0; /* a TVD tie: any subgradient */
        /* tolerances: float rounding of z/t is the main error source */
        LD mx = 1;
        for (int64_t j = 0; j < C; j++) {
            if (zi[j] > -INFINITY)
                mx = fmaxl(mx, fabsl((LD)zi[j] / tS));
            if (use_kd && vi[j] > -INFINITY)
                mx = fmaxl(mx, fabsl((LD)vi[j] / tT));
        }
        const LD ulp = sizeof(FT) == 4 ? 1.2e-7L : 2.3e-16L;
        LD sabs = p->scale == KD_SCALE_T2 ? (LD)tS * tT
                  : p->scale == KD_SCALE_CONST ? fabsl((LD)p->scale_value) : 1.0L;
        LD wk = fabsl((LD)p->kd_weight) * sabs * (dkd ? 1 + p->alpha + p->beta : 2);
        LD zmax = 1;
        for (int64_t j = 0; j < C; j++)
            if (zi[j] > -INFINITY)
                zmax = fmaxl(zmax, fabsl((LD)zi[j]));
        const LD tiny = sizeof(FT) == 4 ? 1e-37L : 1e-307L; /* below it FT flushes to 0 */
        LD atol = tiny + 64 * ulp * (wk * mx * (1 + log2l(C)) + fabsl((LD)p->ce_weight) * zmax * (1 + log2l(C)));
        if (isinf(ol) && isfinite(loss1[i]) && use_kd) {
            /* The kernels' exps of (x - max)/t below the dtype's normal
             * range are 0 (as a float32 softmax is): a probability that is
             * positive only in long double, against a 0 of the other side,
             * makes the oracle's loss infinite and the kernel's finite. Then
             * it is the loss of the rows with those entries masked (within a
             * unit of the flush bound, where the float exponent may round
             * either way). */
            /* log of the smallest normal: kd_math.h's KD_EXPF_LO, KD_EXPD_LO */
            const LD lo = (sizeof(FT) == sizeof(float) ? -87.33654L : -708.3964185322641L) + 1;
            LD zmx = -INFINITY, vmx = -INFINITY;
            for (int64_t j = 0; j < C; j++) {
                zmx = fmaxl(zmx, zi[j]);
                vmx = fmaxl(vmx, vi[j]);
            }
            FT *fz = malloc(sizeof(FT) * (size_t)C * 2), *fv = fz + C;
            for (int64_t j = 0; j < C; j++) {
                fz[j] = ((LD)zi[j] - zmx) / tS < lo ? -INFINITY : zi[j];
                fv[j] = ((LD)vi[j] - vmx) / tT < lo ? -INFINITY : vi[j];
            }
            LD fl;
            F(oracle_row)(fz, fv, C, y, tS, tT, p, &fl, NULL);
            free(fz);
            CHECKM(fabsl(loss1[i] - fl) <= atol + 1e3L * ulp * fabsl(fl),
                   "row %lld loss %.17g, oracle %Lg, %.17Lg with the flushed exps masked",
                   (long long)i, loss1[i], ol, fl);
        } else if (isinf(ol)) {
            CHECKM(isinf(loss1[i]) && (ol > 0) == (loss1[i] > 0), "row %lld loss %.17g, oracle %Lg",
                   (long long)i, loss1[i], ol);
        } else {
            CHECKM(fabsl(loss1[i] - ol) <= atol + 1e3L * ulp * fabsl(ol),
                   "row %lld loss %.17g, oracle %.17Lg (div %d, atol %Lg)", (long long)i, loss1[i],
                   ol, p->divergence, atol);
        }
        if (with_g && !isinf(ol)) {
            LD gtol = tiny + 64 * ulp * fabsl((LD)A.grad_scale) *
                      (wk / tS * mx * (1 + log2l(C)) + fabsl((LD)p->ce_weight) * (1 + zmax));
            for (int64_t j = 0; j < C; j++) {
                LD e = (LD)A.grad_scale * og[j];
                CHECKM(fabsl((LD)gi[j] - e) <= gtol + 64 * ulp * fabsl(e),
                       "row %lld grad[%lld] %.9g, oracle %.12Lg (div %d, tol %Lg)", (long long)i,
                       (long long)j, (double)gi[j], e, p->divergence, gtol);
            }
        }
        free(og);
    }

done:
    free(za);
    free(va);
    free(tsa);
    free(tta);
    free(la);
    free(ma);
    free(loss1);
    free(loss2);
    free(loss3);
    free(tso1);
    free(tto1);
    free(tso2);
    free(tto2);
    free(g1a);
    free(g2a);
    free(zcopy);
    (void)counted;
}

/* ---- softmax / log_softmax --------------------------------------------------- */

static void F(fuzz_softmax)(rd *r)
{
    unsigned sh = u8(r);
    int64_t n = (sh & 1) ? (int64_t[]){64, 4096, 33, 1000}[(sh >> 1) % 4] : (int64_t)((sh >> 1) % 9);
    unsigned sc = u8(r);
    int64_t C = (sc & 1) ? (int64_t[]){63, 64, 65, 1000, 16385, 100003, 9, 17}[(sc >> 1) % 8]
                         : 1 + (int64_t)((sc >> 1) % 40);
    while (n > 1 && n * C > MAX_ELEMS)
        n /= 2;
    unsigned fl = u8(r);
    int log_space = fl & 1, check_finite = !((fl >> 1) & 1), threads = 1 + (int)((fl >> 2) % 3);
    int isa = (fl >> 4) & 1, inplace = (fl >> 5) & 1;
    void *xa, *ta = NULL;
    int64_t xspan, span;
    int64_t xs = in_stride(r, n, C);
    if (inplace && xs == 0 && n > 1)
        xs = C;
    if (inplace && xs > 0 && xs < C)
        xs = C; /* in place needs disjoint rows */
    if (inplace && xs < 0 && -xs < C)
        xs = -C;
    FT *x = block(n, C, xs, sizeof(FT), &xa, &xspan);
    F(fill)(r, xa, xspan, x, n, C, xs);
    F(poison_gaps)(xa, xspan, x, n, C, xs);
    double tscalar = temperature(r);
    kd_temps t = {&tscalar, 0};
    unsigned tm = u8(r);
    if (tm & 1 && n > 0) {
        int64_t s = (int64_t[]){1, 2, -1, 3}[(tm >> 1) % 4];
        double *tv = block(n, 1, s, sizeof(double), &ta, &span);
        for (int64_t k = 0; k < span; k++)
            ((double *)ta)[k] = temperature(r);
        t.t = tv;
        t.stride = s;
    }
    /* expected status and domain */
    int exp_code = KD_OK;
    int64_t exp_row = -1;
    int strict = 1, benign = C <= BENIGN_C && n * C <= BENIGN_ELEMS;
    for (int64_t i = 0; i < n; i++) {
        F(rowinfo) ri = F(classify)(x + i * xs, C);
        int code = F(row_code)(ri, check_finite, KD_ERR_NONFINITE_STUDENT, KD_ERR_ALLINF_STUDENT);
        if (code != KD_OK && exp_code == KD_OK) {
            exp_code = code;
            exp_row = i;
        }
        double ti = t.t[i * t.stride];
        strict &= ri.strict && ti >= STRICT_T_LO && ti <= STRICT_T_HI;
        benign &= ri.benign && ti >= BENIGN_T_LO && ti <= BENIGN_T_HI;
    }
    void *o1a, *o2a = NULL;
    FT *o1 = block(n, C, C, sizeof(FT), &o1a, &span);
    for (int64_t k = 0; k < span; k++)
        ((FT *)o1a)[k] = (FT)-5.5;
    FT *o2;
    int64_t os2 = xs, o2span = 0;
    FT *xcopy = malloc(sizeof(FT) * (size_t)xspan);
    memcpy(xcopy, xa, sizeof(FT) * (size_t)xspan);
    if (inplace) {
        o2 = x;
    } else {
        os2 = (fl & 0x40) ? C + 3 : (n > 1 && (fl & 0x80) ? -C : C);
        o2 = block(n, C, os2, sizeof(FT), &o2a, &o2span);
        for (int64_t k = 0; k < o2span; k++)
            ((FT *)o2a)[k] = (FT)-5.5;
    }
    const FT *xin = (const FT *)((const char *)xcopy + ((const char *)x - (const char *)xa));
    kd_status st1, st2;
    kd_set_isa(fuzz_isa(isa)); /* run 1 too: the builds differ in rounding */
    int rc1 = KF_CAT(kd_softmax, SFX)(n, C, xin, xs, t, log_space, check_finite, o1, C, 1, &st1);
    kd_set_isa(fuzz_isa(isa));
    int rc2 = KF_CAT(kd_softmax, SFX)(n, C, x, xs, t, log_space, check_finite, o2, os2, threads, &st2);
    kd_set_isa("baseline");
    CHECKM(rc1 == exp_code, "softmax code %d expected %d", rc1, exp_code);
    CHECK(rc2 == rc1 && st1.code == rc1 && st2.code == rc2);
    if (rc1 != KD_OK) {
        /* in place: x as it was; otherwise out's rows are unspecified, its
         * gaps untouched */
        CHECK(st1.row == exp_row && st2.row == exp_row);
        if (inplace)
            CHECK(memcmp(xcopy, xa, sizeof(FT) * (size_t)xspan) == 0);
        else
            for (int64_t k = 0; k < o2span; k++)
                CHECK(k % (os2 < 0 ? -os2 : os2) < C || ((FT *)o2a)[k] == (FT)-5.5);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        const FT *a = o1 + i * C, *b = o2 + i * os2, *xi = xin + i * xs;
        double sum = 0;
        for (int64_t j = 0; j < C; j++) {
            CHECKM(F(same_bits)(a[j], b[j]), "softmax[%lld][%lld] %.9g vs %.9g", (long long)i,
                   (long long)j, (double)a[j], (double)b[j]);
            if (!strict)
                continue;
            CHECK(!isnan(a[j]));
            if (log_space) {
                CHECK(a[j] <= 0);
                sum += exp((double)a[j]);
            } else {
                CHECK(a[j] >= 0 && a[j] <= 1);
                sum += a[j];
            }
        }
        if (strict)
            CHECKM(fabs(sum - 1) <= (sizeof(FT) == 4 ? 1e-5 : 1e-13) * (1 + sqrt((double)C)) +
                                        (log_space ? (sizeof(FT) == 4 ? 1e-6 : 1e-14) * C : 0),
                   "softmax row %lld sums to %.17g", (long long)i, sum);
        if (benign) {
            double ti = t.t[i * t.stride];
            LD *y = malloc(sizeof(LD) * (size_t)C);
            for (int64_t j = 0; j < C; j++)
                y[j] = (LD)xi[j] / ti;
            LD l = lse_ld(y, C, -1), mx = 1;
            for (int64_t j = 0; j < C; j++)
                if (xi[j] > -INFINITY)
                    mx = fmaxl(mx, fabsl(y[j]));
            const LD ulp = sizeof(FT) == 4 ? 1.2e-7L : 2.3e-16L;
            for (int64_t j = 0; j < C; j++) {
                LD e = log_space ? y[j] - l : expl(y[j] - l);
                LD tol = log_space ? 16 * ulp * (mx + logl(C) + 1) : 16 * ulp * (1 + mx) * e + 1e-30L;
                if (isinf(e))
                    CHECK(isinf(a[j]));
                else
                    CHECKM(fabsl(a[j] - e) <= tol, "softmax[%lld][%lld] %.9g, oracle %.12Lg",
                           (long long)i, (long long)j, (double)a[j], e);
            }
            free(y);
        }
    }
    if (!inplace) {
        int64_t a = os2 < 0 ? -os2 : os2;
        for (int64_t k = 0; k < o2span; k++)
            if (k % a >= C)
                CHECK(((FT *)o2a)[k] == (FT)-5.5);
    }
done:
    free(xa);
    free(ta);
    free(o1a);
    free(o2a);
    free(xcopy);
}

/* ---- lse ------------------------------------------------------------------------ */

static void F(fuzz_lse)(rd *r)
{
    unsigned sh = u8(r);
    int64_t n = (sh & 1) ? (int64_t[]){64, 4096, 33, 1000}[(sh >> 1) % 4] : (int64_t)((sh >> 1) % 9);
    int64_t C = 1 + (int64_t)(u8(r) % 70);
    if (u8(r) % 5 == 0)
        C = (int64_t[]){1000, 16385, 100003, 127}[u8(r) % 4];
    while (n > 1 && n * C > MAX_ELEMS)
        n /= 2;
    unsigned fl = u8(r);
    int check_finite = !(fl & 1), threads = 1 + (int)((fl >> 1) % 3), isa = (fl >> 3) & 1;
    void *xa, *ta = NULL;
    int64_t xspan, span;
    int64_t xs = in_stride(r, n, C);
    FT *x = block(n, C, xs, sizeof(FT), &xa, &xspan);
    F(fill)(r, xa, xspan, x, n, C, xs);
    F(poison_gaps)(xa, xspan, x, n, C, xs);
    double tscalar = temperature(r);
    kd_temps t = {&tscalar, 0};
    if ((fl & 0x10) && n > 0) {
        int64_t s = (fl & 0x20) ? -1 : 1;
        double *tv = block(n, 1, s, sizeof(double), &ta, &span);
        for (int64_t k = 0; k < span; k++)
            ((double *)ta)[k] = temperature(r);
        t.t = tv;
        t.stride = s;
    }
    int exp_code = KD_OK;
    int64_t exp_row = -1;
    int strict = 1;
    for (int64_t i = 0; i < n; i++) {
        F(rowinfo) ri = F(classify)(x + i * xs, C);
        int code = F(row_code)(ri, check_finite, KD_ERR_NONFINITE_STUDENT, KD_ERR_ALLINF_STUDENT);
        if (code != KD_OK && exp_code == KD_OK) {
            exp_code = code;
            exp_row = i;
        }
        double ti = t.t[i * t.stride];
        strict &= ri.strict && ti >= STRICT_T_LO && ti <= STRICT_T_HI;
    }
    double *o1 = malloc(sizeof(double) * (size_t)(n + 1)), *o2 = malloc(sizeof(double) * (size_t)(n + 1));
    kd_status st1, st2;
    kd_set_isa(fuzz_isa(isa)); /* run 1 too: the builds differ in rounding */
    int rc1 = KF_CAT(kd_lse, SFX)(n, C, x, xs, t, check_finite, o1, 1, &st1);
    kd_set_isa(fuzz_isa(isa));
    int rc2 = KF_CAT(kd_lse, SFX)(n, C, x, xs, t, check_finite, o2, threads, &st2);
    kd_set_isa("baseline");
    CHECKM(rc1 == exp_code, "lse code %d expected %d", rc1, exp_code);
    CHECK(rc2 == rc1 && st1.code == rc1 && st2.code == rc1);
    if (rc1 != KD_OK) {
        CHECK(st1.row == exp_row && st2.row == exp_row);
    } else {
        for (int64_t i = 0; i < n; i++) {
            CHECK(same_dbits(o1[i], o2[i]));
            if (!strict)
                continue;
            const FT *xi = x + i * xs;
            F(rowinfo) ri = F(classify)(xi, C);
            double ti = t.t[i * t.stride];
            double lo = (double)ri.max / ti;
            CHECKM(!isnan(o1[i]) && o1[i] >= lo, "lse row %lld = %.17g < max/t %.17g", (long long)i,
                   o1[i], lo);
            /* at most log C above the max (plus float rounding of x/t) */
            CHECKM(o1[i] <= lo + log((double)C) + 1e-5 * (1 + fabs(lo)) || isinf(lo),
                   "lse row %lld = %.17g > max/t + log C", (long long)i, o1[i]);
        }
    }
    free(xa);
    free(ta);
    free(o1);
    free(o2);
}

/* ---- mse (Annealing-KD) -------------------------------------------------------------- */

static void F(fuzz_mse)(rd *r)
{
    unsigned sh = u8(r);
    int64_t n = (sh & 1) ? (int64_t[]){64, 4096, 33, 1000}[(sh >> 1) % 4] : (int64_t)((sh >> 1) % 9);
    int64_t C = 1 + (int64_t)(u8(r) % 70);
    if (u8(r) % 5 == 0)
        C = (int64_t[]){1000, 16385, 100003, 127}[u8(r) % 4];
    while (n > 1 && n * C > MAX_ELEMS)
        n /= 2;
    unsigned fl = u8(r);
    int check_finite = !(fl & 1), threads = 1 + (int)((fl >> 1) % 3);
    int want_grad = (fl >> 3) & 1, alias = want_grad && ((fl >> 4) & 1);
    static const double phis[] = {1.0, 0.5, 0.0, -1.0, 0.9, 1e-300, 1e300, 0.1};
    double phi = phis[(fl >> 5) % 8];
    static const double gsc[] = {1.0, 0.5, 1e-3, 0.0};
    double grad_scale = gsc[u8(r) % 4];
    void *za, *va;
    int64_t zspan, vspan, span;
    int64_t zs = in_stride(r, n, C), vs = in_stride(r, n, C);
    if (alias && (zs >= 0 ? zs : -zs) < C && n > 1)
        alias = 0; /* in place needs disjoint rows */
    FT *z = block(n, C, zs, sizeof(FT), &za, &zspan);
    FT *v = block(n, C, vs, sizeof(FT), &va, &vspan);
    F(fill)(r, za, zspan, z, n, C, zs);
    F(fill)(r, va, vspan, v, n, C, vs);
    F(poison_gaps)(za, zspan, z, n, C, zs);
    F(poison_gaps)(va, vspan, v, n, C, vs);
    kd_rows rows = {NULL, 0, -100, NULL, 0};
    void *la = NULL, *ma = NULL;
    unsigned lm = u8(r);
    if (lm & 1) {
        int64_t *lab = block(n, 1, 1, sizeof(int64_t), &la, &span);
        for (int64_t k = 0; k < span; k++)
            lab[k] = rnd(r) % 4 == 0 ? -100 : (int64_t)(rnd(r) % 1000) - 500; /* any value counts */
        rows.labels = lab;
        rows.labels_stride = 1;
    }
    if (lm & 2) {
        int64_t ms = (lm & 4) ? 0 : 1;
        uint8_t *m = block(n, 1, ms, 1, &ma, &span);
        for (int64_t k = 0; k < span; k++)
            m[k] = (uint8_t)(rnd(r) % 4 == 0 ? 0 : 1);
        rows.mask = m;
        rows.mask_stride = ms;
    }
    int exp_code = KD_OK;
    int64_t exp_row = -1;
    int strict = fabs(phi) <= 1e6;
    for (int64_t i = 0; i < n; i++) {
        if (rows.labels && rows.labels[i] == -100)
            continue;
        if (rows.mask && !rows.mask[i * rows.mask_stride])
            continue;
        F(rowinfo) a = F(classify)(z + i * zs, C), b = F(classify)(v + i * vs, C);
        int bad_a = a.nan || a.posinf || a.has_ninf, bad_b = b.nan || b.posinf || b.has_ninf;
        if (check_finite && exp_code == KD_OK && (bad_a || bad_b)) {
            exp_code = bad_a ? KD_ERR_NONFINITE_STUDENT : KD_ERR_NONFINITE_TEACHER;
            exp_row = i;
        }
        strict &= !bad_a && !bad_b && a.strict && b.strict;
    }
    double *l1 = malloc(sizeof(double) * (size_t)(n + 1)), *l2 = malloc(sizeof(double) * (size_t)(n + 1));
    for (int64_t i = 0; i <= n; i++)
        l1[i] = l2[i] = -3.0;
    void *g1a = NULL, *g2a = NULL;
    FT *g1 = NULL, *g2 = NULL;
    int64_t g1span = 0;
    if (want_grad) {
        g1 = block(n, C, C, sizeof(FT), &g1a, &g1span);
        for (int64_t k = 0; k < g1span; k++)
            g1[k] = (FT)-9;
        if (!alias)
            g2 = block(n, C, C, sizeof(FT), &g2a, &span);
    }
    FT *zcopy = malloc(sizeof(FT) * (size_t)zspan);
    memcpy(zcopy, za, sizeof(FT) * (size_t)zspan);
    const FT *zin = (const FT *)((const char *)zcopy + ((const char *)z - (const char *)za));
    kd_status st1, st2;
    int rc1 = KF_CAT(kd_mse, SFX)(n, C, zin, zs, v, vs, phi, &rows, check_finite, grad_scale, l1, g1,
                                  C, 1, &st1);
    /* the builds give the same bits here: plain loops, no fused multiply-add */
    kd_set_isa(fuzz_isa((lm >> 3) & 1));
    int rc2 = KF_CAT(kd_mse, SFX)(n, C, z, zs, v, vs, phi, &rows, check_finite, grad_scale, l2,
                                  alias ? z : g2, alias ? zs : C, threads, &st2);
    kd_set_isa("baseline");
    CHECKM(rc1 == exp_code, "mse code %d expected %d", rc1, exp_code);
    CHECK(rc2 == rc1 && st1.code == rc1 && st2.code == rc1);
    if (rc1 != KD_OK) {
        /* a student written in place is as it was; the rows of the other
         * outputs are unspecified, nothing past them is written */
        CHECK(st1.row == exp_row && st2.row == exp_row);
        CHECK(l1[n] == -3.0 && l2[n] == -3.0);
        CHECK(memcmp(zcopy, za, sizeof(FT) * (size_t)zspan) == 0);
    } else {
        CHECK(l1[n] == -3.0 && l2[n] == -3.0);
        for (int64_t i = 0; i < n; i++) {
            CHECK(same_dbits(l1[i], l2[i]));
            int counts = !(rows.labels && rows.labels[i] == -100) &&
                         !(rows.mask && !rows.mask[i * rows.mask_stride]);
            if (!counts)
                CHECK(l1[i] == 0);
            if (strict)
                CHECKM(!isnan(l1[i]) && l1[i] >= 0, "mse row %lld loss %.17g", (long long)i, l1[i]);
            if (strict && counts) { /* naive sum of squares */
                LD s = 0, aux = 0; /* aux: the size of the cancelling terms */
                for (int64_t j = 0; j < C; j++) {
                    LD a = zin[i * zs + j], b = (LD)phi * v[i * vs + j], d = a - b;
                    s += d * d;
                    aux += fabsl(d) * (fabsl(a) + fabsl(b));
                }
                if (isfinite(s) && s < 1e300L)
                    CHECKM(fabsl(l1[i] - s) <= 1e-12L * s + 1e-14L * aux + 1e-300L,
                           "mse row %lld %.17g vs %.17Lg", (long long)i, l1[i], s);
            }
            if (want_grad) {
                const FT *a = g1 + i * C, *b = alias ? z + i * zs : g2 + i * C;
                for (int64_t j = 0; j < C; j++) {
                    CHECK(F(same_bits)(a[j], b[j]));
                    if (!counts)
                        CHECK(a[j] == 0);
                    else if (strict && (sizeof(FT) == 8 || fabs(phi) <= FLT_MAX))
                        CHECKM(!isnan(a[j]), "mse grad NaN at row %lld", (long long)i);
                }
            }
        }
    }
    free(za);
    free(va);
    free(la);
    free(ma);
    free(l1);
    free(l2);
    free(g1a);
    free(g2a);
    free(zcopy);
}


/* ---- row statistics (diagnostics) ------------------------------------------- */

static void F(fuzz_row_stats)(rd *r)
{
    unsigned sh = u8(r);
    int64_t n = (sh & 3) == 3 ? (int64_t[]){64, 4096, 33, 1000}[(sh >> 2) % 4] : (int64_t)((sh >> 2) % 9);
    int64_t C = 1 + (int64_t)(u8(r) % 70);
    if (u8(r) % 5 == 0)
        C = (int64_t[]){1000, 16385, 100003, 127}[u8(r) % 4];
    while (n > 1 && n * C > MAX_ELEMS)
        n /= 2;
    unsigned fl = u8(r);
    int check_finite = !(fl & 1), threads = 1 + (int)((fl >> 1) % 3), isa = (fl >> 3) & 1;
    void *xa, *ta = NULL, *la = NULL, *ma = NULL;
    int64_t xspan, span;
    int64_t xs = in_stride(r, n, C);
    FT *x = block(n, C, xs, sizeof(FT), &xa, &xspan);
    F(fill)(r, xa, xspan, x, n, C, xs);
    F(poison_gaps)(xa, xspan, x, n, C, xs);
    double tscalar = temperature(r);
    kd_temps t = {&tscalar, 0};
    if ((fl & 0x10) && n > 0) {
        int64_t s = (fl & 0x20) ? -1 : 2;
        double *tv = block(n, 1, s, sizeof(double), &ta, &span);
        for (int64_t k = 0; k < span; k++)
            ((double *)ta)[k] = temperature(r);
        t.t = tv;
        t.stride = s;
    }
    kd_rows rows = {NULL, 0, (int64_t[]){-100, 0, -1}[u8(r) % 3], NULL, 0};
    unsigned lm = u8(r);
    if (lm & 1) {
        int64_t ls = (lm & 2) ? -1 : 1;
        int64_t *lab = block(n, 1, ls, sizeof(int64_t), &la, &span);
        for (int64_t k = 0; k < span; k++) {
            unsigned b = u8(r);
            ((int64_t *)la)[k] = b < 230 ? (int64_t)(rnd(r) % (uint64_t)C)
                                          : (int64_t[]){-100, C, -1, INT64_MIN, 0, 1}[b % 6];
        }
        rows.labels = lab;
        rows.labels_stride = ls;
    }
    if (lm & 4) {
        int64_t ms = (lm & 8) ? 0 : 1;
        uint8_t *m = block(n, 1, ms, 1, &ma, &span);
        for (int64_t k = 0; k < span; k++)
            m[k] = (uint8_t)(rnd(r) % 4 == 0 ? 0 : 1 + rnd(r) % 200);
        rows.mask = m;
        rows.mask_stride = ms;
    }
    /* expected status: check_row, then the label */
    int exp_code = KD_OK;
    int64_t exp_row = -1;
    int strict = 1;
    for (int64_t i = 0; i < n && exp_code == KD_OK; i++) {
        if (!counts_row(&rows, i))
            continue;
        F(rowinfo) ri = F(classify)(x + i * xs, C);
        int code = F(row_code)(ri, check_finite, KD_ERR_NONFINITE_STUDENT, KD_ERR_ALLINF_STUDENT);
        if (code == KD_OK && rows.labels) {
            int64_t y = rows.labels[i * rows.labels_stride];
            if (y < 0 || y >= C)
                code = KD_ERR_LABEL;
        }
        if (code != KD_OK) {
            exp_code = code;
            exp_row = i;
        }
        double ti = t.t[i * t.stride];
        strict &= ri.strict && ti >= STRICT_T_LO && ti <= STRICT_T_HI;
    }
    /* two runs: baseline/1 thread and the fuzzed configuration */
    double *d[2][7];
    int64_t *am[2];
    uint8_t *cor[2];
    kd_stats_out o[2];
    for (int k = 0; k < 2; k++) {
        for (int q = 0; q < 7; q++) {
            d[k][q] = malloc(sizeof(double) * (size_t)(n + 1));
            for (int64_t i = 0; i <= n; i++)
                d[k][q][i] = -42.0;
        }
        am[k] = malloc(sizeof(int64_t) * (size_t)(n + 1));
        cor[k] = malloc((size_t)(n + 1));
        for (int64_t i = 0; i <= n; i++)
            am[k][i] = -42, cor[k][i] = 42;
        kd_stats_out ok = {d[k][0], d[k][1], d[k][2], d[k][3], d[k][4], d[k][5], d[k][6], am[k], cor[k]};
        o[k] = ok;
    }
    kd_status st1, st2;
    kd_set_isa(fuzz_isa(isa)); /* run 1 too: the builds differ in rounding */
    int rc1 = KF_CAT(kd_row_stats, SFX)(n, C, x, xs, t, &rows, check_finite, &o[0], 1, &st1);
    kd_set_isa(fuzz_isa(isa));
    int rc2 = KF_CAT(kd_row_stats, SFX)(n, C, x, xs, t, &rows, check_finite, &o[1], threads, &st2);
    kd_set_isa("baseline");
    CHECKM(rc1 == exp_code, "row_stats code %d expected %d", rc1, exp_code);
    CHECK(rc2 == rc1 && st1.code == rc1 && st2.code == rc1);
    if (rc1 != KD_OK) {
        CHECK(st1.row == exp_row && st2.row == exp_row);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        for (int q = 0; q < 7; q++)
            CHECKM(same_dbits(d[0][q][i], d[1][q][i]), "row_stats field %d row %lld: %.17g vs %.17g",
                   q, (long long)i, d[0][q][i], d[1][q][i]);
        CHECK(am[0][i] == am[1][i] && cor[0][i] == cor[1][i]);
        if (!counts_row(&rows, i)) {
            for (int q = 0; q < 7; q++)
                CHECK(isnan(d[0][q][i]));
            CHECK(am[0][i] == -1 && cor[0][i] == 0);
            continue;
        }
        const FT *xi = x + i * xs;
        F(rowinfo) ri = F(classify)(xi, C);
        int64_t first = 0;
        while (first < C - 1 && xi[first] != ri.max)
            first++;
        CHECK(d[0][0][i] == (double)ri.max);
        CHECKM(am[0][i] == first, "argmax %lld expected %lld", (long long)am[0][i], (long long)first);
        if (rows.labels) {
            int64_t y = rows.labels[i * rows.labels_stride];
            CHECK(cor[0][i] == (first == y));
        } else {
            CHECK(isnan(d[0][6][i]) && cor[0][i] == 0);
        }
        if (!strict)
            continue;
        double ti = t.t[i * t.stride], mt = (double)ri.max / ti;
        double lse = d[0][1][i], ent = d[0][4][i], top1 = d[0][5][i];
        CHECKM(!isnan(lse) && lse >= mt, "row_stats lse %.17g < max/t %.17g", lse, mt);
        CHECK(!isnan(d[0][2][i]) && d[0][3][i] >= 0);
        CHECKM(ent >= -1e-6 && ent <= log((double)C) + 1e-5 * (1 + log((double)C)),
               "entropy %.17g of %lld classes", ent, (long long)C);
        CHECKM(top1 > 0 && top1 <= 1, "top-1 probability %.17g", top1);
        if (rows.labels && ri.moderate)
            CHECKM(d[0][6][i] >= -1e-6 * (1 + fabs((double)ri.max)), "ce %.17g", d[0][6][i]);
    }
done:
    for (int k = 0; k < 2; k++) {
        for (int q = 0; q < 7; q++)
            free(d[k][q]);
        free(am[k]);
        free(cor[k]);
    }
    free(xa);
    free(ta);
    free(la);
    free(ma);
}

/* ---- temperature profile (diagnostics) -------------------------------------- */

static void F(fuzz_profile)(rd *r)
{
    unsigned sh = u8(r);
    int64_t n = (sh & 3) == 3 ? (int64_t[]){64, 512, 33, 100}[(sh >> 2) % 4] : (int64_t)((sh >> 2) % 9);
    int64_t C = 1 + (int64_t)(u8(r) % 70);
    if (u8(r) % 5 == 0)
        C = (int64_t[]){1000, 16385, 4097, 127}[u8(r) % 4];
    int64_t K = u8(r) % 6; /* the binding passes >= 1; 0 is the kernel's own edge */
    while (n > 1 && n * C > MAX_ELEMS)
        n /= 2;
    unsigned fl = u8(r);
    int check_finite = !(fl & 1), threads = 1 + (int)((fl >> 1) % 3), isa = (fl >> 3) & 1;
    void *za, *va, *la = NULL, *ma = NULL;
    int64_t zspan, vspan, span;
    int64_t zs = in_stride(r, n, C), vs = (fl & 0x10) ? zs : in_stride(r, n, C);
    FT *z = block(n, C, zs, sizeof(FT), &za, &zspan);
    FT *v = block(n, C, vs, sizeof(FT), &va, &vspan);
    F(fill)(r, za, zspan, z, n, C, zs);
    F(fill)(r, va, vspan, v, n, C, vs);
    F(poison_gaps)(za, zspan, z, n, C, zs);
    F(poison_gaps)(va, vspan, v, n, C, vs);
    double *temps = malloc(sizeof(double) * (size_t)(K + 1));
    for (int64_t k = 0; k < K; k++)
        temps[k] = temperature(r);
    kd_rows rows = {NULL, 0, -100, NULL, 0};
    unsigned lm = u8(r);
    if (lm & 1) {
        int64_t *lab = block(n, 1, 1, sizeof(int64_t), &la, &span);
        for (int64_t k = 0; k < span; k++)
            lab[k] = rnd(r) % 4 == 0 ? -100 : (int64_t)(rnd(r) % (uint64_t)C);
        rows.labels = lab;
        rows.labels_stride = 1;
    }
    if (lm & 2) {
        uint8_t *m = block(n, 1, 1, 1, &ma, &span);
        for (int64_t k = 0; k < span; k++)
            m[k] = (uint8_t)(rnd(r) % 4 != 0);
        rows.mask = m;
        rows.mask_stride = 1;
    }
    int exp_code = KD_OK;
    int64_t exp_row = -1;
    int strict = 1, benign = C <= BENIGN_C && n * C <= BENIGN_ELEMS;
    for (int64_t i = 0; i < n; i++) {
        if (!counts_row(&rows, i))
            continue;
        F(rowinfo) a = F(classify)(z + i * zs, C), b = F(classify)(v + i * vs, C);
        int code = F(row_code)(a, check_finite, KD_ERR_NONFINITE_STUDENT, KD_ERR_ALLINF_STUDENT);
        if (code == KD_OK)
            code = F(row_code)(b, check_finite, KD_ERR_NONFINITE_TEACHER, KD_ERR_ALLINF_TEACHER);
        if (code != KD_OK && exp_code == KD_OK) {
            exp_code = code;
            exp_row = i;
        }
        strict &= a.strict && b.strict;
        benign &= a.benign && b.benign;
    }
    for (int64_t k = 0; k < K; k++) {
        strict &= temps[k] >= STRICT_T_LO && temps[k] <= STRICT_T_HI;
        benign &= temps[k] >= BENIGN_T_LO && temps[k] <= BENIGN_T_HI;
    }
    const int64_t W = n * K * KD_PROFILE_FIELDS;
    double *o1 = malloc(sizeof(double) * (size_t)(W + 1)), *o2 = malloc(sizeof(double) * (size_t)(W + 1));
    for (int64_t q = 0; q <= W; q++)
        o1[q] = o2[q] = -42.0;
    kd_status st1, st2;
    kd_set_isa(fuzz_isa(isa)); /* run 1 too: the builds differ in rounding */
    int rc1 = KF_CAT(kd_profile, SFX)(n, C, z, zs, v, vs, temps, K, &rows, check_finite, o1, 1, &st1);
    kd_set_isa(fuzz_isa(isa));
    int rc2 = KF_CAT(kd_profile, SFX)(n, C, z, zs, v, vs, temps, K, &rows, check_finite, o2, threads, &st2);
    kd_set_isa("baseline");
    CHECKM(rc1 == exp_code, "profile code %d expected %d", rc1, exp_code);
    CHECK(rc2 == rc1 && st1.code == rc1 && st2.code == rc1);
    if (rc1 != KD_OK) {
        CHECK(st1.row == exp_row && st2.row == exp_row);
        goto done;
    }
    CHECK(o1[W] == -42.0 && o2[W] == -42.0);
    for (int64_t q = 0; q < W; q++)
        CHECKM(same_dbits(o1[q], o2[q]), "profile value %lld: %.17g vs %.17g", (long long)q, o1[q], o2[q]);
    for (int64_t i = 0; i < n; i++) {
        const double *ro = o1 + i * K * KD_PROFILE_FIELDS;
        if (!counts_row(&rows, i)) {
            for (int64_t q = 0; q < K * KD_PROFILE_FIELDS; q++)
                CHECK(ro[q] == 0.0);
            continue;
        }
        if (!strict)
            continue;
        for (int64_t k = 0; k < K; k++) {
            const double *f = ro + k * KD_PROFILE_FIELDS;
            for (int q = 0; q < KD_PROFILE_FIELDS; q++)
                CHECKM(!isnan(f[q]), "profile row %lld T %g field %d is NaN", (long long)i, temps[k], q);
            CHECK(f[KD_PROFILE_KD] >= 0 && f[KD_PROFILE_GRAD2] >= 0);
            double lc = log((double)C) * (1 + 1e-5) + 1e-6;
            CHECKM(f[KD_PROFILE_H_TEACHER] >= -1e-6 && f[KD_PROFILE_H_TEACHER] <= lc &&
                   f[KD_PROFILE_H_STUDENT] >= -1e-6 && f[KD_PROFILE_H_STUDENT] <= lc,
                   "profile entropies %.17g %.17g (C %lld)", f[KD_PROFILE_H_TEACHER],
                   f[KD_PROFILE_H_STUDENT], (long long)C);
            CHECK(f[KD_PROFILE_TOP1_TEACHER] > 0 && f[KD_PROFILE_TOP1_TEACHER] <= 1);
            if (benign) { /* T^2 KL against the naive oracle */
                kd_params kp;
                memset(&kp, 0, sizeof kp);
                kp.divergence = KD_DIV_KL;
                kp.scale = KD_SCALE_T2;
                kp.kd_weight = 1.0;
                LD ol;
                F(oracle_row)(z + i * zs, v + i * vs, C, 0, temps[k], temps[k], &kp, &ol, NULL);
                LD mx = 1;
                for (int64_t j = 0; j < C; j++) {
                    if (z[i * zs + j] > -INFINITY)
                        mx = fmaxl(mx, fabsl((LD)z[i * zs + j] / temps[k]));
                    if (v[i * vs + j] > -INFINITY)
                        mx = fmaxl(mx, fabsl((LD)v[i * vs + j] / temps[k]));
                }
                const LD ulp = sizeof(FT) == 4 ? 1.2e-7L : 2.3e-16L;
                LD tol = 128 * ulp * (LD)temps[k] * temps[k] * mx * (1 + log2l(C)) + 1e3L * ulp * fabsl(ol);
                if (isinf(ol))
                    CHECK(isinf(f[KD_PROFILE_KD]));
                else
                    CHECKM(fabsl(f[KD_PROFILE_KD] - ol) <= tol, "profile T^2 KL %.17g, oracle %.17Lg",
                           f[KD_PROFILE_KD], ol);
            }
        }
    }
done:
    free(za);
    free(va);
    free(la);
    free(ma);
    free(temps);
    free(o1);
    free(o2);
}

#undef F
#undef KF_CAT
#undef KF_CAT_
#endif /* KDFUZZ_BODY */
