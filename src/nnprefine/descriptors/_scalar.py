"""Scalar helpers shared by the kernels: cutoff functions and the radial factor."""

from __future__ import annotations

import math

import numba as nb

OPTS = dict(
    cache=True, nogil=True, fastmath={"contract", "arcp", "nsz", "reassoc"}, error_model="numpy"
)
_OPTS = OPTS
_PI = math.pi


@nb.njit(inline="always", **_OPTS)
def cutoff_fdf(r, rc, alpha, ctype):
    """fc(r) and dfc/dr for the n2p2 cutoff ``ctype`` (1 cos, 5–8 poly1–4), r < rc."""
    rci = alpha * rc
    if r < rci:
        return 1.0, 0.0
    iw = 1.0 / (rc - rci)
    x = (r - rci) * iw
    if ctype == 1:
        return 0.5 * (math.cos(_PI * x) + 1.0), -0.5 * _PI * iw * math.sin(_PI * x)
    if ctype == 5:
        return (2.0 * x - 3.0) * x * x + 1.0, iw * (6.0 * x - 6.0) * x
    if ctype == 6:
        return ((15.0 - 6.0 * x) * x - 10.0) * x**3 + 1.0, iw * x * x * (
            (60.0 - 30.0 * x) * x - 30.0
        )
    if ctype == 7:
        return (x * (x * (20.0 * x - 70.0) + 84.0) - 35.0) * x**4 + 1.0, iw * x**3 * (
            x * (x * (140.0 * x - 420.0) + 420.0) - 140.0
        )
    # ctype == 8
    return (x * (x * ((315.0 - 70.0 * x) * x - 540.0) + 420.0) - 126.0) * x**5 + 1.0, (
        iw * x**4 * (x * (x * ((2520.0 - 630.0 * x) * x - 3780.0) + 2520.0) - 630.0)
    )


@nb.njit(inline="always", **_OPTS)
def radial_factor(r, eta, rs, rc, alpha, ctype):
    """a = exp(−η(r − r_s)²)·fc(r) and da/dr (zero at and beyond rc)."""
    if r >= rc:
        return 0.0, 0.0
    fc, dfc = cutoff_fdf(r, rc, alpha, ctype)
    x = r - rs
    e = math.exp(-eta * x * x)
    return e * fc, e * (dfc - 2.0 * eta * x * fc)
