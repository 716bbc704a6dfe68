"""Rows at the edges of the loss formulas (the fuzzer's findings A-F2,
fuzz/README.md), shared by the tests of the kernels, the NumPy twins and the
torch reference path: each case is a loss name, float64 inputs and keywords.

- DKD whose student or teacher has no non-target mass (NCKD +inf or 0);
- DKD with a zero weight on an infinite term;
- CE with label smoothing 1 and a -inf target logit;
- ATKD rows whose KL is +inf, shifted by a constant (the gradient through tS
  must not move);
- ATKD on constant rows with inexact means (std exactly 0).
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Tuple

import numpy as np

INF = np.inf


class EdgeCase(NamedTuple):
    id: str
    func: str               # kdtemp / kdtemp.reference / kdtemp.torch name
    args: Tuple[Any, ...]   # float64 arrays first (student, teacher), then labels
    kwargs: Dict[str, Any]


def _y(*labels: int) -> np.ndarray:
    return np.array(labels, dtype=np.int64)


_z_mixed = np.array([[5.0, -INF, -INF, 0.5], [5.0, 1.0, 2.0, -1.0], [-INF, 1.0, 2.0, 0.0],
                     [0.3, -INF, 1.2, 2.2]])
_v_mixed = np.array([[1.0, 2.0, 3.0, 0.0], [1.0, -INF, -INF, -INF], [3.0, 2.0, 1.0, 0.5],
                     [1.0, 0.5, -INF, 2.0]])

CASES: List[EdgeCase] = [
    EdgeCase("dkd student without non-target mass", "dkd_loss",
             (np.array([[5.0, -INF, -INF]]), np.array([[1.0, 2.0, 3.0]]), _y(0)),
             {"temperature": 2.0}),
    EdgeCase("dkd teacher without non-target mass", "dkd_loss",
             (np.array([[5.0, 1.0, 2.0]]), np.array([[1.0, -INF, -INF]]), _y(0)),
             {"temperature": 2.0}),
    EdgeCase("dkd neither side with non-target mass", "dkd_loss",
             (np.array([[1.0, -INF, -INF]]), np.array([[3.0, -INF, -INF]]), _y(0)),
             {"temperature": 1.5}),
    EdgeCase("dkd alpha=0 with an infinite TCKD", "dkd_loss",
             (np.array([[-INF, 1.0, 2.0]]), np.array([[3.0, 2.0, 1.0]]), _y(0)),
             {"temperature": 1.0, "alpha": 0.0, "beta": 1.0}),
    EdgeCase("dkd beta=0 with an infinite NCKD", "dkd_loss",
             (np.array([[1.0, -INF, 2.0]]), np.array([[3.0, 2.0, 1.0]]), _y(0)),
             {"temperature": 1.0, "alpha": 1.0, "beta": 0.0}),
    EdgeCase("dkd mixed rows, label smoothing", "dkd_loss",
             (_z_mixed, _v_mixed, _y(0, 0, 1, 3)),
             {"temperature": 3.0, "ce_weight": 0.3, "label_smoothing": 0.2,
              "reduction": "none"}),
    EdgeCase("ce smoothing 1 with a -inf target logit", "ce_loss",
             (np.array([[-INF, 1.0, 2.0], [0.5, 1.0, 2.0]]), _y(0, 1)),
             {"label_smoothing": 1.0, "reduction": "none"}),
    EdgeCase("atkd rows with an infinite KL", "atkd_loss",
             (np.array([[-INF, 0.0, 1.0, 2.0], [0.0, 1.0, -INF, 3.0]]),
              np.array([[0.0, 1.0, -INF, -INF], [2.0, 1.0, 0.5, 0.0]])),
             {"reduction": "none"}),
    EdgeCase("atkd constant rows", "atkd_loss",
             (np.array([[0.1] * 15, [709.78] * 15, [1.0] * 15]),
              np.random.default_rng(51).normal(size=(3, 15))),
             {"scale": "T2", "reduction": "none"}),
]

# ATKD rows whose gradient must not change when a constant is added to the student
SHIFT_INVARIANT = [c for c in CASES if c.func == "atkd_loss"]


def astype(case: EdgeCase, dtype) -> Tuple[Any, ...]:
    """The case's logits in ``dtype``, labels as they are."""
    return tuple(a.astype(dtype) if a.dtype.kind == "f" else a for a in case.args)
