"""annealing_loss (Annealing-KD phase 1): kdtemp vs PyTorch CPU vs the NumPy twin.

    python benchmarks/bench_annealing.py --quick
    python benchmarks/bench_annealing.py --only annealing_mean --threads 1,2

The regression ``||z_i - phi * v_i||^2`` (shared/spec/annealing.md), forward +
backward on a leaf tensor, at phi = 0.7 (tau_max = 10, T = 4):

* ``annealing``: ``reduction="batchmean"`` (the paper: sum over classes, mean
  over rows) vs ``((z - phi * v) ** 2).sum(-1).mean()``;
* ``annealing_mean``: ``reduction="mean"`` (the authors' code) vs
  ``F.mse_loss(z, phi * v)``.

Before anything is timed, importing this module checks once, on small inputs in
float64 and float32, that kdtemp and the PyTorch step give the same loss and
gradient (an ``AssertionError`` otherwise: the harness then skips the module
with a warning, and running the file alone exits with the error).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import kdtemp  # noqa: E402
import kdtemp.reference as ref  # noqa: E402
from common import Case, logits_pair, main, nc_bytes, to_torch, torch_grad  # noqa: E402

PHI = 0.7  # Phi(T) = 1 - (T - 1) / tau_max at T = 4, tau_max = 10


def _torch_batchmean(z, t):
    return ((z - PHI * t["teacher"]) ** 2).sum(-1).mean()


def _torch_mean(z, t):
    import torch.nn.functional as F
    return F.mse_loss(z, PHI * t["teacher"])


def annealing_case(name: str, reduction: str, torch_loss) -> Case:
    return Case(
        name=name,
        make_inputs=logits_pair,
        kdtemp_fn=lambda x, n: kdtemp.annealing_loss(x["student"], x["teacher"], PHI,
                                                     reduction=reduction, n_threads=n),
        torch_fn=torch_grad(torch_loss),
        numpy_fn=lambda x: ref.annealing_loss(x["student"], x["teacher"], PHI,
                                              reduction=reduction),
        bytes_moved=nc_bytes(2, 1),  # student + teacher read, gradient written
        kdtemp_out_fn=lambda x, n, out: kdtemp.annealing_loss(
            x["student"], x["teacher"], PHI, reduction=reduction, n_threads=n, out=out),
    )


CASES = [
    annealing_case("annealing", "batchmean", _torch_batchmean),
    annealing_case("annealing_mean", "mean", _torch_mean),
]

# ----------------------------------------------------------------------------
# One-time agreement check (kdtemp vs the PyTorch step), on import
# ----------------------------------------------------------------------------

CHECK_SHAPES = [(64, 100), (16, 1000)]
#: max |kdtemp - torch| <= RTOL * max |torch|, for the loss and the gradient.
CHECK_RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}


def _close(what: str, got, want, rtol: float) -> str:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    if got.shape != want.shape or not err <= rtol * scale:
        return f"{what}: max abs diff {err:.3g} vs max |torch| {scale:.3g} (rtol {rtol:g})"
    return ""


def check() -> None:
    """kdtemp and the PyTorch regression agree (loss and gradient) on small inputs."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    bad = []
    for dtype, rtol in CHECK_RTOL.items():
        for shape in CHECK_SHAPES:
            x = logits_pair(shape, dtype, np.random.default_rng(1234))
            for case in CASES:
                k = case.kdtemp_fn(x, 1)
                t_loss, t_grad = case.torch_fn(to_torch(x))
                tag = f"{case.name} {shape[0]}x{shape[1]} {dtype.name}"
                bad += [m for m in (_close(f"{tag} loss", k.loss, t_loss.item(), rtol),
                                    _close(f"{tag} grad", k.grad, t_grad.numpy(), rtol)) if m]
    if bad:
        raise AssertionError("kdtemp and PyTorch disagree:\n  " + "\n  ".join(bad))


if sys.argv[1:2] != ["--memory-worker"]:  # not in the harness' memory subprocesses
    check()

if __name__ == "__main__":
    sys.modules.setdefault("bench_annealing", sys.modules[__name__])  # checked once
    raise SystemExit(main(["bench_annealing"]))
