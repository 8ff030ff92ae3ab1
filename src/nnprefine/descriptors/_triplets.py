"""The triplet loop of the angular functions (all G3; G9 with non-integer or large ζ).

For central atom i the triplets (j, k > j) are processed in blocks of up to ``BLOCK``
triplets (at least one neighbour row), each a set of long passes over contiguous arrays
that the compiler vectorises: rows of neighbours are short (≈ 80 on the 490-atom slab)
and passes that short do not vectorise well. Within a block a row is a segment with one
j, so j's quantities are filled per segment and j's gradient is summed per segment;
only k's quantities are gathered (gathers are slow on AVX2). A triplet enters a block
only if r_jk < r_c when every group of the central element is a G3 (which carries
fc(r_jk)); that keeps about half of them in a bulk-like environment.

A group (functions sharing η, r_s, r_c and elements) has the radial factor

    R = exp(−η Σ) · fc(r_ij) fc(r_ik) [fc(r_jk)],
    Σ = (r_ij − r_s)² + (r_ik − r_s)² [+ (r_jk − r_s)²]   (brackets: G3 only),

one exponential per triplet. exp is a polynomial that vectorises (no SVML here): exp(y)
for y ∈ [−1/16, 0] by its Taylor series to degree 8 (error < 1e-16), after scaling the
argument by 2^−m and squaring m times (m fixed per group); a group whose η is an integer
multiple n·η' of an earlier group's with the same Σ takes exp(−η' Σ)^n instead. The
cosine cutoff of r_jk is a Taylor series in (πx)² of cos(πx) and sin(πx)/(πx) (degree 16
and 15, error < 1e-16 absolute). Powers (1 + λ cos θ)^ζ: for ζ = 2^t one squaring ladder
per λ gives base^(2^t) and base^(2^t − 1) for every t at once; other integer ζ by
repeated squaring per (λ, ζ).

The force pass collapses the weighted sum over a group's (λ, ζ) into the per-triplet
scalars ∂/∂cos θ, ∂/∂r_ij, ∂/∂r_ik, ∂/∂r_jk, then into two vectors per triplet that are
added to the neighbours' gradients in triplet order (serial per central atom, so the
sums do not depend on the number of threads).

Numba caches :func:`nnprefine.descriptors._kernels.run` with this code compiled in, and
checks only the stamp of ``_kernels.py`` for staleness: after editing this file, delete
the ``__pycache__/*.nb[ic]`` files (or touch ``_kernels.py``) before measuring.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from nnprefine.descriptors._scalar import OPTS as _OPTS
from nnprefine.descriptors._scalar import cutoff_fdf

_PI = math.pi
_PI2 = math.pi * math.pi
#: triplets per block (a block holds at least one whole neighbour row)
BLOCK = 512
#: work arrays of a block
_NW = 48

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


@nb.njit(inline="always", **_OPTS)
def _pow_row(src, n, m, out, sq):
    """out[k] = src[k]**n for k < m (integer n ≥ 1), by repeated squaring in row passes."""
    for k in range(m):
        sq[k] = src[k]
        out[k] = 1.0
    ex = n
    while ex > 0:
        if ex & 1:
            for k in range(m):
                out[k] *= sq[k]
        ex >>= 1
        if ex > 0:
            for k in range(m):
                sq[k] *= sq[k]


@nb.njit(inline="always", **_OPTS)
def _weighted_powers(cb0, cb1, c_int, c_flt, w_row, P_, dP_, m, Q, dQ):
    """Q = Σ_cb w_cb P_cb, dQ = Σ_cb w_cb dP_cb over a group's (λ, ζ), four at a time."""
    for k in range(m):
        Q[k] = 0.0
        dQ[k] = 0.0
    cb = cb0
    while cb + 4 <= cb1:
        w0 = w_row[c_int[cb, 0]] * c_flt[cb, 0]
        w1 = w_row[c_int[cb + 1, 0]] * c_flt[cb + 1, 0]
        w2 = w_row[c_int[cb + 2, 0]] * c_flt[cb + 2, 0]
        w3 = w_row[c_int[cb + 3, 0]] * c_flt[cb + 3, 0]
        P0, P1, P2, P3 = (
            P_[c_int[cb, 1]],
            P_[c_int[cb + 1, 1]],
            P_[c_int[cb + 2, 1]],
            P_[c_int[cb + 3, 1]],
        )
        D0, D1, D2, D3 = (
            dP_[c_int[cb, 1]],
            dP_[c_int[cb + 1, 1]],
            dP_[c_int[cb + 2, 1]],
            dP_[c_int[cb + 3, 1]],
        )
        # one output per loop: few arrays per loop keep LLVM's alias checks few enough
        # for it to vectorise
        for k in range(m):
            Q[k] += w0 * P0[k] + w1 * P1[k] + w2 * P2[k] + w3 * P3[k]
        for k in range(m):
            dQ[k] += w0 * D0[k] + w1 * D1[k] + w2 * D2[k] + w3 * D3[k]
        cb += 4
    while cb < cb1:
        wn = w_row[c_int[cb, 0]] * c_flt[cb, 0]
        Pa = P_[c_int[cb, 1]]
        dPa = dP_[c_int[cb, 1]]
        for k in range(m):
            Q[k] += wn * Pa[k]
        for k in range(m):
            dQ[k] += wn * dPa[k]
        cb += 1


@nb.njit(**_OPTS)
def triplets(
    mode, n, dx, dy, dz, rr, el, ux, uy, uz, gx, gy, gz, e, ctype, alpha,
    t_int, t_flt, t_rng, c_int, c_flt, a_flt, a_int, radii, n_el, w_row, out_row, jac,
):  # fmt: skip
    """All triplet groups of central element ``e``; see the module docstring.

    Mode 3 adds ∂G_col/∂d_k of every function to ``jac[k, col, :]`` (k: local neighbour).
    """
    g0 = t_rng[e, 0]
    ng = t_rng[e, 1] - g0
    na = a_flt.shape[0]
    nq = radii.shape[0]
    # triplets are kept only for r_jk < cut when every group has the fc(r_jk) factor
    cut2 = 0.0
    for gi in range(ng):
        q = t_int[g0 + gi, 6]
        if q < 0:
            cut2 = np.inf
            break
        cut2 = max(cut2, radii[q] * radii[q])
    # the squaring ladders: one per λ, up to the largest t with ζ = 2^t
    n_lam = 0
    for ak in range(na):
        n_lam = max(n_lam, a_int[ak, 1] + 1)
    lam_val = np.zeros(n_lam)
    lam_top = np.full(n_lam, -1, np.int64)
    for ak in range(na):
        lam_val[a_int[ak, 1]] = a_flt[ak, 0]
        lam_top[a_int[ak, 1]] = max(lam_top[a_int[ak, 1]], a_int[ak, 2])
    # per neighbour: fc(r) and dfc/dr for every cutoff radius, 1/r
    fc = np.zeros((nq, n))
    dfc = np.zeros((nq, n))
    for q in range(nq):
        for k in range(n):
            if rr[k] < radii[q]:
                fc[q, k], dfc[q, k] = cutoff_fdf(rr[k], radii[q], alpha, ctype)
    r2_ = np.empty(n)
    ir_ = np.empty(n)
    for k in range(n):
        r2_[k] = rr[k] * rr[k]
        ir_[k] = 1.0 / rr[k]
    bs = max(BLOCK, n)
    KI = np.empty(bs, np.int64)
    seg = np.empty((bs + 1, 2), np.int64)  # per segment: first triplet, j
    wk = np.empty((_NW, bs))
    E_ = np.empty((ng, bs))
    P_ = np.empty((na, bs))
    dP_ = np.empty((na, bs))
    FQ_ = np.empty((6 * nq, bs))  # per radius: fc, dfc/dr of r_jk, r_ij, r_ik
    DOT, S = wk[0], wk[1]
    row = np.empty((2, n))
    nb_ = 0
    ns = 0
    for j in range(n - 1):
        ej = el[j]
        active = False
        for gi in range(ng):
            g = g0 + gi
            if (ej == t_int[g, 1] or ej == t_int[g, 2]) and fc[t_int[g, 10], j] != 0.0:
                active = True
        if not active:
            continue
        k0 = j + 1
        m = n - k0
        if nb_ + m > bs:
            seg[ns, 0] = nb_
            _block(
                mode, nb_, ns, seg, KI, dx, dy, dz, rr, ir_, el, fc, dfc, ux, uy, uz,
                gx, gy, gz, ctype, alpha, t_int, t_flt, g0, ng, c_int, c_flt, a_flt, a_int,
                radii, n_el, lam_val, lam_top, w_row, out_row, jac, wk, P_, dP_, E_, FQ_,
            )  # fmt: skip
            nb_ = 0
            ns = 0
        xj, yj, zj, r2j = dx[j], dy[j], dz[j], r2_[j]
        RD, RS = row[0, :m], row[1, :m]
        X0, Y0, Z0, R20 = dx[k0:], dy[k0:], dz[k0:], r2_[k0:]
        for k in range(m):
            RD[k] = xj * X0[k] + yj * Y0[k] + zj * Z0[k]
            RS[k] = r2j + R20[k] - 2.0 * RD[k]
        start = nb_
        for k in range(m):
            KI[nb_] = k0 + k
            DOT[nb_] = RD[k]
            S[nb_] = RS[k]
            nb_ += 1 if RS[k] < cut2 else 0
        if nb_ > start:
            seg[ns, 0] = start
            seg[ns, 1] = j
            ns += 1
    if nb_ > 0:
        seg[ns, 0] = nb_
        _block(
            mode, nb_, ns, seg, KI, dx, dy, dz, rr, ir_, el, fc, dfc, ux, uy, uz,
            gx, gy, gz, ctype, alpha, t_int, t_flt, g0, ng, c_int, c_flt, a_flt, a_int,
            radii, n_el, lam_val, lam_top, w_row, out_row, jac, wk, P_, dP_, E_, FQ_,
        )  # fmt: skip


@nb.njit(inline="always", **_OPTS)
def _fill(ns, seg, src, dst):
    """dst[b] = src[j] for every triplet b of every segment (first triplet, j) in seg."""
    for s in range(ns):
        v = src[seg[s, 1]]
        for b in range(seg[s, 0], seg[s + 1, 0]):
            dst[b] = v


@nb.njit(inline="always", **_OPTS)
def _gather(m, KI, src, dst):
    """dst[b] = src[KI[b]] for b < m."""
    for b in range(m):
        dst[b] = src[KI[b]]


@nb.njit(**_OPTS)
def _block(
    mode, m, ns, seg, KI, dx, dy, dz, rr, ir_, el, fc, dfc, ux, uy, uz,
    gx, gy, gz, ctype, alpha, t_int, t_flt, g0, ng, c_int, c_flt, a_flt, a_int,
    radii, n_el, lam_val, lam_top, w_row, out_row, jac, wk, P_, dP_, E_, FQ_,
):  # fmt: skip
    """The m triplets of one block: ``ns`` segments (seg[s] = first triplet, j; seg[ns, 0]
    = m), k = KI[b], d_j·d_k in wk[0], r_jk² in wk[1]. Adds to ``out_row`` (modes 0, 1, 3:
    values; 2: JVP), ``gx, gy, gz`` (mode 1) and ``jac`` (mode 3)."""
    na = a_flt.shape[0]
    nq = radii.shape[0]
    DOT, S = wk[0, :m], wk[1, :m]
    XJ, YJ, ZJ, XK, YK, ZK = wk[2, :m], wk[3, :m], wk[4, :m], wk[5, :m], wk[6, :m], wk[7, :m]
    IRJ, IRK, cosv, rjk, irjk = wk[8, :m], wk[9, :m], wk[10, :m], wk[11, :m], wk[12, :m]
    RJ, RK = wk[13, :m], wk[14, :m]
    # -------------------------------------------------------- geometry
    _fill(ns, seg, dx, XJ)
    _fill(ns, seg, dy, YJ)
    _fill(ns, seg, dz, ZJ)
    _fill(ns, seg, rr, RJ)
    _fill(ns, seg, ir_, IRJ)
    _gather(m, KI, dx, XK)
    _gather(m, KI, dy, YK)
    _gather(m, KI, dz, ZK)
    _gather(m, KI, rr, RK)
    for b in range(m):
        IRK[b] = 1.0 / RK[b]
    for b in range(m):
        cosv[b] = DOT[b] * IRJ[b] * IRK[b]
    for b in range(m):
        rjk[b] = math.sqrt(max(S[b], 0.0))
    for b in range(m):
        irjk[b] = 1.0 / rjk[b] if rjk[b] > 0.0 else 0.0
    for q in range(nq):  # fc and dfc/dr of r_jk, r_ij, r_ik (rows 6q … 6q + 5 of FQ_)
        cutoff_row(rjk, m, radii[q], alpha, ctype, FQ_[6 * q], FQ_[6 * q + 1])
        _fill(ns, seg, fc[q], FQ_[6 * q + 2])
        _fill(ns, seg, dfc[q], FQ_[6 * q + 3])
        _gather(m, KI, fc[q], FQ_[6 * q + 4])
        _gather(m, KI, dfc[q], FQ_[6 * q + 5])
    # -------------------------------------------------------- (1 + λc)^ζ and derivative
    B, PW, QW, SQ = wk[15, :m], wk[16, :m], wk[17, :m], wk[18, :m]
    for lm in range(lam_val.shape[0]):
        if lam_top[lm] < 0:
            continue
        lam = lam_val[lm]
        for b in range(m):
            PW[b] = 1.0 + lam * cosv[b]
            QW[b] = 1.0
        for t in range(lam_top[lm] + 1):
            for ak in range(na):
                if a_int[ak, 1] == lm and a_int[ak, 2] == t:
                    f = lam * a_flt[ak, 1]
                    Pa = P_[ak, :m]
                    dPa = dP_[ak, :m]
                    for b in range(m):
                        Pa[b] = PW[b]
                        dPa[b] = f * QW[b]
            if t < lam_top[lm]:
                for b in range(m):
                    QW[b] *= PW[b]
                    PW[b] *= PW[b]
    for ak in range(na):  # ζ not a power of two
        if a_int[ak, 2] >= 0:
            continue
        lam = a_flt[ak, 0]
        zeta = a_flt[ak, 1]
        zi = a_int[ak, 0]
        Pa = P_[ak, :m]
        dPa = dP_[ak, :m]
        for b in range(m):
            B[b] = 1.0 + lam * cosv[b]
        if zi > 0:  # base^(ζ−1) by repeated squaring
            _pow_row(B, zi - 1, m, Pa, SQ)
        else:
            for b in range(m):
                Pa[b] = B[b] ** (zeta - 1.0) if B[b] > 0.0 else 0.0
        f = lam * zeta
        for b in range(m):
            dPa[b] = f * Pa[b]
            Pa[b] *= B[b]
    R, Q, dQ, EM = wk[19, :m], wk[20, :m], wk[21, :m], wk[22, :m]
    Tc, Tj, Tk, Tjk = wk[23, :m], wk[24, :m], wk[25, :m], wk[26, :m]
    BJ, BK, BJK = wk[27, :m], wk[28, :m], wk[29, :m]
    dcu, urj, urk, urjk = wk[30, :m], wk[31, :m], wk[32, :m], wk[33, :m]
    PAIR, EP = wk[34, :m], wk[41, :m]
    if n_el > 1:  # element pair code el_j·n_el + el_k of each triplet
        for s in range(ns):
            v = el[seg[s, 1]] * n_el
            for b in range(seg[s, 0], seg[s + 1, 0]):
                PAIR[b] = v + el[KI[b]]
    if mode == 1:
        for b in range(m):
            Tc[b] = 0.0
            Tj[b] = 0.0
            Tk[b] = 0.0
            Tjk[b] = 0.0
    if mode == 2:
        UJX, UJY, UJZ = wk[35, :m], wk[36, :m], wk[37, :m]
        UKX, UKY, UKZ = wk[38, :m], wk[39, :m], wk[40, :m]
        _fill(ns, seg, ux, UJX)
        _fill(ns, seg, uy, UJY)
        _fill(ns, seg, uz, UJZ)
        _gather(m, KI, ux, UKX)
        _gather(m, KI, uy, UKY)
        _gather(m, KI, uz, UKZ)
        for b in range(m):
            c = cosv[b]
            uj = (XJ[b] * UJX[b] + YJ[b] * UJY[b] + ZJ[b] * UJZ[b]) * IRJ[b]
            uk = (XK[b] * UKX[b] + YK[b] * UKY[b] + ZK[b] * UKZ[b]) * IRK[b]
            # ∂c/∂d_j·u_j + ∂c/∂d_k·u_k
            dcu[b] = (
                (XK[b] * UJX[b] + YK[b] * UJY[b] + ZK[b] * UJZ[b]
                 + XJ[b] * UKX[b] + YJ[b] * UKY[b] + ZJ[b] * UKZ[b]) * IRJ[b] * IRK[b]
                - c * (uj * IRJ[b] + uk * IRK[b])
            )  # fmt: skip
            urj[b] = uj
            urk[b] = uk
            urjk[b] = (
                (XJ[b] - XK[b]) * (UJX[b] - UKX[b])
                + (YJ[b] - YK[b]) * (UJY[b] - UKY[b])
                + (ZJ[b] - ZK[b]) * (UJZ[b] - UKZ[b])
            ) * irjk[b]
    # -------------------------------------------------------- groups
    for gi in range(ng):
        g = g0 + gi
        cb0, cb1 = t_int[g, 4], t_int[g, 5]
        g3 = t_int[g, 3] == 1
        c = t_int[g, 10]
        eta, rs = t_flt[g, 0], t_flt[g, 1]
        FJK, DFJK = FQ_[6 * c, :m], FQ_[6 * c + 1, :m]
        FJ, DFJ, FK, DFK = (
            FQ_[6 * c + 2, :m],
            FQ_[6 * c + 3, :m],
            FQ_[6 * c + 4, :m],
            FQ_[6 * c + 5, :m],
        )
        # exp(−η Σ), Σ the summed squared shifted distances
        E = E_[gi, :m]
        src = t_int[g, 8]
        if src >= 0:
            _pow_row(E_[src - g0], t_int[g, 9], m, E, SQ)
        else:
            nsq = t_int[g, 7]
            scale = -eta / 2.0**nsq
            for b in range(m):
                tj = RJ[b] - rs
                tk = RK[b] - rs
                tjk = rjk[b] - rs if g3 else 0.0
                E[b] = _exp_taylor(max(scale * (tj * tj + tk * tk + tjk * tjk), -EXP_RANGE))
            for _ in range(nsq):
                for b in range(m):
                    E[b] *= E[b]
        if n_el > 1:  # zero where the pair of elements is not the group's
            p1 = t_int[g, 1] * n_el + t_int[g, 2]
            p2 = t_int[g, 2] * n_el + t_int[g, 1]
            for b in range(m):
                EP[b] = E[b] if PAIR[b] == p1 or PAIR[b] == p2 else 0.0
            E = EP
        e2 = 2.0 * eta
        # R = E fc_j fc_k fc_jk and its derivatives by r_ij, r_ik, r_jk (BJ, BK, BJK)
        for b in range(m):
            EM[b] = E[b] * FJK[b] if g3 else E[b]
        for b in range(m):
            R[b] = EM[b] * FJ[b] * FK[b]
        if mode != 0:
            for b in range(m):
                BJ[b] = EM[b] * FK[b] * (DFJ[b] - e2 * (RJ[b] - rs) * FJ[b])
            for b in range(m):
                BK[b] = EM[b] * FJ[b] * (DFK[b] - e2 * (RK[b] - rs) * FK[b])
            if g3:
                for b in range(m):
                    BJK[b] = E[b] * FJ[b] * FK[b] * (DFJK[b] - e2 * (rjk[b] - rs) * FJK[b])
            else:
                for b in range(m):
                    BJK[b] = 0.0
        if mode != 2:
            for cb in range(cb0, cb1):
                Pa = P_[c_int[cb, 1], :m]
                acc = 0.0
                for b in range(m):
                    acc += R[b] * Pa[b]
                out_row[c_int[cb, 0]] += c_flt[cb, 0] * acc
        if mode == 1:
            _weighted_powers(cb0, cb1, c_int, c_flt, w_row, P_, dP_, m, Q, dQ)
            for b in range(m):
                Tc[b] += dQ[b] * R[b]
            for b in range(m):
                Tj[b] += Q[b] * BJ[b]
            for b in range(m):
                Tk[b] += Q[b] * BK[b]
            for b in range(m):
                Tjk[b] += Q[b] * BJK[b]
        elif mode == 3:  # one function at a time: the two vectors of each triplet
            MC, MJ, MK, MJK = wk[35, :m], wk[36, :m], wk[37, :m], wk[38, :m]
            for cb in range(cb0, cb1):
                col = c_int[cb, 0]
                wn = c_flt[cb, 0]
                Pa = P_[c_int[cb, 1], :m]
                dPa = dP_[c_int[cb, 1], :m]
                for b in range(m):
                    qv = wn * Pa[b]
                    MC[b] = wn * dPa[b] * R[b]
                    MJ[b] = qv * BJ[b]
                    MK[b] = qv * BK[b]
                    MJK[b] = qv * BJK[b]
                _triplet_vectors(
                    m, ns, seg, KI, MC, MJ, MK, MJK, cosv, IRJ, IRK, irjk,
                    XJ, YJ, ZJ, XK, YK, ZK, jac[:, col, 0], jac[:, col, 1], jac[:, col, 2],
                )  # fmt: skip
        elif mode == 2:
            for b in range(m):
                Q[b] = R[b] * dcu[b]
                dQ[b] = BJ[b] * urj[b] + BK[b] * urk[b] + BJK[b] * urjk[b]
            for cb in range(cb0, cb1):
                Pa = P_[c_int[cb, 1], :m]
                dPa = dP_[c_int[cb, 1], :m]
                acc = 0.0
                for b in range(m):
                    acc += Q[b] * dPa[b] + dQ[b] * Pa[b]
                out_row[c_int[cb, 0]] += c_flt[cb, 0] * acc
    if mode == 1:
        _triplet_vectors(
            m, ns, seg, KI, Tc, Tj, Tk, Tjk, cosv, IRJ, IRK, irjk,
            XJ, YJ, ZJ, XK, YK, ZK, gx, gy, gz,
        )  # fmt: skip


@nb.njit(inline="always", **_OPTS)
def _triplet_vectors(
    m, ns, seg, KI, Tc, Tj, Tk, Tjk, cosv, IRJ, IRK, irjk, XJ, YJ, ZJ, XK, YK, ZK, gx, gy, gz
):  # fmt: skip
    """Add each triplet's gradient w.r.t. d_j and d_k to (gx, gy, gz)[j] and [k], from the
    per-triplet sums Tc (∂/∂cos θ), Tj, Tk, Tjk (∂/∂r_ij, ∂/∂r_ik, ∂/∂r_jk), which it
    overwrites. With ∂c/∂d_j = d_k/(r_j r_k) − c d_j/r_j² (and likewise for d_k):

        ∂/∂d_j = A d_j + B d_k,  ∂/∂d_k = B d_j + C d_k,
        A = sj + sjk, B = cj − sjk, C = sk + sjk,

    cj = Tc/(r_j r_k), sj = (Tj − Tc c/r_j)/r_j, sk = (Tk − Tc c/r_k)/r_k, sjk = Tjk/r_jk.
    Short passes with few arrays each, so that they vectorise; j's gradient is summed per
    segment, k's added in triplet order.
    """
    for b in range(m):
        Tj[b] = (Tj[b] - Tc[b] * cosv[b] * IRJ[b]) * IRJ[b]
    for b in range(m):
        Tk[b] = (Tk[b] - Tc[b] * cosv[b] * IRK[b]) * IRK[b]
    for b in range(m):
        Tc[b] = Tc[b] * IRJ[b] * IRK[b]
    for b in range(m):
        Tjk[b] = Tjk[b] * irjk[b]
    for b in range(m):  # A, B, C into Tj, Tc, Tk
        Tj[b] += Tjk[b]
        Tc[b] -= Tjk[b]
        Tk[b] += Tjk[b]
    for s in range(ns):
        a = 0.0
        bx = 0.0
        by = 0.0
        bz = 0.0
        for b in range(seg[s, 0], seg[s + 1, 0]):
            a += Tj[b]
            bx += Tc[b] * XK[b]
            by += Tc[b] * YK[b]
            bz += Tc[b] * ZK[b]
        b0 = seg[s, 0]
        j = seg[s, 1]
        gx[j] += a * XJ[b0] + bx
        gy[j] += a * YJ[b0] + by
        gz[j] += a * ZJ[b0] + bz
    for b in range(m):
        k = KI[b]
        gx[k] += Tc[b] * XJ[b] + Tk[b] * XK[b]
        gy[k] += Tc[b] * YJ[b] + Tk[b] * YK[b]
        gz[k] += Tc[b] * ZJ[b] + Tk[b] * ZK[b]
