"""The triplet loop of the angular functions (all G3; G9 with non-integer or large ζ).

For central atom i and each neighbour j, a "row" over neighbours k > j is computed in
passes over contiguous arrays so that the compiler vectorises them: geometry (cos θ,
r_jk), powers (1 + λ cos θ)^ζ by repeated squaring, and for G3 the factor
exp(−η (r_jk − r_s)²)·fc(r_jk). The exponential and the cosine cutoff of r_jk are
evaluated by polynomials that vectorise (no SVML here):

- exp(y) for y ∈ [−1/16, 0] by its Taylor series to degree 8 (error < 1e-16), after
  scaling the argument by 2^−m; the result is squared m times (m fixed per function);
- cos(πx) and sin(πx)/(πx) for x ∈ [0, 1] by their Taylor series in (πx)² (degree 16 and
  15, error < 1e-16 absolute).

Functions sharing (η, r_s, r_c, elements) form a group sharing a(r_ij)·a(r_ik)·b(r_jk);
the force pass collapses the weighted sum over a group's (λ, ζ) into the per-triplet
scalars ∂/∂cos θ, ∂/∂r_ij, ∂/∂r_ik, ∂/∂r_jk and then into three vectors.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from nnprefine.descriptors._scalar import OPTS as _OPTS
from nnprefine.descriptors._scalar import cutoff_fdf, radial_factor

_PI = math.pi
_PI2 = math.pi * math.pi

# Taylor coefficients (module constants are compile-time constants in numba)
E0, E1, E2, E3, E4, E5, E6, E7, E8 = (1.0 / math.factorial(n) for n in range(9))
#: the exp argument is scaled into [−EXP_RANGE, 0] before the Taylor series
EXP_RANGE = 1.0 / 16.0
C0, C1, C2, C3, C4, C5, C6, C7, C8 = ((-1) ** n / math.factorial(2 * n) for n in range(9))
C9, C10, C11, C12, C13, C14, C15, C16 = ((-1) ** n / math.factorial(2 * n) for n in range(9, 17))
S0, S1, S2, S3, S4, S5, S6, S7 = ((-1) ** n / math.factorial(2 * n + 1) for n in range(8))
S8, S9, S10, S11, S12, S13, S14, S15 = ((-1) ** n / math.factorial(2 * n + 1) for n in range(8, 16))


@nb.njit(inline="always", **_OPTS)
def _exp_taylor(y):
    """exp(y) for |y| ≤ 1/16 (Horner, degree 8)."""
    return E0 + y * (E1 + y * (E2 + y * (E3 + y * (E4 + y * (E5 + y * (E6 + y * (E7 + y * E8)))))))


@nb.njit(inline="always", **_OPTS)
def _cos_sqrt(y):
    """cos(√y) for 0 ≤ y ≤ π²."""
    return C0 + y * (C1 + y * (C2 + y * (C3 + y * (C4 + y * (C5 + y * (C6 + y * (C7 + y * (
        C8 + y * (C9 + y * (C10 + y * (C11 + y * (C12 + y * (C13 + y * (C14 + y * (
            C15 + y * C16)))))))))))))))  # fmt: skip


@nb.njit(inline="always", **_OPTS)
def _sinc_sqrt(y):
    """sin(√y)/√y for 0 ≤ y ≤ π²."""
    return S0 + y * (S1 + y * (S2 + y * (S3 + y * (S4 + y * (S5 + y * (S6 + y * (S7 + y * (
        S8 + y * (S9 + y * (S10 + y * (S11 + y * (S12 + y * (S13 + y * (
            S14 + y * S15))))))))))))))  # fmt: skip


@nb.njit(**_OPTS)
def cutoff_row(r, m, rc, alpha, ctype, f, df):
    """f[k], df[k] = fc(r[k]), dfc/dr for k < m; exactly 0 at and beyond rc."""
    rci = alpha * rc
    iw = 1.0 / (rc - rci)
    if ctype == 1:
        for k in range(m):
            x = min(max((r[k] - rci) * iw, 0.0), 1.0)
            y = _PI2 * x * x
            inside = x < 1.0
            f[k] = 0.5 * (1.0 + _cos_sqrt(y)) if inside else 0.0
            df[k] = -0.5 * _PI2 * iw * x * _sinc_sqrt(y) if inside else 0.0
    else:
        for k in range(m):
            if r[k] < rc:
                f[k], df[k] = cutoff_fdf(r[k], rc, alpha, ctype)
            else:
                f[k] = 0.0
                df[k] = 0.0


@nb.njit(inline="always", **_OPTS)
def _triplet_scalars(tc, tj, tk, tjk, c, irj, irk, irjk):
    """Coefficients (cj, sj, sk, sjk) of one triplet's gradient from the sums of ∂/∂cos θ
    (tc), ∂/∂r_ij (tj), ∂/∂r_ik (tk), ∂/∂r_jk (tjk):

        ∂/∂d_j = cj d_k + sj d_j + sjk (d_j − d_k),  ∂/∂d_k = cj d_j + sk d_k − sjk (d_j − d_k)

    using ∂c/∂d_j = d_k/(r_j r_k) − c d_j/r_j² and likewise for d_k.
    """
    cj = tc * irj * irk
    sj = (tj - tc * c * irj) * irj
    sk = (tk - tc * c * irk) * irk
    return cj, sj, sk, tjk * irjk


@nb.njit(**_OPTS)
def triplets(
    mode, n, dx, dy, dz, rr, el, ux, uy, uz, gx, gy, gz, e, ctype, alpha,
    t_int, t_flt, t_rng, c_int, c_flt, a_flt, a_int, jk_rc, n_el, w_row, out_row, jac,
):  # fmt: skip
    """All triplet groups of central element ``e``; see the module docstring.

    Mode 3 adds ∂G_col/∂d_k of every function to ``jac[k, col, :]`` (k: local neighbour).

    Every loop over k runs over views starting at k0 = j + 1 (index 0 … m − 1), which
    lets the compiler vectorise it.
    """
    g0 = t_rng[e, 0]
    ng = t_rng[e, 1] - g0
    na = a_flt.shape[0]
    nq = jk_rc.shape[0]
    ra = np.zeros((ng, n))
    rda = np.zeros((ng, n))
    for gi in range(ng):
        g = g0 + gi
        for k in range(n):
            ra[gi, k], rda[gi, k] = radial_factor(
                rr[k], t_flt[g, 0], t_flt[g, 1], t_flt[g, 2], alpha, ctype
            )
    isel = np.zeros((n_el, n))
    for k in range(n):
        isel[el[k], k] = 1.0
    r2_ = np.empty(n)
    ir_ = np.empty(n)
    for k in range(n):
        r2_[k] = rr[k] * rr[k]
        ir_[k] = 1.0 / rr[k]
    w = np.empty((25, n))  # row work arrays
    P_ = np.empty((na, n))
    dP_ = np.empty((na, n))
    FJ_ = np.empty((nq, n))
    DFJ_ = np.empty((nq, n))
    for j in range(n - 1):
        ej = el[j]
        k0 = j + 1
        m = n - k0
        rj = rr[j]
        irj = 1.0 / rj
        xj, yj, zj = dx[j], dy[j], dz[j]
        # views of the row k0 … n − 1
        X, Y, Z, IR, R2 = dx[k0:], dy[k0:], dz[k0:], ir_[k0:], r2_[k0:]
        cosv, rjk, irjk, base, sq = w[0, k0:], w[1, k0:], w[2, k0:], w[3, k0:], w[4, k0:]
        E, b, db, R, Q, dQ = w[5, k0:], w[6, k0:], w[7, k0:], w[8, k0:], w[9, k0:], w[10, k0:]
        Tc, Tj, Tk, Tjk = w[11, k0:], w[12, k0:], w[13, k0:], w[14, k0:]
        dcu, urk, urjk, AK, DAK = w[15, k0:], w[16, k0:], w[17, k0:], w[18, k0:], w[19, k0:]
        UX, UY, UZ = ux[k0:], uy[k0:], uz[k0:]
        GX, GY, GZ = gx[k0:], gy[k0:], gz[k0:]
        # -------------------------------------------------------- geometry of the row
        for k in range(m):
            dot = xj * X[k] + yj * Y[k] + zj * Z[k]
            cosv[k] = dot * irj * IR[k]
            s = max(r2_[j] + R2[k] - 2.0 * dot, 0.0)
            rjk[k] = math.sqrt(s)
            irjk[k] = 1.0 / rjk[k] if s > 0.0 else 0.0
        for q in range(nq):
            cutoff_row(rjk, m, jk_rc[q], alpha, ctype, FJ_[q, k0:], DFJ_[q, k0:])
        # -------------------------------------------------------- (1 + λc)^ζ and derivative
        for ak in range(na):
            lam = a_flt[ak, 0]
            zeta = a_flt[ak, 1]
            zi = a_int[ak]
            Pa = P_[ak, k0:]
            dPa = dP_[ak, k0:]
            for k in range(m):
                base[k] = 1.0 + lam * cosv[k]
            if zi > 0:  # p1 = base^(ζ−1) by repeated squaring, in passes over the row
                for k in range(m):
                    Pa[k] = 1.0
                    sq[k] = base[k]
                ex = zi - 1
                while ex > 0:
                    if ex & 1:
                        for k in range(m):
                            Pa[k] *= sq[k]
                    ex >>= 1
                    if ex > 0:
                        for k in range(m):
                            sq[k] *= sq[k]
            else:
                for k in range(m):
                    Pa[k] = base[k] ** (zeta - 1.0) if base[k] > 0.0 else 0.0
            f = lam * zeta
            for k in range(m):
                dPa[k] = f * Pa[k]
                Pa[k] *= base[k]
        if mode == 1:
            for k in range(m):
                Tc[k] = 0.0
                Tj[k] = 0.0
                Tk[k] = 0.0
                Tjk[k] = 0.0
        urj = 0.0
        if mode == 2:
            uxj, uyj, uzj = ux[j], uy[j], uz[j]
            urj = (xj * uxj + yj * uyj + zj * uzj) * irj
            for k in range(m):
                c = cosv[k]
                ukr = (X[k] * UX[k] + Y[k] * UY[k] + Z[k] * UZ[k]) * IR[k]
                # ∂c/∂d_j·u_j + ∂c/∂d_k·u_k
                dcu[k] = (
                    (X[k] * uxj + Y[k] * uyj + Z[k] * uzj + xj * UX[k] + yj * UY[k] + zj * UZ[k])
                    * irj * IR[k]
                    - c * (urj * irj + ukr * IR[k])
                )  # fmt: skip
                urk[k] = ukr
                urjk[k] = (
                    (xj - X[k]) * (uxj - UX[k])
                    + (yj - Y[k]) * (uyj - UY[k])
                    + (zj - Z[k]) * (uzj - UZ[k])
                ) * irjk[k]
        # -------------------------------------------------------- groups
        for gi in range(ng):
            g = g0 + gi
            e1 = t_int[g, 1]
            e2 = t_int[g, 2]
            if ej != e1 and ej != e2:
                continue
            aj = ra[gi, j]
            if aj == 0.0:
                continue
            partner = e2 if ej == e1 else e1
            daj = rda[gi, j]
            RA = ra[gi, k0:]
            RDA = rda[gi, k0:]
            MSK = isel[partner, k0:]
            cb0, cb1 = t_int[g, 4], t_int[g, 5]
            q = t_int[g, 6]
            for k in range(m):
                AK[k] = RA[k] * MSK[k]
                DAK[k] = RDA[k] * MSK[k]
            if q >= 0:  # G3: b = exp(−η(r_jk − r_s)²)·fc(r_jk)
                eta, rs = t_flt[g, 0], t_flt[g, 1]
                nsq = t_int[g, 7]
                scale = -eta / 2.0**nsq
                for k in range(m):
                    t = rjk[k] - rs
                    E[k] = _exp_taylor(max(scale * t * t, -EXP_RANGE))
                for _ in range(nsq):
                    for k in range(m):
                        E[k] *= E[k]
                FQ = FJ_[q, k0:]
                DFQ = DFJ_[q, k0:]
                for k in range(m):
                    t = rjk[k] - rs
                    b[k] = E[k] * FQ[k]
                    db[k] = E[k] * (DFQ[k] - 2.0 * eta * t * FQ[k])
            else:
                for k in range(m):
                    b[k] = 1.0
                    db[k] = 0.0
            for k in range(m):
                R[k] = aj * AK[k] * b[k]
            if mode != 2:
                for cb in range(cb0, cb1):
                    Pa = P_[c_int[cb, 1], k0:]
                    acc = 0.0
                    for k in range(m):
                        acc += R[k] * Pa[k]
                    out_row[c_int[cb, 0]] += c_flt[cb, 0] * acc
            if mode == 1:
                for k in range(m):
                    Q[k] = 0.0
                    dQ[k] = 0.0
                for cb in range(cb0, cb1):
                    wn = w_row[c_int[cb, 0]] * c_flt[cb, 0]
                    Pa = P_[c_int[cb, 1], k0:]
                    dPa = dP_[c_int[cb, 1], k0:]
                    for k in range(m):
                        Q[k] += wn * Pa[k]
                        dQ[k] += wn * dPa[k]
                for k in range(m):
                    qb = Q[k] * b[k]
                    Tc[k] += dQ[k] * R[k]
                    Tj[k] += qb * daj * AK[k]
                    Tk[k] += qb * aj * DAK[k]
                    Tjk[k] += Q[k] * aj * AK[k] * db[k]
            elif mode == 3:  # one function at a time: the three vectors of each triplet
                for cb in range(cb0, cb1):
                    col = c_int[cb, 0]
                    wn = c_flt[cb, 0]
                    Pa = P_[c_int[cb, 1], k0:]
                    dPa = dP_[c_int[cb, 1], k0:]
                    sxj = 0.0
                    syj = 0.0
                    szj = 0.0
                    for k in range(m):
                        qv = wn * Pa[k]
                        cj, sj, sk, sjk = _triplet_scalars(
                            wn * dPa[k] * R[k], qv * b[k] * daj * AK[k], qv * b[k] * aj * DAK[k],
                            qv * aj * AK[k] * db[k], cosv[k], irj, IR[k], irjk[k],
                        )  # fmt: skip
                        ex_ = xj - X[k]
                        ey_ = yj - Y[k]
                        ez_ = zj - Z[k]
                        sxj += cj * X[k] + sj * xj + sjk * ex_
                        syj += cj * Y[k] + sj * yj + sjk * ey_
                        szj += cj * Z[k] + sj * zj + sjk * ez_
                        jac[k0 + k, col, 0] += cj * xj + sk * X[k] - sjk * ex_
                        jac[k0 + k, col, 1] += cj * yj + sk * Y[k] - sjk * ey_
                        jac[k0 + k, col, 2] += cj * zj + sk * Z[k] - sjk * ez_
                    jac[j, col, 0] += sxj
                    jac[j, col, 1] += syj
                    jac[j, col, 2] += szj
            elif mode == 2:
                for k in range(m):
                    Q[k] = R[k] * dcu[k]
                    dQ[k] = (daj * urj * AK[k] + aj * DAK[k] * urk[k]) * b[k] + aj * AK[k] * db[
                        k
                    ] * urjk[k]
                for cb in range(cb0, cb1):
                    Pa = P_[c_int[cb, 1], k0:]
                    dPa = dP_[c_int[cb, 1], k0:]
                    acc = 0.0
                    for k in range(m):
                        acc += Q[k] * dPa[k] + dQ[k] * Pa[k]
                    out_row[c_int[cb, 0]] += c_flt[cb, 0] * acc
        # -------------------------------------------------------- three vectors per triplet
        if mode == 1:
            sxj = 0.0
            syj = 0.0
            szj = 0.0
            for k in range(m):
                cj, sj, sk, sjk = _triplet_scalars(
                    Tc[k], Tj[k], Tk[k], Tjk[k], cosv[k], irj, IR[k], irjk[k]
                )
                ex_ = xj - X[k]
                ey_ = yj - Y[k]
                ez_ = zj - Z[k]
                sxj += cj * X[k] + sj * xj + sjk * ex_
                syj += cj * Y[k] + sj * yj + sjk * ey_
                szj += cj * Z[k] + sj * zj + sjk * ez_
                GX[k] += cj * xj + sk * X[k] - sjk * ex_
                GY[k] += cj * yj + sk * Y[k] - sjk * ey_
                GZ[k] += cj * zj + sk * Z[k] - sjk * ez_
            gx[j] += sxj
            gy[j] += syj
            gz[j] += szj
