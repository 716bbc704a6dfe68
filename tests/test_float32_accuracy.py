"""How close float32 losses come to the float64 truth, past the suite's tolerances.

The general tolerances (rtol 1e-5) would let a kernel lose four digits on the
rows where float32 arithmetic is weakest; these tests pin what the kernels do
deliver there, so that a faster summation cannot quietly trade it away:
- CE of confident rows (the label is the row's maximum, the loss is small):
  the partition sum is 1 plus small terms, and a float partial sum holding
  the 1 would round those terms away; float partials leave the maxima's 1s
  out (they are counted exactly), so the loss keeps its relative accuracy,
  on every build and every kernel that takes the sum.
  row_stats' entropy and top-1 probability of such rows likewise.
- KL-type divergences (JSD and the skew KLs too): the loss A/sT - log sT +
  log sS comes out of terms of the size of the log-ratio E|log pT - log pS|,
  so its error is bounded in units of float32's rounding u times that size
  (with 2 for the two logs).
The truth is the NumPy twin in float64 on the same (float32-valued) inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
from isa_builds import builds, using

U32 = 2.0 ** -24
SHAPES = [(512, 100), (64, 1000), (4, 32000)]


def _logits(shape, scale, rng):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _ce_rows(ckd, how, z, y):
    """Per-row CE by each kernel that takes a partition sum at t = 1."""
    if how == "grad":
        return ckd.ce_loss(z, y, reduction="none").loss
    if how == "no_grad":  # the sums without stored exps
        return ckd.ce_loss(z, y, reduction="none", compute_grad=False).loss
    if how == "row_stats":
        return ckd.row_stats(z, labels=y).ce
    rows = np.eye(len(z), dtype=bool)  # ce_pair, one row at a time
    return np.array([ckd.dts.ce_pair(z, z, y, mask=m)[1] for m in rows])


@pytest.mark.parametrize("how", ["grad", "no_grad", "row_stats", "ce_pair"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [3.0, 5.0, 8.0])
def test_ce_confident_rows(ckd, ref, each_isa, how, shape, scale):
    rng = np.random.default_rng(int(scale) * 1000 + shape[1])
    z = _logits(shape, scale, rng)
    y = np.argmax(z, axis=1)
    got = _ce_rows(ckd, how, z, y)
    truth = ref.ce_loss(z.astype(np.float64), y, reduction="none").loss
    assert truth.min() > 0
    # a few roundings of each result, whatever its size: the sums add the
    # exps in double, or in float partials without the maxima's 1s
    rel = np.abs(got - truth) / truth
    assert rel.max() <= 16 * U32, f"worst relative error {rel.max():.2e}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [3.0, 8.0])
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_row_stats_confident_rows(ckd, ref, each_isa, shape, scale, t):
    """row_stats' entropy and top-1 probability of confident rows: log s and
    sum e (x - m)/t, the sums in float partials without the maxima's 1s,
    keep a few roundings of each (small) result."""
    rng = np.random.default_rng(int(scale) * 100 + shape[1])
    z = _logits(shape, scale, rng)
    got = ckd.row_stats(z, t)
    truth = ref.diagnostics.row_stats(z.astype(np.float64), t)
    assert truth.entropy.min() > 0
    for name in ("entropy", "top1_prob", "sharpness"):
        g, w = getattr(got, name), getattr(truth, name)
        rel = np.abs(g - w) / np.abs(w)
        assert rel.max() <= 16 * U32, f"{name}: worst relative error {rel.max():.2e}"


def _log_ratio_size(z, v):
    """2 + sum_j (pS + pT) |log pT - log pS| per row, in float64."""
    lz = z - z.max(axis=1, keepdims=True)
    lv = v - v.max(axis=1, keepdims=True)
    lz = lz - np.log(np.exp(lz).sum(axis=1, keepdims=True))
    lv = lv - np.log(np.exp(lv).sum(axis=1, keepdims=True))
    return 2.0 + np.sum((np.exp(lz) + np.exp(lv)) * np.abs(lv - lz), axis=1)


# JSD, the skew KLs and TVD of float rows run in float lanes (kd_impl.h,
# lane_terms): the mixture logs come from log w, w in [c, 1], so they keep the
# KLs' bound; reverse and symmetric KL take their gradient in float lanes but
# for the log ratio minus the row's loss (rev_lane_grad).
DIVERGENCES = [
    ("kl", {}), ("reverse_kl", {}), ("symmetric_kl", {}),
    ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.95}),
    ("skew_kl", {"alpha": 0.1}), ("skew_kl", {"alpha": 0.9}),
    ("skew_reverse_kl", {"alpha": 0.1}), ("skew_reverse_kl", {"alpha": 0.9}),
]
DIV_IDS = [d + "-" + "-".join(f"{k}{v}" for k, v in kw.items()) for d, kw in DIVERGENCES]
# TVD's loss too; not its gradient, which jumps by pS where pS = pT: an input
# rounding flips such elements in any lanes (the double-lane terms gave 2e5 u)
LOSS_DIVERGENCES = DIVERGENCES + [("tvd", {})]
LOSS_DIV_IDS = DIV_IDS + ["tvd-"]


@pytest.fixture(params=builds())
def each_isa(request):
    """Every instruction-set build this CPU runs (their float lanes differ in width)."""
    with using(request.param):
        yield request.param


def _row_pairs(shape, near, rng):
    """(z, v) float32 pairs at logit scales 1, 5, 20, teacher near or far."""
    for scale in (1.0, 5.0, 20.0):
        z = _logits(shape, scale, rng)
        noise = rng.standard_normal(shape) * (1e-2 * scale if near else scale)
        yield scale, z, (z + noise).astype(np.float32)


@pytest.mark.parametrize("divergence,kw", LOSS_DIVERGENCES, ids=LOSS_DIV_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("near", [False, True], ids=["far", "near"])
def test_kl_error_in_roundings(ckd, ref, each_isa, divergence, kw, shape, near):
    rng = np.random.default_rng(shape[1] + 7 * near)
    for scale, z, v in _row_pairs(shape, near, rng):
        got = ckd.kd_loss(z, v, temperature=1.0, divergence=divergence,
                          reduction="none", **kw).loss
        z64, v64 = z.astype(np.float64), v.astype(np.float64)
        truth = ref.kd_loss(z64, v64, temperature=1.0, divergence=divergence,
                            reduction="none", **kw).loss
        roundings = np.abs(got - truth) / (U32 * _log_ratio_size(z64, v64))
        assert roundings.max() <= 3.0, f"scale {scale}: {roundings.max():.2f} u"


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("divergence,kw", DIVERGENCES, ids=DIV_IDS)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_grad_error_in_roundings(ckd, ref, each_isa, divergence, kw, temperature):
    """Each gradient element within a few roundings of the probabilities it comes from.

    A float exp of the shifted logit b = (z - max z) / T is off by about u |b|
    relative, so the bound per element is u (pS + pT) (1 + |b| + |a|) T (the
    T^2 scale over the 1/T of the chain rule). Reverse KL's h = pS (log pS -
    log pT - R) carries the log ratio and the row's loss R too, so it gets the
    factor |b - a| + (a bound on R) as well. Probabilities below float's
    smallest normal flush to 0, which costs up to that normal times the size
    of the element's log terms.
    """
    T = temperature
    for shape in SHAPES:
        for near in (False, True):
            rng = np.random.default_rng(shape[1] + near)
            for scale, z, v in _row_pairs(shape, near, rng):
                got = ckd.kd_loss(z, v, temperature=T, divergence=divergence,
                                  reduction="none", **kw).grad
                z64, v64 = z.astype(np.float64), v.astype(np.float64)
                truth = ref.kd_loss(z64, v64, temperature=T, divergence=divergence,
                                    reduction="none", **kw).grad
                b = (z64.max(axis=1, keepdims=True) - z64) / T
                a = (v64.max(axis=1, keepdims=True) - v64) / T
                size = (_softmax(z64 / T) + _softmax(v64 / T)) * (1.0 + a + b)
                if divergence in ("reverse_kl", "symmetric_kl"):
                    size = size * (np.abs(a - b) + _log_ratio_size(z64 / T, v64 / T)[:, None])
                flushed = np.finfo(np.float32).tiny * (2.0 + a + b + np.abs(a - b))
                bound = T * (8.0 * U32 * size + flushed)
                worst = (np.abs(got - truth) / bound).max()
                assert worst <= 1.0, f"{shape} near={near} scale {scale}: {8 * worst:.1f} u"


@pytest.mark.parametrize("divergence,name", [("jsd", "beta"), ("skew_kl", "alpha"),
                                             ("skew_reverse_kl", "alpha")])
@pytest.mark.parametrize("c", [0.0, 2.0 ** -70, 1.0 - 2.0 ** -53])
def test_mixture_weights_off_the_float_lanes(ckd, ref, divergence, name, c):
    """Weights below 2^-60 of M (w would not be a normal float) take the double lanes."""
    if divergence == "jsd" and c == 0.0:
        pytest.skip("JSD's beta is in (0, 1)")
    rng = np.random.default_rng(3)
    z = _logits((64, 1000), 5.0, rng)
    v = _logits((64, 1000), 5.0, rng)
    got = ckd.kd_loss(z, v, temperature=2.0, divergence=divergence, reduction="none",
                      **{name: c})
    truth = ref.kd_loss(z.astype(np.float64), v.astype(np.float64), temperature=2.0,
                        divergence=divergence, reduction="none", **{name: c})
    assert np.all(np.isfinite(got.loss)) and np.all(np.isfinite(got.grad))
    np.testing.assert_allclose(got.loss, truth.loss, rtol=1e-5, atol=1e-6)
    # gradient elements are differences of terms up to 1 in size
    np.testing.assert_allclose(got.grad, truth.grad, rtol=1e-4, atol=8 * U32)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl"])
@pytest.mark.parametrize("c", [64, 1000])
def test_kl_terms_near_float_max(ckd, ref, divergence, c):
    """Terms p (log p - log q) near FLT_MAX: their sum overflows float, not double."""
    z = np.full((2, c), -3e38, dtype=np.float32)
    z[:, 0] = 0.0
    v = np.zeros((2, c), dtype=np.float32)
    if divergence == "reverse_kl":
        z, v = v, z
    got = ckd.kd_loss(z, v, temperature=1.0, divergence=divergence, reduction="none").loss
    truth = ref.kd_loss(z.astype(np.float64), v.astype(np.float64), temperature=1.0,
                        divergence=divergence, reduction="none").loss
    assert np.all(np.isfinite(truth)) and truth.min() > 1e38
    np.testing.assert_allclose(got, truth, rtol=1e-6)


@pytest.mark.parametrize("lo,hi,bound", [(-10.0, 0.0, 3.5), (-80.0, -10.0, 7.0)])
def test_exp_error_per_element(ckd, each_isa, lo, hi, bound):
    """Each float exp within a few roundings of exp, through softmax.

    Rows hold one 0 (the maximum, so the exps are of the logits themselves)
    and logits in [lo, hi): softmax_j = exp(x_j) / s with s = 1 + small
    terms, so p_j is the kernel's exp times a rounded 1/s, one rounding or
    two from the truth. The fused builds reduce by ln 2 rounded to float
    (kd_math.h, KD_EXPF_REDUCE): 1.5 roundings for x >= -10 and 5 near the
    float floor (the AVX-512 build's table exp 1.8 and 5.3), where a careless reduction (the product x log2(e) rounded
    first: 9 and 65) would show.
    """
    rng = np.random.default_rng(int(-lo))
    x = rng.uniform(lo, hi, (64, 1001)).astype(np.float32)
    x[:, 0] = 0.0
    got = ckd.softmax(x).astype(np.float64)
    e = np.exp(x.astype(np.float64))
    truth = e / e.sum(axis=1, keepdims=True)
    roundings = np.abs(got - truth) / (U32 * truth)
    assert roundings.max() <= bound, f"{roundings.max():.2f} u"
