"""kd_loss: the C-backed kdtemp.kd_loss against its NumPy twin and against PyTorch.

Every comparison first checks the oracle (the NumPy twin against torch), then the C
result against both. Registry parameters (divergence, reduction, dtype, shape, tform,
impl_name) come from conftest.py.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp


def _seed(request) -> int:
    return zlib.crc32(request.node.name.encode())


def compare(ckd, ref, torch_oracle, check, student, teacher, what="", min_grad_atol=0.0,
            **kw):
    """Torch vs the twin (oracle check), then kdtemp vs the twin and vs torch
    (its gradient to at least ``min_grad_atol``).

    Returns the three results (C, twin, torch) for extra checks.
    """
    dtype = student.dtype
    shape = student.shape
    reduction = kw.get("reduction", "batchmean")
    expected = torch_oracle.kd(student, teacher, **kw)
    tol = check.tolerances(dtype, student, teacher, count=expected[2], **kw)
    tol = tol[:2] + (max(tol[2], min_grad_atol),)
    # The twin computes in float64 like torch and only rounds its float32 outputs:
    # hold it to the float64 tolerances (rtol one float32 rounding for float32).
    ref_tol = check.tolerances(np.float64, student, teacher, count=expected[2], **kw)
    if dtype == np.float32:
        ref_tol = (2 * check.eps32,) + ref_tol[1:]
    r = ref.kd_loss(student, teacher, **kw)
    check.result_close(r, expected, dtype=dtype, shape=shape, reduction=reduction,
                       tol=ref_tol, what=f"reference vs torch {what}")
    c = ckd.kd_loss(student, teacher, **kw)
    check.result_close(c, (r.loss, r.grad, r.count), dtype=dtype, shape=shape,
                       reduction=reduction, tol=tol, what=f"kdtemp vs reference {what}")
    check.result_close(c, expected, dtype=dtype, shape=shape, reduction=reduction,
                       tol=tol, what=f"kdtemp vs torch {what}")
    return c, r, expected


# --------------------------------------------------------------------------------
# The full matrix: divergence x reduction x temperature form x dtype x shape
# --------------------------------------------------------------------------------

def test_matrix(request, divergence, reduction, tform, dtype, shape, ckd, ref,
                torch_oracle, check, make_kd_case, unmutated):
    student, teacher, kw = make_kd_case(shape, dtype, tform, seed=_seed(request))
    before = unmutated.snapshot(student, teacher, kw.get("temperature"),
                                kw.get("teacher_temperature"))
    compare(ckd, ref, torch_oracle, check, student, teacher, divergence=divergence,
            reduction=reduction, **kw)
    unmutated.check(before, student, teacher, kw.get("temperature"),
                    kw.get("teacher_temperature"))


# Rows up to KD_CACHE_COLS = 262144 classes (csrc/kd_common.h) keep their exps in row
# buffers between the passes, longer rows recompute them: a shape on each side (the
# longer one with one temperature form, for the suite's time).
LARGE_VOCAB_CASES = [("scalar", (3, 100003)), ("teacher_per_row", (3, 100003)),
                     ("scalar", (2, 262147))]


@pytest.mark.parametrize("tform,shape", LARGE_VOCAB_CASES,
                         ids=[f"{t}-{s[1]}" for t, s in LARGE_VOCAB_CASES])
def test_large_vocab(request, divergence, tform, shape, dtype, ckd, ref, torch_oracle, check,
                     make_kd_case):
    """LLM vocabularies, every reduction. Torch and the twin are run once with
    reduction="none"; the sum and batchmean results follow from it."""
    student, teacher, kw = make_kd_case(shape, dtype, tform, seed=_seed(request))
    t_loss, t_grad, count = torch_oracle.kd(student, teacher, divergence=divergence,
                                            reduction="none", **kw)
    r = ref.kd_loss(student, teacher, divergence=divergence, reduction="none", **kw)
    ref_tol = check.tolerances(np.float64, student, teacher, reduction="none", **kw)
    if dtype == np.float32:
        ref_tol = (2 * check.eps32,) + ref_tol[1:]
    check.result_close(r, (t_loss, t_grad, count), dtype=dtype, shape=shape,
                       reduction="none", tol=ref_tol, what="reference vs torch")
    derived = {"none": (t_loss, t_grad), "sum": (float(t_loss.sum()), t_grad),
               "batchmean": (float(t_loss.sum()) / count, t_grad / count)}
    for reduction, (e_loss, e_grad) in derived.items():
        c = ckd.kd_loss(student, teacher, divergence=divergence, reduction=reduction, **kw)
        tol = check.tolerances(dtype, student, teacher, reduction=reduction, count=count,
                               **kw)
        check.result_close(c, (e_loss, e_grad, count), dtype=dtype, shape=shape,
                           reduction=reduction, tol=tol, what=f"kdtemp vs torch {reduction}")


@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 17)])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_huge_logits(request, divergence, dtype, reduction, shape, temperature, ckd,
                     ref, torch_oracle, check, make_kd_case):
    """Logits uniform in +-1e4: no overflow, no NaN, same values as torch."""
    student, teacher, _ = make_kd_case(shape, dtype, seed=_seed(request), kind="huge")
    c, _, _ = compare(ckd, ref, torch_oracle, check, student, teacher,
                      divergence=divergence, temperature=temperature, reduction=reduction)
    assert np.all(np.isfinite(c.loss))


def test_defaults(request, ckd, ref, torch_oracle, check, make_kd_case):
    """No keyword: Hinton KD (kl) at T=4 with the T^2 scale, batchmean."""
    student, teacher, _ = make_kd_case((7, 13), np.float64, seed=_seed(request))
    c, _, _ = compare(ckd, ref, torch_oracle, check, student, teacher)
    explicit = ckd.kd_loss(student, teacher, temperature=4.0, teacher_temperature=4.0,
                           divergence="kl", scale="T2", reduction="batchmean")
    assert c.loss == explicit.loss and np.array_equal(c.grad, explicit.grad)


@pytest.mark.parametrize("scale", ["T2", "none"])
def test_scale(request, divergence, dtype, tform, scale, ckd, ref, torch_oracle, check,
               make_kd_case):
    student, teacher, kw = make_kd_case((5, 11), dtype, tform, seed=_seed(request))
    compare(ckd, ref, torch_oracle, check, student, teacher, divergence=divergence,
            scale=scale, reduction="sum", **kw)


@pytest.mark.parametrize("divergence,beta,alpha", [
    ("jsd", 0.1, 0.1), ("jsd", 0.9, 0.1), ("jsd", 1e-3, 0.1),
    ("skew_kl", 0.5, 0.0), ("skew_kl", 0.5, 0.5), ("skew_kl", 0.5, 0.99),
    ("skew_reverse_kl", 0.5, 0.0), ("skew_reverse_kl", 0.5, 0.5),
    ("skew_reverse_kl", 0.5, 0.99),
])
def test_beta_alpha(request, divergence, beta, alpha, dtype, ckd, ref, torch_oracle,
                    check, make_kd_case):
    student, teacher, kw = make_kd_case((6, 19), dtype, "per_row", seed=_seed(request))
    compare(ckd, ref, torch_oracle, check, student, teacher, divergence=divergence,
            beta=beta, alpha=alpha, reduction="none", **kw)


def _sharp_case(dtype, rng, sharp):
    """(student, teacher): 3 x 37 logits in [-3, 3], the `sharp` side ("student" or
    "teacher") with one logit 40 above the rest (float32; 400 for float64), two
    -inf entries shared by both and, in row 2, one on the sharp side only. At
    T = 0.25 the sharp side's other probabilities are e^-150 (e^-1500): 0 in the
    dtype, with finite logs."""
    z = rng.uniform(-3, 3, size=(3, 37))
    v = rng.uniform(-3, 3, size=(3, 37))
    (z if sharp == "student" else v)[:, 11] = 40.0 if dtype == np.float32 else 400.0
    z[:, [4, 30]] = v[:, [4, 30]] = -np.inf
    (z if sharp == "student" else v)[2, 20] = -np.inf  # mass on one side only: +inf
    return z.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("divergence,same_as,sharp", [
    ("skew_kl", "kl", "student"), ("skew_reverse_kl", "reverse_kl", "teacher")])
def test_skew_alpha_zero_is_its_kl(request, divergence, same_as, sharp, dtype, ckd, ref):
    """alpha = 0 makes the skew KLs the plain ones, M = pS or pT, also where that
    probability underflows: the kernel took log M from M and gave +inf there (the
    NumPy twin's skew_reverse_kl gradient was NaN, its skew_kl one missed -pT)."""
    import torch
    from kdtemp.torch import _reference as torch_twin
    z, v = _sharp_case(dtype, np.random.default_rng(_seed(request)), sharp)
    kw = dict(temperature=0.25, reduction="none")
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for impl in (ref, ckd):
        a = impl.kd_loss(z, v, divergence=divergence, alpha=0.0, **kw)
        b = impl.kd_loss(z, v, divergence=same_as, **kw)
        # the case is what it says: large finite losses, and +inf in row 2
        assert np.isfinite(b.loss[:2]).all() and (b.loss[:2] > 5).all()
        assert np.isposinf(b.loss[2])
        np.testing.assert_allclose(a.loss, b.loss, **tol)
        # an infinite skew row has no gradient (kd.md), even where the KL keeps one
        np.testing.assert_allclose(a.grad[:2], b.grad[:2], **tol)
        assert np.all(a.grad[2] == 0)
    zt = torch.tensor(z, requires_grad=True)
    loss, _ = torch_twin.kd_loss(zt, torch.tensor(v), divergence=divergence, alpha=0.0, **kw)
    loss.sum().backward()
    np.testing.assert_allclose(loss.detach().numpy(), b.loss, **tol)
    np.testing.assert_allclose(zt.grad.numpy(), a.grad, **tol)


@pytest.mark.parametrize("divergence,param,sharp,weight", [
    ("skew_reverse_kl", "alpha", "teacher", 0.0),
    ("skew_reverse_kl", "alpha", "teacher", 1e-30),
    ("skew_reverse_kl", "alpha", "teacher", 1e-300),
    ("skew_reverse_kl", "alpha", "teacher", 5e-324),  # subnormal: log taken scaled
    ("skew_kl", "alpha", "student", 0.0),
    ("skew_kl", "alpha", "student", 1e-30),
    ("jsd", "beta", "student", 1e-30),
    ("jsd", "beta", "teacher", 1 - 1e-12),
])
def test_mixture_of_underflowed_probabilities(request, divergence, param, sharp, weight,
                                              ckd, ref, torch_oracle, check):
    """float32 rows whose mixture M is tiny or 0 in float32 (weights below 2^-60
    take the double lanes) against the float64 oracles: log M comes from the
    log-probabilities there. Before, alpha = 0 gave +inf and alpha = 1e-300 (M
    subnormal in double) a loss four times too large."""
    z, v = _sharp_case(np.float32, np.random.default_rng(_seed(request)), sharp)
    # The kernel rounds (x - max)/t to float: at |x/t| up to 160 that moves the
    # log-ratios by 160 ulp, and the gradient (coefficient tT = 0.25) by as much
    # (reverse KL's own, on such rows, is 8e-7 off the float64 twin).
    c, _, _ = compare(ckd, ref, torch_oracle, check, z, v, divergence=divergence,
                      temperature=0.25, reduction="none", min_grad_atol=2.0**-24 * 160 * 0.25,
                      **{param: weight})
    assert np.isfinite(c.loss[:2]).all() and np.isfinite(c.grad).all()


def test_skew_subnormal_alpha_weighs_a_whole_mixture(request, ckd, ref):
    """Skew reverse KL, float64, alpha = 5e-324 and a teacher whose other
    probabilities are e^-10000: M is alpha pS there (0 in double), so the loss
    is about sum pS (-log alpha) = 744 (times T^2), from log alpha of a
    subnormal alpha, which is taken scaled into the vector log's range."""
    z, v = _sharp_case(np.float64, np.random.default_rng(_seed(request)), "teacher")
    v[:, 11] = 2500.0
    kw = dict(divergence="skew_reverse_kl", alpha=5e-324, temperature=0.25,
              reduction="none")
    c, r = ckd.kd_loss(z, v, **kw), ref.kd_loss(z, v, **kw)
    assert np.all(np.abs(r.loss / 0.0625 - 744.4) < 2)  # the case is what it says
    np.testing.assert_allclose(c.loss, r.loss, rtol=1e-12)
    np.testing.assert_allclose(c.grad, r.grad, rtol=1e-9, atol=1e-12)


def test_reference_kl_is_torch_kl_div(request, dtype, make_kd_case, ref, torch_oracle):
    """The oracle's forward KL is literally torch's kl_div(log_softmax, softmax) * T^2."""
    import torch
    import torch.nn.functional as F

    student, teacher, _ = make_kd_case((7, 13), dtype, seed=_seed(request))
    t = 3.0
    zs = torch.tensor(student.astype(np.float64))
    vt = torch.tensor(teacher.astype(np.float64))
    per_row = F.kl_div(F.log_softmax(zs / t, 1), F.softmax(vt / t, 1),
                       reduction="none").sum(1) * t * t
    r = ref.kd_loss(student, teacher, temperature=t, reduction="none")
    rtol = 1e-12 if dtype == np.float64 else 2e-7
    np.testing.assert_allclose(r.loss, per_row.numpy(), rtol=rtol, atol=1e-15)


# --------------------------------------------------------------------------------
# -inf logits
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["shared", "teacher_only", "student_only"])
@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 17)])
def test_neginf(request, divergence, dtype, where, shape, reduction, ckd, ref,
                torch_oracle, check):
    """-inf entries: probability 0; the loss is +inf exactly where the math says so,
    gradients are finite (zero rows for a +inf non-kl divergence)."""
    rng = np.random.default_rng(_seed(request))
    student = check.make_logits(shape, dtype, rng)
    teacher = check.make_logits(shape, dtype, rng)
    if where == "shared":
        hole = check.sprinkle_neginf(student, rng)
        teacher.reshape(hole.shape)[hole] = -np.inf
    elif where == "teacher_only":
        check.sprinkle_neginf(teacher, rng)
    else:
        check.sprinkle_neginf(student, rng)
    kw = check.temperature_kwargs("teacher_per_row", check.n_rows(shape), rng)
    c, _, expected = compare(ckd, ref, torch_oracle, check, student, teacher,
                             divergence=divergence, reduction=reduction, **kw)
    assert not np.any(np.isnan(c.loss))
    assert np.isfinite(c.grad).all()
    if reduction == "none":
        infinite = np.isinf(expected[0])
        assert np.array_equal(np.isinf(c.loss), infinite)
        if where == "shared":  # same support: every divergence is finite
            assert not infinite.any()


def test_neginf_kl_row_is_inf_with_finite_grad(ckd, ref, dtype):
    """Teacher mass where the student is -inf: KL = +inf, grad (s/tS)(pS - pT)."""
    z = np.array([[0.0, -np.inf, 1.0], [0.5, 0.2, -0.1]], dtype=dtype)
    v = np.array([[0.0, 1.0, 1.0], [0.1, 0.2, 0.3]], dtype=dtype)
    t = 2.0
    for impl in (ref, ckd):
        r = impl.kd_loss(z, v, temperature=t, reduction="none")
        assert np.isposinf(r.loss[0]) and np.isfinite(r.loss[1])
        ps = np.exp(z[0] / t) / np.exp(z[0] / t).sum()
        pt = np.exp(v[0] / t) / np.exp(v[0] / t).sum()
        np.testing.assert_allclose(r.grad[0], t * (ps - pt), rtol=1e-6, atol=1e-7)
        rb = impl.kd_loss(z, v, temperature=t)
        assert rb.loss == np.inf and np.isfinite(rb.grad).all()


def test_neginf_reverse_kl_row_inf_zero_grad(ckd, ref, dtype):
    """reverse_kl with the teacher -inf where the student is not: +inf, grad row 0."""
    z = np.array([[0.0, 1.0, 1.0], [0.5, 0.2, -0.1]], dtype=dtype)
    v = np.array([[0.0, -np.inf, 1.0], [0.1, 0.2, 0.3]], dtype=dtype)
    for impl in (ref, ckd):
        for div in ("reverse_kl", "symmetric_kl"):
            r = impl.kd_loss(z, v, divergence=div, reduction="none")
            assert np.isposinf(r.loss[0]) and np.isfinite(r.loss[1])
            assert np.all(r.grad[0] == 0) and np.any(r.grad[1] != 0)


# --------------------------------------------------------------------------------
# Skipped rows
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("skip_by", ["labels", "mask", "both", "flat_labels"])
def test_skipped_rows(request, divergence, dtype, reduction, skip_by, ckd, ref,
                      torch_oracle, check, make_kd_case, unmutated):
    shape = (3, 4, 9)
    student, teacher, kw = make_kd_case(shape, dtype, "per_row", seed=_seed(request))
    rng = np.random.default_rng(_seed(request) + 1)
    lead = shape[:-1]
    labels = rng.integers(0, shape[-1], size=lead)
    labels[rng.random(lead) < 0.3] = -100
    mask = rng.random(lead) < 0.7
    # A skipped row may be all -inf (padding): allowed.
    labels[0, 1] = -100
    mask[0, 1] = False
    student[0, 1] = -np.inf
    teacher[0, 1] = -np.inf
    if skip_by in ("labels", "flat_labels"):
        kw["labels"] = labels if skip_by == "labels" else labels.ravel()
    elif skip_by == "mask":
        kw["mask"] = mask
    else:
        kw["labels"], kw["mask"] = labels, mask
    before = unmutated.snapshot(student, teacher, labels, mask)
    c, _, expected = compare(ckd, ref, torch_oracle, check, student, teacher,
                             divergence=divergence, reduction=reduction, **kw)
    unmutated.check(before, student, teacher, labels, mask)
    counted = np.ones(lead, bool)
    if "labels" in kw:
        counted &= labels != -100
    if "mask" in kw:
        counted &= mask
    assert c.count == counted.sum()
    assert np.all(c.grad[~counted] == 0)
    if reduction == "none":
        assert np.all(c.loss[~counted] == 0)


def test_custom_ignore_index(request, ckd, ref, torch_oracle, check, make_kd_case):
    student, teacher, kw = make_kd_case((6, 8), np.float64, seed=_seed(request))
    labels = np.array([0, 7, 3, 7, 2, 1])
    c, _, _ = compare(ckd, ref, torch_oracle, check, student, teacher, labels=labels,
                      ignore_index=7, **kw)
    assert c.count == 4


def test_all_rows_skipped(request, divergence, dtype, reduction, ckd, ref, make_kd_case):
    """No counted row: loss 0 (never NaN), zero gradient, count 0."""
    student, teacher, kw = make_kd_case((2, 3, 7), dtype, seed=_seed(request))
    student[1, 2] = -np.inf  # an all -inf row is fine when skipped
    for impl in (ref, ckd):
        for extra in ({"mask": np.zeros((2, 3), bool)},
                      {"labels": np.full((2, 3), -100)},
                      {"labels": np.full(6, -100), "ce_weight": 0.5}):
            r = impl.kd_loss(student, teacher, divergence=divergence,
                             reduction=reduction, **kw, **extra)
            assert r.count == 0
            if reduction == "none":
                assert r.loss.shape == (2, 3) and np.all(r.loss == 0)
            else:
                assert type(r.loss) is float and r.loss == 0.0
            assert r.grad.shape == student.shape and np.all(r.grad == 0)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_first_bad_row_is_named(dtype, n_threads, ckd):
    """Short forward-KL rows run four at a time, each phase over the four
    (kl_group), and find NaN through the sums rather than in the maxima pass:
    the error names the first bad row, not the first one a phase came to,
    with the student's error before the teacher's in a row (as the row loop
    checks them), and a skipped all -inf row in the group is no error."""
    rng = np.random.default_rng(3)
    student = rng.normal(size=(4103, 50)).astype(dtype)
    teacher = rng.normal(size=(4103, 50)).astype(dtype)
    student[4101, 7] = np.nan      # found in the sums, the teacher's -inf before
    teacher[4101, :] = -np.inf
    student[4100, :] = -np.inf     # NaN among -inf only: no finite max
    student[4100, 9] = np.nan
    teacher[4098, 2] = np.nan      # the teacher's NaN in the sums
    student[4097, 3] = np.nan      # a later group
    student[4094, :] = -np.inf     # all -inf, after row 4093 in its group
    teacher[4093, 1] = np.inf      # the teacher's, a check after the student's
    mask = np.ones(4103, bool)
    for first, msg in [(4093, "`teacher` has NaN or \\+inf in row 4093"),
                       (4094, "`student` row 4094 is all -inf"),
                       (4097, "`student` has NaN or \\+inf in row 4097"),
                       (4098, "`teacher` has NaN or \\+inf in row 4098"),
                       (4100, "`student` has NaN or \\+inf in row 4100"),
                       (4101, "`student` has NaN or \\+inf in row 4101")]:
        with pytest.raises(ValueError, match=msg):
            ckd.kd_loss(student, teacher, mask=mask, n_threads=n_threads)
        mask[first] = False
    r = ckd.kd_loss(student, teacher, mask=mask, n_threads=n_threads, reduction="none")
    assert np.all(r.loss[~mask] == 0) and np.all(r.grad[~mask] == 0)
    assert np.isfinite(r.loss).all() and r.count == 4097
    # unchecked, NaN or +inf is no error (those rows' values are unspecified)
    # and the other rows are as before; rows with no finite max on a side are
    # still errors
    with pytest.raises(ValueError, match="`student` row 4094 is all -inf"):
        ckd.kd_loss(student, teacher, check_finite=False, n_threads=n_threads,
                    mask=~np.isin(np.arange(4103), [4100, 4101]))
    u = ckd.kd_loss(student, teacher, check_finite=False, n_threads=n_threads,
                    reduction="none", mask=~np.isin(np.arange(4103), [4094, 4100, 4101]))
    ok = np.ones(4103, bool)
    ok[4093:] = False
    np.testing.assert_array_equal(u.loss[ok], r.loss[ok])


@pytest.mark.parametrize("shape", [(0, 5), (2, 0, 5)])
def test_empty_batch(shape, dtype, reduction, ckd, ref):
    """N == 0 is not an error: loss 0, count 0, an empty gradient."""
    z = np.zeros(shape, dtype)
    for impl in (ref, ckd):
        r = impl.kd_loss(z, z.copy(), reduction=reduction)
        assert r.count == 0
        if reduction == "none":
            assert r.loss.shape == shape[:-1] and r.loss.dtype == dtype
        else:
            assert type(r.loss) is float and r.loss == 0.0
        assert r.grad.shape == shape and r.grad.dtype == dtype
        r = impl.kd_loss(z, z.copy(), temperature=np.ones(0), reduction=reduction)
        assert r.count == 0


# --------------------------------------------------------------------------------
# The hard-label CE term
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weights", [(0.9, 0.1), (0.0, 1.0), (1.0, 2.5)])
def test_ce_term(request, dtype, reduction, label_smoothing, weights, ckd, ref,
                 torch_oracle, check, make_kd_case):
    shape = (2, 5, 23)
    student, teacher, kw = make_kd_case(shape, dtype, "teacher_per_row",
                                        seed=_seed(request))
    rng = np.random.default_rng(_seed(request) + 1)
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    labels[1, 3] = -100
    compare(ckd, ref, torch_oracle, check, student, teacher, labels=labels,
            kd_weight=weights[0], ce_weight=weights[1], label_smoothing=label_smoothing,
            reduction=reduction, **kw)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_ce_term_with_neginf(request, dtype, label_smoothing, ckd, ref, torch_oracle,
                             check):
    """-inf student logits (not at the label): CE is finite without smoothing and
    +inf with it (q > 0 on a -inf class); the CE gradient softmax - q stays finite."""
    rng = np.random.default_rng(_seed(request))
    shape = (6, 15)
    student = check.make_logits(shape, dtype, rng)
    teacher = check.make_logits(shape, dtype, rng)
    labels = rng.integers(0, shape[-1], size=shape[0])
    hole = check.sprinkle_neginf(student, rng, protect=labels)
    teacher[hole] = -np.inf
    c, _, _ = compare(ckd, ref, torch_oracle, check, student, teacher, labels=labels,
                      kd_weight=0.5, ce_weight=0.5, label_smoothing=label_smoothing,
                      reduction="none", divergence="jsd")
    assert np.all(np.isposinf(c.loss) == (label_smoothing > 0))


def test_ce_weight_zero_kd_only(request, ckd, ref, make_kd_case):
    """ce_weight=0 with labels: labels only select rows."""
    student, teacher, kw = make_kd_case((5, 9), np.float64, seed=_seed(request))
    labels = np.array([1, -100, 3, 4, 0])
    for impl in (ref, ckd):
        a = impl.kd_loss(student, teacher, labels=labels, reduction="none", **kw)
        b = impl.kd_loss(student, teacher, mask=labels != -100, reduction="none", **kw)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-13, atol=0)
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-13, atol=0)


# --------------------------------------------------------------------------------
# Layouts: strided views, out=, compute_grad
# --------------------------------------------------------------------------------

def _views(dtype, rng, c=37):
    """(name, student view, teacher view) in several memory layouts."""
    def big(shape):
        return np.asarray(rng.normal(0, 3, size=shape), dtype=dtype)
    b1, b2 = big((6, c + 11)), big((6, c + 11))
    yield "column_slice", b1[:, 5:5 + c], b2[:, 5:5 + c]
    b1, b2 = big((12, c)), big((12, c))
    yield "every_other_row", b1[::2], b2[::2]
    b1, b2 = big((12, c + 3)), big((12, c + 3))
    yield "both", b1[1::2, 3:], b2[::2, :c]
    b1, b2 = big((6, 2 * c)), big((6, 2 * c))
    yield "column_stride", b1[:, ::2], b2[:, 1::2]
    yield "fortran", np.asfortranarray(big((6, c))), np.asfortranarray(big((6, c)))
    b1, b2 = big((2, 3, c + 4)), big((2, 3, c + 4))
    yield "token_slice", b1[..., 2:2 + c], b2[..., 2:2 + c]
    b1 = big((6, c))
    yield "reversed_rows", b1[::-1], big((6, c))[::-1]


def test_strided_views(request, divergence, dtype, ckd, ref, torch_oracle, check,
                       unmutated):
    rng = np.random.default_rng(_seed(request))
    for name, student, teacher in _views(dtype, rng):
        n = check.n_rows(student.shape)
        kw = dict(divergence=divergence, temperature=rng.uniform(1, 5, size=n),
                  reduction="none")
        before = unmutated.snapshot(student, teacher)
        c, _, _ = compare(ckd, ref, torch_oracle, check, student, teacher, what=name, **kw)
        unmutated.check(before, student, teacher)
        contiguous = ckd.kd_loss(np.ascontiguousarray(student),
                                 np.ascontiguousarray(teacher), **kw)
        tol = check.tolerances(dtype, student, teacher, temperature=kw["temperature"])
        np.testing.assert_allclose(c.loss, contiguous.loss, rtol=tol[0], atol=tol[1],
                                   err_msg=name)
        np.testing.assert_allclose(c.grad, contiguous.grad, rtol=tol[0], atol=tol[2],
                                   err_msg=name)


@pytest.mark.parametrize("labels_too", [False, True])
def test_out_aliases_student(request, divergence, dtype, reduction, labels_too, ckd,
                             ref, check, make_kd_case):
    """out=student: the gradient overwrites the logits in place and is returned."""
    student, teacher, kw = make_kd_case((2, 4, 29), dtype, "per_row", seed=_seed(request))
    if labels_too:
        kw.update(labels=np.array([[0, 1, -100, 3], [4, -100, 6, 7]]), ce_weight=0.3)
    expected = ref.kd_loss(student.copy(), teacher, divergence=divergence,
                           reduction=reduction, **kw)
    teacher_before = teacher.copy()
    for impl in (ref, ckd):
        z = student.copy()
        r = impl.kd_loss(z, teacher, divergence=divergence, reduction=reduction, out=z,
                         **kw)
        assert r.grad is z
        tol = check.tolerances(dtype, student, teacher, count=expected.count,
                               reduction=reduction, **kw)
        check.result_close(r, expected, dtype=dtype, shape=student.shape,
                           reduction=reduction, tol=tol, what=impl.__name__)
        assert np.array_equal(teacher, teacher_before)


def test_out_separate_buffers(request, dtype, ckd, ref, check, make_kd_case):
    student, teacher, kw = make_kd_case((5, 31), dtype, "teacher_scalar",
                                        seed=_seed(request))
    expected = ref.kd_loss(student, teacher, divergence="jsd", **kw)
    tol = check.tolerances(dtype, student, teacher, count=expected.count, **kw)
    for impl in (ref, ckd):
        buffers = {"contiguous": np.full(student.shape, np.nan, dtype),
                   "row_strided": np.full((5, 40), np.nan, dtype)[:, 3:34]}
        for name, out in buffers.items():
            before = (student.copy(), teacher.copy())
            r = impl.kd_loss(student, teacher, divergence="jsd", out=out, **kw)
            assert r.grad is out, name
            check.result_close(r, expected, dtype=dtype, shape=student.shape,
                               reduction="batchmean", tol=tol, what=name)
            assert np.array_equal(student, before[0]) and np.array_equal(teacher, before[1])


def test_out_layouts_the_kernel_cannot_write(ckd):
    """kdtemp writes ``out`` in place, so its rows must be contiguous and it must not
    partly overlap ``student``: anything else is a ValueError naming ``out``
    (``kdtemp`` only; the NumPy twin can write any layout)."""
    rng = np.random.default_rng(0)
    z, v = rng.normal(size=(5, 9)), rng.normal(size=(5, 9))
    buf = rng.normal(size=(6, 9))
    cases = {"fortran": (z, np.asfortranarray(np.empty((5, 9)))),
             "column_stride": (z, np.empty((5, 18))[:, ::2]),
             "partial_overlap": (buf[:5], buf[1:])}
    for name, (student, out) in cases.items():
        before = student.copy()
        with pytest.raises(ValueError, match="out"):
            ckd.kd_loss(student, v, out=out)
        assert np.array_equal(student, before), name


def test_compute_grad_false(request, divergence, dtype, ckd, ref, make_kd_case):
    student, teacher, kw = make_kd_case((7, 13), dtype, "per_row", seed=_seed(request))
    for impl in (ref, ckd):
        with_grad = impl.kd_loss(student, teacher, divergence=divergence, **kw)
        without = impl.kd_loss(student, teacher, divergence=divergence,
                               compute_grad=False, **kw)
        assert without.grad is None
        assert without.count == with_grad.count
        np.testing.assert_allclose(without.loss, with_grad.loss, rtol=1e-12)


def test_argument_forms(request, ckd, ref, torch_oracle, check):
    """Accepted spellings of the per-row arguments give the same results: labels of
    any integer dtype, lists, strided arrays; integer masks; temperatures as int,
    list, float32 array, 0-d array or an array of the leading shape."""
    rng = np.random.default_rng(_seed(request))
    shape = (2, 3, 11)
    student = check.make_logits(shape, np.float64, rng)
    teacher = check.make_logits(shape, np.float64, rng)
    labels = np.array([[0, 5, -100], [10, 3, 1]])
    temps = rng.uniform(1, 4, size=(2, 3))
    base = dict(labels=labels, ce_weight=0.4, mask=labels != 5, temperature=temps,
                teacher_temperature=2.0, reduction="none")
    expected = compare(ckd, ref, torch_oracle, check, student, teacher, what="base", **base)[0]
    variants = {
        "labels_int32": dict(labels=labels.astype(np.int32)),
        "labels_int8": dict(labels=labels.astype(np.int8)),
        "labels_list": dict(labels=labels.tolist()),
        "labels_flat": dict(labels=labels.ravel()),
        "labels_strided": dict(labels=np.repeat(labels, 2, axis=1)[:, ::2]),
        "mask_int": dict(mask=(labels != 5).astype(np.int64)),
        "mask_flat": dict(mask=(labels != 5).ravel()),
        "temperature_flat": dict(temperature=temps.ravel()),
        "temperature_list": dict(temperature=temps.ravel().tolist()),
        "teacher_temperature_int": dict(teacher_temperature=2),
        "teacher_temperature_0d": dict(teacher_temperature=np.array(2.0)),
        "teacher_temperature_float32": dict(teacher_temperature=np.float32(2.0)),
    }
    for name, change in variants.items():
        for impl in (ref, ckd):
            r = impl.kd_loss(student, teacher, **{**base, **change})
            np.testing.assert_allclose(r.loss, expected.loss, rtol=1e-13, err_msg=name)
            np.testing.assert_allclose(r.grad, expected.grad, rtol=1e-13, atol=1e-16,
                                       err_msg=name)
    for impl in (ref, ckd):  # lists as logits
        r = impl.kd_loss(student.tolist(), teacher.tolist(), **base)
        np.testing.assert_allclose(r.loss, expected.loss, rtol=1e-13)


# --------------------------------------------------------------------------------
# Properties (hypothesis), for both implementations; each example checks every
# divergence (looping inside keeps the number of hypothesis runs small).
# --------------------------------------------------------------------------------

def _floats(dtype, bound):
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                     width=32 if dtype == np.float32 else 64)


def _rows(dtype, bound=30.0, shape=None):
    """(N, C) logits, N in [1, 4], C in [1, 12], entries in [-bound, bound]."""
    shapes = st.tuples(st.integers(1, 4), st.integers(1, 12)) if shape is None \
        else st.just(shape)
    return hnp.arrays(dtype, shapes, elements=_floats(dtype, bound))


def _tol(dtype, x, t):
    """Absolute slack for a value that is mathematically 0 (or invariant): the
    rounding of x/t, scaled by T^2."""
    mag = 1.0 + float(np.abs(x).max()) / t
    return (1e-12 if dtype == np.float64 else 1e-5) * mag * max(t * t, 1.0)


@given(data=st.data())
def test_property_nonnegative(impl, dtype, registry, data):
    """Every divergence of kd.md is >= 0."""
    z = data.draw(_rows(dtype), label="student")
    v = data.draw(_rows(dtype, shape=z.shape), label="teacher")
    t = data.draw(st.floats(0.25, 8.0), label="temperature")
    tt = data.draw(st.floats(0.25, 8.0), label="teacher_temperature")
    slack = _tol(dtype, np.concatenate([z, v]), min(t, tt))
    for divergence in registry.divergences:
        r = impl.kd_loss(z, v, divergence=divergence, temperature=t,
                         teacher_temperature=tt, reduction="none")
        assert np.all(r.loss >= -slack), divergence
        assert np.isfinite(r.grad).all(), divergence


@given(data=st.data())
def test_property_zero_when_equal(impl, dtype, registry, data):
    """Equal rows at equal temperature: loss 0 and gradient 0."""
    z = data.draw(_rows(dtype), label="logits")
    t = data.draw(st.floats(0.25, 8.0), label="temperature")
    tol = _tol(dtype, z, t)
    for divergence in registry.divergences:
        r = impl.kd_loss(z, z.copy(), divergence=divergence, temperature=t,
                         reduction="none")
        np.testing.assert_allclose(r.loss, 0.0, atol=tol, err_msg=divergence)
        np.testing.assert_allclose(r.grad, 0.0, atol=tol / t, err_msg=divergence)


@given(data=st.data())
def test_property_shift_invariant(impl, dtype, registry, data):
    """Adding a constant to a row (of either input) changes nothing."""
    z = data.draw(_rows(dtype, 20.0), label="student")
    v = data.draw(_rows(dtype, 20.0, shape=z.shape), label="teacher")
    cz = data.draw(hnp.arrays(np.float64, (z.shape[0], 1), elements=st.floats(-50, 50)))
    cv = data.draw(hnp.arrays(np.float64, (z.shape[0], 1), elements=st.floats(-50, 50)))
    t = data.draw(st.floats(0.5, 8.0), label="temperature")
    zs = (z + cz).astype(dtype)
    vs = (v + cv).astype(dtype)
    # The shifted inputs are rounded in `dtype`: allow for that rounding.
    tol = _tol(dtype, np.concatenate([zs, vs]), t) * (10 if dtype == np.float64 else 4)
    for divergence in registry.divergences:
        a = impl.kd_loss(z, v, divergence=divergence, temperature=t, reduction="none")
        b = impl.kd_loss(zs, vs, divergence=divergence, temperature=t, reduction="none")
        np.testing.assert_allclose(b.loss, a.loss, rtol=tol, atol=tol, err_msg=divergence)
        if divergence != "tvd":  # tvd's gradient jumps where pS_j == pT_j (sign)
            np.testing.assert_allclose(b.grad, a.grad, rtol=tol, atol=tol / t,
                                       err_msg=divergence)
