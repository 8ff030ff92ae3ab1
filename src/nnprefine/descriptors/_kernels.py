"""Numba kernels of the symmetry functions: values, force pass (VJP) and JVP.

Pure functions on arrays; the packing of a :class:`SymmetryFunctionSet` into the
parameter arrays lives in ``descriptor.py``. One thread handles one central atom i and
writes only atom i's row of G / JV, or the per-pair gradients g_p = ∂(Σ_g w_g G_ig)/∂d_p
of atom i's own neighbour entries p; forces and virial are reduced from g_p afterwards in
a fixed order, so results do not depend on the number of threads.

Three code paths per atom (see ``Descriptor`` for which function goes where):

- radial G2: passes over the neighbours (fc once per cutoff radius, exp by polynomial);
- "triplet" groups (all G3, and G9 with non-integer or large ζ): for each neighbour j a
  row over k > j; functions sharing (η, r_s, r_c, elements) form a group that shares the
  radial factor a(r_ij)·a(r_ik)·b(r_jk), and (λ, ζ) pairs share (1 + λ cos θ)^ζ;
- "tensor" G9 (integer ζ ≤ MAX_TENSOR_ZETA): (1 + λc)^ζ = Σ_n C(ζ,n) λⁿ cⁿ and
  Σ_{j,k} a_j a_k (r̂_j·r̂_k)ⁿ = Σ_{|m|=n} n!/m! (Σ_j a_j r̂_j^m)², so the pair sum costs
  O(neighbours); the j = k terms are subtracted and the result halved for j < k.

Modes: 0 values, 1 values + per-pair gradients (forces), 2 JVP, 3 values + the Jacobian
blocks ∂G_i,col/∂d_p (n_functions × 3 per neighbour entry p of atom i; the training cache).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from nnprefine.descriptors._scalar import OPTS as _OPTS
from nnprefine.descriptors._scalar import cutoff_fdf, radial_factor
from nnprefine.descriptors._triplets import EXP_RANGE, _exp_taylor, triplets

MAX_TENSOR_ZETA = 8


@nb.njit(**_OPTS)
def _atom(
    i, mode, pos, cell, elem, offsets, nbj, shift, rc_max, ctype, alpha,
    r_int, r_flt, r_rng,
    t_int, t_flt, t_rng, c_int, c_flt, a_flt, a_int, radii,
    k_int, k_flt, k_rng, w_int, w_flt, w_rng, m_par, m_ax, m_exp, m_dix, m_n, m_deg, m_coef,
    n_el, w_row, v, g_out, out_row, jac_out,
):  # fmt: skip
    """Everything for central atom i; see the module docstring for ``mode``."""
    e = elem[i]
    lo = offsets[i]
    hi = offsets[i + 1]
    cap = hi - lo
    dx = np.empty(cap)
    dy = np.empty(cap)
    dz = np.empty(cap)
    rr = np.empty(cap)
    el = np.empty(cap, np.int64)
    pid = np.empty(cap, np.int64)
    rc2 = rc_max * rc_max
    n = 0
    for p in range(lo, hi):
        j = nbj[p]
        sx, sy, sz = shift[p, 0], shift[p, 1], shift[p, 2]
        x = pos[j, 0] - pos[i, 0] + sx * cell[0, 0] + sy * cell[1, 0] + sz * cell[2, 0]
        y = pos[j, 1] - pos[i, 1] + sx * cell[0, 1] + sy * cell[1, 1] + sz * cell[2, 1]
        z = pos[j, 2] - pos[i, 2] + sx * cell[0, 2] + sy * cell[1, 2] + sz * cell[2, 2]
        r2 = x * x + y * y + z * z
        if r2 < rc2:
            dx[n] = x
            dy[n] = y
            dz[n] = z
            rr[n] = math.sqrt(r2)
            el[n] = elem[j]
            pid[n] = p
            n += 1
    gx = np.zeros(n)
    gy = np.zeros(n)
    gz = np.zeros(n)
    ux = np.zeros(n)
    uy = np.zeros(n)
    uz = np.zeros(n)
    jac = np.zeros((n if mode == 3 else 0, out_row.shape[0], 3))
    if mode == 2:
        for k in range(n):
            j = nbj[pid[k]]
            ux[k] = v[j, 0] - v[i, 0]
            uy[k] = v[j, 1] - v[i, 1]
            uz[k] = v[j, 2] - v[i, 2]
    # ------------------------------------------------------------------ radial G2
    # fc once per cutoff radius, exp(−η(r − r_s)²) by the vectorising polynomial
    if r_rng[e, 1] > r_rng[e, 0]:
        fcr = np.zeros(n)
        dfcr = np.zeros(n)
        ea = np.empty(n)
        ra = np.empty(n)
        rda = np.empty(n)
        irr = np.empty(n)
        for k in range(n):
            irr[k] = 1.0 / rr[k]
        last_rc = -1.0
        for f in range(r_rng[e, 0], r_rng[e, 1]):
            nbel = r_int[f, 1]
            col = r_int[f, 2]
            eta, rs, rc = r_flt[f, 0], r_flt[f, 1], r_flt[f, 2]
            if rc != last_rc:
                for k in range(n):
                    if rr[k] < rc:
                        fcr[k], dfcr[k] = cutoff_fdf(rr[k], rc, alpha, ctype)
                    else:
                        fcr[k] = 0.0
                        dfcr[k] = 0.0
                last_rc = rc
            big = eta * (rc + abs(rs)) ** 2
            nsq = max(0, math.ceil(math.log2(big / EXP_RANGE))) if big > 0.0 else 0
            scale = -eta / 2.0**nsq
            for k in range(n):
                t = rr[k] - rs
                ea[k] = _exp_taylor(max(scale * t * t, -EXP_RANGE))
            for _ in range(nsq):
                for k in range(n):
                    ea[k] *= ea[k]
            for k in range(n):
                msk = 1.0 if el[k] == nbel else 0.0
                ra[k] = msk * ea[k] * fcr[k]
            for k in range(n):
                msk = 1.0 if el[k] == nbel else 0.0
                rda[k] = msk * ea[k] * (dfcr[k] - 2.0 * eta * (rr[k] - rs) * fcr[k]) * irr[k]
            acc = 0.0
            if mode == 2:
                for k in range(n):
                    acc += rda[k] * (dx[k] * ux[k] + dy[k] * uy[k] + dz[k] * uz[k])
            else:
                for k in range(n):
                    acc += ra[k]
                if mode == 1:
                    w = w_row[col]
                    for k in range(n):
                        gx[k] += w * rda[k] * dx[k]
                    for k in range(n):
                        gy[k] += w * rda[k] * dy[k]
                    for k in range(n):
                        gz[k] += w * rda[k] * dz[k]
                elif mode == 3:
                    for k in range(n):
                        jac[k, col, 0] += rda[k] * dx[k]
                        jac[k, col, 1] += rda[k] * dy[k]
                        jac[k, col, 2] += rda[k] * dz[k]
            out_row[col] += acc
    # ------------------------------------------------------------------ triplet groups
    if t_rng[e, 1] > t_rng[e, 0]:
        triplets(
            mode, n, dx, dy, dz, rr, el, ux, uy, uz, gx, gy, gz, e, ctype, alpha,
            t_int, t_flt, t_rng, c_int, c_flt, a_flt, a_int, radii, n_el, w_row, out_row, jac,
        )  # fmt: skip
    # ------------------------------------------------------------------ tensor G9
    nk = k_rng[e, 1] - k_rng[e, 0]
    if nk > 0:
        _tensor(
            mode, n, dx, dy, dz, rr, el, ux, uy, uz, gx, gy, gz, e, ctype, alpha,
            k_int, k_flt, k_rng, w_int, w_flt, w_rng, m_par, m_ax, m_exp, m_dix, m_n,
            m_deg, m_coef, n_el, w_row, out_row, jac,
        )  # fmt: skip
    if mode == 1:
        for k in range(n):
            p = pid[k]
            g_out[p, 0] = gx[k]
            g_out[p, 1] = gy[k]
            g_out[p, 2] = gz[k]
    elif mode == 3:
        for k in range(n):
            jac_out[pid[k]] = jac[k]


@nb.njit(inline="always", **_OPTS)
def _add_weights(K, KD, T, e1, e2, zeta, lam, wf, m_deg, m_coef):
    """Add w_f·∂G_f/∂T (one function f, weight ``wf``) to K (n_el, nm) and KD (n_el,)."""
    binom = 1.0
    lamn = 1.0
    for deg in range(zeta + 1):
        b = wf * binom * lamn
        for m in range(m_deg[deg], m_deg[deg + 1]):
            cm = b * m_coef[m]
            if e1 == e2:
                K[e1, m] += cm * T[e1, m]
            else:
                K[e1, m] += cm * T[e2, m]
                K[e2, m] += cm * T[e1, m]
        if e1 == e2:
            KD[e1] -= 0.5 * b
        binom = binom * (zeta - deg) / (deg + 1)
        lamn *= lam


@nb.njit(inline="always", **_OPTS)
def _pair_gradient(K, KD, ek, a, da, ir, Mk, nmk, m_n, m_exp, m_dix):
    """(radial, vx, vy, vz): ∂/∂d_k of Σ_m K_m T_m + KD·D for neighbour k; the gradient is
    radial·r̂_k + (a/r)·v."""
    rad = 2.0 * KD[ek] * a * da
    vx = 0.0
    vy = 0.0
    vz = 0.0
    for m in range(1, nmk):
        km = K[ek, m]
        rad += km * Mk[m] * (da - m_n[m] * a * ir)
        vx += km * m_exp[m, 0] * Mk[m_dix[m, 0]]
        vy += km * m_exp[m, 1] * Mk[m_dix[m, 1]]
        vz += km * m_exp[m, 2] * Mk[m_dix[m, 2]]
    rad += K[ek, 0] * da
    return rad, vx, vy, vz


@nb.njit(**_OPTS)
def _tensor(
    mode, n, dx, dy, dz, rr, el, ux, uy, uz, gx, gy, gz, e, ctype, alpha,
    k_int, k_flt, k_rng, w_int, w_flt, w_rng, m_par, m_ax, m_exp, m_dix, m_n, m_deg, m_coef,
    n_el, w_row, out_row, jac,
):  # fmt: skip
    """Wide angular functions with integer ζ by symmetric tensor powers of r̂."""
    k0, k1 = k_rng[e, 0], k_rng[e, 1]
    nk = k1 - k0
    dmax = 0
    for kk in range(k0, k1):
        dmax = max(dmax, k_int[kk, 1])
    nm = m_deg[dmax + 1]
    # monomials of the unit vectors: M[k, m]
    M = np.empty((n, nm))
    for k in range(n):
        ir = 1.0 / rr[k]
        hx = dx[k] * ir
        hy = dy[k] * ir
        hz = dz[k] * ir
        M[k, 0] = 1.0
        for m in range(1, nm):
            ax = m_ax[m]
            h = hx if ax == 0 else (hy if ax == 1 else hz)
            M[k, m] = M[k, m_par[m]] * h
    A = np.zeros((nk, n))
    dA = np.zeros((nk, n))
    T = np.zeros((nk, n_el, nm))
    D = np.zeros((nk, n_el))
    for kk in range(nk):
        eta, rs, rc = k_flt[k0 + kk, 0], k_flt[k0 + kk, 1], k_flt[k0 + kk, 2]
        nmk = m_deg[k_int[k0 + kk, 1] + 1]
        for k in range(n):
            a, da = radial_factor(rr[k], eta, rs, rc, alpha, ctype)
            A[kk, k] = a
            dA[kk, k] = da
            if a != 0.0:
                ek = el[k]
                D[kk, ek] += a * a
                for m in range(nmk):
                    T[kk, ek, m] += a * M[k, m]
    f0, f1 = w_rng[e, 0], w_rng[e, 1]
    if mode != 2:
        for f in range(f0, f1):
            kk = w_int[f, 0] - k0
            e1, e2, zeta, col = w_int[f, 1], w_int[f, 2], w_int[f, 3], w_int[f, 4]
            lam, norm = w_flt[f, 0], w_flt[f, 1]
            tot = 0.0
            binom = 1.0
            lamn = 1.0
            for deg in range(zeta + 1):
                s = 0.0
                for m in range(m_deg[deg], m_deg[deg + 1]):
                    s += m_coef[m] * T[kk, e1, m] * T[kk, e2, m]
                if e1 == e2:
                    s = 0.5 * (s - D[kk, e1])
                tot += binom * lamn * s
                binom = binom * (zeta - deg) / (deg + 1)
                lamn *= lam
            out_row[col] += norm * tot
    if mode == 1:
        K = np.zeros((nk, n_el, nm))
        KD = np.zeros((nk, n_el))
        any_w = False
        for f in range(f0, f1):
            kk = w_int[f, 0] - k0
            e1, e2, zeta, col = w_int[f, 1], w_int[f, 2], w_int[f, 3], w_int[f, 4]
            wf = w_row[col] * w_flt[f, 1]
            if wf == 0.0:
                continue
            any_w = True
            _add_weights(K[kk], KD[kk], T[kk], e1, e2, zeta, w_flt[f, 0], wf, m_deg, m_coef)
        if not any_w:
            return
        for k in range(n):
            ek = el[k]
            ir = 1.0 / rr[k]
            hx = dx[k] * ir
            hy = dy[k] * ir
            hz = dz[k] * ir
            for kk in range(nk):
                a = A[kk, k]
                if a == 0.0:
                    continue
                da = dA[kk, k]
                nmk = m_deg[k_int[k0 + kk, 1] + 1]
                rad, vx, vy, vz = _pair_gradient(
                    K[kk], KD[kk], ek, a, da, ir, M[k], nmk, m_n, m_exp, m_dix
                )
                s = a * ir
                gx[k] += rad * hx + s * vx
                gy[k] += rad * hy + s * vy
                gz[k] += rad * hz + s * vz
    if mode == 3:  # the gradient pass of mode 1, one function at a time
        K = np.zeros((n_el, nm))
        KD = np.zeros(n_el)
        for f in range(f0, f1):
            kk = w_int[f, 0] - k0
            e1, e2, zeta, col = w_int[f, 1], w_int[f, 2], w_int[f, 3], w_int[f, 4]
            lam, wf = w_flt[f, 0], w_flt[f, 1]
            nmk = m_deg[k_int[k0 + kk, 1] + 1]
            K[:, :] = 0.0
            KD[:] = 0.0
            _add_weights(K, KD, T[kk], e1, e2, zeta, lam, wf, m_deg, m_coef)
            for k in range(n):
                ek = el[k]
                if ek != e1 and ek != e2:
                    continue
                a = A[kk, k]
                if a == 0.0:
                    continue
                da = dA[kk, k]
                ir = 1.0 / rr[k]
                rad, vx, vy, vz = _pair_gradient(K, KD, ek, a, da, ir, M[k], nmk, m_n, m_exp, m_dix)
                s = a * ir
                jac[k, col, 0] += rad * dx[k] * ir + s * vx
                jac[k, col, 1] += rad * dy[k] * ir + s * vy
                jac[k, col, 2] += rad * dz[k] * ir + s * vz
    if mode == 2:
        dT = np.zeros((nk, n_el, nm))
        dD = np.zeros((nk, n_el))
        for k in range(n):
            ek = el[k]
            ir = 1.0 / rr[k]
            urad = (dx[k] * ux[k] + dy[k] * uy[k] + dz[k] * uz[k]) * ir
            for kk in range(nk):
                a = A[kk, k]
                if a == 0.0:
                    continue
                da = dA[kk, k]
                nmk = m_deg[k_int[k0 + kk, 1] + 1]
                dD[kk, ek] += 2.0 * a * da * urad
                dT[kk, ek, 0] += da * urad
                s = a * ir
                for m in range(1, nmk):
                    gu = (
                        ux[k] * m_exp[m, 0] * M[k, m_dix[m, 0]]
                        + uy[k] * m_exp[m, 1] * M[k, m_dix[m, 1]]
                        + uz[k] * m_exp[m, 2] * M[k, m_dix[m, 2]]
                    )
                    dT[kk, ek, m] += (da - m_n[m] * s) * urad * M[k, m] + s * gu
        for f in range(f0, f1):
            kk = w_int[f, 0] - k0
            e1, e2, zeta, col = w_int[f, 1], w_int[f, 2], w_int[f, 3], w_int[f, 4]
            lam, norm = w_flt[f, 0], w_flt[f, 1]
            tot = 0.0
            binom = 1.0
            lamn = 1.0
            for deg in range(zeta + 1):
                s = 0.0
                for m in range(m_deg[deg], m_deg[deg + 1]):
                    s += m_coef[m] * (dT[kk, e1, m] * T[kk, e2, m] + T[kk, e1, m] * dT[kk, e2, m])
                if e1 == e2:
                    s = 0.5 * (s - dD[kk, e1])
                tot += binom * lamn * s
                binom = binom * (zeta - deg) / (deg + 1)
                lamn *= lam
            out_row[col] += norm * tot


@nb.njit(parallel=True, **_OPTS)
def run(
    mode, pos, cell, elem, offsets, nbj, shift, rc_max, ctype, alpha,
    r_int, r_flt, r_rng,
    t_int, t_flt, t_rng, c_int, c_flt, a_flt, a_int, radii,
    k_int, k_flt, k_rng, w_int, w_flt, w_rng, m_par, m_ax, m_exp, m_dix, m_n, m_deg, m_coef,
    n_el, W, v, g_out, out, jac_out,
):  # fmt: skip
    """Run :func:`_atom` for every atom in parallel (rows of ``out``, entries of ``g_out``
    and ``jac_out``)."""
    for i in nb.prange(pos.shape[0]):
        _atom(
            i, mode, pos, cell, elem, offsets, nbj, shift, rc_max, ctype, alpha,
            r_int, r_flt, r_rng, t_int, t_flt, t_rng, c_int, c_flt, a_flt, a_int, radii,
            k_int, k_flt, k_rng, w_int, w_flt, w_rng, m_par, m_ax, m_exp, m_dix, m_n,
            m_deg, m_coef, n_el, W[i], v, g_out, out[i], jac_out,
        )  # fmt: skip


@nb.njit(**_OPTS)
def reduce_pairs(pos, cell, offsets, nbj, shift, g):
    """Forces (n_atoms, 3) and virial (3, 3) from per-pair gradients g_p = ∂E/∂d_p.

    d_p = r_j − r_i + S·cell; F_i += g_p, F_j −= g_p; virial −= d_p ⊗ g_p. Serial, in
    entry order, so the sums are the same for every thread count.
    """
    n = pos.shape[0]
    F = np.zeros((n, 3))
    W = np.zeros((3, 3))
    for i in range(n):
        for p in range(offsets[i], offsets[i + 1]):
            gx, gy, gz = g[p, 0], g[p, 1], g[p, 2]
            if gx == 0.0 and gy == 0.0 and gz == 0.0:
                continue
            j = nbj[p]
            s0, s1, s2 = shift[p, 0], shift[p, 1], shift[p, 2]
            ddx = pos[j, 0] - pos[i, 0] + s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0]
            ddy = pos[j, 1] - pos[i, 1] + s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1]
            ddz = pos[j, 2] - pos[i, 2] + s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2]
            F[i, 0] += gx
            F[i, 1] += gy
            F[i, 2] += gz
            F[j, 0] -= gx
            F[j, 1] -= gy
            F[j, 2] -= gz
            W[0, 0] -= ddx * gx
            W[0, 1] -= ddx * gy
            W[0, 2] -= ddx * gz
            W[1, 0] -= ddy * gx
            W[1, 1] -= ddy * gy
            W[1, 2] -= ddy * gz
            W[2, 0] -= ddz * gx
            W[2, 1] -= ddz * gy
            W[2, 2] -= ddz * gz
    return F, W
