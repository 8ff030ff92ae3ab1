"""Neighbour lists (with a Verlet skin) for the descriptor kernels, built with ``vesin``.

A :class:`Neighbours` holds, for every atom i, the neighbours j and the integer cell
shifts S such that the displacement d_ij = r_j − r_i + S·cell; it lists every periodic
image within the list radius r_c + skin (so a cell smaller than 2·r_c gives several
entries for one neighbour). Distances are not stored: the kernels recompute them from the
positions of the call, so one list serves while no atom has moved more than skin/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vesin
from ase import Atoms

__all__ = ["Neighbours", "build_neighbours"]


@dataclass(frozen=True, eq=False)
class Neighbours:
    """Full neighbour list of one structure in compressed-row form.

    offsets: (n_atoms + 1,) int64 — atom i's entries are ``offsets[i]:offsets[i + 1]``;
    j: (n_pairs,) int64 — neighbour index of each entry;
    shift: (n_pairs, 3) float64 — integer cell shift S of each entry (d = r_j − r_i + S·cell);
    r_list_A: list radius r_c + skin (Å);
    positions_A: (n_atoms, 3) float64, Å — positions at build time;
    cell_A: (3, 3) float64, Å; pbc: (3,) bool; numbers: (n_atoms,) int64 — the structure's
    cell, periodicity and atomic numbers at build time.
    """

    offsets: np.ndarray
    j: np.ndarray
    shift: np.ndarray
    r_list_A: float
    positions_A: np.ndarray
    cell_A: np.ndarray
    pbc: np.ndarray
    numbers: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_pairs(self) -> int:
        return int(self.j.shape[0])

    def matches(self, atoms: Atoms) -> bool:
        """True if ``atoms`` has the same atom count, numbers, cell and periodicity."""
        return (
            len(atoms) == self.n_atoms
            and np.array_equal(atoms.numbers, self.numbers)
            and np.array_equal(np.asarray(atoms.pbc, bool), self.pbc)
            and np.array_equal(atoms.cell.array, self.cell_A)
        )

    def max_displacement_A(self, positions_A: np.ndarray) -> float:
        """Largest distance (Å) any atom has moved since the list was built."""
        if self.n_atoms == 0:
            return 0.0
        d = positions_A - self.positions_A
        return float(np.sqrt(np.max(np.einsum("ij,ij->i", d, d))))

    def valid_for(self, atoms: Atoms, skin_A: float) -> bool:
        """Whether the list still holds every pair within r_c for ``atoms`` (moved < skin/2)."""
        return self.matches(atoms) and self.max_displacement_A(atoms.positions) <= 0.5 * skin_A


def build_neighbours(atoms: Atoms, r_list_A: float) -> Neighbours:
    """All pairs within ``r_list_A`` (Å) of ``atoms``, including periodic images.

    Entries are sorted by (i, j, shift) so the result does not depend on the library's
    internal order.
    """
    positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    cell = np.ascontiguousarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool).copy()
    n = len(atoms)
    if n > 0:
        nl = vesin.NeighborList(cutoff=float(r_list_A), full_list=True)
        i, j, s = nl.compute(positions, cell, [bool(p) for p in pbc], "ijS")
        i = np.asarray(i, dtype=np.int64)
        j = np.asarray(j, dtype=np.int64)
        s = np.asarray(s, dtype=np.int64).reshape(-1, 3)
    else:
        i = j = np.zeros(0, np.int64)
        s = np.zeros((0, 3), np.int64)
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
    i, j, s = i[order], j[order], s[order]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(i, minlength=n), out=offsets[1:])
    return Neighbours(
        offsets=offsets,
        j=np.ascontiguousarray(j),
        shift=np.ascontiguousarray(s, dtype=np.float64),
        r_list_A=float(r_list_A),
        positions_A=positions.copy(),
        cell_A=cell.copy(),
        pbc=pbc,
        numbers=np.asarray(atoms.numbers, dtype=np.int64).copy(),
    )
