"""The float exp's polynomial in csrc/kd_math.h is what tools/fit_exp.py fits."""
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fit_exp_and_header():
    """tools/fit_exp.py as a module, and the text of csrc/kd_math.h"""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import fit_exp
    finally:
        sys.path.pop(0)
    with open(os.path.join(ROOT, "csrc", "kd_math.h")) as f:
        return fit_exp, f.read()


def test_exp_coefficients_are_the_fit():
    fit_exp, header = _fit_exp_and_header()
    found = dict(re.findall(r"#define KD_EXPF_Q(\d) ([0-9.e+-]+)f", header))
    coef = fit_exp.fit()
    assert sorted(found) == [str(k) for k in range(len(coef))]
    in_header = np.array([float(found[str(k)]) for k in range(len(coef))], dtype=np.float32)
    assert np.array_equal(in_header, coef), "run `python tools/fit_exp.py`"
    assert fit_exp.max_ulp(coef) < 1.5


def test_avx512_table_exp_is_the_fit():
    """The AVX-512 build's table exp (kd_exp_keep_v16f): its polynomial and
    its table of 2^(j/16) are what `tools/fit_exp.py --table` prints, and its
    float32 steps stay within 1.8 ulp of exp on [-10, 0]."""
    fit_exp, header = _fit_exp_and_header()
    coef, bits = fit_exp.fit_table()
    found = [float(re.search(rf"#define KD_EXPF16_C{k} ([0-9.e+-]+)f", header).group(1))
             for k in (2, 3)]
    assert np.array_equal(np.array(found, dtype=np.float32), coef), \
        "run `python tools/fit_exp.py --table`"
    table = re.search(r"kd_exp2_16th_bits\[16\][^{]*\{([^}]*)\}", header).group(1)
    in_header = np.array([int(b, 16) for b in table.replace(",", " ").split()], dtype=np.int64)
    assert np.array_equal(in_header, bits.astype(np.int64) & 0xFFFFFFFF)
    err = fit_exp.max_ulp_table(coef, bits)
    assert err < 1.8, err
