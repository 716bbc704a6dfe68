"""The kernels' instruction-set builds, for the tests that run each one."""
import contextlib

from kdtemp import _kdtemp

NAMES = ("baseline", "avx2", "avx512")


def builds():
    """The builds this CPU runs, narrowest first (the default is the widest)."""
    default = _kdtemp.isa()
    found = []
    for isa in NAMES:
        try:
            _kdtemp._set_isa(isa)
        except ValueError:
            continue
        found.append(isa)
    _kdtemp._set_isa(default)
    return found


@contextlib.contextmanager
def using(isa):
    """The kernels run build `isa` inside the block (ValueError if the CPU lacks it)."""
    default = _kdtemp.isa()
    _kdtemp._set_isa(isa)
    try:
        assert _kdtemp.isa() == isa
        yield
    finally:
        _kdtemp._set_isa(default)


def each_build(fn):
    """fn() under every build this CPU runs: {isa: result}."""
    out = {}
    for isa in builds():
        with using(isa):
            out[isa] = fn()
    return out
