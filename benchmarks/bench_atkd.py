"""atkd_loss (ATKD defaults, and the logit-standardisation preset with labels):
kdtemp vs PyTorch CPU vs the NumPy twin.

    python benchmarks/bench_atkd.py --quick
    python benchmarks/bench_atkd.py --only atkd_logit_std --threads 1,2

The PyTorch side is the ATKD step of shared/spec/atkd.md written out (forward +
backward on a leaf tensor): per-row std temperatures, the student's *not*
detached (as kdtemp's default ``detach_temperature=False`` and as the
logit-standardisation code differentiates it)::

    tS = b * (z.std(-1, correction=ddof, keepdim=True) + eps)
    tT = b * (v.std(-1, correction=ddof, keepdim=True) + eps)
    kl = F.kl_div(F.log_softmax(z / tS, -1), F.softmax(v / tT, -1),
                  reduction="none").sum(-1) * s          # s = 1 or b^2
    loss = kd_weight * kl.mean() + ce_weight * F.cross_entropy(z, y)

``atkd``: ``kdtemp.atkd_loss`` with its defaults (b = 1, ddof 0, eps 1e-7, no
scale, no CE term). ``atkd_logit_std``: ``**kdtemp.presets.logit_standardization``
with labels (b = 2, ddof 1, scale b^2, kd 9 + ce 0.1).

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

#: The paper's defaults (``kdtemp.atkd_loss()`` without arguments).
DEFAULTS = dict(base_temperature=1.0, ddof=0, eps=1e-7, scale="none", kd_weight=1.0,
                ce_weight=0.0)
LOGIT_STD = dict(kdtemp.presets.logit_standardization)


def torch_atkd(base_temperature: float, ddof: int, eps: float, scale: str,
               kd_weight: float, ce_weight: float):
    """``loss(z, tensors)`` of the ATKD step in plain PyTorch (batchmean)."""
    import torch.nn.functional as F

    b = base_temperature
    s = {"none": 1.0, "base": b * b}[scale]

    def loss(z, t):
        v = t["teacher"]
        ts = b * (z.std(-1, correction=ddof, keepdim=True) + eps)  # not detached
        tt = b * (v.std(-1, correction=ddof, keepdim=True) + eps)
        kl = F.kl_div(F.log_softmax(z / ts, -1), F.softmax(v / tt, -1),
                      reduction="none").sum(-1) * s
        out = kd_weight * kl.mean()
        if ce_weight:
            out = out + ce_weight * F.cross_entropy(z, t["labels"])
        return out
    return torch_grad(loss)


def atkd_case(name: str, settings: dict, labels: bool) -> Case:
    def kw(x):
        return dict(settings, labels=x["labels"]) if labels else settings
    return Case(
        name=name,
        make_inputs=logits_pair,
        kdtemp_fn=lambda x, n: kdtemp.atkd_loss(x["student"], x["teacher"], n_threads=n,
                                                **kw(x)),
        torch_fn=torch_atkd(**settings),
        numpy_fn=lambda x: ref.atkd_loss(x["student"], x["teacher"], **kw(x)),
        # student + teacher read, gradient written (+ labels)
        bytes_moved=nc_bytes(2, 1, per_row=8 if labels else 0),
        kdtemp_out_fn=lambda x, n, out: kdtemp.atkd_loss(x["student"], x["teacher"],
                                                         n_threads=n, out=out, **kw(x)),
    )


CASES = [
    atkd_case("atkd", DEFAULTS, labels=False),
    atkd_case("atkd_logit_std", LOGIT_STD, labels=True),
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
    """kdtemp and the PyTorch step agree (loss and gradient) on small inputs."""
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
    sys.modules.setdefault("bench_atkd", sys.modules[__name__])  # checked once, not re-imported
    raise SystemExit(main(["bench_atkd"]))
