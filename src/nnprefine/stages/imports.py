"""Command ``import``: labelled frames a user already has, into the project's ``data.db``.

Files are extended XYZ (``.xyz``, ``.extxyz``), n2p2 ``input.data`` (``.data``), an ASE
database (``.db`` with ASE's tables) or another nnprefine ``data.db``. Each frame keeps its
provenance: origin (default ``import``), the file and the frame's index in it, and the
units it was read in (``selection`` column); its reference is the project's ``[reference]``
unless another is given, so say which method labelled the frames. Frames already stored
(same structure, same reference) are skipped; frames that cannot be used (no energy or
forces, non-finite numbers, elements the project does not hold) are reported by file and
index and not stored. Imported frames are iteration 0: every later training uses them.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from nnprefine.errors import ConfigError, NnprefineError
from nnprefine.stages.project import Project

__all__ = ["FORMATS", "ImportReport", "import_frames", "read_frames"]

FORMATS = ("auto", "extxyz", "n2p2", "ase-db", "nnprefine")


@dataclass
class ImportReport:
    """What an import did, per file: stored, duplicate and rejected frames."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)  # "file:index: reason"


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if name == "input.data" or name.endswith(".data"):
        return "n2p2"
    if name.endswith(".db"):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        if "systems" in tables:
            return "ase-db"
        if "frames" in tables and "meta" in tables:
            return "nnprefine"
    raise ConfigError(
        f"cannot tell the format of {path}; name it *.extxyz, *.xyz, input.data or *.db, or "
        f"give --format (one of {', '.join(FORMATS[1:])})"
    )


def _scaled(atoms: Atoms, length_unit_A: float, energy_unit_eV: float) -> Atoms:
    """``atoms`` with positions, cell and labels converted from the file's units."""
    if length_unit_A == 1.0 and energy_unit_eV == 1.0 or atoms.calc is None:
        return atoms
    results = dict(atoms.calc.results)
    out = atoms.copy()
    out.positions *= length_unit_A
    out.cell = atoms.cell.array * length_unit_A
    if "energy" in results:
        results["energy"] = results["energy"] * energy_unit_eV
    if "forces" in results:
        results["forces"] = np.asarray(results["forces"]) * (energy_unit_eV / length_unit_A)
    if "stress" in results:
        results["stress"] = np.asarray(results["stress"]) * (energy_unit_eV / length_unit_A**3)
    results.pop("free_energy", None)
    out.calc = SinglePointCalculator(out, **results)
    return out


def read_frames(
    path: Path, fmt: str = "auto", length_unit_A: float = 1.0, energy_unit_eV: float = 1.0
) -> list[Atoms]:
    """The frames of one file, labels in eV, Å, eV/Å (see the module docstring)."""
    from nnprefine.dataset import FrameStore, read_extxyz, read_n2p2_data

    if not path.is_file():
        raise ConfigError(f"{path} does not exist or is not a file")
    for name, unit in (("length unit", length_unit_A), ("energy unit", energy_unit_eV)):
        if not (math.isfinite(unit) and unit > 0):
            raise ConfigError(f"the {name} must be a positive number, got {unit}")
    fmt = _format_of(path) if fmt == "auto" else fmt
    if fmt == "n2p2":
        return read_n2p2_data(path, length_unit_A=length_unit_A, energy_unit_eV=energy_unit_eV)
    if fmt == "extxyz":
        frames = read_extxyz(path)
    elif fmt == "ase-db":
        import ase.db

        frames = [
            row.toatoms(add_additional_information=False) for row in ase.db.connect(path).select()
        ]
    elif fmt == "nnprefine":
        with FrameStore(path) as store:
            frames = store.frames()
    else:
        raise ConfigError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return [_scaled(a, length_unit_A, energy_unit_eV) for a in frames]


def import_frames(
    project: Project,
    paths: Sequence[str | Path],
    *,
    origin: str = "import",
    fmt: str = "auto",
    length_unit_A: float = 1.0,
    energy_unit_eV: float = 1.0,
    reference: Mapping[str, Any] | None = None,
) -> ImportReport:
    """Store the labelled frames of ``paths`` in the project's ``data.db``; every file is
    read and checked before the first frame is stored."""
    files = [Path(p) for p in paths]
    per_file = [(f, read_frames(f, fmt, length_unit_A, energy_unit_eV)) for f in files]
    spec = dict(reference) if reference is not None else project.config.reference.spec()
    units = {"length_unit_A": length_unit_A, "energy_unit_eV": energy_unit_eV}
    report = ImportReport()
    project.dir.mkdir(parents=True, exist_ok=True)
    with project.store() as store:
        for path, frames in per_file:
            for k, atoms in enumerate(frames):
                try:
                    new_id = store.add(
                        atoms,
                        origin=origin,
                        reference=spec,
                        selection={"file": str(path.resolve()), "index": k, **units},
                    )
                except NnprefineError as exc:  # DatasetError, UnsupportedElementError, ...
                    report.rejected.append(f"{path}:{k}: {exc}")
                    continue
                if new_id is None:
                    report.duplicates += 1
                else:
                    report.stored += 1
    return report
