"""How close float32 losses come to the float64 truth, past the suite's tolerances.

The general tolerances (rtol 1e-5) would let a kernel lose four digits on the
rows where float32 arithmetic is weakest; these tests pin what the kernels do
deliver there, so that a faster summation cannot quietly trade it away:
- CE of confident rows (the label is the row's maximum, the loss is small):
  the partition sum is 1 plus small terms, and a float partial sum holding
  the 1 would round those terms away; the row sums are in double, so the
  loss keeps its relative accuracy.
- KL-type divergences: the loss A/sT - log sT + log sS comes out of terms of
  the size of the log-ratio E|log pT - log pS|, so its error is bounded in
  units of float32's rounding u times that size (with 2 for the two logs).
The truth is the NumPy twin in float64 on the same (float32-valued) inputs.
"""
from __future__ import annotations

import numpy as np
import pytest

U32 = 2.0 ** -24
SHAPES = [(512, 100), (64, 1000), (4, 32000)]


def _logits(shape, scale, rng):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [3.0, 5.0, 8.0])
def test_ce_confident_rows(ckd, ref, shape, scale):
    rng = np.random.default_rng(int(scale) * 1000 + shape[1])
    z = _logits(shape, scale, rng)
    y = np.argmax(z, axis=1)
    got = ckd.ce_loss(z, y, reduction="none").loss
    truth = ref.ce_loss(z.astype(np.float64), y, reduction="none").loss
    assert truth.min() > 0
    # double row sums: a few roundings of each result, whatever its size
    rel = np.abs(got - truth) / truth
    assert rel.max() <= 16 * U32, f"worst relative error {rel.max():.2e}"


def _log_ratio_size(z, v):
    """2 + sum_j (pS + pT) |log pT - log pS| per row, in float64."""
    lz = z - z.max(axis=1, keepdims=True)
    lv = v - v.max(axis=1, keepdims=True)
    lz = lz - np.log(np.exp(lz).sum(axis=1, keepdims=True))
    lv = lv - np.log(np.exp(lv).sum(axis=1, keepdims=True))
    return 2.0 + np.sum((np.exp(lz) + np.exp(lv)) * np.abs(lv - lz), axis=1)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "symmetric_kl"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("near", [False, True], ids=["far", "near"])
def test_kl_error_in_roundings(ckd, ref, divergence, shape, near):
    rng = np.random.default_rng(shape[1] + 7 * near)
    for scale in (1.0, 5.0, 20.0):
        z = _logits(shape, scale, rng)
        noise = rng.standard_normal(shape) * (1e-2 * scale if near else scale)
        v = (z + noise).astype(np.float32)
        got = ckd.kd_loss(z, v, temperature=1.0, divergence=divergence,
                          reduction="none").loss
        z64, v64 = z.astype(np.float64), v.astype(np.float64)
        truth = ref.kd_loss(z64, v64, temperature=1.0, divergence=divergence,
                            reduction="none").loss
        roundings = np.abs(got - truth) / (U32 * _log_ratio_size(z64, v64))
        assert roundings.max() <= 3.0, f"scale {scale}: {roundings.max():.2f} u"


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
