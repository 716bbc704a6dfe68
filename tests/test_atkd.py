"""ATKD (kdtemp.atkd_loss), sharpness and sharpness_gap: the C-backed functions
against their NumPy twins (kdtemp.reference.atkd) and against PyTorch written from
shared/spec/atkd.md, with autograd for every gradient.

Each comparison first checks the oracle (twin vs torch, float64-tight), then the C
result against both.
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
from kdtemp.reference import atkd as ref

SCALES = ("none", "base", "T2")
IMPLS = {"kdtemp": kdtemp, "reference": ref}


def _rng(request) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _logits(rng, shape, dtype, spread=3.0):
    return np.asarray(rng.normal(0.0, spread, size=shape), dtype=dtype)


# --------------------------------------------------------------------------------
# PyTorch oracle, written from the spec
# --------------------------------------------------------------------------------

def _torch_std(x: torch.Tensor, ddof: int) -> torch.Tensor:
    """Per-row torch.std (correction=ddof) over the finite entries, shape (n, 1)."""
    fin = torch.isfinite(x)
    if bool(fin.all()):
        return x.std(1, correction=ddof, keepdim=True)
    return torch.stack([x[i][fin[i]].std(correction=ddof) for i in range(len(x))])[:, None]


def _counted(labels, mask, ignore_index, n):
    counted = np.ones(n, bool)
    if labels is not None:
        counted &= np.asarray(labels).reshape(n) != ignore_index
    if mask is not None:
        counted &= np.asarray(mask, bool).reshape(n)
    return counted


def _reduce(rows_loss, counted, reduction, lead):
    """(reported loss, scalar to differentiate)."""
    count = int(counted.sum())
    total = rows_loss.sum()
    if reduction == "batchmean":
        total = total / count if count else total * 0.0
    if reduction == "none":
        full = np.zeros(counted.size)
        full[counted] = rows_loss.detach().numpy()
        return full.reshape(lead), total
    return float(total.detach()), total


def torch_atkd(student, teacher, *, base_temperature=1.0, ddof=0, eps=1e-7, scale="none",
               detach_temperature=False, labels=None, ignore_index=-100, mask=None,
               kd_weight=1.0, ce_weight=0.0, reduction="batchmean", **_ignored):
    """(loss, grad, count, tS, tT) in float64 torch.

    tS = b (z.std(1, correction=ddof) + eps), tT likewise (no gradient),
    loss_i = kd_weight * F.kl_div(log_softmax(z / tS), softmax(v / tT)).sum(1) * s
             + ce_weight * F.cross_entropy(z, y), s = 1 | b^2 | tS tT.
    -inf entries: left out of the std, and kept as constant -inf in z / tS.
    """
    shape = np.shape(student)
    c, lead = shape[-1], shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    z_all = torch.tensor(np.asarray(student, np.float64).reshape(n, c), requires_grad=True)
    v_all = torch.tensor(np.asarray(teacher, np.float64).reshape(n, c))
    counted = _counted(labels, mask, ignore_index, n)
    rows = torch.as_tensor(np.flatnonzero(counted))
    z, v = z_all[rows], v_all[rows]
    b = base_temperature
    t_s = b * (_torch_std(z, ddof) + eps)
    t_t = b * (_torch_std(v, ddof) + eps)
    if detach_temperature:
        t_s = t_s.detach()
    fin_z, fin_v = torch.isfinite(z), torch.isfinite(v)
    u = torch.where(fin_z, torch.where(fin_z, z, 0.0) / t_s, -torch.inf)
    w = torch.where(fin_v, torch.where(fin_v, v, 0.0) / t_t, -torch.inf)
    log_ps, pt = F.log_softmax(u, 1), F.softmax(w, 1)
    kl = F.kl_div(torch.where(pt > 0, log_ps, 0.0), pt, reduction="none").sum(1)
    s = {"none": torch.ones_like(kl), "base": torch.full_like(kl, b * b),
         "T2": (t_s * t_t)[:, 0]}[scale]
    rows_loss = kd_weight * s * kl
    if ce_weight:
        y = torch.as_tensor(np.asarray(labels).reshape(n).astype(np.int64))[rows]
        rows_loss = rows_loss + ce_weight * F.cross_entropy(z, y, reduction="none")
    loss, scalar = _reduce(rows_loss, counted, reduction, lead)
    grad = torch.zeros(n, c, dtype=torch.float64)
    if len(rows):
        (grad,) = torch.autograd.grad(scalar, z_all)
    ts_full, tt_full = np.full(n, np.nan), np.full(n, np.nan)
    ts_full[counted] = t_s.detach().numpy()[:, 0]
    tt_full[counted] = t_t.numpy()[:, 0]
    return (loss, grad.numpy().reshape(shape), int(counted.sum()),
            ts_full.reshape(lead), tt_full.reshape(lead))


# --------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------

def _tol(dtype):
    """(rtol, atol as a fraction of the largest |expected|)."""
    return (1e-10, 1e-11) if np.dtype(dtype) == np.float64 else (1e-5, 1e-5)


def assert_close(got, expected, dtype, what=""):
    rtol, frac = _tol(dtype)
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    fin = expected[np.isfinite(expected)]
    atol = frac * (float(np.abs(fin).max()) if fin.size else 0.0) + 1e-300
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=what)


def check_result(r, expected, dtype, shape, reduction, what=""):
    loss, grad, count = expected[:3]
    assert type(r.count) is int and r.count == count, what
    if reduction == "none":
        assert isinstance(r.loss, np.ndarray) and r.loss.dtype == dtype, what
        assert r.loss.shape == tuple(shape[:-1]), what
    else:
        assert type(r.loss) is float, what
    assert_close(r.loss, loss, dtype, f"{what}: loss")
    if grad is None:
        assert r.grad is None
        return
    assert r.grad.dtype == dtype and r.grad.shape == tuple(shape), what
    assert np.isfinite(r.grad).all(), what
    assert_close(r.grad, grad, dtype, f"{what}: grad")


def compare(student, teacher, what="", **kw):
    """torch vs twin (float64-tight), then kdtemp vs twin and vs torch."""
    dtype, shape = student.dtype, student.shape
    reduction = kw.get("reduction", "batchmean")
    expected = torch_atkd(student, teacher, **kw)
    r = ref.atkd_loss(student, teacher, return_temperatures=True, **kw)
    ref_dtype = np.float64 if dtype == np.float64 else np.float32
    check_result(r, expected, ref_dtype, shape, reduction, f"reference vs torch {what}")
    np.testing.assert_allclose(r.student_temperature, expected[3], rtol=1e-12)
    np.testing.assert_allclose(r.teacher_temperature, expected[4], rtol=1e-12)
    c = kdtemp.atkd_loss(student, teacher, return_temperatures=True, **kw)
    check_result(c, (r.loss, r.grad, r.count), dtype, shape, reduction,
                 f"kdtemp vs reference {what}")
    check_result(c, expected, dtype, shape, reduction, f"kdtemp vs torch {what}")
    np.testing.assert_allclose(c.student_temperature, expected[3], rtol=1e-12)
    np.testing.assert_allclose(c.teacher_temperature, expected[4], rtol=1e-12)
    return c, r, expected


# --------------------------------------------------------------------------------
# The matrix: scale x ddof x detach x reduction x dtype x shape
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 17)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("scale", SCALES)
def test_matrix(request, scale, ddof, detach, reduction, dtype, shape):
    rng = _rng(request)
    z, v = _logits(rng, shape, dtype), _logits(rng, shape, dtype, spread=5.0)
    before = (z.copy(), v.copy())
    compare(z, v, base_temperature=1.7, ddof=ddof, scale=scale, detach_temperature=detach,
            reduction=reduction)
    assert np.array_equal(before[0], z) and np.array_equal(before[1], v)


def test_detach_changes_the_gradient(request):
    """The temperature term is not negligible: detached and full gradients differ,
    the losses do not."""
    rng = _rng(request)
    z, v = _logits(rng, (5, 11), np.float64), _logits(rng, (5, 11), np.float64)
    full = kdtemp.atkd_loss(z, v)
    det = kdtemp.atkd_loss(z, v, detach_temperature=True)
    assert full.loss == det.loss
    assert np.abs(full.grad - det.grad).max() > 1e-3 * np.abs(full.grad).max()


@pytest.mark.parametrize("shape", [(3, 100003), (2, 262147)], ids=["100003", "262147"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocabulary_sized_rows(request, dtype, shape):
    """Rows that keep their exps between the passes (100003 classes) and rows
    too long for the row buffers (262147 > KD_CACHE_COLS), which recompute the
    teacher's."""
    rng = _rng(request)
    z, v = _logits(rng, shape, dtype), _logits(rng, shape, dtype, spread=4.0)
    compare(z, v, ddof=1, scale="T2", base_temperature=2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_and_offset_logits(request, dtype):
    """Logits around 1e4 with spread 1e3: the std is shift invariant, no overflow."""
    rng = _rng(request)
    z = (1e4 + _logits(rng, (6, 29), np.float64, spread=1e3)).astype(dtype)
    v = (-1e4 + _logits(rng, (6, 29), np.float64, spread=2e3)).astype(dtype)
    c, _, _ = compare(z, v, scale="T2")
    assert np.isfinite(c.loss)


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ddof", [0, 1])
def test_single_class(impl_name, dtype, ddof):
    """1x1 (and C = 1 generally): one class, probability 1, loss 0, gradient 0; the
    std is 0 (no more than ddof entries for ddof = 1), so tS = b * eps."""
    z = np.array([[3.0]], dtype)
    r = IMPLS[impl_name].atkd_loss(z, np.array([[-2.0]], dtype), ddof=ddof,
                                   return_temperatures=True, scale="T2")
    assert r.loss == 0.0 and r.count == 1
    assert r.grad.shape == (1, 1) and r.grad[0, 0] == 0.0
    np.testing.assert_allclose(r.student_temperature, [1e-7], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", SCALES)
def test_constant_student_row(dtype, scale):
    """sigma(z_i) == 0: tS = b eps, the terms through tS are 0 (the detached and
    the full gradients agree); the student's softmax is uniform."""
    z = np.array([[1.5] * 6, [0.0, 1.0, -2.0, 3.0, 0.5, -1.0]], dtype)
    v = np.array([[0.0, 2.0, -1.0, 0.5, 1.0, 3.0], [1.0, 0.0, 2.0, 0.0, -1.0, 0.5]], dtype)
    for impl in IMPLS.values():
        full = impl.atkd_loss(z, v, scale=scale, reduction="none", return_temperatures=True)
        det = impl.atkd_loss(z, v, scale=scale, reduction="none", detach_temperature=True)
        assert np.isfinite(full.loss).all() and np.isfinite(full.grad).all()
        np.testing.assert_allclose(full.student_temperature[0], 1e-7, rtol=1e-6)
        np.testing.assert_array_equal(full.grad[0], det.grad[0])
    c = kdtemp.atkd_loss(z, v, scale=scale, reduction="none")
    r = ref.atkd_loss(z, v, scale=scale, reduction="none")
    assert_close(c.loss, r.loss, dtype)
    assert_close(c.grad, r.grad, dtype)


def test_subnormal_std_float32():
    """A float32 student row with a subnormal std (found by hypothesis): the gradient
    through tS is O(1) (dtS/dz = +-b/2 here) and must stay finite."""
    z = np.array([[1.316e-42, 0.0]], np.float32)
    v = np.array([[0.0, 1.0]], np.float32)
    expected = torch_atkd(z, v, scale="T2")
    np.testing.assert_allclose(expected[1], [[0.27235188, -0.27235188]], rtol=1e-6)
    r = ref.atkd_loss(z, v, scale="T2")
    assert_close(r.grad, expected[1], np.float32)
    c = kdtemp.atkd_loss(z, v, scale="T2")
    assert np.isfinite(c.grad).all()
    assert_close(c.grad, expected[1], np.float32)


# --------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------

def _cvpr_logit_standardization(z, v, y, tau=2.0):
    """"Logit Standardization in KD" (CVPR 2024), as its code writes it."""
    def normalize(logit):
        mean = logit.mean(dim=-1, keepdim=True)
        stdv = logit.std(dim=-1, keepdim=True)
        return (logit - mean) / (1e-7 + stdv)

    log_pred_student = F.log_softmax(normalize(z) / tau, dim=1)
    pred_teacher = F.softmax(normalize(v) / tau, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    loss_kd = loss_kd * tau**2
    return 9.0 * loss_kd + 0.1 * F.cross_entropy(z, y)


def _atkd_paper(z, v, y):
    """ATKD paper, eq. 10 with the population std, 0.9 KD + 0.1 CE."""
    t_s = z.std(1, correction=0, keepdim=True) + 1e-7
    t_t = v.std(1, correction=0, keepdim=True) + 1e-7
    kl = F.kl_div(F.log_softmax(z / t_s, 1), F.softmax(v / t_t, 1), reduction="batchmean")
    return 0.9 * kl + 0.1 * F.cross_entropy(z, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("preset,formula", [("logit_standardization", _cvpr_logit_standardization),
                                            ("atkd", _atkd_paper)])
def test_presets_equal_the_papers(request, dtype, preset, formula):
    rng = _rng(request)
    z, v = _logits(rng, (8, 100), dtype), _logits(rng, (8, 100), dtype, spread=6.0)
    y = rng.integers(0, 100, size=8)
    zt = torch.tensor(z.astype(np.float64), requires_grad=True)
    loss = formula(zt, torch.tensor(v.astype(np.float64)), torch.as_tensor(y))
    (grad,) = torch.autograd.grad(loss, zt)
    for impl in IMPLS.values():
        r = impl.atkd_loss(z, v, labels=y, **kdtemp.presets[preset])
        assert_close(r.loss, float(loss.detach()), dtype, f"{preset} loss")
        assert_close(r.grad, grad.numpy(), dtype, f"{preset} grad")


def test_presets_content():
    ls = kdtemp.presets.logit_standardization
    assert dict(ls) == dict(base_temperature=2.0, ddof=1, eps=1e-7, scale="base",
                            kd_weight=9.0, ce_weight=0.1)
    assert kdtemp.presets["atkd"]["kd_weight"] == 0.9
    assert dict(ref.presets.atkd) == dict(kdtemp.presets.atkd)
    assert dict(ref.presets.logit_standardization) == dict(ls)
    with pytest.raises(KeyError):
        kdtemp.presets["nope"]
    with pytest.raises(TypeError):
        ls["ddof"] = 0  # read-only


# --------------------------------------------------------------------------------
# Temperatures, -inf entries, skipped rows
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("ddof", [0, 1])
def test_return_temperatures(request, ddof):
    rng = _rng(request)
    z, v = _logits(rng, (2, 3, 17), np.float64), _logits(rng, (2, 3, 17), np.float64, 7.0)
    mask = np.array([[True, False, True], [True, True, False]])
    for impl in IMPLS.values():
        r = impl.atkd_loss(z, v, base_temperature=3.0, ddof=ddof, mask=mask,
                           return_temperatures=True)
        assert isinstance(r, kdtemp.ATKDResult)
        assert r.student_temperature.shape == (2, 3) == r.teacher_temperature.shape
        assert r.student_temperature.dtype == np.float64
        assert np.isnan(r.student_temperature[~mask]).all()
        assert np.isnan(r.teacher_temperature[~mask]).all()
        np.testing.assert_allclose(r.student_temperature[mask],
                                   3.0 * (z.std(-1, ddof=ddof)[mask] + 1e-7), rtol=1e-13)
        np.testing.assert_allclose(r.teacher_temperature[mask],
                                   3.0 * (v.std(-1, ddof=ddof)[mask] + 1e-7), rtol=1e-13)
        plain = impl.atkd_loss(z, v, base_temperature=3.0, ddof=ddof, mask=mask)
        assert isinstance(plain, kdtemp.LossResult) and plain.loss == r.loss


def test_return_temperatures_without_kd_term(request):
    """kd_weight=0 (CE only): the temperatures are still each row's own b (std + eps)."""
    rng = _rng(request)
    z, v = _logits(rng, (4, 9), np.float64), _logits(rng, (4, 9), np.float64)
    y = rng.integers(0, 9, size=4)
    expected = 2.0 * (z.std(-1) + 1e-7)
    r = ref.atkd_loss(z, v, labels=y, kd_weight=0.0, ce_weight=1.0, base_temperature=2.0,
                      return_temperatures=True)
    np.testing.assert_allclose(r.student_temperature, expected, rtol=1e-13)
    c = kdtemp.atkd_loss(z, v, labels=y, kd_weight=0.0, ce_weight=1.0, base_temperature=2.0,
                         return_temperatures=True)
    np.testing.assert_allclose(c.student_temperature, expected, rtol=1e-13)


def _holes(rng, shape, frac):
    """-inf pattern with at least two finite entries per row."""
    hole = rng.random(shape) < frac
    hole[..., :2] = False
    return hole


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("scale", SCALES)
def test_neginf_excluded_from_mean_and_std(request, dtype, detach, ddof, scale):
    """-inf entries (masked vocabulary) are left out of the row's mean and std; the
    teacher may mask more classes than the student. Compared with torch.std over
    the finite entries."""
    rng = _rng(request)
    shape = (6, 23)
    z, v = _logits(rng, shape, dtype), _logits(rng, shape, dtype, spread=5.0)
    hz = _holes(rng, shape, 0.3)
    hv = hz | _holes(rng, shape, 0.2)
    z[hz] = -np.inf
    v[hv] = -np.inf
    c, _, _ = compare(z, v, ddof=ddof, scale=scale, detach_temperature=detach,
                      base_temperature=1.3, reduction="none")
    assert (c.grad[hz] == 0).all()
    fin = np.where(hz, np.nan, z.astype(np.float64))
    np.testing.assert_allclose(c.student_temperature,
                               1.3 * (np.nanstd(fin, -1, ddof=ddof) + 1e-7), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("skip_by", ["mask", "ignore_index", "both"])
def test_skipped_rows(request, dtype, reduction, skip_by):
    rng = _rng(request)
    shape = (3, 4, 15)
    z, v = _logits(rng, shape, dtype), _logits(rng, shape, dtype)
    y = rng.integers(0, 15, size=(3, 4))
    mask = None
    if skip_by in ("ignore_index", "both"):
        y[0, 1] = y[2, 3] = -100
    if skip_by in ("mask", "both"):
        mask = np.ones((3, 4), bool)
        mask[1, :2] = False
    skipped = y == -100
    if mask is not None:
        skipped |= ~mask
    z[skipped] = np.nan  # never looked at
    c, _, _ = compare(z, v, labels=y, mask=mask, kd_weight=0.9, ce_weight=0.1, ddof=1,
                      reduction=reduction)
    assert (c.grad[skipped] == 0).all()
    assert c.count == int((~skipped).sum())
    if reduction == "none":
        assert (c.loss[skipped] == 0).all()


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_all_rows_skipped(impl_name, reduction):
    z = np.ones((3, 5))
    r = IMPLS[impl_name].atkd_loss(z, z, mask=np.zeros(3, bool), reduction=reduction)
    assert r.count == 0 and np.all(r.loss == 0) and np.all(r.grad == 0)


def test_compute_grad_false(request):
    rng = _rng(request)
    z, v = _logits(rng, (4, 8), np.float64), _logits(rng, (4, 8), np.float64)
    for impl in IMPLS.values():
        r = impl.atkd_loss(z, v, compute_grad=False, scale="T2")
        assert r.grad is None
        assert r.loss == pytest.approx(impl.atkd_loss(z, v, scale="T2").loss, rel=1e-14)


# --------------------------------------------------------------------------------
# out=, threads
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("ce_weight", [0.0, 0.1])
def test_out_aliases_student(request, impl_name, dtype, detach, ce_weight):
    """out=student: the gradient overwrites the logits in place (the temperature
    term reads the whole row first) and is returned."""
    rng = _rng(request)
    z, v = _logits(rng, (2, 5, 31), dtype), _logits(rng, (2, 5, 31), dtype)
    kw = dict(scale="T2", detach_temperature=detach, ce_weight=ce_weight,
              labels=rng.integers(0, 31, size=(2, 5)))
    impl = IMPLS[impl_name]
    expected = impl.atkd_loss(z, v, **kw)
    zz = z.copy()
    r = impl.atkd_loss(zz, v, out=zz, **kw)
    assert r.grad is zz
    assert r.loss == expected.loss
    np.testing.assert_array_equal(zz, expected.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_determinism(request, dtype):
    rng = _rng(request)
    z, v = _logits(rng, (64, 5000), dtype), _logits(rng, (64, 5000), dtype)
    kw = dict(scale="T2", ddof=1, mask=rng.random(64) < 0.9)
    results = [kdtemp.atkd_loss(z, v, n_threads=k, reduction=red, **kw)
               for k in (1, 2, 3) for red in ("batchmean",)]
    for r in results[1:]:
        assert r.loss == results[0].loss
        assert np.array_equal(r.grad, results[0].grad)
    gaps = [kdtemp.sharpness_gap(z, v, 2.0, 3.0, n_threads=k) for k in (1, 2, 3)]
    assert gaps[0] == gaps[1] == gaps[2]


# --------------------------------------------------------------------------------
# sharpness and sharpness_gap
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tform", ["scalar", "per_row"])
def test_sharpness_is_logsumexp(request, impl_name, dtype, tform):
    rng = _rng(request)
    x = _logits(rng, (2, 3, 41), dtype)
    x[0, 1, :7] = -np.inf
    t = 1.7 if tform == "scalar" else rng.uniform(0.5, 5.0, size=(2, 3))
    got = IMPLS[impl_name].sharpness(x, t)
    tt = torch.as_tensor(np.asarray(t, np.float64))
    expected = torch.logsumexp(torch.tensor(x.astype(np.float64)) /
                               (tt[..., None] if tt.ndim else tt), dim=-1).numpy()
    assert got.dtype == np.float64 and got.shape == (2, 3)
    assert_close(got, expected, dtype)


def test_sharpness_default_and_single_row():
    x = np.array([0.0, 1.0, 2.0])
    for impl in IMPLS.values():
        np.testing.assert_allclose(impl.sharpness(x), np.log(np.exp(x).sum()), rtol=1e-14)
        assert impl.sharpness(x).shape == ()


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sharpness_gap_exact(request, impl_name, dtype):
    rng = _rng(request)
    z, v = _logits(rng, (10, 33), dtype), _logits(rng, (10, 33), dtype, spread=6.0)
    t_s, t_t = rng.uniform(1, 4, size=10), 4.0
    zt, vt = torch.tensor(z.astype(np.float64)), torch.tensor(v.astype(np.float64))
    per_row = (torch.logsumexp(vt / t_t, 1)
               - torch.logsumexp(zt / torch.as_tensor(t_s)[:, None], 1)).numpy()
    impl = IMPLS[impl_name]
    got = impl.sharpness_gap(z, v, t_s, t_t, reduction="none")
    assert_close(got, per_row, dtype)
    assert type(impl.sharpness_gap(z, v, t_s, t_t)) is float
    assert_close(impl.sharpness_gap(z, v, t_s, t_t), per_row.mean(), dtype)
    mask = np.arange(10) % 3 != 0
    assert_close(impl.sharpness_gap(z, v, t_s, t_t, mask=mask), per_row[mask].mean(), dtype)
    assert impl.sharpness_gap(z, v, t_s, t_t, mask=np.zeros(10, bool)) == 0.0


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_sharpness_gap_approximate(request, impl_name):
    """eq. 9 from the population std (torch.std, correction 0) of each row."""
    rng = _rng(request)
    z, v = _logits(rng, (2, 4, 50), np.float64), _logits(rng, (2, 4, 50), np.float64, 5.0)
    z[0, 0, :5] = -np.inf
    impl = IMPLS[impl_name]
    got = impl.sharpness_gap(z, v, 2.0, 3.0, approximate=True, reduction="none")
    zt, vt = torch.tensor(z), torch.tensor(v)
    sd_z = _torch_std(zt.reshape(8, 50), 0).reshape(2, 4).numpy()
    sd_v = vt.std(-1, correction=0).numpy()
    expected = np.log(1 + 0.5 * (sd_v / 3.0) ** 2) - np.log(1 + 0.5 * (sd_z / 2.0) ** 2)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got.shape == (2, 4)


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_sharpness_gap_approximation_close_for_small_std(request, impl_name):
    """Zero-mean logits with a small spread: eq. 9 matches the exact gap to third
    order in std / t (the exact gap includes log C on both sides, which cancels)."""
    rng = _rng(request)
    z = rng.normal(0, 0.02, size=(16, 1000))
    v = rng.normal(0, 0.05, size=(16, 1000))
    z -= z.mean(1, keepdims=True)
    v -= v.mean(1, keepdims=True)
    impl = IMPLS[impl_name]
    exact = impl.sharpness_gap(z, v, 1.0, 1.0, reduction="none")
    approx = impl.sharpness_gap(z, v, 1.0, 1.0, approximate=True, reduction="none")
    assert np.all(exact > 0)
    np.testing.assert_allclose(approx, exact, rtol=2e-2, atol=1e-6)


def test_sharpness_grows_with_sharper_teacher():
    """The paper's point in miniature: a sharper (larger-scale) row has a larger
    sharpness at a fixed temperature, and ATKD's own temperatures shrink the gap."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, size=(32, 100))
    gap_fixed = kdtemp.sharpness_gap(base, 3 * base, 4.0, 4.0)
    r = kdtemp.atkd_loss(base, 3 * base, return_temperatures=True)
    gap_adaptive = kdtemp.sharpness_gap(base, 3 * base, r.student_temperature,
                                        r.teacher_temperature)
    assert gap_fixed > 0.1 and abs(gap_adaptive) < 1e-6


# --------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("kw,exc,name", [
    (dict(scale="T3"), ValueError, "scale"),
    (dict(scale=None), ValueError, "scale"),
    (dict(ddof=-1), ValueError, "ddof"),
    (dict(ddof=1.0), TypeError, "ddof"),
    (dict(ddof=True), TypeError, "ddof"),
    (dict(base_temperature=0.0), ValueError, "base_temperature"),
    (dict(base_temperature=-2.0), ValueError, "base_temperature"),
    (dict(base_temperature=float("nan")), ValueError, "base_temperature"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=-1e-7), ValueError, "eps"),
    (dict(reduction="mean"), ValueError, "reduction"),
    (dict(ce_weight=0.1), ValueError, "labels"),
])
def test_bad_arguments(impl_name, kw, exc, name):
    z = np.zeros((2, 3))
    with pytest.raises(exc, match=f"`{name}`"):
        IMPLS[impl_name].atkd_loss(z, z + 1.0, **kw)


@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_bad_inputs(impl_name):
    impl = IMPLS[impl_name]
    z = np.zeros((2, 3))
    with pytest.raises(TypeError, match="`student`"):
        impl.atkd_loss(z.astype(np.int64), z)
    with pytest.raises(ValueError, match="`teacher`"):
        impl.atkd_loss(z, np.zeros((2, 4)))
    bad = z.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="`teacher`"):
        impl.atkd_loss(z, bad)
    bad[1, :] = -np.inf
    with pytest.raises(ValueError, match="`student`"):
        impl.atkd_loss(bad, z)
    with pytest.raises(ValueError, match="`temperature`|`logits`"):
        impl.sharpness(z, 0.0)
    with pytest.raises(ValueError, match="`reduction`"):
        impl.sharpness_gap(z, z, reduction="sum")


# --------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------

def _elements():
    # Subnormal logits are left to test_subnormal_std_float32 (a known C bug).
    return st.floats(-30, 30, width=32, allow_subnormal=False)


def _rows_strategy(dtype, max_cols=12):
    shape = hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=max_cols)
    return hnp.arrays(dtype, shape, elements=_elements())


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_property_nonnegative_and_shift_invariant(impl_name, dtype, data):
    """ATKD >= 0, and adding a constant per row to either input changes nothing:
    the std and the softmax are both shift invariant."""
    impl = IMPLS[impl_name]
    z = data.draw(_rows_strategy(dtype), label="z")
    v = data.draw(hnp.arrays(dtype, z.shape, elements=_elements()), label="v")
    scale = data.draw(st.sampled_from(SCALES), label="scale")
    ddof = data.draw(st.sampled_from([0, 1]), label="ddof")
    cz = data.draw(hnp.arrays(np.float64, (z.shape[0], 1),
                              elements=st.integers(-64, 64).map(float)), label="cz")
    cv = data.draw(hnp.arrays(np.float64, (z.shape[0], 1),
                              elements=st.integers(-64, 64).map(float)), label="cv")
    r = impl.atkd_loss(z, v, scale=scale, ddof=ddof, reduction="none")
    assert np.all(r.loss >= 0) and np.isfinite(r.grad).all()
    # shift by exactly representable constants, far from any overflow
    r2 = impl.atkd_loss((z + cz).astype(dtype), (v + cv).astype(dtype), scale=scale,
                        ddof=ddof, reduction="none")
    rtol, frac = (1e-7, 1e-9) if dtype == np.float64 else (2e-3, 2e-3)
    # a row whose std is ~0 has tS ~ b eps and u ~ z / eps: no stability to expect there
    ok = (np.asarray(z, np.float64).std(1) > 1e-3) & (np.asarray(v, np.float64).std(1) > 1e-3)
    np.testing.assert_allclose(r2.loss[ok], r.loss[ok], rtol=rtol,
                               atol=frac * (1 + np.abs(r.loss[ok]).max(initial=0)))
    np.testing.assert_allclose(r2.grad[ok], r.grad[ok], rtol=rtol,
                               atol=frac * (1 + np.abs(r.grad[ok]).max(initial=0)))


@given(data=st.data())
def test_property_zero_when_equal(data):
    """Student == teacher: the same temperatures, the same distributions, loss 0 and
    gradient 0 (to rounding)."""
    z = data.draw(_rows_strategy(np.float64), label="z")
    r = kdtemp.atkd_loss(z, z.copy(), scale=data.draw(st.sampled_from(SCALES)),
                         reduction="none")
    scale = 1 + np.abs(z).max() / max(z.std(), 1e-3)
    assert np.all(np.abs(r.loss) <= 1e-12 * scale)
    assert np.all(np.abs(r.grad) <= 1e-12 * scale)


def test_ce_alone_in_place_keeps_the_temperatures():
    """kd_weight = 0 leaves CE alone; in place on rows long enough for CE's
    block path, the returned temperatures (stds of the logits) must still be
    those of the logits, not of the exps written over them, and the loss and
    gradient the bits of a separate gradient (fuzz finding I)."""
    import kdtemp
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, size=(3, 16384))
    v = z + rng.normal(0, 1, size=z.shape)
    y = np.array([1, 2, 3])
    kw = dict(labels=y, kd_weight=0.0, ce_weight=1.0, return_temperatures=True,
              reduction="none")
    a = kdtemp.atkd_loss(z, v, **kw)
    zz = z.copy()
    b = kdtemp.atkd_loss(zz, v, out=zz, **kw)
    for f in ("loss", "student_temperature", "teacher_temperature"):
        assert getattr(a, f).tobytes() == getattr(b, f).tobytes(), f
    assert a.grad.tobytes() == zz.tobytes()
    np.testing.assert_allclose(a.student_temperature, z.std(axis=1) + 1e-7, rtol=1e-9)
