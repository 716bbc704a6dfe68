"""Fit the float exp polynomial of csrc/kd_math.h and measure its error.

exp(r) = 1 + r + r^2 q(r) on |r| <= ln2/2, q of degree 4, minimising the
largest relative error (Lawson's iteratively reweighted least squares on
Chebyshev nodes); the coefficients are rounded to float32 and the error is
measured with the kernel's float32 Horner evaluation:

    python tools/fit_exp.py
"""
import numpy as np

HALF_LN2 = np.log(2) / 2


def fit(degree=4, iterations=200):
    r = np.cos(np.linspace(0, np.pi, 4000)) * HALF_LN2
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


if __name__ == "__main__":
    c = fit()
    for k, v in enumerate(c):
        print(f"#define KD_EXPF_Q{k} {float(v)!r}f")
    print(f"max error {max_ulp(c):.2f} ulp (of 2^-24) on |r| <= ln2/2")
