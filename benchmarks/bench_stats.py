"""Statistics of logits (no gradient): the DTS cross-entropies, row_stats and
temperature_profile; kdtemp vs PyTorch CPU vs the NumPy twin.

    python benchmarks/bench_stats.py --quick
    python benchmarks/bench_stats.py --only row_stats --threads 1,2

* ``dts_ce``: what ``kdtemp.DTS.update_from_logits`` measures per batch, the
  summed cross-entropies of student and teacher from one fused kernel call,
  ``kdtemp.dts.ce_pair`` (before it: ``kdtemp.ce_loss(..., reduction="sum",
  compute_grad=False)`` twice), vs two ``F.cross_entropy(..., reduction="sum")``
  under ``torch.no_grad()``.
* ``row_stats``: ``kdtemp.row_stats(z, T, labels=y)`` at T = 4 vs PyTorch
  computing the same per-row values (max logit and argmax in one ``max``,
  ``logsumexp(z/T)``, ``std_mean``, the entropy of ``softmax(z/T)`` from its
  log, the top-1 probability as ``exp(max/T - lse)``, the CE at t = 1 with
  ``F.cross_entropy(reduction="none")``, argmax == label) and their batch means.
* ``temp_profile``: ``kdtemp.temperature_profile(z, v)`` over T = 1..20 (its
  default grid) vs a PyTorch loop over the 20 temperatures computing the same
  six batch values (T^2-scaled KL, the norm of its gradient, both entropies,
  the teacher's top-1 probability, the sharpness gap).

GB/s counts the logits read once (``dts_ce``: both, ``row_stats``: one, plus
labels and the N x 9 results; ``temp_profile``: both; the (N, 20, 6) float64
per-row values kdtemp's kernel writes for its deterministic row sums are not
counted: an ideal kernel would not write them).

Before anything is timed, importing this module checks once, on small inputs in
float64 and float32, that kdtemp and the PyTorch code give the same values (an
``AssertionError`` otherwise: the harness then skips the module with a warning,
and running the file alone exits with the error).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import kdtemp  # noqa: E402
import kdtemp.reference as ref  # noqa: E402
from common import Case, logits_labels, logits_pair, main, nc_bytes, to_torch  # noqa: E402

T_STATS = 4.0                                 # row_stats' temperature
TEMPS = tuple(float(t) for t in range(1, 21))  # temperature_profile's default grid
STATS = ("max_logit", "sharpness", "mean", "std", "entropy", "top1_prob", "ce")
PROFILE = ("kd_loss", "grad_norm", "teacher_entropy", "student_entropy", "teacher_top1",
           "sharpness_gap")


# -- dts_ce --------------------------------------------------------------------

def kdtemp_dts_ce(x, n_threads=None):
    """(teacher_ce_sum, student_ce_sum, count), one kernel call."""
    return kdtemp.dts.ce_pair(x["student"], x["teacher"], x["labels"], n_threads=n_threads)


def numpy_dts_ce(x):
    return ref.ce_pair(x["student"], x["teacher"], x["labels"])


def torch_dts_ce(t):
    import torch
    import torch.nn.functional as F
    with torch.no_grad():
        return (F.cross_entropy(t["student"], t["labels"], reduction="sum"),
                F.cross_entropy(t["teacher"], t["labels"], reduction="sum"))


# -- row_stats -----------------------------------------------------------------

def torch_row_stats(t):
    """The per-row values of ``kdtemp.row_stats`` at T_STATS, and their batch means."""
    import torch
    import torch.nn.functional as F
    x, y = t["student"], t["labels"]
    with torch.no_grad():
        xs = x / T_STATS
        lse = torch.logsumexp(xs, -1)
        max_logit, argmax = x.max(-1)
        std, mean = torch.std_mean(x, -1, correction=0)
        log_p = xs.sub_(lse.unsqueeze(-1))
        entropy = -(log_p.exp() * log_p).sum(-1)
        top1 = torch.exp(max_logit / T_STATS - lse)
        ce = F.cross_entropy(x, y, reduction="none")
        correct = argmax == y
        rows = dict(zip(STATS, (max_logit, lse, mean, std, entropy, top1, ce)))
        batch = {k: v.mean() for k, v in rows.items()}
        batch["accuracy"] = correct.double().mean()
    return rows, argmax, correct, batch


# -- temp_profile --------------------------------------------------------------

def torch_profile(t):
    """(6, K): the values of ``kdtemp.temperature_profile`` over TEMPS, one T at a time."""
    import torch
    z, v = t["student"], t["teacher"]
    n = z.shape[0]
    out = torch.empty(len(PROFILE), len(TEMPS), dtype=torch.float64)
    with torch.no_grad():
        v_max = v.amax(-1)
        for k, T in enumerate(TEMPS):
            log_ps = z / T
            lse_s = torch.logsumexp(log_ps, -1, keepdim=True)
            log_ps -= lse_s
            log_pt = v / T
            lse_t = torch.logsumexp(log_pt, -1, keepdim=True)
            log_pt -= lse_t
            ps, pt = log_ps.exp(), log_pt.exp()
            kd = (pt * (log_pt - log_ps)).sum() * (T * T / n)      # batchmean T^2 KL
            grad_norm = T * torch.linalg.vector_norm(ps - pt) / n  # |T (pS - pT) / n|
            h_t = -(pt * log_pt).sum() / n
            h_s = -(ps * log_ps).sum() / n
            top1 = torch.exp(v_max / T - lse_t.squeeze(-1)).mean()
            gap = (lse_t - lse_s).mean()
            out[:, k] = torch.stack([kd, grad_norm, h_t, h_s, top1, gap])
    return out


CASES = [
    Case(
        name="dts_ce",
        make_inputs=logits_pair,
        kdtemp_fn=kdtemp_dts_ce,
        torch_fn=torch_dts_ce,
        numpy_fn=numpy_dts_ce,
        bytes_moved=nc_bytes(2, 0, per_row=8),  # both logits read once, labels
    ),
    Case(
        name="row_stats",
        make_inputs=logits_labels,
        kdtemp_fn=lambda x, n: kdtemp.row_stats(x["student"], T_STATS, labels=x["labels"],
                                                n_threads=n),
        torch_fn=torch_row_stats,
        numpy_fn=lambda x: ref.row_stats(x["student"], T_STATS, labels=x["labels"]),
        # logits read once; labels; 7 float64 + int64 argmax + bool correct written
        bytes_moved=nc_bytes(1, 0, per_row=8 + 7 * 8 + 8 + 1),
    ),
    Case(
        name="temp_profile",
        make_inputs=logits_pair,
        kdtemp_fn=lambda x, n: kdtemp.temperature_profile(x["student"], x["teacher"], TEMPS,
                                                          n_threads=n),
        torch_fn=torch_profile,
        numpy_fn=lambda x: ref.temperature_profile(x["student"], x["teacher"], TEMPS),
        bytes_moved=nc_bytes(2, 0),  # both logits read once
    ),
]

# ----------------------------------------------------------------------------
# One-time agreement check (kdtemp vs the PyTorch code), on import
# ----------------------------------------------------------------------------

CHECK_SHAPES = [(64, 100), (16, 1000)]
#: max |kdtemp - torch| <= RTOL * max |torch|, value by value (argmax and
#: correct exactly). float32 is looser than in the loss benches: PyTorch's float32
#: profile (the KL as a sum of p (log p - log q), the norm) is off by up to ~3e-5
#: relative at these sizes, while kdtemp, accumulating in float64, stays within
#: ~2e-7 of the float64 NumPy twin.
CHECK_RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4}


def _close(what: str, got, want, rtol: float) -> str:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    if got.shape != want.shape or not err <= rtol * scale:
        return f"{what}: max abs diff {err:.3g} vs max |torch| {scale:.3g} (rtol {rtol:g})"
    return ""


def _pairs(name: str, k, t):
    """(what, kdtemp value, torch value, exact) for case ``name``."""
    if name == "dts_ce":
        return [("student ce sum", k[1], t[0].item(), False),
                ("teacher ce sum", k[0], t[1].item(), False)]
    if name == "row_stats":
        rows, argmax, correct, batch = t
        out = [(s, getattr(k, s), rows[s].numpy(), False) for s in STATS]
        out += [("argmax", k.argmax, argmax.numpy(), True),
                ("correct", k.correct, correct.numpy(), True)]
        out += [(f"batch {s}", k.batch[s], v.item(), False) for s, v in batch.items()]
        return out
    if name == "temp_profile":
        return [(f, getattr(k, f), t[i].numpy(), False) for i, f in enumerate(PROFILE)]
    raise ValueError(name)


def check() -> None:
    """kdtemp and the PyTorch code agree on small inputs."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    bad = []
    for dtype, rtol in CHECK_RTOL.items():
        for shape in CHECK_SHAPES:
            for case in CASES:
                x = case.make_inputs(shape, dtype, np.random.default_rng(1234))
                k = case.kdtemp_fn(x, 1)
                t = case.torch_fn(to_torch(x))
                tag = f"{case.name} {shape[0]}x{shape[1]} {dtype.name}"
                for what, got, want, exact in _pairs(case.name, k, t):
                    msg = _close(f"{tag} {what}", got, want, 0.0 if exact else rtol)
                    if msg:
                        bad.append(msg)
    if bad:
        raise AssertionError("kdtemp and PyTorch disagree:\n  " + "\n  ".join(bad))


if sys.argv[1:2] != ["--memory-worker"]:  # not in the harness' memory subprocesses
    check()

if __name__ == "__main__":
    sys.modules.setdefault("bench_stats", sys.modules[__name__])  # checked once, not re-imported
    raise SystemExit(main(["bench_stats"]))
