"""Scoring a committee against its reference on frames it never saw, and calibrating it.

The validation frames (origin ``validation`` in the frame store) fall into groups:
``impact`` (snapshots of reference-driven impacts on the small slab, the initial-data
protocol with its own seeds), ``hot_slab`` (the small slab at 1000–3000 K), ``production_slab``
(the relaxed production slab) and ``bulk`` (hcp bulk at a few strains).

:func:`score` evaluates every member on every frame and returns per-frame errors of
member 1 (the member that drives MD), the committee's disagreement, the per-group RMSE and
the rank correlation of disagreement with true error. :func:`calibration_scale` fits the
factor α that turns disagreement into an error estimate by maximum likelihood
(α² = ⟨ε²/d²⟩ for Gaussian errors of spread α·d; Musil et al., JCTC 15, 906 (2019), fit
the same scale to committee variances). :func:`verdict` holds the figures against targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from scipy import stats

__all__ = [
    "CALIBRATION_FLOOR",
    "GROUPS",
    "Targets",
    "ValidationScore",
    "calibration_scale",
    "group_of",
    "informative",
    "score",
    "verdict",
]

#: validation groups, in report order
GROUPS = ("impact", "hot_slab", "production_slab", "bulk", "second_surface")


def group_of(atoms: Atoms) -> str:
    """The group of a stored validation frame, from its trajectory name ``validation-<group>-…``."""
    name = str(atoms.info.get("trajectory") or "")
    for g in GROUPS:
        if name.startswith(f"validation-{g}"):
            return g
    return "other"


#: frames whose disagreement is below this fraction of the median carry no information
#: about the scale: forces of a perfect crystal are zero by symmetry, and their "error" and
#: "disagreement" are both rounding noise, whose ratio is arbitrary
CALIBRATION_FLOOR = 1e-3


def informative(disagreement: np.ndarray) -> np.ndarray:
    """Mask (n,) of frames whose disagreement is finite and above :data:`CALIBRATION_FLOOR`
    times the median: the frames that say something about the committee's error."""
    d = np.asarray(disagreement, dtype=float)
    ok = np.isfinite(d) & (d > 0)
    if ok.any():
        ok &= d > CALIBRATION_FLOOR * np.median(d[ok])
    return ok


def calibration_scale(disagreement: np.ndarray, error: np.ndarray) -> float:
    """Maximum-likelihood α for errors ε_i ~ N(0, (α d_i)²): α = sqrt(mean(ε_i² / d_i²)).

    ``disagreement`` d (n,) > 0 and ``error`` ε (n,) in the same unit; frames with a
    non-finite value, or with d at most :data:`CALIBRATION_FLOOR` times the median d, are
    left out. NaN when no frame is left.
    """
    d = np.asarray(disagreement, dtype=float)
    e = np.asarray(error, dtype=float)
    ok = informative(d) & np.isfinite(e)
    if not ok.any():
        return float("nan")
    return float(np.sqrt(np.mean((e[ok] / d[ok]) ** 2)))


def _rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else float("nan")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(x[ok], y[ok]).statistic)


@dataclass
class ValidationScore:
    """Per-frame arrays (n_frames,) and per-group figures of one committee on validation frames.

    ``energy_error`` (eV/atom, member 1 − reference), ``max_force_error`` (eV/Å, the
    largest |ΔF| component of member 1), ``energy_disagreement`` (eV/atom) and
    ``force_disagreement`` (eV/Å) as :func:`nnprefine.model.disagreement` defines them,
    ``groups``; ``force_errors`` holds every force component error (eV/Å) per group.
    """

    groups: np.ndarray
    n_atoms: np.ndarray
    energy_error: np.ndarray
    max_force_error: np.ndarray
    energy_disagreement: np.ndarray
    force_disagreement: np.ndarray
    force_errors: dict[str, np.ndarray] = field(default_factory=dict)

    def rmse(self, group: str | None = None) -> dict[str, float]:
        """Energy RMSE (meV/atom) and force-component RMSE (meV/Å) of a group (None: all)."""
        mask = np.ones(len(self.groups), bool) if group is None else self.groups == group
        forces = (
            np.concatenate(list(self.force_errors.values()))
            if group is None and self.force_errors
            else self.force_errors.get(group, np.zeros(0))
        )
        return {
            "frames": int(mask.sum()),
            "energy_rmse_meV_per_atom": 1000 * _rmse(self.energy_error[mask]),
            "energy_mean_error_meV_per_atom": 1000 * float(np.mean(self.energy_error[mask]))
            if mask.any()
            else float("nan"),
            "force_rmse_meV_per_A": 1000 * _rmse(forces),
        }

    def rank_correlation(self) -> float:
        """Spearman correlation of force disagreement with member 1's max force error, over
        the informative frames (:func:`informative`: not the zero forces of a perfect
        crystal, whose noise would rank lowest on both axes and inflate ρ)."""
        ok = informative(self.force_disagreement)
        return _spearman(self.force_disagreement[ok], self.max_force_error[ok])

    def calibration(self) -> dict[str, float]:
        """α of energy and force disagreement against the true errors (see module docstring)."""
        return {
            "energy": calibration_scale(self.energy_disagreement, np.abs(self.energy_error)),
            "force": calibration_scale(self.force_disagreement, self.max_force_error),
        }

    def summary(self) -> dict[str, Any]:
        """Plain figures for ``summary.json``: overall and per-group RMSE, correlation, α."""
        present = [g for g in (*GROUPS, "other") if (self.groups == g).any()]
        return {
            "all": self.rmse(),
            "groups": {g: self.rmse(g) for g in present},
            "rank_correlation_force": self.rank_correlation(),
            "calibration": self.calibration(),
        }


def score(committee: Any, frames: Sequence[Atoms]) -> ValidationScore:
    """Every member of ``committee`` on every labelled frame; errors are member 1's."""
    groups, n_atoms, de, dmax, e_dis, f_dis = [], [], [], [], [], []
    force_errors: dict[str, list[np.ndarray]] = {}
    for atoms in frames:
        result = committee.evaluate(atoms)
        n = len(atoms)
        g = group_of(atoms)
        df = result.forces_eV_per_A[0] - atoms.get_forces()
        groups.append(g)
        n_atoms.append(n)
        de.append((result.energies_eV[0] - atoms.get_potential_energy()) / n)
        dmax.append(float(np.abs(df).max()))
        e_dis.append(result.metrics.energy_disagreement_eV_per_atom)
        f_dis.append(result.metrics.force_disagreement_eV_per_A)
        force_errors.setdefault(g, []).append(df.ravel())
    return ValidationScore(
        groups=np.array(groups),
        n_atoms=np.array(n_atoms),
        energy_error=np.array(de, dtype=float),
        max_force_error=np.array(dmax, dtype=float),
        energy_disagreement=np.array(e_dis, dtype=float),
        force_disagreement=np.array(f_dis, dtype=float),
        force_errors={g: np.concatenate(v) for g, v in force_errors.items()},
    )


@dataclass(frozen=True)
class Targets:
    """The accuracy a model must reach to be trusted (the project's defaults, #18)."""

    energy_rmse_meV_per_atom: float = 5.0
    force_rmse_meV_per_A: float = 150.0
    bulk_energy_meV_per_atom: float = 5.0
    lattice_percent: float = 0.5
    rank_correlation: float = 0.6


def verdict(
    summary: Mapping[str, Any], lattice: Mapping[str, Any] | None, targets: Targets
) -> dict[str, Any]:
    """Each figure against its target, and whether all are met.

    ``summary``: :meth:`ValidationScore.summary`; ``lattice``: the final model's record
    ``{"model": {a, c, energy_eV_per_atom}, "reference": {...}}`` or None. Returns
    ``{"ok": bool, "checks": [{name, value, target, ok}], "line": one sentence}``.
    """
    checks = [
        (
            "energy RMSE (meV/atom)",
            summary["all"]["energy_rmse_meV_per_atom"],
            targets.energy_rmse_meV_per_atom,
        ),
        (
            "force RMSE (meV/Å)",
            summary["all"]["force_rmse_meV_per_A"],
            targets.force_rmse_meV_per_A,
        ),
    ]
    if lattice is not None:
        m, r = lattice["model"], lattice["reference"]
        checks.append(
            (
                f"bulk {lattice.get('crystal', 'hcp')} energy |NNP − ref| (meV/atom)",
                1000 * abs(m["energy_eV_per_atom"] - r["energy_eV_per_atom"]),
                targets.bulk_energy_meV_per_atom,
            )
        )
        for k in ("a", "c") if lattice.get("crystal", "hcp") == "hcp" else ("a",):
            checks.append(
                (
                    f"lattice {k} |NNP − ref| (%)",
                    100 * abs(m[k] / r[k] - 1),
                    targets.lattice_percent,
                )
            )
    rows = [
        {"name": name, "value": float(v), "target": float(t), "ok": bool(np.isfinite(v) and v <= t)}
        for name, v, t in checks
    ]
    rho = summary["rank_correlation_force"]
    rows.append(
        {
            "name": "rank correlation of disagreement with error",
            "value": float(rho),
            "target": targets.rank_correlation,
            "ok": bool(np.isfinite(rho) and rho >= targets.rank_correlation),
        }
    )
    ok = all(r["ok"] for r in rows)
    missed = [r["name"] for r in rows if not r["ok"]]
    line = (
        "meets the accuracy targets on its validation set"
        if ok
        else f"misses the accuracy targets on its validation set: {', '.join(missed)}"
    )
    return {"ok": ok, "checks": rows, "line": line}
