"""The float exp's polynomial in csrc/kd_math.h is what tools/fit_exp.py fits."""
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_exp_coefficients_are_the_fit():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import fit_exp
    finally:
        sys.path.pop(0)
    with open(os.path.join(ROOT, "csrc", "kd_math.h")) as f:
        header = f.read()
    found = dict(re.findall(r"#define KD_EXPF_Q(\d) ([0-9.e+-]+)f", header))
    coef = fit_exp.fit()
    assert sorted(found) == [str(k) for k in range(len(coef))]
    in_header = np.array([float(found[str(k)]) for k in range(len(coef))], dtype=np.float32)
    assert np.array_equal(in_header, coef), "run `python tools/fit_exp.py`"
    assert fit_exp.max_ulp(coef) < 1.5
