"""ASE calculators for a neural-network potential and for a committee.

Both only compute — no file or restart logic. They keep the descriptor's neighbour list
between calls and rebuild it only when an atom has moved more than half the Verlet skin
(or the cell, periodicity or atom types changed), and compare the atoms with the last
call by whole-array equality of what they read (positions, numbers, cell, pbc), so MD
costs little more than the descriptor's values and forces passes. Both have an
``r_cut_A`` attribute (Å), the interaction range :func:`nnprefine.impact.run_impact`
needs.

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
from nnprefine.errors import ModelError
from nnprefine.model import Committee, NNPotential

__all__ = ["CommitteeCalculator", "NNPCalculator"]


#: what the potentials read from the atoms; charges and magnetic moments play no part
_IGNORED_CHANGES = ("initial_charges", "initial_magmoms")


def _system_changes(old: Atoms | None, new: Atoms) -> list[str]:
    """What the NNP reads that differs between ``old`` and ``new``: positions, numbers,
    cell, pbc. Exact comparisons of whole arrays, in place of ASE's ``compare_atoms``
    (which walks every per-atom array with a tolerance: ~0.2 ms per call on 491 atoms)."""
    if old is None:
        return list(all_changes)
    changes = []
    if old.positions.shape != new.positions.shape or not np.array_equal(
        old.positions, new.positions
    ):
        changes.append("positions")
    if old.numbers.shape != new.numbers.shape or not np.array_equal(old.numbers, new.numbers):
        changes.append("numbers")
    if not np.array_equal(old.cell.array, new.cell.array):
        changes.append("cell")
    if not np.array_equal(old.pbc, new.pbc):
        changes.append("pbc")
    return changes


class _NeighbourCache:
    """A neighbour list kept while no atom has moved more than half the skin.

    ``builds`` counts the lists built. Rebuilt as well when the atom count, numbers,
    cell or periodicity changed.
    """

    def __init__(self, descriptor: Descriptor, skin_A: float) -> None:
        self.descriptor = descriptor
        self.skin_A = float(skin_A)
        self._neighbours: Neighbours | None = None
        self.builds = 0

    def get(self, atoms: Atoms) -> Neighbours:
        """The cached list if it still covers ``atoms`` (:meth:`Neighbours.valid_for`),
        else a new one."""
        nbl = self._neighbours
        if nbl is None or not nbl.valid_for(atoms, self.skin_A):
            nbl = self._neighbours = self.descriptor.neighbours(atoms)
            self.builds += 1
        return nbl


class _ModelCalculator(Calculator):
    """What both model calculators share: cheap state checks, no files, ``r_cut_A``."""

    ignored_changes = set(_IGNORED_CHANGES)
    #: properties that need the force pass; the energies come from the forward pass alone
    _force_properties: frozenset[str] = frozenset({"forces"})

    def __init__(self, descriptor: Descriptor, skin_A: float, r_cut_A: float, **kwargs: Any):
        super().__init__(**kwargs)
        self._cache = _NeighbourCache(descriptor, skin_A)
        self._r_cut_A = float(r_cut_A)

    @property
    def neighbour_builds(self) -> int:
        """How many neighbour lists this calculator has built."""
        return self._cache.builds

    @property
    def r_cut_A(self) -> float:
        """Interaction range (Å) of the potential: its symmetry-function cutoff."""
        return self._r_cut_A

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        return _system_changes(self.atoms, atoms)

    def _take(self, atoms: Atoms | None) -> Atoms:
        """The atoms to evaluate: ASE's ``get_property`` has just stored a copy; a direct
        ``calculate(atoms)`` call stores one here (no files: nothing else to set up)."""
        if atoms is not None and (self.atoms is None or _system_changes(self.atoms, atoms)):
            self.atoms = atoms.copy()
        if self.atoms is None:
            raise ModelError("no atoms to evaluate: pass them to calculate() or get_property()")
        return self.atoms

    def _wants_forces(self, properties: list[str] | None) -> bool:
        return not properties or bool(self._force_properties.intersection(properties))


class NNPCalculator(_ModelCalculator):
    """ASE calculator of one :class:`~nnprefine.model.NNPotential`.

    Properties: ``energy``, ``free_energy`` (eV), ``energies`` (n_atoms,) eV, ``forces``
    (n_atoms, 3) eV/Å. The force pass runs only when ``forces`` are asked for; the energy
    and the atomic energies come from the network pass that forces need anyway, so they
    are always in ``results``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces"]

    def __init__(self, potential: NNPotential, **kwargs: Any) -> None:
        super().__init__(potential.descriptor, potential.skin_A, potential.r_cut_A, **kwargs)
        self.potential = potential
        self._last: tuple[Atoms, np.ndarray, Neighbours] | None = None

    def last_evaluation(self) -> tuple[Atoms, np.ndarray, Neighbours]:
        """The atoms of the last calculation, their unscaled symmetry functions (n_atoms,
        max_functions) and the neighbour list: what a committee watch reuses."""
        if self._last is None:
            raise ModelError("nothing evaluated yet: last_evaluation() needs a calculation first")
        return self._last

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        atoms = self._take(atoms)
        forces = self._wants_forces(properties)
        nbl = self._cache.get(atoms)
        out = self.potential.evaluate(atoms, nbl, forces=forces)
        self._last = (atoms, out["values"], nbl)
        self.results = {
            "energy": out["energy"],
            "free_energy": out["energy"],
            "energies": out["energies"],
        }
        if forces:
            self.results["forces"] = out["forces"]


class CommitteeCalculator(_ModelCalculator):
    """ASE calculator of a :class:`~nnprefine.model.Committee`: member 0 drives, all judge.

    ``energy``/``forces`` are member 0's; see the module docstring for the extra keys.
    Every call evaluates every member's energy and forces (the disagreements need both).
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
        m0 = committee[0]
        super().__init__(committee.descriptor, m0.skin_A, m0.r_cut_A, **kwargs)
        self.committee = committee

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        atoms = self._take(atoms)
        res = self.committee.evaluate(atoms, self._cache.get(atoms))
        self.results = {
            "energy": float(res.energies_eV[0]),
            "free_energy": float(res.energies_eV[0]),
            "energies": res.atomic_energies_eV[0],
            "forces": res.forces_eV_per_A[0],
            "member_energies": res.energies_eV,
            "member_forces": res.forces_eV_per_A,
            **res.metrics.as_dict(),
        }
