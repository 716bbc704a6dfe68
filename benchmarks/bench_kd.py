"""kd_loss (every divergence), ce_loss and softmax: kdtemp vs PyTorch CPU vs the NumPy twin.

    python benchmarks/bench_kd.py --quick
    python benchmarks/bench_kd.py --only kl,ce --threads 1,2

The PyTorch side of each divergence is the straightforward implementation of
its formula in shared/spec/kd.md (forward + backward on a leaf tensor, float32
unless --dtype), at temperature T = 4 with the T^2 scale and batchmean, as
kdtemp's defaults.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kdtemp  # noqa: E402
import kdtemp.reference as ref  # noqa: E402
from common import Case, logits_labels, logits_pair, main, nc_bytes, torch_grad  # noqa: E402

T = 4.0
BETA = 0.5   # jsd
ALPHA = 0.1  # skew_kl, skew_reverse_kl
DIVERGENCES = ("kl", "reverse_kl", "symmetric_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")


def torch_divergence(div: str):
    """``loss(z, tensors)`` of ``div`` in plain PyTorch, batchmean, times T^2."""
    import torch
    import torch.nn.functional as F

    def loss(z, t):
        v = t["teacher"]
        if div == "kl":  # the step of shared/spec/performance.md, verbatim
            return F.kl_div(F.log_softmax(z / T, -1), F.softmax(v / T, -1),
                            reduction="batchmean") * T ** 2
        n = z.shape[0]
        log_ps = F.log_softmax(z / T, -1)
        log_pt = F.log_softmax(v / T, -1)
        if div == "reverse_kl":    # KL(pS || pT)
            d = F.kl_div(log_pt, log_ps, reduction="sum", log_target=True)
        elif div == "symmetric_kl":
            d = (F.kl_div(log_ps, log_pt, reduction="sum", log_target=True)
                 + F.kl_div(log_pt, log_ps, reduction="sum", log_target=True))
        elif div == "jsd":         # TRL's generalized_jsd_loss
            log_m = torch.logsumexp(torch.stack([log_pt + math.log(BETA),
                                                 log_ps + math.log(1 - BETA)]), dim=0)
            d = (BETA * F.kl_div(log_m, log_pt, reduction="sum", log_target=True)
                 + (1 - BETA) * F.kl_div(log_m, log_ps, reduction="sum", log_target=True))
        elif div == "skew_kl":     # KL(pT || alpha pT + (1-alpha) pS)
            log_m = torch.log(ALPHA * log_pt.exp() + (1 - ALPHA) * log_ps.exp())
            d = F.kl_div(log_m, log_pt, reduction="sum", log_target=True)
        elif div == "skew_reverse_kl":  # KL(pS || alpha pS + (1-alpha) pT)
            log_m = torch.log(ALPHA * log_ps.exp() + (1 - ALPHA) * log_pt.exp())
            d = F.kl_div(log_m, log_ps, reduction="sum", log_target=True)
        elif div == "tvd":
            d = 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum()
        else:
            raise ValueError(div)
        return d / n * T ** 2
    return torch_grad(loss)


def kd_case(div: str) -> Case:
    return Case(
        name=div,
        make_inputs=logits_pair,
        kdtemp_fn=lambda x, n: kdtemp.kd_loss(x["student"], x["teacher"], temperature=T,
                                              divergence=div, beta=BETA, alpha=ALPHA,
                                              n_threads=n),
        torch_fn=torch_divergence(div),
        numpy_fn=lambda x: ref.kd_loss(x["student"], x["teacher"], temperature=T,
                                       divergence=div, beta=BETA, alpha=ALPHA),
        bytes_moved=nc_bytes(2, 1),  # student + teacher read, gradient written
        kdtemp_out_fn=lambda x, n, out: kdtemp.kd_loss(
            x["student"], x["teacher"], temperature=T, divergence=div, beta=BETA,
            alpha=ALPHA, n_threads=n, out=out),
    )


def _torch_ce(z, t):
    import torch.nn.functional as F
    return F.cross_entropy(z, t["labels"])


def _torch_softmax(t):
    import torch
    return torch.softmax(t["student"] / T, -1)


CASES = [kd_case(d) for d in DIVERGENCES] + [
    Case(
        name="ce",
        make_inputs=logits_labels,
        kdtemp_fn=lambda x, n: kdtemp.ce_loss(x["student"], x["labels"], n_threads=n),
        torch_fn=torch_grad(_torch_ce),
        numpy_fn=lambda x: ref.ce_loss(x["student"], x["labels"]),
        bytes_moved=nc_bytes(1, 1, per_row=8),  # logits read, gradient written, labels
        kdtemp_out_fn=lambda x, n, out: kdtemp.ce_loss(x["student"], x["labels"],
                                                       n_threads=n, out=out),
    ),
    Case(
        name="softmax",
        make_inputs=logits_labels,
        kdtemp_fn=lambda x, n: kdtemp.softmax(x["student"], T, n_threads=n),
        torch_fn=_torch_softmax,  # forward only: softmax(x / T)
        numpy_fn=lambda x: ref.softmax(x["student"], T),
        bytes_moved=nc_bytes(1, 1),  # logits read, probabilities written
        kdtemp_out_fn=lambda x, n, out: kdtemp.softmax(x["student"], T, n_threads=n, out=out),
    ),
]

if __name__ == "__main__":
    raise SystemExit(main(["bench_kd"]))
