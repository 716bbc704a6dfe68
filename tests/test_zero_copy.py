"""Zero copy on the NumPy side (STYLE.md, "Zero-copy"): a C-contiguous or
row-strided float array is read in place, ``out=`` writes into the caller's own
memory (``out=student`` included), and any other layout is converted once.

The evidence is ``tracemalloc``: NumPy registers every array buffer it allocates
with it, so a copy of the logits, or a gradient the kernel allocates, shows up
in the traced peak, while the kernels' O(N) work memory is small. The inputs are
512 x 4096 float32 (8 MiB per N x C buffer): "no N x C buffer" means a peak
under a quarter of one; "copied once" means at least one and fewer than two.
The same rules for every op with an ``out=``: the KD losses, CE, softmax."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import kdtemp

N, C = 512, 4096
ITEM = np.dtype(np.float32).itemsize
NC_BYTES = N * C * ITEM
SMALL = NC_BYTES // 4

# op name -> f(student, teacher, labels, out): what the op returns in `out`'s place
OPS = {
    "kd_loss": lambda z, v, y, out: kdtemp.kd_loss(z, v, labels=y, ce_weight=0.1,
                                                   out=out).grad,
    "atkd_loss": lambda z, v, y, out: kdtemp.atkd_loss(z, v, out=out).grad,
    "dkd_loss": lambda z, v, y, out: kdtemp.dkd_loss(z, v, y, out=out).grad,
    "annealing_loss": lambda z, v, y, out: kdtemp.annealing_loss(z, v, 0.5, out=out).grad,
    "ce_loss": lambda z, v, y, out: kdtemp.ce_loss(z, y, out=out).grad,
    "softmax": lambda z, v, y, out: kdtemp.softmax(z, 2.0, out=out),
    "log_softmax": lambda z, v, y, out: kdtemp.log_softmax(z, 2.0, out=out),
}
op_names = pytest.mark.parametrize("op", sorted(OPS))


def _logits(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 3.0, size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def inputs():
    return _logits((N, C), 0), _logits((N, C), 1), np.arange(N) % C


def traced_peak(fn):
    """Bytes traced at the peak of one ``fn()`` call above what was live before it."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@op_names
def test_out_student_writes_in_place(op, inputs):
    """``out=student``: the result lands in the student's own memory, equal (bit
    for bit) to the result written to a separate buffer, with no N x C buffer
    allocated on the way."""
    student, teacher, labels = inputs
    f = OPS[op]
    separate = np.empty_like(student)
    assert f(student, teacher, labels, separate) is separate
    z = student.copy()
    pointer = z.ctypes.data
    r = f(z, teacher, labels, z)
    assert r is z and z.ctypes.data == pointer
    np.testing.assert_array_equal(z, separate)
    z = student.copy()
    peak = traced_peak(lambda: f(z, teacher, labels, z))
    assert peak < SMALL, f"{op}(out=student) allocated {peak} bytes (N x C = {NC_BYTES})"
    np.testing.assert_array_equal(z, separate)
    # the measure sees the kernel's allocations: without out= the result is one N x C
    assert traced_peak(lambda: f(student, teacher, labels, None)) >= NC_BYTES


def _row_strided(a, layout):
    """A view of ``a``'s values whose rows are contiguous but not adjacent."""
    if layout == "column_slice":  # big[:, 3:3 + C] of a wider buffer
        big = np.zeros((N, C + 7), np.float32)
        big[:, 3:3 + C] = a
        return big[:, 3:3 + C]
    if layout == "every_other_row":  # big[::2]
        big = np.zeros((2 * N, C), np.float32)
        big[::2] = a
        return big[::2]
    if layout == "token_slice":  # (B, L, V) logits sliced out of a padded vocabulary
        big = np.zeros((4, N // 4, C + 5), np.float32)
        big[..., :C] = a.reshape(4, N // 4, C)
        return big[..., :C]
    raise AssertionError(layout)


@op_names
@pytest.mark.parametrize("layout", ["column_slice", "every_other_row", "token_slice"])
def test_row_strided_views_are_read_in_place(op, layout, inputs):
    """Row-strided inputs (and a row-strided ``out``) reach the kernel as they are:
    no N x C copy; the result matches the contiguous inputs'."""
    student, teacher, labels = inputs
    f = OPS[op]
    expected = f(student, teacher, labels, np.empty_like(student))
    z, v = _row_strided(student, layout), _row_strided(teacher, layout)
    y = labels.reshape(z.shape[:-1])
    assert not z.flags.c_contiguous and z.strides[-1] == ITEM
    out = np.empty_like(z)  # C-contiguous
    peak = traced_peak(lambda: f(z, v, y, out))
    assert peak < SMALL, f"{op} on a {layout} view allocated {peak} bytes"
    np.testing.assert_array_equal(out.reshape(N, C), expected)
    strided_out = _row_strided(np.full_like(student, np.nan), layout)
    peak = traced_peak(lambda: f(z, v, y, strided_out))
    assert peak < SMALL, f"{op} with a {layout} out= allocated {peak} bytes"
    np.testing.assert_array_equal(strided_out.reshape(N, C), expected)


@op_names
def test_other_layouts_are_copied_once(op, inputs):
    """The rule's other half: a layout whose rows are not contiguous (here the
    student as a transposed, Fortran-ordered array) is converted once: the peak
    holds one N x C copy, not two, and the result is the same."""
    student, teacher, labels = inputs
    f = OPS[op]
    expected = f(student, teacher, labels, np.empty_like(student))
    z = np.ascontiguousarray(student.T).T
    assert z.strides == (ITEM, N * ITEM) and np.array_equal(z, student)
    out = np.empty_like(student)
    peak = traced_peak(lambda: f(z, teacher, labels, out))
    assert NC_BYTES <= peak < 2 * NC_BYTES, f"{op} on a transposed input: peak {peak}"
    np.testing.assert_array_equal(out, expected)
