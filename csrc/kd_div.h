/* Per-element terms of the divergences other than forward KL (spec/kd.md),
 * four double lanes at a time (float logits are widened first, their exps
 * stay float; JSD, the skew KLs and TVD of float rows have float-lane terms
 * of their own, kd_impl.h's lane_terms, and reverse and symmetric KL a
 * float-lane gradient, rev_lane_grad). For element j: d_j, its share of
 * D = sum_j d_j, and
 * h_j = pS_j dD/dpS_j, so that dD/dz_j = (1/tS)(h_j - pS_j sum_k h_k).
 * Terms with a zero probability in front are 0 (0 log 0 = 0). `div` is a
 * constant where this is inlined, so each divergence gets its own loop. */
#ifndef KDTEMP_KD_DIV_H
#define KDTEMP_KD_DIV_H

#include "kd.h"
#include "kd_math.h"

/* b = (z - max z)/tS, a = (v - max v)/tT, eS = exp(b), eT = exp(a) (float
 * logits: exps in float, accurate to an ulp); ls, lt = log of the partition
 * sums */
KD_VINLINE void kd_div_terms_v4d(const int div, kd_v4d b, kd_v4d a, kd_v4d eS, kd_v4d eT,
                                 double ls, double lt, double inv_sS, double inv_sT,
                                 double beta, double alpha, kd_v4d *pS_out, kd_v4d *d,
                                 kd_v4d *h)
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
        kd_v4d lM = kd_log_v4d(beta * pT + (1 - beta) * pS);
        kd_v4d f = kd_sel_v4d(tp, beta * pT * (lpT - lM), zero);
        kd_v4d r = kd_sel_v4d(sp, (1 - beta) * pS * (lpS - lM), zero);
        *d = f + r;
        *h = r;
        break;
    }
    case KD_DIV_SKEW_KL: {
        kd_v4d M = alpha * pT + (1 - alpha) * pS;
        *d = kd_sel_v4d(tp, pT * (lpT - kd_log_v4d(M)), zero);
        *h = kd_sel_v4d(M > zero, -(1 - alpha) * pT * pS / M, zero);
        break;
    }
    case KD_DIV_SKEW_REVERSE_KL: {
        kd_v4d M = alpha * pS + (1 - alpha) * pT;
        kd_v4d r = kd_sel_v4d(sp, pS * (lpS - kd_log_v4d(M)), zero);
        *d = r;
        *h = kd_sel_v4d(sp, r - alpha * pS * pS / M, zero);
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
