"""The committee watch: the other members judge every k-th frame of a production trajectory.

Production trajectories are driven by member 0 of the final committee alone, far longer
and on larger slabs than exploration ever went. :class:`CommitteeWatch` is an MD observer
(attached as every observer is, :meth:`nnprefine.md.VelocityVerlet.attach`) that, every
``interval`` steps, runs the other members on the frame the driving member has just
evaluated. It shares the driver's neighbour list and symmetry-function values, so one
check costs the other members' networks and one descriptor force pass per member: the
force differences F_m − F_0 = −Jᵀ(∂E_m/∂G − ∂E_0/∂G) come from one pass on the difference
of the gradients (the short-range baseline, shared by all members, cancels).

A frame is *over threshold* when the calibrated energy or force disagreement (the raw one
times the final committee's calibration α, :mod:`nnprefine.validation`) exceeds the last
refinement threshold pair: the committee would have sent such a frame to the reference
during refinement, so the potential does not know where it is. A trajectory with any such
frame is *flagged* — or, with ``flag_fraction`` f > 0, a trajectory with at least a
fraction f of its checked frames over threshold: a momentary spike at the collision is
then tolerated, a potential lost for a sustained part of the run is not. Up to ``max_frames`` of its over-threshold frames (largest
disagreement first, at least ``min_separation_fs`` apart) are kept for feeding back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from nnprefine.errors import ConfigError
from nnprefine.md import MDState
from nnprefine.model import Committee, disagreement

__all__ = ["CommitteeWatch", "WatchSettings"]


@dataclass(frozen=True)
class WatchSettings:
    """How often the watch looks, what counts as over threshold, what it keeps.

    interval: steps between checks. Thresholds: eV/atom and eV/Å, compared with the
    calibrated disagreement (raw × ``energy_scale`` / ``force_scale``).
    """

    interval: int = 10
    energy_threshold_eV_per_atom: float = 0.002
    force_threshold_eV_per_A: float = 0.8
    energy_scale: float = 1.0
    force_scale: float = 1.0
    max_frames: int = 3
    min_separation_fs: float = 5.0
    #: flagged when at least this fraction of the checks is over threshold (0: any one)
    flag_fraction: float = 0.0

    def __post_init__(self) -> None:
        if int(self.interval) != self.interval or self.interval < 1:
            raise ConfigError(
                f"the watch interval must be a whole number ≥ 1 of steps, got {self.interval}"
            )
        for name in ("energy_threshold_eV_per_atom", "force_threshold_eV_per_A"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"watch {name} must be positive, got {getattr(self, name)}")
        for name in ("energy_scale", "force_scale"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(
                    f"watch {name} must be positive and finite, got {getattr(self, name)}"
                )
        if not 0.0 <= self.flag_fraction <= 1.0:
            raise ConfigError(f"watch flag_fraction must be in [0, 1], got {self.flag_fraction}")
        if self.max_frames < 0 or self.min_separation_fs < 0:
            raise ConfigError("watch max_frames and min_separation_fs must be ≥ 0")


@dataclass
class _Frame:
    time_fs: float
    energy_disagreement: float  # calibrated, eV/atom
    force_disagreement: float  # calibrated, eV/Å
    atoms: Atoms


@dataclass
class CommitteeWatch:
    """Observer: every ``settings.interval`` steps the committee judges the driver's frame.

    ``calc`` is the :class:`~nnprefine.calculators.NNPCalculator` of ``committee[0]`` that
    drives the MD (its last evaluation is the frame the observer is called on). After the
    run: :attr:`max_energy_disagreement` (eV/atom) and :attr:`max_force_disagreement`
    (eV/Å), both calibrated; :attr:`n_checked`, :attr:`n_over`, :attr:`flagged` and
    :attr:`frames` (the kept over-threshold frames as ``Atoms`` with ``info`` keys
    ``time_fs``, ``energy_disagreement_eV_per_atom``, ``force_disagreement_eV_per_A``).
    """

    committee: Committee
    calc: Any
    settings: WatchSettings = field(default_factory=WatchSettings)
    needs_energy = False

    def __post_init__(self) -> None:
        if len(self.committee) < 2:
            raise ConfigError("the committee watch needs a committee of at least 2 members")
        driver = getattr(self.calc, "potential", None)
        if driver is not self.committee[0] and (
            driver is None or driver.fingerprint() != self.committee[0].fingerprint()
        ):  # a copy (shipped to a worker apart from the committee) is as good
            raise ConfigError(
                "the committee watch needs the MD driven by an NNPCalculator of the "
                "committee's member 0 (it reuses that member's descriptor values)"
            )
        self.max_energy_disagreement = 0.0
        self.max_force_disagreement = 0.0
        self.n_checked = 0
        self.n_over = 0
        self._frames: list[_Frame] = []

    @property
    def flagged(self) -> bool:
        return self.n_over > 0 and self.n_over >= self.settings.flag_fraction * self.n_checked

    def judge(self) -> tuple[float, float]:
        """Calibrated (energy eV/atom, force eV/Å) disagreement of the driver's last frame."""
        atoms, values, nbl = self.calc.last_evaluation()
        symbols = np.array(atoms.get_chemical_symbols())
        d = self.committee.descriptor
        e0, g0 = self.calc.potential.atomic_energies_from_values(symbols, values)
        # relative to member 0: pairwise differences and spreads do not change
        energies, forces = [0.0], [np.zeros((len(atoms), 3))]
        for m in self.committee.members[1:]:
            em, gm = m.atomic_energies_from_values(symbols, values)
            energies.append(float((em - e0).sum()))
            forces.append(d.forces(atoms, gm - g0, neighbours=nbl)[0])
        dis = disagreement(np.array(energies), np.array(forces))
        return (
            dis.energy_disagreement_eV_per_atom * self.settings.energy_scale,
            dis.force_disagreement_eV_per_A * self.settings.force_scale,
        )

    def __call__(self, state: MDState) -> None:
        de, df = self.judge()
        if not (np.isfinite(de) and np.isfinite(df)):
            de = df = float("inf")  # a member lost: as far over threshold as it gets
        self.n_checked += 1
        self.max_energy_disagreement = max(self.max_energy_disagreement, de)
        self.max_force_disagreement = max(self.max_force_disagreement, df)
        s = self.settings
        if de > s.energy_threshold_eV_per_atom or df > s.force_threshold_eV_per_A:
            self.n_over += 1
            if s.max_frames:
                self._keep(_Frame(state.time_fs, de, df, self.calc.last_evaluation()[0].copy()))

    def _score(self, f: _Frame) -> float:
        s = self.settings
        return max(
            f.energy_disagreement / s.energy_threshold_eV_per_atom,
            f.force_disagreement / s.force_threshold_eV_per_A,
        )

    def _keep(self, frame: _Frame) -> None:
        """Hold a candidate; the buffer keeps the ``10 × max_frames`` of largest score."""
        frame.atoms.calc = None
        self._frames.append(frame)
        if len(self._frames) > 20 * self.settings.max_frames:
            self._frames.sort(key=self._score, reverse=True)
            del self._frames[10 * self.settings.max_frames :]

    def _selected(self) -> list[_Frame]:
        """Largest disagreement first, each at least ``min_separation_fs`` from those taken."""
        taken: list[_Frame] = []
        for f in sorted(self._frames, key=self._score, reverse=True):
            if len(taken) == self.settings.max_frames:
                break
            if all(abs(f.time_fs - t.time_fs) >= self.settings.min_separation_fs for t in taken):
                taken.append(f)
        return sorted(taken, key=lambda f: f.time_fs)

    @property
    def frames(self) -> list[Atoms]:
        out = []
        for f in self._selected():
            a = f.atoms.copy()
            a.info.update(
                time_fs=f.time_fs,
                energy_disagreement_eV_per_atom=f.energy_disagreement,
                force_disagreement_eV_per_A=f.force_disagreement,
            )
            out.append(a)
        return out

    def record(self) -> dict[str, Any]:
        """The trajectory's watch columns for ``results.db``."""
        return {
            "watched": int(self.n_checked > 0),
            "n_watched": self.n_checked,
            "n_over_threshold": self.n_over,
            "flagged": int(self.flagged),
            "max_disagreement": self.max_force_disagreement,
            "max_energy_disagreement": self.max_energy_disagreement,
        }
