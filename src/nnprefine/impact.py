"""Single impacts: set-up from a seed, outcome classification, early stop, one full trajectory.

Sputtering criterion (DESIGN.md §2). Sort the atoms by height and walk up from the
lowest: the *slab* is every atom reached before the first vertical gap wider than the
potential's cutoff ``r_cut_A``; atoms above that gap are *detached* — more than
``r_cut_A`` above the topmost slab atom, so no slab atom acts on them. A detached atom
moving up (v_z > 0) has left for good: it is *sputtered*, or *reflected* if it is the
projectile. The trajectory is *undecided* while a detached atom moves down (it will hit
the surface again) or a slab atom more than ``flight_margin_A`` above the surface plane
(the mean height of the original top layer) still moves up — it may be on its way out.
The margin (default 2.5 Å) lies above the adatom site (c/2 ≈ 1.8 Å over the top layer)
plus thermal vibration, so an adatom left by the impact does not hold a trajectory open.
Below the margin, a slab atom above the surface plane moving up with at least
``escape_energy_eV`` also holds it open: it may be leaving right now.

Early termination (optional). Once no atom can still leave, the outcome is final and
the run may stop. "Cannot leave" is taken as: the trajectory is not undecided, and no
slab atom has a kinetic energy above ``escape_energy_eV``. An atom in the surface must
carry at least the surface binding energy to escape (planar-barrier picture; for Be
the cohesive energy is 3.3 eV); the default 2.0 eV keeps a margin for under-coordinated
adatoms, which are bound more weakly. The condition must hold for ``hold_fs`` without
interruption (the collision phase is over and potential energy stored in close pairs
has been released) before the run stops. This is a physical argument, not a proof — a
collision of two atoms just under the bound can still hand one of them more — so it is
validated statistically: with ``early_stop = "shadow"`` a full-length run records when
and with which outcome it would have stopped (benchmarks/impact.py, docs/benchmarks.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.data import atomic_masses, atomic_numbers

from nnprefine.errors import ConfigError, NonFiniteResultError, SimulationError
from nnprefine.md import (
    AdaptiveTimestep,
    HeatSink,
    MDState,
    SanityObserver,
    VelocityVerlet,
    heat_sink_mask,
    kinetic_energies_eV,
)

__all__ = [
    "EarlyStop",
    "ImpactSettings",
    "ImpactSpec",
    "Outcome",
    "SputteredAtom",
    "classify",
    "run_impact",
    "setup_impact",
    "surface_plane_z",
]

_A_PER_FS_PER_ASE = units.fs  # ASE velocity (Å/t_ase) times this gives Å/fs


@dataclass(frozen=True)
class ImpactSpec:
    """Where and how a projectile was placed; everything needed to replay the set-up."""

    energy_eV: float
    seed: int
    x_A: float
    y_A: float
    z_A: float
    polar_deg: float
    azimuth_deg: float
    projectile_index: int
    surface_z_A: float


def surface_plane_z(atoms: Atoms) -> float:
    """Height (Å) of the surface plane: the mean z of the top layer (tag 1).

    Falls back to the topmost atom's z when the atoms carry no layer tags.
    """
    tags = atoms.get_tags()
    z = atoms.positions[:, 2]
    if len(z) == 0:
        raise ConfigError("the slab has no atoms")
    if (tags == 1).any():
        return float(z[tags == 1].mean())
    return float(z.max())


def setup_impact(
    slab: Atoms,
    energy_eV: float,
    seed: int,
    height_A: float = 5.0,
    polar_deg: float = 0.0,
    azimuth_deg: float | None = None,
    element: str | None = None,
) -> tuple[Atoms, ImpactSpec]:
    """A copy of ``slab`` with a projectile ``height_A`` above its topmost atom.

    The projectile (by default the element of the slab's first atom) sits at a uniformly
    random point of the surface cell and moves with kinetic energy ``energy_eV`` along
    −z tilted by ``polar_deg`` (0 = normal incidence) towards ``azimuth_deg`` (uniformly
    random when None). The slab keeps its positions, velocities and constraints. All
    random numbers come from ``numpy.random.default_rng(seed)``, always drawn in the
    same order (x, y, azimuth), so the same seed gives the same impact bit for bit.
    """
    if energy_eV <= 0 or height_A <= 0:
        raise ConfigError(
            f"impact needs energy_eV > 0 and height_A > 0, got {energy_eV}, {height_A}"
        )
    if not 0 <= polar_deg < 90:
        raise ConfigError(f"polar_deg must be in [0, 90), got {polar_deg}")
    if not (slab.pbc[0] and slab.pbc[1]):
        raise ConfigError("impacts need a slab periodic in x and y (pbc = True, True, False)")
    rng = np.random.default_rng(seed)
    u, v, w = rng.random(3)
    azimuth = 360.0 * float(w) if azimuth_deg is None else float(azimuth_deg)
    cell = slab.cell.array
    xy = u * cell[0, :2] + v * cell[1, :2]
    z = float(slab.positions[:, 2].max()) + height_A
    symbol = element or slab.get_chemical_symbols()[0]
    if symbol not in atomic_numbers:
        raise ConfigError(f"unknown projectile element {symbol!r}")
    mass = float(atomic_masses[atomic_numbers[symbol]])
    speed_ase = math.sqrt(2.0 * energy_eV / mass)  # Å per ASE time unit
    th, ph = math.radians(polar_deg), math.radians(azimuth)
    direction = np.array([math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), -math.cos(th)])
    atoms = slab.copy()
    atoms.calc = None
    surface_z = surface_plane_z(slab)
    atoms += Atoms(symbol, positions=[[xy[0], xy[1], z]], masses=[mass])
    velocities = atoms.get_velocities()
    velocities[-1] = speed_ase * direction
    atoms.set_velocities(velocities)
    spec = ImpactSpec(
        energy_eV=float(energy_eV),
        seed=int(seed),
        x_A=float(xy[0]),
        y_A=float(xy[1]),
        z_A=z,
        polar_deg=float(polar_deg),
        azimuth_deg=azimuth,
        projectile_index=len(atoms) - 1,
        surface_z_A=surface_z,
    )
    return atoms, spec


@dataclass(frozen=True)
class SputteredAtom:
    """An atom that left the slab: its index, kinetic energy (eV) and flight direction."""

    index: int
    kinetic_eV: float
    polar_deg: float  # angle from the surface normal (+z), degrees
    azimuth_deg: float  # in-plane angle from +x, degrees

    @property
    def direction(self) -> tuple[float, float, float]:
        th, ph = math.radians(self.polar_deg), math.radians(self.azimuth_deg)
        return (math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th))


@dataclass(frozen=True)
class Outcome:
    """The classification of one configuration (see the module docstring)."""

    sputtered: tuple[SputteredAtom, ...]
    reflected: bool
    reflected_kinetic_eV: float | None
    undecided: bool
    undecided_atoms: tuple[int, ...]
    slab_top_z_A: float

    @property
    def n_sputtered(self) -> int:
        return len(self.sputtered)


def _flight(index: int, v: np.ndarray, ke: float) -> SputteredAtom:
    speed = float(np.linalg.norm(v))
    polar = math.degrees(math.acos(max(-1.0, min(1.0, v[2] / speed)))) if speed > 0 else 0.0
    azimuth = math.degrees(math.atan2(v[1], v[0])) % 360.0
    return SputteredAtom(index=index, kinetic_eV=ke, polar_deg=polar, azimuth_deg=azimuth)


def _detached(z: np.ndarray, r_cut_A: float) -> tuple[np.ndarray, float]:
    """Atoms above the slab's first gap wider than ``r_cut_A``, and the slab's top z (Å).

    Gaps are searched from the middle of the slab (the median height) upwards, so an atom
    that left through the bottom (transmitted through a thin slab) does not make the
    whole slab look detached.
    """
    order = np.argsort(z, kind="stable")
    zs = z[order]
    start = len(zs) // 2
    gaps = start + np.flatnonzero(np.diff(zs[start:]) > r_cut_A)
    top = len(zs) - 1 if len(gaps) == 0 else int(gaps[0])
    detached = np.zeros(len(z), dtype=bool)
    detached[order[top + 1 :]] = True
    return detached, float(zs[top])


def classify(
    positions: np.ndarray,
    velocities: np.ndarray,
    masses: np.ndarray,
    projectile_index: int,
    surface_z_A: float,
    r_cut_A: float,
    flight_margin_A: float = 2.5,
    escape_energy_eV: float | None = None,
) -> Outcome:
    """Classify a configuration: sputtered atoms, reflected projectile, undecided.

    positions: (n, 3) float64, Å. velocities: (n, 3) float64, Å/fs. masses: (n,) float64,
    amu. ``surface_z_A`` is the surface plane (Å), ``r_cut_A`` the potential's
    interaction range (Å). With ``escape_energy_eV`` (eV), a slab atom above the surface
    plane but below the flight margin also holds the trajectory open when it moves up
    with at least that kinetic energy (it may be leaving right now). See the module
    docstring for the criterion.
    """
    if r_cut_A <= 0:
        raise ConfigError(f"r_cut_A must be positive, got {r_cut_A}")
    z = positions[:, 2]
    vz = velocities[:, 2]
    detached, top = _detached(z, r_cut_A)
    escaping = detached & (vz > 0)
    returning = detached & ~(vz > 0)
    ke = kinetic_energies_eV(masses, velocities)
    above = z > surface_z_A + flight_margin_A
    if escape_energy_eV is not None:
        above |= (z > surface_z_A) & (ke >= escape_energy_eV)
    in_flight = ~detached & above & (vz > 0)
    sputtered = tuple(
        _flight(int(i), velocities[i], float(ke[i]))
        for i in np.flatnonzero(escaping)
        if i != projectile_index
    )
    reflected = bool(escaping[projectile_index])
    waiting = np.flatnonzero(returning | in_flight)
    return Outcome(
        sputtered=sputtered,
        reflected=reflected,
        reflected_kinetic_eV=float(ke[projectile_index]) if reflected else None,
        undecided=len(waiting) > 0,
        undecided_atoms=tuple(int(i) for i in waiting),
        slab_top_z_A=top,
    )


class EarlyStop:
    """Observer that ends a trajectory once no atom can still leave (module docstring).

    With ``stop=False`` it only records when it would have stopped (``stop_time_fs``,
    ``stop_step``, ``outcome``), for paired validation against full-length runs. It reads
    positions and velocities only, never the potential energy.
    """

    reason = "early_stop"
    needs_energy = False

    def __init__(
        self,
        projectile_index: int,
        surface_z_A: float,
        r_cut_A: float,
        escape_energy_eV: float = 2.0,
        hold_fs: float = 10.0,
        flight_margin_A: float = 2.5,
        stop: bool = True,
    ) -> None:
        if escape_energy_eV <= 0 or hold_fs < 0:
            raise ConfigError(
                f"early stop needs escape_energy_eV > 0 and hold_fs >= 0, got {escape_energy_eV} "
                f"and {hold_fs}"
            )
        self.projectile_index = projectile_index
        self.surface_z_A = surface_z_A
        self.r_cut_A = r_cut_A
        self.escape_energy_eV = escape_energy_eV
        self.hold_fs = hold_fs
        self.flight_margin_A = flight_margin_A
        self.stop = stop
        self._quiet_since: float | None = None
        self.stop_time_fs: float | None = None
        self.stop_step: int | None = None
        self.outcome: Outcome | None = None

    def __call__(self, state: MDState) -> str | None:
        if self.stop_time_fs is not None:
            return self.reason if self.stop else None
        outcome = classify(
            state.positions,
            state.velocities,
            state.masses,
            self.projectile_index,
            self.surface_z_A,
            self.r_cut_A,
            self.flight_margin_A,
            self.escape_energy_eV,
        )
        quiet = not outcome.undecided
        if quiet:
            ke = state.kinetic_energies_eV()
            detached, _ = _detached(state.positions[:, 2], self.r_cut_A)
            quiet = float(ke[~detached].max(initial=0.0)) < self.escape_energy_eV
        if not quiet:
            self._quiet_since = None
            return None
        if self._quiet_since is None:
            self._quiet_since = state.time_fs
        if state.time_fs - self._quiet_since >= self.hold_fs:
            self.stop_time_fs, self.stop_step, self.outcome = state.time_fs, state.step, outcome
            return self.reason if self.stop else None
        return None


EARLY_STOP_MODES = ("off", "on", "shadow")
HEAT_SINKS = ("off", "berendsen", "langevin")


@dataclass(frozen=True)
class ImpactSettings:
    """How one impact trajectory is run. Defaults are the paper's production protocol.

    ``r_cut_A``: the potential's interaction range (Å); None takes the calculator's
    ``r_cut_A`` attribute. ``timestep_fs`` (fixed step), ``duration_fs``, then up to
    ``max_extensions`` extensions of ``extension_fs`` while undecided. ``adaptive``
    replaces the fixed step. ``early_stop`` is "off", "on" or "shadow" (record when
    it would stop, run on), tested every ``check_interval`` steps. ``heat_sink`` is "off",
    "berendsen" or "langevin". The sanity bounds (``min_distance_A``,
    ``max_energy_drift_eV``, ``max_potential_drop_eV``) end a trajectory as unphysical
    (:class:`nnprefine.md.SanityObserver`); distances are checked every step, the energy
    bounds every ``energy_check_interval`` steps. Only those steps ask the calculator for
    the energy, so a calculator whose energy costs extra saves it on the others. The NNP
    calculators return it with the forces at no cost (it is the network pass the forces
    need), and so does the SNAP reference (LAMMPS ``run 0`` on 491 atoms: 188.7 ms with
    the energy, 188.6 without): the default 1 checks every step.

    The same settings run production impacts, exploration impacts and reference-driven
    impacts of the initial data; a config section names its fields with these names.
    """

    r_cut_A: float | None = None
    timestep_fs: float = 0.2
    duration_fs: float = 120.0
    extension_fs: float = 120.0
    max_extensions: int = 1
    height_A: float = 5.0
    #: the projectile's element; None: the slab's first atom's (self-sputtering)
    projectile: str | None = None
    polar_deg: float = 0.0
    azimuth_deg: float | None = None
    flight_margin_A: float = 2.5
    adaptive: AdaptiveTimestep | None = None
    early_stop: str = "off"
    escape_energy_eV: float = 2.0
    hold_fs: float = 10.0
    check_interval: int = 5
    energy_check_interval: int = 1
    heat_sink: str = "off"
    heat_sink_temperature_K: float = 300.0
    heat_sink_tau_fs: float = 50.0
    heat_sink_lateral_width_A: float = 3.0
    heat_sink_bottom_width_A: float = 3.0
    min_distance_A: float = 0.2
    max_energy_drift_eV: float = 10.0
    #: potential energy may fall at most this far below its start (eV); None = unchecked
    max_potential_drop_eV: float | None = 30.0

    def __post_init__(self) -> None:
        if self.early_stop not in EARLY_STOP_MODES:
            raise ConfigError(
                f"early_stop must be 'off', 'on' or 'shadow', got {self.early_stop!r}"
            )
        if self.heat_sink not in HEAT_SINKS:
            raise ConfigError(
                f"heat_sink must be 'off', 'berendsen' or 'langevin', got {self.heat_sink!r}"
            )
        positive = ("timestep_fs", "duration_fs", "heat_sink_tau_fs", "min_distance_A")
        positive += ("max_energy_drift_eV", "height_A")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.polar_deg < 90:
            raise ConfigError(
                f"polar_deg must be in [0, 90) degrees from the surface normal, got "
                f"{self.polar_deg}"
            )
        if self.projectile is not None and (
            self.projectile not in atomic_numbers or self.projectile == "X"
        ):
            raise ConfigError(
                f"projectile must be a chemical symbol such as 'Be', got {self.projectile!r}"
            )
        for name in ("extension_fs", "max_extensions"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be zero or more, got {getattr(self, name)}")
        for name in ("check_interval", "energy_check_interval"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(
                    f"{name} must be a whole number of steps, 1 or more, got "
                    f"{getattr(self, name)!r}"
                )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolve_r_cut(self, calc: Any) -> float:
        r = self.r_cut_A if self.r_cut_A is not None else getattr(calc, "r_cut_A", None)
        if r is None or not r > 0:
            raise ConfigError(
                f"no interaction range: set ImpactSettings.r_cut_A (Å); {type(calc).__name__} "
                "has no r_cut_A attribute (SNAP reference: 4.8 Å, paper NNPs: 7 Å)"
            )
        return float(r)


@dataclass
class ImpactResult:
    """Everything recorded about one trajectory (energies eV, lengths Å, times fs / s)."""

    spec: ImpactSpec
    n_sputtered: int
    sputtered: list[dict[str, float]]
    reflected: bool
    undecided: bool
    unphysical: bool
    stop_reason: str
    detail: str | None
    steps: int
    simulated_fs: float
    n_extensions: int
    wall_s: float
    core_s: float
    force_s: float
    energy_drift_eV: float
    max_disagreement: float | None = None
    shadow: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    heat_removed_eV: float = 0.0  # by the optional heat sink (in energy_drift_eV's balance)


class _MaxTracker:
    """Running maximum of ``state.results[key]`` (a committee's disagreement)."""

    needs_energy = False

    def __init__(self, key: str) -> None:
        self.key = key
        self.value: float | None = None

    def __call__(self, state: MDState) -> None:
        x = state.results.get(self.key)
        if x is not None:
            x = float(np.max(x))
            self.value = x if self.value is None else max(self.value, x)


def run_impact(
    slab: Atoms,
    calc: Any,
    energy_eV: float,
    seed: int,
    settings: ImpactSettings | None = None,
    observers: tuple[tuple[Any, int], ...] = (),
    disagreement_key: str = "force_disagreement_eV_per_A",
) -> ImpactResult:
    """Run one impact on ``slab`` (relaxed, equilibrated, with velocities) and classify it.

    ``calc`` is any ASE calculator. Extra ``observers`` are ``(fn, interval)`` pairs.
    If the calculator's results carry ``disagreement_key``, its maximum along the path is
    recorded. An unphysical trajectory (NaN, overlap, exploding energy) is returned with
    ``unphysical=True`` and the reason in ``detail``, not raised.
    """
    settings = settings or ImpactSettings()
    r_cut = settings.resolve_r_cut(calc)
    wall0, core0 = time.perf_counter(), time.thread_time()
    atoms, spec = setup_impact(
        slab,
        energy_eV,
        seed,
        settings.height_A,
        settings.polar_deg,
        settings.azimuth_deg,
        element=settings.projectile,
    )
    atoms.calc = calc
    sink = None
    if settings.heat_sink != "off":
        mask = heat_sink_mask(
            atoms,
            (spec.x_A, spec.y_A),
            settings.heat_sink_lateral_width_A,
            settings.heat_sink_bottom_width_A,
            surface_z_A=spec.surface_z_A,
        )
        mask[spec.projectile_index] = False
        sink = HeatSink(
            mask,
            settings.heat_sink_temperature_K,
            settings.heat_sink_tau_fs,
            settings.heat_sink,
            # its own random stream, apart from the one that placed the projectile
            seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]),
        )
    timestep = settings.adaptive if settings.adaptive is not None else settings.timestep_fs
    unphysical, detail = False, None
    try:
        dyn = VelocityVerlet(atoms, timestep, heat_sink=sink)
    except SimulationError as exc:
        raise SimulationError(f"impact seed {seed}: first force call failed: {exc}") from exc
    s = dyn.state
    e0 = s.total_eV
    sanity = SanityObserver(
        atoms,
        settings.min_distance_A,
        settings.max_energy_drift_eV,
        max_potential_drop_eV=settings.max_potential_drop_eV,
    )
    if settings.energy_check_interval == 1:
        dyn.attach(sanity, 1)
    else:
        dyn.attach(sanity.check_geometry, 1)
        dyn.attach(sanity.check_energy, settings.energy_check_interval)
    tracker = _MaxTracker(disagreement_key)
    dyn.attach(tracker, 1)
    early = None
    if settings.early_stop != "off":
        early = EarlyStop(
            spec.projectile_index,
            spec.surface_z_A,
            r_cut,
            settings.escape_energy_eV,
            settings.hold_fs,
            settings.flight_margin_A,
            stop=settings.early_stop == "on",
        )
        dyn.attach(early, settings.check_interval)
    for fn, interval in observers:
        dyn.attach(fn, interval)

    def outcome_now() -> Outcome:
        return classify(
            s.positions,
            s.velocities,
            s.masses,
            spec.projectile_index,
            spec.surface_z_A,
            r_cut,
            settings.flight_margin_A,
            settings.escape_energy_eV,
        )

    n_ext = 0
    duration = settings.duration_fs
    while True:
        outcome = None
        try:
            reason = dyn.run(duration)
        except SimulationError as exc:
            # "non-finite": the calculator itself failed (NaN/inf), not the dynamics
            reason = "non-finite" if isinstance(exc, NonFiniteResultError) else "unphysical"
            unphysical, detail = True, str(exc)
            break
        if reason == SanityObserver.reason:
            unphysical, detail = True, sanity.detail
            break
        if reason != "duration":
            break
        outcome = outcome_now()
        if not outcome.undecided or n_ext >= settings.max_extensions:
            break
        n_ext += 1
        duration = settings.extension_fs
    if outcome is None:  # the run ended early: classify where it stopped
        outcome = outcome_now()
    if not s.energy_is_current:
        try:  # the drift needs the energy of the last step
            dyn.refresh_energy()
        except SimulationError as exc:
            unphysical, detail = True, detail or str(exc)
    shadow = None
    if early is not None and settings.early_stop == "shadow":
        shadow = {"stop_time_fs": early.stop_time_fs, "stop_step": early.stop_step}
        if early.outcome is not None:
            shadow |= {
                "n_sputtered": early.outcome.n_sputtered,
                "reflected": early.outcome.reflected,
            }
    return ImpactResult(
        spec=spec,
        n_sputtered=outcome.n_sputtered,
        sputtered=[asdict(a) for a in outcome.sputtered],
        reflected=outcome.reflected,
        undecided=outcome.undecided,
        unphysical=unphysical,
        stop_reason=reason,
        detail=detail,
        steps=s.step,
        simulated_fs=s.time_fs,
        n_extensions=n_ext,
        wall_s=time.perf_counter() - wall0,
        core_s=time.thread_time() - core0,
        force_s=s.force_time_s,
        energy_drift_eV=s.total_eV + s.heat_removed_eV - e0,
        max_disagreement=tracker.value,
        shadow=shadow,
        settings=settings.as_dict(),
        heat_removed_eV=s.heat_removed_eV,
    )
