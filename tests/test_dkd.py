"""DKD (kdtemp.dkd_loss) against its NumPy twin (kdtemp.reference.dkd) and against
PyTorch: mdistiller's DKD formula with the target class excluded exactly, written in
log space, with autograd for the gradient; plus mdistiller's literal code (the
``- 1000 * gt_mask`` trick, probabilities) where the two agree.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import kdtemp
from isa_builds import builds, using
from kdtemp.reference import dkd as ref

IMPLS = {"kdtemp": kdtemp, "reference": ref}


def _rng(request) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _logits(rng, shape, dtype, spread=3.0):
    return np.asarray(rng.normal(0.0, spread, size=shape), dtype=dtype)


# --------------------------------------------------------------------------------
# PyTorch oracles
# --------------------------------------------------------------------------------

def _counted(labels, mask, ignore_index, n):
    counted = np.asarray(labels).reshape(n) != ignore_index
    if mask is not None:
        counted &= np.asarray(mask, bool).reshape(n)
    return counted


def torch_dkd(student, teacher, labels, *, temperature=4.0, alpha=1.0, beta=8.0,
              ignore_index=-100, mask=None, kd_weight=1.0, ce_weight=0.0,
              label_smoothing=0.0, reduction="batchmean"):
    """(loss, grad, count), float64 torch, log space, exact target exclusion:

    log [pS_y, 1 - pS_y] = [a_y - lse(a), lse_{j != y}(a) - lse(a)],  a = z / T
    TCKD = kl_div(log bS, bT), NCKD = kl_div(log_softmax(a with a_y = -inf), ...)
    dkd  = (alpha TCKD + beta NCKD) T^2
    """
    shape = np.shape(student)
    c, lead = shape[-1], shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    z_all = torch.tensor(np.asarray(student, np.float64).reshape(n, c), requires_grad=True)
    v_all = torch.tensor(np.asarray(teacher, np.float64).reshape(n, c))
    counted = _counted(labels, mask, ignore_index, n)
    rows = torch.as_tensor(np.flatnonzero(counted))
    y = torch.as_tensor(np.asarray(labels).reshape(n).astype(np.int64))[rows]
    t = np.asarray(temperature, np.float64)
    t = torch.as_tensor(np.broadcast_to(t.reshape(-1) if t.ndim else t, (n,)).copy())
    t = t[rows][:, None]
    z, v = z_all[rows], v_all[rows]
    a, b = z / t, v / t
    gt = F.one_hot(y, c).bool()
    r = torch.arange(len(rows))

    def binary(x):
        lse = torch.logsumexp(x, 1)
        lse_nt = torch.logsumexp(torch.where(gt, -torch.inf, x), 1)
        return torch.stack([x[r, y] - lse, lse_nt - lse], 1)

    def kl(log_q, p):
        return F.kl_div(torch.where(p > 0, log_q, 0.0), p, reduction="none").sum(1)

    tckd = kl(binary(a), binary(b).exp())
    nckd = kl(F.log_softmax(torch.where(gt, -torch.inf, a), 1),
              F.softmax(torch.where(gt, -torch.inf, b), 1))
    rows_loss = kd_weight * (alpha * tckd + beta * nckd) * t[:, 0] ** 2
    if ce_weight:
        rows_loss = rows_loss + ce_weight * F.cross_entropy(
            z, y, reduction="none", label_smoothing=label_smoothing)
    count = int(counted.sum())
    total = rows_loss.sum()
    if reduction == "batchmean":
        total = total / count if count else total * 0.0
    grad = torch.zeros(n, c, dtype=torch.float64)
    if count:
        (grad,) = torch.autograd.grad(total, z_all)
    if reduction == "none":
        loss = np.zeros(n)
        loss[counted] = rows_loss.detach().numpy()
        loss = loss.reshape(lead)
    else:
        loss = float(total.detach())
    return loss, grad.numpy().reshape(shape), count


def mdistiller_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    """mdistiller's DKD.py, as written there (``size_average=False`` is
    ``reduction="sum"``)."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, mask1, mask2):
        t1 = (t * mask1).sum(dim=1, keepdims=True)
        t2 = (t * mask2).sum(1, keepdims=True)
        return torch.cat([t1, t2], dim=1)

    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = (F.kl_div(log_pred_student, pred_teacher, reduction="sum")
                 * (temperature**2) / target.shape[0])
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask,
                                           dim=1)
    nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
                 * (temperature**2) / target.shape[0])
    return alpha * tckd_loss + beta * nckd_loss


# --------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------

def assert_close(got, expected, dtype, what=""):
    """float64: rtol 1e-10; float32: rtol 1e-5; atol the same fraction of max |expected|."""
    rtol = 1e-10 if np.dtype(dtype) == np.float64 else 1e-5
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    atol = rtol * float(np.abs(expected).max(initial=0.0)) + 1e-300
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


def check_result(r, expected, dtype, shape, reduction, what=""):
    loss, grad, count = expected
    assert type(r.count) is int and r.count == count, what
    if reduction == "none":
        assert r.loss.dtype == dtype and r.loss.shape == tuple(shape[:-1]), what
    else:
        assert type(r.loss) is float, what
    assert_close(r.loss, loss, dtype, f"{what}: loss")
    assert r.grad.dtype == dtype and r.grad.shape == tuple(shape), what
    assert np.isfinite(r.grad).all(), what
    assert_close(r.grad, grad, dtype, f"{what}: grad")


def compare(student, teacher, labels, what="", **kw):
    dtype, shape = student.dtype, student.shape
    reduction = kw.get("reduction", "batchmean")
    expected = torch_dkd(student, teacher, labels, **kw)
    r = ref.dkd_loss(student, teacher, labels, **kw)
    check_result(r, expected, dtype, shape, reduction, f"reference vs torch {what}")
    c = kdtemp.dkd_loss(student, teacher, labels, **kw)
    check_result(c, (r.loss, r.grad, r.count), dtype, shape, reduction,
                 f"kdtemp vs reference {what}")
    check_result(c, expected, dtype, shape, reduction, f"kdtemp vs torch {what}")
    return c


# --------------------------------------------------------------------------------
# Matrix
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 17), (5, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("tform", ["scalar", "per_row"])
def test_matrix(request, shape, dtype, reduction, tform):
    rng = _rng(request)
    z, v = _logits(rng, shape, dtype), _logits(rng, shape, dtype, spread=5.0)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    t = 4.0 if tform == "scalar" else rng.uniform(1.0, 6.0, size=shape[:-1])
    before = (z.copy(), v.copy())
    compare(z, v, y, temperature=t, reduction=reduction)
    assert np.array_equal(before[0], z) and np.array_equal(before[1], v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha,beta", [(1.0, 8.0), (0.0, 1.0), (2.0, 0.0), (0.5, 0.5)])
def test_alpha_beta(request, dtype, alpha, beta):
    rng = _rng(request)
    z, v = _logits(rng, (9, 21), dtype), _logits(rng, (9, 21), dtype)
    compare(z, v, rng.integers(0, 21, size=9), alpha=alpha, beta=beta, temperature=2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocabulary_sized_rows(request, dtype):
    rng = _rng(request)
    z, v = _logits(rng, (3, 100003), dtype), _logits(rng, (3, 100003), dtype)
    compare(z, v, np.array([0, 50000, 100002]), temperature=2.0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_equals_mdistiller(request, temperature):
    """On ordinary logits the exact exclusion and mdistiller's -1000 trick agree."""
    rng = _rng(request)
    z, v = _logits(rng, (16, 100), np.float64), _logits(rng, (16, 100), np.float64, 6.0)
    y = rng.integers(0, 100, size=16)
    zt = torch.tensor(z, requires_grad=True)
    loss = mdistiller_dkd(zt, torch.tensor(v), torch.as_tensor(y), 1.0, 8.0, temperature)
    (grad,) = torch.autograd.grad(loss, zt)
    for impl in IMPLS.values():
        r = impl.dkd_loss(z, v, y, temperature=temperature)
        np.testing.assert_allclose(r.loss, float(loss.detach()), rtol=1e-10)
        np.testing.assert_allclose(r.grad, grad.numpy(), rtol=1e-9, atol=1e-13)


def test_exact_exclusion_beyond_mdistiller_trick():
    """Logits spanning more than 1000 T: mdistiller's masked target would leak into
    the non-target softmax; kdtemp excludes it exactly."""
    z = np.array([[3000.0, 0.0, 1.0, 2.0], [0.0, 1.0, -1.0, 0.5]])
    v = np.array([[2500.0, 2.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.5]])
    y = np.array([0, 2])
    c = compare(z, v, y, temperature=1.0, reduction="none")
    q = lambda x: np.exp(x[1:] - x[1:].max()) / np.exp(x[1:] - x[1:].max()).sum()
    nckd0 = (q(v[0]) * (np.log(q(v[0])) - np.log(q(z[0])))).sum()
    np.testing.assert_allclose(c.loss[0], 8.0 * nckd0, rtol=1e-10)  # TCKD ~ 0 here


# --------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_class(impl_name, dtype):
    """C = 1: the target is the only class; TCKD and NCKD are 0, gradient 0."""
    z = np.array([[2.0], [-1.0], [0.0]], dtype)
    v = np.array([[-3.0], [5.0], [0.0]], dtype)
    r = IMPLS[impl_name].dkd_loss(z, v, np.zeros(3, np.int64), reduction="none")
    assert r.loss.dtype == dtype and np.all(r.loss == 0)
    assert r.grad.shape == (3, 1) and np.all(r.grad == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("margin,temperature", [(40.0, 1.0), (150.0, 1.0), (600.0, 4.0)])
def test_confident_target(request, dtype, margin, temperature):
    """label = argmax with p_y within e^-margin of 1: log(1 - p_y) is taken as
    lse_nt - lse, so TCKD stays finite and accurate (mdistiller's log of a sum of
    probabilities underflows to -inf once the margin passes ~745 T in float64, ~100 T
    in float32)."""
    rng = _rng(request)
    z = _logits(rng, (6, 30), np.float64, spread=1.0)
    v = _logits(rng, (6, 30), np.float64, spread=1.0)
    y = rng.integers(0, 30, size=6)
    r = np.arange(6)
    z[r, y] = z.max(1) + margin  # the student is sure
    v[r, y] = v.max(1) + np.array([0.5, 2.0, 5.0, margin / 2, margin, 0.0])
    z, v = z.astype(dtype), v.astype(dtype)
    c = compare(z, v, y, temperature=temperature, reduction="none")
    assert np.isfinite(c.loss).all() and np.all(c.loss > 0)


@pytest.mark.parametrize("isa", builds())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ce_weight,temperature", [(0.0, 4.0), (0.5, 1.0), (0.3, 2.0)])
@pytest.mark.parametrize("c", [7, 53, 3001])
def test_target_maximum_or_not(request, isa, dtype, ce_weight, temperature, c):
    """Rows whose target is below both rows' maxima take one sums pass over the
    non-targets (their maxima are the row's) and keep its exps for the
    gradient; a target that is a maximum of either side, alone or tied, takes
    the non-target maxima of their own. Every kind, with the target at either
    end and inside the row, a -inf target and masked entries, on every build,
    against the twin and PyTorch; rows 0-2 and 8-11 take the one pass."""
    rng = _rng(request)
    n = 12
    z, v = _logits(rng, (n, c), np.float64), _logits(rng, (n, c), np.float64, spread=5.0)
    y = np.array([0, c - 1, c // 2, 1, c - 2, c // 3, 0, c - 1, c // 2, 2, c // 4, c - 3])
    r = np.arange(n)
    zmax, vmax = z.max(1), v.max(1)
    z[3, y[3]] = zmax[3] + 1.0                            # the student's unique max
    v[4, y[4]] = vmax[4] + 1.0                            # the teacher's
    z[5, y[5]], v[5, y[5]] = zmax[5] + 2.0, vmax[5] + 0.5  # both
    z[6, y[6]] = zmax[6]                                  # tied with another max
    v[7, y[7]] = vmax[7]
    z[8, y[8]] = zmax[8] - 300.0                          # exps of 0 in float32
    v[9, y[9]] = -np.inf                                  # the teacher rules it out
    hole = rng.random((n, c)) < 0.2                       # masked vocabulary
    hole[r, y] = False
    hole[r, z.argmax(1)] = hole[r, v.argmax(1)] = False
    hole[10:] = False
    z[hole] = v[hole] = -np.inf
    z, v = z.astype(dtype), v.astype(dtype)
    with using(isa):
        compare(z, v, y, temperature=temperature, ce_weight=ce_weight, reduction="none",
                what=isa)
        no_grad = kdtemp.dkd_loss(z, v, y, temperature=temperature, ce_weight=ce_weight,
                                  reduction="none", compute_grad=False)
        full = kdtemp.dkd_loss(z, v, y, temperature=temperature, ce_weight=ce_weight,
                               reduction="none")
    assert np.array_equal(no_grad.loss, full.loss)  # the loss has the same bits either way


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_skipped_rows_and_ce(request, dtype, reduction):
    rng = _rng(request)
    shape = (3, 4, 11)
    z, v = _logits(rng, shape, dtype), _logits(rng, shape, dtype)
    y = rng.integers(0, 11, size=(3, 4))
    y[0, 1] = y[2, 2] = -100
    mask = np.ones((3, 4), bool)
    mask[1, 3] = False
    skipped = (y == -100) | ~mask
    z[skipped] = -np.inf  # padding rows: never looked at
    c = compare(z, v, y, mask=mask, kd_weight=0.5, ce_weight=0.3, label_smoothing=0.1,
                reduction=reduction)
    assert (c.grad[skipped] == 0).all() and c.count == int((~skipped).sum())


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_custom_ignore_index_and_all_skipped(impl_name):
    impl = IMPLS[impl_name]
    z = np.arange(12.0).reshape(3, 4)
    r = impl.dkd_loss(z, -z, np.array([-1, -1, -1]), ignore_index=-1)
    assert r.count == 0 and r.loss == 0.0 and np.all(r.grad == 0)
    r = impl.dkd_loss(z, -z, np.array([-1, 2, -1]), ignore_index=-1, reduction="sum")
    full = impl.dkd_loss(z[1:2], -z[1:2], np.array([2]), reduction="sum")
    assert r.count == 1 and r.loss == pytest.approx(full.loss, rel=1e-12)


def test_neginf_non_target_entries(request):
    """-inf in non-target classes (masked vocabulary) at the same places in both."""
    rng = _rng(request)
    z, v = _logits(rng, (5, 12), np.float64), _logits(rng, (5, 12), np.float64)
    y = np.array([0, 3, 5, 7, 11])
    hole = rng.random((5, 12)) < 0.3
    hole[np.arange(5), y] = False
    hole[:, 1] = hole[:, 1] & (y != 0)  # keep >= 1 other finite class
    hole[0, 1] = False
    z[hole] = v[hole] = -np.inf
    c = compare(z, v, y, temperature=2.0, reduction="none")
    assert (c.grad[hole] == 0).all()


def test_weight_warmup_is_kd_weight(request):
    """mdistiller's min(epoch / 20, 1) factor goes into kd_weight."""
    rng = _rng(request)
    z, v = _logits(rng, (4, 10), np.float64), _logits(rng, (4, 10), np.float64)
    y = rng.integers(0, 10, size=4)
    full = kdtemp.dkd_loss(z, v, y)
    half = kdtemp.dkd_loss(z, v, y, kd_weight=min(10 / 20, 1.0))
    np.testing.assert_allclose(half.loss, 0.5 * full.loss, rtol=1e-14)
    np.testing.assert_allclose(half.grad, 0.5 * full.grad, rtol=1e-14)


@pytest.mark.parametrize("impl_name,ce_weight", [
    ("kdtemp", 0.0), ("reference", 0.0), ("reference", 0.5), ("kdtemp", 0.5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_aliases_student(request, impl_name, ce_weight, dtype):
    """out=student: the gradient overwrites the logits in place and is returned."""
    rng = _rng(request)
    z, v = _logits(rng, (2, 5, 31), dtype), _logits(rng, (2, 5, 31), dtype)
    y = rng.integers(0, 31, size=(2, 5))
    impl = IMPLS[impl_name]
    expected = impl.dkd_loss(z, v, y, ce_weight=ce_weight)
    zz = z.copy()
    r = impl.dkd_loss(zz, v, y, ce_weight=ce_weight, out=zz)
    assert r.grad is zz and r.loss == expected.loss
    np.testing.assert_array_equal(zz, expected.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_determinism(request, dtype):
    rng = _rng(request)
    z, v = _logits(rng, (64, 5000), dtype), _logits(rng, (64, 5000), dtype)
    y = rng.integers(0, 5000, size=64)
    results = [kdtemp.dkd_loss(z, v, y, n_threads=k) for k in (1, 2, 3)]
    for r in results[1:]:
        assert r.loss == results[0].loss and np.array_equal(r.grad, results[0].grad)


# --------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("labels,kw,exc,name", [
    (None, {}, ValueError, "labels"),
    ([0, 3], {}, ValueError, "labels"),
    ([0.0, 1.0], {}, TypeError, "labels"),
    ([0, 1], dict(alpha=-1.0), ValueError, "alpha"),
    ([0, 1], dict(beta=-0.5), ValueError, "beta"),
    ([0, 1], dict(alpha=float("inf")), ValueError, "alpha"),
    ([0, 1], dict(temperature=0.0), ValueError, "temperature"),
    ([0, 1], dict(temperature=-4.0), ValueError, "temperature"),
    ([0, 1], dict(reduction="mean"), ValueError, "reduction"),
    ([0, 1], dict(label_smoothing=2.0), ValueError, "label_smoothing"),
])
def test_bad_arguments(impl_name, labels, kw, exc, name):
    z = np.zeros((2, 3))
    y = None if labels is None else np.asarray(labels)
    with pytest.raises(exc, match=f"`{name}`"):
        IMPLS[impl_name].dkd_loss(z, z + 1.0, y, **kw)


# --------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_property_nonnegative(impl_name, dtype, data):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12))
    elems = st.floats(-50, 50, width=32)
    z = data.draw(hnp.arrays(dtype, shape, elements=elems), label="z")
    v = data.draw(hnp.arrays(dtype, shape, elements=elems), label="v")
    y = np.asarray(data.draw(st.lists(st.integers(0, shape[1] - 1), min_size=shape[0],
                                      max_size=shape[0]), label="y"))
    t = data.draw(st.floats(0.5, 8.0), label="T")
    r = IMPLS[impl_name].dkd_loss(z, v, y, temperature=t, reduction="none")
    assert np.all(r.loss >= 0) and np.isfinite(r.grad).all()
    same = IMPLS[impl_name].dkd_loss(z, z.copy(), y, temperature=t, reduction="none")
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.all(same.loss <= tol * t * t * (1 + np.abs(z).max() / t))
