"""Fit the float exp polynomial of csrc/kd_math.h and measure its error.

exp(r) = 1 + r + r^2 q(r) on |r| <= ln2/2, q of degree 4, minimising the
largest relative error (Lawson's iteratively reweighted least squares on
Chebyshev nodes); the coefficients are rounded to float32 and the error is
measured with the kernel's float32 Horner evaluation:

    python tools/fit_exp.py

With --table, the AVX-512 build's exp instead (kd_exp_keep_v16f): a table of
2^(j/16) and exp(r) = 1 + r + r^2 (c2 + c3 r) on |r| <= ln2/32, its error
measured on x in [-10, 0] through the kernel's float32 steps:

    python tools/fit_exp.py --table
"""
import sys

import numpy as np

HALF_LN2 = np.log(2) / 2
TABLE = 16


def fit(degree=4, iterations=200, half=HALF_LN2):
    r = np.cos(np.linspace(0, np.pi, 4000)) * half
    r = r[r != 0]
    target = (np.expm1(r) - r) / r**2
    weight = r**2 / np.exp(r)  # error in q, as a relative error of exp(r)
    basis = np.vander(r, degree + 1, increasing=True)
    w = np.ones_like(r)
    for _ in range(iterations):
        sw = np.sqrt(w) * weight
        c, *_ = np.linalg.lstsq(basis * sw[:, None], target * sw, rcond=None)
        err = np.abs((basis @ c - target) * weight)
        w = w * err
        w /= w.sum()
    return c.astype(np.float32)


def max_ulp(c):
    r = np.linspace(-HALF_LN2, HALF_LN2, 200001).astype(np.float32)
    q = np.full_like(r, c[-1])
    for k in c[-2::-1]:
        q = q * r + k
    y = (q * (r * r) + r) + np.float32(1)
    exact = np.exp(r.astype(np.float64))
    return float((np.abs(y - exact) / exact).max() / 2.0**-24)


def fit_table():
    """(c2, c3) of the table exp, and its table: the bits of 2^(j/16) rounded
    to float, less j << 19 (the kernel adds n << 19 to them, n = 16 k + j)"""
    c = fit(degree=1, half=np.log(2) / (2 * TABLE))
    j = np.arange(TABLE)
    bits = np.exp2(j / TABLE).astype(np.float32).view(np.int32) - (j << 19).astype(np.int32)
    return c, bits


def _fma32(a, b, c):
    """float32 a * b + c rounded once (the float64 product of floats is exact)"""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def table_exp(x, c, bits):
    """kd_exp_keep_v16f's steps on float32 x in [KD_EXPF_LO, 0]"""
    f = np.float32
    shifter = f(12582912.0)
    t = _fma32(x, f(TABLE * 1.44269504088896341), shifter)
    n = t - shifter
    r = _fma32(n, -(f(np.log(2)) / f(TABLE)), x)
    ti = t.view(np.int32)
    s = (bits[ti & (TABLE - 1)] + (ti << 19)).view(np.float32)
    q = _fma32(np.full_like(r, c[1]), r, c[0])
    u = _fma32(q, r * r, r)
    return _fma32(s, u, s)


def max_ulp_table(c, bits, lo=-10.0):
    x = np.linspace(lo, 0, 2000001).astype(np.float32)
    exact = np.exp(x.astype(np.float64))
    return float((np.abs(table_exp(x, c, bits) - exact) / exact).max() / 2.0**-24)


if __name__ == "__main__" and sys.argv[1:] == ["--table"]:
    c, bits = fit_table()
    print(f"#define KD_EXPF16_C2 {float(c[0])!r}f")
    print(f"#define KD_EXPF16_C3 {float(c[1])!r}f")
    print(", ".join(f"0x{int(b) & 0xFFFFFFFF:08x}" for b in bits))
    print(f"max error {max_ulp_table(c, bits):.2f} ulp (of 2^-24) on [-10, 0]")
elif __name__ == "__main__":
    c = fit()
    for k, v in enumerate(c):
        print(f"#define KD_EXPF_Q{k} {float(v)!r}f")
    print(f"max error {max_ulp(c):.2f} ulp (of 2^-24) on |r| <= ln2/2")
