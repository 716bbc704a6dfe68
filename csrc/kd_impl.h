/* Body of the KD kernels, written once and instantiated per dtype and ISA by
 * kd_kernels.h:
 *   FT, SFX        element type (float, double) and name suffix (f32, f64)
 *   KD_ISA         second name suffix (base, avx2, avx512)
 *   EXP            scalar exp for FT (kd_math.h)
 *   VEC, VINT      VL-lane FT vector and its comparison-mask type
 *   VL             lanes per vector (8 float, 4 double; 16 and 8 in avx512)
 *   VPARTS, VPART, VJOIN  the four-double parts of a vector, and back
 *   VLOAD, VSTORE, VSEL, VMAX, VEXP, VFMA  vector load, store, select, max, exp,
 *                  multiply-add (fused in the AVX2 and AVX-512 builds)
 *   VHMAX, VANY    largest lane of a running max; any lane of a mask set
 *   VANY_EQ        whether any lane of two vectors is equal
 *   VLOADTAIL, VSTORETAIL  the first n < VL elements
 *   ACC, ACC_ADD, ACC_MUL, ACC_SUM  double accumulators of VL lanes
 *   ACC_DEV_FIN, ACC_WDEV  (float rows) s += x - shift, q += (x - shift)^2
 *                  and a VTOPS count over the lanes x > -inf; acc += w (x - shift);
 *                  VADD_CDEV: g + c (x - shift) in double
 *   VEXP_OFF_TOP, VOFF_TOP, VTOPS, VTOPS_COUNT  (float rows) exps with the
 *                  lanes x == 0 zeroed and counted in a VTOPS (kd_math.h)
 */
#define KD_CAT_(a, b) a##_##b
#define KD_CAT(a, b) KD_CAT_(a, b)
#define NAME(fn) KD_CAT(KD_CAT(fn, SFX), KD_ISA)

/* 1/t in the element type, in [1/FT_MAX, FT_MAX]: a temperature below
 * ~1/FT_MAX (float: 2.9e-39) would give an infinite inverse and then
 * (x - max) * inf = NaN at the maximum, one above ~1e45 an inverse of 0 and
 * -inf * 0 = NaN at a masked logit; the clamps keep the limits, a one-hot
 * softmax as t -> 0 and a uniform one over the finite logits as t -> inf.
 * (The binding refuses temperatures outside that range.) */
static inline FT NAME(inv_temp)(double t)
{
    const double r = 1.0 / t, lo = 1.0 / (double)FT_MAX;
    return r < (double)FT_MAX ? (r > lo ? (FT)r : (FT)lo) : FT_MAX;
}

/* The row after row i of an n_rows-row array whose row i is at x (stride in
 * elements), to prefetch while row i is computed, or NULL: for the last row,
 * and for rows so long that n_arrays next rows would not wait in L2. The
 * first exp pass of a row pulls in one line of each next row per vector
 * step: the memory stream then runs under this row's exps, and the next
 * row's max pass reads from cache. */
static inline const FT *NAME(next_row)(const FT *x, int64_t stride, int64_t i,
                                       int64_t n_rows, int64_t C, int n_arrays)
{
    const int fits = (uint64_t)C * sizeof(FT) * (uint64_t)n_arrays <=
                     (uint64_t)kd_prefetch_bytes();
    return i + 1 < n_rows && fits ? x + stride : NULL;
}

/* Prefetch column j of the next row, or with next NULL of the row x being
 * read (a no-op): the choice is made once per loop, not a branch per step.
 * KD_PREFETCHW asks for the line to write: the next gradient row, whose
 * stores would otherwise each wait for their line to come from memory. */
#define KD_PREFETCH(next, x, j) __builtin_prefetch(((next) ? (next) : (x)) + (j))
#define KD_PREFETCHW(next, x, j) __builtin_prefetch(((next) ? (next) : (x)) + (j), 1)

/* The last C % VL entries as one vector, the other lanes `pad`: with pad =
 * -inf they add exp(-inf) = 0 to a sum, so the lanes' sums, and the bits of
 * the result, are those of a scalar tail. */
static inline __attribute__((always_inline)) VEC NAME(load_tail)(const FT *x, int64_t n, FT pad)
{
    return VLOADTAIL(x, n, pad);
}

static inline __attribute__((always_inline)) void NAME(store_tail)(FT *x, int64_t n, VEC v)
{
    VSTORETAIL(x, n, v);
}

/* v to the VL elements of x from column j, or to the C - j left there: the
 * store of a row loop's step, its tail included */
static inline __attribute__((always_inline)) void NAME(store_at)(FT *x, int64_t j, int64_t C,
                                                                 VEC v)
{
    if (j + VL <= C)
        VSTORE(x + j, v);
    else
        NAME(store_tail)(x + j, C - j, v);
}

/* Max of a row, and with check whether it holds NaN or +inf. Two vectors
 * of lanes per step (the max's latency, not its throughput, bounds one);
 * the order is fixed, so the result is the same whatever the thread count,
 * and the same as any order but for the sign of a zero maximum, which no
 * result depends on. NaN lanes do not change the max (VMAX keeps its second
 * operand), so without check a row of NaN and -inf has max -inf. */
static inline __attribute__((always_inline)) FT NAME(row_max_as)(const int check, const FT *x,
                                                                 int64_t C, int *nonfinite)
{
    const VEC ninf = (VEC){0} - INFINITY;
    VEC m0 = ninf, m1 = ninf;
    VINT nan = {0};
    int64_t j = 0;
    for (; j + 2 * VL <= C; j += 2 * VL) {
        VEC v0 = VLOAD(x + j), v1 = VLOAD(x + j + VL);
        m0 = VMAX(v0, m0);
        m1 = VMAX(v1, m1);
        if (check)
            nan |= (v0 != v0) | (v1 != v1);
    }
    for (; j < C; j += VL) {
        VEC v = j + VL <= C ? VLOAD(x + j) : NAME(load_tail)(x + j, C - j, -INFINITY);
        m0 = VMAX(v, m0);
        if (check)
            nan |= v != v;
    }
    const FT mx = VHMAX(VMAX(m1, m0));
    if (check)
        *nonfinite = VANY(nan) || mx == INFINITY;
    return mx;
}

static FT NAME(row_max)(const FT *x, int64_t C, int *nonfinite)
{
    return NAME(row_max_as)(1, x, C, nonfinite);
}

/* sum_j exp((x_j - m) * inv_t), accumulated in double; with e != NULL the
 * exps are also stored there (e may be x: each is read before written); the
 * rows `next` and `next_e` (NULL: none) are prefetched on the way. The body
 * is compiled twice, once without the multiply for inv_t = 1 (CE, the DTS
 * CE pair: one of the few operations per element besides the exp; the same
 * bits, x * 1 being x).
 * Float rows add KD_SUM_FOLD exps per lane in a float partial before it
 * widens into the double sum, and leave out of the partials the exps of
 * x_j = m, which are 1, counted exactly instead: a confident row's CE is
 * log(1 + the small terms), and a partial holding the 1 would round those
 * terms away (tests/test_float32_accuracy.py, confident rows); what is
 * left keeps the error to a few roundings of the sum. The widening cost as
 * much as a third of the exp: the DTS CE pair ran 1.15x (1 thread) and
 * 1.08-1.10x (2) faster at the large shapes, AVX-512 on the 2-core EPYC
 * VM; the AVX2 build 1.07x. With e or without, the sum has the same bits
 * (a loss with its gradient and without agree bit for bit). */
#define KD_SUM_FOLD 8
#if KD_FLOAT_ROWS
/* row_sumexp_store_as' folded steps, compiled apart with the exps stored
 * (store: e != NULL) and without: the columns done, the sum in acc and the
 * maxima's count in tops; with acc_h not NULL (row_stats), also
 * sum_j e_j d_j there (the maxima's terms are 0) */
static inline __attribute__((always_inline)) int64_t
NAME(sumexp_fold)(const int unit, const int store, const FT *x, int64_t C, FT m, FT inv_t,
                  FT *e, const FT *next, const FT *next_e, ACC *acc, ACC *acc_h, VTOPS *tops)
{
    const VEC zero = {0};
    int64_t j = 0;
    for (; j + KD_SUM_FOLD * VL <= C;) {
        VEC part = zero, part_h = zero;
        for (int k = 0; k < KD_SUM_FOLD; k++, j += VL) {
            KD_PREFETCH(next, x, j);
            VEC d = VLOAD(x + j) - m;
            d = unit ? d : d * inv_t;
            VEC ej;
            if (store) { /* the exps as they are, the sum without the 1s */
                KD_PREFETCHW(next_e, x, j);
                ej = VEXP(d);
                VSTORE(e + j, ej);
                ej = VOFF_TOP(d, ej, tops);
            } else {
                ej = VEXP_OFF_TOP(d, tops);
            }
            part += ej;
            if (acc_h)
                part_h += ej * VSEL(ej > zero, d, zero);
        }
        ACC_ADD(acc, part);
        if (acc_h)
            ACC_ADD(acc_h, part_h);
    }
    return j;
}
#endif

static inline __attribute__((always_inline)) double
NAME(row_sumexp_store_as)(const int unit, const FT *x, int64_t C, FT m, FT inv_t, FT *e,
                          const FT *next, const FT *next_e)
{
    ACC acc = {0};
    int64_t j = 0;
    double tops_sum = 0;
#if KD_FLOAT_ROWS
    VTOPS tops = {0};
    j = e ? NAME(sumexp_fold)(unit, 1, x, C, m, inv_t, e, next, next_e, &acc, NULL, &tops)
          : NAME(sumexp_fold)(unit, 0, x, C, m, inv_t, e, next, next_e, &acc, NULL, &tops);
    tops_sum = (double)VTOPS_COUNT(tops);
#endif
    for (; j + VL <= C; j += VL) {
        KD_PREFETCH(next, x, j);
        KD_PREFETCHW(next_e, x, j);
        VEC d = VLOAD(x + j) - m;
        VEC ej = VEXP(unit ? d : d * inv_t);
        ACC_ADD(&acc, ej);
        if (e)
            VSTORE(e + j, ej);
    }
    if (j < C) {
        VEC d = NAME(load_tail)(x + j, C - j, -INFINITY) - m;
        VEC ej = VEXP(unit ? d : d * inv_t);
        ACC_ADD(&acc, ej);
        if (e)
            NAME(store_tail)(e + j, C - j, ej);
    }
    return ACC_SUM(acc) + tops_sum;
}

static double NAME(row_sumexp_store)(const FT *x, int64_t C, FT m, FT inv_t, FT *e,
                                     const FT *next, const FT *next_e)
{
    if (inv_t == (FT)1)
        return NAME(row_sumexp_store_as)(1, x, C, m, inv_t, e, next, next_e);
    return NAME(row_sumexp_store_as)(0, x, C, m, inv_t, e, next, next_e);
}

/* sum_j exp((x_j - m) * inv_t), accumulated in double, prefetching next. */
static double NAME(row_sumexp)(const FT *x, int64_t C, FT m, FT inv_t, const FT *next)
{
    return NAME(row_sumexp_store)(x, C, m, inv_t, NULL, next, NULL);
}

/* A row sum of the KL-type divergences' pass, in lanes: `part` adds
 * KD_FOLD terms in the element type before they fold into the double
 * accumulator `sum`. For float rows the widening and the double adds cost
 * as much as the exps they sum: folding every four made forward KL
 * 1.14-1.3x faster at 4096 x 100 and 256 x 1000. A float partial rounds
 * away part of a small term added next to a large one, so the loss error
 * grows to about an ulp of the log-ratio's size per fold
 * (tests/test_float32_accuracy.py holds it to 3). The partition sums of
 * CE, softmax and the DTS CE pair fold too, but for the 1s of the row
 * maxima (row_sumexp_store_as).
 * Double rows fold every term, which is a plain double sum. */
#define KD_FOLD (sizeof(FT) == sizeof(float) ? 4 : 1)
/* A term e (a - b) of a float row reaches FLT_MAX (e <= 1, |a - b| up to
 * FLT_MAX): four in a float partial would overflow where their double sum
 * does not. Such partials add the terms times 1/8 and the sum is scaled back
 * in double, both exact above 2^-123, so the bits are those of unscaled
 * terms but for terms too small to move the sum. */
#define KD_TERM_SCALE (sizeof(FT) == sizeof(float) ? 0.125 : 1.0)
typedef struct {
    VEC part;
    ACC sum;
} NAME(rsum);

static inline __attribute__((always_inline)) NAME(rsum) NAME(rsum_zero)(void)
{
    NAME(rsum) s;
    memset(&s, 0, sizeof s);
    return s;
}

static inline __attribute__((always_inline)) void NAME(rsum_fold)(NAME(rsum) *s)
{
    ACC_ADD(&s->sum, s->part);
    s->part = (VEC){0};
}

static inline __attribute__((always_inline)) double NAME(rsum_total)(NAME(rsum) s)
{
    NAME(rsum_fold)(&s);
    return ACC_SUM(s.sum);
}

/* the total of a partial of terms times KD_TERM_SCALE */
static inline __attribute__((always_inline)) double NAME(rsum_total_scaled)(NAME(rsum) s)
{
    return NAME(rsum_total)(s) * (1.0 / KD_TERM_SCALE);
}

/* One pass for forward KL: the two partition sums and
 * A = sum_j eT_j (a_j - b_j), a = (v - mv)/tT, b = (z - mz)/tS, so that
 * KL = A / sT - log sT + log sS (no log per element); with rev, also
 * R = sum_j eS_j (b_j - a_j): KL(pS || pT) = R / sS - log sS + log sT. */
static inline __attribute__((always_inline)) void
NAME(kl_sums_step)(const int rev, VEC zz, VEC vv, FT mz, FT mv, FT inv_s, FT inv_t,
                   NAME(rsum) *accS, NAME(rsum) *accT, NAME(rsum) *accA, NAME(rsum) *accR,
                   VEC *eS_out, VEC *eT_out)
{
    const VEC zero = {0};
    const FT ts = (FT)KD_TERM_SCALE;
    VEC b = (zz - mz) * inv_s;
    VEC a = (vv - mv) * inv_t;
    VEC eS = VEXP(b), eT = VEXP(a);
    VEC d = VSEL(eT > zero, a - b, zero); /* 0 log 0 = 0, even where a = -inf */
    accS->part += eS;
    accT->part += eT;
    accA->part = VFMA(eT, d * ts, accA->part);
    if (rev)
        accR->part = VFMA(eS, VSEL(eS > zero, b - a, zero) * ts, accR->part);
    *eS_out = eS;
    *eT_out = eT;
}

/* after each step: every KD_FOLD steps the partials go into their sums */
static inline __attribute__((always_inline)) void
NAME(kl_sums_fold)(const int rev, int *k, NAME(rsum) *accS, NAME(rsum) *accT, NAME(rsum) *accA,
                   NAME(rsum) *accR)
{
    if (++*k < KD_FOLD)
        return;
    *k = 0;
    NAME(rsum_fold)(accS);
    NAME(rsum_fold)(accT);
    NAME(rsum_fold)(accA);
    if (rev)
        NAME(rsum_fold)(accR);
}

/* With cS (cT) not NULL, also keep exp(b) (exp(a)) there for the gradient
 * pass (each element is read before it is written, so cS may be z); the
 * next rows nz, nv (to read) and ng (to write), NULL: none, are prefetched
 * on the way. */
static inline __attribute__((always_inline)) void
NAME(row_kl_sums_as)(const int rev, const FT *z, const FT *v, int64_t C, FT mz, FT mv,
                     FT inv_s, FT inv_t, double *sS_out, double *sT_out, double *A_out,
                     double *R_out, FT *cS, FT *cT, const FT *nz, const FT *nv,
                     const FT *ng)
{
    NAME(rsum) accS = NAME(rsum_zero)(), accT = accS, accA = accS, accR = accS;
    VEC eS, eT;
    int64_t j = 0;
    int k = 0;
    for (; j + VL <= C; j += VL) {
        KD_PREFETCH(nz, z, j);
        KD_PREFETCH(nv, v, j);
        KD_PREFETCHW(ng, z, j);
        NAME(kl_sums_step)(rev, VLOAD(z + j), VLOAD(v + j), mz, mv, inv_s, inv_t, &accS,
                           &accT, &accA, &accR, &eS, &eT);
        NAME(kl_sums_fold)(rev, &k, &accS, &accT, &accA, &accR);
        if (cS)
            VSTORE(cS + j, eS);
        if (cT)
            VSTORE(cT + j, eT);
    }
    if (j < C) {
        NAME(kl_sums_step)(rev, NAME(load_tail)(z + j, C - j, -INFINITY),
                           NAME(load_tail)(v + j, C - j, -INFINITY), mz, mv, inv_s, inv_t,
                           &accS, &accT, &accA, &accR, &eS, &eT);
        if (cS)
            NAME(store_tail)(cS + j, C - j, eS);
        if (cT)
            NAME(store_tail)(cT + j, C - j, eT);
    }
    *sS_out = NAME(rsum_total)(accS);
    *sT_out = NAME(rsum_total)(accT);
    *A_out = NAME(rsum_total_scaled)(accA);
    if (rev)
        *R_out = NAME(rsum_total_scaled)(accR);
}

static void NAME(row_kl_sums)(const FT *z, const FT *v, int64_t C, FT mz, FT mv,
                              FT inv_s, FT inv_t, double *sS_out,
                              double *sT_out, double *A_out, FT *cS, FT *cT,
                              const FT *nz, const FT *nv, const FT *ng)
{
    NAME(row_kl_sums_as)(0, z, v, C, mz, mv, inv_s, inv_t, sS_out, sT_out, A_out, NULL, cS,
                         cT, nz, nv, ng);
}

static void NAME(row_kl_rev_sums)(const FT *z, const FT *v, int64_t C, FT mz, FT mv,
                                  FT inv_s, FT inv_t, double *sS_out, double *sT_out,
                                  double *A_out, double *R_out, FT *cS, FT *cT,
                                  const FT *nz, const FT *nv, const FT *ng)
{
    NAME(row_kl_sums_as)(1, z, v, C, mz, mv, inv_s, inv_t, sS_out, sT_out, A_out, R_out, cS,
                         cT, nz, nv, ng);
}

/* x_0 .. x_{n-1} added into the KD_LANES lanes zs, x_j into lane j % KD_LANES
 * (a row's pieces give the row's bits when each starts at a multiple of
 * KD_LANES) */
static void NAME(add_lanes)(double *zs, const FT *x, int64_t n)
{
    int64_t j = 0;
    for (; j + KD_LANES <= n; j += KD_LANES)
        for (int k = 0; k < KD_LANES; k++)
            zs[k] += (double)x[j + k];
    for (int k = 0; j < n; j++, k++)
        zs[k] += (double)x[j];
}

/* Row statistics of the hard-label term at temperature 1: the partition sum
 * and, for label smoothing, sum_j z_j; with e != NULL, exp(z_j - mz) is kept
 * there for the gradient. */
static void NAME(row_ce_sums)(const FT *z, int64_t C, FT mz, int want_sum,
                              double *s1_out, double *zsum_out, FT *e, const FT *next,
                              const FT *next_e)
{
    double zs[KD_LANES] = {0};
    if (want_sum)
        NAME(add_lanes)(zs, z, C);
    *zsum_out = kd_sum_lanes(zs);
    /* last: with e == z it overwrites the logits */
    *s1_out = NAME(row_sumexp_store)(z, C, mz, (FT)1, e, next, next_e);
}

/* The partition sum of a long row, sum_j exp((x_j - M) inv_t) with M the
 * row max, reading the row from memory once: block by block of
 * KD_SUM_BLOCK elements, the block's max m_b (from memory; the block then
 * stays in L1) and then e_j = exp((x_j - m_b) inv_t) and their sum s_b
 * (from L1, the next block prefetched under these exps); e_j is stored in
 * e unless e is NULL (e may be x), and with want_sum sum_j x_j is taken as
 * row_ce_sums takes it (the same lanes). A max pass of its own reads a long
 * row once
 * more, from L2 or L3: CE at 512 x 151936 spent a quarter of its time
 * there. The sum is sum_b f_b s_b, f_b = exp((m_b - M) inv_t), and fb[b]
 * is left holding f_b, the factor of block b's e in a later pass; fb holds
 * 2 * ceil(C / KD_SUM_BLOCK) doubles (NAME(blocks_buffer)). next (NULL:
 * none) is prefetched from the last block. Returns what check_row would
 * for the row. The max pass leaves NaN to the sum instead of testing each
 * element (a NaN's exp is NaN, and so is s), but for blocks of max -inf,
 * which are not summed: CE and the DTS CE pair ran 1.02-1.06x faster
 * (2-core EPYC VM, float32). */
#define KD_SUM_BLOCK (16384 / (int64_t)sizeof(FT))
static int NAME(row_sumexp_blocks)(const FT *x, int64_t C, FT inv_t, int check_finite,
                                   int err_nonfinite, int err_allinf, int want_sum, FT *e,
                                   double *fb, const FT *next, FT *m_out, double *s_out,
                                   double *xsum_out)
{
    double xs[KD_LANES] = {0};
    FT M = -INFINITY;
    int nonfinite = 0;
    int64_t nb = 0;
    for (int64_t b0 = 0; b0 < C; b0 += KD_SUM_BLOCK, nb++) {
        const int64_t n = C - b0 < KD_SUM_BLOCK ? C - b0 : KD_SUM_BLOCK;
        const FT *xb = x + b0;
        const FT mb = NAME(row_max_as)(0, xb, n, NULL);
        if (want_sum) /* (blocks start at multiples of KD_LANES) */
            NAME(add_lanes)(xs, xb, n);
        /* last: e may be x */
        double sb = 0;
        if (mb != -INFINITY) { /* (an all -inf block has exps 0, not exp(-inf + inf)) */
            sb = NAME(row_sumexp_store)(xb, n, mb, inv_t, e ? e + b0 : NULL,
                                        b0 + KD_SUM_BLOCK < C ? xb + KD_SUM_BLOCK : next, NULL);
        } else {
            int nf; /* NaN, if any, is all the block holds besides -inf */
            NAME(row_max)(xb, n, &nf);
            nonfinite |= nf;
            if (e)
                memset(e + b0, 0, sizeof(FT) * (size_t)n);
        }
        fb[2 * nb] = (double)mb;
        fb[2 * nb + 1] = sb;
        M = mb > M ? mb : M;
    }
    *m_out = M;
    if (xsum_out)
        *xsum_out = kd_sum_lanes(xs);
    double s = 0;
    for (int64_t b = 0; b < nb; b++) {
        const double f =
            fb[2 * b] == -INFINITY ? 0.0 : exp((fb[2 * b] - (double)M) * (double)inv_t);
        s += f * fb[2 * b + 1];
        fb[b] = f; /* (b <= 2 b: read before written) */
    }
    /* a NaN in a block with a finite max made its exp, and so s, NaN */
    nonfinite |= M == INFINITY || s != s;
    if (check_finite && nonfinite)
        return err_nonfinite;
    if (M == -INFINITY)
        return err_allinf;
    *s_out = s;
    return KD_OK;
}

/* row_sumexp_blocks' buffer for rows of C elements (NULL for rows of less
 * than two blocks, which take a max pass of their own, or out of memory) */
static double *NAME(blocks_buffer)(int64_t C)
{
    if (C < 2 * KD_SUM_BLOCK)
        return NULL;
    return (double *)malloc(sizeof(double) * 2 * (size_t)((C + KD_SUM_BLOCK - 1) / KD_SUM_BLOCK));
}

/* e_j <- (c f_b) e_j - shift over a row whose exps e row_sumexp_blocks
 * kept relative to their block's max, f_b = fb[b] as it left it */
static void NAME(scale_blocks)(FT *e, int64_t C, const double *fb, double c, FT shift)
{
    for (int64_t b0 = 0, b = 0; b0 < C; b0 += KD_SUM_BLOCK, b++) {
        const int64_t b1 = C - b0 < KD_SUM_BLOCK ? C : b0 + KD_SUM_BLOCK;
        const FT cb = (FT)(c * fb[b]);
        int64_t j = b0;
        for (; j + VL <= b1; j += VL)
            VSTORE(e + j, cb * VLOAD(e + j) - shift);
        for (; j < b1; j++)
            e[j] = cb * e[j] - shift;
    }
}

/* exp(x) for the VL elements from column j: kept from the sums pass in c,
 * or computed when c is NULL */
static inline __attribute__((always_inline)) VEC NAME(cached_exp)(const FT *c, int64_t j,
                                                                  int64_t C, VEC x)
{
    if (!c)
        return VEXP(x);
    return j + VL <= C ? VLOAD(c + j) : NAME(load_tail)(c + j, C - j, 0);
}

#if KD_FLOAT_ROWS
/* JSD and the skew KLs of float rows in float lanes (VL at a time, nothing
 * widened: in double lanes their logs and divisions cost 5-8 ns a logit).
 * With u = log pS - log pT and v = |u|, the mixture M = cT pT + cS pS is
 * the larger of pS, pT times w = c_big + c_small e^-v (c_big: the
 * coefficient of the larger one), so with L = log w
 *     log p_big - log M = -L,    log p_small - log M = -v - L:
 * one division (e^-v = p_small / p_big) and one log per element, of w in
 * [c_big, 1], where a float log is accurate (log M - log p never cancels),
 * and u comes from differences
 * of the row-shifted logits, log sS - log sT carried in two floats. Each
 * term is then within a few float roundings of its size (about 1e-7 pT or
 * pS absolute), where the double-lane terms carry only the inputs' and the
 * exps' float roundings. Used when both coefficients are at least 2^-60 (w
 * stays a normal float); alpha = 0 (skew KL = KL) and extreme beta keep the
 * double lanes. */
typedef struct {
    FT dl_hi, dl_lo; /* log sS - log sT = dl_hi + dl_lo */
    FT inv_sS, inv_sT;
    FT cT, cS;       /* M = cT pT + cS pS */
    FT beta;         /* JSD's weight of KL(pT || M) */
} NAME(lane_k);

/* the row constants, from the log partition sums ls, lt and their inverses */
static NAME(lane_k) NAME(lane_k_of)(int div, const kd_params *p, double ls, double lt,
                                    double inv_sS, double inv_sT)
{
    NAME(lane_k) k;
    const double dl = ls - lt;
    k.dl_hi = (FT)dl;
    k.dl_lo = (FT)(dl - (double)k.dl_hi);
    k.inv_sS = (FT)inv_sS;
    k.inv_sT = (FT)inv_sT;
    const double c = div == KD_DIV_JSD ? p->beta : p->alpha;
    /* JSD and skew KL weigh pT by c, skew reverse KL weighs pS */
    k.cT = (FT)(div == KD_DIV_SKEW_REVERSE_KL ? 1.0 - c : c);
    k.cS = (FT)(div == KD_DIV_SKEW_REVERSE_KL ? c : 1.0 - c);
    k.beta = (FT)p->beta;
    return k;
}

/* d_j and h_j (as kd_div_terms_v4d) of VL elements: b, a the shifted and
 * scaled logits, eS = exp(b), eT = exp(a). Lanes with pS = pT = 0 (both
 * -inf, the tail's padding) give 0. TVD's terms take no log: float lanes
 * serve them as they are, 1.4-1.8x faster than double ones. */
static inline __attribute__((always_inline)) void
NAME(lane_terms_at)(const int div, VEC b, VEC a, VEC eS, VEC eT, const NAME(lane_k) *k,
                    VEC *d, VEC *h)
{
    const VEC zero = {0};
    const VEC pS = eS * k->inv_sS, pT = eT * k->inv_sT;
    const VINT sp = pS > zero, tp = pT > zero;
    if (div == KD_DIV_TVD) {
        const VEC diff = pS - pT;
        *d = (FT)0.5 * VSEL(diff < zero, -diff, diff);
        *h = VSEL(diff > zero, (FT)0.5 * pS, VSEL(diff < zero, (FT)-0.5 * pS, zero));
        return;
    }
    const VEC u = ((b - a) - k->dl_hi) - k->dl_lo;
    const VINT t_big = u <= zero;
    const VEC nv = VSEL(t_big, u, -u); /* -v */
    /* e^-v = p_small / p_big, from the exps at hand: a division costs less
     * than another exp. A ratio above 1 (rounding near ties, or p_big
     * rounded to 0 under a tiny p_small: a term of that size) and 0/0 (both
     * 0: no term) give 1. */
    const VEC ratio = VSEL(t_big, pS, pT) / VSEL(t_big, pT, pS);
    const VEC sig = VSEL(ratio < (FT)1, ratio, zero + 1);
    const VEC w = VFMA(VSEL(t_big, zero + k->cS, zero + k->cT), sig,
                       VSEL(t_big, zero + k->cT, zero + k->cS));
    const VEC L = VLOGF(w);
    const VEC lT = VSEL(t_big, -L, nv - L), lS = VSEL(t_big, nv - L, -L); /* log p - log M */
    switch (div) {
    case KD_DIV_JSD: {
        const VEC r = VSEL(sp, ((FT)1 - k->beta) * pS * lS, zero);
        *d = VSEL(tp, k->beta * pT * lT, zero) + r;
        *h = r;
        break;
    }
    case KD_DIV_SKEW_KL: /* h = -cS pT pS / M = -cS p_small / w */
        *d = VSEL(tp, pT * lT, zero);
        *h = VSEL(sp & tp, -k->cS * VSEL(t_big, pS, pT) / w, zero);
        break;
    default: { /* KD_DIV_SKEW_REVERSE_KL: h = r - cS pS^2 / M */
        const VEC r = pS * lS;
        *d = VSEL(sp, r, zero);
        *h = VSEL(sp, r - k->cS * pS * VSEL(t_big, sig, zero + 1) / w, zero);
        break;
    }
    }
}

/* the gradient lanes coef (h - pS Q) of the float-lane terms, in float */
static inline __attribute__((always_inline)) VEC NAME(lane_grad)(VEC h, VEC eS, FT inv_sS,
                                                                 FT Q, FT coef)
{
    return coef * (h - (eS * inv_sS) * Q);
}

/* Reverse and symmetric KL's gradient lanes of float rows, from the sums
 * pass's R (no terms h of their own):
 *     coef (h - pS Q) = coef (pS (log pS - log pT - Q) [- pT, symmetric]),
 * log pS - log pT - Q = (b - a) - K, K = log sS - log sT + Q. That
 * difference is taken in double lanes, where b - a is exact: it cancels to
 * the element's size where the log ratio and the row's loss are large
 * (logits of +-1e4: 2.4e-6 from two terms of 17945, which float lanes
 * round to 0). The rest is float: widening only b and a, the pass costs
 * a third of the double-lane terms'. */
static inline __attribute__((always_inline)) VEC
NAME(rev_lane_grad)(const int div, VEC b, VEC a, VEC eS, VEC eT, double K, FT inv_sS,
                    FT inv_sT, FT coef)
{
    const VEC zero = {0};
    kd_v4d r[VPARTS];
    for (int q = 0; q < VPARTS; q++)
        r[q] = (VPART(b, q) - VPART(a, q)) - K;
    const VEC pS = eS * inv_sS;
    VEC h = VSEL(pS > zero, pS * VJOIN(r), zero); /* 0 log 0 = 0 */
    if (div == KD_DIV_SYMMETRIC_KL)
        h -= eT * inv_sT;
    return coef * h;
}
#endif

/* Whether a row takes the float-lane terms above: float rows of TVD, and of
 * JSD and the skew KLs with both mixture weights at least 2^-60 */
#define KD_LANE_MIN_C 0x1p-60
static int NAME(lane_terms)(int div, const kd_params *p)
{
    double c;
    if (!KD_FLOAT_ROWS)
        return 0;
    if (div == KD_DIV_TVD)
        return 1;
    if (div == KD_DIV_JSD)
        c = p->beta;
    else if (div == KD_DIV_SKEW_KL || div == KD_DIV_SKEW_REVERSE_KL)
        c = p->alpha;
    else
        return 0;
    return c >= KD_LANE_MIN_C && 1.0 - c >= KD_LANE_MIN_C;
}

/* Step j of a row pair: the shifted, scaled logits b, a and their exps (from
 * cS, cT where kept) */
static inline __attribute__((always_inline)) void
NAME(div_inputs_at)(const FT *z, const FT *v, int64_t j, int64_t C, FT mz, FT mv, FT inv_s,
                    FT inv_t, const FT *cS, const FT *cT, VEC *b, VEC *a, VEC *eS, VEC *eT)
{
    const int full = j + VL <= C;
    VEC zz = full ? VLOAD(z + j) : NAME(load_tail)(z + j, C - j, -INFINITY);
    VEC vv = full ? VLOAD(v + j) : NAME(load_tail)(v + j, C - j, -INFINITY);
    *b = (zz - mz) * inv_s;
    *a = (vv - mv) * inv_t;
    *eS = NAME(cached_exp)(cS, j, C, *b);
    *eT = NAME(cached_exp)(cT, j, C, *a);
}

/* The divergences other than forward KL (terms: kd_div.h), in double lanes
 * but for the float-lane terms above;
 * with hc not NULL, the terms h_j are kept there (C rounded up to VL doubles)
 * for the gradient pass, which then takes no exp and no log. */
static inline __attribute__((always_inline)) void
NAME(row_div_sums_as)(const int div, const FT *z, const FT *v, int64_t C, FT mz, FT mv,
                      FT inv_s, FT inv_t, double sS, double sT, const kd_params *p,
                      const FT *cS, const FT *cT, double *hc, double *D_out, double *Q_out)
{
    const double ls = log(sS), lt = log(sT), inv_sS = 1.0 / sS, inv_sT = 1.0 / sT;
#if KD_FLOAT_ROWS
    /* the float-lane terms keep h as floats (hc has room for C rounded up to
     * VL doubles) */
    const int lanes = NAME(lane_terms)(div, p);
    const NAME(lane_k) k =
        lanes ? NAME(lane_k_of)(div, p, ls, lt, inv_sS, inv_sT) : (NAME(lane_k)){0};
    NAME(rsum) lD = NAME(rsum_zero)(), lQ = lD;
    int f = 0;
#endif
    kd_v4d accD = {0}, accQ = {0};
#if KD_FLOAT_ROWS
    /* a loop of its own: sharing one with the double lanes' terms, the
     * float lanes' constants were reloaded from the stack each step */
    for (int64_t j = 0; lanes && j < C; j += VL) {
        VEC b, a, eS, eT, d, h;
        NAME(div_inputs_at)(z, v, j, C, mz, mv, inv_s, inv_t, cS, cT, &b, &a, &eS, &eT);
        NAME(lane_terms_at)(div, b, a, eS, eT, &k, &d, &h);
        lD.part += d;
        lQ.part += h;
        if (++f == KD_FOLD) {
            f = 0;
            NAME(rsum_fold)(&lD);
            NAME(rsum_fold)(&lQ);
        }
        if (hc)
            VSTORE((FT *)hc + j, h);
    }
    if (lanes) {
        *D_out = NAME(rsum_total)(lD);
        *Q_out = NAME(rsum_total)(lQ);
        return;
    }
#endif
    for (int64_t j = 0; j < C; j += VL) {
        VEC b, a, eS, eT;
        NAME(div_inputs_at)(z, v, j, C, mz, mv, inv_s, inv_t, cS, cT, &b, &a, &eS, &eT);
        for (int q = 0; q < VPARTS; q++) {
            kd_v4d pS, d, h;
            kd_div_terms_v4d(div, VPART(b, q), VPART(a, q), VPART(eS, q), VPART(eT, q), ls, lt,
                             inv_sS, inv_sT, p->beta, p->alpha, KD_MIX_TINY, &pS, &d, &h);
            accD += d;
            accQ += h;
            if (hc)
                kd_store_v4d(hc + j + 4 * q, h);
        }
    }
    *D_out = kd_acc_sum_v4d(accD);
    *Q_out = kd_acc_sum_v4d(accQ);
}

static void NAME(row_div_sums)(const FT *z, const FT *v, int64_t C, FT mz, FT mv,
                               FT inv_s, FT inv_t, double sS, double sT,
                               const kd_params *p, const FT *cS, const FT *cT, double *hc,
                               double *D_out, double *Q_out)
{
#define KD_DIV_CASE(D)                                                           \
    case D:                                                                      \
        NAME(row_div_sums_as)(D, z, v, C, mz, mv, inv_s, inv_t, sS, sT, p, cS, cT, hc,     \
                              D_out, Q_out);                                     \
        break;
    switch (p->divergence) {
        KD_DIV_CASE(KD_DIV_REVERSE_KL)
        KD_DIV_CASE(KD_DIV_SYMMETRIC_KL)
        KD_DIV_CASE(KD_DIV_JSD)
        KD_DIV_CASE(KD_DIV_SKEW_KL)
        KD_DIV_CASE(KD_DIV_SKEW_REVERSE_KL)
        default:
        KD_DIV_CASE(KD_DIV_TVD)
    }
#undef KD_DIV_CASE
}

/* The gradient row for those divergences:
 * g_j = coef (h_j - pS_j Q) [+ cC exp(z_j - mz) - c_eps for the CE term]. */
static inline __attribute__((always_inline)) void
NAME(row_div_grad_as)(const int div, const FT *z, const FT *v, int64_t C, FT mz, FT mv,
                      FT inv_s, FT inv_t, double sS, double sT, const kd_params *p,
                      double coef, double Q, int use_ce, FT cC, FT c_eps, const FT *cS,
                      const FT *cT, FT *g)
{
    const double ls = log(sS), lt = log(sT), inv_sS = 1.0 / sS, inv_sT = 1.0 / sT;
#if KD_FLOAT_ROWS
    const int lanes = NAME(lane_terms)(div, p);
    const NAME(lane_k) k =
        lanes ? NAME(lane_k_of)(div, p, ls, lt, inv_sS, inv_sT) : (NAME(lane_k)){0};
#endif
    for (int64_t j = 0; j < C; j += VL) {
        const int full = j + VL <= C;
        VEC zz = full ? VLOAD(z + j) : NAME(load_tail)(z + j, C - j, -INFINITY);
        VEC vv = full ? VLOAD(v + j) : NAME(load_tail)(v + j, C - j, -INFINITY);
        VEC b = (zz - mz) * inv_s, a = (vv - mv) * inv_t;
        VEC ce = {0};
        if (use_ce)
            ce = cC * VEXP(zz - mz) - c_eps;
        VEC eS = NAME(cached_exp)(cS, j, C, b), eT = NAME(cached_exp)(cT, j, C, a);
        kd_v4d gp[VPARTS];
#if KD_FLOAT_ROWS
        if (div == KD_DIV_REVERSE_KL || div == KD_DIV_SYMMETRIC_KL) {
            NAME(store_at)(g, j, C, NAME(rev_lane_grad)(div, b, a, eS, eT, ls - lt + Q,
                                                        (FT)inv_sS, (FT)inv_sT, (FT)coef) +
                                        ce);
            continue;
        }
        if (lanes) {
            /* as row_h_grad from the h the sums pass would have kept */
            VEC d, h;
            NAME(lane_terms_at)(div, b, a, eS, eT, &k, &d, &h);
            NAME(store_at)(g, j, C, NAME(lane_grad)(h, eS, k.inv_sS, (FT)Q, (FT)coef) + ce);
            continue;
        }
#endif
        for (int q = 0; q < VPARTS; q++) {
            kd_v4d pS, d, h;
            kd_div_terms_v4d(div, VPART(b, q), VPART(a, q), VPART(eS, q), VPART(eT, q), ls, lt,
                             inv_sS, inv_sT, p->beta, p->alpha, KD_MIX_TINY, &pS, &d, &h);
            gp[q] = coef * (h - pS * Q) + VPART(ce, q);
        }
        VEC gj = VJOIN(gp);
        NAME(store_at)(g, j, C, gj);
    }
}

static void NAME(row_div_grad)(const FT *z, const FT *v, int64_t C, FT mz, FT mv, FT inv_s,
                               FT inv_t, double sS, double sT, const kd_params *p,
                               double coef, double Q, int use_ce, FT cC, FT c_eps,
                               const FT *cS, const FT *cT, FT *g)
{
#define KD_DIV_CASE(D)                                                           \
    case D:                                                                      \
        NAME(row_div_grad_as)(D, z, v, C, mz, mv, inv_s, inv_t, sS, sT, p, coef, Q,   \
                              use_ce, cC, c_eps, cS, cT, g);                     \
        break;
    switch (p->divergence) {
        KD_DIV_CASE(KD_DIV_REVERSE_KL)
        KD_DIV_CASE(KD_DIV_SYMMETRIC_KL)
        KD_DIV_CASE(KD_DIV_JSD)
        KD_DIV_CASE(KD_DIV_SKEW_KL)
        KD_DIV_CASE(KD_DIV_SKEW_REVERSE_KL)
        default:
        KD_DIV_CASE(KD_DIV_TVD)
    }
#undef KD_DIV_CASE
}

/* The same gradient row from the terms h_j the sums pass kept in hc and the
 * student's exps kept in cS: the values row_div_grad computes, so the same
 * bits, with no exp (but the CE term's) and no log, whatever the divergence. */
static void NAME(row_h_grad)(const FT *z, int64_t C, FT mz, double sS, double coef, double Q,
                             int use_ce, FT cC, FT c_eps, const FT *cS, const double *hc,
                             int h_lanes, FT *g)
{
    (void)h_lanes; /* double rows have no float-lane terms */
    const double inv_sS = 1.0 / sS;
    for (int64_t j = 0; j < C; j += VL) {
        const int full = j + VL <= C;
        VEC ce = {0};
        if (use_ce) {
            VEC zz = full ? VLOAD(z + j) : NAME(load_tail)(z + j, C - j, -INFINITY);
            ce = cC * VEXP(zz - mz) - c_eps;
        }
        VEC eS = full ? VLOAD(cS + j) : NAME(load_tail)(cS + j, C - j, 0);
#if KD_FLOAT_ROWS
        if (h_lanes) { /* the float-lane terms kept h as floats */
            NAME(store_at)(g, j, C, NAME(lane_grad)(VLOAD((const FT *)hc + j), eS,
                                                    (FT)inv_sS, (FT)Q, (FT)coef) + ce);
            continue;
        }
#endif
        kd_v4d gp[VPARTS];
        for (int q = 0; q < VPARTS; q++) {
            const kd_v4d pS = VPART(eS, q) * inv_sS;
            gp[q] = coef * (kd_load_v4d(hc + j + 4 * q) - pS * Q) + VPART(ce, q);
        }
        VEC gj = VJOIN(gp);
        NAME(store_at)(g, j, C, gj);
    }
}

/* A row's mean and standard deviation (ddof) over its finite entries, -inf
 * excluded, and their count */
typedef struct {
    double mean, std;
    int64_t n_fin;
} NAME(row_dev);

/* The first finite entry of a row (0 if none): row_max_dev_as' shift. Any
 * of the row's values keeps a constant row's std exactly 0 (where the
 * rounding of an inexact mean would leave noise that ATKD's gradient divides
 * by) and bounds the cancellation as the max does (Samuelson's bound holds
 * for each entry); the first one is known before the row is read, so the
 * max can be taken in the same pass. */
static double NAME(dev_shift)(const FT *x, int64_t C)
{
    int64_t j = 0;
    for (; j + VL <= C; j += VL) { /* past a masked (-inf) prefix */
        const VEC xx = VLOAD(x + j);
        if (VANY((xx > -INFINITY) & (xx < INFINITY)))
            break;
    }
    for (; j < C; j++)
        if (isfinite(x[j]))
            return (double)x[j];
    return 0.0;
}

/* The row's row_dev into dev (the std is 0 when n_fin <= ddof), with
 * want_max also its max and NaN check as row_max: one pass for float rows.
 * Deviations are taken in double, of x - shift (dev_shift). */
static inline __attribute__((always_inline)) FT
NAME(row_max_dev_as)(const int want_max, const FT *x, int64_t C, int ddof, int *nonfinite,
                     NAME(row_dev) *dev)
{
    const double shift = NAME(dev_shift)(x, C);
#if KD_FLOAT_ROWS
    /* d = x - shift is exact in double, and
     * sum (d - mean_d)^2 = sum d^2 - mean_d sum d loses at most log2(n) of
     * double's bits to cancellation (|shift - mean| <= std sqrt(n - 1),
     * Samuelson), far below a float's rounding. In double lanes of the
     * accumulators' width, not VPARTS four-lane parts into one chain of
     * adds; two passes took 0.4 of an ATKD step. The max rides along: a
     * pass of its own cost ATKD 1.05x (2048 x 32000, 1 thread). */
    ACC s = {0}, q = {0};
    VTOPS cnt = {0};
    VEC m0 = (VEC){0} - INFINITY;
    VINT nan = {0};
    for (int64_t j = 0; j < C; j += VL) {
        const VEC xx = j + VL <= C ? VLOAD(x + j) : NAME(load_tail)(x + j, C - j, -INFINITY);
        if (want_max) {
            m0 = VMAX(xx, m0);
            nan |= xx != xx;
        }
        ACC_DEV_FIN(&s, &q, &cnt, xx, shift); /* the entries > -inf (+inf too, NaN not) */
    }
    FT mx = 0;
    if (want_max) {
        mx = VHMAX(m0);
        *nonfinite = VANY(nan) || mx == INFINITY;
    }
    const int64_t n_fin = VTOPS_COUNT(cnt);
    const double n = (double)n_fin, sum_d = ACC_SUM(s);
    const double mean_d = n > 0 ? sum_d / n : NAN;
    double ss = ACC_SUM(q) - mean_d * sum_d;
    ss = ss > 0 ? ss : 0.0;
    dev->mean = shift + mean_d;
    dev->std = n - ddof > 0 ? sqrt(ss / (n - ddof)) : 0.0;
    dev->n_fin = n_fin;
    return mx;
#else
    const FT mx = want_max ? NAME(row_max)(x, C, nonfinite) : 0;
    const kd_v4d zero = {0}, one = zero + 1.0, ninf = zero - INFINITY;
    kd_v4d s = {0}, c = {0}, q = {0};
    for (int64_t j = 0; j < C; j += VL) {
        VEC xx = j + VL <= C ? VLOAD(x + j) : NAME(load_tail)(x + j, C - j, -INFINITY);
        for (int h = 0; h < VPARTS; h++) {
            kd_v4d xd = VPART(xx, h);
            kd_v4l fin = xd > ninf;
            s += kd_sel_v4d(fin, xd - shift, zero);
            c += kd_sel_v4d(fin, one, zero);
        }
    }
    const double n = kd_acc_sum_v4d(c), mean_d = kd_acc_sum_v4d(s) / n;
    for (int64_t j = 0; j < C; j += VL) {
        VEC xx = j + VL <= C ? VLOAD(x + j) : NAME(load_tail)(x + j, C - j, -INFINITY);
        for (int h = 0; h < VPARTS; h++) {
            kd_v4d xd = VPART(xx, h);
            kd_v4d d = kd_sel_v4d(xd > ninf, (xd - shift) - mean_d, zero);
            q += d * d;
        }
    }
    dev->mean = shift + mean_d;
    dev->std = n - ddof > 0 ? sqrt(kd_acc_sum_v4d(q) / (n - ddof)) : 0.0;
    dev->n_fin = (int64_t)n;
    return mx;
#endif
}

static void NAME(row_mean_std)(const FT *x, int64_t C, int ddof, NAME(row_dev) *dev)
{
    NAME(row_max_dev_as)(0, x, C, ddof, NULL, dev);
}

/* ATKD with the gradient through tS: row_kl_sums' three sums (the same
 * arithmetic, so the loss has the same bits as without the gradient) and, in
 * the same pass, P = mT sum_k pS_k z_k - sum_{k in F} pT_k z_k, F the finite
 * z_k (a -inf entry does not move with tS) and mT = sum_{k in F} pT_k: the
 * derivative of the finite part of the KL. It is taken as
 * mT sum pS (z - mean) - sum_F pT (z - mean), the same value since
 * sum pS = 1, so that large logits do not cancel; mT = 1 unless the teacher
 * has mass where z is -inf (an infinite KL), and P stays shift invariant
 * there too. With cS (cT) not NULL the exps are kept there for the gradient
 * pass, as row_kl_sums does (cS is not z: that pass reads z again). */
static void NAME(row_atkd_sums)(const FT *z, const FT *v, int64_t C, FT mz, FT mv,
                                FT inv_s, FT inv_t, double mean, double *sS_out,
                                double *sT_out, double *A_out, double *P_out, FT *cS,
                                FT *cT, const FT *nz, const FT *nv, const FT *ng)
{
    NAME(rsum) accS = NAME(rsum_zero)(), accT = accS, accA = accS;
#if KD_FLOAT_ROWS
    /* in the accumulators' double lanes, not four-double parts into one
     * chain of adds: 1.13x the ATKD step (512 x 32000, 1 thread) */
    ACC a = {0}, b = {0}, b0 = {0};
#else
    const kd_v4d zero = {0}, ninf = zero - INFINITY;
    kd_v4d a = {0}, b = {0}, b0 = {0};
#endif
    int k = 0;
    for (int64_t j = 0; j < C; j += VL) {
        const int full = j + VL <= C;
        KD_PREFETCH(nz, z, j);
        KD_PREFETCH(nv, v, j);
        KD_PREFETCHW(ng, z, j);
        VEC zz = full ? VLOAD(z + j) : NAME(load_tail)(z + j, C - j, -INFINITY);
        VEC vv = full ? VLOAD(v + j) : NAME(load_tail)(v + j, C - j, -INFINITY);
        VEC eS, eT;
        NAME(kl_sums_step)(0, zz, vv, mz, mv, inv_s, inv_t, &accS, &accT, &accA, NULL, &eS,
                           &eT);
        NAME(kl_sums_fold)(0, &k, &accS, &accT, &accA, NULL);
        if (cS)
            NAME(store_at)(cS, j, C, eS);
        if (cT)
            NAME(store_at)(cT, j, C, eT);
#if KD_FLOAT_ROWS
        {
            /* eS = 0 where z = -inf: the 0 put there keeps its term 0 */
            const VINT fin = zz > -INFINITY;
            const VEC zero = {0}, zf = VSEL(fin, zz, zero), eTf = VSEL(fin, eT, zero);
            ACC_WDEV(&a, eS, zf, mean);
            ACC_WDEV(&b, eTf, zf, mean);
            ACC_ADD(&b0, eTf);
        }
#else
        for (int h = 0; h < VPARTS; h++) {
            kd_v4d zd = VPART(zz, h), eSd = VPART(eS, h), eTd = VPART(eT, h);
            kd_v4l fin = zd > ninf;
            kd_v4d dz = kd_sel_v4d(fin, zd - mean, zero);
            a += eSd * dz;
            b += eTd * dz;
            b0 += kd_sel_v4d(fin, eTd, zero);
        }
#endif
    }
    const double sS = NAME(rsum_total)(accS), sT = NAME(rsum_total)(accT);
    *sS_out = sS;
    *sT_out = sT;
    *A_out = NAME(rsum_total_scaled)(accA);
#if KD_FLOAT_ROWS
    *P_out = ACC_SUM(b0) / sT * (ACC_SUM(a) / sS) - ACC_SUM(b) / sT;
#else
    *P_out = kd_acc_sum_v4d(b0) / sT * (kd_acc_sum_v4d(a) / sS) - kd_acc_sum_v4d(b) / sT;
#endif
}

/* DKD's non-target statistics: maxima over j != y, the partition sums over
 * j != y shifted by those maxima, and A_nt = sum_{j != y} eT (a - b) as in
 * row_kl_sums, so that NCKD = A_nt / sT_nt - log sT_nt + log sS_nt. A side
 * whose non-target logits are all -inf (or C == 1) has a zero sum; A_nt is
 * only taken when both sides have some. */
typedef struct {
    FT mz, mv;
    double sS, sT, A;
} NAME(kd_nt);

/* row_kl_sums over the columns j != y (those before y and those after, each
 * through the vector row loops), shifted by mz and mv, into r; with cS (cT)
 * not NULL the exps are kept there, column y left as it was; nz, nv, ng
 * are prefetched as row_kl_sums does */
static void NAME(row_nt_kl_sums)(const FT *z, const FT *v, int64_t C, int64_t y, FT mz,
                                 FT mv, FT inv_s, FT inv_t, FT *cS, FT *cT, const FT *nz,
                                 const FT *nv, const FT *ng, NAME(kd_nt) *r)
{
    const int64_t y1 = y + 1;
    double sS1, sT1, A1;
    NAME(row_kl_sums)(z, v, y, mz, mv, inv_s, inv_t, &r->sS, &r->sT, &r->A, cS, cT, nz, nv, ng);
    NAME(row_kl_sums)(z + y1, v + y1, C - y1, mz, mv, inv_s, inv_t, &sS1, &sT1, &A1,
                      cS ? cS + y1 : NULL, cT ? cT + y1 : NULL, nz ? nz + y1 : NULL,
                      nv ? nv + y1 : NULL, ng ? ng + y1 : NULL);
    r->mz = mz;
    r->mv = mv;
    r->sS += sS1;
    r->sT += sT1;
    r->A += A1;
}

static NAME(kd_nt) NAME(row_dkd_sums)(const FT *z, const FT *v, int64_t C, int64_t y,
                                      FT inv_s, FT inv_t)
{
    /* the columns before and after y, each through the vector row loops */
    const FT *z1 = z + y + 1, *v1 = v + y + 1;
    const int64_t C1 = C - y - 1;
    NAME(kd_nt) r;
    int nf;
    FT a0 = NAME(row_max)(z, y, &nf), a1 = NAME(row_max)(z1, C1, &nf);
    FT b0 = NAME(row_max)(v, y, &nf), b1 = NAME(row_max)(v1, C1, &nf);
    const FT mz = a1 > a0 ? a1 : a0, mv = b1 > b0 ? b1 : b0;
    r.mz = mz;
    r.mv = mv;
    r.sS = r.sT = r.A = 0.0;
    const int has_s = mz > -INFINITY, has_t = mv > -INFINITY;
    if (has_s && has_t) {
        NAME(row_nt_kl_sums)(z, v, C, y, mz, mv, inv_s, inv_t, NULL, NULL, NULL, NULL, NULL,
                             &r);
    } else if (has_s) {
        r.sS = NAME(row_sumexp)(z, y, mz, inv_s, NULL) +
               NAME(row_sumexp)(z1, C1, mz, inv_s, NULL);
    } else if (has_t) {
        r.sT = NAME(row_sumexp)(v, y, mv, inv_t, NULL) +
               NAME(row_sumexp)(v1, C1, mv, inv_t, NULL);
    }
    return r;
}

/* DKD's statistics of a row whose target is not a maximum on either side
 * (z_y < mz and v_y < mv): the non-target maxima are then the row's, so
 * one sums pass over j != y, shifted by mz and mv, gives the non-target
 * sums, and the row's partition sums are those plus the target's exps, in
 * double (a term below 1 added to a sum of at least 1: nothing cancels).
 * This stands in for row_kl_sums and row_dkd_sums: one pass and two exps
 * per logit instead of two passes, four max passes over parts of the row
 * and four exps; DKD then ran 1.95x (1 thread) and 1.6x (2) faster at
 * 2048 x 32000 (2-core EPYC VM, float32).
 * With cS (cT) not NULL the exps are kept there for the gradient pass as
 * row_kl_sums keeps them, and column y gets 0. */
static NAME(kd_nt) NAME(row_dkd_fast_sums)(const FT *z, const FT *v, int64_t C, int64_t y,
                                           FT mz, FT mv, FT inv_s, FT inv_t, double *sS_out,
                                           double *sT_out, FT *cS, FT *cT, const FT *nz,
                                           const FT *nv, const FT *ng)
{
    NAME(kd_nt) r;
    const FT by = (z[y] - mz) * inv_s, ay = (v[y] - mv) * inv_t;
    NAME(row_nt_kl_sums)(z, v, C, y, mz, mv, inv_s, inv_t, cS, cT, nz, nv, ng, &r);
    *sS_out = r.sS + exp((double)by);
    *sT_out = r.sT + exp((double)ay);
    if (cS)
        cS[y] = 0;
    if (cT)
        cT[y] = 0;
    return r;
}

/* check_row's verdict on a row of max m */
static int NAME(row_code)(FT m, int nonfinite, int check_finite, int err_nonfinite,
                          int err_allinf)
{
    if (check_finite && nonfinite)
        return err_nonfinite;
    if (m == -INFINITY)
        return err_allinf;
    return KD_OK;
}

/* Check one row of one array: max, finiteness, all -inf. */
static int NAME(check_row)(const FT *x, int64_t C, int check_finite,
                           int err_nonfinite, int err_allinf, FT *max_out)
{
    int nonfinite;
    FT m = NAME(row_max)(x, C, &nonfinite);
    *max_out = m;
    return NAME(row_code)(m, nonfinite, check_finite, err_nonfinite, err_allinf);
}

/* check_row with the row's row_dev (ddof) in the same pass; with dev NULL,
 * check_row */
static int NAME(check_row_dev)(const FT *x, int64_t C, int check_finite, int err_nonfinite,
                               int err_allinf, int ddof, FT *max_out, NAME(row_dev) *dev)
{
    if (!dev)
        return NAME(check_row)(x, C, check_finite, err_nonfinite, err_allinf, max_out);
    int nonfinite;
    const FT m = NAME(row_max_dev_as)(1, x, C, ddof, &nonfinite, dev);
    *max_out = m;
    return NAME(row_code)(m, nonfinite, check_finite, err_nonfinite, err_allinf);
}

/* Labels and the logits of row i of a KD loss; the row maxima go to mzv[0]
 * (student) and mzv[1] (teacher, 0 without the KD term). With dev not NULL
 * (ATKD's std temperatures; teacher not NULL) the rows' row_dev (p->ddof)
 * go to dev[0] and dev[1], in the same passes. */
static int NAME(check_kd_row)(const FT *student, int64_t student_stride, const FT *teacher,
                              int64_t teacher_stride, int64_t C, const kd_rows *rows,
                              const kd_params *p, int needs_labels, int use_kd, int64_t i,
                              FT *mzv, NAME(row_dev) *dev)
{
    mzv[0] = mzv[1] = 0;
    if (needs_labels) {
        int64_t y = rows->labels[i * rows->labels_stride];
        if (y < 0 || y >= C)
            return KD_ERR_LABEL;
    }
    const FT *z = student + i * student_stride;
    const FT *v = teacher ? teacher + i * teacher_stride : NULL;
    int code = NAME(check_row_dev)(z, C, p->check_finite, KD_ERR_NONFINITE_STUDENT,
                                   KD_ERR_ALLINF_STUDENT, p->ddof, &mzv[0], dev);
    if (code == KD_OK && use_kd)
        code = NAME(check_row_dev)(v, C, p->check_finite, KD_ERR_NONFINITE_TEACHER,
                                   KD_ERR_ALLINF_TEACHER, p->ddof, &mzv[1], dev ? &dev[1] : NULL);
    else if (code == KD_OK && dev) /* a teacher without the KD term: not checked */
        NAME(row_mean_std)(v, C, p->ddof, &dev[1]);
    return code;
}

/* g = cS g - cT e [+ c1 e1] - shift over a row: forward KL's gradient from
 * the exps kept in g (the student's) and e (the teacher's), and with e1 not
 * NULL the CE term's softmax at T = 1 from its exps e1 (the order of
 * operations of kd_forward's gradient pass that recomputes them: the same
 * bits) */
static inline __attribute__((always_inline)) void NAME(kl_cached_grad)(FT *g, const FT *e,
                                                                        const FT *e1, int64_t C,
                                                                        FT cS, FT cT, FT c1,
                                                                        FT shift)
{
    int64_t j = 0;
    for (; j + VL <= C; j += VL) {
        VEC gj = cS * VLOAD(g + j) - cT * VLOAD(e + j);
        if (e1)
            gj += c1 * VLOAD(e1 + j);
        VSTORE(g + j, gj - shift);
    }
    for (; j < C; j++) {
        FT gj = cS * g[j] - cT * e[j];
        if (e1)
            gj += c1 * e1[j];
        g[j] = gj - shift;
    }
}

/* Forward KL alone, with its gradient, on rows i0 .. i_end - 1 (a group of
 * up to KD_ROW_GROUP short rows), in three phases: every row's maxima, then
 * every row's sums (the exps kept in g and in the row's KD_GROUP_COLS slice
 * of scratch), then every row's gradient. Each phase's rows are
 * independent, so one row's reductions (max, sums, coefficients: chains of
 * latency) run under the next row's work. Row by row, a short row waited on
 * them: at 100 classes a row took twice the time of its elements' work, and
 * the phases made a 4096 x 100 call 1.17x and 25600 x 16 1.3x faster (one
 * thread, 2-core EPYC VM); from 256 classes on it made no difference.
 * A row's sums prefetch the row KD_ROW_GROUP further on (the next group's
 * maxima phase reads it first): 1.2-1.25x at 16384 x 100 and 65536 x 64,
 * arrays past L2. The maxima pass leaves NaN to the sums (1.05x at
 * 4096 x 100). Leaves what the row loop of kd_forward leaves for kl_defer
 * rows, errors included. */
#define KD_GROUP_COLS 256
static void NAME(kl_group)(int64_t i0, int64_t i_end, int64_t n_rows, int64_t C,
                           const FT *student,
                           int64_t student_stride, const FT *teacher, int64_t teacher_stride,
                           kd_temps student_t, kd_temps teacher_t, const kd_rows *rows,
                           const kd_params *p, double grad_scale, double *row_loss, FT *grad,
                           int64_t grad_stride, double *student_t_out, double *teacher_t_out,
                           FT *scratch, double *kl_ratio, double *kl_weight, int *bad_code,
                           int64_t *bad_row)
{
    FT mzv[KD_ROW_GROUP][2], cS[KD_ROW_GROUP], cT[KD_ROW_GROUP];
    int ok[KD_ROW_GROUP];
    for (int64_t i = i0; i < i_end; i++) {
        const int k = (int)(i - i0);
        ok[k] = 0;
        row_loss[i] = 0.0;
        if (!kd_row_counts(rows, i)) {
            memset(grad + i * grad_stride, 0, sizeof(FT) * (size_t)C);
            if (student_t_out)
                student_t_out[i] = NAN;
            if (teacher_t_out)
                teacher_t_out[i] = NAN;
            continue;
        }
        /* the maxima without a test per element for NaN, which the sums
         * find (a NaN's exp is NaN); check_kd_row names the error, in its
         * order, for the rare row with an infinite max or a NaN sum (all
         * -inf, +inf, NaN among -inf only) */
        mzv[k][0] = NAME(row_max_as)(0, student + i * student_stride, C, NULL);
        mzv[k][1] = NAME(row_max_as)(0, teacher + i * teacher_stride, C, NULL);
        int code = KD_OK;
        if (!isfinite(mzv[k][0]) || !isfinite(mzv[k][1]))
            code = NAME(check_kd_row)(student, student_stride, teacher, teacher_stride, C,
                                      rows, p, 0, 1, i, mzv[k], NULL);
        KD_RECORD_ERROR(code, i, *bad_code, *bad_row);
        ok[k] = code == KD_OK;
    }
    for (int64_t i = i0; i < i_end; i++) {
        const int k = (int)(i - i0);
        if (!ok[k])
            continue;
        const double tS = student_t.t[i * student_t.stride];
        const double tT = teacher_t.t[i * teacher_t.stride];
        if (student_t_out)
            student_t_out[i] = tS;
        if (teacher_t_out)
            teacher_t_out[i] = tT;
        const double s = p->scale == KD_SCALE_T2      ? tS * tT
                         : p->scale == KD_SCALE_CONST ? p->scale_value
                                                      : 1.0;
        double sS, sT, A;
        const FT *z = student + i * student_stride, *v = teacher + i * teacher_stride;
        FT *g = grad + i * grad_stride;
        const int ahead = i + KD_ROW_GROUP < n_rows;
        NAME(row_kl_sums)(z, v, C, mzv[k][0], mzv[k][1], NAME(inv_temp)(tS),
                          NAME(inv_temp)(tT), &sS, &sT, &A, g, scratch + k * KD_GROUP_COLS,
                          ahead ? z + KD_ROW_GROUP * student_stride : NULL,
                          ahead ? v + KD_ROW_GROUP * teacher_stride : NULL,
                          ahead ? g + KD_ROW_GROUP * grad_stride : NULL);
        if (p->check_finite && (sS != sS || sT != sT)) {
            FT m2[2];
            int code = NAME(check_kd_row)(student, student_stride, teacher, teacher_stride, C,
                                          rows, p, 0, 1, i, m2, NULL);
            KD_RECORD_ERROR(code, i, *bad_code, *bad_row);
            if (code != KD_OK) {
                ok[k] = 0;
                continue;
            }
        }
        row_loss[i] = A / sT;
        kl_ratio[k] = sS / sT;
        kl_weight[k] = p->kd_weight * s;
        const double coef = grad_scale * p->kd_weight * s / tS;
        cS[k] = (FT)(coef / sS);
        cT[k] = (FT)(coef / sT);
    }
    for (int64_t i = i0; i < i_end; i++) {
        const int k = (int)(i - i0);
        if (ok[k])
            NAME(kl_cached_grad)(grad + i * grad_stride, scratch + k * KD_GROUP_COLS, NULL, C,
                                 cS[k], cT[k], (FT)0, (FT)0);
    }
}

int NAME(kd_forward)(int64_t n_rows, int64_t n_cols,
                     const FT *student, int64_t student_stride,
                     const FT *teacher, int64_t teacher_stride,
                     kd_temps student_t, kd_temps teacher_t,
                     const kd_rows *rows, const kd_params *p,
                     double grad_scale, double *row_loss,
                     FT *grad, int64_t grad_stride,
                     double *student_t_out, double *teacher_t_out,
                     int n_threads, kd_status *status)
{
    const int64_t C = n_cols;
    const int use_kd = p->kd_weight != 0.0;
    const int use_ce = p->ce_weight != 0.0;
    const int dkd = p->divergence == KD_DIV_DKD;
    const int needs_labels = use_ce || (use_kd && dkd);
    status->code = KD_OK;
    status->row = -1;
    if (n_rows < 0 || n_cols <= 0 || (use_kd && !teacher) ||
        (needs_labels && !rows->labels) || p->divergence < 0 ||
        p->divergence >= KD_DIV_COUNT || (p->adaptive && p->divergence != KD_DIV_KL))
        return status->code = KD_ERR_ARGUMENT;
    if (n_rows == 0)
        return KD_OK;

    /* A gradient written over an input (in place) needs every row checked
     * before anything is written, so that an error leaves the caller's array
     * as it was: the row maxima come first then, in a pass of their own.
     * Otherwise each row is checked where it is computed, one read of the
     * inputs fewer (after an error the rows of a separate gradient buffer
     * hold whatever was computed). */
    const int prepass = grad && (kd_spans_overlap(grad, grad_stride, student, student_stride,
                                                  n_rows, C, sizeof(FT)) ||
                                 (teacher && kd_spans_overlap(grad, grad_stride, teacher,
                                                              teacher_stride, n_rows, C,
                                                              sizeof(FT))));
    FT *maxes = NULL;
    const int par = kd_parallel(n_threads, n_rows, C);
    int64_t bad_row = INT64_MAX;
    int bad_code = KD_OK;
    if (prepass) {
        maxes = (FT *)malloc(sizeof(FT) * 2 * (size_t)n_rows);
        if (!maxes)
            return status->code = KD_ERR_ARGUMENT;
        kd_team team = kd_team_start(C);
#pragma omp parallel num_threads(n_threads) if (par)
        {
#pragma omp for schedule(guided, team.chunk) nowait
        for (int64_t i = 0; i < n_rows; i++) {
            maxes[2 * i] = maxes[2 * i + 1] = 0;
            if (!kd_row_counts(rows, i))
                continue;
            int code = NAME(check_kd_row)(student, student_stride, teacher, teacher_stride, C,
                                          rows, p, needs_labels, use_kd, i, &maxes[2 * i],
                                          NULL);
            KD_RECORD_ERROR(code, i, bad_code, bad_row);
        }
        kd_team_finish(&team);
        }
        if (bad_code != KD_OK) {
            free(maxes);
            status->row = bad_row;
            return status->code = bad_code;
        }
    }

    /* Forward KL keeps exps from the sums pass for the gradient pass: rows
     * up to KD_CACHE_COLS keep both (in g and a per-thread row: two exps per
     * logit instead of four), longer rows the student's in g only (three). */
    /* ATKD with the gradient through the student's temperature */
    const int atkd_through_t = p->adaptive && !p->detach_temperature;
    const int kl_plain = grad && use_kd && p->divergence == KD_DIV_KL && !atkd_through_t;
    const int cache_exps = kl_plain && C <= KD_CACHE_COLS;
    const int cache_half = kl_plain && C > KD_CACHE_COLS;
    /* The other divergences (not DKD) read the exps in two more passes: with
     * both kept (in g and the row buffer) they take two exps per logit
     * instead of six. Not in place: those passes also read z. */
    const int cache_div = grad && use_kd && !dkd && p->divergence != KD_DIV_KL && !prepass &&
                          C <= KD_CACHE_COLS;
    /* ATKD with the gradient through tS keeps them as forward KL does (the
     * student's in g, the teacher's too up to KD_CACHE_COLS); not in place:
     * its gradient pass reads z for the term through tS. */
    const int atkd_keep = grad && use_kd && atkd_through_t && !prepass;
    const int atkd_keep_t = atkd_keep && C <= KD_CACHE_COLS;
    /* DKD keeps both too on the rows of row_dkd_fast_sums (not in place: its
     * gradient pass reads z for the CE term) */
    const int dkd_keep = grad && use_kd && dkd && !prepass && C <= KD_CACHE_COLS;
    /* forward KL and ATKD with the CE term at tS != 1 keep the CE pass's
     * exps, at T = 1, for the gradient pass (in a row buffer of their own):
     * KL + CE then takes three exps per logit instead of six (its student's
     * and teacher's exps kept too), ATKD's logit-standardisation preset
     * three instead of four: 1.2-1.3x and 1.1x (2-core EPYC VM, float32) */
    const int ce_keep = grad && use_kd && use_ce && p->divergence == KD_DIV_KL &&
                        C <= KD_CACHE_COLS;
    /* reverse and symmetric KL take D and Q from the sums pass, no pass of
     * their own */
    const int rev_closed_div = p->divergence == KD_DIV_REVERSE_KL ||
                               p->divergence == KD_DIV_SYMMETRIC_KL;
    /* Forward KL alone takes its rows' logs after each group of
     * KD_ROW_GROUP rows, four in one kd_log_v4d: a libm log per row costs a
     * tenth of a 4096 x 100 call. A row leaves
     * A / sT in row_loss, sS / sT in kl_ratio and its weight in kl_weight.
     * Where the loss is needed in the row (ATKD's gradient through tS, KL +
     * CE) the row takes kd_log_f64 itself: the same bits. */
    const int kl_defer = use_kd && !use_ce && p->divergence == KD_DIV_KL &&
                         !(grad && atkd_through_t);
    _Static_assert(KD_ROW_GROUP == 4, "the logs of a group are one kd_log_v4d");
    const int64_t group = kl_defer ? KD_ROW_GROUP : 1;
    /* forward KL alone on short rows, gradient and both exps kept: in phases
     * (kl_group) */
    const int kl_grouped = kl_defer && cache_exps && !prepass && !p->adaptive &&
                           C <= KD_GROUP_COLS;
    /* CE alone on long rows reads each row in row_sumexp_blocks (which also
     * checks it where there was no prepass); not with ATKD's temperatures
     * asked for, which read the row after it (in place, after its exps) */
    const int ce_blocks = use_ce && !use_kd && !p->adaptive;
    kd_team team = kd_team_start(C * group);

#pragma omp parallel num_threads(n_threads) if (par)
    {
    /* without it (out of memory) the thread recomputes its exps */
    FT *scratch = kl_grouped ? (FT *)malloc(sizeof(FT) * KD_ROW_GROUP * KD_GROUP_COLS)
                  : cache_exps || cache_div || atkd_keep_t || dkd_keep
                      ? (FT *)malloc(sizeof(FT) * (size_t)C)
                      : NULL;
    FT *ce_exps = ce_keep ? (FT *)malloc(sizeof(FT) * (size_t)C) : NULL;
    /* and the divergences with a pass of their own keep their terms h_j */
    double *hcache = cache_div && !rev_closed_div
                         ? (double *)malloc(sizeof(double) * (size_t)(C + VL))
                         : NULL;
    /* CE alone on rows of two blocks and more: the block factors */
    double *ce_fb = ce_blocks ? NAME(blocks_buffer)(C) : NULL;
    /* a group's logs are taken by the thread that computed its rows: no
     * barrier between (see kd_team for the schedule) */
#pragma omp for schedule(guided, team.chunk) nowait
    for (int64_t i0 = 0; i0 < n_rows; i0 += group) {
    const int64_t i_end = n_rows - i0 < group ? n_rows : i0 + group;
    /* a row that leaves none has loss 0 */
    double kl_ratio[KD_ROW_GROUP] = {1.0, 1.0, 1.0, 1.0}, kl_weight[KD_ROW_GROUP] = {0};
    if (kl_grouped && scratch)
        NAME(kl_group)(i0, i_end, n_rows, C, student, student_stride, teacher, teacher_stride,
                       student_t, teacher_t, rows, p, grad_scale, row_loss, grad, grad_stride,
                       student_t_out, teacher_t_out, scratch, kl_ratio, kl_weight, &bad_code,
                       &bad_row);
    for (int64_t i = kl_grouped && scratch ? i_end : i0; i < i_end; i++) {
        FT *g = grad ? grad + i * grad_stride : NULL;
        if (!kd_row_counts(rows, i)) {
            row_loss[i] = 0.0;
            if (g)
                memset(g, 0, sizeof(FT) * (size_t)C);
            if (student_t_out)
                student_t_out[i] = NAN;
            if (teacher_t_out)
                teacher_t_out[i] = NAN;
            continue;
        }
        FT mzv[2] = {0, 0};
        /* ATKD's row_dev, taken with the maxima (devs = dev) or after */
        NAME(row_dev) dev[2], *devs = NULL;
        double blk_s1 = 0, blk_zsum = 0, blk_zy = 0;
        const int blk = ce_blocks && ce_fb;
        if (blk) {
            /* z_y and the exps (into g, which may be z) in this order */
            const int64_t y = rows->labels[i * rows->labels_stride];
            const FT *zi = student + i * student_stride;
            int code = KD_ERR_LABEL;
            if (y >= 0 && y < C) {
                blk_zy = (double)zi[y];
                code = NAME(row_sumexp_blocks)(
                    zi, C, (FT)1, p->check_finite, KD_ERR_NONFINITE_STUDENT,
                    KD_ERR_ALLINF_STUDENT, p->label_smoothing != 0.0, g, ce_fb,
                    NAME(next_row)(zi, student_stride, i, n_rows, C, 2), &mzv[0], &blk_s1,
                    &blk_zsum);
            }
            if (code != KD_OK) {
                KD_RECORD_ERROR(code, i, bad_code, bad_row);
                row_loss[i] = 0.0;
                continue;
            }
        } else if (prepass) {
            mzv[0] = maxes[2 * i];
            mzv[1] = maxes[2 * i + 1];
        } else {
            devs = p->adaptive && teacher ? dev : NULL;
            int code = NAME(check_kd_row)(student, student_stride, teacher, teacher_stride, C,
                                          rows, p, needs_labels, use_kd, i, mzv, devs);
            if (code != KD_OK) {
                KD_RECORD_ERROR(code, i, bad_code, bad_row);
                row_loss[i] = 0.0;
                continue;
            }
        }
        const FT *z = student + i * student_stride;
        const FT *v = use_kd ? teacher + i * teacher_stride : NULL;
        const FT *v_any = teacher ? teacher + i * teacher_stride : NULL;
        const FT mz = mzv[0], mv = mzv[1];
        /* the next row's logits, prefetched by this row's first exp pass */
        const int n_ahead = (use_kd ? 2 : 1) + (grad ? 1 : 0);
        const FT *nz = NAME(next_row)(z, student_stride, i, n_rows, C, n_ahead);
        const FT *nv = use_kd ? NAME(next_row)(v, teacher_stride, i, n_rows, C, n_ahead) : NULL;
        const FT *ng = g ? NAME(next_row)(g, grad_stride, i, n_rows, C, n_ahead) : NULL;
        const int64_t y = needs_labels ? rows->labels[i * rows->labels_stride] : 0;

        /* temperatures: given, or ATKD's b (std + eps) of each row */
        double tS, tT, mean_z = 0, std_z = 0;
        int64_t n_fin = C;
        if (p->adaptive && v_any) {
            if (!devs) {
                NAME(row_mean_std)(z, C, p->ddof, &dev[0]);
                NAME(row_mean_std)(v_any, C, p->ddof, &dev[1]);
            }
            mean_z = dev[0].mean;
            std_z = dev[0].std;
            n_fin = dev[0].n_fin;
            tS = p->base_temperature * (std_z + p->std_eps);
            tT = p->base_temperature * (dev[1].std + p->std_eps);
        } else {
            tS = student_t.t[i * student_t.stride];
            tT = teacher_t.t[i * teacher_t.stride];
        }
        if (student_t_out)
            student_t_out[i] = tS;
        if (teacher_t_out)
            teacher_t_out[i] = tT;
        const FT inv_s = NAME(inv_temp)(tS), inv_t = NAME(inv_temp)(tT);
        const double s = p->scale == KD_SCALE_T2      ? tS * tT
                         : p->scale == KD_SCALE_CONST ? p->scale_value
                                                      : 1.0;

        /* hard-label part at temperature 1 (first: the exp cache below may
         * overwrite z when g is z) */
        double s1 = 1, ce = 0;
        const double eps = p->label_smoothing;
        /* CE alone: its exps go straight into g for the gradient pass; with
         * KL at tS != 1 into ce_exps (at tS = 1 the gradient takes pS for them) */
        const int ce_cached = use_ce && !use_kd && g;
        FT *const ce_e = ce_exps && inv_s != (FT)1 ? ce_exps : NULL;
        if (use_ce) {
            double zsum;
            const double zy = blk ? blk_zy : (double)z[y]; /* before g (maybe z) is written */
            if (blk) {
                s1 = blk_s1;
                zsum = blk_zsum;
            } else {
                NAME(row_ce_sums)(z, C, mz, eps != 0.0, &s1, &zsum, ce_cached ? g : ce_e,
                                  use_kd ? NULL : nz, use_kd ? NULL : ng);
            }
            double lse1 = (double)mz + log(s1);
            ce = lse1;
            if (eps != 1.0) /* (1 - eps) z_y is 0 * -inf at eps = 1 */
                ce -= (1 - eps) * zy;
            if (eps != 0.0)
                ce -= eps / (double)C * zsum;
        }

        /* divergence part */
        const int cache_ok = g && !(use_ce && inv_s != (FT)1 && !ce_e);
        const int cached = cache_ok && cache_exps && scratch;
        const int half = cache_ok && cache_half;
        const int div_cached = cache_div && scratch;
        const int h_cached = div_cached && hcache;
        double sS = 1, sT = 1, D = 0, Q = 0, P_atkd = 0;
        const int atkd_grad = g && use_kd && atkd_through_t && std_z > 0;
        NAME(kd_nt) nt = {0, 0, 0, 0, 0};
        double pSy = 0, pTy = 0; /* dkd: target probabilities */
        const int rev_closed = use_kd && !atkd_grad && rev_closed_div;
        const int atkd_cs = atkd_grad && atkd_keep; /* exp(b) kept in g */
        const int atkd_ct = atkd_cs && atkd_keep_t && scratch; /* exp(a) in scratch */
        /* (g is not z where dkd_keep: z[y] is read before g is written) */
        const int dkd_fast = use_kd && dkd && z[y] < mz && v[y] < mv;
        const int dkd_cached = dkd_fast && dkd_keep && scratch; /* exp(b) in g, exp(a) in scratch */
        if (use_kd) {
            double A, R = 0;
            if (atkd_grad)
                NAME(row_atkd_sums)(z, v, C, mz, mv, inv_s, inv_t, mean_z, &sS, &sT, &A,
                                    &P_atkd, atkd_cs ? g : NULL, atkd_ct ? scratch : NULL,
                                    nz, nv, ng);
            else if (rev_closed)
                NAME(row_kl_rev_sums)(z, v, C, mz, mv, inv_s, inv_t, &sS, &sT, &A, &R,
                                      div_cached ? g : NULL, div_cached ? scratch : NULL,
                                      nz, nv, ng);
            else if (dkd_fast)
                nt = NAME(row_dkd_fast_sums)(z, v, C, y, mz, mv, inv_s, inv_t, &sS, &sT,
                                             dkd_cached ? g : NULL, dkd_cached ? scratch : NULL,
                                             nz, nv, ng);
            else
                NAME(row_kl_sums)(z, v, C, mz, mv, inv_s, inv_t, &sS, &sT, &A,
                                  cached || half || div_cached ? g : NULL,
                                  cached || div_cached ? scratch : NULL, nz, nv, ng);
            if (p->divergence == KD_DIV_KL) {
                D = A / sT;
                if (kl_defer)
                    kl_ratio[i - i0] = sS / sT;
                else
                    D += kd_log_f64(sS / sT); /* one log per row */
            } else if (dkd) {
                /* TCKD on [p_y, 1 - p_y], NCKD over j != y; log(1 - p_y) is
                 * lse_nt - lse, free of cancellation when p_y is near 1 */
                const double lS = log(sS), lT = log(sT);
                const double lpSy = (double)((z[y] - mz) * inv_s) - lS;
                const double lpTy = (double)((v[y] - mv) * inv_t) - lT;
                if (!dkd_fast)
                    nt = NAME(row_dkd_sums)(z, v, C, y, inv_s, inv_t);
                const int s_nt = nt.sS > 0, t_nt = nt.sT > 0;
                const double l1S = s_nt ? (double)((nt.mz - mz) * inv_s) + log(nt.sS) - lS
                                        : -INFINITY;
                const double l1T = t_nt ? (double)((nt.mv - mv) * inv_t) + log(nt.sT) - lT
                                        : -INFINITY;
                pSy = exp(lpSy);
                pTy = exp(lpTy);
                double tckd = (pTy > 0 ? pTy * (lpTy - lpSy) : 0.0) +
                              (t_nt ? exp(l1T) * (l1T - l1S) : 0.0);
                double nckd = !t_nt ? 0.0
                              : !s_nt ? INFINITY
                                      : nt.A / nt.sT - log(nt.sT) + log(nt.sS);
                tckd = tckd > 0 ? tckd : 0;
                nckd = nckd > 0 ? nckd : 0;
                /* a zero weight drops its term even when that term is inf */
                D = (p->alpha != 0.0 ? p->alpha * tckd : 0.0) +
                    (p->beta != 0.0 ? p->beta * nckd : 0.0);
            } else if (rev_closed) {
                /* reverse KL, and symmetric KL = forward + reverse, from the
                 * sums: Q = sum_j h_j is D_rev (reverse) or D_rev - 1 */
                const double lSlT = log(sS / sT);
                const double rev_kl = R / sS - lSlT;
                if (p->divergence == KD_DIV_REVERSE_KL) {
                    D = rev_kl;
                    Q = rev_kl;
                } else {
                    D = A / sT + lSlT + rev_kl;
                    Q = rev_kl - 1.0;
                }
            } else {
                NAME(row_div_sums)(z, v, C, mz, mv, inv_s, inv_t, sS, sT, p,
                                   div_cached ? g : NULL, div_cached ? scratch : NULL,
                                   h_cached ? hcache : NULL, &D, &Q);
            }
            if (!kl_defer)
                D = D > 0 ? D : 0; /* every divergence is >= 0; drop rounding */
        }

        /* an unused term adds nothing, even where s or the temperatures of an
         * unchecked teacher are not finite */
        if (kl_defer) {
            row_loss[i] = D;
            kl_weight[i - i0] = p->kd_weight * s;
        } else {
            row_loss[i] = (use_kd ? p->kd_weight * s * D : 0.0) +
                          (use_ce ? p->ce_weight * ce : 0.0);
        }
        if (!g)
            continue;

        /* gradient, times grad_scale:
         *   kd_weight * s/tS * (h_j - pS_j Q)          (spec/kd.md)
         * + ATKD's term through tS: cB (z_j - mean)     (spec/atkd.md)
         * + ce_weight * (softmax(z)_j - q_j).
         * Each element is read before it is written, so g may be z. */
        const double coef = use_kd ? grad_scale * p->kd_weight * s / tS : 0.0;
        const double c1 = use_ce ? grad_scale * p->ce_weight : 0.0;
        const FT cS = (FT)(coef / sS), cT = (FT)(coef / sT), cC = (FT)(c1 / s1);
        const FT c_eps = (FT)(c1 * eps / (double)C);
        /* an infinite divergence: kl and dkd keep their (finite) gradient
         * formulas; the others' formulas are infinite there and give 0 */
        const int kd_inf = use_kd && D == INFINITY && p->divergence != KD_DIV_KL && !dkd;
        if (!use_kd || kd_inf) {
            if (blk) {
                NAME(scale_blocks)(g, C, ce_fb, c1 / s1, c_eps);
            } else if (ce_cached) {
                int64_t j = 0;
                for (; j + VL <= C; j += VL)
                    VSTORE(g + j, cC * VLOAD(g + j) - c_eps);
                for (; j < C; j++)
                    g[j] = cC * g[j] - c_eps;
            } else if (use_ce) {
                for (int64_t j = 0; j < C; j += VL) {
                    const int full = j + VL <= C;
                    VEC zz = full ? VLOAD(z + j) : NAME(load_tail)(z + j, C - j, -INFINITY);
                    VEC gj = cC * VEXP(zz - mz) - c_eps;
                    NAME(store_at)(g, j, C, gj);
                }
            } else {
                memset(g, 0, sizeof(FT) * (size_t)C);
            }
        } else if (p->divergence == KD_DIV_KL) {
            double cB = 0.0;
            if (atkd_grad) {
                double dT = -s * P_atkd / (tS * tS);
                /* through s = tS tT; an infinite KL has no finite share here */
                if (p->scale == KD_SCALE_T2 && D < INFINITY)
                    dT += D * tT;
                cB = grad_scale * p->kd_weight * dT * p->base_temperature /
                     ((double)(n_fin - p->ddof) * std_z);
            }
            /* the softmax at T = 1 is pS itself when tS == 1: one exp saved */
            const int ce_own_exp = use_ce && inv_s != (FT)1;
            const FT cSC = use_ce && !ce_own_exp ? cS + cC : cS;
            int64_t j0 = 0;
            if (cached) {
                /* g holds exp(b), scratch exp(a) */
                NAME(kl_cached_grad)(g, scratch, ce_own_exp ? ce_e : NULL, C, cSC, cT, cC,
                                     use_ce ? c_eps : (FT)0);
            } else if (half) {
                /* g holds exp(b) */
                const FT ce_shift = use_ce ? c_eps : (FT)0;
                for (; j0 < C; j0 += VL) {
                    const int full = j0 + VL <= C;
                    VEC vv = full ? VLOAD(v + j0) : NAME(load_tail)(v + j0, C - j0, -INFINITY);
                    VEC ge = full ? VLOAD(g + j0) : NAME(load_tail)(g + j0, C - j0, 0);
                    VEC gj = cSC * ge - cT * VEXP((vv - mv) * inv_t) - ce_shift;
                    NAME(store_at)(g, j0, C, gj);
                }
                j0 = C;
            } else {
                /* recomputed exps (ATKD's kept ones where it kept them); the
                 * CE softmax at T = 1 when tS != 1; ATKD's term through tS in
                 * double (cB ~ 1/std overflows float for tiny stds) */
#if !KD_FLOAT_ROWS
                const kd_v4d zero4 = {0}, ninf4 = zero4 - INFINITY;
#endif
                for (; j0 < C; j0 += VL) {
                    const int full = j0 + VL <= C;
                    VEC zz = full ? VLOAD(z + j0) : NAME(load_tail)(z + j0, C - j0, -INFINITY);
                    VEC vv = full ? VLOAD(v + j0) : NAME(load_tail)(v + j0, C - j0, -INFINITY);
                    VEC eS = NAME(cached_exp)(atkd_cs ? g : NULL, j0, C, (zz - mz) * inv_s);
                    VEC eT = NAME(cached_exp)(atkd_ct ? scratch : NULL, j0, C,
                                              (vv - mv) * inv_t);
                    VEC gj = cSC * eS - cT * eT;
                    if (ce_own_exp)
                        gj += cC * NAME(cached_exp)(ce_e, j0, C, zz - mz);
                    if (use_ce)
                        gj -= c_eps;
#if KD_FLOAT_ROWS
                    if (cB != 0.0)
                        gj = VADD_CDEV(gj, cB, zz, mean_z);
#else
                    if (cB != 0.0) {
                        kd_v4d gp[VPARTS];
                        for (int h = 0; h < VPARTS; h++) {
                            kd_v4d zd = VPART(zz, h);
                            gp[h] = VPART(gj, h) +
                                    cB * kd_sel_v4d(zd > ninf4, zd - mean_z, zero4);
                        }
                        gj = VJOIN(gp);
                    }
#endif
                    NAME(store_at)(g, j0, C, gj);
                }
            }
        } else if (dkd) {
            /* d/dz_j of T^2 (alpha TCKD + beta NCKD), per 1/T:
             *   j == y: alpha (pS_y - pT_y)
             *   j != y: alpha (pT_y - pS_y) pS_nt_j + beta (pS_nt_j - pT_nt_j)
             * A side without non-target mass has pS_nt = 0 (pT_nt = 0); NCKD
             * is 0 and constant when the teacher has none. */
            const int s_nt = nt.sS > 0, t_nt = nt.sT > 0;
            const double ct = coef * p->alpha * (pTy - pSy);
            const double cb = t_nt ? coef * p->beta : 0.0;
            const FT cSn = s_nt ? (FT)((ct + cb) / nt.sS) : (FT)0;
            const FT cTn = t_nt ? (FT)(cb / nt.sT) : (FT)0;
            const FT gy = (FT)(-ct);
            const FT zy = z[y]; /* g may be z: read before the loop writes it */
            /* column y's lane computes an exp of a positive argument (garbage
             * from the vector exp; 0 where the exps were kept) and is
             * overwritten after the loop */
            const FT *eSc = dkd_cached ? g : NULL, *eTc = dkd_cached ? scratch : NULL;
            for (int64_t j = 0; j < C; j += VL) {
                const int full = j + VL <= C;
                VEC zz = {0};
                if (!eSc || use_ce)
                    zz = full ? VLOAD(z + j) : NAME(load_tail)(z + j, C - j, -INFINITY);
                VEC gj = (VEC){0};
                if (s_nt)
                    gj = cSn * NAME(cached_exp)(eSc, j, C, (zz - nt.mz) * inv_s);
                if (t_nt) {
                    VEC vv = {0};
                    if (!eTc)
                        vv = full ? VLOAD(v + j) : NAME(load_tail)(v + j, C - j, -INFINITY);
                    gj -= cTn * NAME(cached_exp)(eTc, j, C, (vv - nt.mv) * inv_t);
                }
                if (use_ce)
                    gj += cC * VEXP(zz - mz) - c_eps;
                NAME(store_at)(g, j, C, gj);
            }
            /* the target column is not in the non-target sums */
            g[y] = gy + (use_ce ? cC * EXP(zy - mz) - c_eps : (FT)0);
        } else if (h_cached) {
            NAME(row_h_grad)(z, C, mz, sS, coef, Q, use_ce, cC, c_eps, g, hcache,
                             NAME(lane_terms)(p->divergence, p), g);
        } else {
            NAME(row_div_grad)(z, v, C, mz, mv, inv_s, inv_t, sS, sT, p, coef, Q, use_ce, cC,
                               c_eps, div_cached ? g : NULL, div_cached ? scratch : NULL, g);
        }
        if (use_ce)
            g[y] -= (FT)(c1 * (1 - eps));
    }
    if (kl_defer) {
        kd_v4d r = {kl_ratio[0], kl_ratio[1], kl_ratio[2], kl_ratio[3]};
        const kd_v4d lr = kd_log_v4d(r);
        for (int64_t i = i0; i < i_end; i++) {
            double D = row_loss[i] + lr[i - i0];
            D = D > 0 ? D : 0;
            row_loss[i] = kl_weight[i - i0] * D + 0.0;
        }
    }
    }
    kd_team_finish(&team);
    free(scratch);
    free(ce_exps);
    free(hcache);
    free(ce_fb);
    }
    free(maxes);
    if (bad_code != KD_OK) {
        status->row = bad_row;
        return status->code = bad_code;
    }
    return KD_OK;
}

int NAME(kd_softmax)(int64_t n_rows, int64_t n_cols, const FT *x, int64_t x_stride,
                     kd_temps t, int log_space, int check_finite, FT *out,
                     int64_t out_stride, int n_threads, kd_status *status)
{
    const int64_t C = n_cols;
    status->code = KD_OK;
    status->row = -1;
    if (n_rows < 0 || n_cols <= 0)
        return status->code = KD_ERR_ARGUMENT;
    if (n_rows == 0)
        return KD_OK;
    /* as kd_forward: a pass of its own for the maxima only when out is x */
    const int prepass = kd_spans_overlap(out, out_stride, x, x_stride, n_rows, C, sizeof(FT));
    FT *maxes = NULL;
    const int par = kd_parallel(n_threads, n_rows, C);
    int64_t bad_row = INT64_MAX;
    int bad_code = KD_OK;
    if (prepass) {
        maxes = (FT *)malloc(sizeof(FT) * (size_t)n_rows);
        if (!maxes)
            return status->code = KD_ERR_ARGUMENT;
        kd_team team = kd_team_start(C);
#pragma omp parallel num_threads(n_threads) if (par)
        {
#pragma omp for schedule(guided, team.chunk) nowait
        for (int64_t i = 0; i < n_rows; i++) {
            int code = NAME(check_row)(x + i * x_stride, C, check_finite,
                                       KD_ERR_NONFINITE_STUDENT, KD_ERR_ALLINF_STUDENT,
                                       &maxes[i]);
            KD_RECORD_ERROR(code, i, bad_code, bad_row);
        }
        kd_team_finish(&team);
        }
        if (bad_code != KD_OK) {
            free(maxes);
            status->row = bad_row;
            return status->code = bad_code;
        }
    }

    kd_team team = kd_team_start(C);
#pragma omp parallel num_threads(n_threads) if (par)
    {
    /* long rows are read once for their sums (row_sumexp_blocks) */
    double *fb = NAME(blocks_buffer)(C);
#pragma omp for schedule(guided, team.chunk) nowait
    for (int64_t i = 0; i < n_rows; i++) {
        const FT *xi = x + i * x_stride;
        FT *o = out + i * out_stride;
        const FT inv_t = NAME(inv_temp)(t.t[i * t.stride]);
        const FT *next = NAME(next_row)(xi, x_stride, i, n_rows, C, 2);
        const FT *next_o = NAME(next_row)(o, out_stride, i, n_rows, C, 2);
        FT m;
        double se = 1;
        if (fb) {
            /* softmax: the exps of the blocks go to o, times f_b / se below */
            int code = NAME(row_sumexp_blocks)(xi, C, inv_t, check_finite,
                                               KD_ERR_NONFINITE_STUDENT, KD_ERR_ALLINF_STUDENT,
                                               0, log_space ? NULL : o, fb, next, &m, &se, NULL);
            if (code != KD_OK) {
                KD_RECORD_ERROR(code, i, bad_code, bad_row);
                continue;
            }
        } else if (prepass) {
            m = maxes[i];
        } else {
            int code = NAME(check_row)(xi, C, check_finite, KD_ERR_NONFINITE_STUDENT,
                                       KD_ERR_ALLINF_STUDENT, &m);
            if (code != KD_OK) {
                KD_RECORD_ERROR(code, i, bad_code, bad_row);
                continue;
            }
        }
        if (log_space) {
            if (!fb)
                se = NAME(row_sumexp)(xi, C, m, inv_t, next);
            const FT lse = (FT)log(se);
            int64_t j = 0;
            for (; j + VL <= C; j += VL)
                VSTORE(o + j, (VLOAD(xi + j) - m) * inv_t - lse);
            for (; j < C; j++)
                o[j] = (xi[j] - m) * inv_t - lse;
        } else if (fb) {
            NAME(scale_blocks)(o, C, fb, 1.0 / se, (FT)0);
        } else {
            /* the exps of the sum pass are kept in o and scaled */
            const FT inv_se =
                (FT)(1.0 / NAME(row_sumexp_store)(xi, C, m, inv_t, o, next, next_o));
            int64_t j = 0;
            for (; j + VL <= C; j += VL)
                VSTORE(o + j, VLOAD(o + j) * inv_se);
            for (; j < C; j++)
                o[j] *= inv_se;
        }
    }
    kd_team_finish(&team);
    free(fb);
    }
    free(maxes);
    if (bad_code != KD_OK) {
        status->row = bad_row;
        return status->code = bad_code;
    }
    return KD_OK;
}

int NAME(kd_lse)(int64_t n_rows, int64_t n_cols, const FT *x, int64_t x_stride,
                 kd_temps t, int check_finite, double *out, int n_threads,
                 kd_status *status)
{
    const int64_t C = n_cols;
    status->code = KD_OK;
    status->row = -1;
    if (n_rows < 0 || n_cols <= 0)
        return status->code = KD_ERR_ARGUMENT;
    const int par = kd_parallel(n_threads, n_rows, C);
    int64_t bad_row = INT64_MAX;
    int bad_code = KD_OK;
    kd_team team = kd_team_start(C);
#pragma omp parallel num_threads(n_threads) if (par)
    {
#pragma omp for schedule(guided, team.chunk) nowait
    for (int64_t i = 0; i < n_rows; i++) {
        const FT *xi = x + i * x_stride;
        FT m;
        int code = NAME(check_row)(xi, C, check_finite, KD_ERR_NONFINITE_STUDENT,
                                   KD_ERR_ALLINF_STUDENT, &m);
        KD_RECORD_ERROR(code, i, bad_code, bad_row);
        if (code != KD_OK)
            continue;
        const double tt = t.t[i * t.stride];
        const FT inv_t = NAME(inv_temp)(tt);
        out[i] = (double)m / tt +
                 log(NAME(row_sumexp)(xi, C, m, inv_t,
                                      NAME(next_row)(xi, x_stride, i, n_rows, C, 1)));
    }
    kd_team_finish(&team);
    }
    if (bad_code != KD_OK) {
        status->row = bad_row;
        return status->code = bad_code;
    }
    return KD_OK;
}

/* ---- diagnostics ------------------------------------------------------- */

int NAME(kd_row_stats)(int64_t n_rows, int64_t n_cols, const FT *x, int64_t x_stride,
                       kd_temps t, const kd_rows *rows, int check_finite,
                       const kd_stats_out *o, int n_threads, kd_status *status)
{
    const int64_t C = n_cols;
    status->code = KD_OK;
    status->row = -1;
    if (n_rows < 0 || n_cols <= 0)
        return status->code = KD_ERR_ARGUMENT;
    const int par = kd_parallel(n_threads, n_rows, C);
    int64_t bad_row = INT64_MAX;
    int bad_code = KD_OK;
    kd_team team = kd_team_start(C);
#pragma omp parallel num_threads(n_threads) if (par)
    {
#pragma omp for schedule(guided, team.chunk) nowait
    for (int64_t i = 0; i < n_rows; i++) {
        const FT *xi = x + i * x_stride;
        if (!kd_row_counts(rows, i)) {
            o->max[i] = o->lse[i] = o->mean[i] = o->std[i] = NAN;
            o->entropy[i] = o->top1[i] = o->ce[i] = NAN;
            o->argmax[i] = -1;
            o->correct[i] = 0;
            continue;
        }
        FT m;
        NAME(row_dev) dev;
        int code = NAME(check_row_dev)(xi, C, check_finite, KD_ERR_NONFINITE_STUDENT,
                                       KD_ERR_ALLINF_STUDENT, 0, &m, &dev);
        int64_t y = rows->labels ? rows->labels[i * rows->labels_stride] : 0;
        if (code == KD_OK && rows->labels && (y < 0 || y >= C))
            code = KD_ERR_LABEL;
        KD_RECORD_ERROR(code, i, bad_code, bad_row);
        if (code != KD_OK)
            continue;
        const double tt = t.t[i * t.stride];
        const FT inv_t = NAME(inv_temp)(tt);
        /* s = sum e_j, H' = sum e_j b_j with b = (x - m)/t, e = exp(b):
         * entropy = log s - H'/s, top-1 probability = 1/s (the max has e = 1) */
        ACC accS = {0}, accH = {0};
        const VEC zero = {0};
        const FT *next = NAME(next_row)(xi, x_stride, i, n_rows, C, 1);
        int64_t j = 0;
        double tops_sum = 0;
#if KD_FLOAT_ROWS
        /* folded as the partition sums of CE (row_sumexp_store_as): a
         * confident row's log s and entropy are sums of small terms; 1.2x */
        VTOPS tops = {0};
        j = NAME(sumexp_fold)(0, 0, xi, C, m, inv_t, NULL, next, NULL, &accS, &accH, &tops);
        tops_sum = (double)VTOPS_COUNT(tops);
#endif
        for (; j + VL <= C; j += VL) {
            KD_PREFETCH(next, xi, j);
            VEC b = (VLOAD(xi + j) - m) * inv_t, e = VEXP(b);
            ACC_ADD(&accS, e);
            ACC_MUL(&accH, e, VSEL(e > zero, b, zero));
        }
        if (j < C) {
            VEC b = (NAME(load_tail)(xi + j, C - j, -INFINITY) - m) * inv_t, e = VEXP(b);
            ACC_ADD(&accS, e);
            ACC_MUL(&accH, e, VSEL(e > zero, b, zero));
        }
        const double s = ACC_SUM(accS) + tops_sum, h = ACC_SUM(accH);
        /* the first maximum, as numpy.argmax: whole vectors up to the one
         * that holds it, then elements (an element at a time, this scan of
         * half a row on average cost 1/7 of the call: 111-117 -> 96-97 ms at
         * 2048 x 32000, 141-143 -> 121 ms at 512 x 151936, one thread) */
        int64_t am = 0;
        const VEC vm = (VEC){0} + m;
        for (; am + VL <= C && !VANY_EQ(VLOAD(xi + am), vm); am += VL)
            ;
        while (am < C - 1 && xi[am] != m)
            am++;
        o->max[i] = (double)m;
        o->lse[i] = (double)m / tt + log(s);
        o->mean[i] = dev.mean;
        o->std[i] = dev.std;
        o->entropy[i] = log(s) - h / s;
        o->top1[i] = 1.0 / s;
        o->argmax[i] = am;
        if (rows->labels) {
            const double s1 = inv_t == (FT)1 ? s : NAME(row_sumexp)(xi, C, m, (FT)1, NULL);
            o->ce[i] = (double)m + log(s1) - (double)xi[y];
            o->correct[i] = am == y;
        } else {
            o->ce[i] = NAN;
            o->correct[i] = 0;
        }
    }
    kd_team_finish(&team);
    }
    if (bad_code != KD_OK) {
        status->row = bad_row;
        return status->code = bad_code;
    }
    return KD_OK;
}

/* One pass over a row pair at temperature T for every quantity of the
 * temperature profile (spec/diagnostics.md); the squared gradient norm comes
 * from sum (pS - pT)^2 = sum pS^2 - 2 sum pS pT + sum pT^2, so no second
 * pass is needed. The partition sums, A and the entropies' sums fold float
 * partials as forward KL's (row_kl_sums); the three sums of products stay
 * double term by term: the norm cancels them to (pS - pT)^2, which is small
 * where the two agree. Writes KD_PROFILE_FIELDS values into out. */
static void NAME(row_profile)(const FT *z, const FT *v, int64_t C, FT mz, FT mv, double T,
                              double *out, const FT *nz, const FT *nv)
{
    const FT inv = NAME(inv_temp)(T);
    const FT ts = (FT)KD_TERM_SCALE;
    const VEC zero = {0};
    NAME(rsum) sS = NAME(rsum_zero)(), sT = sS, A = sS, hS = sS, hT = sS;
    ACC pSS = {0}, pST = {0}, pTT = {0};
    int k = 0;
    for (int64_t j = 0; j < C; j += VL) {
        const int full = j + VL <= C;
        KD_PREFETCH(nz, z, j);
        KD_PREFETCH(nv, v, j);
        VEC zz = full ? VLOAD(z + j) : NAME(load_tail)(z + j, C - j, -INFINITY);
        VEC vv = full ? VLOAD(v + j) : NAME(load_tail)(v + j, C - j, -INFINITY);
        VEC eS, eT;
        NAME(kl_sums_step)(0, zz, vv, mz, mv, inv, inv, &sS, &sT, &A, NULL, &eS, &eT);
        VEC b = (zz - mz) * inv, a = (vv - mv) * inv;
        hS.part = VFMA(eS, VSEL(eS > zero, b, zero) * ts, hS.part);
        hT.part = VFMA(eT, VSEL(eT > zero, a, zero) * ts, hT.part);
        ACC_MUL(&pSS, eS, eS);
        ACC_MUL(&pST, eS, eT);
        ACC_MUL(&pTT, eT, eT);
        NAME(kl_sums_fold)(0, &k, &sS, &sT, &A, NULL);
        if (k == 0) {
            NAME(rsum_fold)(&hS);
            NAME(rsum_fold)(&hT);
        }
    }
    const double s_S = NAME(rsum_total)(sS), s_T = NAME(rsum_total)(sT);
    const double lS = log(s_S), lT = log(s_T);
    double kl = NAME(rsum_total_scaled)(A) / s_T - lT + lS;
    double g2 = ACC_SUM(pSS) / (s_S * s_S) - 2.0 * ACC_SUM(pST) / (s_S * s_T) +
                ACC_SUM(pTT) / (s_T * s_T);
    out[KD_PROFILE_KD] = T * T * (kl > 0 ? kl : 0.0);
    out[KD_PROFILE_GRAD2] = T * T * (g2 > 0 ? g2 : 0.0);
    out[KD_PROFILE_H_TEACHER] = lT - NAME(rsum_total_scaled)(hT) / s_T;
    out[KD_PROFILE_H_STUDENT] = lS - NAME(rsum_total_scaled)(hS) / s_S;
    out[KD_PROFILE_TOP1_TEACHER] = 1.0 / s_T;
    out[KD_PROFILE_GAP] = ((double)mv / T + lT) - ((double)mz / T + lS);
}

int NAME(kd_profile)(int64_t n_rows, int64_t n_cols, const FT *student,
                     int64_t student_stride, const FT *teacher, int64_t teacher_stride,
                     const double *temperatures, int64_t n_temps, const kd_rows *rows,
                     int check_finite, double *row_out, int n_threads, kd_status *status)
{
    const int64_t C = n_cols;
    status->code = KD_OK;
    status->row = -1;
    if (n_rows < 0 || n_cols <= 0 || n_temps < 0)
        return status->code = KD_ERR_ARGUMENT;
    const int par = kd_parallel(n_threads, n_rows, C * (n_temps > 0 ? n_temps : 1));
    int64_t bad_row = INT64_MAX;
    int bad_code = KD_OK;
    kd_team team = kd_team_start(C * (n_temps > 0 ? n_temps : 1));
#pragma omp parallel num_threads(n_threads) if (par)
    {
#pragma omp for schedule(guided, team.chunk) nowait
    for (int64_t i = 0; i < n_rows; i++) {
        double *ro = row_out + i * n_temps * KD_PROFILE_FIELDS;
        if (!kd_row_counts(rows, i)) {
            for (int64_t q = 0; q < n_temps * KD_PROFILE_FIELDS; q++)
                ro[q] = 0.0;
            continue;
        }
        const FT *z = student + i * student_stride, *v = teacher + i * teacher_stride;
        FT mz, mv;
        int code = NAME(check_row)(z, C, check_finite, KD_ERR_NONFINITE_STUDENT,
                                   KD_ERR_ALLINF_STUDENT, &mz);
        if (code == KD_OK)
            code = NAME(check_row)(v, C, check_finite, KD_ERR_NONFINITE_TEACHER,
                                   KD_ERR_ALLINF_TEACHER, &mv);
        KD_RECORD_ERROR(code, i, bad_code, bad_row);
        if (code != KD_OK)
            continue;
        /* the row stays in cache across the temperatures: one pass over
         * memory, and the first temperature's pass prefetches the next row */
        const FT *nz = NAME(next_row)(z, student_stride, i, n_rows, C, 2);
        const FT *nv = NAME(next_row)(v, teacher_stride, i, n_rows, C, 2);
        for (int64_t k = 0; k < n_temps; k++)
            NAME(row_profile)(z, v, C, mz, mv, temperatures[k], ro + k * KD_PROFILE_FIELDS,
                              k == 0 ? nz : NULL, k == 0 ? nv : NULL);
    }
    kd_team_finish(&team);
    }
    if (bad_code != KD_OK) {
        status->row = bad_row;
        return status->code = bad_code;
    }
    return KD_OK;
}

/* ---- DTS's batch cross-entropies ----------------------------------------- */

/* One row's CE at t = 1 (as kd_forward's hard-label term: lse1 - z_y), or
 * the row's error code. */
static int NAME(row_ce1)(const FT *x, int64_t C, int64_t y, int check_finite,
                         int err_nonfinite, int err_allinf, double *fb, double *ce,
                         const FT *next)
{
    FT m;
    double s = 1;
    int code;
    if (fb && C >= 2 * KD_SUM_BLOCK) {
        code = NAME(row_sumexp_blocks)(x, C, (FT)1, check_finite, err_nonfinite, err_allinf, 0,
                                       NULL, fb, next, &m, &s, NULL);
    } else {
        code = NAME(check_row)(x, C, check_finite, err_nonfinite, err_allinf, &m);
        if (code == KD_OK)
            s = NAME(row_sumexp)(x, C, m, (FT)1, next);
    }
    if (code == KD_OK)
        *ce = ((double)m + log(s)) - (double)x[y];
    return code;
}

int NAME(kd_ce_pair)(int64_t n_rows, int64_t student_cols, const FT *student,
                     int64_t student_stride, int64_t teacher_cols, const FT *teacher,
                     int64_t teacher_stride, const kd_rows *rows, int check_finite,
                     double *row_ce, double *student_sum, double *teacher_sum,
                     int64_t *count, int n_threads, kd_status *status)
{
    status->code = KD_OK;
    status->row = -1;
    if (n_rows < 0 || student_cols <= 0 || teacher_cols <= 0 || !rows->labels)
        return status->code = KD_ERR_ARGUMENT;
    const int64_t C_min = student_cols < teacher_cols ? student_cols : teacher_cols;
    const int par = kd_parallel(n_threads, n_rows, student_cols + teacher_cols);
    /* the first bad row of each kind: labels, student, teacher (the order two
     * ce_loss calls report them in) */
    int64_t bad_row[3] = {INT64_MAX, INT64_MAX, INT64_MAX};
    int bad_code[3] = {KD_OK, KD_OK, KD_OK};

    kd_team team = kd_team_start(student_cols + teacher_cols);
#pragma omp parallel num_threads(n_threads) if (par)
    {
    /* long rows are read once each (row_sumexp_blocks) */
    double *fb = NAME(blocks_buffer)(student_cols > teacher_cols ? student_cols : teacher_cols);
#pragma omp for schedule(guided, team.chunk) nowait
    for (int64_t i = 0; i < n_rows; i++) {
        row_ce[2 * i] = row_ce[2 * i + 1] = 0.0;
        if (!kd_row_counts(rows, i))
            continue;
        const int64_t y = rows->labels[i * rows->labels_stride];
        if (y < 0 || y >= C_min) {
            KD_RECORD_ERROR(KD_ERR_LABEL, i, bad_code[0], bad_row[0]);
            continue;
        }
        /* the student's row, then the teacher's, each while it is in cache;
         * the student's pass prefetches the teacher's row, the teacher's the
         * next student row */
        const FT *zi = student + i * student_stride, *vi = teacher + i * teacher_stride;
        const int fits = (uint64_t)(student_cols + teacher_cols) * sizeof(FT) <=
                         (uint64_t)kd_prefetch_bytes();
        int code = NAME(row_ce1)(zi, student_cols, y, check_finite, KD_ERR_NONFINITE_STUDENT,
                                 KD_ERR_ALLINF_STUDENT, fb, &row_ce[2 * i], fits ? vi : NULL);
        KD_RECORD_ERROR(code, i, bad_code[1], bad_row[1]);
        if (code != KD_OK)
            continue;
        code = NAME(row_ce1)(vi, teacher_cols, y, check_finite, KD_ERR_NONFINITE_TEACHER,
                             KD_ERR_ALLINF_TEACHER, fb, &row_ce[2 * i + 1],
                             fits && i + 1 < n_rows ? zi + student_stride : NULL);
        KD_RECORD_ERROR(code, i, bad_code[2], bad_row[2]);
    }
    kd_team_finish(&team);
    free(fb);
    }
    for (int k = 0; k < 3; k++)
        if (bad_code[k] != KD_OK) {
            status->row = bad_row[k];
            return status->code = bad_code[k];
        }

    /* in row order, as ce_loss's reduction: the same bits for any thread count */
    double s = 0.0, t = 0.0;
    int64_t c = 0;
    for (int64_t i = 0; i < n_rows; i++) {
        s += row_ce[2 * i];
        t += row_ce[2 * i + 1];
        c += kd_row_counts(rows, i);
    }
    *student_sum = s;
    *teacher_sum = t;
    *count = c;
    return KD_OK;
}

#undef NAME
#undef KD_CAT
#undef KD_CAT_
