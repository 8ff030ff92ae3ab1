"""Velocity Verlet, observers, adaptive time step and heat sink (nnprefine.md)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import fcc111
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.md.verlet import VelocityVerlet as AseVelocityVerlet

from nnprefine.errors import ConfigError, SimulationError
from nnprefine.md import (
    AdaptiveTimestep,
    HeatSink,
    SanityObserver,
    VelocityVerlet,
    heat_sink_mask,
    kinetic_energies_eV,
)


def thermal_slab(temperature_K: float = 300.0, seed: int = 3, size=(3, 3, 4)) -> Atoms:
    """Cu(111) slab with EMT, bottom layer fixed, Maxwell-Boltzmann velocities."""
    atoms = fcc111("Cu", size=size, vacuum=6.0)
    atoms.set_constraint(FixAtoms(mask=atoms.get_tags() == size[2]))
    rng = np.random.default_rng(seed)
    m = atoms.get_masses()[:, None]
    v = rng.standard_normal((len(atoms), 3)) * np.sqrt(units.kB * temperature_K / m)
    v[atoms.get_tags() == size[2]] = 0.0
    atoms.set_velocities(v)
    atoms.calc = EMT()
    return atoms


def test_nve_energy_drift_is_bounded_on_a_thermal_slab():
    atoms = thermal_slab(600.0)
    fixed0 = atoms.positions[atoms.get_tags() == 4].copy()
    dyn = VelocityVerlet(atoms, 1.0)
    totals = []
    dyn.attach(lambda s: totals.append(s.total_eV), 1)
    dyn.run(400.0)
    totals = np.array(totals)
    n = len(atoms)
    assert dyn.state.step == 400
    assert dyn.state.time_fs == pytest.approx(400.0)
    # Verlet: bounded fluctuation, no secular drift. 1 fs on Cu (period ~150 fs).
    assert np.abs(totals - totals[0]).max() / n < 2e-4
    assert abs(totals[-50:].mean() - totals[:50].mean()) / n < 5e-5
    # The fixed layer did not move; the thermal atoms did.
    np.testing.assert_array_equal(dyn.state.positions[atoms.get_tags() == 4], fixed0)
    assert dyn.state.kinetic_eV > 0


def test_trajectory_equals_ase_velocity_verlet():
    a = thermal_slab(300.0, seed=5)
    b = a.copy()
    b.calc = EMT()
    dyn = VelocityVerlet(a, 2.0)
    dyn.run(40.0)
    AseVelocityVerlet(b, timestep=2.0 * units.fs).run(20)
    np.testing.assert_allclose(dyn.state.positions, b.positions, atol=1e-10)
    np.testing.assert_allclose(dyn.sync_atoms().get_velocities(), b.get_velocities(), atol=1e-10)


def test_kinetic_energy_units():
    # A Be atom (9.012 amu) at 1 Å/fs: ½ m v² = 0.5 * 9.012 * 1.66054e-27 kg * 1e10 m²/s²
    ke = kinetic_energies_eV(np.array([9.012]), np.array([[0.0, 0.0, 1.0]]))
    expected = 0.5 * 9.012 * 1.66053907e-27 * (1e-10 / 1e-15) ** 2 / 1.602176634e-19
    assert ke[0] == pytest.approx(expected, rel=1e-5)


def test_observer_can_stop_the_run_and_interval_is_honoured():
    dyn = VelocityVerlet(thermal_slab(), 1.0)
    seen = []
    dyn.attach(lambda s: seen.append(s.step), 5)
    dyn.attach(lambda s: "enough" if s.step >= 12 else None, 1)
    assert dyn.run(100.0) == "enough"
    assert dyn.state.step == 12
    assert seen == [0, 5, 10]


def test_sanity_observer_flags_overlap_and_exploding_energy():
    atoms = thermal_slab()
    atoms.positions[0] = atoms.positions[1] + [0.3, 0.0, 0.0]
    sanity = SanityObserver(atoms, min_distance_A=0.5)
    dyn = VelocityVerlet(atoms, 0.1)
    dyn.attach(sanity, 1)
    assert dyn.run(1.0) == "unphysical"
    assert "apart" in sanity.detail

    # Across the periodic boundary too; a pair just beyond the limit is fine.
    for gap, flagged in ((0.3, True), (0.6, False)):
        atoms = thermal_slab()
        atoms.positions[0] = atoms.positions[1] + atoms.cell[0] - [gap, 0.0, 0.0]
        sanity = SanityObserver(atoms, min_distance_A=0.5)
        state = VelocityVerlet(atoms, 0.1).state
        assert (sanity(state) == "unphysical") is flagged
        if flagged:
            assert f"{gap:.3f} Å apart" in sanity.detail

    atoms = thermal_slab()
    sanity = SanityObserver(atoms, min_distance_A=0.0, max_energy_drift_eV=1e-6)
    dyn = VelocityVerlet(atoms, 5.0)  # a coarse step changes the total energy by more
    dyn.attach(sanity, 1)
    assert dyn.run(50.0) == "unphysical"
    assert "total energy" in sanity.detail


class EMTWithHole(Calculator):
    """EMT plus a spurious Gaussian well (depth_eV, eV) in the distance of the last two
    atoms (neighbours in the top layer of ``thermal_slab``).

    The kind of hole an under-trained NNP can have: energy is conserved exactly, yet the
    potential energy it releases would blow the slab apart.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, depth_eV: float, r0_A: float = 1.2, width_A: float = 0.5):
        super().__init__()
        self.depth_eV, self.r0_A, self.width_A = depth_eV, r0_A, width_A
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.emt
        energy, forces = a.get_potential_energy(), a.get_forces()
        d = a.positions[-1] - a.positions[-2]
        r = np.linalg.norm(d)
        x = (r - self.r0_A) / self.width_A
        well = -self.depth_eV * np.exp(-(x**2))
        dwell_dr = -2.0 * x / self.width_A * well
        forces[-2] += dwell_dr * d / r
        forces[-1] -= dwell_dr * d / r
        self.results = {"energy": energy + well, "forces": forces}


def test_sanity_observer_flags_a_spurious_minimum_that_conserves_energy():
    atoms = thermal_slab(temperature_K=50.0)
    # The two atoms sit 2.55 Å apart, on the flank of a 60 eV well centred at 2.2 Å.
    atoms.calc = EMTWithHole(depth_eV=60.0, r0_A=2.2, width_A=0.3)
    sanity = SanityObserver(
        atoms, min_distance_A=0.0, max_energy_drift_eV=1.0, max_potential_drop_eV=30.0
    )
    dyn = VelocityVerlet(atoms, 0.02)
    dyn.attach(sanity, 1)
    assert dyn.run(20.0) == "unphysical"
    assert "potential energy fell" in sanity.detail  # the total energy stayed within 1 eV

    # The same run on plain EMT is physical: the check does not fire on a sound potential.
    atoms = thermal_slab(temperature_K=50.0)
    sanity = SanityObserver(atoms, min_distance_A=0.0, max_potential_drop_eV=30.0)
    dyn = VelocityVerlet(atoms, 1.0)
    dyn.attach(sanity, 1)
    assert dyn.run(50.0) == "duration"


class NaNAfter(Calculator):
    """EMT until a given number of calls, then NaN forces (a potential leaving its domain)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, good_calls: int) -> None:
        super().__init__()
        self.good_calls = good_calls
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {
            "energy": self.emt.get_potential_energy(self.atoms),
            "forces": self.emt.get_forces(self.atoms),
        }
        self.good_calls -= 1
        if self.good_calls < 0:
            self.results["forces"] = self.results["forces"] * np.nan


def test_nan_forces_raise_simulation_error():
    atoms = thermal_slab()
    atoms.calc = NaNAfter(good_calls=4)
    dyn = VelocityVerlet(atoms, 1.0)
    with pytest.raises(SimulationError, match="non-finite"):
        dyn.run(10.0)
    assert dyn.state.step == 3


def _fast_atom_slab(energy_eV: float = 200.0) -> tuple[Atoms, float]:
    """Thermal slab with one atom 4 Å above it heading down at ``energy_eV``; its speed (ASE units)."""
    atoms = thermal_slab(300.0)
    top = int(np.argmax(atoms.positions[:, 2]))
    v = atoms.get_velocities()
    atoms.positions[top, 2] += 4.0
    speed = np.sqrt(2 * energy_eV / atoms.get_masses()[top])
    v[top] = [0.0, 0.0, -speed]
    atoms.set_velocities(v)
    return atoms, speed


def test_adaptive_step_bounds_displacement_and_converges():
    drifts = {}
    for d_max in (0.05, 0.02):
        atoms, speed = _fast_atom_slab()
        adaptive = AdaptiveTimestep(
            timestep_max_fs=1.0, max_displacement_A=d_max, max_energy_change_eV=10 * d_max
        )
        dyn = VelocityVerlet(atoms, adaptive)
        prev = [dyn.state.positions.copy()]
        moves, totals, dts = [], [], []

        def watch(s, prev=prev, moves=moves, totals=totals, dts=dts):
            dts.append(s.timestep_fs)
            moves.append(np.linalg.norm(s.positions - prev[0], axis=1).max())
            prev[0] = s.positions.copy()
            totals.append(s.total_eV)

        dyn.attach(watch, 1)
        assert dyn.run(40.0) == "duration"
        assert dyn.state.time_fs == pytest.approx(40.0)
        # The bound holds to first order; the half-step acceleration adds a little.
        assert max(moves[1:]) < d_max * 1.1
        # First step: d_max / v of the fast atom; larger steps once it has slowed down.
        assert dts[0] == pytest.approx(d_max / (speed * units.fs), rel=1e-3)
        drifts[d_max] = abs(totals[-1] - totals[0])
    # Energy error shrinks (about quadratically) with the displacement bound; 200 eV in play.
    assert drifts[0.02] < drifts[0.05] / 3
    assert drifts[0.02] < 0.02


def test_heat_sink_removes_heat_and_the_balance_closes():
    atoms = thermal_slab(1500.0, size=(4, 4, 4))
    mask = heat_sink_mask(atoms, impact_xy_A=(0.0, 0.0), lateral_width_A=2.0, bottom_width_A=1.0)
    assert not mask[atoms.get_tags() == 4].any()  # fixed layer is not thermostatted
    assert mask.any() and not mask.all()
    sink = HeatSink(mask, temperature_K=100.0, tau_fs=20.0, kind="berendsen")
    dyn = VelocityVerlet(atoms, 1.0, heat_sink=sink)
    e0 = dyn.state.total_eV
    k0 = dyn.state.kinetic_eV
    dyn.run(200.0)
    s = dyn.state
    assert s.heat_removed_eV > 0.1
    assert s.kinetic_eV < k0
    # Energy balance: what the system lost is what the sink took (Verlet error aside).
    assert s.total_eV + s.heat_removed_eV == pytest.approx(e0, abs=0.02)


def test_langevin_heat_sink_is_seeded():
    finals = []
    for _ in range(2):
        atoms = thermal_slab(300.0)
        mask = heat_sink_mask(atoms, impact_xy_A=(1.0, 1.0))
        dyn = VelocityVerlet(atoms, 1.0, HeatSink(mask, 300.0, 30.0, "langevin", seed=11))
        dyn.run(20.0)
        finals.append(dyn.state.positions.copy())
    np.testing.assert_array_equal(finals[0], finals[1])


def test_heat_sink_mask_leaves_the_impact_zone_free():
    atoms = thermal_slab(size=(6, 6, 4))
    cell = atoms.cell.array
    centre = 0.5 * (cell[0, :2] + cell[1, :2])
    mask = heat_sink_mask(atoms, impact_xy_A=tuple(centre), lateral_width_A=2.5, bottom_width_A=1.0)
    probe = atoms.copy()
    probe.positions[:, 2] = 0.0
    probe += Atoms("Cu", positions=[[centre[0], centre[1], 0.0]])
    d = probe.get_distances(len(probe) - 1, range(len(atoms)), mic=True)
    top = atoms.get_tags() == 1
    assert not mask[top & (d < 3.0)].any()
    # Half the shortest period is 3 * 2.55 Å; beyond 7.65 - 2.5 Å from the impact point
    # every free atom is in the sink.
    free = atoms.get_tags() < 4
    assert mask[free & (d > 3 * 2.5527 - 2.5 + 1e-6)].all()
    assert not mask[~free].any()
    # Given the surface plane, the top layer stays free everywhere: no thermostat slows an
    # atom on its way out.
    surface = atoms.positions[top, 2].mean()
    keep_top = heat_sink_mask(atoms, tuple(centre), 2.5, 1.0, surface_z_A=surface)
    assert not keep_top[top].any() and keep_top.any()
    np.testing.assert_array_equal(keep_top[~top], mask[~top])


def test_langevin_sink_never_moves_fixed_atoms():
    atoms = thermal_slab(300.0)
    fixed = atoms.get_tags() == 4
    start = atoms.positions[fixed].copy()
    everything = np.ones(len(atoms), dtype=bool)  # a careless mask that includes them
    dyn = VelocityVerlet(atoms, 1.0, HeatSink(everything, 300.0, 10.0, "langevin", seed=3))
    dyn.run(10.0)
    np.testing.assert_array_equal(dyn.state.positions[fixed], start)


def test_bad_settings_are_config_errors():
    atoms = thermal_slab()
    with pytest.raises(ConfigError, match="timestep"):
        VelocityVerlet(atoms, -1.0)
    with pytest.raises(ConfigError, match="timestep_min_fs"):
        AdaptiveTimestep(timestep_max_fs=0.1, timestep_min_fs=1.0)
    atoms.calc = None
    with pytest.raises(ConfigError, match="calculator"):
        VelocityVerlet(atoms, 1.0)
