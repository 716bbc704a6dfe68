"""Thread-count semantics (STYLE.md) and threadpoolctl's view of the OpenMP runtime."""
import os
import sys

import numpy as np
import pytest

import kdtemp
from kdtemp import _kdtemp
from kdtemp._threads import _resolve

sys.path.insert(0, os.path.dirname(__file__))
from isa_builds import builds, each_build  # noqa: E402


def test_resolve_semantics():
    most = _kdtemp.max_threads()
    assert _resolve(3) == 3
    assert _resolve(-1) == most
    assert _resolve(-most - 5) == 1  # never below one thread
    with pytest.raises(ValueError, match="n_threads"):
        _resolve(0)
    with pytest.raises(TypeError, match="n_threads"):
        _resolve(1.5)
    with pytest.raises(TypeError, match="n_threads"):
        _resolve(True)


def test_set_num_threads_is_the_default():
    try:
        kdtemp.set_num_threads(2)
        assert kdtemp.get_num_threads() == 2
        with pytest.raises(ValueError, match="n_threads"):
            kdtemp.set_num_threads(0)
        assert kdtemp.get_num_threads() == 2  # a rejected value changes nothing
    finally:
        kdtemp.set_num_threads(None)
    assert kdtemp.get_num_threads() == _kdtemp.max_threads()


def test_openmp_built():
    # CI builds with KDTEMP_FAIL_NO_OPENMP=1; a serial build reports 0 here
    assert _kdtemp.openmp in (0, 1)
    if _kdtemp.openmp:
        assert _kdtemp.max_threads() >= 1


def test_threadpoolctl_sees_and_limits_openmp():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _kdtemp.openmp:
        pytest.skip("serial build")
    # the kernels' OpenMP runtime is loaded by the extension, linked dynamically
    info = threadpoolctl.threadpool_info()
    assert any(p["user_api"] == "openmp" for p in info), info
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert kdtemp.get_num_threads() == 1
    rng = np.random.default_rng(0)
    z, v = rng.normal(size=(2, 64, 600))
    a = kdtemp.kd_loss(z, v)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        b = kdtemp.kd_loss(z, v)
    assert a.loss == b.loss and np.array_equal(a.grad, b.grad)


def _flat(results):
    flat = []
    for r in results:
        flat.extend(r if isinstance(r, tuple) else (r,))
    return flat


def test_isa_builds_agree():
    """Each build gives the same bits for any thread count; the AVX2 and
    AVX-512 builds fuse the exps' multiply-adds (and AVX-512 sums sixteen
    lanes), so the builds agree to rounding, not bits."""
    if len(builds()) < 2:
        pytest.skip("only the baseline build runs on this machine")
    rng = np.random.default_rng(1)
    z, v = (rng.normal(size=(2, 33, 1001)) * 4).astype(np.float32)
    y = rng.integers(0, 1001, 33)

    def calls(n):
        return [
            kdtemp.kd_loss(z, v, labels=y, ce_weight=0.3, label_smoothing=0.1, n_threads=n),
            kdtemp.kd_loss(z, v, divergence="jsd", n_threads=n),
            kdtemp.atkd_loss(z, v, n_threads=n),
            kdtemp.dkd_loss(z, v, y, n_threads=n),
            kdtemp.softmax(z, 2.0, n_threads=n),
            kdtemp.temperature_profile(z, v, [1.0, 4.0], n_threads=n).kd_loss,
        ]

    per_isa = each_build(lambda: [_flat(calls(1)), _flat(calls(3))])
    for isa, (one, three) in per_isa.items():
        for a, b in zip(one, three):
            assert np.array_equal(np.asarray(a), np.asarray(b)), isa
    base = per_isa["baseline"][0]
    for isa, (fast, _) in per_isa.items():
        for f, b in zip(fast, base):
            f, b = np.asarray(f, dtype=np.float64), np.asarray(b, dtype=np.float64)
            np.testing.assert_allclose(f, b, rtol=2e-5, atol=2e-6 * np.abs(b).max(),
                                       err_msg=isa)
    with pytest.raises(ValueError, match="instruction set"):
        _kdtemp._set_isa("sse9")


def test_default_build_is_the_widest():
    """Without KDTEMP_DISABLE_* the kernels run the widest build the CPU has."""
    if os.environ.get("KDTEMP_DISABLE_AVX2") or os.environ.get("KDTEMP_DISABLE_AVX512"):
        pytest.skip("a build is disabled in this environment")
    assert _kdtemp.isa() == builds()[-1]


def test_prefetch_budget_is_three_quarters_of_l2():
    """The next-row prefetch budget follows the L2 the system reports, and
    falls back to 512 KiB where it reports none."""
    import shutil
    import subprocess

    l2 = 0
    if shutil.which("getconf"):
        out = subprocess.run(["getconf", "LEVEL2_CACHE_SIZE"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().isdigit():
            l2 = int(out.stdout.strip())
    expected = l2 // 4 * 3 if l2 > 0 else 512 * 1024
    assert _kdtemp._prefetch_bytes() == expected
