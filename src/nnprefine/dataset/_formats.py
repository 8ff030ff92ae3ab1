"""Labelled frames to and from files: extended XYZ (ASE) and n2p2 ``input.data``.

Both writers print every float with Python's shortest round-trip representation
(``repr``), so reading a file back gives the same float64 numbers bit for bit. ASE's own
extended-XYZ writer rounds per-atom columns to 8 decimals, hence the writer here; the
files it writes are ordinary extended XYZ that ``ase.io.read`` understands.

Units: this package uses eV and Å (forces eV/Å). n2p2 takes numbers in whatever units
the user chose; ``read_n2p2_data`` and ``write_n2p2_data`` assume eV and Å unless told otherwise
through ``length_unit_A`` (Å per file length unit, e.g. ``ase.units.Bohr``) and
``energy_unit_eV`` (eV per file energy unit, e.g. ``ase.units.Hartree``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers
from ase.stress import voigt_6_to_full_3x3_stress

from nnprefine.dataset import _frame
from nnprefine.errors import DatasetError, UnsupportedElementError

__all__ = ["read_extxyz", "write_extxyz", "read_n2p2_data", "write_n2p2_data"]

# Names that ASE's extxyz reader treats as the comment line's own fields or as labels.
_RESERVED_INFO_KEYS = {"Lattice", "Properties", "pbc", "energy", "free_energy", "stress"}
_PLAIN_STRING = re.compile(r"[A-Za-z0-9_.:/+@-]+")
_INFO_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_BOOL_WORDS = {"T", "F", "true", "false", "True", "False", "TRUE", "FALSE"}


def _f(value: Any) -> str:
    """A float in shortest round-trip form (``repr``), never numpy's ``np.float64(...)``."""
    return repr(float(value))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _info_value(key: str, value: Any) -> str:
    """``value`` as an extxyz comment-line value that ASE's reader turns back into it."""
    if isinstance(value, bool | np.bool_):
        return "T" if value else "F"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return _f(value)
    if isinstance(value, str) and _PLAIN_STRING.fullmatch(value) and value not in _BOOL_WORDS:
        try:
            float(value)
        except ValueError:
            return value
    text = _frame.canonical_json(value, f"atoms.info[{key!r}]")
    return _quote("_JSON " + text)


def _open_for_writing(path: str | os.PathLike[str], append: bool) -> Any:
    try:
        return open(path, "a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot write {path}: {exc}") from exc


def write_extxyz(
    path: str | os.PathLike[str], frames: Iterable[Atoms], *, append: bool = False
) -> int:
    """Write frames as extended XYZ with exact floats; return the number written.

    Per atom: symbol, position (Å) and, for labelled frames, force (eV/Å). On the comment
    line: ``Lattice`` (if the cell is not zero), ``pbc``, ``energy`` (eV), ``stress``
    (3×3, eV/Å³, if present) and every ``atoms.info`` entry — provenance dicts as
    ``_JSON`` values, which ``ase.io.read`` decodes. Labels come from ``atoms.calc``
    (none is fine; incomplete or NaN ones are an error).
    """
    chunks: list[str] = []
    for i, atoms in enumerate(frames):
        where = f"frame {i}"
        structure = _frame.structure_of(atoms, where)
        labels = _frame.labels_of(atoms, where) if atoms.calc is not None else None
        fields = []
        if structure.cell.any():
            fields.append("Lattice=" + _quote(" ".join(_f(x) for x in structure.cell.ravel())))
        properties = "species:S:1:pos:R:3" + (":forces:R:3" if labels else "")
        fields.append(f"Properties={properties}")
        if labels is not None:
            fields.append(f"energy={_f(labels.energy_eV)}")
            if labels.stress is not None:
                full = voigt_6_to_full_3x3_stress(labels.stress)
                fields.append("stress=" + _quote(" ".join(_f(x) for x in full.ravel())))
        fields.append("pbc=" + _quote(" ".join(structure.pbc_text)))
        for key, value in atoms.info.items():
            if not isinstance(key, str) or not _INFO_KEY.fullmatch(key):
                raise DatasetError(
                    f"{where}: atoms.info key {key!r} cannot be written to extended XYZ; use "
                    "names of letters, digits, '_', '.', '-'"
                )
            if key in _RESERVED_INFO_KEYS:
                raise DatasetError(
                    f"{where}: atoms.info[{key!r}] would clash with the extxyz field of that "
                    "name; rename it (labels belong in atoms.calc)"
                )
            fields.append(f"{key}={_info_value(key, value)}")
        lines = [str(structure.n_atoms), " ".join(fields)]
        symbols = atoms.get_chemical_symbols()
        for j in range(structure.n_atoms):
            cols = [symbols[j], *(_f(x) for x in structure.positions[j])]
            if labels is not None:
                cols += [_f(x) for x in labels.forces[j]]
            lines.append(" ".join(cols))
        chunks.append("\n".join(lines) + "\n")
    with _open_for_writing(path, append) as handle:
        handle.write("".join(chunks))
    return len(chunks)


def read_extxyz(
    path: str | os.PathLike[str],
    *,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
) -> list[Atoms]:
    """Read every frame of an extended XYZ file (through ``ase.io.read``).

    Labels end up in ``atoms.calc`` (a ``SinglePointCalculator``), ready for
    :meth:`FrameStore.add`. Files from other tools often name them differently, e.g.
    ``energy_key="REF_energy"``, ``forces_key="REF_forces"``: such entries are moved from
    ``atoms.info`` / ``atoms.arrays`` into the calculator. Units must be eV, Å, eV/Å, eV/Å³.
    """
    from ase.io import read

    if not Path(path).is_file():
        raise DatasetError(f"{path} does not exist or is not a file")
    try:
        images = read(path, index=":", format="extxyz")
    except Exception as exc:  # ASE raises XYZError, ValueError, IndexError, ...
        raise DatasetError(f"{path} is not valid extended XYZ: {exc}") from exc
    for atoms in images:
        for key, value in atoms.info.items():
            if isinstance(value, np.generic):
                atoms.info[key] = value.item()  # plain int / float / bool, as they were written
        results = dict(atoms.calc.results) if atoms.calc is not None else {}
        if energy_key != "energy" and energy_key in atoms.info:
            results["energy"] = float(atoms.info.pop(energy_key))
        if forces_key != "forces" and forces_key in atoms.arrays:
            results["forces"] = np.array(atoms.arrays.pop(forces_key), dtype=np.float64)
        if stress_key != "stress" and stress_key in atoms.info:
            results["stress"] = np.array(atoms.info.pop(stress_key), dtype=np.float64)
        atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return images


def _check_units(length_unit_A: float, energy_unit_eV: float) -> None:
    for name, unit in (("length_unit_A", length_unit_A), ("energy_unit_eV", energy_unit_eV)):
        if not (isinstance(unit, int | float) and math.isfinite(unit) and unit > 0):
            raise DatasetError(f"{name} must be a positive number, got {unit!r}")


def _n2p2_comment(atoms: Atoms) -> str:
    if "comment" in atoms.info:
        text = str(atoms.info["comment"])
    else:
        keys = ("frame_id", "origin", "iteration", "split", "trajectory", "time_fs")
        text = " ".join(f"{k}={atoms.info[k]}" for k in keys if atoms.info.get(k) is not None)
    return " ".join(text.split())  # one line


def write_n2p2_data(
    path: str | os.PathLike[str],
    frames: Iterable[Atoms],
    *,
    length_unit_A: float = 1.0,
    energy_unit_eV: float = 1.0,
    partial_pbc: Literal["error", "periodic"] = "error",
    append: bool = False,
) -> int:
    """Write labelled frames as an n2p2 ``input.data`` file; return the number written.

    Each frame is ``begin``, ``comment`` (``atoms.info["comment"]`` or a provenance
    summary), three ``lattice`` lines for periodic frames (none for non-periodic ones),
    one ``atom x y z element charge 0.0 fx fy fz`` line per atom (charge from
    ``atoms.get_initial_charges()``), ``energy``, ``charge`` (``atoms.info["charge"]``, else
    the sum of the atomic charges) and ``end``.
    Numbers are in eV and Å unless ``length_unit_A`` / ``energy_unit_eV`` say how many Å
    and eV one file unit is.

    n2p2 knows only fully periodic or non-periodic structures. A frame periodic in some
    directions only (e.g. a slab with pbc=(True, True, False)) is an error, unless
    ``partial_pbc="periodic"``: then it is written as periodic in 3D, which is the same
    physics when the vacuum along the non-periodic direction exceeds the cutoff.
    """
    if partial_pbc not in ("error", "periodic"):
        raise DatasetError(f"partial_pbc must be 'error' or 'periodic', got {partial_pbc!r}")
    _check_units(length_unit_A, energy_unit_eV)
    force_unit = energy_unit_eV / length_unit_A
    chunks: list[str] = []
    for i, atoms in enumerate(frames):
        where = f"frame {i}"
        structure = _frame.structure_of(atoms, where)
        labels = _frame.labels_of(atoms, where)
        lines = ["begin", f"comment {_n2p2_comment(atoms)}".rstrip()]
        if structure.pbc.any():
            if not structure.pbc.all() and partial_pbc == "error":
                raise DatasetError(
                    f"{where} has pbc={structure.pbc.tolist()}, but n2p2 structures are either "
                    "periodic in 3D or not at all; pass partial_pbc='periodic' to write it as "
                    "3D-periodic (fine when the vacuum exceeds the cutoff), or change atoms.pbc"
                )
            if np.linalg.det(structure.cell) == 0.0:
                raise DatasetError(f"{where}: cannot write a periodic frame with a flat cell")
            for vector in structure.cell / length_unit_A:
                lines.append("lattice " + " ".join(_f(x) for x in vector))
        symbols = atoms.get_chemical_symbols()
        charges = atoms.get_initial_charges()
        positions = structure.positions / length_unit_A
        forces = labels.forces / force_unit
        for j in range(structure.n_atoms):
            lines.append(
                f"atom {' '.join(_f(x) for x in positions[j])} {symbols[j]} {_f(charges[j])} "
                f"0.0 {' '.join(_f(x) for x in forces[j])}"
            )
        lines.append(f"energy {_f(labels.energy_eV / energy_unit_eV)}")
        lines.append(f"charge {_f(atoms.info.get('charge', charges.sum()))}")
        lines.append("end")
        chunks.append("\n".join(lines) + "\n")
    with _open_for_writing(path, append) as handle:
        handle.write("".join(chunks))
    return len(chunks)


def read_n2p2_data(
    path: str | os.PathLike[str], *, length_unit_A: float = 1.0, energy_unit_eV: float = 1.0
) -> list[Atoms]:
    """Read an n2p2 ``input.data`` file into labelled ``Atoms`` (eV, Å, eV/Å).

    Frames with three ``lattice`` lines are periodic in 3D; frames without are
    non-periodic (zero cell). The comment goes to ``atoms.info["comment"]``, per-atom
    charges to the initial charges (if any is non-zero) and a non-zero total charge to
    ``atoms.info["charge"]``; n2p2's unused per-atom column is ignored.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError:
        raise DatasetError(
            f"{path} is not a text file; an n2p2 input.data is text (begin/atom/energy/end lines)"
        ) from None
    _check_units(length_unit_A, energy_unit_eV)
    force_unit = energy_unit_eV / length_unit_A
    frames: list[Atoms] = []
    frame: dict[str, Any] | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{lineno}"
        tokens = line.split()
        if not tokens:
            continue
        keyword, args = tokens[0], tokens[1:]
        if keyword == "begin":
            if frame is not None:
                raise DatasetError(f"{where}: 'begin' inside a frame; the previous one lacks 'end'")
            frame = {"lattice": [], "symbols": [], "positions": [], "forces": [], "charges": []}
            frame["comment"] = None
            frame["energy"] = frame["charge"] = None
            continue
        if frame is None:
            raise DatasetError(f"{where}: {keyword!r} outside a frame; frames start with 'begin'")
        try:
            if keyword == "comment":
                frame["comment"] = line.strip()[len("comment") :].strip()
            elif keyword == "lattice":
                if len(args) != 3 or len(frame["lattice"]) == 3:
                    raise DatasetError(f"{where}: expected at most three 'lattice ax ay az' lines")
                frame["lattice"].append([float(x) for x in args])
            elif keyword == "atom":
                if len(args) != 9:
                    raise DatasetError(
                        f"{where}: an atom line has 9 fields 'atom x y z element charge n fx fy "
                        f"fz', this one has {len(args)}"
                    )
                if atomic_numbers.get(args[3], 0) == 0:
                    raise UnsupportedElementError(
                        f"{where}: {args[3]!r} is not a chemical symbol (e.g. 'Be', 'W')"
                    )
                frame["positions"].append([float(x) for x in args[0:3]])
                frame["symbols"].append(args[3])
                frame["charges"].append(float(args[4]))
                frame["forces"].append([float(x) for x in args[6:9]])
            elif keyword in ("energy", "charge"):
                if len(args) != 1:
                    raise DatasetError(f"{where}: expected '{keyword} <number>'")
                frame[keyword] = float(args[0])
            elif keyword == "end":
                frames.append(_n2p2_atoms(frame, where, length_unit_A, energy_unit_eV, force_unit))
                frame = None
            else:
                raise DatasetError(
                    f"{where}: unknown keyword {keyword!r}; n2p2 frames hold begin, comment, "
                    "lattice, atom, energy, charge, end"
                )
        except ValueError as exc:
            if isinstance(exc, DatasetError | UnsupportedElementError):
                raise
            raise DatasetError(f"{where}: not a number in {line.strip()!r} ({exc})") from exc
    if frame is not None:
        raise DatasetError(f"{path}: the last frame has no 'end'; the file may be truncated")
    return frames


def _n2p2_atoms(
    frame: dict[str, Any],
    where: str,
    length_unit_A: float,
    energy_unit_eV: float,
    force_unit: float,
) -> Atoms:
    if not frame["symbols"]:
        raise DatasetError(f"{where}: frame without 'atom' lines")
    if frame["energy"] is None:
        raise DatasetError(f"{where}: frame without an 'energy' line")
    if len(frame["lattice"]) not in (0, 3):
        raise DatasetError(f"{where}: a frame needs three 'lattice' lines or none")
    periodic = len(frame["lattice"]) == 3
    numbers = [atomic_numbers[s] for s in frame["symbols"]]
    atoms = Atoms(
        numbers=numbers,
        positions=np.array(frame["positions"]) * length_unit_A,
        cell=np.array(frame["lattice"]) * length_unit_A if periodic else np.zeros((3, 3)),
        pbc=periodic,
    )
    charges = np.array(frame["charges"])
    if charges.any():
        atoms.set_initial_charges(charges)
    if frame["comment"]:
        atoms.info["comment"] = frame["comment"]
    if frame["charge"]:
        atoms.info["charge"] = frame["charge"]
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=frame["energy"] * energy_unit_eV,
        forces=np.array(frame["forces"]) * force_unit,
    )
    return atoms
