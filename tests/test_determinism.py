"""Results are bitwise identical for any thread count.

Each row is computed by one thread and rows are reduced in a fixed order, so
n_threads = 1, 2, 3 (and None) must give the same bytes. The shapes are big
enough for the kernels to go parallel (see SHAPES_MT).
"""
from __future__ import annotations

import numpy as np
import pytest
from isa_builds import builds, using

THREADS = (1, 2, 3, None)
# 64 x 5000; an odd row count that does not split evenly; few rows of a vocabulary
# too long to keep in cache (another code path in the kernels).
SHAPES_MT = ((64, 5000), (129, 1001), (5, 20011))


def _same(a, b) -> bool:
    """Bitwise equality of two results (floats, arrays or None)."""
    if a is None or b is None:
        return a is b
    if isinstance(a, float):
        return type(b) is float and np.float64(a).tobytes() == np.float64(b).tobytes()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _inputs(shape, dtype, seed=0, neginf=True):
    """Logits (every 7th class -inf on both sides if ``neginf``), labels on finite
    classes with ~20% ignored rows, per-row temperatures."""
    rng = np.random.default_rng(seed)
    student = rng.normal(0, 3, size=shape).astype(dtype)
    teacher = rng.normal(0, 3, size=shape).astype(dtype)
    if neginf:
        student[:, ::7] = -np.inf
        teacher[:, ::7] = -np.inf
    n = shape[0]
    labels = 7 * rng.integers(0, (shape[1] - 1) // 7, size=n) + 1
    labels[rng.random(n) < 0.2] = -100
    return student, teacher, labels, rng.uniform(1, 6, size=n)


@pytest.mark.parametrize("shape", SHAPES_MT, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_kd_loss_thread_count_is_bitwise_invisible(divergence, dtype, shape, reduction,
                                                   ckd):
    student, teacher, labels, t = _inputs(shape, dtype)
    kw = dict(divergence=divergence, temperature=t, teacher_temperature=2.0,
              labels=labels, ce_weight=0.1, kd_weight=0.9, reduction=reduction)
    first = ckd.kd_loss(student, teacher, n_threads=1, **kw)
    assert np.isfinite(first.loss).all()
    for n in THREADS[1:]:
        other = ckd.kd_loss(student, teacher, n_threads=n, **kw)
        assert _same(first.loss, other.loss), f"loss differs at n_threads={n}"
        assert _same(first.grad, other.grad), f"grad differs at n_threads={n}"
        assert first.count == other.count


@pytest.mark.parametrize("shape", [(4099, 37), (1027, 100), (130, 256), (129, 1001)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_forward_kl_alone_thread_count_is_bitwise_invisible(dtype, shape, reduction,
                                                            ckd, ref):
    """Forward KL without CE takes its rows' logs per group of four rows,
    rows handed out to threads in chunks: a row count that is no multiple of
    four, with masked rows, many short rows (many chunks), and the per-row
    losses still those of the NumPy twin (a log applied to the wrong row of
    a group would not be)."""
    student, teacher, _, t = _inputs(shape, dtype, seed=5)
    mask = np.arange(shape[0]) % 5 != 3
    kw = dict(temperature=t, mask=mask, reduction=reduction)
    first = ckd.kd_loss(student, teacher, n_threads=1, **kw)
    for n in THREADS[1:]:
        other = ckd.kd_loss(student, teacher, n_threads=n, **kw)
        assert _same(first.loss, other.loss), f"loss differs at n_threads={n}"
        assert _same(first.grad, other.grad), f"grad differs at n_threads={n}"
    want = ref.kd_loss(student.astype(np.float64), teacher.astype(np.float64), **kw)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(first.loss, want.loss, rtol=rtol, atol=rtol)
    # rows up to KD_GROUP_COLS classes keep a group's teacher exps side by side
    # (kl_group): a row's gradient from another row's would show here
    np.testing.assert_allclose(first.grad, want.grad, rtol=rtol, atol=rtol / shape[1])


@pytest.mark.parametrize("shape", [(129, 1001), (7, 20011)],  # the second in blocks
                         ids=lambda s: "x".join(map(str, s)))
def test_ce_loss_thread_count_is_bitwise_invisible(dtype, shape, ckd):
    student, _, labels, _ = _inputs(shape, dtype, seed=1, neginf=False)
    mask = np.arange(shape[0]) % 5 != 0
    results = [ckd.ce_loss(student, labels, mask=mask, label_smoothing=0.2, n_threads=n)
               for n in THREADS]
    for r in results[1:]:
        assert _same(results[0].loss, r.loss) and _same(results[0].grad, r.grad)


@pytest.mark.parametrize("isa", builds())
@pytest.mark.parametrize("shape", [(6, 127), (9, 1001), (3, 20011)],
                         ids=lambda s: "x".join(map(str, s)))
def test_loss_with_and_without_gradient_is_bitwise_the_same(dtype, shape, isa, ckd):
    # the partition sums keep the exps for the gradient or not: the same bits
    # either way (fuzz/regressions/ce-sum-with-and-without-grad-same-bits);
    # ties at the row max included (its exps are counted apart)
    student, teacher, labels, t = _inputs(shape, dtype, seed=3)
    student[1] = 0.0
    student[2, ::3] = student[2].max()
    with using(isa):
        for kw in ({"label_smoothing": 0.0}, {"label_smoothing": 0.5}):
            a = ckd.ce_loss(student, labels, **kw)
            b = ckd.ce_loss(student, labels, compute_grad=False, **kw)
            assert _same(a.loss, b.loss)
        for kw in ({"ce_weight": 0.0}, {"ce_weight": 0.3}):
            a = ckd.kd_loss(student, teacher, temperature=t, labels=labels, **kw)
            b = ckd.kd_loss(student, teacher, temperature=t, labels=labels,
                            compute_grad=False, **kw)
            assert _same(a.loss, b.loss)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_thread_count_is_bitwise_invisible(dtype, name, ckd):
    x, _, _, t = _inputs((129, 1001), dtype, seed=2)
    func = getattr(ckd, name)
    results = [func(x, t, n_threads=n) for n in THREADS]
    for r in results[1:]:
        assert _same(results[0], r)


def test_set_num_threads_default_is_bitwise_invisible(ckd):
    """The process-wide default (kdtemp.set_num_threads) changes nothing either."""
    student, teacher, _, t = _inputs((64, 5000), np.float64, seed=3)
    saved = ckd.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            ckd.set_num_threads(n)
            results.append(ckd.kd_loss(student, teacher, temperature=t, divergence="jsd"))
    finally:
        ckd.set_num_threads(saved)
    for r in results[1:]:
        assert _same(results[0].loss, r.loss) and _same(results[0].grad, r.grad)


def test_repeated_calls_are_bitwise_stable(ckd):
    student, teacher, labels, t = _inputs((64, 5000), np.float32, seed=4)
    a = ckd.kd_loss(student, teacher, temperature=t, labels=labels, n_threads=2)
    b = ckd.kd_loss(student, teacher, temperature=t, labels=labels, n_threads=2)
    assert _same(a.loss, b.loss) and _same(a.grad, b.grad)
