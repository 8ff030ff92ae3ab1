"""One labelled frame: checking it, hashing it, and turning it back into ASE ``Atoms``.

Shared by the SQLite store and the file formats, so that every way into the data set
applies the same checks and every way out builds the same kind of ``Atoms``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from nnprefine.errors import DatasetError, UnsupportedElementError
from nnprefine.reference import reference_spec

_N_ELEMENTS = len(chemical_symbols) - 1  # atomic numbers 1 .. 118 are real elements


@dataclass(frozen=True)
class Structure:
    """The geometry of a frame, as stored and hashed.

    numbers: (n_atoms,) int64, atomic numbers; positions: (n_atoms, 3) float64, Å;
    cell: (3, 3) float64, Å, rows are the cell vectors; pbc: (3,) bool.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def pbc_text(self) -> str:
        """``pbc`` as three letters, e.g. ``"TTF"``."""
        return "".join("T" if p else "F" for p in self.pbc)

    def bytes_for_hash(self) -> bytes:
        """A canonical byte string of the geometry (``-0.0`` counted as ``0.0``)."""
        return b"".join(
            [
                np.int64(self.n_atoms).astype("<i8").tobytes(),
                self.numbers.astype("<i8").tobytes(),
                (self.positions + 0.0).astype("<f8").tobytes(),
                (self.cell + 0.0).astype("<f8").tobytes(),
                self.pbc_text.encode(),
            ]
        )


@dataclass(frozen=True)
class Labels:
    """Reference labels of a frame.

    energy_eV: total potential energy, eV; forces: (n_atoms, 3) float64, eV/Å;
    stress: (6,) float64 in Voigt order (xx, yy, zz, yz, xz, xy), eV/Å³, or None.
    """

    energy_eV: float
    forces: np.ndarray
    stress: np.ndarray | None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(value: Any, what: str) -> str:
    """``value`` as compact JSON with sorted keys; NaN, inf and odd objects are errors."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default
        )
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"{what} must be JSON data (dicts, lists, str, finite numbers, bool, None): {exc}; "
            "convert objects to plain numbers or strings and replace NaN/inf before storing"
        ) from exc


def normalise_reference(reference: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """The reference spec as ``{"calculator": ..., "kwargs": {...}}`` (see nnprefine.reference)."""
    return reference_spec(reference)


def reference_json(reference: Mapping[str, Any] | str | None) -> str:
    return canonical_json(normalise_reference(reference), "the reference spec")


def element_numbers(elements: Collection[str] | None) -> frozenset[int] | None:
    """Atomic numbers of the allowed element symbols, or None for 'any real element'."""
    if elements is None:
        return None
    if isinstance(elements, str):
        elements = (elements,)
    numbers = set()
    for symbol in elements:
        z = atomic_numbers.get(symbol, 0)
        if z == 0:
            raise UnsupportedElementError(
                f"{symbol!r} in elements is not a chemical symbol; use symbols like 'Be', 'W'"
            )
        numbers.add(z)
    if not numbers:
        raise DatasetError("elements is empty; give at least one symbol, e.g. elements=('Be',)")
    return frozenset(numbers)


def check_elements(numbers: np.ndarray, allowed: frozenset[int] | None, where: str) -> None:
    """Raise UnsupportedElementError if ``numbers`` holds an element outside ``allowed``."""
    bad = sorted({int(z) for z in numbers if not 1 <= z <= _N_ELEMENTS})
    if bad:
        raise UnsupportedElementError(
            f"{where} holds atomic number(s) {bad}, which are not chemical elements; "
            "set real atomic numbers (Atoms.numbers) before storing"
        )
    if allowed is not None:
        extra = sorted({int(z) for z in numbers} - allowed)
        if extra:
            have = ", ".join(chemical_symbols[z] for z in sorted(allowed))
            names = ", ".join(chemical_symbols[z] for z in extra)
            raise UnsupportedElementError(
                f"{where} holds {names}, but this store accepts only {have}; remove those "
                "atoms or open the store with elements that include them"
            )


def _finite(array: np.ndarray, name: str, where: str) -> None:
    if not np.all(np.isfinite(array)):
        raise DatasetError(
            f"{where}: NaN or inf in {name}; a failed calculation must go to "
            "FrameStore.quarantine(...), not into the data set"
        )


def structure_of(atoms: Atoms, where: str = "frame") -> Structure:
    """Check and copy the geometry of ``atoms`` (any element; see check_elements)."""
    if not isinstance(atoms, Atoms):
        raise DatasetError(f"{where} is a {type(atoms).__name__}, not an ase.Atoms")
    if len(atoms) == 0:
        raise DatasetError(f"{where} has no atoms; only non-empty structures can be stored")
    numbers = np.asarray(atoms.numbers, dtype=np.int64).copy()
    positions = np.asarray(atoms.positions, dtype=np.float64).copy()
    cell = np.asarray(atoms.cell.array, dtype=np.float64).copy()
    pbc = np.asarray(atoms.pbc, dtype=bool).copy()
    _finite(positions, "positions", where)
    _finite(cell, "the cell", where)
    flat = [i for i in range(3) if pbc[i] and not np.any(cell[i])]
    if flat or (pbc.all() and np.linalg.det(cell) == 0.0):
        raise DatasetError(
            f"{where} is periodic (pbc={pbc.tolist()}) but its cell {cell.tolist()} has a zero "
            "vector along a periodic direction or zero volume; set a proper cell or turn "
            "pbc off along that direction"
        )
    return Structure(numbers=numbers, positions=positions, cell=cell, pbc=pbc)


def labels_of(atoms: Atoms, where: str = "frame") -> Labels:
    """Read energy, forces and (optional) stress from ``atoms.calc.results``, without computing.

    Labels come from the calculator attached to the atoms — usually an
    ``ase.calculators.singlepoint.SinglePointCalculator``, e.g.
    ``atoms.calc = SinglePointCalculator(atoms, energy=e_eV, forces=f_eV_per_A)``, or the
    reference calculator right after it ran. Nothing is ever calculated here.
    """
    n_atoms = len(atoms)
    calc = atoms.calc
    fix = (
        "attach the reference results first, e.g. atoms.calc = "
        "SinglePointCalculator(atoms, energy=e_eV, forces=f_eV_per_A)"
    )
    if calc is None:
        raise DatasetError(f"{where} has no calculator, so no energy and forces; {fix}")
    results = getattr(calc, "results", None) or {}
    if getattr(calc, "atoms", None) is not None and calc.check_state(atoms):
        raise DatasetError(
            f"{where}: the atoms changed after the calculator produced its results "
            f"({', '.join(calc.check_state(atoms))}), so the labels are stale; recompute "
            "them or attach labels that belong to these positions"
        )
    if results.get("energy") is None:
        raise DatasetError(f"{where} has no energy in atoms.calc.results; {fix}")
    if results.get("forces") is None:
        raise DatasetError(f"{where} has no forces in atoms.calc.results; {fix}")
    energy = results["energy"]
    try:
        energy_eV = float(np.asarray(energy, dtype=np.float64).reshape(()))
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: the energy must be one number (eV), got {energy!r}") from exc
    if not math.isfinite(energy_eV):
        _finite(np.array([energy_eV]), "the energy", where)
    forces = np.array(results["forces"], dtype=np.float64)
    if forces.shape != (n_atoms, 3):
        raise DatasetError(
            f"{where}: forces have shape {forces.shape}, expected ({n_atoms}, 3) for "
            f"{n_atoms} atoms (eV/Å)"
        )
    _finite(forces, "the forces", where)
    stress = results.get("stress")
    if stress is not None:
        stress = np.array(stress, dtype=np.float64)
        if stress.shape == (3, 3):
            stress = full_3x3_to_voigt_6_stress(stress)
        if stress.shape != (6,):
            raise DatasetError(
                f"{where}: stress has shape {stress.shape}; expected Voigt (6,) or (3, 3), eV/Å³"
            )
        _finite(stress, "the stress", where)
    return Labels(energy_eV=energy_eV, forces=forces, stress=stress)


def content_hash_of(structure: Structure, reference_json_text: str) -> str:
    digest = hashlib.sha256(b"nnprefine-frame-v1\0")
    digest.update(structure.bytes_for_hash())
    digest.update(b"\0")
    digest.update(reference_json_text.encode())
    return digest.hexdigest()


def content_hash(atoms: Atoms, reference: Mapping[str, Any] | str | None) -> str:
    """The key under which a candidate is stored: hex SHA-256 of its structure and reference.

    Covers atomic numbers, positions, cell and pbc bit for bit (``-0.0`` equals ``0.0``),
    and the normalised reference spec; labels and provenance do not enter. Two
    candidates with equal hashes are the same reference calculation.
    """
    return content_hash_of(structure_of(atoms), reference_json(reference))


def split_uniform(structure: Structure) -> float:
    """A number in [0, 1) that depends only on the geometry; ``< test_fraction`` means test.

    It ignores the reference, so the same structure labelled twice lands in the same set.
    """
    digest = hashlib.sha256(b"nnprefine-split-v1\0" + structure.bytes_for_hash()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def make_atoms(
    structure: Structure, labels: Labels | None, info: Mapping[str, Any] | None = None
) -> Atoms:
    """``Atoms`` with a ``SinglePointCalculator`` holding the labels and ``info`` in atoms.info."""
    atoms = Atoms(
        numbers=structure.numbers.copy(),
        positions=structure.positions.copy(),
        cell=structure.cell.copy(),
        pbc=structure.pbc.copy(),
    )
    if labels is not None:
        results: dict[str, Any] = {
            "energy": labels.energy_eV,
            "forces": labels.forces.copy(),
        }
        if labels.stress is not None:
            results["stress"] = labels.stress.copy()
        atoms.calc = SinglePointCalculator(atoms, **results)
    if info:
        atoms.info.update(info)
    return atoms
