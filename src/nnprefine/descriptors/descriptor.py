"""The descriptor: symmetry-function values, forces from ∂E/∂G, and the JVP, of ASE Atoms.

``Descriptor(sfset)`` packs the set into the parameter arrays of the numba kernels once;
each call then recomputes distances from the positions of that call with a neighbour
list that is reused while no atom has moved more than half the skin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from nnprefine.descriptors import _kernels
from nnprefine.descriptors._triplets import EXP_RANGE
from nnprefine.descriptors.functions import (
    CUTOFF_TYPES,
    NarrowAngularG3,
    RadialG2,
    SymmetryFunctionSet,
    WideAngularG9,
)
from nnprefine.descriptors.neighbours import Neighbours, build_neighbours
from nnprefine.errors import (
    ConfigError,
    ModelError,
    NonFiniteModelOutputError,
    UnsupportedElementError,
)

__all__ = ["Descriptor"]


@dataclass(frozen=True)
class _Params:
    """The set as kernel arrays (see ``_kernels``)."""

    arrays: tuple
    n_el: int
    ctype: int
    alpha: float
    rc_max: float


def _monomials(dmax: int):
    """Tables of the monomials x^a y^b z^c with a + b + c ≤ dmax, ordered by degree."""
    exps: list[tuple[int, int, int]] = []
    first = [0]
    for d in range(dmax + 1):
        exps += [(a, b, d - a - b) for a in range(d, -1, -1) for b in range(d - a, -1, -1)]
        first.append(len(exps))
    index = {e: n for n, e in enumerate(exps)}
    nm = len(exps)
    par = np.zeros(nm, np.int64)
    ax = np.zeros(nm, np.int64)
    dix = np.zeros((nm, 3), np.int64)
    for n, e in enumerate(exps):
        for a in range(3):
            if e[a] > 0:
                lower = list(e)
                lower[a] -= 1
                dix[n, a] = index[tuple(lower)]
        if n > 0:
            a = 0 if e[0] > 0 else (1 if e[1] > 0 else 2)
            par[n], ax[n] = dix[n, a], a
    exp_arr = np.array(exps, np.float64).reshape(nm, 3)
    deg = exp_arr.sum(axis=1)
    coef = np.array(
        [math.factorial(sum(e)) / math.prod(math.factorial(x) for x in e) for e in exps]
    )
    return par, ax, exp_arr, dix, deg, np.array(first, np.int64), coef


def _ladder_step(zeta: float) -> int:
    """t with ζ = 2^t (t ≤ 10), else −1: such ζ come from one squaring ladder per λ."""
    for t in range(11):
        if zeta == 2.0**t:
            return t
    return -1


def _exp_source(key: tuple, earlier: list[tuple]) -> tuple[int, int]:
    """(index in ``earlier``, n) of a group whose exp(−η' Σ)^n is this group's exp(−η Σ)
    (same central element, kind and r_s, so the same sum Σ of squared distances, and the
    same r_c, so the same range of Σ that the exp's scaling covers; η = n·η', n ≤ 64,
    smallest n), or (−1, 0).

    ``earlier`` are the group keys packed before ``key``, from the first group on.
    """
    best = (-1, 0)
    if key[4] <= 0:
        return best
    for n, other in enumerate(earlier):
        if (other[0], other[3], other[5], other[6]) != (key[0], key[3], key[5], key[6]):
            continue
        if other[4] <= 0:
            continue
        ratio = key[4] / other[4]
        power = round(ratio)
        if 2 <= power <= 64 and abs(ratio - power) < 1e-9 * power:
            if best[0] < 0 or power < best[1]:
                best = (n, power)
    return best


def _pack(sfset: SymmetryFunctionSet, wide_by_tensor: bool) -> _Params:
    els = {el: n for n, el in enumerate(sfset.elements)}
    n_el = len(els)
    radial, triplet, tensor = [], {}, []
    for el in sfset.elements:
        for col, f in enumerate(sfset.functions_for(el)):
            if isinstance(f, RadialG2):
                radial.append((els[el], els[f.neighbours[0]], col, f.eta, f.r_shift, f.r_cut))
                continue
            e1, e2 = els[f.neighbours[0]], els[f.neighbours[1]]
            zi = int(f.zeta) if float(f.zeta).is_integer() else -1
            if (
                isinstance(f, WideAngularG9)
                and wide_by_tensor
                and 0 < zi <= _kernels.MAX_TENSOR_ZETA
            ):
                tensor.append((els[el], e1, e2, zi, col, f.lambda_, f.eta, f.r_shift, f.r_cut))
                continue
            has_jk = 1 if isinstance(f, NarrowAngularG3) else 0
            key = (els[el], e1, e2, has_jk, f.eta, f.r_shift, f.r_cut)
            triplet.setdefault(key, []).append((col, f.lambda_, f.zeta, zi))

    def ranges(centrals: list[int]) -> np.ndarray:
        rng = np.zeros((n_el, 2), np.int64)
        for e in range(n_el):
            idx = [n for n, c in enumerate(centrals) if c == e]
            rng[e] = (idx[0], idx[-1] + 1) if idx else (0, 0)
        return rng

    # radial (rows are already grouped by central element)
    r_int = np.array([r[:3] for r in radial], np.int64).reshape(-1, 3)
    r_flt = np.array([r[3:] for r in radial], np.float64).reshape(-1, 3)
    r_rng = ranges([r[0] for r in radial])
    # triplet groups and their (λ, ζ) combinations
    # by central element, then so that a group's η multiples come after it (exp sharing)
    keys = sorted(triplet, key=lambda k: (k[0], k[3], k[5], k[4], k[1], k[2], k[6]))
    akeys: dict[tuple[float, float], int] = {}
    t_int, t_flt, c_int, c_flt = [], [], [], []
    radii: dict[float, int] = {}  # cutoff radii of the triplet groups
    for gn, key in enumerate(keys):
        c0 = len(c_int)
        for col, lam, zeta, _ in triplet[key]:
            ak = akeys.setdefault((lam, zeta), len(akeys))
            c_int.append((col, ak))
            c_flt.append((2.0 ** (1.0 - zeta),))
        eta, rs, rc = key[4:]
        q = radii.setdefault(rc, len(radii))
        # one exp of the summed squared distances, its argument scaled into range by 2^-m
        terms = 3 if key[3] else 2
        big = eta * terms * (rc + abs(rs)) ** 2
        m = max(0, math.ceil(math.log2(big / EXP_RANGE))) if eta > 0 else 0
        src, power = _exp_source(key, keys[:gn])
        jk = q if key[3] else -1
        t_int.append((key[0], key[1], key[2], key[3], c0, len(c_int), jk, m, src, power, q))
        t_flt.append((eta, rs, rc))
    a_flt = np.array(list(akeys), np.float64).reshape(-1, 2)
    lambdas = sorted({lam for lam, _ in akeys})
    a_int = np.array(
        [(int(z) if float(z).is_integer() else -1, lambdas.index(lam), _ladder_step(z))
         for lam, z in akeys],
        np.int64,
    ).reshape(-1, 3)  # fmt: skip
    t_rng = ranges([t[0] for t in t_int])
    # tensor G9: radial keys, then functions
    tensor.sort(key=lambda t: t[0])
    rkeys: dict[tuple[int, float, float, float], int] = {}
    rdeg: dict[int, int] = {}
    w_int, w_flt = [], []
    for central, e1, e2, zi, col, lam, eta, rs, rc in tensor:
        kk = rkeys.setdefault((central, eta, rs, rc), len(rkeys))
        rdeg[kk] = max(rdeg.get(kk, 0), zi)
        w_int.append((kk, e1, e2, zi, col))
        w_flt.append((lam, 2.0 ** (1.0 - zi)))
    # radial keys must be grouped by central element: they are, since tensor is sorted
    k_int = np.array([(k[0], rdeg[n]) for k, n in rkeys.items()], np.int64).reshape(-1, 2)
    k_flt = np.array([k[1:] for k in rkeys], np.float64).reshape(-1, 3)
    k_rng = ranges([k[0] for k in rkeys])
    w_rng = ranges([t[0] for t in tensor])
    dmax = int(k_int[:, 1].max()) if len(k_int) else 0
    mono = _monomials(dmax)
    arrays = (
        r_int, r_flt, r_rng,
        np.array(t_int, np.int64).reshape(-1, 11), np.array(t_flt, np.float64).reshape(-1, 3),
        t_rng, np.array(c_int, np.int64).reshape(-1, 2),
        np.array(c_flt, np.float64).reshape(-1, 1), a_flt, a_int,
        np.array(list(radii), np.float64).reshape(-1),
        k_int, k_flt, k_rng, np.array(w_int, np.int64).reshape(-1, 5),
        np.array(w_flt, np.float64).reshape(-1, 2), w_rng, *mono,
    )  # fmt: skip
    return _Params(
        arrays=tuple(np.ascontiguousarray(a) for a in arrays),
        n_el=n_el,
        ctype=CUTOFF_TYPES[sfset.cutoff],
        alpha=sfset.cutoff_alpha,
        rc_max=sfset.r_cut,
    )


class Descriptor:
    """Symmetry-function values, force pass and JVP of one :class:`SymmetryFunctionSet`.

    sfset: the functions; skin_A: Verlet skin of the neighbour list (Å, ≥ 0): the list
    holds pairs within r_cut + skin and is rebuilt only when some atom moved more than
    skin/2, or the cell, periodicity, atom count or numbers changed.
    wide_by_tensor: compute G9 with integer ζ ≤ 8 by the O(neighbours) tensor
    factorisation (default) instead of the triplet loop; both give the same numbers.

    Scaling is not applied: values are raw G; the model applies its own scaling.
    """

    def __init__(
        self, sfset: SymmetryFunctionSet, skin_A: float = 1.0, *, wide_by_tensor: bool = True
    ) -> None:
        if not (skin_A >= 0.0 and math.isfinite(skin_A)):
            raise ConfigError(f"skin_A must be a finite length ≥ 0 Å, got {skin_A}")
        self.sfset = sfset
        self.skin_A = float(skin_A)
        self.wide_by_tensor = bool(wide_by_tensor)
        self._p = _pack(sfset, self.wide_by_tensor)
        self._z_to_el = np.full(119, -1, np.int64)
        for n, el in enumerate(sfset.elements):
            self._z_to_el[chemical_symbols.index(el)] = n
        self._cached: Neighbours | None = None
        self.n_builds = 0

    @property
    def n_functions_max(self) -> int:
        return self.sfset.max_functions

    # ------------------------------------------------------------------ neighbours
    def neighbours(self, atoms: Atoms) -> Neighbours:
        """A fresh neighbour list of ``atoms`` (radius r_cut + skin); also cached."""
        self._elements_of(atoms)
        nbl = build_neighbours(atoms, self._p.rc_max + self.skin_A)
        self._cached = nbl
        self.n_builds += 1
        return nbl

    def _get_neighbours(self, atoms: Atoms, neighbours: Neighbours | None) -> Neighbours:
        if neighbours is not None:
            if not neighbours.matches(atoms):
                raise ModelError(
                    "the neighbour list was built for another structure (atom count, numbers, "
                    "cell or pbc differ); build it with descriptor.neighbours(atoms)"
                )
            if neighbours.r_list_A < self._p.rc_max:
                raise ModelError(
                    f"the neighbour list radius {neighbours.r_list_A} Å is below the set's "
                    f"cutoff {self._p.rc_max} Å; build it with this descriptor"
                )
            return neighbours
        c = self._cached
        if c is not None and c.r_list_A >= self._p.rc_max and c.valid_for(atoms, self.skin_A):
            return c
        return self.neighbours(atoms)

    def _elements_of(self, atoms: Atoms) -> np.ndarray:
        z = np.asarray(atoms.numbers, dtype=np.int64)
        el = self._z_to_el[z]
        if (el < 0).any():
            bad = sorted({chemical_symbols[n] for n in z[el < 0]})
            raise UnsupportedElementError(
                f"the structure holds {bad}, which the symmetry-function set does not cover "
                f"(its elements are {list(self.sfset.elements)}); use a model trained for "
                f"those elements"
            )
        return el

    # ------------------------------------------------------------------ kernels
    def _run(self, mode: int, atoms: Atoms, neighbours, W, v):
        elem = self._elements_of(atoms)
        nbl = self._get_neighbours(atoms, neighbours)
        pos = np.ascontiguousarray(atoms.positions, dtype=np.float64)
        cell = np.ascontiguousarray(atoms.cell.array, dtype=np.float64)
        n = len(atoms)
        out = np.zeros((n, self.sfset.max_functions))
        g = np.zeros((nbl.n_pairs, 3)) if mode == 1 else np.zeros((0, 3))
        nf = self.sfset.max_functions
        jac = np.zeros((nbl.n_pairs, nf, 3)) if mode == 3 else np.zeros((0, nf, 3))
        p = self._p
        _kernels.run(
            mode, pos, cell, elem, nbl.offsets, nbl.j, nbl.shift, p.rc_max, p.ctype, p.alpha,
            *p.arrays, p.n_el, W, v, g, out, jac,
        )  # fmt: skip
        if mode == 3:
            return out, jac
        if mode == 1:
            F, virial = _kernels.reduce_pairs(pos, cell, nbl.offsets, nbl.j, nbl.shift, g)
            return out, F, virial
        return out

    def _check(self, name: str, arr, shape) -> np.ndarray:
        a = np.ascontiguousarray(arr, dtype=np.float64)
        if a.shape != shape:
            raise ModelError(f"{name} must have shape {shape}, got {a.shape}")
        if not np.isfinite(a).all():  # in MD: a non-finite result, the trajectory ends
            raise NonFiniteModelOutputError(f"{name} holds NaN or infinite entries")
        return a

    def values(self, atoms: Atoms, neighbours: Neighbours | None = None) -> np.ndarray:
        """G: (n_atoms, max_functions) float64; row i = atom i's element's functions in set
        order, zero-padded."""
        n = len(atoms)
        return self._run(0, atoms, neighbours, np.empty((n, 0)), np.empty((0, 3)))

    def values_and_forces(
        self, atoms: Atoms, dEdG, neighbours: Neighbours | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """G, forces and virial in one pass (see :meth:`values` and :meth:`forces`)."""
        W = self._check("dEdG", dEdG, (len(atoms), self.sfset.max_functions))
        return self._run(1, atoms, neighbours, W, np.empty((0, 3)))

    def forces(
        self, atoms: Atoms, dEdG, neighbours: Neighbours | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forces and virial for E with ∂E/∂G = ``dEdG``.

        dEdG: (n_atoms, max_functions) float64, eV per unit G (padding columns ignored).
        Returns F: (n_atoms, 3) float64, eV/Å, F_k = −Σ_ig dEdG_ig ∂G_ig/∂r_k; and the
        virial (3, 3) float64, eV, W = −Σ_pairs d ⊗ ∂E/∂d; stress = −W/volume.
        """
        _, F, virial = self.values_and_forces(atoms, dEdG, neighbours)
        return F, virial

    def jvp(self, atoms: Atoms, v, neighbours: Neighbours | None = None) -> np.ndarray:
        """J·v: (n_atoms, max_functions) float64, Σ_{k,α} ∂G_ig/∂r_kα v_kα.

        v: (n_atoms, 3) float64 (a displacement direction, Å); the result is in units of G
        per Å times the unit of v.
        """
        n = len(atoms)
        vv = self._check("v", v, (n, 3))
        return self._run(2, atoms, neighbours, np.empty((n, 0)), vv)

    def jacobian(
        self, atoms: Atoms, neighbours: Neighbours | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """G and the per-pair Jacobian blocks, in one pass.

        Returns G: (n_atoms, max_functions) float64 (as :meth:`values`) and
        B: (n_pairs, max_functions, 3) float64, B[p] = ∂G_i/∂d_p for entry p of atom i's
        neighbour list (d_p = r_j − r_i + S·cell, Å⁻¹ times the unit of G); entries beyond
        the cutoff are zero. Then ∂G_i/∂r_j = Σ_{p → j} B[p], ∂G_i/∂r_i = −Σ_p B[p],
        forces are F_i += B[p]ᵀw_i, F_j −= B[p]ᵀw_i for w = ∂E/∂G (as :meth:`forces`),
        and J·v sums B[p]·(v_j − v_i) (as :meth:`jvp`).
        """
        n = len(atoms)
        return self._run(3, atoms, neighbours, np.empty((n, 0)), np.empty((0, 3)))
