"""kdtemp.torch: autograd through the C kernels, the pure-PyTorch reference, zero
copy, learnable temperatures (CTKD), modules, schedulers, gradient accumulation,
torch.compile."""
from __future__ import annotations

import inspect
import math
import os
import sys
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import kdtemp  # noqa: E402
import kdtemp.torch as kt  # noqa: E402
from kdtemp.torch import _autograd  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import edge_rows  # noqa: E402

DIVERGENCES = ("kl", "reverse_kl", "symmetric_kl", "jsd", "skew_kl", "skew_reverse_kl",
               "tvd")
REDUCTIONS = ("batchmean", "sum", "none")
# The kernel reached through the autograd.Function (eager mode's default) and through
# the torch.library custom op (what torch.compile traces), both in eager mode.
KERNEL_PATHS = ("auto", "custom_op")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def logits(shape, dtype=torch.float64, seed=0, spread=3.0):
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * spread).to(dtype)


def run(fn, student, *args, backend="auto", weights=None, **kwargs):
    """(loss, d loss / d student) through ``backend``; for a non-scalar loss the
    gradient is that of ``sum(weights * loss)``."""
    z = student.detach().clone().requires_grad_(True)
    with _autograd.use_backend(backend):
        loss = fn(z, *args, **kwargs)
    if loss.dim() == 0:
        loss.backward()
    else:
        w = weights if weights is not None else torch.ones_like(loss)
        loss.backward(w)
    return loss.detach(), z.grad


def close(a, b, *, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True,
                               check_dtype=False)


@pytest.fixture(params=KERNEL_PATHS)
def path(request):
    return request.param


# --------------------------------------------------------------------------------
# Against torch.nn.functional
# --------------------------------------------------------------------------------

def _kl_div_reference(z, v, t_s, t_t, reduction):
    """Hinton KD with torch.nn.functional: kl_div(log_softmax(z/tS), softmax(v/tT)) * tS tT."""
    c = z.shape[-1]
    z2, v2 = z.reshape(-1, c), v.reshape(-1, c)
    n = z2.shape[0]
    ts = torch.as_tensor(t_s, dtype=z.dtype).reshape(-1, 1).expand(n, 1)
    tt = torch.as_tensor(t_t, dtype=z.dtype).reshape(-1, 1).expand(n, 1)
    rows = F.kl_div(F.log_softmax(z2 / ts, 1), F.softmax(v2 / tt, 1),
                    reduction="none").sum(1) * (ts * tt).reshape(-1)
    if reduction == "none":
        return rows.reshape(z.shape[:-1])
    return rows.sum() / (n if reduction == "batchmean" else 1)


@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 17), (13,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tform", ["scalar", "per_row", "teacher"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kl_matches_F_kl_div(path, shape, dtype, tform, reduction):
    z, v = logits(shape, dtype, 1), logits(shape, dtype, 2)
    lead = shape[:-1]
    if tform == "scalar":
        t_s = t_t = 2.5
        kw = {"temperature": 2.5}
    elif tform == "per_row":
        t_s = t_t = (torch.rand(lead, generator=_gen(3), dtype=torch.float64) * 4 + 0.5)
        kw = {"temperature": t_s}
    else:
        t_s, t_t = 2.0, torch.rand(lead, generator=_gen(4), dtype=torch.float64) * 4 + 0.5
        kw = {"temperature": t_s, "teacher_temperature": t_t}
    w = torch.rand(lead, generator=_gen(5), dtype=dtype) if reduction == "none" else None
    loss, grad = run(kt.kd_loss, z, v, backend=path, reduction=reduction, weights=w, **kw)
    z64 = z.detach().double().requires_grad_(True)
    ref = _kl_div_reference(z64, v.double(), t_s, t_t, reduction)
    (ref if ref.dim() == 0 else ref * w.double()).sum().backward()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    assert loss.dtype == dtype and loss.shape == ref.shape
    assert grad.dtype == dtype and grad.shape == z.shape
    close(loss, ref.detach(), **tol)
    close(grad, z64.grad, **tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ce_matches_F_cross_entropy(path, reduction, smoothing):
    z = logits((2, 5, 11), seed=6)
    y = torch.randint(0, 11, (2, 5), generator=_gen(7))
    y[0, 3:] = -100  # padding
    w = torch.rand(2, 5, generator=_gen(8), dtype=torch.float64) if reduction == "none" else None
    loss, grad = run(kt.ce_loss, z, y, backend=path, label_smoothing=smoothing,
                     reduction=reduction, weights=w)
    z64 = z.detach().clone().requires_grad_(True)
    f_red = {"batchmean": "mean", "sum": "sum", "none": "none"}[reduction]
    ref = F.cross_entropy(z64.reshape(-1, 11), y.reshape(-1), label_smoothing=smoothing,
                          reduction=f_red)
    if reduction == "none":
        ref = ref.reshape(2, 5)
        (ref * w).sum().backward()
    else:
        ref.backward()
    close(loss, ref.detach())
    close(grad, z64.grad)
    _, count = kt.ce_loss(z, y, return_count=True)
    assert count.dtype == torch.int64 and int(count) == 8


# --------------------------------------------------------------------------------
# Kernel path against the pure-PyTorch reference (the CUDA path, run on CPU)
# --------------------------------------------------------------------------------

def _rows_case(n=9, c=11, seed=10, neginf=True):
    z, v = logits((n, c), seed=seed), logits((n, c), seed=seed + 1)
    y = torch.randint(0, c, (n,), generator=_gen(seed + 2))
    y[2] = -100
    m = torch.ones(n, dtype=torch.bool)
    m[min(4, n - 1)] = False
    if neginf:
        z[1, 3] = float("-inf")     # teacher has mass here: an infinite KL row
        z[5, :4] = float("-inf")
        v[1, 5] = float("-inf")
        v[6, 2:5] = float("-inf")
        z[2] = float("-inf")        # all -inf, but skipped (ignore_index)
    return z, v, y, m


def assert_paths_agree(fn, z, *args, rtol=1e-10, atol=1e-12, **kwargs):
    w = None
    if kwargs.get("reduction") == "none":
        w = torch.rand(z.shape[:-1], generator=_gen(99), dtype=z.dtype)
    ref = run(fn, z, *args, backend="reference", weights=w, **kwargs)
    for backend in KERNEL_PATHS:
        got = run(fn, z, *args, backend=backend, weights=w, **kwargs)
        close(got[0], ref[0], rtol=rtol, atol=atol)
        close(got[1], ref[1], rtol=rtol, atol=atol)
        assert torch.isfinite(got[1]).all()


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kd_kernel_matches_reference(divergence, reduction):
    z, v, y, m = _rows_case()
    t = torch.rand(9, generator=_gen(12), dtype=torch.float64) + 1
    assert_paths_agree(kt.kd_loss, z, v, divergence=divergence, labels=y, mask=m,
                       reduction=reduction, kd_weight=0.9, ce_weight=0.1,
                       label_smoothing=0.1, temperature=t, teacher_temperature=2.0,
                       beta=0.3, alpha=0.2, scale="T2")
    m[2] = False  # the all -inf row
    assert_paths_agree(kt.kd_loss, z, v, divergence=divergence, reduction=reduction,
                       temperature=1.5, scale="none", mask=m)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("scale", ["none", "base", "T2"])
@pytest.mark.parametrize("detach", [False, True])
def test_atkd_kernel_matches_reference(reduction, scale, detach):
    z, v, y, m = _rows_case(neginf=False)
    z[3, 2:5] = float("-inf")   # excluded from the std; no infinite KL row
    v[3, 2:5] = float("-inf")
    assert_paths_agree(kt.atkd_loss, z, v, labels=y, mask=m, reduction=reduction,
                       scale=scale, detach_temperature=detach, base_temperature=1.5,
                       ddof=1, kd_weight=0.9, ce_weight=0.1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dkd_kernel_matches_reference(reduction):
    z, v, y, m = _rows_case(neginf=False)
    t = torch.rand(9, generator=_gen(13), dtype=torch.float64) + 1
    assert_paths_agree(kt.dkd_loss, z, v, y, mask=m, reduction=reduction, temperature=t,
                       alpha=1.5, beta=6.0, kd_weight=0.9, ce_weight=0.1,
                       label_smoothing=0.1)
    assert_paths_agree(kt.dkd_loss, z, v, y, reduction=reduction)


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
def test_annealing_kernel_matches_reference(reduction):
    z, v, y, m = _rows_case(neginf=False)
    assert_paths_agree(kt.annealing_loss, z, v, 0.3, labels=y, mask=m,
                       reduction=reduction)


@pytest.mark.parametrize("name", ["atkd_loss", "dkd_loss"])
def test_reference_matches_numpy_twin_on_infinite_rows(name):
    """Rows whose KL is +inf (the teacher puts mass on a -inf student class):
    the torch reference follows kdtemp.reference (the spec's oracle)."""
    import kdtemp.reference

    twin = getattr(kdtemp.reference, name)
    z, v, y, _ = _rows_case()
    args = (y,) if name == "dkd_loss" else ()
    kwargs = {} if name == "dkd_loss" else {"labels": y}
    exp = twin(z.numpy(), v.numpy(), *(a.numpy() for a in args), reduction="none",
               **{k: a.numpy() for k, a in kwargs.items()})
    loss, grad = run(getattr(kt, name), z, v, *args, backend="reference",
                     reduction="none", **kwargs)
    close(loss, torch.from_numpy(exp.loss))
    close(grad, torch.from_numpy(exp.grad))


@pytest.mark.parametrize("case", edge_rows.CASES, ids=[c.id for c in edge_rows.CASES])
def test_paths_agree_on_edge_rows(case):
    """The fuzzer's edge rows (tests/edge_rows.py): the torch reference path (for
    other devices) agrees with the kernel, +inf losses and finite gradients."""
    z, *rest = (torch.from_numpy(a) for a in case.args)
    assert_paths_agree(getattr(kt, case.func), z, *rest, **case.kwargs)


def test_reference_signatures_match_numpy():
    """The torch twins take the NumPy functions' keywords with the same defaults."""
    for name, spec in _autograd.LOSSES.items():
        np_params = {k: p.default for k, p in inspect.signature(spec.numpy_fn).parameters.items()
                     if k not in _autograd._NOT_FORWARDED}
        ref_params = {k: p.default for k, p in inspect.signature(spec.reference).parameters.items()}
        assert ref_params == np_params, name
        assert list(inspect.signature(getattr(kt, name)).parameters)[-1] == "return_count"


# --------------------------------------------------------------------------------
# gradcheck (float64, small shapes) on the kernel path
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_kernel(path, reduction):
    z, v, y, m = _rows_case(n=4, c=5, neginf=False)
    z.requires_grad_(True)
    t = torch.tensor([1.0, 2.0, 0.7, 3.0], dtype=torch.float64)
    calls = [
        lambda a: kt.kd_loss(a, v, temperature=t, teacher_temperature=2.0, labels=y, mask=m,
                             kd_weight=0.9, ce_weight=0.1, label_smoothing=0.1,
                             reduction=reduction),
        lambda a: kt.kd_loss(a, v, divergence="jsd", temperature=1.5, reduction=reduction),
        lambda a: kt.ce_loss(a, y, reduction=reduction),
        lambda a: kt.atkd_loss(a, v, labels=y, ce_weight=0.1, scale="T2", reduction=reduction),
        lambda a: kt.dkd_loss(a, v, y, temperature=2.0, reduction=reduction),
        lambda a: kt.annealing_loss(a, v, 0.4, mask=m, reduction=reduction),
    ]
    with _autograd.use_backend(path):
        for f in calls:
            assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_token_shaped(path):
    z = logits((2, 3, 4), seed=20).requires_grad_(True)
    v = logits((2, 3, 4), seed=21)
    y = torch.tensor([[0, 1, -100], [3, -100, 2]])
    with _autograd.use_backend(path):
        assert torch.autograd.gradcheck(
            lambda a: kt.kd_loss(a, v, labels=y, ce_weight=0.5, reduction="none"), (z,))


def test_retain_graph_accumulates(path):
    z = logits((3, 4)).requires_grad_(True)
    v = logits((3, 4), seed=1)
    with _autograd.use_backend(path):
        kt.kd_loss(z, v).backward()
        once = z.grad.clone()
        z.grad = None
        loss = kt.kd_loss(z, v)
        for _ in range(2):
            loss.backward(retain_graph=True)
        loss.backward()
    close(z.grad, 3 * once)


def test_double_backward_is_refused_on_kernel_path(path):
    z = logits((3, 4)).requires_grad_(True)
    with _autograd.use_backend(path):
        loss = kt.kd_loss(z, logits((3, 4), seed=1))
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(loss, z, create_graph=True)
    with _autograd.use_backend("reference"):  # the reference has second derivatives
        loss = kt.kd_loss(z, logits((3, 4), seed=1))
        (g,) = torch.autograd.grad(loss, z, create_graph=True)
        g.sum().backward()


# --------------------------------------------------------------------------------
# Temperatures as tensors that require grad (CTKD)
# --------------------------------------------------------------------------------

def _independent_kd(z, v, t_s, t_t, reduction="batchmean"):
    """Hinton KD written directly with F.kl_div (independent of kdtemp)."""
    n = z.shape[0]
    ts = t_s.reshape(-1, 1).expand(n, 1)
    tt = t_t.reshape(-1, 1).expand(n, 1)
    rows = F.kl_div(F.log_softmax(z / ts, 1), F.softmax(v / tt, 1),
                    reduction="none").sum(1) * (ts * tt).reshape(-1)
    return rows.sum() / n if reduction == "batchmean" else rows.sum()


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("shape_1", [False, True])
def test_temperature_gradients(per_row, shape_1):
    z, v = logits((6, 9), seed=30), logits((6, 9), seed=31)
    if per_row:
        t_s0 = torch.rand(6, generator=_gen(32), dtype=torch.float64) + 0.5
        t_t0 = torch.rand(6, generator=_gen(33), dtype=torch.float64) + 0.5
    else:
        shape = (1,) if shape_1 else ()
        t_s0, t_t0 = torch.full(shape, 2.5, dtype=torch.float64), torch.full(shape, 1.7,
                                                                             dtype=torch.float64)
    got, exp = [], []
    for fn, out in ((kt.kd_loss, got), (_independent_kd, exp)):
        zz = z.clone().requires_grad_(True)
        ts, tt = t_s0.clone().requires_grad_(True), t_t0.clone().requires_grad_(True)
        if fn is kt.kd_loss:
            loss = fn(zz, v, temperature=ts, teacher_temperature=tt)
        else:
            loss = fn(zz, v, ts, tt)
        loss.backward()
        out += [loss.detach(), zz.grad, ts.grad, tt.grad]
    for a, b in zip(got, exp):
        close(a, b)
    # the same exact gradient as gradcheck sees it, on every input at once
    ts, tt = t_s0.clone().requires_grad_(True), t_t0.clone().requires_grad_(True)
    zz = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: kt.kd_loss(a, v, temperature=b, teacher_temperature=c,
                                   labels=torch.tensor([0, 1, -100, 3, 4, 5]),
                                   ce_weight=0.2, divergence="kl"), (zz, ts, tt))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_temperature_gradient_all_divergences(divergence):
    z, v = logits((4, 6), seed=34), logits((4, 6), seed=35)
    t = torch.tensor([1.5, 2.0, 0.8, 3.0], dtype=torch.float64, requires_grad=True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: kt.kd_loss(a, v, temperature=b, teacher_temperature=2.0,
                                divergence=divergence, reduction="none"), (z, t))


def test_temperature_gradient_ignores_neginf_classes():
    """-inf logits stay -inf at every temperature: the gradient is finite and
    equals the one computed without those classes."""
    z, v = logits((3, 6), seed=36), logits((3, 6), seed=37)
    z[:, 5] = float("-inf")
    v[:, 5] = float("-inf")
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    kt.kd_loss(z, v, temperature=t).backward()
    t2 = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    kt.kd_loss(z[:, :5].contiguous(), v[:, :5].contiguous(), temperature=t2).backward()
    assert torch.isfinite(t.grad)
    close(t.grad, t2.grad)


def test_temperature_requiring_grad_uses_the_reference(monkeypatch):
    seen = _spy(monkeypatch)
    z, v = logits((3, 4)), logits((3, 4), seed=1)
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    kt.kd_loss(z, v, temperature=t).backward()
    assert not seen and t.grad is not None
    with torch.no_grad():  # nothing to differentiate: the kernel runs
        kt.kd_loss(z, v, temperature=t)
    assert len(seen) == 1 and seen[0]["kwargs"]["temperature"] == 2.0


def test_dkd_temperature_gradient():
    z, v = logits((4, 6), seed=38), logits((4, 6), seed=39)
    y = torch.tensor([0, 5, 2, -100])
    t = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: kt.dkd_loss(a, v, y, temperature=b), (z, t))


def test_grad_reverse_and_cosine_decay():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (kt.grad_reverse(x, -0.5) * torch.tensor([3.0, 4.0])).sum().backward()
    close(x.grad, torch.tensor([-1.5, -2.0]))
    y = kt.grad_reverse(x, 1.0)
    close(y.detach(), x.detach())
    decay = kt.CosineDecay(max_value=0.0, min_value=-1.0, num_loops=10)
    assert decay.get_value(0) == 0.0 and decay.get_value(-3) == 0.0
    assert decay.get_value(10) == -1.0 and decay.get_value(240) == -1.0
    assert math.isclose(decay.get_value(5), -0.5, abs_tol=1e-15)
    vals = [decay.get_value(e) for e in range(11)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert kt.ctkd_lambda(5) == decay.get_value(5)
    with pytest.raises(ValueError, match="num_loops"):
        kt.CosineDecay(num_loops=0)
    with pytest.raises(TypeError, match="lambda_"):
        kt.grad_reverse(x, "a")


def test_ctkd_trains_the_temperature():
    """CTKD: the student descends the KD loss, the temperature ascends it through
    the reversal. At every step the parameter's gradient is exactly ``lambda``
    times the derivative of the loss with respect to it (checked against autograd
    of the reference path); with ``lambda = -1`` SGD moves it up the loss."""
    torch.manual_seed(0)
    x = torch.randn(64, 8, dtype=torch.float64)
    teacher = torch.nn.Linear(8, 5).double()
    student = torch.nn.Linear(8, 5).double()
    temp = kt.CTKDTemperature()
    opt = torch.optim.SGD([*student.parameters(), *temp.parameters()], lr=0.5)
    decay = kt.CosineDecay(0.0, -1.0, num_loops=4)
    with torch.no_grad():
        v = teacher(x) * 3
    start = float(temp(0.0).detach())
    ascents = 0
    for epoch in range(1, 7):
        lam = decay.get_value(epoch)
        z = student(x)
        t = temp(lam)
        loss = kt.kd_loss(z, v, temperature=t)
        opt.zero_grad()
        loss.backward()
        # the exact derivative of the loss w.r.t. the raw parameter, without reversal
        p = temp.global_t.detach().clone().requires_grad_(True)
        with _autograd.use_backend("reference"):
            direct = kt.kd_loss(z.detach(), v, temperature=temp.t_start
                                + temp.t_end * torch.sigmoid(p))
        (d,) = torch.autograd.grad(direct, p)
        close(temp.global_t.grad, lam * d)
        p_before, t_before = temp.global_t.detach().clone(), t.detach()
        opt.step()
        step = float(temp.global_t.detach() - p_before)
        t_after = temp(0.0).detach()
        if lam < 0:
            # the reversal made SGD climb: the parameter moved along +d, not -d ...
            assert step * float(d) > 0, (epoch, lam, step, float(d))
            # ... so T moved up the loss: on this step's student logits, the loss is
            # higher at the new temperature than at the old one
            with torch.no_grad(), _autograd.use_backend("reference"):
                at_before = kt.kd_loss(z.detach(), v, temperature=t_before)
                at_after = kt.kd_loss(z.detach(), v, temperature=t_after)
            assert at_after > at_before, (epoch, float(at_before), float(at_after))
            ascents += 1
    end = float(temp(0.0).detach())
    assert end != start
    assert ascents == 6  # every epoch here has lambda < 0: six checked ascents


# --------------------------------------------------------------------------------
# Zero copy, compute_grad, teacher, dtypes
# --------------------------------------------------------------------------------

def _spy(monkeypatch, name="kd_loss"):
    seen = []
    original = getattr(kdtemp, name)

    def spy(student, *args, **kwargs):
        seen.append({"student": student, "args": args, "kwargs": dict(kwargs)})
        return original(student, *args, **kwargs)

    monkeypatch.setattr(kdtemp, name, spy)
    return seen


def test_kernel_reads_the_callers_memory(monkeypatch):
    seen = _spy(monkeypatch)
    big = logits((6, 20), torch.float32, 40)
    z = big[:, :13]                      # row-strided view: rows are contiguous
    v = logits((6, 13), torch.float32, 41)
    y = torch.arange(6)
    t = torch.rand(6, generator=_gen(42), dtype=torch.float64) + 1
    kt.kd_loss(z.requires_grad_(False), v, labels=y, ce_weight=0.1, temperature=t)
    call = seen[-1]
    assert call["student"].ctypes.data == z.data_ptr()
    assert call["student"].strides == (80, 4)
    assert call["args"][0].ctypes.data == v.data_ptr()
    assert call["kwargs"]["labels"].ctypes.data == y.data_ptr()
    assert call["kwargs"]["temperature"].ctypes.data == t.data_ptr()
    assert call["kwargs"]["compute_grad"] is False
    # token-shaped input
    z3 = logits((2, 3, 7), torch.float64, 43).requires_grad_(True)
    kt.kd_loss(z3, logits((2, 3, 7), seed=44))
    assert seen[-1]["student"].ctypes.data == z3.data_ptr()
    assert seen[-1]["kwargs"]["compute_grad"] is True


def test_no_NxC_allocation_but_the_gradient():
    n, c = 512, 1000
    z = logits((n, c), torch.float32, 45).requires_grad_(True)
    v = logits((n, c), torch.float32, 46)
    kt.kd_loss(z, v)  # warm up
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        loss = kt.kd_loss(z, v)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    grad_bytes = n * c * 4
    # NumPy allocations (the kernel's gradient and O(N) work arrays) are traced
    assert grad_bytes <= peak < grad_bytes + 64 * 1024
    # ... and torch's allocator hands out nothing of that size in the forward
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        kt.kd_loss(z, v)
    allocated = sum(e.cpu_memory_usage for e in prof.key_averages() if e.cpu_memory_usage > 0)
    assert allocated < grad_bytes // 8
    loss.backward()
    assert z.grad.shape == (n, c)


def test_no_gradient_pass_without_requires_grad(monkeypatch):
    seen = _spy(monkeypatch)
    z, v = logits((3, 4)), logits((3, 4), seed=1)
    loss = kt.kd_loss(z, v)
    assert not loss.requires_grad and seen[-1]["kwargs"]["compute_grad"] is False
    with torch.no_grad():
        kt.kd_loss(z.requires_grad_(True), v)
    assert seen[-1]["kwargs"]["compute_grad"] is False


def test_teacher_never_gets_a_gradient(path):
    z = logits((3, 4)).requires_grad_(True)
    v = logits((3, 4), seed=1).requires_grad_(True)
    for backend in (path, "reference"):
        with _autograd.use_backend(backend):
            kt.kd_loss(z, v).backward()
    assert v.grad is None and z.grad is not None


def test_non_contiguous_classes_are_copied_once(path):
    zt = logits((5, 6), seed=47).t()             # classes strided
    v = logits((6, 5), seed=48)
    close(run(kt.kd_loss, zt, v, backend=path)[1],
          run(kt.kd_loss, zt.contiguous(), v, backend=path)[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(path, dtype):
    z32, v32 = logits((8, 16), torch.float32, 50), logits((8, 16), torch.float32, 51)
    z, v = z32.to(dtype), v32.to(dtype)
    y = torch.arange(8)
    for backend in (path, "reference"):
        loss, grad = run(kt.kd_loss, z, v, backend=backend, labels=y, ce_weight=0.1)
        exp_loss, exp_grad = run(kt.kd_loss, z.float(), v.float(), backend=backend,
                                 labels=y, ce_weight=0.1)
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        close(loss, exp_loss, rtol=1e-6, atol=1e-6)
        close(grad.float(), exp_grad.to(dtype).float(), rtol=0, atol=0)
    loss = kt.kd_loss(z, v, reduction="none")
    assert loss.dtype == torch.float32 and loss.shape == (8,)


# --------------------------------------------------------------------------------
# Gradient accumulation and training loops
# --------------------------------------------------------------------------------

def test_gradient_accumulation_parity():
    """4 token-level micro-batches with padding reproduce the full batch, by both
    recipes of the module docstring."""
    b, l, c = 8, 6, 17
    z, v = logits((b, l, c), seed=60), logits((b, l, c), seed=61)
    y = torch.randint(0, c, (b, l), generator=_gen(62))
    for i in range(b):  # ragged padding: micro-batches count different tokens
        y[i, 6 - i % 5:] = -100
    kw = dict(temperature=2.0, kd_weight=0.9, ce_weight=0.1)
    full_loss, full_grad = run(kt.kd_loss, z, v, labels=y, **kw)

    total = int((y != -100).sum())
    zz = z.clone().requires_grad_(True)
    acc = 0.0
    for sl in torch.arange(b).chunk(4):
        loss = kt.kd_loss(zz[sl], v[sl], labels=y[sl], reduction="sum", **kw) / total
        loss.backward()
        acc += loss.item()
    close(torch.tensor(acc, dtype=torch.float64), full_loss)
    close(zz.grad, full_grad)

    zz = z.clone().requires_grad_(True)
    seen, acc = 0, 0.0
    for sl in torch.arange(b).chunk(4):
        loss, count = kt.kd_loss(zz[sl], v[sl], labels=y[sl], reduction="sum",
                                 return_count=True, **kw)
        loss.backward()
        seen += int(count)
        acc += loss.item()
    zz.grad /= seen
    assert seen == total
    close(torch.tensor(acc / seen, dtype=torch.float64), full_loss)
    close(zz.grad, full_grad)


def _mlp_run(backend, steps=25):
    torch.manual_seed(0)
    x = torch.randn(96, 12, dtype=torch.float64)
    y = torch.randint(0, 6, (96,))
    teacher = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(),
                                  torch.nn.Linear(32, 6)).double()
    student = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(),
                                  torch.nn.Linear(16, 6)).double()
    opt = torch.optim.SGD(student.parameters(), lr=0.2, momentum=0.9)
    crit = kt.KDLoss(temperature=3.0, kd_weight=0.9, ce_weight=0.1)
    losses = []
    with _autograd.use_backend(backend):
        for _ in range(steps):
            with torch.no_grad():
                v = teacher(x) * 2
            loss = crit(student(x), v, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, [p.detach().clone() for p in student.parameters()]


def test_training_loop_matches_reference_loss():
    losses, params = _mlp_run("auto")
    ref_losses, ref_params = _mlp_run("reference")
    assert losses[-1] < 0.7 * losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)
    for a, b in zip(params, ref_params):
        close(a, b, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------
# Modules, schedulers, statistics
# --------------------------------------------------------------------------------

def test_kdloss_module_and_scheduler():
    z, v = logits((5, 7), seed=70), logits((5, 7), seed=71)
    y = torch.randint(0, 7, (5,), generator=_gen(72))
    dts = kdtemp.DTS(total_epochs=10)
    crit = kt.KDLoss(scheduler=dts, kd_weight=0.9, ce_weight=0.1)
    close(crit(z, v, y), kt.kd_loss(z, v, temperature=dts.temperature, labels=y,
                                    kd_weight=0.9, ce_weight=0.1))
    dts.update(1, **kt.ce_stats(z, v, y))
    assert dts.temperature != 4.0
    close(crit(z, v, y), kt.kd_loss(z, v, temperature=dts.temperature, labels=y,
                                    kd_weight=0.9, ce_weight=0.1))
    close(crit(z, v, labels=y, temperature=1.0),  # a call's argument wins
          kt.kd_loss(z, v, temperature=1.0, labels=y, kd_weight=0.9, ce_weight=0.1))
    loss, count = crit(z, v, y, return_count=True)
    assert int(count) == 5
    assert "kd_weight=0.9" in repr(crit) and "DTS" in repr(crit)
    with pytest.raises(TypeError, match="unexpected keyword"):
        kt.KDLoss(temprature=2.0)
    with pytest.raises(TypeError, match="temperature"):
        kt.KDLoss(scheduler=object())
    with pytest.raises(TypeError, match="no temperature"):
        kt.CELoss(scheduler=dts)


def test_modules_of_every_loss():
    z, v = logits((5, 7), seed=73), logits((5, 7), seed=74)
    y = torch.randint(0, 7, (5,), generator=_gen(75))
    close(kt.CELoss(label_smoothing=0.1)(z, y), F.cross_entropy(z, y, label_smoothing=0.1))
    close(kt.ATKDLoss(**kdtemp.presets.atkd)(z, v, y),
          kt.atkd_loss(z, v, labels=y, **kdtemp.presets.atkd))
    close(kt.DKDLoss(temperature=2.0)(z, v, y), kt.dkd_loss(z, v, y, temperature=2.0))
    close(kt.AnnealingLoss(phi=0.5, reduction="mean")(z, v),
          F.mse_loss(z, 0.5 * v))
    sched = kdtemp.ConstantTemperature(3.0)
    close(kt.DKDLoss(scheduler=sched)(z, v, y), kt.dkd_loss(z, v, y, temperature=3.0))


def test_learnable_temperature_parameter_in_module():
    t = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    crit = kt.KDLoss(temperature=t)
    assert list(crit.parameters()) == [t]
    z, v = logits((4, 5), seed=76), logits((4, 5), seed=77)
    crit(z, v).backward()
    assert t.grad is not None and torch.isfinite(t.grad)


def test_ce_stats_and_all_reduce_without_process_group():
    z, v = logits((2, 6, 9), seed=78), logits((2, 6, 9), seed=79)
    y = torch.randint(0, 9, (2, 6), generator=_gen(80))
    y[1, 4:] = -100
    stats = kt.ce_stats(z.requires_grad_(True), v, y)
    close(stats["student_ce_sum"], F.cross_entropy(z.reshape(-1, 9).detach(), y.reshape(-1),
                                                   reduction="sum"))
    close(stats["teacher_ce_sum"], F.cross_entropy(v.reshape(-1, 9), y.reshape(-1),
                                                   reduction="sum"))
    assert int(stats["count"]) == 10
    assert not stats["student_ce_sum"].requires_grad
    local = np.array([1.0, 2.0, 3.0])
    out = kt.all_reduce_sum(local)
    assert out.dtype == np.float64 and np.array_equal(out, local) and out is not local


# --------------------------------------------------------------------------------
# Arguments and errors
# --------------------------------------------------------------------------------

def test_errors():
    z, v = logits((3, 4)), logits((3, 4), seed=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        kt.kd_loss(z.numpy(), v)
    with pytest.raises(TypeError, match="unexpected keyword"):
        kt.kd_loss(z, v, temprature=2.0)
    with pytest.raises(TypeError, match="positional"):
        kt.kd_loss(z, v, 2.0)
    with pytest.raises(TypeError, match="missing"):
        kt.kd_loss(z)
    for backend in ("auto", "reference"):
        with _autograd.use_backend(backend):
            with pytest.raises(ValueError, match="temperature"):
                kt.kd_loss(z, v, temperature=-1.0)
            with pytest.raises(ValueError, match="reduction"):
                kt.kd_loss(z, v, reduction="mean")
            with pytest.raises(ValueError, match="labels"):
                kt.ce_loss(z, torch.tensor([0, 1, 7]))
            bad = z.clone()
            bad[1, 1] = float("nan")
            with pytest.raises(ValueError, match="NaN"):
                kt.kd_loss(bad, v)
            with pytest.raises(ValueError, match="shape"):
                kt.kd_loss(z, v[:2])
    with pytest.raises(ValueError, match="backend"):
        with _autograd.use_backend("gpu"):
            pass


def test_numpy_arguments_and_per_row_shapes():
    z, v = logits((2, 3, 5), seed=81), logits((2, 3, 5), seed=82)
    t = np.linspace(1.0, 3.0, 6).reshape(2, 3)
    a = kt.kd_loss(z, v, temperature=t)
    b = kt.kd_loss(z, v, temperature=torch.from_numpy(t))
    c = kt.kd_loss(z, v, temperature=torch.from_numpy(t).reshape(-1))
    close(a, b)
    close(a, c)
    exp = kdtemp.kd_loss(z.numpy(), v.numpy(), temperature=t).loss
    assert float(a) == exp
    y = [0, 1, -100, 3, 4, 2]                     # array-likes become tensors
    for backend in ("auto", "reference"):
        with _autograd.use_backend(backend):
            close(kt.ce_loss(z, [y[:3], y[3:]]),
                  kt.ce_loss(z, torch.tensor([y[:3], y[3:]])))
            t_ro = np.full((2, 3), 2.0)
            t_ro.flags.writeable = False          # read-only: no torch warning
            close(kt.kd_loss(z, v, temperature=t_ro), kt.kd_loss(z, v, temperature=2.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_the_reference_on_device():
    z, v = logits((6, 10), seed=83), logits((6, 10), seed=84)
    y = torch.arange(6)
    exp = run(kt.kd_loss, z, v, labels=y, ce_weight=0.1)
    got = run(kt.kd_loss, z.cuda(), v.cuda(), labels=y.cuda(), ce_weight=0.1)
    assert got[0].device.type == "cuda" and got[1].device.type == "cuda"
    close(got[0].cpu(), exp[0])
    close(got[1].cpu(), exp[1])


# --------------------------------------------------------------------------------
# torch.library custom op and torch.compile
# --------------------------------------------------------------------------------

def test_custom_op_opcheck():
    assert _autograd._OP is not None
    z = logits((4, 5), seed=85).requires_grad_(True)
    v = logits((4, 5), seed=86)
    for reduction in ("batchmean", "none"):
        args = ("kd_loss", z, v, "labels", [torch.tensor([0, 1, -100, 3])], "temperature",
                torch.tensor([2.0], dtype=torch.float64), f"reduction={reduction!r}", True)
        result = torch.library.opcheck(_autograd._OP, args)  # every check, incl. AOT
        assert set(result.values()) == {"SUCCESS"}, result


def test_torch_compile_fullgraph():
    import torch._dynamo
    import torch._dynamo.utils

    z0, v = logits((6, 9), seed=87), logits((6, 9), seed=88)
    y = torch.randint(0, 9, (6,), generator=_gen(89))

    def f(z, T):
        return kt.kd_loss(z, v, temperature=T, labels=y, kd_weight=0.9, ce_weight=0.1)

    for backend in ("auto", "reference"):   # the custom op; the CUDA path's formulas
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        with _autograd.use_backend(backend):
            cf = torch.compile(f, fullgraph=True, backend="aot_eager")
            for T in (2.0, 3.0, 4.5, 6.0):
                got = run(cf, z0, T)
                exp = run(f, z0, T)
                close(got[0], exp[0])
                close(got[1], exp[1])
        # a float temperature that changes every step becomes symbolic after the
        # first change: no recompilation for every new value
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    torch._dynamo.reset()
