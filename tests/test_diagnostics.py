"""Diagnostics (shared/spec/diagnostics.md): ``row_stats``, ``temperature_profile``,
``match_sharpness``, checked three ways: the C kernels against their pure-NumPy
twins (``kdtemp.reference.diagnostics``), and both against PyTorch or against
kdtemp's own losses called once per temperature."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdtemp
from kdtemp.reference import diagnostics as twin

sys.path.insert(0, os.path.dirname(__file__))
from isa_builds import each_build  # noqa: E402

FLOAT_STATS = ("max_logit", "sharpness", "mean", "std", "entropy", "top1_prob", "ce")
PROFILE_COLUMNS = ("kd_loss", "grad_norm", "teacher_entropy", "student_entropy",
                   "teacher_top1", "sharpness_gap")
IMPLS = {"kdtemp": kdtemp, "twin": twin}


def tol(dtype):
    """(rtol, atol) against float64 truth: the kernels compute float32 input in
    float32 lanes (exp of x/t), float64 input in float64."""
    return (1e-10, 1e-12) if np.dtype(dtype) == np.float64 else (3e-5, 3e-5)


def logits(shape, dtype, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, spread, size=shape).astype(dtype)


def labels_for(shape, seed=1, n_classes=None):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_classes or shape[-1], size=shape[:-1]).astype(np.int64)


# --------------------------------------------------------------------------------
# row_stats
# --------------------------------------------------------------------------------

def torch_row_stats(x, t, y):
    """Per-row statistics from PyTorch, float64, rows flattened."""
    c = x.shape[-1]
    xt = torch.tensor(np.asarray(x, np.float64).reshape(-1, c))
    tt = torch.as_tensor(np.broadcast_to(np.asarray(t, np.float64).reshape(-1), (len(xt),)).copy())
    y_ = xt / tt[:, None]
    logp = F.log_softmax(y_, dim=1)
    p = logp.exp()
    ent = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(1)
    out = {
        "sharpness": torch.logsumexp(y_, dim=1).numpy(),
        "entropy": ent.numpy(),
        "top1_prob": p.max(1).values.numpy(),
        "max_logit": xt.max(1).values.numpy(),
    }
    if y is not None:
        yy = torch.as_tensor(np.asarray(y).reshape(-1))
        out["ce"] = F.cross_entropy(xt, yy, reduction="none").numpy()
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 17), (13,), (1, 1)])
@pytest.mark.parametrize("per_row_t", [False, True])
def test_row_stats_vs_torch_and_twin(dtype, shape, per_row_t):
    x = logits(shape, dtype)
    y = labels_for(shape)
    rng = np.random.default_rng(5)
    t = rng.uniform(0.5, 6.0, size=shape[:-1]) if per_row_t else 2.5
    got = kdtemp.row_stats(x, t, y)
    ref = twin.row_stats(x, t, y)
    oracle = torch_row_stats(x, t, y)
    rtol, atol = tol(dtype)
    lead = shape[:-1]
    for name in FLOAT_STATS:
        a, b = getattr(got, name), getattr(ref, name)
        assert a.shape == lead and b.shape == lead and a.dtype == np.float64, name
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
        if name in oracle:
            np.testing.assert_allclose(a.reshape(-1), oracle[name], rtol=rtol, atol=atol,
                                       err_msg=f"{name} vs torch")
    x64 = np.asarray(x, np.float64).reshape(-1, shape[-1])
    np.testing.assert_array_equal(got.argmax.reshape(-1), np.argmax(x, axis=-1).reshape(-1))
    np.testing.assert_array_equal(ref.argmax, got.argmax)
    assert got.argmax.dtype == np.int64 and got.correct.dtype == np.bool_
    np.testing.assert_array_equal(got.correct, got.argmax == y)
    np.testing.assert_array_equal(ref.correct, got.correct)
    np.testing.assert_allclose(got.mean.reshape(-1), x64.mean(1), rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.std.reshape(-1), x64.std(1), rtol=rtol, atol=atol)
    assert got.count == ref.count == int(np.prod(lead))
    assert set(got.batch) == set(ref.batch) == set(FLOAT_STATS) | {"accuracy"}
    for k in got.batch:
        np.testing.assert_allclose(got.batch[k], ref.batch[k], rtol=rtol, atol=atol, err_msg=k)
        assert type(got.batch[k]) is float
    np.testing.assert_allclose(got.batch["accuracy"], np.mean(np.argmax(x, -1) == y))


def test_row_stats_ce_matches_ce_loss():
    x = logits((40, 11), np.float64, seed=3)
    y = labels_for((40, 11), seed=4)
    got = kdtemp.row_stats(x, 3.0, y)  # CE is at t = 1 whatever the temperature
    np.testing.assert_allclose(got.ce, kdtemp.ce_loss(x, y, reduction="none").loss,
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got.batch["ce"], kdtemp.ce_loss(x, y).loss, rtol=1e-12)


@pytest.mark.parametrize("which", list(IMPLS))
def test_row_stats_without_labels(which):
    x = logits((5, 4), np.float64)
    r = IMPLS[which].row_stats(x)
    assert r.ce is None and r.correct is None
    assert "ce" not in r.batch and "accuracy" not in r.batch
    assert r.count == 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_argmax_at_every_column(dtype):
    """The first maximum wherever it falls against the builds' vector widths
    (4 to 16 lanes, the argmax scan goes a vector at a time), with a tie
    later in the row, in a vector of its own or in the same one."""
    C = 53
    x = np.tile(np.linspace(-3.0, -1.0, C, dtype=dtype), (2 * C, 1))
    for j in range(C):
        x[j, j] = x[C + j, j] = 5.0
        x[j, min(C - 1, j + 17)] = 5.0   # a tie in a later vector
        x[C + j, min(C - 1, j + 1)] = 5.0  # a tie next to it
    want = np.argmax(x, axis=1)
    assert (want == np.tile(np.arange(C), 2)).all()
    got = each_build(lambda: kdtemp.row_stats(x).argmax)
    for isa, am in got.items():
        np.testing.assert_array_equal(am, want, err_msg=isa)


@pytest.mark.parametrize("which", list(IMPLS))
def test_argmax_ties_first_maximum(which):
    x = np.array([[1.0, 3.0, 3.0, 0.0],
                  [5.0, 5.0, 5.0, 5.0],
                  [0.0, -1.0, 2.0, 2.0],
                  [-np.inf, 7.0, -np.inf, 7.0]])
    r = IMPLS[which].row_stats(x, labels=np.array([2, 0, 3, 1]))
    np.testing.assert_array_equal(r.argmax, np.argmax(x, axis=1))
    np.testing.assert_array_equal(r.argmax, [1, 0, 2, 1])
    np.testing.assert_array_equal(r.correct, [False, True, False, True])
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(r.top1_prob, (e / e.sum(1, keepdims=True)).max(1), rtol=1e-14)
    np.testing.assert_allclose(r.top1_prob[[1, 3]], [0.25, 0.5], rtol=1e-14)
    np.testing.assert_allclose(r.entropy[1], np.log(4), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_stats_skipped_rows(dtype):
    x = logits((6, 9), dtype, seed=8)
    y = labels_for((6, 9), seed=9)
    y[1] = -100
    mask = np.array([True, True, False, True, True, True])
    x[2, 0] = np.nan  # a skipped row is never checked
    for impl in IMPLS.values():
        r = impl.row_stats(x, 1.5, y, mask=mask)
        assert r.count == 4
        for name in FLOAT_STATS:
            v = getattr(r, name)
            assert np.isnan(v[[1, 2]]).all() and np.isfinite(v[[0, 3, 4, 5]]).all(), name
        np.testing.assert_array_equal(r.argmax[[1, 2]], [-1, -1])
        assert not r.correct[[1, 2]].any()
        kept = kdtemp.row_stats(x[[0, 3, 4, 5]], 1.5, y[[0, 3, 4, 5]])
        for k, val in kept.batch.items():
            np.testing.assert_allclose(r.batch[k], val, rtol=tol(dtype)[0], err_msg=k)


@pytest.mark.parametrize("which", list(IMPLS))
def test_row_stats_no_counted_row(which):
    x = logits((3, 5), np.float64)
    r = IMPLS[which].row_stats(x, labels=np.full(3, -100))
    assert r.count == 0
    assert all(v == 0.0 for v in r.batch.values())
    assert np.isnan(r.sharpness).all() and (r.argmax == -1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_stats_neginf_entries(dtype):
    x = logits((5, 8), dtype, seed=11)
    x[0, [1, 4]] = -np.inf
    x[3, :7] = -np.inf  # one finite entry left
    y = np.array([1, 2, 3, 7, 0])  # row 0's label sits on a -inf logit
    got = kdtemp.row_stats(x, 2.0, y)
    ref = twin.row_stats(x, 2.0, y)
    rtol, atol = tol(dtype)
    for name in FLOAT_STATS:
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=rtol, atol=atol,
                                   err_msg=name)
    fin = x[0][np.isfinite(x[0])].astype(np.float64)
    np.testing.assert_allclose(got.mean[0], fin.mean(), rtol=rtol)
    np.testing.assert_allclose(got.std[0], fin.std(), rtol=rtol)
    assert got.std[3] == 0.0 and got.entropy[3] == 0.0 and got.top1_prob[3] == 1.0
    assert got.ce[0] == np.inf and np.isfinite(got.entropy).all()
    np.testing.assert_allclose(got.sharpness, torch_row_stats(x, 2.0, None)["sharpness"],
                               rtol=rtol, atol=atol)


def test_float32_std_is_double_accurate_on_hard_rows():
    """Float32 rows take their mean and std in one pass, sum d^2 - mean_d sum d
    with d = x - shift (exact in double), shift the row's first finite entry:
    cancellation is worst for one outlier there (|x_0 - mean| = std sqrt(n - 1))
    and for a large offset, and must still leave the std far more accurate than
    a float rounding (6e-8), on every build; the ATKD temperatures come from the
    same kernel. Row 4's first finite entry is past two vectors of -inf."""
    rng = np.random.default_rng(5)
    n = 100003
    rows = np.empty((6, n), np.float32)
    rows[0] = rng.normal(0.0, 1e-3, n)
    rows[0, 17] = 1e4                        # one outlier: Samuelson's bound
    rows[1] = 1e4 + rng.normal(0.0, 1.0, n)  # mean 1e4 std 1
    rows[2] = rng.normal(0.0, 3.0, n)
    rows[2, ::3] = -np.inf                   # masked entries are not in the std
    rows[3] = 0.0
    rows[3, -1] = 1.0                        # a single nonzero entry
    rows[4] = rng.normal(2.0, 0.5, n)
    rows[4, :37] = -np.inf                   # a masked prefix
    rows[5] = rng.normal(0.0, 1e-3, n)
    rows[5, 0] = -1e4                        # the outlier is the shift
    want = np.array([r[np.isfinite(r)].astype(np.float64).std() for r in rows])
    for isa, got in each_build(lambda: kdtemp.row_stats(rows, 1.0).std).items():
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=isa)
    temps = kdtemp.atkd_loss(rows, rows[::-1].copy(), eps=1e-30, return_temperatures=True)
    np.testing.assert_allclose(temps.student_temperature, want, rtol=1e-9)


@pytest.mark.parametrize("which", list(IMPLS))
def test_row_stats_temperature_changes_softness_only(which):
    x = logits((10, 6), np.float64, seed=2)
    cold = IMPLS[which].row_stats(x, 0.5)
    hot = IMPLS[which].row_stats(x, 8.0)
    assert (hot.entropy > cold.entropy).all() and (hot.top1_prob < cold.top1_prob).all()
    np.testing.assert_array_equal(hot.argmax, cold.argmax)
    np.testing.assert_array_equal(hot.std, cold.std)
    np.testing.assert_allclose(cold.sharpness, kdtemp.sharpness(x, 0.5), rtol=1e-13)


# --------------------------------------------------------------------------------
# temperature_profile
# --------------------------------------------------------------------------------

TEMPS = (0.5, 1.0, 2.0, 4.0, 7.5, 20.0)


def profile_by_losses(z, v, temps, labels=None, mask=None):
    """Every column from kdtemp's own functions, one call per temperature."""
    n_cols = z.shape[-1]
    zz = np.asarray(z, np.float64).reshape(-1, n_cols)
    vv = np.asarray(v, np.float64).reshape(-1, n_cols)
    keep = np.ones(len(zz), bool)
    if labels is not None:
        keep &= np.asarray(labels).reshape(-1) != -100
    if mask is not None:
        keep &= np.asarray(mask).reshape(-1)
    zz, vv = zz[keep], vv[keep]
    out = {k: [] for k in PROFILE_COLUMNS}
    for T in temps:
        r = kdtemp.kd_loss(zz, vv, temperature=T)
        out["kd_loss"].append(r.loss)
        out["grad_norm"].append(np.linalg.norm(r.grad))
        out["sharpness_gap"].append(kdtemp.sharpness_gap(zz, vv, T, T))
        st_t, st_s = kdtemp.row_stats(vv, T), kdtemp.row_stats(zz, T)
        out["teacher_entropy"].append(st_t.batch["entropy"])
        out["student_entropy"].append(st_s.batch["entropy"])
        out["teacher_top1"].append(st_t.batch["top1_prob"])
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(9, 12), (2, 3, 17), (12,)])
def test_profile_vs_per_temperature_losses_and_twin(dtype, shape):
    z = logits(shape, dtype, seed=20)
    v = logits(shape, dtype, seed=21, spread=5.0)
    prof = kdtemp.temperature_profile(z, v, TEMPS)
    ref = twin.temperature_profile(z, v, TEMPS)
    expect = profile_by_losses(z, v, TEMPS)
    rtol, atol = tol(dtype)
    assert isinstance(prof, kdtemp.TemperatureProfile)
    assert isinstance(ref, kdtemp.TemperatureProfile)
    assert prof.count == ref.count == int(np.prod(shape[:-1]))
    np.testing.assert_array_equal(prof.temperatures, np.array(TEMPS))
    for name in PROFILE_COLUMNS:
        a = getattr(prof, name)
        assert a.shape == (len(TEMPS),) and a.dtype == np.float64, name
        np.testing.assert_allclose(a, getattr(ref, name), rtol=rtol, atol=atol, err_msg=name)
        np.testing.assert_allclose(a, expect[name], rtol=max(rtol, 1e-9), atol=atol,
                                   err_msg=f"{name} vs per-temperature calls")


def test_profile_grad_norm_is_norm_of_kd_gradient():
    z = logits((50, 30), np.float64, seed=30)
    v = logits((50, 30), np.float64, seed=31, spread=6.0)
    prof = kdtemp.temperature_profile(z, v, [1.0, 3.0, 10.0])
    for k, T in enumerate([1.0, 3.0, 10.0]):
        g = kdtemp.kd_loss(z, v, temperature=T).grad
        np.testing.assert_allclose(prof.grad_norm[k], np.linalg.norm(g), rtol=1e-10)
        # and from torch autograd
        zt = torch.tensor(z, requires_grad=True)
        loss = F.kl_div(F.log_softmax(zt / T, 1), F.softmax(torch.tensor(v) / T, 1),
                        reduction="batchmean") * T * T
        loss.backward()
        np.testing.assert_allclose(prof.kd_loss[k], loss.item(), rtol=1e-10)
        np.testing.assert_allclose(prof.grad_norm[k], zt.grad.norm().item(), rtol=1e-10)


def test_profile_tokens_with_padding_and_mask():
    shape = (3, 5, 19)
    z = logits(shape, np.float32, seed=40)
    v = logits(shape, np.float32, seed=41, spread=4.0)
    y = labels_for(shape, seed=42)
    y[:, 3:] = -100
    mask = np.ones(shape[:-1], bool)
    mask[1, 0] = False
    z[0, 4, 0] = np.nan  # padding is never read
    prof = kdtemp.temperature_profile(z, v, TEMPS, y, mask=mask)
    ref = twin.temperature_profile(z, v, TEMPS, y, mask=mask)
    expect = profile_by_losses(z, v, TEMPS, y, mask)
    assert prof.count == ref.count == 3 * 3 - 1
    for name in PROFILE_COLUMNS:
        np.testing.assert_allclose(getattr(prof, name), getattr(ref, name), rtol=3e-5,
                                   atol=3e-5, err_msg=name)
        np.testing.assert_allclose(getattr(prof, name), expect[name], rtol=3e-5, atol=3e-5,
                                   err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_profile_neginf_entries(dtype):
    z = logits((8, 10), dtype, seed=50)
    v = logits((8, 10), dtype, seed=51)
    z[:, 9] = v[:, 9] = -np.inf  # a class masked in both
    v[2, 3] = -np.inf  # the teacher alone: pT = 0 there, the KL stays finite
    prof = kdtemp.temperature_profile(z, v, TEMPS)
    ref = twin.temperature_profile(z, v, TEMPS)
    expect = profile_by_losses(z, v, TEMPS)
    rtol, atol = tol(dtype)
    for name in PROFILE_COLUMNS:
        a = getattr(prof, name)
        assert np.isfinite(a).all(), name
        np.testing.assert_allclose(a, getattr(ref, name), rtol=rtol, atol=atol, err_msg=name)
        np.testing.assert_allclose(a, expect[name], rtol=max(rtol, 1e-9), atol=atol,
                                   err_msg=name)
    # the student alone at -inf where the teacher has mass: KL = +inf, no NaN
    z[0, 0] = -np.inf
    for impl in IMPLS.values():
        p = impl.temperature_profile(z, v, TEMPS)
        assert (p.kd_loss == np.inf).all()
        assert np.isfinite(p.grad_norm).all() and np.isfinite(p.sharpness_gap).all()


@pytest.mark.parametrize("which", list(IMPLS))
def test_profile_no_counted_row_is_zero(which):
    z = logits((4, 6), np.float64)
    p = IMPLS[which].temperature_profile(z, z.copy(), [1.0, 2.0], np.full(4, -100))
    assert p.count == 0
    for name in PROFILE_COLUMNS:
        np.testing.assert_array_equal(getattr(p, name), [0.0, 0.0])


def test_profile_shape_of_the_curves():
    """Entropies rise and the teacher's top-1 falls with T; the gap of a sharper
    teacher is positive and shrinks towards 0 (both lse -> log C)."""
    z = logits((200, 10), np.float64, seed=60, spread=1.0)
    v = logits((200, 10), np.float64, seed=61, spread=5.0)
    p = kdtemp.temperature_profile(z, v, np.arange(1, 21))
    assert (np.diff(p.teacher_entropy) > 0).all() and (np.diff(p.student_entropy) > 0).all()
    assert (np.diff(p.teacher_top1) < 0).all()
    assert (p.sharpness_gap > 0).all() and (np.diff(p.sharpness_gap) < 0).all()
    assert p.teacher_entropy[-1] < np.log(10)
    table = p.to_table()
    assert len(table.splitlines()) == 21 and "gap" in table.splitlines()[0]
    assert set(p.as_dict()) == {"temperatures", *PROFILE_COLUMNS}


def test_profile_equals_concatenated_temperatures():
    """One pass over K temperatures = K passes over one each."""
    z = logits((30, 7), np.float64, seed=70)
    v = logits((30, 7), np.float64, seed=71)
    whole = kdtemp.temperature_profile(z, v, TEMPS)
    for k, T in enumerate(TEMPS):
        one = kdtemp.temperature_profile(z, v, [T])
        for name in PROFILE_COLUMNS:
            assert getattr(one, name)[0] == getattr(whole, name)[k], name


# --------------------------------------------------------------------------------
# match_sharpness
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t_student", [1.0, 3.0, "per_row"])
def test_match_sharpness_finds_the_root(dtype, t_student):
    z = logits((64, 10), dtype, seed=80, spread=1.5)
    v = logits((64, 10), dtype, seed=81, spread=6.0)
    if t_student == "per_row":
        t_student = np.random.default_rng(3).uniform(0.8, 2.0, size=64)
    T = kdtemp.match_sharpness(z, v, t_student)
    assert isinstance(T, float) and 0.05 < T < 100
    gap = kdtemp.sharpness_gap(z, v, t_student, T)
    assert abs(gap) < 1e-8
    T_twin = twin.match_sharpness(z, v, t_student)  # float32: the kernel's lse rounds
    np.testing.assert_allclose(T, T_twin, rtol=1e-8 if dtype == np.float64 else 1e-5)
    # the sharper teacher needs a higher temperature than the student's
    assert T > np.mean(t_student)


def test_match_sharpness_mask_and_tokens():
    z = logits((2, 6, 12), np.float64, seed=90)
    v = logits((2, 6, 12), np.float64, seed=91, spread=5.0)
    mask = np.zeros((2, 6), bool)
    mask[:, :4] = True
    T = kdtemp.match_sharpness(z, v, 1.0, mask=mask)
    assert abs(kdtemp.sharpness_gap(z, v, 1.0, T, mask=mask)) < 1e-8
    np.testing.assert_allclose(T, twin.match_sharpness(z, v, 1.0, mask=mask), rtol=1e-8)
    T_all = kdtemp.match_sharpness(z, v, 1.0)
    assert T != T_all


@pytest.mark.parametrize("which", list(IMPLS))
def test_match_sharpness_out_of_range_is_a_clear_error(which):
    z = logits((20, 10), np.float64, seed=100, spread=1.0)
    v = logits((20, 10), np.float64, seed=101, spread=8.0)
    msg = r"no teacher temperature in \[0\.05, 1\.5\].*widen `bounds`"
    with pytest.raises(ValueError, match=msg):
        IMPLS[which].match_sharpness(z, v, 1.0, bounds=(0.05, 1.5))
    # a student sharper than the teacher at any T >= 1 (lse falls with T)
    with pytest.raises(ValueError, match="no teacher temperature"):
        IMPLS[which].match_sharpness(v, z, 1.0, bounds=(1.0, 100.0))
    for bad in [(0.0, 10.0), (5.0, 1.0), (1.0, np.inf), (-1.0, 2.0)]:
        with pytest.raises(ValueError, match="`bounds`"):
            IMPLS[which].match_sharpness(z, v, 1.0, bounds=bad)
    with pytest.raises(ValueError, match="`mask`"):
        IMPLS[which].match_sharpness(z, v, 1.0, mask=np.zeros(20, bool))


# --------------------------------------------------------------------------------
# Bad inputs: the error names the argument (C-backed and twin alike)
# --------------------------------------------------------------------------------

Z = logits((4, 5), np.float64, seed=110)
V = logits((4, 5), np.float64, seed=111)
Y = np.array([0, 1, 2, 3])

BAD_CALLS = [
    ("row_stats", (Z.astype(np.int64),), {}, TypeError, "`logits`"),
    ("row_stats", (np.float64(1.0),), {}, ValueError, "`logits`"),
    ("row_stats", (np.zeros((3, 0)),), {}, ValueError, "`logits`"),
    ("row_stats", (Z, 0.0), {}, ValueError, "`temperature`"),
    ("row_stats", (Z, -1.0), {}, ValueError, "`temperature`"),
    ("row_stats", (Z, np.nan), {}, ValueError, "`temperature`"),
    ("row_stats", (Z, np.ones(3)), {}, ValueError, "`temperature`"),
    ("row_stats", (Z, "hot"), {}, TypeError, "`temperature`"),
    ("row_stats", (Z, 1.0, Y.astype(float)), {}, TypeError, "`labels`"),
    ("row_stats", (Z, 1.0, np.array([0, 1, 2, 5])), {}, ValueError, "`labels`"),
    ("row_stats", (Z, 1.0, np.array([0, 1, -1, 2])), {}, ValueError, "`labels`"),
    ("row_stats", (Z, 1.0, Y[:3]), {}, ValueError, "`labels`"),
    ("row_stats", (Z,), {"mask": np.ones(3, bool)}, ValueError, "`mask`"),
    ("row_stats", (Z,), {"mask": np.ones(4)}, TypeError, "`mask`"),
    ("row_stats", (np.where(np.eye(4, 5) > 0, np.nan, Z),), {}, ValueError, "`logits`"),
    ("row_stats", (np.where(np.eye(4, 5) > 0, np.inf, Z),), {}, ValueError, "`logits`"),
    ("row_stats", (np.full((2, 3), -np.inf),), {}, ValueError, "`logits`"),
    ("row_stats", (Z,), {"n_threads": 0}, ValueError, "`n_threads`"),
    ("row_stats", (Z,), {"n_threads": 1.5}, TypeError, "`n_threads`"),
    ("temperature_profile", (Z, V[:3]), {}, ValueError, "`teacher`"),
    ("temperature_profile", (Z, V.astype(np.float32)), {}, TypeError, "`teacher`"),
    ("temperature_profile", (Z.astype(np.int32), V), {}, TypeError, "`student`"),
    ("temperature_profile", (Z, V, [1.0, 0.0]), {}, ValueError, "`temperatures`"),
    ("temperature_profile", (Z, V, [1.0, np.inf]), {}, ValueError, "`temperatures`"),
    ("temperature_profile", (Z, V, []), {}, ValueError, "`temperatures`"),
    ("temperature_profile", (Z, V, [[1.0, 2.0]]), {}, ValueError, "`temperatures`"),
    ("temperature_profile", (Z, V, [1.0], np.array([0, 1, 2, 9])), {}, ValueError, "`labels`"),
    ("temperature_profile", (Z, np.where(np.eye(4, 5) > 0, np.nan, V)), {}, ValueError,
     "`teacher`"),
    ("temperature_profile", (np.where(np.eye(4, 5) > 0, np.nan, Z), V), {}, ValueError,
     "`student`"),
    ("temperature_profile", (Z, V), {"mask": np.ones(5, bool)}, ValueError, "`mask`"),
    ("match_sharpness", (Z, V[:2]), {}, ValueError, "`teacher`"),
    ("match_sharpness", (Z, V, 0.0), {}, ValueError, "temperature"),
    ("match_sharpness", (Z, V), {"bounds": (2.0, 1.0)}, ValueError, "`bounds`"),
    ("match_sharpness", (Z.astype(np.int64), V), {}, TypeError, "`student`"),
]


@pytest.mark.parametrize("which", list(IMPLS))
@pytest.mark.parametrize("fn,args,kwargs,exc,name", BAD_CALLS,
                         ids=[f"{c[0]}-{k}" for k, c in enumerate(BAD_CALLS)])
def test_bad_inputs_name_the_argument(which, fn, args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        getattr(IMPLS[which], fn)(*args, **kwargs)


@pytest.mark.parametrize("which", list(IMPLS))
def test_check_finite_false_skips_the_check(which):
    x = Z.copy()
    x[0, 0] = np.inf
    r = IMPLS[which].row_stats(x, check_finite=False)  # no error
    np.testing.assert_allclose(r.sharpness[1:], kdtemp.sharpness(Z[1:]), rtol=1e-13)
    p = IMPLS[which].temperature_profile(x[1:], V[1:] + 0.0, [1.0], check_finite=False)
    assert p.count == 3


# --------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------

def test_thread_count_does_not_change_a_bit():
    rng = np.random.default_rng(120)
    for dtype in (np.float32, np.float64):
        z = (rng.normal(size=(3001, 67)) * 4).astype(dtype)
        v = (rng.normal(size=(3001, 67)) * 6).astype(dtype)
        y = rng.integers(0, 67, size=3001)
        y[::7] = -100
        temps = np.linspace(0.5, 20, 9)
        rs = [kdtemp.row_stats(z, 2.0, y, n_threads=n) for n in (1, 2, 3, 4)]
        ps = [kdtemp.temperature_profile(z, v, temps, y, n_threads=n) for n in (1, 2, 3, 4)]
        ms = [kdtemp.match_sharpness(z, v, 1.0, n_threads=n) for n in (1, 2, 3, 4)]
        for r in rs[1:]:
            for name in FLOAT_STATS + ("argmax", "correct"):
                np.testing.assert_array_equal(getattr(r, name), getattr(rs[0], name))
            assert r.batch == rs[0].batch
        for p in ps[1:]:
            for name in PROFILE_COLUMNS:
                np.testing.assert_array_equal(getattr(p, name), getattr(ps[0], name))
        assert len(set(ms)) == 1
