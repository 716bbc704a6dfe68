/* Per-element terms of the divergences other than forward KL (spec/kd.md),
 * four double lanes at a time (float logits are widened first, their exps
 * stay float; JSD, the skew KLs and TVD of float rows have float-lane terms
 * of their own, kd_impl.h's lane_terms, and reverse and symmetric KL a
 * float-lane gradient, rev_lane_grad). For element j: d_j, its share of
 * D = sum_j d_j, and
 * h_j = pS_j dD/dpS_j, so that dD/dz_j = (1/tS)(h_j - pS_j sum_k h_k).
 * Terms with a zero probability in front are 0 (0 log 0 = 0), but skew KL's
 * h = -pT (1 - alpha) pS / M, -pT at alpha = 0 where pS underflows. `div` is a
 * constant where this is inlined, so each divergence gets its own loop. */
#ifndef KDTEMP_KD_DIV_H
#define KDTEMP_KD_DIV_H

#include "kd.h"
#include "kd_math.h"

/* Below these a mixture M = cT pT + cS pS is not summed from the
 * probabilities: float rows' exps flush to 0 below 2^-126 and keep fewer
 * digits near it, and kd_log_v4d takes no subnormal. */
#define KD_MIX_TINY_F 0x1p-100
#define KD_MIX_TINY_D 0x1p-1000
/* the one of the kd_impl.h instance at hand */
#define KD_MIX_TINY (KD_FLOAT_ROWS ? KD_MIX_TINY_F : KD_MIX_TINY_D)

/* log M, and q = cS pS / M (in [0, 1]), for the mixture M = cT pT + cS pS
 * of JSD and the skew KLs. Lanes where M < tiny take them from the
 * log-probabilities,
 *     log M = hi + log(1 + e^(lo - hi)),  hi, lo the larger and smaller of
 *     x = log cT + log pT and y = log cS + log pS,   q = e^(y - log M):
 * there log M is finite while M may be 0 (alpha = 0 makes skew reverse KL
 * reverse KL, M = pT, whose float exp is 0 at log pT = -151: its terms
 * pS (log pS - log M) were +inf, the reference's ~150 pS), and q stays
 * the ratio where pS has underflowed (skew KL's h = -pT q, -pT at
 * alpha = 0). Rare: only vectors with such elements pay for the exps. */
KD_VINLINE kd_v4d kd_log_mix_v4d(kd_v4d M, kd_v4d pS, kd_v4d lpT, kd_v4d lpS, double cT,
                                 double cS, double tiny, int want_q, kd_v4d *q)
{
    kd_v4d lM = kd_log_v4d(M);
    if (want_q)
        *q = cS * pS / M;
    /* one compare on the hot path; lanes masked on both sides (the tail's
     * padding) are sorted out behind it and keep log 0 = -inf */
    if (!kd_any_v4l(M < tiny))
        return lM;
    const kd_v4l small = (M < tiny) & ((lpT > -INFINITY) | (lpS > -INFINITY));
    if (!kd_any_v4l(small))
        return lM;
    /* log cT, log cS (log 0 = -inf); a subnormal weight is scaled into
     * kd_log_v4d's range first */
    const kd_v4d c = {cT, cS, 1, 1};
    const kd_v4l sub = c < 0x1p-1000;
    const kd_v4d lc = kd_log_v4d(kd_sel_v4d(sub, c * 0x1p100, c)) -
                      kd_sel_v4d(sub, (kd_v4d){0} + 100 * 0.69314718055994530942, (kd_v4d){0});
    const kd_v4d x = lpT + lc[0], y = lpS + lc[1];
    const kd_v4d hi = kd_sel_v4d(x > y, x, y), lo = kd_sel_v4d(x > y, y, x);
    /* hi = -inf (log cS = -inf where alpha = 0, and log pT = -inf): log M = -inf */
    const kd_v4d gap = kd_sel_v4d(hi > -INFINITY, lo - hi, (kd_v4d){0} - INFINITY);
    const kd_v4d lMs = hi + kd_log_v4d(1.0 + kd_exp_v4d(gap));
    if (want_q)
        *q = kd_sel_v4d(small, kd_exp_v4d(y - lMs), *q);
    return kd_sel_v4d(small, lMs, lM);
}

/* b = (z - max z)/tS, a = (v - max v)/tT, eS = exp(b), eT = exp(a) (float
 * logits: exps in float, accurate to an ulp); ls, lt = log of the partition
 * sums */
KD_VINLINE void kd_div_terms_v4d(const int div, kd_v4d b, kd_v4d a, kd_v4d eS, kd_v4d eT,
                                 double ls, double lt, double inv_sS, double inv_sT,
                                 double beta, double alpha, double tiny, kd_v4d *pS_out,
                                 kd_v4d *d, kd_v4d *h)
{
    const kd_v4d zero = {0};
    const kd_v4d pS = eS * inv_sS, pT = eT * inv_sT;
    const kd_v4d lpS = b - ls, lpT = a - lt;
    const kd_v4l sp = pS > zero, tp = pT > zero;
    *pS_out = pS;
    switch (div) {
    case KD_DIV_REVERSE_KL: {
        kd_v4d r = kd_sel_v4d(sp, pS * (lpS - lpT), zero);
        *d = r;
        *h = r;
        break;
    }
    case KD_DIV_SYMMETRIC_KL: {
        kd_v4d f = kd_sel_v4d(tp, pT * (lpT - lpS), zero);
        kd_v4d r = kd_sel_v4d(sp, pS * (lpS - lpT), zero);
        *d = f + r;
        *h = r - pT;
        break;
    }
    case KD_DIV_JSD: {
        kd_v4d lM = kd_log_mix_v4d(beta * pT + (1 - beta) * pS, pS, lpT, lpS, beta, 1 - beta,
                                   tiny, 0, NULL);
        kd_v4d f = kd_sel_v4d(tp, beta * pT * (lpT - lM), zero);
        kd_v4d r = kd_sel_v4d(sp, (1 - beta) * pS * (lpS - lM), zero);
        *d = f + r;
        *h = r;
        break;
    }
    case KD_DIV_SKEW_KL: {
        kd_v4d q; /* (1 - alpha) pS / M */
        kd_v4d lM = kd_log_mix_v4d(alpha * pT + (1 - alpha) * pS, pS, lpT, lpS, alpha,
                                   1 - alpha, tiny, 1, &q);
        *d = kd_sel_v4d(tp, pT * (lpT - lM), zero);
        *h = kd_sel_v4d(tp, -pT * q, zero);
        break;
    }
    case KD_DIV_SKEW_REVERSE_KL: {
        kd_v4d q; /* alpha pS / M */
        kd_v4d lM = kd_log_mix_v4d(alpha * pS + (1 - alpha) * pT, pS, lpT, lpS, 1 - alpha,
                                   alpha, tiny, 1, &q);
        kd_v4d r = kd_sel_v4d(sp, pS * (lpS - lM), zero);
        *d = r;
        *h = kd_sel_v4d(sp, r - pS * q, zero);
        break;
    }
    default: { /* KD_DIV_TVD */
        kd_v4d diff = pS - pT;
        *d = 0.5 * kd_sel_v4d(diff < zero, -diff, diff);
        *h = kd_sel_v4d(diff > zero, 0.5 * pS, kd_sel_v4d(diff < zero, -0.5 * pS, zero));
        break;
    }
    }
}

#endif
