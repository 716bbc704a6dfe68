"""ce_loss, softmax and log_softmax: kdtemp against its NumPy twin and PyTorch.

``ce_loss`` is the hard-label term of kd.md alone (``F.cross_entropy`` with
``label_smoothing``); ``softmax``/``log_softmax`` are ``F.softmax(x / t)`` and
``F.log_softmax(x / t)`` row-wise, with a scalar or per-row temperature.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest


def _seed(request) -> int:
    return zlib.crc32(request.node.name.encode())


def _labels(shape, rng, skip_frac=0.25, ignore_index=-100):
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    if labels.ndim:
        labels[rng.random(labels.shape) < skip_frac] = ignore_index
    return labels


def compare_ce(ckd, ref, torch_oracle, check, student, labels, what="", **kw):
    """Torch vs the twin, then kdtemp vs both (as test_kd.compare does for kd_loss)."""
    dtype, shape = student.dtype, student.shape
    reduction = kw.get("reduction", "batchmean")
    expected = torch_oracle.ce(student, labels, **kw)
    tol = check.tolerances(dtype, student, None, kd_weight=0.0, ce_weight=1.0,
                           reduction=reduction, count=expected[2])
    ref_tol = check.tolerances(np.float64, student, None, kd_weight=0.0, ce_weight=1.0,
                               reduction=reduction, count=expected[2])
    if dtype == np.float32:
        ref_tol = (2 * check.eps32,) + ref_tol[1:]
    r = ref.ce_loss(student, labels, **kw)
    check.result_close(r, expected, dtype=dtype, shape=shape, reduction=reduction,
                       tol=ref_tol, what=f"reference vs torch {what}")
    c = ckd.ce_loss(student, labels, **kw)
    check.result_close(c, (r.loss, r.grad, r.count), dtype=dtype, shape=shape,
                       reduction=reduction, tol=tol, what=f"kdtemp vs reference {what}")
    check.result_close(c, expected, dtype=dtype, shape=shape, reduction=reduction,
                       tol=tol, what=f"kdtemp vs torch {what}")
    return c, r, expected


# --------------------------------------------------------------------------------
# ce_loss
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_ce_matrix(request, shape, dtype, reduction, label_smoothing, ckd, ref,
                   torch_oracle, check, unmutated):
    rng = np.random.default_rng(_seed(request))
    student = check.make_logits(shape, dtype, rng)
    labels = _labels(shape, rng)
    before = unmutated.snapshot(student, labels)
    compare_ce(ckd, ref, torch_oracle, check, student, labels,
               label_smoothing=label_smoothing, reduction=reduction)
    unmutated.check(before, student, labels)


@pytest.mark.parametrize("kind", ["huge", "large_vocab"])
def test_ce_extremes(request, dtype, kind, ckd, ref, torch_oracle, check):
    rng = np.random.default_rng(_seed(request))
    shape = (7, 13) if kind == "huge" else (3, 100003)
    student = check.make_logits(shape, dtype, rng, kind="huge" if kind == "huge" else "normal")
    labels = _labels(shape, rng, skip_frac=0.0)
    for reduction in ("none", "batchmean"):
        compare_ce(ckd, ref, torch_oracle, check, student, labels, label_smoothing=0.1,
                   reduction=reduction)


def test_ce_mask_and_ignore_index(request, dtype, reduction, ckd, ref, torch_oracle,
                                  check):
    rng = np.random.default_rng(_seed(request))
    shape = (4, 5, 9)
    student = check.make_logits(shape, dtype, rng)
    labels = _labels(shape, rng, ignore_index=3)
    labels[labels == -100] = 3  # no -100 here: 3 is the ignore_index
    mask = rng.random(shape[:-1]) < 0.6
    c, _, _ = compare_ce(ckd, ref, torch_oracle, check, student, labels, mask=mask,
                         ignore_index=3, reduction=reduction, label_smoothing=0.05)
    assert c.count == int(((labels != 3) & mask).sum())
    assert np.all(c.grad[~((labels != 3) & mask)] == 0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_ce_neginf(request, dtype, label_smoothing, ckd, ref, torch_oracle, check):
    """-inf logits away from the label: finite CE without smoothing, +inf with it;
    the gradient softmax - q is finite either way."""
    rng = np.random.default_rng(_seed(request))
    shape = (6, 11)
    student = check.make_logits(shape, dtype, rng)
    labels = _labels(shape, rng, skip_frac=0.0)
    check.sprinkle_neginf(student, rng, protect=labels)
    c, _, _ = compare_ce(ckd, ref, torch_oracle, check, student, labels,
                         label_smoothing=label_smoothing, reduction="none")
    has_hole = np.isneginf(student).any(axis=1)
    assert np.array_equal(np.isposinf(c.loss), has_hole & (label_smoothing > 0))


def test_ce_equals_kd_loss_ce_term(request, dtype, reduction, ckd, ref, check):
    """ce_loss(z, y) == kd_loss(z, anything, kd_weight=0, ce_weight=1)."""
    rng = np.random.default_rng(_seed(request))
    shape = (3, 4, 21)
    student = check.make_logits(shape, dtype, rng)
    teacher = check.make_logits(shape, dtype, rng)
    labels = _labels(shape, rng)
    tol = check.tolerances(dtype, student, None, kd_weight=0.0, ce_weight=1.0,
                           reduction=reduction, count=int((labels != -100).sum()))
    for impl in (ref, ckd):
        a = impl.ce_loss(student, labels, label_smoothing=0.2, reduction=reduction)
        b = impl.kd_loss(student, teacher, labels=labels, kd_weight=0.0, ce_weight=1.0,
                         label_smoothing=0.2, reduction=reduction)
        check.result_close(a, b, dtype=dtype, shape=shape, reduction=reduction, tol=tol,
                           what=impl.__name__)


def test_ce_out_and_views(request, dtype, ckd, ref, check):
    rng = np.random.default_rng(_seed(request))
    big = check.make_logits((10, 40), dtype, rng)
    student = big[::2, 3:33]
    labels = _labels(student.shape, rng)
    expected = ref.ce_loss(np.ascontiguousarray(student), labels, label_smoothing=0.1)
    tol = check.tolerances(dtype, student, None, kd_weight=0.0, ce_weight=1.0,
                           count=expected.count)
    before = big.copy()
    r = ckd.ce_loss(student, labels, label_smoothing=0.1)
    check.result_close(r, expected, dtype=dtype, shape=student.shape,
                       reduction="batchmean", tol=tol, what="strided view")
    assert np.array_equal(big, before)
    for impl in (ref, ckd):
        z = np.ascontiguousarray(student)
        r = impl.ce_loss(z, labels, label_smoothing=0.1, out=z)
        assert r.grad is z
        check.result_close(r, expected, dtype=dtype, shape=student.shape,
                           reduction="batchmean", tol=tol, what=f"out=student {impl}")
        r = impl.ce_loss(student, labels, compute_grad=False)
        assert r.grad is None


def test_ce_empty_and_all_skipped(dtype, reduction, ckd, ref):
    for impl in (ref, ckd):
        r = impl.ce_loss(np.zeros((0, 4), dtype), np.zeros(0, np.int64),
                         reduction=reduction)
        assert r.count == 0 and r.grad.shape == (0, 4)
        z = np.ones((3, 4), dtype)
        z[1] = -np.inf  # skipped, so allowed
        r = impl.ce_loss(z, np.full(3, -100), reduction=reduction)
        assert r.count == 0 and np.all(r.grad == 0)
        if reduction == "none":
            assert np.all(r.loss == 0) and r.loss.dtype == dtype
        else:
            assert type(r.loss) is float and r.loss == 0.0


def _long_ce_rows(dtype, rng):
    """Rows long enough for ce_loss's block path (16 KiB blocks: 4096 float32 or
    2048 float64 logits; the last block partial), each built to catch one slip
    in carrying the block maxima and sums to the row: the max in the first
    block, in the partial last one, whole blocks masked (-inf), a block of
    +1e4 beside blocks of -1e4 (their factor exp(m_b - M) underflows to 0),
    and one finite logit in the row."""
    C = 3 * 4096 + 5
    z = rng.normal(0, 3, size=(6, C)).astype(dtype)
    labels = rng.integers(8192, C, size=6)
    z[0, 5] = 40.0
    z[1, -2] = 40.0
    z[2, :8192] = -np.inf
    z[3, :4096] = rng.uniform(9000, 1e4, size=4096)
    z[3, 4096:] = rng.uniform(-1e4, -9000, size=C - 4096)
    labels[3] = 17
    z[4] = -np.inf
    z[4, 9000] = 1.5
    labels[4] = 9000
    return z, labels


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_ce_long_rows_in_blocks(request, dtype, label_smoothing, ckd, ref, torch_oracle,
                                check):
    rng = np.random.default_rng(_seed(request))
    student, labels = _long_ce_rows(dtype, rng)
    before = student.copy()
    c, _, _ = compare_ce(ckd, ref, torch_oracle, check, student, labels,
                         label_smoothing=label_smoothing, reduction="none")
    assert np.array_equal(student, before, equal_nan=True)
    masked = np.isneginf(student).any(axis=1)
    assert np.array_equal(np.isposinf(c.loss), masked & (label_smoothing > 0))
    assert np.isfinite(c.grad).all()
    # row 3: the +1e4 block holds all the mass, the label's logit is there
    assert c.grad[3, 4096:].max() <= 1e-30 + label_smoothing / student.shape[1]
    # in place (the gradient over the logits): the same bits
    z = student.copy()
    inplace = ckd.ce_loss(z, labels, label_smoothing=label_smoothing, reduction="none", out=z)
    assert inplace.grad is z
    assert inplace.loss.tobytes() == c.loss.tobytes() and z.tobytes() == c.grad.tobytes()


@pytest.mark.parametrize("where", ["nan_late", "nan_first", "nan_in_neginf_blocks", "all_nan",
                                   "posinf_late", "all_neginf", "label"])
def test_ce_long_row_errors(dtype, where, ckd):
    """The block path finds a bad value in any block, and reports the first bad
    row whatever the threads. Its max pass does not test for NaN (the NaN's
    exp makes the sum NaN), except in a block whose max is -inf, which it
    does not sum: NaN among -inf, or a row of NaN."""
    rng = np.random.default_rng(7)
    student, labels = _long_ce_rows(dtype, rng)
    student = np.concatenate([student] * 4)
    labels = np.concatenate([labels] * 4)
    bad = 9
    if where == "nan_late":
        student[bad, -3] = np.nan
    elif where == "nan_first":
        student[bad, 0] = np.nan
    elif where == "nan_in_neginf_blocks":
        student[bad, 4096:8192] = -np.inf  # whole blocks of either dtype
        student[bad, 5000] = np.nan
    elif where == "all_nan":
        student[bad] = np.nan
    elif where == "posinf_late":
        student[bad, -4100] = np.inf
    elif where == "all_neginf":
        student[bad] = -np.inf
    else:
        labels[bad] = student.shape[1]
    match = "labels" if where == "label" else "student"
    for n in (1, 2):
        with pytest.raises(ValueError, match=match) as info:
            ckd.ce_loss(student, labels, n_threads=n)
        assert f"row {bad}" in str(info.value) or where == "label"
    if where in ("nan_late", "posinf_late"):  # not errors without the check
        r = ckd.ce_loss(student, labels, check_finite=False, reduction="none")
        assert r.grad.shape == student.shape
    if where.startswith(("nan", "all_nan", "posinf")):  # the same check
        for n in (1, 2):
            with pytest.raises(ValueError, match=f"`student` has NaN.* row {bad}"):
                ckd.dts.ce_pair(student, student[::-1].copy(), labels, n_threads=n)
            with pytest.raises(ValueError, match=f"`logits` has NaN.* row {bad}"):
                ckd.softmax(student, n_threads=n)


# --------------------------------------------------------------------------------
# softmax / log_softmax
# --------------------------------------------------------------------------------

def _softmax_tol(dtype, mag, log):
    """(rtol, atol) against float64 torch; ``mag`` = max |x/t| over finite entries.

    float64: 1e-10 (log_softmax: atol 1e-13 (1 + mag), the rounding of x/t).
    float32: 1e-5 (computed in float64, rounded once); softmax values get a tiny
    atol for float32 underflow.
    """
    if np.dtype(dtype) == np.float64:
        return 1e-10, (1e-13 * (1 + mag) if log else 1e-300)
    return 1e-5, (1e-6 if log else 1e-37)


def compare_softmax(ckd, ref, torch_oracle, check, logits, temperature, log, what="",
                    **kw):
    name = "log_softmax" if log else "softmax"
    expected = torch_oracle.softmax(logits, temperature, log=log)
    dtype = logits.dtype
    mag = check.finite_max_abs(logits, temperature)
    r = getattr(ref, name)(logits, temperature, **kw)
    c = getattr(ckd, name)(logits, temperature, **kw)
    for got, who, tol in ((r, "reference", _softmax_tol(np.float64, mag, log)),
                          (c, "kdtemp", _softmax_tol(dtype, mag, log))):
        if who == "reference" and dtype == np.float32:  # float64 math, rounded once
            tol = (2.0 ** -23, tol[1] if log else 1e-44)  # 1e-44: float32 subnormals
        assert isinstance(got, np.ndarray) and got.dtype == dtype, who
        assert got.shape == logits.shape, who
        np.testing.assert_allclose(got, expected, rtol=tol[0], atol=tol[1],
                                   err_msg=f"{name} {who} vs torch {what}")
    return c


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_long_rows_in_blocks(request, dtype, log, ckd, ref, torch_oracle, check):
    """The rows of test_ce_long_rows_in_blocks (block maxima carried to the row
    through exp((m_b - M) / t)), at per-row temperatures, one of them below 1."""
    rng = np.random.default_rng(_seed(request))
    x, _ = _long_ce_rows(dtype, rng)
    t = np.array([0.5, 2.0, 4.0, 1.0, 3.0, 7.0])
    before = x.copy()
    c = compare_softmax(ckd, ref, torch_oracle, check, x, t, log)
    assert np.array_equal(x, before)
    if not log:
        np.testing.assert_allclose(c.sum(axis=1), 1.0,
                                   rtol=1e-12 if dtype == np.float64 else 1e-5)
    y = x.copy()
    assert getattr(ckd, "log_softmax" if log else "softmax")(y, t, out=y) is y
    assert y.tobytes() == c.tobytes()  # in place: the same bits
    for bad, err in ((np.nan, "logits"), (np.inf, "logits")):
        y = x.copy()
        y[4, -7] = bad
        with pytest.raises(ValueError, match=err):
            getattr(ckd, "log_softmax" if log else "softmax")(y, t)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("tkind", ["default", "scalar", "per_row", "lead_shaped"])
def test_softmax_matrix(request, shape, dtype, log, tkind, ckd, ref, torch_oracle, check,
                        unmutated):
    rng = np.random.default_rng(_seed(request))
    x = check.make_logits(shape, dtype, rng)
    n = check.n_rows(shape)
    t = {"default": 1.0, "scalar": 0.3, "per_row": rng.uniform(0.2, 6.0, size=n),
         "lead_shaped": rng.uniform(0.2, 6.0, size=shape[:-1])}[tkind]
    before = unmutated.snapshot(x, t)
    if tkind == "default":  # the temperature argument left out
        name = "log_softmax" if log else "softmax"
        np.testing.assert_array_equal(getattr(ckd, name)(x), getattr(ckd, name)(x, 1.0))
    c = compare_softmax(ckd, ref, torch_oracle, check, x, t, log)
    if not log:
        np.testing.assert_allclose(c.reshape(n, -1).sum(axis=1), 1.0,
                                   rtol=1e-12 if dtype == np.float64 else 1e-5)
    unmutated.check(before, x, t)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("kind", ["huge", "neginf", "large_vocab"])
def test_softmax_extremes(request, dtype, log, kind, ckd, ref, torch_oracle, check):
    rng = np.random.default_rng(_seed(request))
    if kind == "huge":
        x = check.make_logits((2, 3, 17), dtype, rng, kind="huge")
    elif kind == "neginf":
        x = check.make_logits((7, 13), dtype, rng)
        check.sprinkle_neginf(x, rng, frac=0.5)
    else:
        x = check.make_logits((3, 100003), dtype, rng)
    for t in (1.0, 4.0):
        c = compare_softmax(ckd, ref, torch_oracle, check, x, t, log, what=kind)
        if kind == "neginf":
            hole = np.isneginf(x)
            assert np.all(c[hole] == (-np.inf if log else 0.0))
            assert np.all(np.isfinite(c[~hole]))


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_out_and_views(request, dtype, log, ckd, ref, torch_oracle, check):
    name = "log_softmax" if log else "softmax"
    rng = np.random.default_rng(_seed(request))
    big = check.make_logits((12, 50), dtype, rng)
    views = {"column_slice": big[:, 5:45], "every_other_row": big[::2],
             "column_stride": big[:, ::3], "fortran": np.asfortranarray(big[:, :20])}
    for what, x in views.items():
        before = big.copy()
        compare_softmax(ckd, ref, torch_oracle, check, x, 2.0, log, what=what)
        assert np.array_equal(big, before), what
    x = check.make_logits((5, 31), dtype, rng)
    expected = torch_oracle.softmax(x, 1.5, log=log)
    tol = _softmax_tol(dtype, check.finite_max_abs(x, 1.5), log)
    for impl in (ref, ckd):
        y = x.copy()
        got = getattr(impl, name)(y, 1.5, out=y)
        assert got is y
        np.testing.assert_allclose(y, expected, rtol=tol[0], atol=tol[1])
        out = np.full((5, 40), np.nan, dtype)[:, 2:33]
        got = getattr(impl, name)(x, 1.5, out=out)
        assert got is out
        np.testing.assert_allclose(out, expected, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_empty(dtype, log, ckd, ref):
    name = "log_softmax" if log else "softmax"
    for impl in (ref, ckd):
        for shape in ((0, 5), (2, 0, 5)):
            got = getattr(impl, name)(np.zeros(shape, dtype))
            assert got.shape == shape and got.dtype == dtype
