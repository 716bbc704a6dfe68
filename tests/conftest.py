"""Shared registry, input generators, PyTorch oracles and tolerances for the KD tests.

Parameters come from the registry below through ``pytest_generate_tests``: a test
that names an argument ``divergence``, ``reduction``, ``dtype``, ``shape``, ``tform``
or ``impl_name`` (or uses the ``impl`` fixture) runs over every registry entry of it
(bottleneck's ``get_functions`` style), unless it parametrizes that argument itself.

Helpers are fixtures (test modules do not import this file): ``ckd`` (kdtemp),
``ref`` (kdtemp.reference), ``impl`` (either), ``torch_oracle`` (float64 torch
implementations with autograd), ``make_kd_case`` (seeded inputs), ``check``
(tolerances and result comparison), ``unmutated`` (input snapshots), ``registry``.
"""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings

# The torch oracles run on small tensors: one intra-op thread. (Two torch threads on
# top of kdtemp's OpenMP team oversubscribe a small machine and slow every call ~5x.)
torch.set_num_threads(1)

# Hypothesis: no deadline (no timed assertions), reproducible, no database on disk.
settings.register_profile(
    "kdtemp", deadline=None, derandomize=True, database=None, max_examples=40,
    # `impl` is a function-scoped fixture that only returns a module: safe to share.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("kdtemp")

# --------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------

DIVERGENCES = ("kl", "reverse_kl", "symmetric_kl", "jsd", "skew_kl",
               "skew_reverse_kl", "tvd")
REDUCTIONS = ("batchmean", "sum", "none")
DTYPES = (np.float32, np.float64)
# How temperatures are given: one scalar for both; one per-row array for both; separate
# student and teacher scalars; separate student and teacher per-row arrays.
TEMPERATURE_FORMS = ("scalar", "per_row", "teacher_scalar", "teacher_per_row")
# (N, C) rows, a (B, L, V) token-shaped input and (13,), a single row. The large
# vocabulary (3, 100003) has its own, smaller matrix (test_kd.test_large_vocab) to keep
# the suite fast.
SHAPES = ((1, 1), (7, 13), (2, 3, 17), (13,))
# The implementations under test: the C-backed package and its NumPy twin. Both
# expose kd_loss, ce_loss, softmax, log_softmax with the same signatures.
IMPLEMENTATIONS = ("kdtemp", "reference")

REGISTRY = {
    "divergence": DIVERGENCES,
    "reduction": REDUCTIONS,
    "dtype": DTYPES,
    "tform": TEMPERATURE_FORMS,
    "shape": SHAPES,
    "impl_name": IMPLEMENTATIONS,
}


@pytest.fixture(scope="session")
def registry():
    """The registry lists, for tests that loop over them inside one test."""
    return types.SimpleNamespace(**{f"{k}s": v for k, v in REGISTRY.items()})


def _id(value) -> str:
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


def pytest_generate_tests(metafunc):
    explicit = set()
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = names.split(",")
        explicit.update(name.strip() for name in names)
    for name, values in REGISTRY.items():
        if name in metafunc.fixturenames and name not in explicit:
            metafunc.parametrize(name, values, ids=[_id(v) for v in values])


def get_impl(name: str):
    """``kdtemp`` (the C-backed functions) or ``kdtemp.reference`` (the NumPy twin)."""
    if name == "kdtemp":
        import kdtemp
        return kdtemp
    import kdtemp.reference
    return kdtemp.reference


@pytest.fixture
def impl(impl_name):
    return get_impl(impl_name)


@pytest.fixture(scope="session")
def ckd():
    """The C-backed package."""
    return get_impl("kdtemp")


@pytest.fixture(scope="session")
def ref():
    """The NumPy twin."""
    return get_impl("reference")


# --------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------

def n_rows(shape) -> int:
    return int(np.prod(shape[:-1], dtype=np.int64))


def temperature_kwargs(tform: str, n: int, rng) -> dict:
    """Temperature arguments of one form, for N rows."""
    if tform == "scalar":
        return {"temperature": 2.5}
    if tform == "per_row":
        return {"temperature": rng.uniform(0.5, 8.0, size=n)}
    if tform == "teacher_scalar":
        return {"temperature": 2.0, "teacher_temperature": 3.5}
    if tform == "teacher_per_row":
        return {"temperature": rng.uniform(0.5, 8.0, size=n),
                "teacher_temperature": rng.uniform(0.5, 8.0, size=n)}
    raise ValueError(tform)


def make_logits(shape, dtype, rng, *, spread=3.0, kind="normal"):
    """Seeded logits: ``normal`` (N(0, spread^2)) or ``huge`` (uniform in +-1e4)."""
    if kind == "huge":
        x = rng.uniform(-1e4, 1e4, size=shape)
    else:
        x = rng.normal(0.0, spread, size=shape)
    return np.asarray(x, dtype=dtype)


def sprinkle_neginf(x, rng, frac=0.3, protect=None):
    """Set about ``frac`` of the entries to -inf, keeping one finite entry per row
    (column ``protect[i]`` if given, else a random one). Returns the -inf mask."""
    x2 = x.reshape(-1, x.shape[-1])
    hole = rng.random(x2.shape) < frac
    keep = rng.integers(0, x2.shape[1], size=x2.shape[0]) if protect is None else protect
    hole[np.arange(x2.shape[0]), keep] = False
    x2[hole] = -np.inf
    return hole


@pytest.fixture
def make_kd_case():
    """``make_kd_case(shape, dtype, tform, seed, kind="normal")`` ->
    (student, teacher, kwargs with the temperatures)."""
    def make(shape, dtype, tform="scalar", seed=0, kind="normal"):
        rng = np.random.default_rng(seed)
        student = make_logits(shape, dtype, rng, kind=kind)
        teacher = make_logits(shape, dtype, rng, kind=kind)
        return student, teacher, temperature_kwargs(tform, n_rows(shape), rng)
    return make


# --------------------------------------------------------------------------------
# PyTorch oracles (float64, autograd for every gradient)
# --------------------------------------------------------------------------------

def _t_kl(p, log_p, log_q):
    """KL(P||Q) per row with 0 log 0 = 0, written so autograd never sees 0 * inf."""
    pos = p > 0
    lp = torch.where(pos, log_p, 0.0)
    lq = torch.where(pos, log_q, 0.0)
    return torch.where(pos, p * (lp - lq), 0.0).sum(1)


def _t_log_mix(w, log_a, log_b):
    """log M, M = w A + (1 - w) B, as torch.logaddexp(log w + log A, log(1-w) + log B):
    finite where A and B underflow, -inf where M = 0 (the skew KLs' M = pS or pT at
    alpha = 0: +inf terms), with logaddexp's inputs replaced there so that its
    gradient stays finite."""
    ninf = float("-inf")
    la = log_a + math.log(w) if w > 0 else torch.full_like(log_a, ninf)
    lb = log_b + math.log1p(-w)
    dead = (la == ninf) & (lb == ninf)
    mix = torch.logaddexp(torch.where(dead, 0.0, la), torch.where(dead, 0.0, lb))
    return torch.where(dead, ninf, mix)


def torch_divergence(name, log_ps, log_pt, beta, alpha):
    """D_i of kd.md's table, per row, in torch (differentiable in log_ps)."""
    ps, pt = log_ps.exp(), log_pt.exp()
    if name == "kl":
        # torch's own KL; its input is sanitised where pT = 0 (0 * -inf would be NaN).
        return F.kl_div(torch.where(pt > 0, log_ps, 0.0), pt, reduction="none").sum(1)
    if name == "reverse_kl":
        return _t_kl(ps, log_ps, log_pt)
    if name == "symmetric_kl":
        return _t_kl(pt, log_pt, log_ps) + _t_kl(ps, log_ps, log_pt)
    if name == "jsd":
        log_m = _t_log_mix(beta, log_pt, log_ps)
        return beta * _t_kl(pt, log_pt, log_m) + (1 - beta) * _t_kl(ps, log_ps, log_m)
    if name == "skew_kl":
        return _t_kl(pt, log_pt, _t_log_mix(alpha, log_pt, log_ps))
    if name == "skew_reverse_kl":
        return _t_kl(ps, log_ps, _t_log_mix(alpha, log_ps, log_pt))
    if name == "tvd":
        return 0.5 * (pt - ps).abs().sum(1)
    raise ValueError(name)


def row_values(t, n):
    """A scalar or a per-row array (shape (N,) or the leading shape) as float64 (N,)."""
    a = np.asarray(t, np.float64)
    return np.full(n, float(a)) if a.ndim == 0 else a.reshape(n).copy()


def _row_temperature(t, n):
    return torch.as_tensor(row_values(t, n))


def _counted(labels, mask, ignore_index, n):
    counted = np.ones(n, bool)
    if labels is not None:
        counted &= np.asarray(labels).reshape(n) != ignore_index
    if mask is not None:
        counted &= np.asarray(mask, bool).reshape(n)
    return counted


def _reduce_torch(rows_loss, counted, reduction, n, lead):
    """Reduced loss (float or per-row float64 array) and the scalar to differentiate."""
    count = int(counted.sum())
    total = rows_loss.sum()
    if reduction == "batchmean":
        total = total / count if count else total * 0.0
    if reduction == "none":
        full = np.zeros(n)
        full[counted] = rows_loss.detach().numpy()
        return full.reshape(lead), total
    return float(total.detach()), total


def torch_kd(student, teacher, *, temperature=4.0, teacher_temperature=None,
             divergence="kl", beta=0.5, alpha=0.1, scale="T2", labels=None,
             ignore_index=-100, mask=None, kd_weight=1.0, ce_weight=0.0,
             label_smoothing=0.0, reduction="batchmean", **_ignored):
    """kd_loss computed with torch in float64: (loss, grad as float64 ndarray, count).

    Grad rows of a non-"kl" divergence whose row value is +inf are set to 0 (the
    documented decision); the CE term's gradient is kept.
    """
    shape = np.shape(student)
    c, lead = shape[-1], shape[:-1]
    n = n_rows(shape)
    z = torch.tensor(np.ascontiguousarray(student, np.float64).reshape(n, c),
                     requires_grad=True)
    v = torch.tensor(np.ascontiguousarray(teacher, np.float64).reshape(n, c))
    t_s = _row_temperature(temperature, n)
    t_t = t_s if teacher_temperature is None else _row_temperature(teacher_temperature, n)
    counted = _counted(labels, mask, ignore_index, n)
    rows = torch.as_tensor(np.flatnonzero(counted))
    zc, vc, tsc, ttc = z[rows], v[rows], t_s[rows], t_t[rows]
    s = tsc * ttc if scale == "T2" else torch.ones_like(tsc)

    grad = torch.zeros(n, c, dtype=torch.float64)
    rows_loss = torch.zeros(len(rows), dtype=torch.float64)
    if kd_weight != 0:
        log_ps = F.log_softmax(zc / tsc[:, None], dim=1)
        log_pt = F.log_softmax(vc / ttc[:, None], dim=1)
        kd = kd_weight * s * torch_divergence(divergence, log_ps, log_pt, beta, alpha)
        _, scalar = _reduce_torch(kd, counted, reduction, n, lead)
        if len(rows):
            (g,) = torch.autograd.grad(scalar, z, retain_graph=True)
            if divergence != "kl":
                g[rows[~torch.isfinite(kd.detach())]] = 0.0
            grad += g
        rows_loss = rows_loss + kd.detach()
    if ce_weight != 0:
        y = torch.as_tensor(np.asarray(labels).reshape(n).astype(np.int64))[rows]
        ce = ce_weight * F.cross_entropy(zc, y, reduction="none",
                                         label_smoothing=label_smoothing)
        _, scalar = _reduce_torch(ce, counted, reduction, n, lead)
        if len(rows):
            (g,) = torch.autograd.grad(scalar, z)
            grad += g
        rows_loss = rows_loss + ce.detach()
    loss, _ = _reduce_torch(rows_loss, counted, reduction, n, lead)
    return loss, grad.numpy().reshape(shape), int(counted.sum())


def torch_ce(student, labels, *, label_smoothing=0.0, ignore_index=-100, mask=None,
             reduction="batchmean", **_ignored):
    """ce_loss in torch float64 (``F.cross_entropy`` with ``label_smoothing``)."""
    return torch_kd(student, student, labels=labels, label_smoothing=label_smoothing,
                    ignore_index=ignore_index, mask=mask, reduction=reduction,
                    kd_weight=0.0, ce_weight=1.0)


def torch_softmax(logits, temperature=1.0, log=False):
    """(log_)softmax of x/t in torch float64, shape of the input."""
    shape = np.shape(logits)
    n = n_rows(shape)
    x = torch.tensor(np.ascontiguousarray(logits, np.float64).reshape(n, shape[-1]))
    y = x / _row_temperature(temperature, n)[:, None]
    out = F.log_softmax(y, dim=1) if log else F.softmax(y, dim=1)
    return out.numpy().reshape(shape)


@pytest.fixture(scope="session")
def torch_oracle():
    return types.SimpleNamespace(kd=torch_kd, ce=torch_ce, softmax=torch_softmax,
                                 divergence=torch_divergence)


# --------------------------------------------------------------------------------
# Tolerances and comparison
# --------------------------------------------------------------------------------

EPS32 = 2.0 ** -24


def _finite_max_abs(x, t=1.0):
    """max |x_ij / t_i| over the finite entries (0.0 if none)."""
    x = np.asarray(x, np.float64)
    n = n_rows(x.shape)
    y = x.reshape(n, x.shape[-1]) / row_values(t, n)[:, None]
    finite = y[np.isfinite(y)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def kd_tolerances(dtype, student, teacher=None, *, temperature=4.0,
                  teacher_temperature=None, scale="T2", kd_weight=1.0, ce_weight=0.0,
                  reduction="batchmean", count=1, **_ignored):
    """(rtol, loss_atol, grad_atol) for comparing a result against the float64 truth.

    float64: rtol 1e-10, atol 1e-13 * (1 + max|x/t|) (the rounding of x/t).
    float32: rtol 1e-5, atol 1e-6. The kernels accumulate float32 rows in float64
    (test_float32_accuracy pins how close they come), so this holds even for +-1e4
    logits.
    The atols are scaled by the loss weights and temperature scales, by the count for
    ``reduction="sum"`` losses and by 1/count for ``"batchmean"`` gradients.
    """
    n = n_rows(np.shape(student))
    t_s = row_values(temperature, n)
    t_t = t_s if teacher_temperature is None else row_values(teacher_temperature, n)
    mag = 0.0
    if kd_weight != 0 and teacher is not None:
        mag = max(_finite_max_abs(student, t_s), _finite_max_abs(teacher, t_t))
    if ce_weight != 0:
        mag = max(mag, _finite_max_abs(student))
    s = t_s * t_t if scale == "T2" else np.ones(n)
    w_loss = abs(kd_weight) * (float(s.max()) if n else 1.0) + abs(ce_weight)
    w_grad = abs(kd_weight) * (float((s / t_s).max()) if n else 1.0) + abs(ce_weight)
    if np.dtype(dtype) == np.float64:
        rtol, base = 1e-10, 1e-13 * (1.0 + mag)
    else:
        rtol, base = 1e-5, 1e-6
    loss_atol = base * w_loss * (max(count, 1) if reduction == "sum" else 1)
    grad_atol = base * w_grad / (max(count, 1) if reduction == "batchmean" else 1)
    return rtol, loss_atol, grad_atol


def assert_result_close(got, expected, *, dtype, shape, reduction, tol, what=""):
    """Check a LossResult against (loss, grad, count) from an oracle.

    Types are checked exactly (Python float / int, grad dtype and shape), values
    to ``tol = (rtol, loss_atol, grad_atol)``.
    """
    rtol, loss_atol, grad_atol = tol
    e_loss, e_grad, e_count = expected
    assert type(got.count) is int, f"{what}: count is {type(got.count)}"
    assert got.count == e_count, what
    if reduction == "none":
        assert isinstance(got.loss, np.ndarray), what
        assert got.loss.dtype == dtype and got.loss.shape == tuple(shape[:-1]), what
    else:
        assert type(got.loss) is float, f"{what}: loss is {type(got.loss)}"
    np.testing.assert_allclose(got.loss, e_loss, rtol=rtol, atol=loss_atol,
                               err_msg=f"{what}: loss")
    if e_grad is None:
        assert got.grad is None, what
        return
    assert isinstance(got.grad, np.ndarray), what
    assert got.grad.dtype == dtype and got.grad.shape == tuple(shape), what
    assert np.isfinite(got.grad).all(), f"{what}: non-finite gradient"
    np.testing.assert_allclose(got.grad, e_grad, rtol=rtol, atol=grad_atol,
                               err_msg=f"{what}: grad")


@pytest.fixture(scope="session")
def check():
    return types.SimpleNamespace(tolerances=kd_tolerances, result_close=assert_result_close,
                                 finite_max_abs=_finite_max_abs, eps32=EPS32,
                                 n_rows=n_rows, make_logits=make_logits,
                                 sprinkle_neginf=sprinkle_neginf,
                                 temperature_kwargs=temperature_kwargs)


def snapshot(*arrays):
    """Copies to compare against later (inputs must not be mutated)."""
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(before, *arrays):
    for b, a in zip(before, arrays):
        if b is not None:
            assert np.array_equal(b, a, equal_nan=True) and b.dtype == np.asarray(a).dtype


@pytest.fixture(scope="session")
def unmutated():
    return types.SimpleNamespace(snapshot=snapshot, check=assert_unchanged)

