"""The project configuration: one TOML file, typed and checked before any work starts.

Every section is a frozen dataclass; every key has one type and, where a person types a
number, its unit in the name. Loading is strict: an unknown key gets a "did you mean …?",
a wrong type or an out-of-range value gets a message naming the key and what is allowed.
Relative paths are resolved against the config file's folder. Physics settings are kept
apart from compute resources (``[executor]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnprefine.errors import ConfigError

__all__ = [
    "Config",
    "DescriptorConfig",
    "ExecutorConfig",
    "InitialDataConfig",
    "NetworkConfig",
    "ProductionConfig",
    "ProjectConfig",
    "ReferenceConfig",
    "RefineConfig",
    "SlabConfig",
    "StructuresConfig",
    "ThresholdConfig",
    "TrainingConfig",
    "ValidationConfig",
    "load_config",
    "config_from_dict",
]


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


def _check_hot_and_bulk(section: Any, key: str) -> None:
    """The lists of temperatures and strains that initial data and validation share."""
    _check(
        all(t > 0 for t in section.hot_temperatures_K),
        f"{key}.hot_temperatures_K",
        "positive temperatures (K)",
        list(section.hot_temperatures_K),
    )
    _check(
        all(-0.2 < s < 0.2 for s in section.bulk_strains),
        f"{key}.bulk_strains",
        "relative strains between -0.2 and 0.2",
        list(section.bulk_strains),
    )


@contextlib.contextmanager
def _naming_keys(section: Any, key: str, names: dict[str, str] | None = None) -> Iterator[None]:
    """Re-raise a domain's :class:`ConfigError` with the TOML key of the field it names.

    ``names`` maps domain field names to keys of the section (default: the section's own
    field names); the longest name found in the message is taken.
    """
    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        if names is None:
            names = {f.name: f.name for f in dataclasses.fields(section)}
        for name in sorted(names, key=len, reverse=True):
            if name in text:
                full = f"{key}.{names[name]}"
                value = getattr(section, names[name], None)
                shown = f" = {value!r}" if value is not None and "[" not in names[name] else ""
                raise ConfigError(f"{full}{shown} is not allowed: {text}") from exc
        raise ConfigError(f"[{key}] {text}") from exc


@dataclass(frozen=True)
class ProjectConfig:
    """Where results go, the system's elements and the master seed every other seed
    derives from.

    ``element`` is the target's (slabs and bulk are of it); ``projectile`` the ions'
    (default: the target's, self-sputtering). A [[production]] campaign may name its own
    projectile. ``elements`` lists any further element the data holds (imported frames of
    an alloy, say); the model covers the target, every projectile and these.
    """

    name: str = "nnprefine"
    output_dir: str = "runs/nnprefine"
    element: str = "Be"
    projectile: str | None = None
    elements: tuple[str, ...] = ()
    seed: int = 1

    def validate(self, key: str) -> None:
        _check(bool(self.name.strip()), f"{key}.name", "a non-empty name", self.name)
        for name in ("element", "projectile"):
            _check_element(getattr(self, name), f"{key}.{name}")
        for i, el in enumerate(self.elements):
            _check_element(el, f"{key}.elements[{i}]")

    @property
    def projectile_element(self) -> str:
        """The projectile's element (the target's unless ``projectile`` is set)."""
        return self.projectile or self.element


def _check_element(symbol: str | None, key: str) -> None:
    from ase.data import atomic_numbers

    _check(
        symbol is None or (symbol in atomic_numbers and symbol != "X"),
        key,
        "a chemical symbol such as 'Be' or 'W'",
        symbol,
    )


@dataclass(frozen=True)
class ReferenceConfig:
    """The reference method: ``builtin-snap`` or any ASE calculator as ``module:Class``."""

    calculator: str = "builtin-snap"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        return {"calculator": self.calculator, "kwargs": dict(self.kwargs)}

    def validate(self, key: str) -> None:
        ok = self.calculator in ("builtin-snap", "snap") or (
            ":" in self.calculator or "." in self.calculator
        )
        _check(
            ok,
            f"{key}.calculator",
            "'builtin-snap' or an import path 'module:Class'",
            self.calculator,
        )
        _check(
            self.calculator not in ("builtin-snap", "snap") or not self.kwargs,
            f"{key}.kwargs",
            "none for the built-in SNAP reference (it has no settings; remove the table)",
            self.kwargs,
        )


@dataclass(frozen=True)
class StructuresConfig:
    """Bulk lattice guesses (relaxed with the reference), slab relaxation and equilibration."""

    #: the target's crystal: "hcp" (a and c), "bcc" or "fcc" (a, the cube's edge; c unused)
    crystal: str = "hcp"
    a_A: float = 2.24
    c_A: float = 3.60
    relax_fmax_eV_per_A: float = 1e-3
    temperature_K: float = 300.0
    equilibration_fs: float = 2000.0
    equilibration_timestep_fs: float = 1.0
    thermostat: str = "nose-hoover"
    fixed_layers: int = 2
    #: what relaxes and equilibrates the production slabs: "reference" (in `init`) or
    #: "model" (member 1 of the final committee, in `sputter`) — for DFT references,
    #: whose cost for a 500-atom slab would dwarf the rest of the run
    production_slab_driver: str = "reference"

    def validate(self, key: str) -> None:
        from nnprefine.structures import CRYSTALS

        _check(self.crystal in CRYSTALS, f"{key}.crystal", " or ".join(CRYSTALS), self.crystal)
        _check(
            self.production_slab_driver in ("reference", "model"),
            f"{key}.production_slab_driver",
            "'reference' or 'model'",
            self.production_slab_driver,
        )
        for name in (
            "a_A",
            "c_A",
            "relax_fmax_eV_per_A",
            "temperature_K",
            "equilibration_timestep_fs",
        ):
            _check(
                getattr(self, name) > 0, f"{key}.{name}", "a positive number", getattr(self, name)
            )
        _check(
            self.equilibration_fs >= 0,
            f"{key}.equilibration_fs",
            "zero or more",
            self.equilibration_fs,
        )
        from nnprefine.structures import THERMOSTATS

        _check(
            self.thermostat in THERMOSTATS,
            f"{key}.thermostat",
            " or ".join(repr(t) for t in THERMOSTATS),
            self.thermostat,
        )
        _check(self.fixed_layers >= 0, f"{key}.fixed_layers", "zero or more", self.fixed_layers)


@dataclass(frozen=True)
class SlabConfig:
    """A slab: surface (Miller index: '0001' or '01-10' for hcp; '100', '110' or '111' for
    bcc and fcc), size (nx, ny, layers) in the builder's surface cells, vacuum on each side."""

    surface: str = "0001"
    size: tuple[int, int, int] = (4, 4, 6)
    vacuum_A: float = 7.0
    #: the project's element and crystal (set at load from project.element and
    #: structures.crystal; not keys of the table)
    element: str = field(default="Be", metadata={"toml": False})
    crystal: str = field(default="hcp", metadata={"toml": False})

    def validate(self, key: str) -> None:
        from nnprefine.structures import SURFACES

        allowed = SURFACES.get(self.crystal, ())
        _check(
            self.surface in allowed,
            f"{key}.surface",
            f"a {self.crystal} surface: {' or '.join(repr(s) for s in allowed)} "
            "(structures.crystal sets the crystal)",
            self.surface,
        )
        _check(
            len(self.size) == 3 and all(n >= 1 for n in self.size),
            f"{key}.size",
            "three positive integers [nx, ny, layers]",
            list(self.size),
        )
        if self.surface == "01-10":
            _check(
                self.size[1] % 2 == 0,
                f"{key}.size",
                "an even second number for an hcp(01-10) slab",
                list(self.size),
            )
        _check(self.vacuum_A > 0, f"{key}.vacuum_A", "a positive number of Å", self.vacuum_A)

    @property
    def label(self) -> str:
        return f"{self.element}({self.surface})-{'x'.join(str(n) for n in self.size)}"

    @property
    def file_key(self) -> str:
        """The label with every other builder argument: slabs that differ in vacuum get
        files of their own."""
        return f"{self.label}-vacuum{self.vacuum_A:g}A"


@dataclass(frozen=True)
class DescriptorConfig:
    """Symmetry functions: the paper's 53-function set, or a smaller generated one."""

    preset: str = "paper"  # "paper" or "generated"
    r_cut_A: float = 7.0
    n_radial: int = 9
    n_narrow: int = 24
    n_wide: int = 20

    def validate(self, key: str) -> None:
        _check(
            self.preset in ("paper", "generated"),
            f"{key}.preset",
            "'paper' or 'generated'",
            self.preset,
        )
        with _naming_keys(self, key):
            self.symmetry_functions("Be")  # the set's own checks; the elements are checked apart

    def symmetry_functions(self, elements: str | tuple[str, ...]) -> Any:
        """The :class:`nnprefine.descriptors.SymmetryFunctionSet` this section names, for
        one element or several (the paper's set is for one element only)."""
        from nnprefine.descriptors import make_set, paper_set

        elements = (elements,) if isinstance(elements, str) else tuple(elements)
        if self.preset == "paper":
            if len(elements) != 1:
                raise ConfigError(
                    f"descriptor.preset = 'paper' is the paper's one-element set; the project "
                    f"has {', '.join(elements)}: set preset = 'generated' (n_radial, n_narrow, "
                    "n_wide per element pair)"
                )
            return paper_set(elements[0], r_cut_A=self.r_cut_A)
        return make_set(
            elements,
            n_radial=self.n_radial,
            n_narrow=self.n_narrow,
            n_wide=self.n_wide,
            r_cut_A=self.r_cut_A,
        )


@dataclass(frozen=True)
class NetworkConfig:
    """Per-element networks and the committee built from them."""

    hidden: tuple[int, ...] = (30, 30)
    activation: str = "softplus"
    committee_size: int = 2
    #: add a ZBL screened-Coulomb pair repulsion, switched off between zbl_inner_A and
    #: zbl_outer_A (Å); the networks then learn reference − ZBL (nnprefine.model.ZBLBaseline)
    zbl_baseline: bool = False
    zbl_inner_A: float = 1.0
    zbl_outer_A: float = 2.0
    #: a trained potential to start from (relative to the config file): an nnprefine
    #: committee or model directory, or an n2p2 set (input.nn, scaling.data,
    #: weights.XXX.data). It is member 1's start, keeping its input scaling and energy
    #: offsets; the other members are fresh networks of its architecture. Its descriptor
    #: and layers become the project's (they replace [descriptor] r_cut_A and hidden /
    #: activation here); a nnprefine model's ZBL baseline replaces the zbl_* keys, an
    #: n2p2 set gets the baseline they describe
    initial_model: str | None = None

    def baseline(self) -> Any:
        """The :class:`nnprefine.model.ZBLBaseline` these keys ask for, or None."""
        from nnprefine.model import ZBLBaseline

        return ZBLBaseline(self.zbl_inner_A, self.zbl_outer_A) if self.zbl_baseline else None

    def validate(self, key: str) -> None:
        _check(
            len(self.hidden) >= 1 and all(n >= 1 for n in self.hidden),
            f"{key}.hidden",
            "a list of positive layer widths, e.g. [30, 30]",
            list(self.hidden),
        )
        from nnprefine.model import ACTIVATIONS

        _check(
            self.activation in ACTIVATIONS,
            f"{key}.activation",
            "one of " + ", ".join(repr(a) for a in ACTIVATIONS),
            self.activation,
        )
        _check(
            0 < self.zbl_inner_A < self.zbl_outer_A,
            f"{key}.zbl_inner_A, zbl_outer_A",
            "0 < zbl_inner_A < zbl_outer_A (Å)",
            [self.zbl_inner_A, self.zbl_outer_A],
        )
        _check(
            self.committee_size >= 2,
            f"{key}.committee_size",
            "2 or more members",
            self.committee_size,
        )


def _training_settings() -> type:
    from nnprefine.training import TrainingSettings

    return TrainingSettings


def _impact_settings() -> type:
    from nnprefine.impact import ImpactSettings

    return ImpactSettings


def _flat(
    load: Callable[[], type],
    prefix: str = "",
    only: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
    **defaults: Any,
) -> Any:
    """A field holding a domain settings object whose keys sit flat in the TOML section.

    ``load()`` returns the domain class (imported when first needed); its fields are TOML
    keys of this section under ``prefix + name``, all of them or ``only`` these, less
    ``exclude``. ``defaults`` replace the domain's defaults for this section. The domain's
    own checks run when the object is built, at load.
    """
    return field(
        default_factory=lambda: load()(**defaults),
        metadata={
            "flatten": load,
            "prefix": prefix,
            "only": only,
            "exclude": frozenset(exclude),
            "defaults": defaults,
        },
    )


@dataclass(frozen=True)
class TrainingConfig:
    """Energy + force training: the project's policy and every key of ``TrainingSettings``.

    ``[training]`` takes ``test_fraction`` and ``warm_start`` (continue each refinement
    iteration's committee from the previous one) and, flat in the same table, every field
    of :class:`nnprefine.training.TrainingSettings` under its own name (``optimizer``,
    ``epochs``, ``batch_size_frames``, ``kalman_force_fraction``, ``patience_epochs``, …).
    """

    test_fraction: float = 0.1
    warm_start: bool = True
    settings: Any = _flat(_training_settings, exclude=("seed", "warm_start", "quiet"))

    def validate(self, key: str) -> None:
        _check(0 < self.test_fraction < 1, f"{key}.test_fraction", "in (0, 1)", self.test_fraction)


#: the impact keys of the short runs that gather data (initial data, exploration), and
#: their defaults: one run without extensions, looser sanity bounds than production
#: (data-gathering runs only need to stop a blow-up; close contacts are what they seek)
_SHORT_RUN_KEYS = (
    "timestep_fs",
    "duration_fs",
    "min_distance_A",
    "max_energy_drift_eV",
    "projectile",
    "polar_deg",
    "azimuth_deg",
)
_SHORT_RUN_SANITY: dict[str, Any] = dict(
    max_extensions=0, min_distance_A=0.3, max_energy_drift_eV=20.0, max_potential_drop_eV=None
)


@dataclass(frozen=True)
class InitialDataConfig:
    """Reference-driven impact MD and thermal MD on the small slab; random snapshots labelled."""

    slab: SlabConfig = field(default_factory=lambda: SlabConfig("0001", (4, 4, 6), 5.8))
    energies_eV: tuple[float, ...] = (20.0, 35.0, 50.0, 75.0, 100.0)
    runs_per_energy: int = 100
    high_energy_eV: float = 75.0  # at and above it, runs last high_energy_duration_fs
    high_energy_duration_fs: float = 50.0
    snapshots_per_run: int = 5
    thermal_frames: int = 50
    thermal_interval_fs: float = 20.0
    #: coverage of what production meets, beyond the paper's protocol (all off by default):
    #: the small slab heated to each of hot_temperatures_K (NVE from velocities at 2·T);
    #: hcp bulk supercells bulk_size at each of bulk_strains (relative to the reference
    #: lattice, NVE from bulk_temperature_K); the production slab's own thermal motion.
    #: Each run gives *_snapshots random labelled frames.
    hot_temperatures_K: tuple[float, ...] = ()
    hot_snapshots: int = 5
    hot_duration_fs: float = 200.0
    bulk_strains: tuple[float, ...] = ()
    bulk_size: tuple[int, int, int] = (3, 3, 2)
    bulk_temperature_K: float = 600.0
    bulk_snapshots: int = 5
    bulk_duration_fs: float = 100.0
    production_slab_snapshots: int = 0
    production_slab_duration_fs: float = 100.0
    #: labelled frames a user already has (extxyz, n2p2 input.data, ASE db; paths relative
    #: to the config file), stored with origin "import" before any reference MD; with
    #: them, runs_per_energy = 0 and thermal_frames = 0 skip the reference-driven data.
    #: They must be labels of the config's [reference] method, in eV and Å.
    import_files: tuple[str, ...] = ()
    #: a stage of reference trajectories (initial data, validation set) refuses to go on
    #: when more than this fraction of them failed (a reference that returns NaN, raises)
    max_failed_fraction: float = 0.2
    #: reference-driven impacts: ``timestep_fs``, ``duration_fs`` and the sanity bounds
    #: ``min_distance_A``, ``max_energy_drift_eV`` of
    #: :class:`nnprefine.impact.ImpactSettings`, flat in ``[initial_data]``
    impact: Any = _flat(
        _impact_settings,
        only=_SHORT_RUN_KEYS,
        timestep_fs=0.5,
        duration_fs=150.0,
        **_SHORT_RUN_SANITY,
    )

    def duration_fs(self, energy_eV: float) -> float:
        """How long a reference-driven impact of ``energy_eV`` runs (fs)."""
        return (
            self.high_energy_duration_fs
            if energy_eV >= self.high_energy_eV
            else self.impact.duration_fs
        )

    def validate(self, key: str) -> None:
        self.slab.validate(f"{key}.slab")
        _check(
            all(e > 0 for e in self.energies_eV),
            f"{key}.energies_eV",
            "positive energies",
            list(self.energies_eV),
        )
        for name in ("runs_per_energy", "snapshots_per_run", "thermal_frames"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        _check_hot_and_bulk(self, key)
        _check(
            len(self.bulk_size) == 3 and all(n >= 1 for n in self.bulk_size),
            f"{key}.bulk_size",
            "three positive integers",
            list(self.bulk_size),
        )
        _check(
            0 <= self.max_failed_fraction <= 1,
            f"{key}.max_failed_fraction",
            "in [0, 1]",
            self.max_failed_fraction,
        )
        for name in ("hot_snapshots", "bulk_snapshots", "production_slab_snapshots"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        for name in (
            "high_energy_duration_fs",
            "thermal_interval_fs",
            "hot_duration_fs",
            "bulk_duration_fs",
            "production_slab_duration_fs",
            "bulk_temperature_K",
        ):
            _check(
                getattr(self, name) > 0, f"{key}.{name}", "a positive number", getattr(self, name)
            )


@dataclass(frozen=True)
class ValidationConfig:
    """An independent validation set (origin ``validation``), never trained or tested on.

    Reference-driven frames with their own seeds: impacts on the initial-data slab (the
    initial-data protocol, snapshots to ``impact_duration_fs``), the same slab heated to
    ``hot_temperatures_K``, the relaxed production slab, and hcp bulk at ``bulk_strains``
    (isotropic, relative to the reference lattice); with ``refine.second_surface_slab``,
    that slab relaxed and hot (the transferability check). The ``target_*`` keys are the
    accuracy the final model's verdict holds it to.
    """

    impact_energies_eV: tuple[float, ...] = (20.0, 35.0, 50.0, 75.0, 100.0)
    impact_runs_per_energy: int = 4
    impact_snapshots_per_run: int = 5
    impact_duration_fs: float = 150.0
    hot_temperatures_K: tuple[float, ...] = (1000.0, 2000.0, 3000.0)
    hot_snapshots_per_temperature: int = 5
    hot_duration_fs: float = 200.0
    production_slab: bool = True
    bulk_strains: tuple[float, ...] = (-0.02, -0.01, 0.0, 0.01, 0.02)
    #: with refine.second_surface_slab: that slab relaxed, and heated to each of
    #: hot_temperatures_K for this many snapshots (group ``second_surface``)
    second_surface_snapshots_per_temperature: int = 2
    target_energy_rmse_meV_per_atom: float = 5.0
    target_force_rmse_meV_per_A: float = 150.0
    target_bulk_energy_meV_per_atom: float = 5.0
    target_lattice_percent: float = 0.5
    target_rank_correlation: float = 0.6

    def validate(self, key: str) -> None:
        _check(
            all(e > 0 for e in self.impact_energies_eV),
            f"{key}.impact_energies_eV",
            "positive energies",
            list(self.impact_energies_eV),
        )
        _check_hot_and_bulk(self, key)
        for name in ("impact_runs_per_energy", "impact_snapshots_per_run"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        for name in ("hot_snapshots_per_temperature", "second_surface_snapshots_per_temperature"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        for name in ("impact_duration_fs", "hot_duration_fs"):
            _check(
                getattr(self, name) > 0,
                f"{key}.{name}",
                "a positive time (fs)",
                getattr(self, name),
            )
        for f in dataclasses.fields(self):
            if f.name.startswith("target_"):
                _check(
                    getattr(self, f.name) >= 0,
                    f"{key}.{f.name}",
                    "zero or more",
                    getattr(self, f.name),
                )

    def targets(self) -> Any:
        """The :class:`nnprefine.validation.Targets` of the verdict."""
        from nnprefine.validation import Targets

        return Targets(
            energy_rmse_meV_per_atom=self.target_energy_rmse_meV_per_atom,
            force_rmse_meV_per_A=self.target_force_rmse_meV_per_A,
            bulk_energy_meV_per_atom=self.target_bulk_energy_meV_per_atom,
            lattice_percent=self.target_lattice_percent,
            rank_correlation=self.target_rank_correlation,
        )


@dataclass(frozen=True)
class ThresholdConfig:
    """Selection thresholds of one refinement iteration (paper: 20 meV/atom, 2 eV/Å; then 2, 0.8)."""

    energy_meV_per_atom: float
    force_eV_per_A: float


@dataclass(frozen=True)
class RefineConfig:
    """The query-by-committee loop."""

    max_iterations: int = 2
    thresholds: tuple[ThresholdConfig, ...] = (
        ThresholdConfig(20.0, 2.0),
        ThresholdConfig(2.0, 0.8),
    )
    exploration_energies_eV: tuple[float, ...] = (20.0, 35.0, 50.0, 75.0, 100.0)
    exploration_runs_per_energy: int = 10
    frame_interval_fs: float = 1.0
    max_selected_per_iteration: int = 200
    min_frame_separation_fs: float = 2.0
    upper_trust_force_eV_per_A: float = 10.0
    stop_fraction: float = 0.01
    adaptive_count: int = (
        0  # >0: when thresholds pick nothing, take this many largest-disagreement frames
    )
    # The paper's NNP5 -> NNP6 step: after the main loop, iterations exploring a second surface.
    second_surface_slab: SlabConfig | None = None
    second_surface_iterations: int = 1
    #: select and stop on the disagreement scaled by each iteration's calibration against
    #: the validation set (α·d, an error estimate); false: on the raw disagreement, with
    #: the thresholds as the paper set them
    calibrated: bool = True
    #: exploration impacts: ``exploration_duration_fs``, ``exploration_timestep_fs`` and the
    #: sanity bounds ``exploration_min_distance_A``, ``exploration_max_energy_drift_eV`` of
    #: :class:`nnprefine.impact.ImpactSettings` (its field names after the prefix)
    exploration: Any = _flat(
        _impact_settings,
        prefix="exploration_",
        only=_SHORT_RUN_KEYS,
        timestep_fs=0.5,
        duration_fs=40.0,
        **_SHORT_RUN_SANITY,
    )

    def validate(self, key: str) -> None:
        _check(
            self.max_iterations >= 0, f"{key}.max_iterations", "zero or more", self.max_iterations
        )
        _check(
            len(self.thresholds) >= 1,
            f"{key}.thresholds",
            "at least one [[refine.thresholds]] table",
            [],
        )
        # the selection rules' own checks, each key named as the TOML has it
        names = {
            "energy_threshold_eV_per_atom": "thresholds[{i}].energy_meV_per_atom",
            "force_threshold_eV_per_A": "thresholds[{i}].force_eV_per_A",
            "upper_trust_force_eV_per_A": "upper_trust_force_eV_per_A",
            "max_selected": "max_selected_per_iteration",
            "min_separation_fs": "min_frame_separation_fs",
            "adaptive_count": "adaptive_count",
        }
        for i in range(len(self.thresholds)):
            with _naming_keys(self, key, {n: k.format(i=i) for n, k in names.items()}):
                self.selection(i)
        _check(
            all(e > 0 for e in self.exploration_energies_eV),
            f"{key}.exploration_energies_eV",
            "positive energies",
            list(self.exploration_energies_eV),
        )
        _check(
            self.exploration_runs_per_energy >= 0,
            f"{key}.exploration_runs_per_energy",
            "zero or more",
            self.exploration_runs_per_energy,
        )
        for name in ("frame_interval_fs",):
            _check(
                getattr(self, name) > 0, f"{key}.{name}", "a positive number", getattr(self, name)
            )
        _check(0 <= self.stop_fraction < 1, f"{key}.stop_fraction", "in [0, 1)", self.stop_fraction)
        if self.second_surface_slab is not None:
            self.second_surface_slab.validate(f"{key}.second_surface_slab")
        _check(
            self.second_surface_iterations >= 0,
            f"{key}.second_surface_iterations",
            "zero or more",
            self.second_surface_iterations,
        )

    def thresholds_for(self, iteration: int) -> ThresholdConfig:
        """Iteration k uses thresholds[k], the last entry for later iterations."""
        return self.thresholds[min(iteration, len(self.thresholds) - 1)]

    def selection(self, iteration: int) -> Any:
        """The :class:`nnprefine.selection.SelectionSettings` of refinement step ``iteration``
        (0 for the first), thresholds converted from the TOML's meV/atom."""
        from nnprefine.selection import SelectionSettings

        th = self.thresholds_for(iteration)
        return SelectionSettings(
            energy_threshold_eV_per_atom=th.energy_meV_per_atom / 1000.0,
            force_threshold_eV_per_A=th.force_eV_per_A,
            upper_trust_force_eV_per_A=self.upper_trust_force_eV_per_A,
            max_selected=self.max_selected_per_iteration,
            min_separation_fs=self.min_frame_separation_fs,
            adaptive_count=self.adaptive_count,
        )


@dataclass(frozen=True)
class ProductionConfig:
    """One production campaign: a surface, energies, trajectories per energy, integration."""

    slab: SlabConfig = field(default_factory=lambda: SlabConfig("0001", (7, 7, 10), 7.0))
    energies_eV: tuple[float, ...] = (50.0, 55.0, 60.0, 65.0, 75.0, 100.0)
    trajectories_per_energy: int = 500
    reference_energies_eV: tuple[float, ...] = ()  # reference-driven check at these energies
    reference_trajectories: int = 0
    #: sequential stopping of the model-driven campaign: after trajectories_per_energy,
    #: go on in batches until the yield's error bar is at most target_error (absolute, in
    #: sputtered atoms per ion) or max_trajectories_per_energy is reached
    target_error: float | None = None
    max_trajectories_per_energy: int | None = None
    #: the committee watch on model-driven runs (:mod:`nnprefine.watch`): every
    #: watch_interval steps the other members judge member 0's frame against the last
    #: [[refine.thresholds]] pair (calibrated); 0 turns it off. Cost: docs/benchmarks.md
    watch_interval: int = 10
    #: over-threshold frames kept per flagged trajectory, at least watch_separation_fs apart
    watch_frames: int = 3
    watch_separation_fs: float = 5.0
    #: a trajectory is flagged when at least this fraction of its checks is over threshold
    #: (0: any one check; docs/benchmarks.md, "Committee watch")
    watch_flag_fraction: float = 0.0
    #: repair on flags (stage ``repair``, :mod:`nnprefine.stages.repair`): after the
    #: campaign, label up to repair_frames of the watch's flagged frames with the
    #: reference, retrain (models/repair-<r>) and re-run the flagged trajectories on their
    #: own seeds with the new model (label ``<slab>/model/repair-<r>``); up to
    #: repair_rounds rounds, each on the trajectories still flagged
    refine_on_flags: bool = False
    repair_rounds: int = 1
    repair_frames: int = 30
    #: the paper's NNP5 -> NNP6 comparison (stage ``transfer``, :mod:`nnprefine.stages.
    #: transfer`): this many trajectories per energy also driven by the committee trained
    #: before refine's second-surface iterations, on the final model's seeds (label
    #: ``<slab>/model/first-surface``); needs refine.second_surface_slab
    transfer_trajectories: int = 0
    #: how each impact runs: every field of :class:`nnprefine.impact.ImpactSettings`
    #: flat in ``[[production]]`` (``timestep_fs``, ``duration_fs``, ``extension_fs``,
    #: ``max_extensions``, ``adaptive`` (a table; absent: the fixed step), ``early_stop``
    #: ("off", "on", "shadow"), ``heat_sink`` ("off", "berendsen", "langevin"; a thermostat
    #: at structures.temperature_K on the border of the slab, off in the paper),
    #: ``heat_sink_tau_fs``, the sanity bounds, …)
    impact: Any = _flat(_impact_settings, exclude=("r_cut_A", "heat_sink_temperature_K"))

    def validate(self, key: str) -> None:
        self.slab.validate(f"{key}.slab")
        if self.target_error is not None:
            _check(
                self.target_error > 0,
                f"{key}.target_error",
                "a positive yield error",
                self.target_error,
            )
            _check(
                self.max_trajectories_per_energy is not None
                and self.max_trajectories_per_energy >= self.trajectories_per_energy,
                f"{key}.max_trajectories_per_energy",
                "set, and at least trajectories_per_energy, when target_error is set",
                self.max_trajectories_per_energy,
            )
        _check(
            all(e > 0 for e in self.energies_eV),
            f"{key}.energies_eV",
            "positive energies",
            list(self.energies_eV),
        )
        _check(
            all(e > 0 for e in self.reference_energies_eV),
            f"{key}.reference_energies_eV",
            "positive energies",
            list(self.reference_energies_eV),
        )
        for name in (
            "trajectories_per_energy",
            "reference_trajectories",
            "watch_frames",
            "transfer_trajectories",
        ):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        _check(
            isinstance(self.watch_interval, int) and self.watch_interval >= 0,
            f"{key}.watch_interval",
            "a whole number of MD steps ≥ 0 (0: no committee watch)",
            self.watch_interval,
        )
        _check(
            0.0 <= self.watch_flag_fraction <= 1.0,
            f"{key}.watch_flag_fraction",
            "a fraction of the checks in [0, 1] (0: any check over threshold flags)",
            self.watch_flag_fraction,
        )
        _check(
            self.watch_separation_fs >= 0,
            f"{key}.watch_separation_fs",
            "zero or more fs",
            self.watch_separation_fs,
        )
        if self.refine_on_flags:
            _check(
                self.watch_interval > 0,
                f"{key}.watch_interval",
                "≥ 1 with refine_on_flags = true (the repair feeds on the watch's flags)",
                self.watch_interval,
            )
            _check(
                self.watch_frames > 0,
                f"{key}.watch_frames",
                "≥ 1 with refine_on_flags = true (the frames the repair labels)",
                self.watch_frames,
            )
            for name in ("repair_rounds", "repair_frames"):
                _check(
                    isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                    f"{key}.{name}",
                    "a whole number ≥ 1 with refine_on_flags = true",
                    getattr(self, name),
                )


@dataclass(frozen=True)
class ExecutorConfig:
    """Compute resources: in-process, a local Dask cluster, or an existing scheduler."""

    kind: str = "in-process"  # "in-process" or "dask"
    n_workers: int = 2
    threads_per_worker: int = 1
    scheduler_address: str = ""

    def validate(self, key: str) -> None:
        _check(
            self.kind in ("in-process", "dask"), f"{key}.kind", "'in-process' or 'dask'", self.kind
        )
        _check(self.n_workers >= 1, f"{key}.n_workers", "1 or more", self.n_workers)
        _check(
            self.threads_per_worker >= 1,
            f"{key}.threads_per_worker",
            "1 or more",
            self.threads_per_worker,
        )

    def spec(self) -> dict[str, Any] | None:
        if self.kind == "in-process":
            return None
        out: dict[str, Any] = {"kind": "dask", "threads_per_worker": self.threads_per_worker}
        if self.scheduler_address:
            out["scheduler_address"] = self.scheduler_address
        else:
            out["n_workers"] = self.n_workers
        return out


@dataclass(frozen=True)
class Config:
    """A whole project, as one TOML file describes it."""

    project: ProjectConfig = field(default_factory=ProjectConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    structures: StructuresConfig = field(default_factory=StructuresConfig)
    descriptor: DescriptorConfig = field(default_factory=DescriptorConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    initial_data: InitialDataConfig = field(default_factory=InitialDataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    production: tuple[ProductionConfig, ...] = (ProductionConfig(),)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    base_dir: str = "."  # the config file's folder; not a TOML key

    @property
    def output_dir(self) -> Path:
        out = Path(self.project.output_dir)
        return out if out.is_absolute() else (Path(self.base_dir) / out).resolve()

    @property
    def elements(self) -> tuple[str, ...]:
        """Every element of the project, sorted: the target, every projectile (of the
        data-gathering impacts and of each campaign) and ``project.elements``."""
        found = {self.project.element, self.project.projectile_element, *self.project.elements}
        for settings in (self.initial_data.impact, self.refine.exploration):
            found.add(settings.projectile or self.project.projectile_element)
        found.update(
            p.impact.projectile or self.project.projectile_element for p in self.production
        )
        return tuple(sorted(found))

    def initial_model_path(self) -> Path | None:
        """``network.initial_model``, resolved against the config file's folder."""
        if self.network.initial_model is None:
            return None
        p = Path(self.network.initial_model)
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def import_paths(self) -> list[Path]:
        """``initial_data.import_files``, resolved against the config file's folder."""
        return [
            p if p.is_absolute() else (Path(self.base_dir) / p).resolve()
            for p in map(Path, self.initial_data.import_files)
        ]

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "production":
                for i, p in enumerate(value):
                    p.validate(f"production[{i}]")
            elif hasattr(value, "validate"):
                value.validate(f.name)
        self._check_cutoff_fits_slabs()
        self.descriptor.symmetry_functions(self.elements)  # 'paper' is for one element
        self._check_projectiles_have_data()
        for i, p in enumerate(self.production):
            _check(
                p.transfer_trajectories == 0
                or (
                    self.refine.second_surface_slab is not None
                    and self.refine.second_surface_iterations >= 1
                ),
                f"production[{i}].transfer_trajectories",
                "0 without a second surface (the comparison drives the committee trained "
                "before refine.second_surface_slab's iterations; set that slab and "
                "refine.second_surface_iterations ≥ 1, or drop the key)",
                p.transfer_trajectories,
            )
        if self.structures.production_slab_driver == "model":
            _check(
                self.initial_data.production_slab_snapshots == 0,
                "initial_data.production_slab_snapshots",
                "0 with structures.production_slab_driver = 'model' (the reference would have "
                "to prepare the production slab, which that driver avoids)",
                self.initial_data.production_slab_snapshots,
            )

    def _check_projectiles_have_data(self) -> None:
        """A campaign's projectile must be in the training data: the initial data's or the
        exploration's impacts shoot it, or it is a listed element of imported frames."""
        shot = {self.initial_data.impact.projectile, self.refine.exploration.projectile}
        imported = set(self.project.elements) if self.initial_data.import_files else set()
        for i, p in enumerate(self.production):
            ions = p.impact.projectile
            _check(
                ions in shot | imported,
                f"production[{i}].projectile",
                f"an element the training data holds: the initial data and exploration shoot "
                f"{' and '.join(sorted(str(s) for s in shot))}; set initial_data.projectile or "
                f"refine.exploration_projectile = {ions!r}, or import frames with it "
                "(initial_data.import_files, and list it in project.elements)",
                ions,
            )

    def _check_cutoff_fits_slabs(self) -> None:
        """The descriptor sees periodic images, but the lateral cell must exceed the cutoff.

        A slab whose surface cell is narrower than r_cut would let an atom interact with
        its own image across one period; we require width ≥ r_cut (n2p2 and LAMMPS need
        at least that much for the minimum-image picture behind the paper's set-up).
        """
        slabs = [("initial_data.slab", self.initial_data.slab)]
        slabs += [(f"production[{i}].slab", p.slab) for i, p in enumerate(self.production)]
        if self.refine.second_surface_slab is not None:
            slabs.append(("refine.second_surface_slab", self.refine.second_surface_slab))
        import numpy as np

        from nnprefine.structures import make_slab

        a, c = self.structures.a_A, self.structures.c_A
        for key, slab in slabs:
            with _naming_keys(slab, key, {"size": "size", "surface": "surface"}):
                cell = make_slab(
                    slab.surface, slab.size, a, c, slab.vacuum_A, 0, slab.element, slab.crystal
                ).cell
            # the perpendicular widths of the lateral cell (a rhombus for hcp(0001))
            area = float(np.linalg.norm(np.cross(cell[0], cell[1])))
            width = min(
                area / float(np.linalg.norm(cell[1])), area / float(np.linalg.norm(cell[0]))
            )
            if width < self.descriptor.r_cut_A:
                raise ConfigError(
                    f"{key}.size = {list(slab.size)} gives a surface cell {width:.2f} Å wide, "
                    f"less than descriptor.r_cut_A = {self.descriptor.r_cut_A} Å; enlarge the "
                    "slab laterally or shorten the cutoff"
                )


# -- loading ----------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return f"a list of {_type_name(inner)}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, not {type(value).__name__}")
        return _build(tp, value, key)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_type_name(tp)}, not {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, not {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} is not allowed: a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, not {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, not {value!r}")
        return value
    return value


#: TOML keys that were renamed to their domain's field names, and what to write instead
_RENAMED = {
    "training.batch_size": "batch_size_frames",
    "training.force_fraction": "kalman_force_fraction",
    "training.early_stopping_patience": "patience_epochs",
    "production.adaptive_timestep": "adaptive = {} (the default adaptive step; leave it out "
    "for the fixed step)",
}


def _toml_names(f: dataclasses.Field) -> dict[str, str]:
    """TOML key → domain field name, for a flattened field (see :func:`_flat`)."""
    meta = f.metadata
    names = [g.name for g in dataclasses.fields(meta["flatten"]())]
    if meta["only"] is not None:
        names = [n for n in names if n in meta["only"]]
    return {meta["prefix"] + n: n for n in names if n not in meta["exclude"]}


def _build_flat(f: dataclasses.Field, data: dict[str, Any], prefix: str) -> Any:
    """The domain object of a flattened field from its keys; its own checks name the key."""
    target = f.metadata["flatten"]()
    hints = typing.get_type_hints(target)
    names = _toml_names(f)
    inverse = {v: k for k, v in names.items()}
    kwargs = dict(f.metadata["defaults"])
    for key, value in data.items():
        name = names[key]
        kwargs[name] = _convert(value, hints[name], f"{prefix}{key}")
    try:
        return target(**kwargs)
    except ConfigError as exc:
        # the domain names its field; say which TOML key that is, with the value given
        text = str(exc)
        for name in sorted(inverse, key=len, reverse=True):
            if name in text:
                key = f"{prefix}{inverse[name]}"
                raise ConfigError(f"{key} = {kwargs.get(name)!r} is not allowed: {text}") from exc
        raise ConfigError(f"[{prefix.rstrip('.')}] {text}") from exc


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    own, flat = [], []
    for f in dataclasses.fields(cls):
        if f.name == "base_dir" or not f.metadata.get("toml", True):
            continue
        (flat if "flatten" in f.metadata else own).append(f)
    own_names = [f.name for f in own]
    routes = {key: f for f in flat for key in _toml_names(f)}
    kwargs: dict[str, Any] = {}
    routed: dict[str, dict[str, Any]] = {f.name: {} for f in flat}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key in own_names:
            kwargs[key] = _convert(value, hints[key], full)
        elif key in routes:
            routed[routes[key].name][key] = value
        else:
            section = prefix.split("[")[0]
            if f"{section}.{key}" in _RENAMED:
                raise ConfigError(
                    f"'{full}' was renamed to its domain's name: write "
                    f"{_RENAMED[f'{section}.{key}']}"
                )
            names = own_names + list(routes)
            close = difflib.get_close_matches(key, names, n=1)
            hint = (
                f"; did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(names)}"
            )
            raise ConfigError(f"unknown key '{full}'{hint}")
    for f in flat:
        kwargs[f.name] = _build_flat(f, routed[f.name], f"{prefix}." if prefix else "")
    missing = [
        f.name
        for f in own
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix} needs {' and '.join(missing)} (no default is assumed)")
    return cls(**kwargs)


def _with_project_values(config: Config) -> Config:
    """Copy cross-section values into the sections that need them: the element into every
    slab, structures.temperature_K into every heat sink, the descriptor's cutoff into the
    data-gathering impacts (it decides when an atom has left the slab; a reference such as
    DFT has no interaction range of its own)."""

    def slab(s: SlabConfig | None) -> SlabConfig | None:
        if s is None:
            return None
        return dataclasses.replace(
            s, element=config.project.element, crystal=config.structures.crystal
        )

    projectile = config.project.projectile_element

    def impact(settings: Any, **kw: Any) -> Any:
        return dataclasses.replace(settings, projectile=settings.projectile or projectile, **kw)

    production = tuple(
        dataclasses.replace(
            p,
            slab=slab(p.slab),
            impact=impact(p.impact, heat_sink_temperature_K=config.structures.temperature_K),
        )
        for p in config.production
    )
    r_cut = config.descriptor.r_cut_A
    init, refine = config.initial_data, config.refine
    return dataclasses.replace(
        config,
        initial_data=dataclasses.replace(
            init, slab=slab(init.slab), impact=impact(init.impact, r_cut_A=r_cut)
        ),
        refine=dataclasses.replace(
            refine,
            second_surface_slab=slab(refine.second_surface_slab),
            exploration=impact(refine.exploration, r_cut_A=r_cut),
        ),
        production=production,
    )


def _with_initial_model(config: Config) -> Config:
    """With ``network.initial_model``: its cutoff, layers and (for an nnprefine model) ZBL
    baseline replace the config's, so every stage sees the model's; checked before any
    expensive step."""
    path = config.initial_model_path()
    if path is None:
        return config
    from nnprefine.errors import ModelError
    from nnprefine.n2p2 import read_model

    net = config.network
    if not path.is_dir():
        raise ConfigError(
            f"network.initial_model = {net.initial_model!r}: {path} is not a directory (paths "
            "are relative to the config file's folder)"
        )
    try:
        pot = read_model(path, baseline=net.baseline())
    except ModelError as exc:
        raise ConfigError(f"network.initial_model = {net.initial_model!r}: {exc}") from exc
    _check(
        set(config.elements) <= set(pot.elements),
        "network.initial_model",
        f"a model covering the project's elements {', '.join(config.elements)} (it covers "
        f"{', '.join(pot.elements)})",
        net.initial_model,
    )
    zbl = (
        {}
        if (path / "input.nn").is_file() and not (path / "model.json").is_file()
        else {
            "zbl_baseline": pot.baseline is not None,
            "zbl_inner_A": pot.baseline.r_inner_A if pot.baseline else net.zbl_inner_A,
            "zbl_outer_A": pot.baseline.r_outer_A if pot.baseline else net.zbl_outer_A,
        }
    )
    return dataclasses.replace(
        config,
        descriptor=dataclasses.replace(config.descriptor, r_cut_A=pot.r_cut_A),
        network=dataclasses.replace(net, hidden=pot.hidden, activation=pot.activation, **zbl),
    )


def config_from_dict(data: dict[str, Any], base_dir: str | Path = ".") -> Config:
    """Build and fully validate a :class:`Config` from parsed TOML data."""
    data = dict(data)
    if "production" in data and isinstance(data["production"], dict):
        data["production"] = [data["production"]]
    config = dataclasses.replace(_build(Config, data, ""), base_dir=str(Path(base_dir).resolve()))
    config.project.validate("project")  # its element goes into every slab and impact
    config = _with_project_values(_with_initial_model(config))
    config.validate()
    missing = [str(p) for p in config.import_paths() if not p.is_file()]
    if missing:
        raise ConfigError(
            f"initial_data.import_files: {', '.join(missing)} not found (paths are relative "
            "to the config file's folder)"
        )
    return config


def load_config(path: str | Path) -> Config:
    """Read a TOML config file; every problem is one :class:`ConfigError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see examples/ for templates")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a text file; give a TOML config") from exc
    if not data:
        raise ConfigError(
            f"{path} is empty; an empty config would mean the paper's full protocol "
            "(hundreds of reference trajectories). Start from a file in examples/, e.g. "
            "examples/be0001-quick.toml"
        )
    if "reference" not in data:
        raise ConfigError(
            f"{path} has no [reference] table; say which method labels the data, e.g. "
            '[reference] calculator = "builtin-snap" (the built-in W–Be SNAP) or an ASE '
            'calculator as "module:Class" with its kwargs'
        )
    config = config_from_dict(data, base_dir=path.parent)
    refine = data.get("refine", {})
    if config.refine.max_iterations > 0 and not (
        isinstance(refine, dict) and refine.get("thresholds")
    ):
        raise ConfigError(
            f"{path} has no [[refine.thresholds]]: refinement needs the disagreement levels "
            "it selects at, e.g. the paper's two pairs "
            "[[refine.thresholds]] energy_meV_per_atom = 20.0, force_eV_per_A = 2.0 and "
            "2.0, 0.8 (see examples/be0001-quick.toml), or set refine.max_iterations = 0"
        )
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain data (for recording with results)."""
    out = _to_dict(config)
    out.pop("base_dir", None)
    return out


def _to_dict(obj: Any) -> Any:
    """Plain data as the TOML has it: flattened domain objects merged into their section."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if "flatten" in f.metadata:
                for key, name in _toml_names(f).items():
                    if getattr(value, name) is not None:
                        out[key] = _to_dict(getattr(value, name))
            elif f.metadata.get("toml", True) and value is not None:  # TOML has no null
                out[f.name] = _to_dict(value)
        return out
    if isinstance(obj, tuple | list):
        return [_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj
