"""Tests of nnprefine.descriptors: definitions, n2p2 lines, kernels, neighbours, scaling.

The kernels are checked against a slow reference written here from the formulas (explicit
periodic images, explicit pair loops), against central finite differences of
E = Σ w·G for forces and stress, by invariances, by ⟨u, Jv⟩ = ⟨Jᵀu, v⟩, and for
identical results on 1 and 2 threads.
"""

from __future__ import annotations

import itertools
import json
import math

import numba
import numpy as np
import pytest
from ase.build import bulk, hcp0001

from nnprefine.descriptors import (
    Descriptor,
    InputScaling,
    NarrowAngularG3,
    RadialG2,
    SymmetryFunctionSet,
    WideAngularG9,
    build_neighbours,
    make_set,
    paper_set,
)
from nnprefine.errors import ConfigError, ModelError, NnprefineError, UnsupportedElementError

# ----------------------------------------------------------------------------- reference


def _fc(r, rc, cutoff, alpha):
    """Cutoff functions written out from n2p2's documented formulas."""
    if r >= rc:
        return 0.0
    rci = alpha * rc
    if r < rci:
        return 1.0
    x = (r - rci) / (rc - rci)
    return {
        "cos": lambda: 0.5 * (math.cos(math.pi * x) + 1.0),
        "poly1": lambda: (2 * x - 3) * x**2 + 1,
        "poly2": lambda: ((15 - 6 * x) * x - 10) * x**3 + 1,
        "poly3": lambda: (x * (x * (20 * x - 70) + 84) - 35) * x**4 + 1,
        "poly4": lambda: (x * (x * ((315 - 70 * x) * x - 540) + 420) - 126) * x**5 + 1,
    }[cutoff]()


def _images(atoms, i, rc):
    """All (j, vector) with 0 < |r_j + S·cell − r_i| < rc, by looping over enough shifts."""
    cell = atoms.cell.array
    ranges = []
    for a in range(3):
        if atoms.pbc[a]:
            others = np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3])
            height = abs(np.dot(cell[a], others)) / np.linalg.norm(others)
            n = int(math.ceil(rc / height)) + 1
            ranges.append(range(-n, n + 1))
        else:
            ranges.append(range(0, 1))
    out = []
    for s in itertools.product(*ranges):
        off = np.array(s) @ cell
        for j in range(len(atoms)):
            d = atoms.positions[j] + off - atoms.positions[i]
            r = np.linalg.norm(d)
            if 0.0 < r < rc:
                out.append((j, d))
    return out


def reference_values(atoms, sfset):
    """G by the textbook double sums, one function at a time."""
    sym = atoms.get_chemical_symbols()
    G = np.zeros((len(atoms), sfset.max_functions))
    for i in range(len(atoms)):
        nbs = _images(atoms, i, sfset.r_cut)
        for col, f in enumerate(sfset.functions_for(sym[i])):

            def fc(r, f=f):
                return _fc(r, f.r_cut, f.cutoff, f.cutoff_alpha)

            if isinstance(f, RadialG2):
                G[i, col] = sum(
                    math.exp(-f.eta * (np.linalg.norm(d) - f.r_shift) ** 2) * fc(np.linalg.norm(d))
                    for j, d in nbs
                    if sym[j] == f.neighbours[0]
                )
                continue
            total = 0.0
            for (j, dj), (k, dk) in itertools.combinations(nbs, 2):
                if sorted((sym[j], sym[k])) != sorted(f.neighbours):
                    continue
                rj, rk, rjk = np.linalg.norm(dj), np.linalg.norm(dk), np.linalg.norm(dj - dk)
                cos = np.dot(dj, dk) / (rj * rk)
                rad = (rj - f.r_shift) ** 2 + (rk - f.r_shift) ** 2
                cut = fc(rj) * fc(rk)
                if isinstance(f, NarrowAngularG3):
                    rad += (rjk - f.r_shift) ** 2
                    cut *= fc(rjk)
                total += max(0.0, 1 + f.lambda_ * cos) ** f.zeta * math.exp(-f.eta * rad) * cut
            G[i, col] = 2 ** (1 - f.zeta) * total
    return G


# ----------------------------------------------------------------------------- fixtures


def _mixed_set(cutoff="cos", alpha=0.0, r_cut=4.2):
    """Every code path: r_s ≠ 0, integer and non-integer ζ, two radii, 1 and 2 elements."""
    kw = dict(cutoff=cutoff, cutoff_alpha=alpha)
    f = []
    for el in ("Be", "W"):
        f += [
            RadialG2(el, ("Be",), eta=0.3, r_shift=1.8, r_cut=r_cut, **kw),
            RadialG2(el, ("W",), eta=0.05, r_cut=r_cut - 0.5, **kw),
            NarrowAngularG3(el, ("Be", "Be"), eta=0.02, zeta=2, lambda_=-1, r_cut=r_cut, **kw),
            NarrowAngularG3(el, ("W", "Be"), eta=0.01, zeta=1.5, lambda_=1, r_cut=r_cut, **kw),
            NarrowAngularG3(el, ("Be", "Be"), eta=0.02, zeta=16, lambda_=1, r_cut=r_cut, **kw),
            WideAngularG9(el, ("Be", "Be"), eta=0.03, zeta=4, lambda_=-1, r_cut=r_cut, **kw),
            WideAngularG9(el, ("Be", "W"), eta=0.03, zeta=2, lambda_=1, r_cut=r_cut, **kw),
            WideAngularG9(el, ("W", "W"), eta=0.01, zeta=1, lambda_=-1, r_cut=r_cut - 0.7, **kw),
            WideAngularG9(el, ("Be", "Be"), eta=0.0, zeta=2.5, lambda_=1, r_cut=r_cut, **kw),
            WideAngularG9(
                el, ("Be", "Be"), eta=0.1, zeta=3, lambda_=1, r_shift=0.7, r_cut=r_cut, **kw
            ),
        ]
    return SymmetryFunctionSet(tuple(f))


def _bulk(seed=0):
    a = bulk("Be", "hcp", a=2.24, c=3.60).repeat((2, 2, 1))
    a.rattle(0.08, seed=seed)
    return a


def _two_elements(seed=1):
    a = _bulk(seed)
    a.numbers[[1, 4]] = 74
    return a


def _slab(seed=2):
    a = hcp0001("Be", size=(2, 2, 2), a=2.24, c=3.60, vacuum=4.0)
    a.rattle(0.08, seed=seed)
    a.numbers[2] = 74
    return a


def _small_cell(seed=3):
    """A 2-atom cell (2.24 × 2.24 × 3.6 Å) far below 2·r_c: many images of each atom."""
    a = bulk("Be", "hcp", a=2.24, c=3.60)
    a.numbers[1] = 74
    a.rattle(0.05, seed=seed)
    return a


STRUCTURES = {
    "bulk": _bulk,
    "two_elements": _two_elements,
    "slab": _slab,
    "small_cell": _small_cell,
}


def _energy(desc, atoms, w):
    return float(np.sum(w * desc.values(atoms)))


def _numerical_forces(desc, atoms, w, h=1e-5):
    """−∂(Σ w·G)/∂r by central differences, (n_atoms, 3)."""
    F_num = np.zeros((len(atoms), 3))
    for k in range(len(atoms)):
        for a in range(3):
            p, m = atoms.copy(), atoms.copy()
            p.positions[k, a] += h
            m.positions[k, a] -= h
            F_num[k, a] = -(_energy(desc, p, w) - _energy(desc, m, w)) / (2 * h)
    return F_num


def _padding_mask(sfset, atoms):
    sym = atoms.get_chemical_symbols()
    m = np.zeros((len(atoms), sfset.max_functions))
    for i, s in enumerate(sym):
        m[i, : sfset.n_functions(s)] = 1.0
    return m


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", ["two_elements", "slab", "small_cell"])
def test_values_match_reference(name):
    atoms = STRUCTURES[name]()
    sfset = _mixed_set()
    G = Descriptor(sfset, skin_A=0.5).values(atoms)
    ref = reference_values(atoms, sfset)
    assert G.shape == (len(atoms), sfset.max_functions)
    np.testing.assert_allclose(G, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "cutoff,alpha", [("poly2", 0.3), ("poly4", 0.0), ("poly1", 0.5), ("poly3", 0.2), ("cos", 0.4)]
)
def test_cutoff_variants_match_reference(cutoff, alpha):
    atoms = _small_cell()
    sfset = _mixed_set(cutoff, alpha)
    np.testing.assert_allclose(
        Descriptor(sfset).values(atoms), reference_values(atoms, sfset), rtol=1e-10, atol=1e-12
    )


def test_tensor_and_triplet_paths_agree_on_paper_set():
    atoms = _bulk()
    sfset = paper_set("Be", r_cut_A=5.0)
    fast, slow = Descriptor(sfset), Descriptor(sfset, wide_by_tensor=False)
    np.testing.assert_allclose(fast.values(atoms), slow.values(atoms), rtol=1e-11)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(len(atoms), sfset.max_functions))
    np.testing.assert_allclose(fast.forces(atoms, w)[0], slow.forces(atoms, w)[0], atol=1e-10)
    v = rng.normal(size=(len(atoms), 3))
    np.testing.assert_allclose(fast.jvp(atoms, v), slow.jvp(atoms, v), rtol=1e-9, atol=1e-10)


def _shared_exp_set(r_cut=4.5):
    """G3 only (so triplet rows are compacted to r_jk < r_c), with η in integer ratios
    (shared exponentials), ζ powers of two and not (squaring ladder and repeated
    squaring), and a group without partner of its η ratio."""
    fs = [
        NarrowAngularG3("Be", ("Be", "Be"), eta=eta, r_cut=r_cut, zeta=zeta, lambda_=lam)
        for eta in (0.004, 0.02, 0.06, 0.045)
        for zeta, lam in ((1.0, 1.0), (2.0, -1.0), (3.0, 1.0), (16.0, -1.0))
    ]
    return SymmetryFunctionSet(tuple(fs), ("Be",))


def test_compacted_rows_and_shared_exponentials_match_reference_and_finite_differences():
    atoms = _slab()
    atoms.numbers[:] = 4
    sfset = _shared_exp_set()
    desc = Descriptor(sfset, skin_A=0.5)
    np.testing.assert_allclose(
        desc.values(atoms), reference_values(atoms, sfset), rtol=1e-11, atol=1e-13
    )
    w = np.random.default_rng(3).normal(size=(len(atoms), sfset.max_functions))
    F = desc.forces(atoms, w)[0]
    F_num = _numerical_forces(desc, atoms, w)
    assert np.max(np.abs(F - F_num)) < 1e-6 * np.max(np.abs(F_num))


# ----------------------------------------------------------------------------- derivatives


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_forces_and_stress_are_finite_differences(name):
    atoms = STRUCTURES[name]()
    sfset = _mixed_set()
    desc = Descriptor(sfset, skin_A=0.5)
    rng = np.random.default_rng(7)
    w = rng.normal(size=(len(atoms), sfset.max_functions)) * _padding_mask(sfset, atoms)
    F, virial = desc.forces(atoms, w)
    F_num = _numerical_forces(desc, atoms, w)
    assert np.max(np.abs(F - F_num)) < 1e-6 * np.max(np.abs(F_num))
    # dE/dε by straining cell and positions together; stress = −virial / V
    h = 1e-5
    dEde = np.zeros((3, 3))
    for a, b in itertools.product(range(3), range(3)):
        grads = []
        for sign in (1, -1):
            eps = np.eye(3)
            eps[a, b] += sign * h
            s = atoms.copy()
            s.set_cell(atoms.cell.array @ eps, scale_atoms=False)
            s.positions = atoms.positions @ eps
            grads.append(_energy(desc, s, w))
        dEde[a, b] = (grads[0] - grads[1]) / (2 * h)
    assert np.max(np.abs(-virial - dEde)) < 1e-6 * np.max(np.abs(dEde))


def test_forces_sum_to_zero_and_values_and_forces_is_consistent():
    atoms = _two_elements()
    sfset = _mixed_set()
    desc = Descriptor(sfset)
    w = np.random.default_rng(3).normal(size=(len(atoms), sfset.max_functions))
    G, F, virial = desc.values_and_forces(atoms, w)
    np.testing.assert_allclose(F.sum(axis=0), 0.0, atol=1e-10)
    np.testing.assert_array_equal(G, desc.values(atoms))
    F2, virial2 = desc.forces(atoms, w)
    np.testing.assert_array_equal(F, F2)
    np.testing.assert_allclose(virial, virial.T, atol=1e-9 * np.abs(virial).max())


@pytest.mark.parametrize("name", ["two_elements", "small_cell"])
def test_jvp_is_transpose_of_force_pass_and_a_directional_derivative(name):
    atoms = STRUCTURES[name]()
    sfset = _mixed_set()
    desc = Descriptor(sfset)
    rng = np.random.default_rng(11)
    mask = _padding_mask(sfset, atoms)
    u = rng.normal(size=(len(atoms), sfset.max_functions)) * mask
    v = rng.normal(size=(len(atoms), 3))
    Jv = desc.jvp(atoms, v)
    JTu = -desc.forces(atoms, u)[0]  # forces = −Jᵀ u
    assert np.sum(u * Jv) == pytest.approx(np.sum(JTu * v), rel=1e-10)
    h = 1e-5
    p, m = atoms.copy(), atoms.copy()
    p.positions += h * v
    m.positions -= h * v
    num = (desc.values(p) - desc.values(m)) / (2 * h)
    assert np.max(np.abs(Jv - num)) < 1e-6 * np.max(np.abs(num))
    assert np.all(Jv[mask == 0] == 0.0)


@pytest.mark.parametrize("name", ["two_elements", "slab", "small_cell"])
@pytest.mark.parametrize("wide_by_tensor", [True, False])
def test_jacobian_blocks_give_the_force_pass_the_jvp_and_finite_differences(name, wide_by_tensor):
    atoms = STRUCTURES[name]()
    sfset = _mixed_set()
    desc = Descriptor(sfset, skin_A=0.5, wide_by_tensor=wide_by_tensor)
    nb = desc.neighbours(atoms)
    G, B = desc.jacobian(atoms, neighbours=nb)
    np.testing.assert_array_equal(G, desc.values(atoms, neighbours=nb))
    i_p = np.repeat(np.arange(len(atoms)), np.diff(nb.offsets))
    rng = np.random.default_rng(5)
    w = rng.normal(size=G.shape) * _padding_mask(sfset, atoms)
    h = np.einsum("pg,pgc->pc", w[i_p], B)  # ∂E/∂d_p
    F = np.zeros((len(atoms), 3))
    np.add.at(F, i_p, h)
    np.add.at(F, nb.j, -h)
    F_pass = desc.forces(atoms, w, neighbours=nb)[0]
    np.testing.assert_allclose(F, F_pass, atol=1e-11 * np.abs(F_pass).max())
    v = rng.normal(size=(len(atoms), 3))
    Jv = np.zeros_like(G)
    np.add.at(Jv, i_p, np.einsum("pgc,pc->pg", B, v[nb.j] - v[i_p]))
    np.testing.assert_allclose(Jv, desc.jvp(atoms, v, neighbours=nb), atol=1e-11 * np.abs(Jv).max())
    # one block against central differences of G_i in the position of neighbour j alone
    d = 1e-5
    k, a = 1, 2
    p, m = atoms.copy(), atoms.copy()
    p.positions[k, a] += d
    m.positions[k, a] -= d
    num = (desc.values(p) - desc.values(m)) / (2 * d)
    dG = np.zeros_like(G)
    np.add.at(dG, i_p[nb.j == k], B[nb.j == k, :, a])
    dG[k] -= B[i_p == k, :, a].sum(axis=0)
    assert np.max(np.abs(dG - num)) < 1e-6 * np.max(np.abs(num))
    # entries beyond the cutoff (inside the skin) are zero blocks
    r = np.linalg.norm(
        atoms.positions[nb.j] + nb.shift @ atoms.cell.array - atoms.positions[i_p], axis=1
    )
    assert np.all(B[r >= sfset.r_cut] == 0.0)


# ----------------------------------------------------------------------------- invariances


def test_translation_rotation_permutation_invariance():
    atoms = _two_elements()
    sfset = _mixed_set()
    desc = Descriptor(sfset)
    G = desc.values(atoms)
    w = np.random.default_rng(5).normal(size=G.shape)
    F, virial = desc.forces(atoms, w)

    moved = atoms.copy()
    moved.positions += np.array([0.7, -1.3, 2.1])
    moved.wrap()
    np.testing.assert_allclose(desc.values(moved), G, rtol=1e-11, atol=1e-12)

    rot = atoms.copy()
    rot.rotate(37.0, (1, 2, 3), rotate_cell=True)
    R = rot.cell.array.T @ np.linalg.inv(atoms.cell.array.T)
    np.testing.assert_allclose(desc.values(rot), G, rtol=1e-11, atol=1e-12)
    F_rot, virial_rot = desc.forces(rot, w)
    np.testing.assert_allclose(F_rot, F @ R.T, atol=1e-9)
    np.testing.assert_allclose(virial_rot, R @ virial @ R.T, atol=1e-9)

    perm = np.random.default_rng(2).permutation(len(atoms))
    shuffled = atoms[perm]
    np.testing.assert_allclose(desc.values(shuffled), G[perm], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(desc.forces(shuffled, w[perm])[0], F[perm], atol=1e-10)


def test_equivalent_atoms_have_equal_values():
    atoms = bulk("Be", "hcp", a=2.24, c=3.60).repeat((2, 2, 2))
    G = Descriptor(make_set(["Be"], 4, 4, 4, 5.0)).values(atoms)
    np.testing.assert_allclose(G, np.broadcast_to(G[0], G.shape), rtol=1e-11)


def test_results_do_not_depend_on_thread_count():
    atoms = _bulk().repeat((2, 1, 1))
    sfset = _mixed_set()
    desc = Descriptor(sfset)
    rng = np.random.default_rng(9)
    w = rng.normal(size=(len(atoms), sfset.max_functions))
    v = rng.normal(size=(len(atoms), 3))
    before = numba.get_num_threads()
    out = []
    try:
        for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(n)
            out.append((*desc.values_and_forces(atoms, w), desc.jvp(atoms, v)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_neighbour_list_matches_brute_force(name):
    atoms = STRUCTURES[name]()
    nbl = build_neighbours(atoms, 4.0)
    for i in range(len(atoms)):
        got = []
        for p in range(nbl.offsets[i], nbl.offsets[i + 1]):
            d = atoms.positions[nbl.j[p]] + nbl.shift[p] @ atoms.cell.array - atoms.positions[i]
            got.append((int(nbl.j[p]), *np.round(d, 8)))
        want = [(j, *np.round(d, 8)) for j, d in _images(atoms, i, 4.0)]
        assert sorted(got) == sorted(want)


def test_neighbour_list_is_reused_within_half_the_skin():
    atoms = _bulk()
    desc = Descriptor(_mixed_set(), skin_A=1.0)
    desc.values(atoms)
    assert desc.n_builds == 1
    nudged = atoms.copy()
    nudged.positions[3] += [0.3, 0.2, 0.0]  # < skin/2: the old list still holds every pair
    G_reused = desc.values(nudged)
    assert desc.n_builds == 1
    np.testing.assert_allclose(G_reused, Descriptor(_mixed_set()).values(nudged), rtol=1e-12)
    nudged.positions[3] += [0.4, 0.0, 0.0]
    desc.values(nudged)
    assert desc.n_builds == 2
    # an explicit list for another structure is refused
    with pytest.raises(ModelError, match="another structure"):
        desc.values(_slab(), neighbours=desc.neighbours(atoms))


def test_unsupported_element_is_named():
    desc = Descriptor(make_set(["Be"], 2, 0, 0, 4.0))
    atoms = _two_elements()
    with pytest.raises(UnsupportedElementError, match=r"\['W'\].*\['Be'\]"):
        desc.values(atoms)


# ----------------------------------------------------------------------------- definitions


def test_n2p2_lines_round_trip_and_format():
    sfset = _mixed_set("poly2", 0.25)
    lines = sfset.to_n2p2_lines()
    assert lines[0] == "cutoff_type 6 0.25"
    assert "symfunction_short Be 2 Be 0.3 1.8 4.2" in lines
    assert "symfunction_short Be 3 Be W 0.01 1.0 1.5 4.2" in lines  # pair sorted by Z
    assert "symfunction_short Be 9 Be Be 0.1 1.0 3.0 4.2 0.7" in lines
    assert SymmetryFunctionSet.from_n2p2_lines(lines) == sfset
    assert SymmetryFunctionSet.from_dict(sfset.to_dict()) == sfset
    g = WideAngularG9.from_n2p2_line("symfunction_short W 9 Be W 0.5 -1 4 6.0  # comment")
    assert (g.element, g.neighbours, g.eta, g.lambda_, g.zeta, g.r_cut) == (
        "W",
        ("Be", "W"),
        0.5,
        -1.0,
        4.0,
        6.0,
    )
    assert (
        RadialG2.from_n2p2_line(g2 := "symfunction_short Be 2 W 0.01 0.5 5.0").to_n2p2_line() == g2
    )


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: RadialG2("Be", ("Be",), eta=-0.1, r_cut=5.0), "eta"),
        (lambda: RadialG2("Be", ("Be",), eta=0.1, r_cut=0.0), "r_cut"),
        (lambda: NarrowAngularG3("Be", ("Be", "Be"), eta=0.1, zeta=0.5, r_cut=5.0), "zeta"),
        (lambda: WideAngularG9("Be", ("Be", "Be"), eta=0.1, lambda_=0.5, r_cut=5.0), "lambda"),
        (lambda: RadialG2("Be", ("Be",), eta=0.1, r_cut=5.0, cutoff="tanh"), "cutoff"),
        (lambda: RadialG2("Xx", ("Be",), eta=0.1, r_cut=5.0), "element"),
        (lambda: WideAngularG9("Be", ("Be",), eta=0.1, r_cut=5.0), "2 neighbour"),
        (lambda: SymmetryFunctionSet.from_n2p2_lines(["symfunction_short Be 4 Be 1 2 3"]), "type"),
        (lambda: SymmetryFunctionSet((RadialG2("Be", ("W",), eta=0.1, r_cut=5.0),)), "W"),
    ],
)
def test_invalid_parameters_are_rejected_clearly(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_set_accessors_and_generators():
    p = paper_set("Be", r_cut_A=7.0)
    kinds = [type(f) for f in p.functions]
    assert (kinds.count(RadialG2), kinds.count(NarrowAngularG3), kinds.count(WideAngularG9)) == (
        9,
        24,
        20,
    )
    assert p.elements == ("Be",) and p.max_functions == 53 and p.r_cut == 7.0
    assert len(set(p.functions)) == 53
    quick = make_set(["Be"], 6, 4, 4, 5.5)
    assert quick.n_functions("Be") == 14 and quick.r_cut == 5.5
    two = make_set(["W", "Be"], 3, 2, 2, 5.0)
    assert two.elements == ("Be", "W")  # by atomic number
    # per central element: 3 G2 × 2 neighbours + (2 + 2) × 3 pairs
    assert two.n_functions("Be") == two.n_functions("W") == 18
    assert len(set(two.functions)) == len(two.functions)
    with pytest.raises(UnsupportedElementError):
        two.functions_for("Fe")
    with pytest.raises(NnprefineError):
        make_set(["Be"], 0, 0, 0, 5.0)


# ----------------------------------------------------------------------------- scaling


def _scaled(sc, el, G):
    a, c = sc.affine(el, G.shape[1])
    return G * a + c


def test_scaling_statistics_and_modes():
    rng = np.random.default_rng(4)
    G = rng.normal(2.0, 3.0, size=(50, 5))
    G[:, 4] = 1.5  # a constant function
    sc = InputScaling.from_values({"Be": G}, mode="scale", s_min=-1.0, s_max=1.0)
    g_min, g_max, g_mean, g_sigma = sc.stats["Be"]
    np.testing.assert_allclose(g_min, G.min(0))
    np.testing.assert_allclose(g_max[:4], G.max(0)[:4])
    np.testing.assert_allclose(g_mean, G.mean(0))
    np.testing.assert_allclose(g_sigma[:4], G.std(0)[:4])
    # a constant function is stored with a unit range and σ = 1, so n2p2 divides by 1
    assert g_max[4] == 2.5 and g_sigma[4] == 1.0

    x = _scaled(sc, "Be", G)
    np.testing.assert_allclose(x[:, :4].min(0), -1.0)
    np.testing.assert_allclose(x[:, :4].max(0), 1.0)
    np.testing.assert_array_equal(x[:, 4], -1.0)
    for mode in ("scalecenter", "scalesigma"):
        sc.mode = mode
        np.testing.assert_array_equal(_scaled(sc, "Be", G)[:, 4], -1.0)
    sc.mode = "center"
    np.testing.assert_allclose(_scaled(sc, "Be", G).mean(0), 0.0, atol=1e-12)

    sc = InputScaling.from_values({"Be": G}, mode="scalesigma")
    np.testing.assert_allclose(_scaled(sc, "Be", G)[:, :4].std(0), 1.0)
    sc = InputScaling.from_values({"Be": G}, mode="scalecenter")
    xc = _scaled(sc, "Be", G)
    np.testing.assert_allclose(xc[:, :4].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.ptp(xc[:, :4], axis=0), 1.0)
    a, _ = sc.affine("Be", 5)
    np.testing.assert_allclose(a, [*(1.0 / np.ptp(G[:, :4], axis=0)), 1.0])
    sc.mode = "none"
    np.testing.assert_array_equal(_scaled(sc, "Be", G), G)


def test_saved_scaling_loads_unchanged():
    """The ``scaling`` entry of a saved model, as written since format version 1."""
    saved = {
        "mode": "scalecenter",
        "s_min": -1.0,
        "s_max": 1.0,
        "stats": {
            "Be": {"min": [0.5, 2.0], "max": [1.5, 3.0], "mean": [1.0, 2.25], "sigma": [0.25, 1.0]}
        },
    }
    sc = InputScaling.from_dict(saved)
    assert sc.to_dict() == saved
    a, c = sc.affine("Be", 2)
    np.testing.assert_array_equal(a, [2.0, 2.0])  # (S_max − S_min)/(G_max − G_min)
    np.testing.assert_array_equal(c, [-3.0, -5.5])  # S_min − a·G_mean
    back = InputScaling.from_dict(json.loads(json.dumps(sc.to_dict())))
    np.testing.assert_array_equal(back.stats["Be"], sc.stats["Be"])


def test_scaling_data_lines_follow_the_given_order():
    G = np.arange(15.0).reshape(3, 5) ** 1.5
    sc = InputScaling.from_values({"Be": G})
    lines = sc.scaling_data_lines(["Be", "W"], {"Be": [4, 3, 2, 1, 0], "W": [1, 0]})
    assert lines[0].startswith("#")
    rows = np.array([ln.split() for ln in lines[1:]], dtype=float)
    np.testing.assert_array_equal(rows[:, 0], [1, 1, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(rows[:, 1], [1, 2, 3, 4, 5, 1, 2])
    # sf_index k holds function order[k − 1], its values to the last bit
    np.testing.assert_array_equal(rows[:5, 2:], sc.stats["Be"][:, [4, 3, 2, 1, 0]].T)
    np.testing.assert_array_equal(rows[5:, 2:], [[0, 1, 0, 1]] * 2)  # W has no statistics


def test_scaling_errors_are_clear():
    G = np.ones((3, 2))
    with pytest.raises(ModelError, match="unknown"):
        InputScaling(mode="minmax")
    with pytest.raises(ModelError, match="s_max > s_min"):
        InputScaling.from_values({"Be": G}, mode="scalesigma", s_min=1.0, s_max=1.0)
    InputScaling(mode="center", s_min=1.0, s_max=1.0)  # the range is unused there
    with pytest.raises(ModelError, match="no Be atoms"):
        InputScaling.from_values({"Be": np.zeros((0, 2))})
    with pytest.raises(ModelError, match="NaN"):
        InputScaling.from_values({"Be": np.array([[1.0, np.nan]])})
    sc = InputScaling.from_values({"Be": G})
    with pytest.raises(ModelError, match="3"):
        sc.affine("Be", 3)
    with pytest.raises(ModelError, match="W"):
        sc.affine("W", 2)
