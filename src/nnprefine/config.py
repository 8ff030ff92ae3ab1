"""The project configuration: one TOML file, typed and checked before any work starts.

Every section is a frozen dataclass; every key has one type and, where a person types a
number, its unit in the name. Loading is strict: an unknown key gets a "did you mean …?",
a wrong type or an out-of-range value gets a message naming the key and what is allowed.
Relative paths are resolved against the config file's folder. Physics settings are kept
apart from compute resources (``[executor]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
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
    "load_config",
    "config_from_dict",
]


def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class ProjectConfig:
    """Where results go and the master seed every other seed derives from."""

    name: str = "nnprefine"
    output_dir: str = "runs/nnprefine"
    element: str = "Be"
    seed: int = 1

    def validate(self, key: str) -> None:
        _check(bool(self.name.strip()), f"{key}.name", "a non-empty name", self.name)
        from ase.data import atomic_numbers

        _check(
            self.element in atomic_numbers,
            f"{key}.element",
            "a chemical symbol such as 'Be'",
            self.element,
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


@dataclass(frozen=True)
class StructuresConfig:
    """Bulk lattice guesses (relaxed with the reference), slab relaxation and equilibration."""

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
        _check(
            self.thermostat in ("nose-hoover", "langevin"),
            f"{key}.thermostat",
            "'nose-hoover' or 'langevin'",
            self.thermostat,
        )
        _check(self.fixed_layers >= 0, f"{key}.fixed_layers", "zero or more", self.fixed_layers)


@dataclass(frozen=True)
class SlabConfig:
    """A slab: surface '0001' or '01-10', size (nx, ny, layers), vacuum on each side."""

    surface: str = "0001"
    size: tuple[int, int, int] = (4, 4, 6)
    vacuum_A: float = 7.0

    def validate(self, key: str) -> None:
        _check(
            self.surface in ("0001", "01-10"), f"{key}.surface", "'0001' or '01-10'", self.surface
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
                "an even second number for Be(01-10)",
                list(self.size),
            )
        _check(self.vacuum_A > 0, f"{key}.vacuum_A", "a positive number of Å", self.vacuum_A)

    @property
    def label(self) -> str:
        return f"Be({self.surface})-{'x'.join(str(n) for n in self.size)}"


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
        _check(self.r_cut_A > 0, f"{key}.r_cut_A", "a positive cutoff in Å", self.r_cut_A)
        for name in ("n_radial", "n_narrow", "n_wide"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        _check(
            self.n_radial + self.n_narrow + self.n_wide > 0,
            f"{key}",
            "at least one symmetry function",
            "none",
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

    def validate(self, key: str) -> None:
        _check(
            len(self.hidden) >= 1 and all(n >= 1 for n in self.hidden),
            f"{key}.hidden",
            "a list of positive layer widths, e.g. [30, 30]",
            list(self.hidden),
        )
        _check(
            self.activation in ("softplus", "tanh", "shifted_softplus", "silu"),
            f"{key}.activation",
            "'softplus', 'tanh', 'shifted_softplus' or 'silu'",
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


@dataclass(frozen=True)
class TrainingConfig:
    """Energy + force training of every committee member."""

    #: "kalman" (n2p2's filter, the paper's) or "adam"; Kalman is the default because it
    #: reached half Adam's force error in similar wall time (docs/benchmarks.md, Training)
    optimizer: str = "kalman"
    epochs: int = 60
    batch_size: int = 8
    learning_rate: float = 2e-3
    energy_weight: float = 1.0
    force_weight: float = 1.0
    force_fraction: float = 0.05
    #: n2p2's Kalman filter types: "standard" (kalman_type 0, stable) or "fading" (1)
    kalman_type: str = "standard"
    test_fraction: float = 0.1
    early_stopping_patience: int = 20
    warm_start: bool = True
    #: n2p2's input scaling: scalecenter (n2p2's usual), scalesigma (robust to the rare
    #: close-collision frames that stretch min/max), scale, center or none
    scaling_mode: str = "scalecenter"
    #: memory for cached descriptor Jacobians (≈ 6 MiB per 96-atom frame of the paper set);
    #: frames beyond it train on the fly, ~20x slower per epoch; 0 turns the cache off
    jacobian_cache_GiB: float = 6.0

    def validate(self, key: str) -> None:
        _check(
            self.jacobian_cache_GiB >= 0,
            f"{key}.jacobian_cache_GiB",
            "zero or more (GiB)",
            self.jacobian_cache_GiB,
        )
        _check(
            self.scaling_mode in ("none", "scale", "center", "scalecenter", "scalesigma"),
            f"{key}.scaling_mode",
            "'scalecenter', 'scalesigma', 'scale', 'center' or 'none'",
            self.scaling_mode,
        )
        _check(
            self.kalman_type in ("standard", "fading"),
            f"{key}.kalman_type",
            "'standard' or 'fading'",
            self.kalman_type,
        )
        _check(
            self.optimizer in ("adam", "kalman"),
            f"{key}.optimizer",
            "'adam' or 'kalman'",
            self.optimizer,
        )
        for name in ("epochs", "batch_size", "early_stopping_patience"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "1 or more", getattr(self, name))
        for name in ("learning_rate",):
            _check(
                getattr(self, name) > 0, f"{key}.{name}", "a positive number", getattr(self, name)
            )
        for name in ("energy_weight", "force_weight"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        _check(
            0 < self.force_fraction <= 1, f"{key}.force_fraction", "in (0, 1]", self.force_fraction
        )
        _check(0 < self.test_fraction < 1, f"{key}.test_fraction", "in (0, 1)", self.test_fraction)


@dataclass(frozen=True)
class InitialDataConfig:
    """Reference-driven impact MD and thermal MD on the small slab; random snapshots labelled."""

    slab: SlabConfig = field(default_factory=lambda: SlabConfig("0001", (4, 4, 6), 5.8))
    energies_eV: tuple[float, ...] = (20.0, 35.0, 50.0, 75.0, 100.0)
    runs_per_energy: int = 100
    timestep_fs: float = 0.5
    duration_fs: float = 150.0
    high_energy_eV: float = 75.0  # at and above it, runs last high_energy_duration_fs
    high_energy_duration_fs: float = 50.0
    snapshots_per_run: int = 5
    thermal_frames: int = 50
    thermal_interval_fs: float = 20.0

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
        for name in (
            "timestep_fs",
            "duration_fs",
            "high_energy_duration_fs",
            "thermal_interval_fs",
        ):
            _check(
                getattr(self, name) > 0, f"{key}.{name}", "a positive number", getattr(self, name)
            )


@dataclass(frozen=True)
class ThresholdConfig:
    """Selection thresholds of one refinement iteration (paper: 20 meV/atom, 2 eV/Å; then 2, 0.8)."""

    energy_meV_per_atom: float = 20.0
    force_eV_per_A: float = 2.0

    def validate(self, key: str) -> None:
        _check(
            self.energy_meV_per_atom > 0,
            f"{key}.energy_meV_per_atom",
            "a positive number",
            self.energy_meV_per_atom,
        )
        _check(
            self.force_eV_per_A > 0,
            f"{key}.force_eV_per_A",
            "a positive number",
            self.force_eV_per_A,
        )


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
    exploration_duration_fs: float = 40.0
    exploration_timestep_fs: float = 0.5
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
        for i, t in enumerate(self.thresholds):
            t.validate(f"{key}.thresholds[{i}]")
        _check(
            all(e > 0 for e in self.exploration_energies_eV),
            f"{key}.exploration_energies_eV",
            "positive energies",
            list(self.exploration_energies_eV),
        )
        for name in ("exploration_runs_per_energy", "max_selected_per_iteration", "adaptive_count"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        for name in (
            "exploration_duration_fs",
            "exploration_timestep_fs",
            "frame_interval_fs",
            "upper_trust_force_eV_per_A",
        ):
            _check(
                getattr(self, name) > 0, f"{key}.{name}", "a positive number", getattr(self, name)
            )
        _check(0 <= self.stop_fraction < 1, f"{key}.stop_fraction", "in [0, 1)", self.stop_fraction)
        _check(
            self.min_frame_separation_fs >= 0,
            f"{key}.min_frame_separation_fs",
            "zero or more",
            self.min_frame_separation_fs,
        )
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


@dataclass(frozen=True)
class ProductionConfig:
    """One production campaign: a surface, energies, trajectories per energy, integration."""

    slab: SlabConfig = field(default_factory=lambda: SlabConfig("0001", (7, 7, 10), 7.0))
    energies_eV: tuple[float, ...] = (50.0, 55.0, 60.0, 65.0, 75.0, 100.0)
    trajectories_per_energy: int = 500
    timestep_fs: float = 0.2
    duration_fs: float = 120.0
    extension_fs: float = 120.0
    max_extensions: int = 1
    adaptive_timestep: bool = False
    early_stop: bool = False
    reference_energies_eV: tuple[float, ...] = ()  # reference-driven check at these energies
    reference_trajectories: int = 0
    #: sequential stopping of the model-driven campaign: after trajectories_per_energy,
    #: go on in batches until the yield's error bar is at most target_error (absolute, in
    #: sputtered atoms per ion) or max_trajectories_per_energy is reached
    target_error: float | None = None
    max_trajectories_per_energy: int | None = None
    #: optional heat sink as cascade studies use it (off in the paper): a thermostat at
    #: structures.temperature_K on the lateral border and bottom of the free slab, the
    #: impact zone and the top layer left NVE; "off", "berendsen" or "langevin"
    heat_sink: str = "off"
    heat_sink_tau_fs: float = 50.0

    def validate(self, key: str) -> None:
        self.slab.validate(f"{key}.slab")
        _check(
            self.heat_sink in ("off", "berendsen", "langevin"),
            f"{key}.heat_sink",
            "'off', 'berendsen' or 'langevin'",
            self.heat_sink,
        )
        _check(
            self.heat_sink_tau_fs > 0,
            f"{key}.heat_sink_tau_fs",
            "a positive time (fs)",
            self.heat_sink_tau_fs,
        )
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
        for name in ("trajectories_per_energy", "max_extensions", "reference_trajectories"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "zero or more", getattr(self, name))
        for name in ("timestep_fs", "duration_fs"):
            _check(
                getattr(self, name) > 0, f"{key}.{name}", "a positive number", getattr(self, name)
            )
        _check(self.extension_fs >= 0, f"{key}.extension_fs", "zero or more", self.extension_fs)


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
    refine: RefineConfig = field(default_factory=RefineConfig)
    production: tuple[ProductionConfig, ...] = (ProductionConfig(),)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    base_dir: str = "."  # the config file's folder; not a TOML key

    @property
    def output_dir(self) -> Path:
        out = Path(self.project.output_dir)
        return out if out.is_absolute() else (Path(self.base_dir) / out).resolve()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "production":
                for i, p in enumerate(value):
                    p.validate(f"production[{i}]")
            elif hasattr(value, "validate"):
                value.validate(f.name)
        self._check_cutoff_fits_slabs()

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
        a, c = self.structures.a_A, self.structures.c_A
        for key, slab in slabs:
            if slab.surface == "0001":
                width = slab.size[0] * a * (3**0.5 / 2)  # perpendicular width of the rhombus
                width = min(width, slab.size[1] * a * (3**0.5 / 2))
            else:
                width = min(slab.size[0] * a, slab.size[1] * c / 2)
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


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "base_dir"]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = (
                f"; did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(names)}"
            )
            raise ConfigError(f"unknown key '{full}'{hint}")
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], base_dir: str | Path = ".") -> Config:
    """Build and fully validate a :class:`Config` from parsed TOML data."""
    data = dict(data)
    if "production" in data and isinstance(data["production"], dict):
        data["production"] = [data["production"]]
    config = _build(Config, data, "")
    config = dataclasses.replace(config, base_dir=str(Path(base_dir).resolve()))
    config.validate()
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
    return config_from_dict(data, base_dir=path.parent)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain data (for recording with results)."""
    out = dataclasses.asdict(config)
    out.pop("base_dir", None)
    return out
