r"""Pure-PyTorch twins of the kdtemp losses (shared/spec/kd.md).

Every function here computes the same formulas as the C kernel behind the NumPy
function of the same name (``kdtemp.kd_loss`` <-> :func:`kd_loss`), with plain
differentiable torch operations, so that:

* non-CPU tensors (CUDA, MPS, ...) are computed where they live: nothing is
  copied to the host (the only host synchronisations are the argument checks,
  which read a handful of booleans and are skipped under ``torch.compile``);
* gradients with respect to anything that requires them (the student logits,
  and temperature tensors, e.g. CTKD's learnable temperature) come from
  autograd, exactly;
* the tests have a second, independent implementation to hold the kernel path
  against.

Each function takes the arguments of its NumPy twin (``compute_grad`` and
``out`` excepted: autograd decides what is differentiated) and returns
``(loss, count)``: the loss tensor (0-d, or the leading shape for
``reduction="none"``) and the number of counted rows as a 0-d int64 tensor.
float16/bfloat16 inputs are computed in float32 and the loss is float32 (as
under autocast); the gradient reaching the student has the student's dtype.

Decisions shared with the kernels (see ``kdtemp.reference``): a row whose
divergence is +inf gets a zero divergence gradient except for ``"kl"``; a term
whose weight is 0 is not evaluated; skipped rows contribute exactly 0 and get a
zero gradient even if their logits are garbage (all ``-inf``).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss", "ce_loss", "atkd_loss", "dkd_loss", "annealing_loss"]

DIVERGENCES = ("kl", "reverse_kl", "symmetric_kl", "jsd", "skew_kl",
               "skew_reverse_kl", "tvd")
REDUCTIONS = ("batchmean", "sum", "none")
SCALES = ("T2", "none")


# --------------------------------------------------------------------------------
# Argument handling
# --------------------------------------------------------------------------------

def _checking() -> bool:
    """Value checks read tensors on the host; they are skipped while compiling
    (a data-dependent branch would break the graph)."""
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and hasattr(compiler, "is_compiling")
                and compiler.is_compiling())


def _choice(value: Any, name: str, choices: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
    return value


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    return float(value)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32; float32/float64 natively."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype in (torch.float32, torch.float64):
        return dtype
    raise TypeError(f"`student` must be a floating-point tensor (float16, bfloat16, "
                    f"float32, float64), got {dtype}")


def _logits(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"`{name}` must have a class axis, got a 0-d tensor")
    if x.shape[-1] == 0:
        raise ValueError(f"`{name}` must have at least one class (C = 0)")
    compute_dtype(x.dtype)
    return x


def _row_tensor(a: Any, name: str, lead: Tuple[int, ...], n: int, like: Tensor) -> Tensor:
    """labels/mask as a flat length-N tensor on ``like``'s device."""
    t = torch.as_tensor(a, device=like.device)
    if tuple(t.shape) != lead and tuple(t.shape) != (n,):
        raise ValueError(f"`{name}` must have shape {lead} (one per row), "
                         f"got {tuple(t.shape)}")
    return t.reshape(n)


def _temperature(t: Any, name: str, lead: Tuple[int, ...], n: int, like: Tensor,
                 check: bool) -> Tensor:
    """A temperature as a tensor broadcastable to (N, 1) (shape (1, 1) or (N, 1)),
    in ``like``'s dtype, keeping its autograd graph."""
    if isinstance(t, bool):
        raise TypeError(f"`{name}` must be a number or a tensor of numbers, got a bool")
    if isinstance(t, (int, float)) or (not isinstance(t, Tensor)
                                       and isinstance(t, numbers.Real)):
        if check and not (t > 0 and float(t) < float("inf")):
            raise ValueError(f"`{name}` must be finite and > 0, got {float(t)!r}")
        if check:
            _check_temperature_range(torch.tensor([float(t)], dtype=torch.float64), name,
                                     like.dtype, scalar=True)
        # ones * t, not full(t): under torch.compile a float that changes every
        # step stays symbolic instead of being baked into the graph
        return torch.ones((1, 1), dtype=like.dtype, device=like.device) * t
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t)
        except (TypeError, RuntimeError, ValueError):
            raise TypeError(f"`{name}` must be a number or a tensor of numbers, "
                            f"got {type(t).__name__}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"`{name}` must be a number or a tensor of real numbers, "
                        f"got dtype {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"`{name}` is on {t.device} but the logits are on "
                         f"{like.device}")
    if t.numel() == 1:
        col = t.reshape(1, 1)
    elif tuple(t.shape) == lead or tuple(t.shape) == (n,):
        col = t.reshape(n, 1)
    else:
        raise ValueError(f"`{name}` must be a scalar or have one value per row "
                         f"(shape {lead} or ({n},)), got shape {tuple(t.shape)}")
    if check:
        bad = ~(torch.isfinite(col) & (col > 0))
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0, 0])
            raise ValueError(f"`{name}` must be finite and > 0, got "
                             f"{float(col.reshape(-1)[i])!r}"
                             + ("" if col.numel() == 1 else f" at row {i}"))
        _check_temperature_range(col.detach().reshape(-1), name, like.dtype,
                                 scalar=col.numel() == 1)
    return col.to(like.dtype)


def _check_temperature_range(t: Tensor, name: str, dtype: torch.dtype, scalar: bool) -> None:
    """The kernels' temperature range for logits of ``dtype`` (computed in): from
    the one whose inverse is the dtype's largest finite value to that value."""
    lo, hi = 1.0 / torch.finfo(dtype).max, float(torch.finfo(dtype).max)
    t64 = t.to(torch.float64)
    bad = (t64 < lo) | (t64 > hi)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"`{name}` must be in [{lo:.3g}, {hi:.3g}] for "
                         f"{str(dtype).replace('torch.', '')} logits (it and its inverse must "
                         f"be finite), got {float(t[i])!r}" + ("" if scalar else f" at row {i}"))


def _counted(labels: Optional[Tensor], mask: Any, ignore_index: int, lead, n: int,
             c: int, like: Tensor, check: bool, check_range: bool = True
             ) -> Tuple[Tensor, Optional[Tensor]]:
    """(counted rows as a bool (N,) tensor, labels as int64 (N,) with skipped rows
    replaced by 0, or None). ``check_range=False``: labels only select rows."""
    counted = torch.ones(n, dtype=torch.bool, device=like.device)
    y = None
    if labels is not None:
        lab = _row_tensor(labels, "labels", lead, n, like)
        if lab.is_floating_point() or lab.dtype == torch.bool or lab.is_complex():
            raise TypeError(f"`labels` must be integers, got dtype {lab.dtype}")
        lab = lab.to(torch.int64)
        keep = lab != ignore_index
        if check and check_range:
            bad = keep & ((lab < 0) | (lab >= c))
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"`labels` must be in [0, {c}) or equal ignore_index "
                                 f"({ignore_index}); got {int(lab[i])} at row {i}")
        counted = counted & keep
        y = torch.where(keep, lab, torch.zeros_like(lab))
    if mask is not None:
        m = _row_tensor(mask, "mask", lead, n, like)
        if m.is_floating_point() or m.is_complex():
            raise TypeError(f"`mask` must be bool (or 0/1 integers), got dtype {m.dtype}")
        counted = counted & (m != 0)
    return counted, y


def _check_rows(x: Tensor, counted: Tensor, name: str, check_finite: bool) -> None:
    if check_finite:
        bad = (torch.isnan(x) | (x == float("inf"))).any(1) & counted
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"`{name}` has NaN or +inf in row {i}; pass "
                             f"check_finite=False to skip this check")
    dead = (x == float("-inf")).all(1) & counted
    if bool(dead.any()):
        i = int(dead.nonzero()[0, 0])
        raise ValueError(f"`{name}` row {i} is all -inf but counts; skip it with "
                         f"`mask` or `ignore_index`")


# --------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------

def _div_temperature(x: Tensor, t: Tensor) -> Tensor:
    """``x / t`` whose gradient with respect to ``t`` ignores ``-inf`` entries (they
    stay ``-inf`` at every temperature, so they contribute 0; the naive
    ``-x/t^2`` would be ``inf * 0 = NaN``). The gradient with respect to ``x`` is
    ``1/t`` everywhere, as in the kernels."""
    if not t.requires_grad:
        return x / t
    fin = torch.isfinite(x)
    return torch.where(fin, torch.where(fin, x, 0.0) / t, x / t.detach())


def _cross_entropy(z: Tensor, y: Tensor, label_smoothing: float) -> Tensor:
    """Per-row ``F.cross_entropy`` with label smoothing, except that smoothing 1
    takes no ``(1 - eps) * NLL`` term: at a ``-inf`` target logit that is
    ``0 * inf = NaN`` in torch, ``+inf`` (uniform targets) in the kernels."""
    if label_smoothing == 1.0:
        return -F.log_softmax(z, dim=-1).mean(-1)
    return F.cross_entropy(z, y, reduction="none", label_smoothing=label_smoothing)


def _kl(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P || Q) per row with ``0 log 0 = 0``, written so that autograd never
    meets ``0 * inf``."""
    pos = p > 0
    lp = torch.where(pos, log_p, 0.0)
    lq = torch.where(pos, log_q, 0.0)
    return torch.where(pos, p * (lp - lq), 0.0).sum(-1)


def _kl_split(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P || Q) per row like :func:`_kl`, but an entry with ``P > 0`` and
    ``Q = 0`` adds ``+inf`` as a constant: no ``inf`` reaches the backward pass
    (``0 * inf = NaN``), so the row's gradient can be dropped cleanly."""
    pos = p > 0
    ok = pos & (log_q > float("-inf"))
    lp = torch.where(ok, log_p, 0.0)
    lq = torch.where(ok, log_q, 0.0)
    finite = torch.where(ok, p * (lp - lq), 0.0).sum(-1)
    return finite + torch.where((pos & ~ok).any(-1), float("inf"), 0.0)


def _log_mix(w: float, log_a: Tensor, log_b: Tensor) -> Tensor:
    """log M, M = w A + (1 - w) B (0 <= w < 1), from log A and log B, as
    ``logaddexp(log w + log A, log(1 - w) + log B)``: finite where A and B
    underflow and log M does not (skew reverse KL at alpha = 0 is reverse KL,
    M = pT, whose float32 softmax is 0 where log pT < -104). Entries with
    A = B = 0 are -inf, with logaddexp's inputs there replaced so that its
    gradient is not NaN."""
    lb = log_b + math.log1p(-w)
    if w == 0:
        return lb
    la = log_a + math.log(w)
    ninf = float("-inf")
    dead = (la == ninf) & (lb == ninf)
    mix = torch.logaddexp(torch.where(dead, 0.0, la), torch.where(dead, 0.0, lb))
    return torch.where(dead, ninf, mix)


def divergence_rows(name: str, log_ps: Tensor, log_pt: Tensor, beta: float,
                    alpha: float) -> Tensor:
    """``D_i`` of kd.md's table, per row, differentiable in both arguments.

    ``"kl"`` keeps its gradient on an infinite row (``(s/tS)(pS - pT)``, as the
    kernel); the others add an infinite part as a constant, and the caller
    drops the gradient of their infinite rows."""
    ps, pt = log_ps.exp(), log_pt.exp()
    kl = _kl_split
    if name == "kl":
        return _kl(pt, log_pt, log_ps)
    if name == "reverse_kl":
        return kl(ps, log_ps, log_pt)
    if name == "symmetric_kl":
        return kl(pt, log_pt, log_ps) + kl(ps, log_ps, log_pt)
    if name == "jsd":
        log_m = _log_mix(beta, log_pt, log_ps)
        return beta * kl(pt, log_pt, log_m) + (1 - beta) * kl(ps, log_ps, log_m)
    if name == "skew_kl":
        return kl(pt, log_pt, _log_mix(alpha, log_pt, log_ps))
    if name == "skew_reverse_kl":
        return kl(ps, log_ps, _log_mix(alpha, log_ps, log_pt))
    if name == "tvd":
        return 0.5 * (pt - ps).abs().sum(-1)
    raise ValueError(name)  # pragma: no cover - checked by the caller


def _reduce(rows: Tensor, counted: Tensor, reduction: str, lead, out_dtype,
            c: int = 1) -> Tensor:
    rows = torch.where(counted, rows, torch.zeros_like(rows))
    if reduction == "none":
        return rows.reshape(lead).to(out_dtype)
    total = rows.sum()
    if reduction in ("batchmean", "mean"):
        count = counted.sum().clamp(min=1).to(total.dtype)
        total = total / (count if reduction == "batchmean" else count * c)
    return total.to(out_dtype)


def _nonneg(x: Tensor) -> Tensor:
    """``max(x, 0)`` in value (a KL below 0 is rounding; the kernels drop it) with
    the gradient of ``x`` (the kernels' gradient does not see the clamp)."""
    return torch.where(x < 0, x - x.detach(), x)


def _n_rows(lead: Tuple[int, ...]) -> int:
    n = 1
    for d in lead:
        n *= d
    return n


def _pair(student: Tensor, teacher: Any) -> None:
    _logits(teacher, "teacher")
    if tuple(teacher.shape) != tuple(student.shape):
        raise ValueError(f"`teacher` shape {tuple(teacher.shape)} does not match "
                         f"`student` shape {tuple(student.shape)}")
    if teacher.device != student.device:
        raise ValueError(f"`teacher` is on {teacher.device} but `student` is on "
                         f"{student.device}")


def _zero_skipped(x: Tensor, keep: Tensor) -> Tensor:
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------

def kd_loss(
    student: Tensor,
    teacher: Optional[Tensor],
    *,
    temperature: Any = 4.0,
    teacher_temperature: Any = None,
    divergence: str = "kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    scale: str = "T2",
    labels: Any = None,
    ignore_index: int = -100,
    mask: Any = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    label_smoothing: float = 0.0,
    reduction: str = "batchmean",
    check_finite: bool = True,
    n_threads: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The twin of :func:`kdtemp.kd_loss` in torch: ``(loss, count)``.

    ``loss_i = kd_weight * s_i * D(pT_i, pS_i) + ce_weight * ce_i`` with
    ``pS_i = softmax(z_i / tS_i)``, ``pT_i = softmax(v_i / tT_i)``,
    ``s_i = tS_i tT_i`` (``scale="T2"``) or 1, reduced over the counted rows.
    Temperatures may be numbers or tensors (scalar, one element, or one per
    row); tensors that require grad get the exact gradient through autograd.
    ``n_threads`` is accepted and ignored.
    """
    del n_threads
    check = _checking()
    z = _logits(student, "student")
    shape = tuple(z.shape)
    c, lead = shape[-1], shape[:-1]
    n = _n_rows(lead)
    cdt = compute_dtype(z.dtype)
    divergence = _choice(divergence, "divergence", DIVERGENCES)
    reduction = _choice(reduction, "reduction", REDUCTIONS)
    scale = _choice(scale, "scale", SCALES)
    beta, alpha = _real(beta, "beta"), _real(alpha, "alpha")
    kd_weight, ce_weight = _real(kd_weight, "kd_weight"), _real(ce_weight, "ce_weight")
    label_smoothing = _real(label_smoothing, "label_smoothing")
    if not 0 < beta < 1:
        raise ValueError(f"`beta` must be in (0, 1), got {beta!r}")
    if not 0 <= alpha < 1:
        raise ValueError(f"`alpha` must be in [0, 1), got {alpha!r}")
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"`label_smoothing` must be in [0, 1], got {label_smoothing!r}")
    if not (abs(kd_weight) < float("inf") and abs(ce_weight) < float("inf")):
        raise ValueError("`kd_weight` and `ce_weight` must be finite")
    use_kd, use_ce = kd_weight != 0.0, ce_weight != 0.0
    if use_kd:
        if teacher is None:
            raise ValueError("`teacher` is required when kd_weight != 0")
        _pair(z, teacher)
    if use_ce and labels is None:
        raise ValueError("`labels` are required when ce_weight != 0")

    z2 = z.reshape(n, c).to(cdt)
    counted, y = _counted(labels, mask, int(ignore_index), lead, n, c, z2, check)
    t_s = _temperature(temperature, "temperature", lead, n, z2, check)
    t_t = t_s if teacher_temperature is None else _temperature(
        teacher_temperature, "teacher_temperature", lead, n, z2, check)
    if check:
        _check_rows(z2.detach(), counted, "student", check_finite)
    keep = counted[:, None]
    # Skipped rows are replaced by zeros: they may hold anything (all -inf
    # padding) and must not leak NaN into the gradient through the where below.
    z2 = _zero_skipped(z2, keep)

    rows = torch.zeros(n, dtype=cdt, device=z2.device)
    if use_kd:
        v2 = teacher.detach().reshape(n, c).to(cdt)
        if check:
            _check_rows(v2, counted, "teacher", check_finite)
        v2 = _zero_skipped(v2, keep)
        log_ps = F.log_softmax(_div_temperature(z2, t_s), dim=-1)
        log_pt = F.log_softmax(_div_temperature(v2, t_t), dim=-1)
        d = divergence_rows(divergence, log_ps, log_pt, beta, alpha)
        if divergence != "kl":
            # an infinite row keeps its value and gets no divergence gradient
            d = torch.where(torch.isfinite(d), d, d.detach())
        s = (t_s * t_t).reshape(-1) if scale == "T2" else 1.0
        rows = rows + kd_weight * s * d
    if use_ce:
        ce = _cross_entropy(z2, y, label_smoothing)
        rows = rows + ce_weight * ce
    return _reduce(rows, counted, reduction, lead, cdt), counted.sum()


def ce_loss(
    student: Tensor,
    labels: Any,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    mask: Any = None,
    reduction: str = "batchmean",
    check_finite: bool = True,
    n_threads: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The twin of :func:`kdtemp.ce_loss` in torch: ``(loss, count)``.

    ``ce_i = -sum_j q_ij log softmax(z_i)_j``, ``q = (1 - eps) onehot(y_i) + eps/C``.
    """
    if labels is None:
        raise ValueError("`labels` are required")
    return kd_loss(student, None, labels=labels, label_smoothing=label_smoothing,
                   ignore_index=ignore_index, mask=mask, reduction=reduction,
                   kd_weight=0.0, ce_weight=1.0, check_finite=check_finite,
                   n_threads=n_threads)


def _finite_std(x: Tensor, ddof: int) -> Tuple[Tensor, Tensor]:
    """(mean, std) of each row's finite entries (``-inf`` classes left out), with
    ``ddof``; std 0 when a row has no more than ``ddof`` finite entries. The
    gradient of std is 0 where std is 0 (no ``0 / 0``)."""
    fin = torch.isfinite(x)
    n = fin.sum(-1, keepdim=True).to(x.dtype)
    x0 = torch.where(fin, x, 0.0)
    mean = x0.sum(-1, keepdim=True) / n.clamp(min=1)
    dev = torch.where(fin, x0 - mean, 0.0)
    dof = n - ddof
    var = (dev * dev).sum(-1, keepdim=True) / torch.where(dof > 0, dof, 1.0)
    live = (dof > 0) & (var > 0)
    std = torch.where(live, torch.sqrt(torch.where(live, var, 1.0)), 0.0)
    return mean, std


def atkd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    base_temperature: float = 1.0,
    ddof: int = 0,
    eps: float = 1e-7,
    scale: str = "none",
    detach_temperature: bool = False,
    labels: Any = None,
    ignore_index: int = -100,
    mask: Any = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    reduction: str = "batchmean",
    check_finite: bool = True,
    n_threads: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The twin of :func:`kdtemp.atkd_loss` in torch: ``(loss, count)``.

    ``tT_i = b (std(v_i) + eps)``, ``tS_i = b (std(z_i) + eps)`` (std over the
    finite entries, ``ddof``), ``loss_i = kd_weight * s_i * KL(pT_i || pS_i) +
    ce_weight * ce_i`` with ``s_i`` 1 (``"none"``), ``b^2`` (``"base"``) or
    ``tS_i tT_i`` (``"T2"``). The student's temperature is differentiated
    through (autograd) unless ``detach_temperature``; the teacher's never.
    """
    del n_threads
    check = _checking()
    z = _logits(student, "student")
    _pair(z, teacher)
    shape = tuple(z.shape)
    c, lead = shape[-1], shape[:-1]
    n = _n_rows(lead)
    cdt = compute_dtype(z.dtype)
    scale = _choice(scale, "scale", ("none", "base", "T2"))
    reduction = _choice(reduction, "reduction", REDUCTIONS)
    if isinstance(ddof, bool) or not isinstance(ddof, int):
        raise TypeError(f"`ddof` must be an int, got {type(ddof).__name__}")
    if ddof < 0:
        raise ValueError(f"`ddof` must be >= 0, got {ddof}")
    b, eps = _real(base_temperature, "base_temperature"), _real(eps, "eps")
    if not (b > 0 and b < float("inf")):
        raise ValueError(f"`base_temperature` must be finite and > 0, got {b!r}")
    if not (eps > 0 and eps < float("inf")):
        raise ValueError(f"`eps` must be finite and > 0, got {eps!r}")
    kd_weight, ce_weight = _real(kd_weight, "kd_weight"), _real(ce_weight, "ce_weight")
    if ce_weight != 0.0 and labels is None:
        raise ValueError("`labels` are required when ce_weight != 0")

    z2 = z.reshape(n, c).to(cdt)
    v2 = teacher.detach().reshape(n, c).to(cdt)
    counted, y = _counted(labels, mask, int(ignore_index), lead, n, c, z2, check)
    if check:
        _check_rows(z2.detach(), counted, "student", check_finite)
        _check_rows(v2, counted, "teacher", check_finite)
    keep = counted[:, None]
    z2, v2 = _zero_skipped(z2, keep), _zero_skipped(v2, keep)
    rows = torch.zeros(n, dtype=cdt, device=z2.device)
    if kd_weight != 0.0:
        _, sigma_z = _finite_std(z2.detach() if detach_temperature else z2, ddof)
        _, sigma_v = _finite_std(v2, ddof)
        t_s, t_t = b * (sigma_z + eps), b * (sigma_v + eps)
        u = _div_temperature(z2, t_s)
        log_ps = F.log_softmax(u, dim=-1)
        log_pt = F.log_softmax(v2 / t_t, dim=-1)
        kl = _nonneg(_kl(log_pt.exp(), log_pt, log_ps))
        if not detach_temperature:
            # a row whose KL is +inf (teacher mass m_out where the student is -inf):
            # through tS only the finite part's lse, weighted 1 - m_out, moves (shift
            # invariant, as in the kernels); the value is unchanged (lse - lse = 0)
            m_out = torch.where(torch.isfinite(z2), 0.0, log_pt.exp()).sum(-1)
            kl = kl - m_out * (_lse(u) - _lse(z2 / t_s.detach()))
        if scale == "T2":
            kl = kl * (t_s * t_t).reshape(-1)
        elif scale == "base":
            kl = kl * (b * b)
        rows = rows + kd_weight * kl
    if ce_weight != 0.0:
        rows = rows + ce_weight * F.cross_entropy(z2, y, reduction="none")
    return _reduce(rows, counted, reduction, lead, cdt), counted.sum()


def _lse(x: Tensor) -> Tensor:
    return torch.logsumexp(x, dim=-1)


def dkd_loss(
    student: Tensor,
    teacher: Tensor,
    labels: Any,
    *,
    temperature: Any = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    ignore_index: int = -100,
    mask: Any = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    label_smoothing: float = 0.0,
    reduction: str = "batchmean",
    check_finite: bool = True,
    n_threads: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The twin of :func:`kdtemp.dkd_loss` in torch: ``(loss, count)``.

    ``dkd_i = (alpha TCKD_i + beta NCKD_i) T_i^2`` with
    ``TCKD_i = KL([pT_y, 1 - pT_y] || [pS_y, 1 - pS_y])`` and
    ``NCKD_i = KL(softmax_{j != y}(v_i / T) || softmax_{j != y}(z_i / T))``
    (target excluded exactly; both clamped at 0 in value), plus
    ``ce_weight * ce_i``. A temperature tensor that requires grad gets its
    exact gradient.
    """
    del n_threads
    check = _checking()
    z = _logits(student, "student")
    _pair(z, teacher)
    if labels is None:
        raise ValueError("`labels` are required by DKD")
    shape = tuple(z.shape)
    c, lead = shape[-1], shape[:-1]
    n = _n_rows(lead)
    cdt = compute_dtype(z.dtype)
    reduction = _choice(reduction, "reduction", REDUCTIONS)
    alpha, beta = _real(alpha, "alpha"), _real(beta, "beta")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (0 <= value < float("inf")):
            raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}")
    kd_weight, ce_weight = _real(kd_weight, "kd_weight"), _real(ce_weight, "ce_weight")
    label_smoothing = _real(label_smoothing, "label_smoothing")
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"`label_smoothing` must be in [0, 1], got {label_smoothing!r}")

    z2 = z.reshape(n, c).to(cdt)
    v2 = teacher.detach().reshape(n, c).to(cdt)
    counted, y = _counted(labels, mask, int(ignore_index), lead, n, c, z2, check)
    t = _temperature(temperature, "temperature", lead, n, z2, check)
    if check:
        _check_rows(z2.detach(), counted, "student", check_finite)
        _check_rows(v2, counted, "teacher", check_finite)
    keep = counted[:, None]
    z2, v2 = _zero_skipped(z2, keep), _zero_skipped(v2, keep)
    rows = torch.zeros(n, dtype=cdt, device=z2.device)
    if kd_weight != 0.0:
        a, bb = _div_temperature(z2, t), _div_temperature(v2, t)
        target = F.one_hot(y, c).bool()
        lse_s, lse_t = _lse(a), _lse(bb)
        ninf = float("-inf")
        a_nt = torch.where(target, ninf, a)
        b_nt = torch.where(target, ninf, bb)
        # a side with no non-target mass (all -inf, or C == 1) has q = 0; its lse
        # is taken of zeros, so that no exp(-inf - -inf) = NaN reaches autograd
        has_s = (a_nt > ninf).any(-1)
        has_t = (b_nt > ninf).any(-1)
        lse_s_nt = _lse(torch.where(has_s[:, None], a_nt, 0.0))
        lse_t_nt = _lse(torch.where(has_t[:, None], b_nt, 0.0))
        a_y = a.gather(1, y[:, None])[:, 0]
        b_y = bb.gather(1, y[:, None])[:, 0]
        log_bs = torch.stack([a_y - lse_s, torch.where(has_s, lse_s_nt, ninf) - lse_s], dim=1)
        log_bt = torch.stack([b_y - lse_t, torch.where(has_t, lse_t_nt, ninf) - lse_t], dim=1)
        tckd = _nonneg(_kl(log_bt.exp(), log_bt, log_bs))
        log_qs = torch.where(target, ninf, a_nt - lse_s_nt[:, None])
        log_qt = torch.where(target | ~has_t[:, None], ninf, b_nt - lse_t_nt[:, None])
        nckd = _nonneg(_kl(log_qt.exp(), log_qt, log_qs))  # 0 without teacher mass
        # a zero weight drops its term, even an infinite one (as the kernels do)
        dkd = (alpha * tckd if alpha != 0 else 0.0) + (beta * nckd if beta != 0 else 0.0)
        rows = rows + kd_weight * dkd * (t * t).reshape(-1)
    if ce_weight != 0.0:
        rows = rows + ce_weight * _cross_entropy(z2, y, label_smoothing)
    return _reduce(rows, counted, reduction, lead, cdt), counted.sum()


def annealing_loss(
    student: Tensor,
    teacher: Tensor,
    phi: float,
    *,
    labels: Any = None,
    ignore_index: int = -100,
    mask: Any = None,
    reduction: str = "batchmean",
    check_finite: bool = True,
    n_threads: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The twin of :func:`kdtemp.annealing_loss` in torch: ``(loss, count)``.

    ``L_i = || z_i - phi v_i ||^2``; reductions ``"batchmean"`` (/ count),
    ``"mean"`` (/ (count * C), as ``F.mse_loss``), ``"sum"``, ``"none"``.
    Labels only select rows. NaN and +-inf in counted rows are errors unless
    ``check_finite=False``.
    """
    del n_threads
    check = _checking()
    z = _logits(student, "student")
    _pair(z, teacher)
    if isinstance(phi, bool) or not isinstance(phi, (int, float, numbers.Real)):
        raise TypeError(f"`phi` must be a number, got {type(phi).__name__}")
    phi = float(phi)
    if not abs(phi) < float("inf"):
        raise ValueError(f"`phi` must be finite, got {phi!r}")
    shape = tuple(z.shape)
    c, lead = shape[-1], shape[:-1]
    n = _n_rows(lead)
    cdt = compute_dtype(z.dtype)
    reduction = _choice(reduction, "reduction", ("batchmean", "mean", "sum", "none"))
    z2 = z.reshape(n, c).to(cdt)
    v2 = teacher.detach().reshape(n, c).to(cdt)
    counted, _ = _counted(labels, mask, int(ignore_index), lead, n, c, z2, check,
                          check_range=False)
    if check and check_finite:
        for name, x in (("student", z2.detach()), ("teacher", v2)):
            bad = (~torch.isfinite(x)).any(1) & counted
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"`{name}` has NaN or +-inf in row {i} (the regression "
                                 f"needs finite logits); pass check_finite=False to "
                                 f"skip this check")
    keep = counted[:, None]
    diff = _zero_skipped(z2, keep) - phi * _zero_skipped(v2, keep)
    return _reduce((diff * diff).sum(-1), counted, reduction, lead, cdt, c), counted.sum()
