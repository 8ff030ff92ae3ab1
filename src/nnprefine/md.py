"""Velocity-Verlet molecular dynamics for slabs, with observers, a heat sink and adaptive steps.

The integrator works on whole numpy arrays in the package's units: positions in Å,
velocities in Å/fs, forces in eV/Å, masses in amu, time in fs, energies in eV. Its state
is an explicit :class:`MDState`; everything else (outcome classification, committee
watch, trajectory writers, sanity checks) is an *observer* attached with
:meth:`VelocityVerlet.attach`. An observer is called as ``fn(state)`` every ``interval``
steps; returning a non-empty string stops the run with that string as the reason.

Energy on demand: the potential energy is asked of the calculator only on steps where an
attached observer declared that it reads it (``attach(fn, interval, needs_energy=True)``,
the default for any observer that does not say otherwise through a ``needs_energy``
attribute); on the other steps only forces are asked for. When the calculator returns the
energy with the forces anyway (the NNP calculators, the SNAP reference and most ASE
calculators do) it is kept. ``MDState.energy_step`` records the step of the energy in
``MDState.energy_eV``; on any other step ``energy_eV`` is NaN, never an older value.

Atoms held by ``FixAtoms`` constraints never move (their velocities and the forces on
them are zeroed). The cell is periodic in x and y; along z the vacuum is open and atoms
may leave the cell (the calculator handles non-periodic directions).

Unit bridge: with ASE's internal time unit ``t_ase = Å·sqrt(amu/eV)``, 1 fs =
``ase.units.fs`` t_ase, so an acceleration F/m (eV/(Å·amu)) is ``F/m · fs²`` Å/fs² and a
kinetic energy ½mv² with v in Å/fs is ``½ m v² / fs²`` eV.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import vesin
from ase import Atoms, units
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.geometry import find_mic

from nnprefine.errors import ConfigError, NonFiniteResultError
from nnprefine.structures import fixed_mask

__all__ = [
    "ACCEL_PER_FORCE",
    "AdaptiveTimestep",
    "HeatSink",
    "MDState",
    "SanityObserver",
    "VelocityVerlet",
    "heat_sink_mask",
    "kinetic_energies_eV",
]

#: (Å/fs²) per (eV/(Å·amu)): multiply F/m by this to get an acceleration in Å/fs².
ACCEL_PER_FORCE: float = units.fs**2
#: eV per (amu·Å²/fs²): multiply ½ m v² (v in Å/fs) by this to get eV.
_EV_PER_AMU_A2_FS2: float = 1.0 / units.fs**2

Observer = Callable[["MDState"], "str | None"]


_FORCES = ("forces",)
_ENERGY_FORCES = ("energy", "forces")


def _calculate(calc: Any, atoms: Atoms, properties: tuple[str, ...]) -> dict[str, Any]:
    """The calculator's ``results`` for ``atoms``, holding ``properties``: one call at most.

    ASE's ``get_property`` computes one property at a time, so a calculator that computes
    only what it is asked for would run twice for energy and forces. A calculator that
    keeps ASE's caching (``Calculator.get_property`` not overridden) is asked for all of
    ``properties`` in one ``calculate``, with ASE's own state check and reset; any other
    goes through ``get_property`` one property after the other. The returned dict is the
    calculator's: copy what you change.
    """
    if isinstance(calc, Calculator) and type(calc).get_property is Calculator.get_property:
        changes = calc.check_state(atoms)
        if changes:
            calc.atoms = None
            calc.results = {}
        if any(p not in calc.results for p in properties):
            if calc.use_cache:
                calc.atoms = atoms.copy()
            calc.calculate(atoms, list(properties), changes)
        missing = [p for p in properties if p not in calc.results]
        if missing:
            raise PropertyNotImplementedError(
                f"{type(calc).__name__} returned no {', '.join(missing)} for these atoms"
            )
        return calc.results
    for name in properties:
        calc.get_property(name, atoms)
    return calc.results


def kinetic_energies_eV(masses_amu: np.ndarray, velocities_A_per_fs: np.ndarray) -> np.ndarray:
    """Per-atom kinetic energies, (n_atoms,) float64 in eV.

    masses_amu: (n_atoms,) float64, amu. velocities_A_per_fs: (n_atoms, 3) float64, Å/fs.
    """
    v2 = np.einsum("ij,ij->i", velocities_A_per_fs, velocities_A_per_fs)
    return 0.5 * masses_amu * v2 * _EV_PER_AMU_A2_FS2


@dataclass
class MDState:
    """The integrator's complete state after a step.

    positions: (n, 3) float64, Å (not wrapped into the cell). velocities: (n, 3) float64,
    Å/fs. forces: (n, 3) float64, eV/Å (zero on fixed atoms). ``energy_eV`` is the
    potential energy (eV) of this step when ``energy_step == step``
    (:attr:`energy_is_current`) and NaN otherwise: on steps where no observer asked for
    it and the calculator did not return it with the forces it is not known (module
    docstring); ``total_eV`` is then NaN too. ``kinetic_eV`` is the total kinetic energy
    (always current). ``results`` is the calculator's ``results`` dict of the last force
    call (committee calculators put extra keys there, e.g.
    ``force_disagreement_eV_per_A``). ``timestep_fs`` is the step that will be taken next;
    ``heat_removed_eV`` the energy a heat sink took out so far; ``force_time_s`` the CPU
    time (this thread, s) spent in calculator calls, ``n_force_calls`` their number and
    ``n_energy_requests`` how many of them asked for the energy.
    """

    positions: np.ndarray
    velocities: np.ndarray
    forces: np.ndarray
    masses: np.ndarray
    energy_eV: float
    kinetic_eV: float
    time_fs: float = 0.0
    step: int = 0
    timestep_fs: float = 0.0
    heat_removed_eV: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)
    force_time_s: float = 0.0
    n_force_calls: int = 0
    energy_step: int = -1
    n_energy_requests: int = 0

    @property
    def energy_is_current(self) -> bool:
        """Whether ``energy_eV`` is the potential energy of this very step."""
        return self.energy_step == self.step

    @property
    def total_eV(self) -> float:
        """Potential + kinetic energy (eV); NaN on a step without a current energy."""
        return self.energy_eV + self.kinetic_eV

    def kinetic_energies_eV(self) -> np.ndarray:
        """Per-atom kinetic energies, (n,) float64, eV."""
        return kinetic_energies_eV(self.masses, self.velocities)


@dataclass(frozen=True)
class AdaptiveTimestep:
    """Time step bounded by displacement and energy change, as cascade codes choose it.

    Each step uses dt = min(dt_max, d_max / v_max, E_max / max_i |F_i·v_i|,
    growth · dt_previous), and at least dt_min: no atom moves more than
    ``max_displacement_A`` and no atom's kinetic energy changes by more than about
    ``max_energy_change_eV`` in one step, and the step grows by at most ``growth``
    per step after a collision. The defaults (1 fs, 0.1 Å, 2 eV) follow cascade
    practice; the paper's fixed 0.2 fs moves a 100 eV Be atom 0.09 Å per step. On
    100 eV Be impacts on the SNAP reference they take 2–3× fewer steps than the fixed
    0.2 fs at a total-energy error of up to 0.07 eV on the 490-atom slab and 0.25 eV on
    the 96-atom one (fixed: a few meV); the statistical check of outcomes against the
    fixed step is benchmarks/impact.py (docs/benchmarks.md). A variable step breaks the time
    reversibility of Verlet, so at equal mean step the energy error is larger than with a
    fixed step: tighten the bounds rather than trust a long adaptive run blindly.
    """

    timestep_max_fs: float = 1.0
    timestep_min_fs: float = 0.005
    max_displacement_A: float = 0.1
    max_energy_change_eV: float = 2.0
    growth: float = 1.1

    def __post_init__(self) -> None:
        if not 0 < self.timestep_min_fs <= self.timestep_max_fs:
            raise ConfigError(
                "adaptive time step needs 0 < timestep_min_fs <= timestep_max_fs, got "
                f"{self.timestep_min_fs} and {self.timestep_max_fs}"
            )
        if self.max_displacement_A <= 0 or self.max_energy_change_eV <= 0 or self.growth < 1:
            raise ConfigError(
                "adaptive time step needs max_displacement_A > 0, max_energy_change_eV > 0 and "
                f"growth >= 1; got {self.max_displacement_A}, {self.max_energy_change_eV}, "
                f"{self.growth}"
            )

    def next_timestep_fs(
        self, velocities: np.ndarray, forces: np.ndarray, previous_fs: float | None
    ) -> float:
        """The next step (fs) from velocities (n, 3) Å/fs and forces (n, 3) eV/Å."""
        dt = self.timestep_max_fs
        v_max = math.sqrt(float(np.einsum("ij,ij->i", velocities, velocities).max(initial=0.0)))
        if v_max > 0:
            dt = min(dt, self.max_displacement_A / v_max)
        power = float(np.abs(np.einsum("ij,ij->i", forces, velocities)).max(initial=0.0))
        if power > 0:  # |F·v| is in eV/fs
            dt = min(dt, self.max_energy_change_eV / power)
        if previous_fs is not None:
            dt = min(dt, self.growth * previous_fs)
        return max(dt, self.timestep_min_fs)


@dataclass
class HeatSink:
    """A thermostat on a subset of atoms (lateral border and bottom), the rest left NVE.

    ``mask``: (n_atoms,) bool, the thermostatted atoms (fixed atoms are ignored).
    ``kind`` is ``"berendsen"`` (velocity rescaling of the subset towards
    ``temperature_K`` with time constant ``tau_fs``) or ``"langevin"`` (friction 1/tau_fs
    and matching random kicks, drawn from ``numpy.random.default_rng(seed)``).
    """

    mask: np.ndarray
    temperature_K: float = 300.0
    tau_fs: float = 50.0
    kind: str = "berendsen"
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("berendsen", "langevin"):
            raise ConfigError(
                f"heat sink kind must be 'berendsen' or 'langevin', got {self.kind!r}"
            )
        if self.temperature_K < 0 or self.tau_fs <= 0:
            raise ConfigError(
                f"heat sink needs temperature_K >= 0 and tau_fs > 0, got {self.temperature_K} "
                f"and {self.tau_fs}"
            )
        self.mask = np.asarray(self.mask, dtype=bool)
        self._rng = np.random.default_rng(self.seed)

    def apply(self, velocities: np.ndarray, masses: np.ndarray, dt_fs: float) -> float:
        """Thermostat ``velocities`` (n, 3) Å/fs in place; return the kinetic energy removed (eV)."""
        m = self.mask
        n = int(m.sum())
        if n == 0:
            return 0.0
        v = velocities[m]
        mm = masses[m]
        ke_before = float(kinetic_energies_eV(mm, v).sum())
        if self.kind == "berendsen":
            t_now = 2.0 * ke_before / (3.0 * n * units.kB)
            if t_now <= 0:
                return 0.0
            scale = math.sqrt(max(1.0 + dt_fs / self.tau_fs * (self.temperature_K / t_now - 1), 0))
            v_new = v * scale
        else:
            c1 = math.exp(-dt_fs / self.tau_fs)
            # sqrt(kT/m) in Å/fs: kT (eV) / m (amu) is (Å/t_ase)²; times fs² gives (Å/fs)².
            sigma = np.sqrt(units.kB * self.temperature_K / mm * ACCEL_PER_FORCE)[:, None]
            v_new = c1 * v + math.sqrt(1 - c1 * c1) * sigma * self._rng.standard_normal(v.shape)
        velocities[m] = v_new
        return ke_before - float(kinetic_energies_eV(mm, v_new).sum())


def heat_sink_mask(
    atoms: Atoms,
    impact_xy_A: tuple[float, float],
    lateral_width_A: float = 3.0,
    bottom_width_A: float = 3.0,
    surface_z_A: float | None = None,
    surface_width_A: float = 1.0,
) -> np.ndarray:
    """Atoms of the heat sink: a lateral border around the impact point, and the bottom of
    the free slab. Returns (n_atoms,) bool; fixed atoms are excluded, and so, when
    ``surface_z_A`` (the surface plane, Å) is given, are atoms above
    ``surface_z_A − surface_width_A`` — the top layer and anything above it, so a thermostat
    never slows an atom that is leaving the surface.

    An atom is on the lateral border when its lateral minimum-image distance from the
    impact point exceeds R − ``lateral_width_A``, with R half the shortest in-plane
    period of the cell (the largest circle around the impact point that meets no periodic
    image of itself); it is at the bottom when it lies within ``bottom_width_A`` of the
    lowest free atom.
    """
    cell = atoms.cell.array
    fixed = fixed_mask(atoms)
    d = atoms.positions - np.array([impact_xy_A[0], impact_xy_A[1], 0.0])
    d[:, 2] = 0.0
    _, dist = find_mic(d, cell, pbc=(True, True, False))
    periods = [
        np.linalg.norm(v[:2]) for v in (cell[0], cell[1], cell[0] - cell[1], cell[0] + cell[1])
    ]
    radius = 0.5 * min(periods)
    border = dist > radius - lateral_width_A
    z = atoms.positions[:, 2]
    free = ~fixed
    bottom = z < (z[free].min() + bottom_width_A) if free.any() else np.zeros(len(atoms), bool)
    sink = (border | bottom) & free
    if surface_z_A is not None:
        sink &= z < surface_z_A - surface_width_A
    return sink


class VelocityVerlet:
    """Velocity Verlet on an :class:`ase.Atoms` with its calculator; fixed atoms stay put.

    ``timestep`` is a step in fs or an :class:`AdaptiveTimestep`. ``heat_sink`` is an
    optional :class:`HeatSink` applied after every step. The atoms' positions are updated
    in place (the calculator reads them); velocities live in :attr:`state` (Å/fs) and are
    written back to the atoms by :meth:`sync_atoms`. The energy is asked for at the start
    and on the steps an observer that needs it is called (module docstring);
    :meth:`refresh_energy` evaluates it now.
    """

    def __init__(
        self,
        atoms: Atoms,
        timestep: float | AdaptiveTimestep,
        heat_sink: HeatSink | None = None,
    ) -> None:
        if atoms.calc is None:
            raise ConfigError("the atoms have no calculator; set atoms.calc before running MD")
        if isinstance(timestep, AdaptiveTimestep):
            self.adaptive: AdaptiveTimestep | None = timestep
            first_dt = timestep.timestep_max_fs
        else:
            if not (isinstance(timestep, int | float) and timestep > 0):
                raise ConfigError(f"timestep must be a positive number of fs, got {timestep!r}")
            self.adaptive = None
            first_dt = float(timestep)
        self.atoms = atoms
        self.heat_sink = heat_sink
        self.fixed = fixed_mask(atoms)
        self.free = ~self.fixed
        self._fixed_index = np.flatnonzero(self.fixed)
        if heat_sink is not None:
            heat_sink.mask = heat_sink.mask & self.free  # a kick must never move a fixed atom
        self._observers: list[tuple[Observer, int]] = []
        self._energy_intervals: list[int] = []
        masses = atoms.get_masses().astype(np.float64)
        self._inv_mass = (ACCEL_PER_FORCE / masses)[:, None]
        v = atoms.get_velocities() * units.fs  # ASE velocity (Å/t_ase) -> Å/fs
        v[self.fixed] = 0.0
        positions = atoms.positions.astype(np.float64).copy()
        self.state = MDState(
            positions=positions,
            velocities=v,
            forces=np.zeros_like(positions),
            masses=masses,
            energy_eV=math.nan,
            kinetic_eV=0.0,
        )
        self._compute_forces(need_energy=True, step=0)  # the reference of every drift
        s = self.state
        s.kinetic_eV = float(kinetic_energies_eV(masses, v).sum())
        s.timestep_fs = (
            self.adaptive.next_timestep_fs(v, s.forces, None) if self.adaptive else first_dt
        )
        if self.adaptive:
            s.timestep_fs = min(s.timestep_fs, first_dt)

    def attach(self, fn: Observer, interval: int = 1, needs_energy: bool | None = None) -> None:
        """Call ``fn(state)`` every ``interval`` steps (and once before the first step).

        If ``fn`` returns a non-empty string, :meth:`run` stops with that reason.
        ``needs_energy``: whether ``fn`` reads ``state.energy_eV`` (or ``total_eV``); the
        potential energy is then evaluated on every step ``fn`` is called. None (the
        default) takes ``fn.needs_energy`` when ``fn`` has that attribute and True
        otherwise, so an observer that does not declare it always sees a current energy.
        """
        if isinstance(interval, bool) or not isinstance(interval, int | np.integer):
            raise ConfigError(
                f"observer interval must be a whole number of steps, got {interval!r}"
            )
        if interval < 1:
            raise ConfigError(
                f"observer interval must be a positive number of steps, got {interval}"
            )
        if needs_energy is None:
            needs_energy = bool(getattr(fn, "needs_energy", True))
        self._observers.append((fn, int(interval)))
        if needs_energy:
            self._energy_intervals.append(int(interval))

    def energy_needed_at(self, step: int) -> bool:
        """Whether an observer that reads the energy is called at ``step``."""
        return any(step % k == 0 for k in self._energy_intervals)

    def _compute_forces(self, need_energy: bool, step: int) -> None:
        """Forces at ``state.positions`` (those of ``step``), and the energy when asked.

        An energy the calculator returns with the forces unasked is kept: a calculator's
        ``results`` are reset whenever the atoms changed, so it belongs to these positions.
        A non-finite energy or force is an error whether asked for or not.
        """
        s = self.state
        atoms = self.atoms
        atoms.set_positions(s.positions, apply_constraint=False)
        t0 = time.thread_time()
        results = _calculate(atoms.calc, atoms, _ENERGY_FORCES if need_energy else _FORCES)
        forces = np.array(results["forces"], dtype=np.float64)  # ours: zeroed below
        energy = results.get("energy")
        s.force_time_s += time.thread_time() - t0
        s.n_force_calls += 1
        s.n_energy_requests += need_energy
        if not (np.isfinite(forces).all() and (energy is None or math.isfinite(energy))):
            raise NonFiniteResultError(
                f"the calculator returned a non-finite energy or force at step {step} "
                f"(t = {s.time_fs:.3f} fs before the step); the configuration is unphysical "
                "or the model left its training domain — reduce the time step or refine "
                "the potential"
            )
        if len(self._fixed_index):
            forces[self._fixed_index] = 0.0
        s.forces = forces
        s.results = results
        if energy is None:  # not known at this step: NaN, never an older value
            s.energy_eV, s.energy_step = math.nan, -1
        else:
            s.energy_eV, s.energy_step = float(energy), step

    def refresh_energy(self) -> float:
        """The potential energy (eV) of the current step, evaluated now if not yet known."""
        s = self.state
        if not s.energy_is_current:
            t0 = time.thread_time()
            energy = float(_calculate(self.atoms.calc, self.atoms, ["energy"])["energy"])
            s.force_time_s += time.thread_time() - t0
            s.n_energy_requests += 1
            if not math.isfinite(energy):
                raise NonFiniteResultError(
                    f"the calculator returned a non-finite energy at step {s.step} "
                    f"(t = {s.time_fs:.3f} fs)"
                )
            s.energy_eV, s.energy_step = energy, s.step
        return s.energy_eV

    def step(self) -> None:
        """One velocity-Verlet step of ``state.timestep_fs``."""
        s = self.state
        dt = s.timestep_fs
        half_dt = 0.5 * dt
        s.velocities += half_dt * (s.forces * self._inv_mass)
        s.positions += dt * s.velocities
        new_step = s.step + 1  # observers called after this step read its energy if they need it
        self._compute_forces(self.energy_needed_at(new_step), new_step)
        s.velocities += half_dt * (s.forces * self._inv_mass)
        if self.heat_sink is not None:
            s.heat_removed_eV += self.heat_sink.apply(s.velocities, s.masses, dt)
        s.kinetic_eV = float(kinetic_energies_eV(s.masses, s.velocities).sum())
        s.time_fs += dt
        s.step = new_step
        if self.adaptive is not None:
            s.timestep_fs = self.adaptive.next_timestep_fs(s.velocities, s.forces, dt)

    def _notify(self) -> str | None:
        s = self.state
        for fn, interval in self._observers:
            if s.step % interval == 0:
                reason = fn(s)
                if reason:
                    return str(reason)
        return None

    def run(self, duration_fs: float, max_steps: int | None = None) -> str:
        """Advance by ``duration_fs`` (fs); return why the run ended.

        The reason is ``"duration"``, ``"max_steps"`` or the string an observer returned.
        With a fixed step the run takes round(duration_fs / timestep_fs) steps; with an
        adaptive step the last step is shortened to end exactly at the requested time.
        """
        if duration_fs < 0:
            raise ConfigError(f"duration_fs must be >= 0, got {duration_fs}")
        s = self.state
        if s.step == 0:
            reason = self._notify()
            if reason:
                return reason
        taken = 0
        if self.adaptive is None:
            n_steps = int(round(duration_fs / s.timestep_fs))
            t_end = None
        else:
            n_steps = None
            t_end = s.time_fs + duration_fs
        while True:
            if n_steps is not None and taken >= n_steps:
                return "duration"
            if t_end is not None:
                remaining = t_end - s.time_fs
                if remaining <= 1e-9:
                    return "duration"
                if remaining < s.timestep_fs:
                    s.timestep_fs = remaining
            if max_steps is not None and taken >= max_steps:
                return "max_steps"
            self.step()
            taken += 1
            reason = self._notify()
            if reason:
                return reason

    def sync_atoms(self) -> Atoms:
        """Write the state's positions and velocities back to the atoms; return them."""
        s = self.state
        self.atoms.set_positions(s.positions, apply_constraint=False)
        self.atoms.set_velocities(s.velocities / units.fs)
        return self.atoms


class SanityObserver:
    """Stops a run with reason ``"unphysical"`` on NaN, overlapping atoms or exploding energy.

    Two checks, each an observer of its own: :meth:`check_geometry` (finite positions and
    velocities; no two atoms closer than ``min_distance_A``, periodic images included)
    reads no energy; :meth:`check_energy` needs the current potential energy: total
    energy (plus any heat a sink removed) finite and within ``max_energy_drift_eV`` of its
    value at the first call, and, when ``max_potential_drop_eV`` is set, potential energy
    no more than that below its value at the first call. The last catches a potential with
    a spurious deep minimum (an under-trained NNP): the integrator then conserves energy
    perfectly while the released potential energy blows the slab apart. From a relaxed
    slab with an isolated projectile a physical drop is bounded by the projectile's binding
    (a few eV) and thermal fluctuations. Called as ``observer(state)`` it runs both (so it
    declares ``needs_energy``); to check the energy less often, attach ``check_geometry``
    every step and ``check_energy`` at a longer interval. ``detail`` says what was found.

    The distance check keeps the pairs within a search radius r_s = max(1.5 Å,
    ``min_distance_A`` + 1 Å) and searches again only once an atom has moved more than
    (r_s − ``min_distance_A``)/2 since the last search: until then no pair outside the
    list can have come closer than ``min_distance_A``, so the listed pairs are all there
    is to check (``n_searches`` counts the searches).
    """

    reason = "unphysical"
    needs_energy = True

    def __init__(
        self,
        atoms: Atoms,
        min_distance_A: float = 0.2,
        max_energy_drift_eV: float = 10.0,
        max_potential_drop_eV: float | None = None,
    ) -> None:
        if min_distance_A < 0 or max_energy_drift_eV <= 0:
            raise ConfigError(
                "SanityObserver needs min_distance_A >= 0 and max_energy_drift_eV > 0, got "
                f"{min_distance_A} and {max_energy_drift_eV}"
            )
        self._cell = np.ascontiguousarray(atoms.cell.array, dtype=np.float64)
        self._pbc = [bool(p) for p in atoms.pbc]
        self.min_distance_A = float(min_distance_A)
        # Cell-list codes bin space by the cutoff: a 0.2 Å cutoff makes ~10⁶ bins for a
        # production slab (tens of ms per call). Search wider and keep the pairs instead.
        radius = max(1.5, self.min_distance_A + 1.0)
        self._search = vesin.NeighborList(cutoff=radius, full_list=False)
        self._half_margin_sq_A2 = (0.5 * (radius - self.min_distance_A)) ** 2
        self._pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._search_positions: np.ndarray | None = None
        self.n_searches = 0
        self.max_energy_drift_eV = float(max_energy_drift_eV)
        self.max_potential_drop_eV = max_potential_drop_eV
        self.initial_total_eV: float | None = None
        self.initial_potential_eV: float | None = None
        self.detail: str | None = None

    def __call__(self, state: MDState) -> str | None:
        return self.check_geometry(state) or self.check_energy(state)

    def check_geometry(self, state: MDState) -> str | None:
        """Finite positions and velocities, no pair closer than ``min_distance_A``."""
        if not (np.isfinite(state.positions).all() and np.isfinite(state.velocities).all()):
            self.detail = f"non-finite positions or velocities at t = {state.time_fs:.3f} fs"
            return self.reason
        if self.min_distance_A > 0:
            d_min = self._closest_listed_pair_A(state.positions)
            if d_min is not None and d_min < self.min_distance_A:
                self.detail = (
                    f"atoms {d_min:.3f} Å apart (minimum {self.min_distance_A} Å) at "
                    f"t = {state.time_fs:.3f} fs"
                )
                return self.reason
        return None

    check_geometry.needs_energy = False  # type: ignore[attr-defined]

    def check_energy(self, state: MDState) -> str | None:
        """Total energy finite and within the drift bound; potential within the drop bound."""
        if not state.energy_is_current:
            raise ConfigError(
                f"SanityObserver.check_energy was called at step {state.step} without the "
                "energy of that step; attach it with needs_energy=True"
            )
        total = state.total_eV + state.heat_removed_eV
        if not math.isfinite(total):
            self.detail = f"non-finite energy at t = {state.time_fs:.3f} fs"
            return self.reason
        if self.initial_total_eV is None:
            self.initial_total_eV = total
            self.initial_potential_eV = state.energy_eV
        if self.max_potential_drop_eV is not None:
            drop = self.initial_potential_eV - state.energy_eV
            if drop > self.max_potential_drop_eV:
                self.detail = (
                    f"potential energy fell by {drop:.3f} eV (limit {self.max_potential_drop_eV}"
                    f" eV) at t = {state.time_fs:.3f} fs: a spurious minimum of the potential"
                )
                return self.reason
        drift = total - self.initial_total_eV
        if abs(drift) > self.max_energy_drift_eV:
            self.detail = (
                f"total energy changed by {drift:+.3f} eV (limit {self.max_energy_drift_eV} eV) "
                f"at t = {state.time_fs:.3f} fs"
            )
            return self.reason
        return None

    check_energy.needs_energy = True  # type: ignore[attr-defined]

    def _closest_listed_pair_A(self, positions: np.ndarray) -> float | None:
        """Shortest distance (Å) among the listed pairs, searching again when needed."""
        pos = np.ascontiguousarray(positions, dtype=np.float64)
        old = self._search_positions
        if (
            old is None
            or old.shape != pos.shape
            or self._moved_sq_A2(pos, old) > self._half_margin_sq_A2
        ):
            i, j, shift = self._search.compute(pos, self._cell, self._pbc, "ijS")
            i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
            shift_A = np.asarray(shift, dtype=np.float64).reshape(-1, 3) @ self._cell
            self._pairs = (i, j, shift_A)  # d_ij = r_j − r_i + S·cell
            self._search_positions = pos.copy()
            self.n_searches += 1
        i, j, shift_A = self._pairs
        if len(i) == 0:
            return None
        d = pos[j] - pos[i] + shift_A
        return float(np.sqrt(np.einsum("ij,ij->i", d, d).min()))

    @staticmethod
    def _moved_sq_A2(pos: np.ndarray, old: np.ndarray) -> float:
        d = pos - old
        return float(np.einsum("ij,ij->i", d, d).max(initial=0.0))
