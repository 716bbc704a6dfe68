"""Annealing-KD regression (kdtemp.annealing_loss) against its NumPy twin
(kdtemp.reference.annealing) and against PyTorch: ``F.mse_loss(z, phi * v)`` (the
authors' "mean"), ``((z - phi * v) ** 2).sum(1).mean()`` ("batchmean", the paper),
autograd for the gradient.
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
from kdtemp.reference import annealing as ref

from isa_builds import builds, each_build

IMPLS = {"kdtemp": kdtemp, "reference": ref}
REDUCTIONS = ("batchmean", "mean", "sum", "none")


def _rng(request) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _logits(rng, shape, dtype, spread=3.0):
    return np.asarray(rng.normal(0.0, spread, size=shape), dtype=dtype)


def torch_annealing(student, teacher, phi, *, labels=None, ignore_index=-100, mask=None,
                    reduction="batchmean"):
    shape = np.shape(student)
    c, lead = shape[-1], shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    z_all = torch.tensor(np.asarray(student, np.float64).reshape(n, c), requires_grad=True)
    v_all = torch.tensor(np.asarray(teacher, np.float64).reshape(n, c))
    counted = np.ones(n, bool)
    if labels is not None:
        counted &= np.asarray(labels).reshape(n) != ignore_index
    if mask is not None:
        counted &= np.asarray(mask, bool).reshape(n)
    rows = torch.as_tensor(np.flatnonzero(counted))
    z, v = z_all[rows], v_all[rows]
    count = int(counted.sum())
    if reduction == "mean":
        total = F.mse_loss(z, phi * v) if count else z.sum() * 0.0
    elif reduction == "batchmean":
        total = ((z - phi * v) ** 2).sum(1).mean() if count else z.sum() * 0.0
    else:
        per_row = ((z - phi * v) ** 2).sum(1)
        total = per_row.sum()
    (grad,) = torch.autograd.grad(total, z_all)
    if reduction == "none":
        loss = np.zeros(n)
        loss[counted] = per_row.detach().numpy()
        loss = loss.reshape(lead)
    else:
        loss = float(total.detach())
    return loss, grad.numpy().reshape(shape), count


def check(r, expected, dtype, shape, reduction, what=""):
    loss, grad, count = expected
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert type(r.count) is int and r.count == count, what
    if reduction == "none":
        assert r.loss.dtype == dtype and r.loss.shape == tuple(shape[:-1]), what
    else:
        assert type(r.loss) is float, what
    np.testing.assert_allclose(r.loss, loss, rtol=rtol,
                               atol=rtol * np.abs(loss).max(initial=0) + 1e-300, err_msg=what)
    assert r.grad.dtype == dtype and r.grad.shape == tuple(shape), what
    np.testing.assert_allclose(r.grad, grad, rtol=rtol,
                               atol=rtol * np.abs(grad).max(initial=0) + 1e-300, err_msg=what)


def compare(student, teacher, phi, what="", **kw):
    dtype, shape = student.dtype, student.shape
    reduction = kw.get("reduction", "batchmean")
    expected = torch_annealing(student, teacher, phi, **kw)
    r = ref.annealing_loss(student, teacher, phi, **kw)
    check(r, expected, dtype, shape, reduction, f"reference vs torch {what}")
    c = kdtemp.annealing_loss(student, teacher, phi, **kw)
    check(c, (r.loss, r.grad, r.count), dtype, shape, reduction, f"kdtemp vs reference {what}")
    check(c, expected, dtype, shape, reduction, f"kdtemp vs torch {what}")
    return c


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (2, 3, 17), (13,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("phi", [0.1, 0.7, 1.0])
def test_matrix(request, shape, dtype, reduction, phi):
    rng = _rng(request)
    z, v = _logits(rng, shape, dtype), _logits(rng, shape, dtype, spread=8.0)
    before = (z.copy(), v.copy())
    compare(z, v, phi, reduction=reduction)
    assert np.array_equal(before[0], z) and np.array_equal(before[1], v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocabulary_sized_rows(request, dtype):
    rng = _rng(request)
    z, v = _logits(rng, (3, 100003), dtype), _logits(rng, (3, 100003), dtype)
    compare(z, v, 0.3, reduction="mean")


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_mean_is_batchmean_over_classes(request, impl_name):
    rng = _rng(request)
    z, v = _logits(rng, (6, 20), np.float64), _logits(rng, (6, 20), np.float64)
    impl = IMPLS[impl_name]
    bm, mean = impl.annealing_loss(z, v, 0.5), impl.annealing_loss(z, v, 0.5, reduction="mean")
    np.testing.assert_allclose(mean.loss, bm.loss / 20, rtol=1e-14)
    np.testing.assert_allclose(mean.grad, bm.grad / 20, rtol=1e-14)
    np.testing.assert_allclose(bm.grad, 2 * (z - 0.5 * v) / 6, rtol=1e-14)


def test_with_the_schedule(request):
    """phi from AnnealingSchedule: the first phase-1 epoch regresses onto v / tau_max,
    the last onto v."""
    rng = _rng(request)
    z, v = _logits(rng, (4, 10), np.float64), _logits(rng, (4, 10), np.float64)
    sched = kdtemp.AnnealingSchedule(max_temperature=10, phase1_epochs=200, phase2_epochs=200)
    first = kdtemp.annealing_loss(z, v, sched.phi(0), reduction="sum")
    last = kdtemp.annealing_loss(z, v, sched.phi(199), reduction="sum")
    np.testing.assert_allclose(first.loss, ((z - v / 10) ** 2).sum(), rtol=1e-13)
    np.testing.assert_allclose(last.loss, ((z - v) ** 2).sum(), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("skip_by", ["mask", "labels", "both"])
def test_skipped_rows(request, dtype, reduction, skip_by):
    """Rows are skipped by mask or labels == ignore_index (labels only select rows:
    any other value counts, even outside [0, C)); skipped rows are never checked."""
    rng = _rng(request)
    shape = (3, 4, 9)
    z, v = _logits(rng, shape, dtype), _logits(rng, shape, dtype)
    labels = mask = None
    skipped = np.zeros((3, 4), bool)
    if skip_by in ("labels", "both"):
        labels = rng.integers(-5, 50, size=(3, 4))
        labels[0, 0] = labels[2, 1] = -100
        skipped |= labels == -100
    if skip_by in ("mask", "both"):
        mask = np.ones((3, 4), bool)
        mask[1, 2:] = False
        skipped |= ~mask
    z[skipped] = np.nan
    v[skipped] = -np.inf
    c = compare(z, v, 0.4, labels=labels, mask=mask, reduction=reduction)
    assert (c.grad[skipped] == 0).all() and c.count == int((~skipped).sum())


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_skipped(impl_name, reduction):
    z = np.ones((3, 5))
    r = IMPLS[impl_name].annealing_loss(z, 2 * z, 0.5, mask=np.zeros(3, bool),
                                        reduction=reduction)
    assert r.count == 0 and np.all(r.loss == 0) and np.all(r.grad == 0)


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_aliases_student(request, impl_name, dtype):
    rng = _rng(request)
    z, v = _logits(rng, (2, 5, 31), dtype), _logits(rng, (2, 5, 31), dtype)
    impl = IMPLS[impl_name]
    expected = impl.annealing_loss(z, v, 0.3, reduction="mean")
    zz = z.copy()
    r = impl.annealing_loss(zz, v, 0.3, reduction="mean", out=zz)
    assert r.grad is zz and r.loss == expected.loss
    np.testing.assert_array_equal(zz, expected.grad)


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_compute_grad_false(impl_name):
    z = np.arange(6.0).reshape(2, 3)
    r = IMPLS[impl_name].annealing_loss(z, z, 0.5, compute_grad=False)
    assert r.grad is None and r.loss == pytest.approx(((0.5 * z) ** 2).sum(1).mean())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_determinism(request, dtype):
    rng = _rng(request)
    z, v = _logits(rng, (64, 5000), dtype), _logits(rng, (64, 5000), dtype)
    results = [kdtemp.annealing_loss(z, v, 0.6, n_threads=k) for k in (1, 2, 3)]
    for r in results[1:]:
        assert r.loss == results[0].loss and np.array_equal(r.grad, results[0].grad)


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("phi,exc", [
    (float("nan"), ValueError), (float("inf"), ValueError), ("0.5", TypeError),
    (None, TypeError), (True, TypeError), (np.array([0.5, 0.5]), TypeError),
])
def test_bad_phi(impl_name, phi, exc):
    z = np.zeros((2, 3))
    with pytest.raises(exc, match="`phi`"):
        IMPLS[impl_name].annealing_loss(z, z, phi)


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("where,value,name", [
    ("student", -np.inf, "student"), ("student", np.nan, "student"),
    ("teacher", np.inf, "teacher"), ("teacher", -np.inf, "teacher"),
])
def test_nonfinite_rejected(impl_name, where, value, name):
    """The regression has no masked classes: -inf is an error too."""
    z, v = np.zeros((2, 3)), np.ones((2, 3))
    (z if where == "student" else v)[1, 2] = value
    with pytest.raises(ValueError, match=f"`{name}`"):
        IMPLS[impl_name].annealing_loss(z, v, 0.5)


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_bad_arguments(impl_name):
    impl = IMPLS[impl_name]
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="`reduction`"):
        impl.annealing_loss(z, z, 0.5, reduction="avg")
    with pytest.raises(TypeError, match="`student`"):
        impl.annealing_loss(z.astype(np.int32), z, 0.5)
    with pytest.raises(ValueError, match="`teacher`"):
        impl.annealing_loss(z, np.zeros((3, 2)), 0.5)
    with pytest.raises(ValueError, match="`mask`"):
        impl.annealing_loss(z, z, 0.5, mask=np.ones(3, bool))


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_property_nonnegative_and_zero_at_target(impl_name, dtype, data):
    impl = IMPLS[impl_name]
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=10))
    z = data.draw(hnp.arrays(dtype, shape, elements=st.floats(-1e3, 1e3, width=32)),
                  label="z")
    # multiples of 1/8: phi * v stays exact (no subnormals)
    v = data.draw(hnp.arrays(dtype, shape, elements=st.integers(-8000, 8000).map(
        lambda k: k / 8)), label="v")
    phi = data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]), label="phi")
    r = impl.annealing_loss(z, v, phi, reduction="none")
    assert np.all(r.loss >= 0)
    exact = (v * phi).astype(dtype)  # phi a power of two: phi * v is exact
    r0 = impl.annealing_loss(exact, v, phi, reduction="sum")
    assert r0.loss == 0.0 and np.all(r0.grad == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("phi", [0.5, 0.0, -2.0])
@pytest.mark.parametrize("threads", [1, 2])
def test_first_nonfinite_row_is_reported(request, dtype, phi, threads):
    """The kernel finds a bad row from its loss (z - phi v is NaN or +-inf
    there, phi = 0 included) and reports the first one, student before teacher
    within a row, whatever the thread count."""
    rng = _rng(request)
    z, v = _logits(rng, (300, 257), dtype), _logits(rng, (300, 257), dtype)
    v[250, 3] = np.inf
    z[170, 256] = np.nan
    v[170, 0] = -np.inf
    z[40, 9] = np.nan  # skipped by the mask
    mask = np.ones(300, bool)
    mask[40] = False
    with pytest.raises(ValueError, match=r"`student` has NaN or \+-inf in row 170"):
        kdtemp.annealing_loss(z, v, phi, mask=mask, n_threads=threads)
    z[170, 256] = 1.0
    with pytest.raises(ValueError, match=r"`teacher` has NaN or \+-inf in row 170"):
        kdtemp.annealing_loss(z, v, phi, mask=mask, n_threads=threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_error_leaves_student(request, dtype):
    rng = _rng(request)
    z, v = _logits(rng, (64, 1000), dtype), _logits(rng, (64, 1000), dtype)
    v[50, 7] = np.nan
    zz = z.copy()
    with pytest.raises(ValueError, match="`teacher`"):
        kdtemp.annealing_loss(zz, v, 0.7, out=zz, n_threads=2)
    np.testing.assert_array_equal(zz, z)


def test_overflowing_finite_rows_are_not_errors():
    """Finite logits whose squared difference overflows give an infinite loss,
    as the NumPy twin does, not a non-finite-input error."""
    z = np.full((3, 4), 1e200)
    v = -z
    r = kdtemp.annealing_loss(z, v, 1.0, reduction="none")
    expected = ref.annealing_loss(z, v, 1.0, reduction="none")
    assert np.isinf(r.loss).all() and np.isinf(expected.loss).all()
    z32 = np.ones((2, 5), np.float32)
    r = kdtemp.annealing_loss(z32, 3e38 * z32, 1e300, reduction="none")
    assert np.isinf(r.loss).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_on_every_build(request, dtype):
    """The regression has no exps: its loops give the same bits on the
    baseline, AVX2 and AVX-512 builds (annealing_impl.h)."""
    rng = _rng(request)
    z, v = _logits(rng, (37, 1003), dtype), _logits(rng, (37, 1003), dtype)
    runs = each_build(lambda: kdtemp.annealing_loss(z, v, 0.37, reduction="none"))
    first = runs[builds()[0]]
    for r in runs.values():
        assert np.array_equal(r.loss, first.loss) and np.array_equal(r.grad, first.grad)
