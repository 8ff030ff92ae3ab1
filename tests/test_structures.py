"""Slab builders, relaxation and NVT equilibration."""

from __future__ import annotations

import numpy as np
import pytest

from nnprefine.errors import ConfigError
from nnprefine.reference import SnapReference
from nnprefine.structures import (
    SLAB_PRESETS,
    be0001_slab,
    be01m10_slab,
    equilibrate_nvt,
    fixed_mask,
    make_slab,
    relax_slab,
)


@pytest.mark.parametrize(
    "preset, n_atoms, lateral_A",
    [
        ("be0001-96", 96, (4 * 2.28, 4 * 2.28)),
        ("be0001-490", 490, (7 * 2.28, 7 * 2.28)),
        ("be01m10-480", 480, (6 * 2.28, 5 * 3.55)),
    ],
)
def test_presets_have_the_papers_counts_and_sizes(preset, n_atoms, lateral_A):
    p = SLAB_PRESETS[preset]
    slab = make_slab(p["surface"], p["size"], a_A=2.28, c_A=3.55, vacuum_A=p["vacuum_A"])
    assert len(slab) == n_atoms
    lengths = slab.cell.lengths()
    assert lengths[0] == pytest.approx(lateral_A[0])
    assert lengths[1] == pytest.approx(lateral_A[1])
    assert list(slab.pbc) == [True, True, False]
    layers = p["size"][2]
    mask = fixed_mask(slab)
    # Bottom two layers fixed, the rest free.
    assert mask.sum() == 2 * n_atoms // layers
    assert slab.positions[mask, 2].max() < slab.positions[~mask, 2].min()
    # Vacuum on both sides along z.
    z = slab.positions[:, 2]
    assert z.min() == pytest.approx(p["vacuum_A"])
    assert lengths[2] - z.max() == pytest.approx(p["vacuum_A"])


def test_paper_small_slab_cell():
    slab = be0001_slab(size=(4, 4, 6), a_A=2.28, c_A=3.55, vacuum_A=5.8)
    # Paper: 9.1 x 9.1 x 20.6 Å
    np.testing.assert_allclose(slab.cell.lengths(), [9.12, 9.12, 20.475], atol=0.15)
    assert slab.info["provenance"][0]["step"] == "be0001_slab"


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ConfigError, match="fixed_layers"):
        be0001_slab(size=(2, 2, 2), fixed_layers=2)
    with pytest.raises(ConfigError, match="even"):
        be01m10_slab(size=(2, 3, 4))
    with pytest.raises(ConfigError, match="unknown hcp surface"):
        make_slab("111", (2, 2, 2), 2.24, 3.6)


def test_relaxation_keeps_fixed_atoms_and_reaches_fmax():
    slab = be0001_slab(size=(3, 3, 4), vacuum_A=6.0)
    slab.rattle(0.03, seed=4)
    fixed_before = slab.positions[fixed_mask(slab)].copy()
    relax_slab(slab, SnapReference(), fmax_eV_per_A=1e-3)
    forces = slab.get_forces()  # constrained forces: zero on fixed atoms
    assert np.linalg.norm(forces, axis=1).max() < 1e-3
    np.testing.assert_array_equal(slab.positions[fixed_mask(slab)], fixed_before)
    # Surface relaxation of Be(0001): the top layer moves but stays bound.
    assert slab.info["provenance"][-1]["step"] == "relax_slab"


def test_nvt_reaches_target_temperature():
    slab = be0001_slab(size=(3, 3, 4), vacuum_A=6.0)
    relax_slab(slab, SnapReference(), fmax_eV_per_A=1e-2)
    equilibrate_nvt(
        slab,
        SnapReference(),
        temperature_K=300.0,
        duration_fs=300.0,
        timestep_fs=1.0,
        seed=7,
        thermostat="langevin",
        damping_fs=20.0,
    )
    from ase import units
    from ase.md.verlet import VelocityVerlet

    # Continue without thermostat: an equilibrated state keeps its temperature on average.
    temps = []
    dyn = VelocityVerlet(slab, 1.0 * units.fs)
    dyn.attach(lambda: temps.append(slab.get_temperature()), interval=5)
    dyn.run(150)
    # 54 free atoms: the instantaneous temperature fluctuates by ~sqrt(2/(3N)) ≈ 11 %.
    assert 300.0 * 0.75 < np.mean(temps) < 300.0 * 1.25
    assert np.all(slab.get_velocities()[fixed_mask(slab)] == 0.0)
    assert slab.info["provenance"][-1]["seed"] == 7


def test_energy_only_relaxation_agrees_with_stress_relaxation():
    """A calculator without stress is relaxed by minimising E(a, c); same answer as with stress."""
    from nnprefine.structures import _relax_by_energy, relax_bulk

    with_stress = relax_bulk(SnapReference(), a_A=2.28, c_A=3.55)
    by_energy = _relax_by_energy(SnapReference(), "Be", "hcp", 2.28, 3.55)
    assert by_energy["converged"]
    assert by_energy["a_A"] == pytest.approx(with_stress["a_A"], abs=2e-4)
    assert by_energy["c_A"] == pytest.approx(with_stress["c_A"], abs=5e-4)
    assert by_energy["energy_eV_per_atom"] == pytest.approx(
        with_stress["energy_eV_per_atom"], abs=1e-6
    )


@pytest.mark.parametrize("crystal", ["bcc", "fcc"])
@pytest.mark.parametrize("surface", ["100", "110", "111"])
def test_cubic_slabs_from_ase_builders_have_layers_and_fixed_bottom(crystal, surface):
    """bcc and fcc slabs: rectangular periodic cell, layers tagged 1 = top with z falling,
    the bottom fixed_layers held, provenance recorded."""
    from nnprefine.structures import make_slab

    slab = make_slab(surface, (2, 2, 4), 3.17, 3.17, 6.0, 2, "W", crystal)
    assert list(slab.pbc) == [True, True, False]
    assert slab.cell.angles() == pytest.approx([90.0, 90.0, 90.0])
    tags = slab.get_tags()
    z = [slab.positions[tags == t, 2].mean() for t in (1, 2, 3, 4)]
    assert np.all(np.diff(z) < 0)  # layer 1 is the top one
    assert set(np.flatnonzero(fixed_mask(slab))) == set(np.flatnonzero(tags >= 3))
    assert slab.info["surface"] == surface
    assert slab.info["provenance"][-1]["crystal"] == crystal
    # vacuum on each side: the top layer is 6 Å below the cell's top
    assert slab.cell[2, 2] - slab.positions[:, 2].max() == pytest.approx(6.0)


def test_surface_of_another_crystal_is_a_clear_error():
    from nnprefine.structures import make_slab

    with pytest.raises(ConfigError, match=r"unknown bcc surface '0001'.*100, 110, 111"):
        make_slab("0001", (2, 2, 4), 3.17, 3.17, 6.0, 2, "W", "bcc")
    with pytest.raises(ConfigError, match="unknown crystal 'diamond'"):
        make_slab("100", (2, 2, 4), 3.17, 3.17, 6.0, 2, "W", "diamond")


def test_bcc_tungsten_relaxes_to_the_minimum_of_its_energy():
    """W bcc with the built-in SNAP: the relaxed a is a minimum of E(a) (both neighbours
    higher), the stress and energy-only paths agree, c reports the cube's edge."""
    from nnprefine.structures import _relax_by_energy, bulk_cell, relax_bulk

    calc = SnapReference()
    rec = relax_bulk(calc, "W", "bcc", a_A=3.10)
    assert rec["converged"] and rec["crystal"] == "bcc"
    assert 3.10 < rec["a_A"] < 3.25 and rec["c_A"] == rec["a_A"]

    def energy(a):
        atoms = bulk_cell("W", "bcc", a)
        atoms.calc = calc
        return atoms.get_potential_energy() / len(atoms)

    e0 = energy(rec["a_A"])
    assert e0 == pytest.approx(rec["energy_eV_per_atom"], abs=1e-6)
    assert energy(rec["a_A"] * 0.995) > e0 and energy(rec["a_A"] * 1.005) > e0
    by_energy = _relax_by_energy(calc, "W", "bcc", 3.10, 3.10)
    assert by_energy["a_A"] == pytest.approx(rec["a_A"], abs=2e-4)


def test_fcc_copper_with_emt_gives_its_known_lattice_constant():
    """ASE's EMT for Cu has its minimum at a = 3.590 Å (fcc)."""
    from ase.calculators.emt import EMT

    from nnprefine.structures import relax_bulk

    rec = relax_bulk(EMT(), "Cu", "fcc", a_A=3.5, c_A=None)
    assert rec["a_A"] == pytest.approx(3.590, abs=2e-3)
