"""dkd_loss (decoupled KD): kdtemp vs PyTorch CPU (mdistiller's DKD) vs the NumPy twin.

    python benchmarks/bench_dkd.py --quick
    python benchmarks/bench_dkd.py --threads 1,2 --dtype float64

The PyTorch side is mdistiller's ``dkd_loss`` (mdistiller/distillers/DKD.py),
verbatim but for ``size_average=False``, which is ``reduction="sum"``: the
target/non-target masks, ``cat_mask``, ``torch.log`` of the binary
probabilities, and the non-target softmax with ``1000 * gt_mask`` subtracted;
forward + backward on a leaf tensor. Settings: mdistiller's CIFAR-100 ones,
which are kdtemp's defaults (T = 4, alpha = 1, beta = 8); the DKD term alone
(``kd_weight=1``, no CE term; mdistiller adds its CE and warm-up outside).

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

T = 4.0
ALPHA = 1.0
BETA = 8.0


# mdistiller/distillers/DKD.py -------------------------------------------------

def _get_gt_mask(logits, target):
    target = target.reshape(-1)
    return logits.new_zeros(logits.shape).scatter_(1, target.unsqueeze(1), 1).bool()


def _get_other_mask(logits, target):
    target = target.reshape(-1)
    return logits.new_ones(logits.shape).scatter_(1, target.unsqueeze(1), 0).bool()


def _cat_mask(t, mask1, mask2):
    import torch
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


def mdistiller_dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    import torch
    import torch.nn.functional as F

    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = _cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = _cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = (F.kl_div(log_pred_student, pred_teacher, reduction="sum")
                 * (temperature ** 2) / target.shape[0])
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask,
                                           dim=1)
    nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
                 * (temperature ** 2) / target.shape[0])
    return alpha * tckd_loss + beta * nckd_loss

# ------------------------------------------------------------------------------


def _torch_dkd(z, t):
    return mdistiller_dkd_loss(z, t["teacher"], t["labels"], ALPHA, BETA, T)


CASES = [Case(
    name="dkd",
    make_inputs=logits_pair,
    kdtemp_fn=lambda x, n: kdtemp.dkd_loss(x["student"], x["teacher"], x["labels"],
                                           temperature=T, alpha=ALPHA, beta=BETA,
                                           n_threads=n),
    torch_fn=torch_grad(_torch_dkd),
    numpy_fn=lambda x: ref.dkd_loss(x["student"], x["teacher"], x["labels"], temperature=T,
                                    alpha=ALPHA, beta=BETA),
    bytes_moved=nc_bytes(2, 1, per_row=8),  # student + teacher read, gradient written, labels
    kdtemp_out_fn=lambda x, n, out: kdtemp.dkd_loss(
        x["student"], x["teacher"], x["labels"], temperature=T, alpha=ALPHA, beta=BETA,
        n_threads=n, out=out),
)]

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
    """kdtemp and mdistiller's DKD agree (loss and gradient) on small inputs."""
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
    sys.modules.setdefault("bench_dkd", sys.modules[__name__])  # checked once, not re-imported
    raise SystemExit(main(["bench_dkd"]))
