"""ASE calculators for a neural-network potential and for a committee.

Both only compute — no file or restart logic. They keep the descriptor's neighbour list
between calls and rebuild it only when an atom has moved more than half the Verlet skin
(or the cell, periodicity or atom types changed), so MD costs little more than the
descriptor's values and forces passes.

:class:`CommitteeCalculator` returns member 0's energy and forces (the model that drives
MD) and puts the committee's spread into extra ``results`` keys:

=====================================  ==========================================  =========
key                                    meaning                                     unit
=====================================  ==========================================  =========
``energy_disagreement_eV_per_atom``    max pairwise |E_a − E_b| / n_atoms          eV/atom
``force_disagreement_eV_per_A``        max pairwise, over atoms and x,y,z |F_a−F_b|  eV/Å
``force_std_eV_per_A``                 max over atoms sqrt(mean_m |F_m − F̄|²)       eV/Å
``energy_std_eV_per_atom``             std of member energies / n_atoms            eV/atom
``member_energies``                    (n_members,) total energies                  eV
``member_forces``                      (n_members, n_atoms, 3) forces               eV/Å
=====================================  ==========================================  =========
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from nnprefine.descriptors import Descriptor, Neighbours
from nnprefine.model import Committee, NNPotential

__all__ = ["CommitteeCalculator", "NNPCalculator"]


class _NeighbourCache:
    """A neighbour list kept while no atom has moved more than half the skin."""

    def __init__(self, descriptor: Descriptor, skin_A: float) -> None:
        self.descriptor = descriptor
        self.half_skin_A = 0.5 * skin_A
        self._neighbours: Neighbours | None = None
        self._key: tuple[Any, ...] | None = None
        self._positions: np.ndarray | None = None
        self.builds = 0

    def get(self, atoms: Atoms) -> Neighbours:
        key = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), tuple(atoms.pbc))
        if (
            self._neighbours is None
            or key != self._key
            or self._positions is None
            or self._positions.shape != atoms.positions.shape
            or np.max(np.linalg.norm(atoms.positions - self._positions, axis=1), initial=0.0)
            > self.half_skin_A
        ):
            self._neighbours = self.descriptor.neighbours(atoms)
            self._key = key
            self._positions = atoms.positions.copy()
            self.builds += 1
        return self._neighbours


class NNPCalculator(Calculator):
    """ASE calculator of one :class:`~nnprefine.model.NNPotential`.

    Properties: ``energy``, ``free_energy`` (eV), ``energies`` (n_atoms,) eV, ``forces``
    (n_atoms, 3) eV/Å.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces"]

    def __init__(self, potential: NNPotential, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        self._cache = _NeighbourCache(potential.descriptor, potential.skin_A)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        out = self.potential.evaluate(self.atoms, self._cache.get(self.atoms))
        self.results = {
            "energy": out["energy"],
            "free_energy": out["energy"],
            "energies": out["energies"],
            "forces": out["forces"],
        }


class CommitteeCalculator(Calculator):
    """ASE calculator of a :class:`~nnprefine.model.Committee`: member 0 drives, all judge.

    ``energy``/``forces`` are member 0's; see the module docstring for the extra keys.
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "energies",
        "forces",
        "energy_disagreement_eV_per_atom",
        "force_disagreement_eV_per_A",
        "force_std_eV_per_A",
        "energy_std_eV_per_atom",
        "member_energies",
        "member_forces",
    ]

    def __init__(self, committee: Committee, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.committee = committee
        self._cache = _NeighbourCache(committee.descriptor, committee[0].skin_A)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        res = self.committee.evaluate(self.atoms, self._cache.get(self.atoms))
        self.results = {
            "energy": float(res.energies_eV[0]),
            "free_energy": float(res.energies_eV[0]),
            "energies": res.atomic_energies_eV[0],
            "forces": res.forces_eV_per_A[0],
            "member_energies": res.energies_eV,
            "member_forces": res.forces_eV_per_A,
            **res.metrics.as_dict(),
        }
