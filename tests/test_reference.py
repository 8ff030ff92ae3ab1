"""The built-in SNAP reference and the calculator factory, tested against physics."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from nnprefine.errors import ConfigError, UnsupportedElementError
from nnprefine.reference import SnapReference, make_reference
from nnprefine.structures import be0001_slab

# Measured with the standalone LAMMPS input docs/lammps/hcp_be_relax.in (see docs/reference.md).
LAMMPS_A, LAMMPS_C, LAMMPS_E = 2.23951, 3.60432, -3.278170


def _energy(atoms: Atoms) -> float:
    return atoms.get_potential_energy()


def _fd_forces(atoms: Atoms, indices, h: float = 1e-4) -> np.ndarray:
    out = np.zeros((len(indices), 3))
    for n, i in enumerate(indices):
        for k in range(3):
            p = atoms.positions.copy()
            p[i, k] += h
            atoms.positions = p
            ep = _energy(atoms)
            p[i, k] -= 2 * h
            atoms.positions = p
            em = _energy(atoms)
            p[i, k] += h
            atoms.positions = p
            out[n, k] = -(ep - em) / (2 * h)
    return out


@pytest.fixture(scope="module")
def rattled_bulk() -> Atoms:
    atoms = bulk("Be", "hcp", a=2.24, c=3.60).repeat((2, 2, 2))
    atoms.rattle(0.08, seed=3)
    atoms.calc = SnapReference()
    return atoms


def test_forces_are_minus_energy_gradient(rattled_bulk):
    atoms = rattled_bulk
    forces = atoms.get_forces()
    idx = [0, 5, 11]
    fd = _fd_forces(atoms, idx)
    np.testing.assert_allclose(forces[idx], fd, atol=2e-6, rtol=1e-5)


def test_forces_on_slab_with_atom_far_in_vacuum():
    slab = be0001_slab(size=(3, 3, 4), vacuum_A=6.0)
    slab.rattle(0.05, seed=1)
    slab.positions[0, 2] += 300.0  # a sputtered atom, far beyond the cell
    slab.calc = SnapReference()
    e_far = slab.get_potential_energy()
    forces = slab.get_forces(apply_constraint=False)
    assert np.allclose(forces[0], 0.0, atol=1e-12)  # out of range of everything
    # The isolated atom contributes a constant; moving it further changes nothing.
    slab.positions[0, 2] += 500.0
    assert slab.get_potential_energy() == pytest.approx(e_far, abs=1e-9)
    idx = [1, 12]
    np.testing.assert_allclose(
        slab.get_forces(apply_constraint=False)[idx], _fd_forces(slab, idx), atol=2e-6, rtol=1e-5
    )


def test_stress_matches_finite_strain(rattled_bulk):
    atoms = rattled_bulk.copy()
    atoms.calc = SnapReference()
    stress = atoms.get_stress(voigt=False)
    volume = atoms.get_volume()
    cell0 = atoms.cell.array.copy()
    pos0 = atoms.positions.copy()
    h = 1e-5
    fd = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[i, j] += sign * h
                atoms.set_cell(cell0 @ strain, scale_atoms=False)
                atoms.positions = pos0 @ strain
                energies.append(atoms.get_potential_energy())
            fd[i, j] = (energies[0] - energies[1]) / (2 * h) / volume
    fd = 0.5 * (fd + fd.T)
    np.testing.assert_allclose(stress, fd, atol=1e-6)


def test_energy_invariant_under_translation_and_rotation(rattled_bulk):
    atoms = rattled_bulk.copy()
    atoms.calc = SnapReference()
    e0 = atoms.get_potential_energy()
    f0 = atoms.get_forces()
    moved = atoms.copy()
    moved.translate([0.37, -1.3, 2.2])
    moved.calc = SnapReference()
    assert moved.get_potential_energy() == pytest.approx(e0, abs=1e-9)
    rotated = atoms.copy()
    rotated.rotate(37.0, (0.3, 0.5, 0.8), rotate_cell=True)
    rotated.calc = SnapReference()
    assert rotated.get_potential_energy() == pytest.approx(e0, abs=1e-8)
    rot = np.linalg.solve(atoms.cell.array, rotated.cell.array)
    np.testing.assert_allclose(rotated.get_forces(), f0 @ rot, atol=1e-8)


def test_mixed_w_be_cell():
    atoms = bulk("Be", "hcp", a=2.24, c=3.60).repeat((2, 2, 2))
    atoms.symbols[[0, 7]] = "W"
    atoms.rattle(0.03, seed=2)
    atoms.calc = SnapReference()
    e = atoms.get_potential_energy()
    assert np.isfinite(e)
    pure = atoms.copy()
    pure.symbols[:] = "Be"
    pure.calc = SnapReference()
    assert abs(pure.get_potential_energy() - e) > 0.1  # W is not Be
    np.testing.assert_allclose(
        atoms.get_forces()[[0, 3]], _fd_forces(atoms, [0, 3]), atol=5e-6, rtol=1e-5
    )


def test_unsupported_element_is_a_clear_error():
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.calc = SnapReference()
    with pytest.raises(UnsupportedElementError, match="Cu"):
        atoms.get_potential_energy()


def test_instance_is_reused_and_rebuilt_on_cell_change(rattled_bulk):
    calc = SnapReference()
    atoms = rattled_bulk.copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    first = calc._lmp
    atoms.positions[0] += 0.01
    atoms.get_potential_energy()
    assert calc._lmp is first
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    atoms.get_potential_energy()
    assert calc._lmp is not first
    calc.close()
    assert calc._lmp is None


def test_relaxed_hcp_matches_standalone_lammps():
    from nnprefine.structures import relax_bulk

    res = relax_bulk(SnapReference(), a_A=2.28, c_A=3.55)
    assert res["converged"]
    assert res["a_A"] == pytest.approx(LAMMPS_A, abs=2e-4)
    assert res["c_A"] == pytest.approx(LAMMPS_C, abs=5e-4)
    assert res["energy_eV_per_atom"] == pytest.approx(LAMMPS_E, abs=1e-5)


def test_factory_builds_builtin_and_any_ase_calculator():
    assert isinstance(make_reference(None), SnapReference)
    assert isinstance(make_reference({"calculator": "builtin-snap"}), SnapReference)
    emt = make_reference({"calculator": "ase.calculators.emt:EMT", "kwargs": {}})
    assert isinstance(emt, EMT)
    assert isinstance(make_reference("ase.calculators.emt.EMT"), EMT)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"calculator": "no_such_module_xyz:Calc"}, "cannot import"),
        ({"calculator": "ase.calculators.emt:Nope"}, "has no"),
        ({"calculator": "fractions:Fraction", "kwargs": {"bogus": 1}}, "do not fit"),
        ({"calculater": "builtin-snap"}, "unknown reference key"),
        (42, "must be a table"),
    ],
)
def test_factory_errors_name_the_problem(spec, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_reference(spec)
