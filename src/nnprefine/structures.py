"""Structures: bulk cells, slabs, relaxation and NVT equilibration.

Bulk and slabs come in three crystals: hcp (the paper's Be(0001) and Be(01-10) slabs) and
bcc or fcc (ASE's low-index surface builders, e.g. W(100) or W(110) for a Be projectile on
tungsten).

Slabs are periodic in x and y with vacuum along z; ``atoms.get_tags()`` gives the layer
index (1 = top) and a ``FixAtoms`` constraint holds the bottom layers. Every builder
records its arguments (and, after relaxation or equilibration, the calculator and seed)
in ``atoms.info["provenance"]``, so slabs that feed later stages can be traced.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms, units
from ase.build import bcc100, bcc110, bcc111, bulk, fcc100, fcc110, fcc111, hcp0001, hcp10m10
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.optimize import BFGS, FIRE

from nnprefine.errors import ConfigError

__all__ = [
    "CRYSTALS",
    "SLAB_PRESETS",
    "SURFACES",
    "be0001_slab",
    "be01m10_slab",
    "bulk_cell",
    "cubic_slab",
    "equilibrate_nvt",
    "fixed_mask",
    "hcp_bulk",
    "make_slab",
    "maxwell_boltzmann_velocities",
    "prepare_slab",
    "relax_bulk",
    "relax_slab",
    "THERMOSTATS",
]

#: Named slabs of the paper. Sizes are (nx, ny, layers) in the ASE builders' units.
SLAB_PRESETS: dict[str, dict[str, Any]] = {
    # 96 atoms, 4x4 surface cell, 6 layers (paper: 9.1 x 9.1 x 20.6 Å): refinement slab.
    "be0001-96": {"surface": "0001", "size": (4, 4, 6), "vacuum_A": 5.8},
    # 490 atoms, 7x7 surface cell, 10 layers (paper: 15.6 x 15.6 x 30.1 Å): production.
    "be0001-490": {"surface": "0001", "size": (7, 7, 10), "vacuum_A": 7.0},
    # 480 atoms, 6a x 5c lateral (13.7 x 17.7 Å), 8 layers: the second surface.
    "be01m10-480": {"surface": "01-10", "size": (6, 10, 8), "vacuum_A": 7.0},
}


#: The crystals bulk and slabs are built in.
CRYSTALS = ("hcp", "bcc", "fcc")

#: The surfaces of each crystal (Miller indices; hcp in four-index notation).
SURFACES: dict[str, tuple[str, ...]] = {
    "hcp": ("0001", "01-10"),
    "bcc": ("100", "110", "111"),
    "fcc": ("100", "110", "111"),
}

# ASE's builders for the cubic surfaces; these take orthogonal=True for a rectangular cell
_CUBIC_BUILDERS = {
    ("bcc", "100"): bcc100,
    ("bcc", "110"): bcc110,
    ("bcc", "111"): bcc111,
    ("fcc", "100"): fcc100,
    ("fcc", "110"): fcc110,
    ("fcc", "111"): fcc111,
}
_ORTHOGONAL = {("bcc", "110"), ("bcc", "111"), ("fcc", "111")}


def _check_crystal(crystal: str) -> str:
    if crystal not in CRYSTALS:
        raise ConfigError(f"unknown crystal {crystal!r}; choose one of {', '.join(CRYSTALS)}")
    return crystal


def _record(atoms: Atoms, step: str, **details: Any) -> None:
    prov = atoms.info.setdefault("provenance", [])
    prov.append({"step": step, **details})


def hcp_bulk(element: str = "Be", a_A: float = 2.24, c_A: float = 3.60) -> Atoms:
    """The two-atom hcp primitive cell with lattice constants ``a_A`` and ``c_A`` (Å)."""
    if a_A <= 0 or c_A <= 0:
        raise ConfigError(f"lattice constants must be positive, got a={a_A} Å, c={c_A} Å")
    atoms = bulk(element, "hcp", a=a_A, c=c_A)
    _record(atoms, "hcp_bulk", element=element, a_A=a_A, c_A=c_A)
    return atoms


def bulk_cell(element: str, crystal: str, a_A: float, c_A: float | None = None) -> Atoms:
    """A small periodic bulk cell: the two-atom hcp cell (``c_A`` needed), or the cubic
    conventional cell of bcc (2 atoms) or fcc (4 atoms) with edge ``a_A`` (Å)."""
    if _check_crystal(crystal) == "hcp":
        if c_A is None:
            raise ConfigError("an hcp bulk cell needs c_A (Å)")
        return hcp_bulk(element, a_A, c_A)
    if a_A <= 0:
        raise ConfigError(f"the lattice constant must be positive, got a={a_A} Å")
    atoms = bulk(element, crystal, a=a_A, cubic=True)
    _record(atoms, "bulk_cell", element=element, crystal=crystal, a_A=a_A)
    return atoms


def _lattice_of(atoms: Atoms, crystal: str) -> tuple[float, float]:
    """(a, c) in Å read off a relaxed cell; c = a for the cubic crystals (the cube's edge)."""
    lengths = atoms.cell.cellpar()[:3]
    if crystal == "hcp":
        return float((lengths[0] + lengths[1]) / 2), float(lengths[2])
    a = float(np.mean(lengths))
    return a, a


def relax_bulk(
    calc: Any,
    element: str = "Be",
    crystal: str = "hcp",
    a_A: float = 2.24,
    c_A: float | None = 3.60,
    fmax_eV_per_A: float = 1e-4,
    max_steps: int = 300,
) -> dict[str, Any]:
    """Relax the lattice of bulk ``crystal`` with ``calc``; returns a_A, c_A (= a_A for the
    cubic crystals), energy_eV_per_atom, crystal and converged.

    The small cell keeps its symmetry under a cell filter, so the constants are read off
    the relaxed cell directly. ``fmax_eV_per_A`` bounds forces and (through the filter)
    stress. ``c_A`` is the hcp guess and is ignored for bcc and fcc.
    """
    atoms = bulk_cell(element, crystal, a_A, c_A)
    atoms.calc = calc
    if "stress" not in getattr(calc, "implemented_properties", ["stress"]):
        rec = _relax_by_energy(calc, element, crystal, a_A, c_A)
    else:
        opt = BFGS(FrechetCellFilter(atoms), logfile=None)
        opt.run(fmax=fmax_eV_per_A, steps=max_steps)
        a, c = _lattice_of(atoms, crystal)
        rec = {
            "a_A": a,
            "c_A": c,
            "energy_eV_per_atom": float(atoms.get_potential_energy() / len(atoms)),
            "converged": bool(opt.converged()),
        }
    return {**rec, "crystal": crystal}


def _relax_by_energy(
    calc: Any, element: str, crystal: str, a_A: float, c_A: float | None
) -> dict[str, Any]:
    """Minimise E(a, c) of the hcp cell, or E(a) of the cubic one, directly (for
    calculators without stress).

    The atoms sit on their symmetric sites, where forces vanish by symmetry, so the
    energy depends on the lattice constants alone; Nelder–Mead converges to 1e-6 Å.
    """
    from scipy.optimize import minimize

    hcp = crystal == "hcp"

    def energy(x: np.ndarray) -> float:
        atoms = bulk_cell(element, crystal, float(x[0]), float(x[1]) if hcp else None)
        atoms.calc = calc
        return float(atoms.get_potential_energy() / len(atoms))

    res = minimize(
        energy,
        x0=[a_A, c_A] if hcp else [a_A],
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 2000},
    )
    a = float(res.x[0])
    return {
        "a_A": a,
        "c_A": float(res.x[1]) if hcp else a,
        "energy_eV_per_atom": float(res.fun),
        "converged": bool(res.success),
    }


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """Boolean (n_atoms,) mask of atoms held by ``FixAtoms`` constraints."""
    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
    return mask


def _fix_bottom(atoms: Atoms, layers: int, fixed_layers: int) -> None:
    if not 0 <= fixed_layers < layers:
        raise ConfigError(
            f"fixed_layers = {fixed_layers} must be at least 0 and less than the slab's "
            f"{layers} layers"
        )
    tags = atoms.get_tags()
    atoms.set_constraint(FixAtoms(mask=tags > layers - fixed_layers) if fixed_layers else [])


def _check_size(size: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(size) != 3 or any(int(n) < 1 for n in size):
        raise ConfigError(f"slab size must be three positive integers (nx, ny, layers), got {size}")
    return tuple(int(n) for n in size)  # type: ignore[return-value]


def be0001_slab(
    size: tuple[int, int, int] = (4, 4, 6),
    a_A: float = 2.24,
    c_A: float = 3.60,
    vacuum_A: float = 5.8,
    fixed_layers: int = 2,
    element: str = "Be",
) -> Atoms:
    """An hcp(0001) slab: ``size`` = (nx, ny, layers), hexagonal surface cell of nx·a × ny·a.

    ``vacuum_A`` is added on each side along z; pbc is (True, True, False).
    Presets: (4, 4, 6) = 96 atoms (refinement), (7, 7, 10) = 490 atoms (production).
    """
    nx, ny, layers = _check_size(size)
    atoms = hcp0001(element, size=(nx, ny, layers), a=a_A, c=c_A, vacuum=vacuum_A)
    _fix_bottom(atoms, layers, fixed_layers)
    _record(
        atoms,
        "be0001_slab",
        element=element,
        size=[nx, ny, layers],
        a_A=a_A,
        c_A=c_A,
        vacuum_A=vacuum_A,
        fixed_layers=fixed_layers,
    )
    atoms.info["surface"] = "0001"
    return atoms


def be01m10_slab(
    size: tuple[int, int, int] = (6, 10, 8),
    a_A: float = 2.24,
    c_A: float = 3.60,
    vacuum_A: float = 7.0,
    fixed_layers: int = 2,
    element: str = "Be",
) -> Atoms:
    """An hcp(01-10) slab with an orthogonal cell of nx·a × (ny/2)·c laterally.

    ``size`` = (nx, ny, layers) with ny even (ASE counts half c-periods); one atom per
    layer per (a × c/2). The default (6, 10, 8) gives 480 atoms, 13.4 × 18.0 Å at
    a = 2.24, c = 3.60 (paper: 480 atoms, 13.7 × 17.7 Å with a = 2.28, c = 3.55).
    """
    nx, ny, layers = _check_size(size)
    if ny % 2:
        raise ConfigError(f"Be(01-10) slab: the second size number must be even, got {ny}")
    atoms = hcp10m10(element, size=(nx, ny, layers), a=a_A, c=c_A, vacuum=vacuum_A)
    _fix_bottom(atoms, layers, fixed_layers)
    _record(
        atoms,
        "be01m10_slab",
        element=element,
        size=[nx, ny, layers],
        a_A=a_A,
        c_A=c_A,
        vacuum_A=vacuum_A,
        fixed_layers=fixed_layers,
    )
    atoms.info["surface"] = "01-10"
    return atoms


def cubic_slab(
    crystal: str,
    surface: str,
    size: tuple[int, int, int],
    a_A: float,
    vacuum_A: float = 7.0,
    fixed_layers: int = 2,
    element: str = "W",
) -> Atoms:
    """A bcc or fcc slab from ASE's builders (``bcc110``, ``fcc111``, ...): ``surface`` is
    the Miller index ("100", "110", "111"), ``size`` = (nx, ny, layers) in the builder's
    surface cells, ``a_A`` the cubic lattice constant (Å).

    The cell is rectangular (``orthogonal=True`` where the builder offers it); ``vacuum_A``
    on each side along z; pbc (True, True, False); tags are layers, 1 = top.
    """
    nx, ny, layers = _check_size(size)
    key = (_check_crystal(crystal), surface)
    if key not in _CUBIC_BUILDERS:
        raise ConfigError(
            f"unknown {crystal} surface {surface!r}; choose one of {', '.join(SURFACES[crystal])}"
        )
    extra = {"orthogonal": True} if key in _ORTHOGONAL else {}
    try:
        atoms = _CUBIC_BUILDERS[key](
            element, size=(nx, ny, layers), a=a_A, vacuum=vacuum_A, **extra
        )
    except Exception as exc:  # ASE's own check of the size (an even ny for a rectangular cell)
        raise ConfigError(f"{element}({surface}) slab of size {list(size)}: {exc}") from exc
    atoms.pbc = (True, True, False)
    _fix_bottom(atoms, layers, fixed_layers)
    _record(
        atoms,
        "cubic_slab",
        element=element,
        crystal=crystal,
        surface=surface,
        size=[nx, ny, layers],
        a_A=a_A,
        vacuum_A=vacuum_A,
        fixed_layers=fixed_layers,
    )
    atoms.info["surface"] = surface
    return atoms


def make_slab(
    surface: str,
    size: tuple[int, int, int],
    a_A: float,
    c_A: float,
    vacuum_A: float = 7.0,
    fixed_layers: int = 2,
    element: str = "Be",
    crystal: str = "hcp",
) -> Atoms:
    """Build a slab of ``crystal`` by surface name: "0001" or "01-10" for hcp, "100",
    "110" or "111" for bcc and fcc (``c_A`` is used by hcp only)."""
    if _check_crystal(crystal) != "hcp":
        return cubic_slab(crystal, surface, size, a_A, vacuum_A, fixed_layers, element)
    builders = {"0001": be0001_slab, "01-10": be01m10_slab}
    if surface not in builders:
        raise ConfigError(f"unknown hcp surface {surface!r}; choose one of {sorted(builders)}")
    return builders[surface](
        size=size,
        a_A=a_A,
        c_A=c_A,
        vacuum_A=vacuum_A,
        fixed_layers=fixed_layers,
        element=element,
    )


def relax_slab(
    atoms: Atoms,
    calc: Any,
    fmax_eV_per_A: float = 1e-3,
    max_steps: int = 1000,
    optimizer: str = "FIRE",
) -> Atoms:
    """Relax atom positions in place (fixed layers stay) until all forces < ``fmax_eV_per_A``.

    Returns ``atoms`` with the calculator attached. The paper used 1 meV/Å.
    """
    atoms.calc = calc
    opt_cls = {"FIRE": FIRE, "BFGS": BFGS}.get(optimizer)
    if opt_cls is None:
        raise ConfigError(f"optimizer must be 'FIRE' or 'BFGS', got {optimizer!r}")
    opt = opt_cls(atoms, logfile=None)
    opt.run(fmax=fmax_eV_per_A, steps=max_steps)
    fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    _record(
        atoms,
        "relax_slab",
        fmax_eV_per_A=fmax_eV_per_A,
        reached_fmax_eV_per_A=fmax,
        steps=int(opt.nsteps),
        calculator=type(calc).__name__,
    )
    return atoms


def maxwell_boltzmann_velocities(
    atoms: Atoms, temperature_K: float, rng: np.random.Generator
) -> np.ndarray:
    """Velocities (n_atoms, 3) in ASE units drawn at ``temperature_K``, zero on fixed atoms.

    The free atoms' total momentum is removed, so the slab does not drift.
    """
    masses = atoms.get_masses()[:, None]
    free = ~fixed_mask(atoms)
    v = rng.normal(size=(len(atoms), 3)) * np.sqrt(units.kB * temperature_K / masses)
    v[~free] = 0.0
    if free.sum() > 1:
        p_total = (masses[free] * v[free]).sum(axis=0)
        v[free] -= p_total / masses[free].sum()
    return v


#: the thermostats :func:`equilibrate_nvt` knows
THERMOSTATS = ("nose-hoover", "langevin")


def equilibrate_nvt(
    atoms: Atoms,
    calc: Any,
    temperature_K: float = 300.0,
    duration_fs: float = 2000.0,
    timestep_fs: float = 1.0,
    seed: int = 0,
    thermostat: str = "nose-hoover",
    damping_fs: float = 100.0,
    progress: Any = None,
) -> Atoms:
    """NVT molecular dynamics at ``temperature_K`` for ``duration_fs``; returns the atoms.

    Velocities start from a Maxwell–Boltzmann distribution at 2·T drawn from ``seed``
    (half the kinetic energy flows into the potential energy of a relaxed lattice), with
    zero total momentum. ``thermostat`` is ``"nose-hoover"`` (a Nosé–Hoover chain, as in
    the paper; ``damping_fs`` is its time constant) or ``"langevin"`` (friction
    1/``damping_fs``). The returned atoms carry positions and velocities; fixed atoms stay.
    ``progress``, if given, is called as ``progress(done_fs, total_fs)`` every 100 steps.
    """
    if temperature_K <= 0 or duration_fs < 0 or timestep_fs <= 0:
        raise ConfigError(
            "equilibration needs temperature_K > 0, duration_fs >= 0 and timestep_fs > 0; got "
            f"{temperature_K}, {duration_fs}, {timestep_fs}"
        )
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    atoms.set_velocities(maxwell_boltzmann_velocities(atoms, 2 * temperature_K, rng))
    dt = timestep_fs * units.fs
    if thermostat == "nose-hoover":
        dyn = NoseHooverChainNVT(
            atoms, timestep=dt, temperature_K=temperature_K, tdamp=damping_fs * units.fs
        )
    elif thermostat == "langevin":
        dyn = Langevin(
            atoms,
            timestep=dt,
            temperature_K=temperature_K,
            friction=1.0 / (damping_fs * units.fs),
            rng=rng,
            fixcm=False,
        )
    else:
        raise ConfigError(f"thermostat must be one of {THERMOSTATS}, got {thermostat!r}")
    n_steps = int(round(duration_fs / timestep_fs))
    if progress is not None:
        dyn.attach(lambda: progress(dyn.nsteps * timestep_fs, duration_fs), interval=100)
    dyn.run(n_steps)
    _record(
        atoms,
        "equilibrate_nvt",
        temperature_K=temperature_K,
        duration_fs=duration_fs,
        timestep_fs=timestep_fs,
        seed=seed,
        thermostat=thermostat,
        damping_fs=damping_fs,
        calculator=type(calc).__name__,
        final_temperature_K=float(atoms.get_temperature()),
    )
    return atoms


def prepare_slab(
    surface: str,
    size: tuple[int, int, int],
    calc: Any,
    *,
    a_A: float,
    c_A: float,
    vacuum_A: float = 7.0,
    element: str = "Be",
    crystal: str = "hcp",
    fixed_layers: int = 2,
    relax_fmax_eV_per_A: float = 1e-3,
    temperature_K: float = 300.0,
    equilibration_fs: float = 2000.0,
    equilibration_timestep_fs: float = 1.0,
    thermostat: str = "nose-hoover",
    seed: int = 0,
) -> Atoms:
    """A slab ready for impacts: built (:func:`make_slab`), relaxed with ``calc`` to
    ``relax_fmax_eV_per_A``, then equilibrated at ``temperature_K`` for ``equilibration_fs``
    (none when 0). Returns the atoms with positions and velocities and no calculator."""
    atoms = make_slab(
        surface,
        size,
        a_A=a_A,
        c_A=c_A,
        vacuum_A=vacuum_A,
        fixed_layers=fixed_layers,
        element=element,
        crystal=crystal,
    )
    relax_slab(atoms, calc, fmax_eV_per_A=relax_fmax_eV_per_A)
    if equilibration_fs > 0:
        equilibrate_nvt(
            atoms,
            calc,
            temperature_K=temperature_K,
            duration_fs=equilibration_fs,
            timestep_fs=equilibration_timestep_fs,
            seed=seed,
            thermostat=thermostat,
        )
    atoms.calc = None
    return atoms
