"""The MD step with a model: neighbour-list reuse with a skin, energy on demand, impacts.

Small models (4 + 2 + 2 symmetry functions, rc 4.5 Å, 6-5 networks) keep it fast; the
physics does not depend on the size of the set.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _tiny import scaled_potential
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from test_md import thermal_slab

from nnprefine.calculators import CommitteeCalculator, NNPCalculator
from nnprefine.descriptors import make_set
from nnprefine.errors import ConfigError
from nnprefine.impact import EarlyStop, ImpactSettings, run_impact
from nnprefine.md import AdaptiveTimestep, MDState, SanityObserver, VelocityVerlet
from nnprefine.model import Committee, NNPotential
from nnprefine.structures import be0001_slab

R_CUT_A = 4.5


@pytest.fixture(scope="module")
def sfset():
    return make_set(["Be"], n_radial=4, n_narrow=2, n_wide=2, r_cut_A=R_CUT_A)


def _potential(sfset, skin_A: float = 0.6, seed: int = 0) -> NNPotential:
    return scaled_potential(sfset, seed=seed, skin_A=skin_A)


def _slab() -> Atoms:
    slab = be0001_slab(size=(3, 3, 4), vacuum_A=6.0, fixed_layers=1)
    rng = np.random.default_rng(7)
    v = rng.normal(scale=0.01, size=(len(slab), 3))  # Å per ASE time unit: ~50 K
    v[slab.get_tags() == 4] = 0.0
    slab.set_velocities(v)
    return slab


def _fresh(pot: NNPotential, positions: np.ndarray, like: Atoms) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) with a neighbour list built for these positions."""
    atoms = Atoms(like.numbers, positions=positions, cell=like.cell, pbc=like.pbc)
    out = pot.evaluate(atoms, pot.descriptor.neighbours(atoms))
    return out["energy"], out["forces"]


def test_neighbour_reuse_gives_the_forces_of_a_fresh_list_along_an_impact(sfset):
    pot = _potential(sfset, skin_A=0.6)
    calc = NNPCalculator(pot)
    frames: list[tuple[int, np.ndarray, np.ndarray, float]] = []

    def record(state: MDState) -> None:
        # the calculator's own (unzeroed) forces: fixed atoms feel forces too
        forces = np.array(state.results["forces"])
        frames.append((state.step, state.positions.copy(), forces, state.energy_eV))

    settings = ImpactSettings(timestep_fs=0.2, duration_fs=12.0, max_extensions=0)
    result = run_impact(_slab(), calc, 100.0, 3, settings, observers=((record, 1),))
    assert not result.unphysical and result.steps == 60
    # the 100 eV projectile moves 0.09 Å per step: the 0.3 Å half-skin is crossed every
    # few steps, so both reused and rebuilt lists are on the path
    assert 5 <= calc.neighbour_builds < result.steps // 2
    slab_like = Atoms(["Be"] * len(frames[0][1]), cell=_slab().cell, pbc=(True, True, False))
    worst_f, worst_e = 0.0, 0.0
    for _, positions, forces, energy in frames:
        e_ref, f_ref = _fresh(pot, positions, slab_like)
        worst_f = max(worst_f, float(np.abs(forces - f_ref).max()))
        worst_e = max(worst_e, abs(energy - e_ref))
    assert worst_f < 1e-10  # rounding: the kernels sum the same pairs in the same order
    assert worst_e < 1e-9


def test_a_skin_violation_triggers_a_rebuild_and_stays_exact(sfset):
    skin = 0.6
    pot = _potential(sfset, skin_A=skin)
    atoms = _slab()
    atoms.calc = calc = NNPCalculator(pot)
    start = atoms.positions.copy()
    atoms.get_forces(apply_constraint=False)
    assert calc.neighbour_builds == 1
    # within half the skin of the build positions (a zigzag, not a drift): reused
    for k, step in enumerate((0.2, -0.15, 0.28)):
        atoms.positions[5] = start[5] + [step, 0.0, 0.0]
        np.testing.assert_allclose(atoms.get_forces(apply_constraint=False), _fresh(pot, atoms.positions, atoms)[1],
                                   atol=1e-10)  # fmt: skip
        assert calc.neighbour_builds == 1, f"move {k}"
    # one atom just beyond half the skin: rebuilt, once
    atoms.positions[5] = start[5] + [0.5 * skin + 0.01, 0.0, 0.0]
    atoms.get_forces(apply_constraint=False)
    assert calc.neighbour_builds == 2
    # A move by more than the skin towards an atom that was outside the list radius
    # would, with the old list, miss a pair inside the cutoff; the rebuild gets it right.
    top = int(np.argmax(atoms.positions[:, 2]))
    atoms.positions[top, 2] += 2.0 * skin
    f = atoms.get_forces(apply_constraint=False)
    assert calc.neighbour_builds == 3
    np.testing.assert_allclose(f, _fresh(pot, atoms.positions, atoms)[1], atol=1e-10)
    # a change of the cell is a rebuild too, whatever the displacements
    atoms.set_cell(atoms.cell.array * [1.001, 1.001, 1.0], scale_atoms=False)
    atoms.get_forces(apply_constraint=False)
    assert calc.neighbour_builds == 4


class EnergyOnRequest(Calculator):
    """EMT that returns the energy only when asked for it, and counts those requests."""

    implemented_properties = ["energy", "forces"]

    def __init__(self) -> None:
        super().__init__()
        self.emt = EMT()
        self.energy_calls = 0
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        a = self.atoms.copy()
        self.results = {"forces": self.emt.get_forces(a)}
        if "energy" in properties:
            self.energy_calls += 1
            self.results["energy"] = self.emt.get_potential_energy(a)


def test_energy_on_demand_never_skips_a_step_an_observer_asked_for():
    atoms = thermal_slab(600.0)
    atoms.calc = calc = EnergyOnRequest()
    dyn = VelocityVerlet(atoms, 2.0)
    needs, sees = [], []

    def needs_energy(state: MDState) -> None:
        needs.append((state.step, state.energy_eV, state.energy_step, state.positions.copy()))

    def reads_no_energy(state: MDState) -> None:
        sees.append((state.step, state.energy_eV, state.energy_is_current))

    dyn.attach(needs_energy, 3, needs_energy=True)
    dyn.attach(reads_no_energy, 1, needs_energy=False)
    dyn.attach(EarlyStop(0, 100.0, 3.0, stop=False), 2)  # declares needs_energy = False
    dyn.run(40.0)  # 20 steps
    # called on exactly its steps, each time with the energy of that very step
    assert [n[0] for n in needs] == list(range(0, 21, 3))
    reference = EMT()
    for step, energy, energy_step, positions in needs:
        assert energy_step == step
        fresh = Atoms(atoms.numbers, positions=positions, cell=atoms.cell, pbc=atoms.pbc)
        assert energy == pytest.approx(reference.get_potential_energy(fresh), abs=1e-10)
    # on the other steps the energy was not asked for, and it says so
    for step, energy, current in sees:
        assert current == (step % 3 == 0)
        assert math.isnan(energy) == (step % 3 != 0)
    # the calculator was asked for it on those steps only (and at the start)
    assert calc.calls == 21 and calc.energy_calls == 7 == dyn.state.n_energy_requests
    assert math.isnan(dyn.state.total_eV)  # step 20 is no energy step
    e20 = dyn.refresh_energy()
    assert dyn.state.energy_is_current and calc.energy_calls == 8
    assert e20 == pytest.approx(reference.get_potential_energy(atoms), abs=1e-10)


def test_an_observer_that_does_not_declare_gets_the_energy_every_call():
    atoms = thermal_slab(300.0)
    atoms.calc = calc = EnergyOnRequest()
    dyn = VelocityVerlet(atoms, 2.0)
    seen = []
    dyn.attach(lambda s: seen.append(s.energy_eV), 2)
    sanity = SanityObserver(atoms, min_distance_A=0.5)
    dyn.attach(sanity.check_geometry, 1)  # declares that it reads no energy
    dyn.run(20.0)
    assert len(seen) == 6 and all(math.isfinite(e) for e in seen)
    assert calc.energy_calls == 6  # steps 0, 2, …, 10
    with pytest.raises(ConfigError, match="needs_energy"):
        bare = VelocityVerlet(thermal_slab(300.0), 2.0)
        bare.atoms.calc = EnergyOnRequest()
        bare.attach(sanity.check_energy, 1, needs_energy=False)
        bare.run(4.0)


def test_sanity_distance_list_flags_exactly_what_a_full_search_flags():
    rng = np.random.default_rng(4)
    n, box = 12, 8.0
    atoms = Atoms("Be" * n, positions=rng.random((n, 3)) * box, cell=[box] * 3, pbc=True)
    sanity = SanityObserver(atoms, min_distance_A=1.0)
    velocities = rng.normal(scale=0.05, size=(n, 3))  # Å per step
    flagged = []
    steps = 200
    for k in range(steps):
        positions = atoms.positions + k * velocities  # unwrapped, as in MD
        state = MDState(positions, velocities, np.zeros((n, 3)), np.ones(n), 0.0, 0.0, step=k)
        probe = Atoms("Be" * n, positions=positions, cell=atoms.cell, pbc=True)
        d = probe.get_all_distances(mic=True)[np.triu_indices(n, 1)]
        listed = sanity.check_geometry(state) is not None
        flagged.append(listed)
        assert listed == bool(d.min() < 1.0), f"step {k}"
    assert any(flagged) and not all(flagged)
    assert sanity.n_searches < steps / 2


def test_model_drives_an_adaptive_impact_with_early_stop(sfset):
    pot = _potential(sfset)
    fast = ImpactSettings(
        adaptive=AdaptiveTimestep(), early_stop="on", duration_fs=40.0, energy_check_interval=5
    )
    result = run_impact(_slab(), NNPCalculator(pot), 100.0, 1, fast)
    assert not result.unphysical, result.detail
    assert result.settings["r_cut_A"] is None  # taken from the calculator: rc of the model
    assert result.simulated_fs <= 40.0 + 1e-9 and math.isfinite(result.energy_drift_eV)
    assert result.steps < 40.0 / 0.2  # the adaptive step is longer than the fixed 0.2 fs
    # the committee calculator drives as its member 0 does, and records the disagreement
    com = Committee([pot, _potential(sfset, seed=1)])
    a = run_impact(_slab(), CommitteeCalculator(com), 100.0, 1, fast)
    assert a.steps == result.steps and a.n_sputtered == result.n_sputtered
    assert a.max_disagreement is not None and a.max_disagreement > 0
    with pytest.raises(ConfigError, match="energy_check_interval"):
        ImpactSettings(energy_check_interval=0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_model_that_turns_non_finite_ends_the_trajectory_as_unphysical(sfset):
    from nnprefine.errors import ModelError

    pot = _potential(sfset)
    good = pot.weight_arrays()

    def poison(state):  # from step 5 on the model's output is NaN
        if state.step >= 5:
            pot.set_weight_arrays({k: np.full_like(v, np.nan) for k, v in good.items()})

    settings = ImpactSettings(duration_fs=4.0, timestep_fs=0.2, early_stop="off")
    result = run_impact(_slab(), NNPCalculator(pot), 100.0, 1, settings, observers=((poison, 5),))
    assert result.unphysical and result.stop_reason == "non-finite", result.detail
    assert "NaN or infinite" in result.detail
    with pytest.raises(ModelError):  # outside MD it is a model error as before
        pot.evaluate(_slab())
