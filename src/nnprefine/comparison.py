"""Model-driven against reference-driven impacts on the same seeds: is the yield the same?

The paper's test of a potential is whether its sputtering yield equals the reference
method's (NNP 0.056 ± 0.021 against ab initio MD 0.050 ± 0.019 at 100 eV). A campaign
pair run on the same seeds (:func:`nnprefine.sputter.run_campaign` with one
``seed_label``) starts trajectory i at energy E from the same impact point and direction
with either driver, so the comparison can be made both ways:

* unpaired, as the paper did: the yields with their 2σ/√N bars and Wilson intervals, the
  difference in units of its combined standard error z = ΔY / √(s²_m/N_m + s²_r/N_r)
  (s: the sample standard deviation of the sputtered count per impact, which is the
  Bernoulli σ when no impact sputters twice), and Fisher's exact p for "the impact
  sputtered" against "it did not";
* paired, seed by seed: the fraction of seeds with the same fate (same sputtered count
  and same reflection), which is 1 for a perfect potential only if the dynamics were not
  chaotic; collision cascades are, so expect well below 1 even for equal yields.

Unphysical trajectories are left out of either driver's statistics, as in
:func:`nnprefine.yields.estimate_yield`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from nnprefine.yields import YieldEstimate, estimate_yield

__all__ = [
    "PairedComparison",
    "compare_drivers",
    "compare_one",
    "fate_agreement",
    "flag_table",
    "paired",
    "plot_sputtered_distributions",
    "same_fate",
    "sputtered_atoms",
]


@dataclass(frozen=True)
class PairedComparison:
    """Both drivers at one energy (yields per impact, angles in degrees, energies in eV).

    ``z``: (Y_model − Y_reference) / its combined standard error (NaN when both are 0).
    ``fisher_p``: two-sided Fisher exact p on impacts with and without sputtering.
    ``n_paired``: seeds both drivers ran (physically); ``same_fate``: the fraction of them
    with equal sputtered count and equal reflection (NaN without pairs).
    """

    energy_eV: float
    model: YieldEstimate
    reference: YieldEstimate
    difference: float
    combined_se: float
    z: float
    fisher_p: float
    n_paired: int
    same_fate: float

    @property
    def within(self) -> bool:
        """|ΔY| ≤ 2 combined standard errors (the campaign's target)."""
        return bool(abs(self.difference) <= 2.0 * self.combined_se)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("model", "reference")}
        for name, est in (("model", self.model), ("reference", self.reference)):
            out[name] = {
                "n": est.n,
                "sputtered": est.n_sputtered,
                "yield": est.yield_,
                "error_2sigma": est.error,
                "wilson_low": est.wilson_low,
                "wilson_high": est.wilson_high,
                "reflection": est.reflection,
                "undecided": est.n_undecided,
                "unphysical": est.n_unphysical,
            }
        out["within_2_se"] = self.within
        return out


def _physical(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if not int(r.get("unphysical") or 0)]


def _standard_error(counts: np.ndarray) -> float:
    """Standard error (atoms/ion) of the mean sputtered count; 0 for fewer than 2 impacts."""
    if counts.size < 2:
        return 0.0
    return float(counts.std(ddof=1) / math.sqrt(counts.size))


def same_fate(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two trajectories sputtered as many atoms and both reflected (or neither)."""
    return int(a["n_sputtered"]) == int(b["n_sputtered"]) and bool(a["reflected"]) == bool(
        b["reflected"]
    )


def paired(
    model_rows: Sequence[Mapping[str, Any]], reference_rows: Sequence[Mapping[str, Any]]
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(model row, reference row) of every seed both ran, in the model rows' order."""
    by_seed = {int(x["seed"]): x for x in reference_rows}
    return [(x, by_seed[int(x["seed"])]) for x in model_rows if int(x["seed"]) in by_seed]


def fate_agreement(
    rows: Sequence[Mapping[str, Any]], reference_rows: Sequence[Mapping[str, Any]]
) -> dict[str, int]:
    """Seeds of ``rows`` the reference also ran (``paired``) and how many met its fate."""
    pairs = paired(rows, reference_rows)
    return {"paired": len(pairs), "same_fate": sum(same_fate(a, b) for a, b in pairs)}


def flag_table(
    model_rows: Iterable[Mapping[str, Any]], reference_rows: Iterable[Mapping[str, Any]]
) -> dict[str, dict[str, int]]:
    """Watched model trajectories by committee-watch flag and by whether the reference, on
    the same seed, met the same fate: ``{"flagged" | "not_flagged": {"same" | "differ": n}}``.
    A watch worth its cost flags the differing seeds more often than the others."""
    table = {k: {"same": 0, "differ": 0} for k in ("flagged", "not_flagged")}
    watched = [x for x in _physical(model_rows) if int(x.get("watched") or 0)]
    for a, b in paired(watched, _physical(reference_rows)):
        row = table["flagged" if int(a["flagged"]) else "not_flagged"]
        row["same" if same_fate(a, b) else "differ"] += 1
    return table


def compare_one(
    energy_eV: float,
    model_rows: Sequence[Mapping[str, Any]],
    reference_rows: Sequence[Mapping[str, Any]],
) -> PairedComparison:
    """The comparison at one energy; rows carry ``seed``, ``n_sputtered``, ``reflected``,
    ``undecided`` and ``unphysical`` (as :class:`nnprefine.sputter.ResultsDB` stores them)."""
    m, r = _physical(model_rows), _physical(reference_rows)
    em, er = estimate_yield(energy_eV, m), estimate_yield(energy_eV, r)
    cm = np.array([int(x["n_sputtered"]) for x in m], dtype=float)
    cr = np.array([int(x["n_sputtered"]) for x in r], dtype=float)
    diff = (em.yield_ - er.yield_) if (m and r) else math.nan
    se = math.hypot(_standard_error(cm), _standard_error(cr)) if (m and r) else math.nan
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.nan)
    table = [[em.n_events, em.n - em.n_events], [er.n_events, er.n - er.n_events]]
    fisher = float(stats.fisher_exact(table)[1]) if (m and r) else math.nan
    pairs = paired(m, r)
    same = [same_fate(a, b) for a, b in pairs]
    return PairedComparison(
        energy_eV=float(energy_eV),
        model=em,
        reference=er,
        difference=diff,
        combined_se=se,
        z=z,
        fisher_p=fisher,
        n_paired=len(pairs),
        same_fate=float(np.mean(same)) if same else math.nan,
    )


def compare_drivers(
    model_rows: Iterable[Mapping[str, Any]], reference_rows: Iterable[Mapping[str, Any]]
) -> list[PairedComparison]:
    """One :class:`PairedComparison` per energy both drivers ran, lowest energy first."""
    m: dict[float, list[Mapping[str, Any]]] = {}
    r: dict[float, list[Mapping[str, Any]]] = {}
    for rows, out in ((model_rows, m), (reference_rows, r)):
        for row in rows:
            out.setdefault(float(row["energy_eV"]), []).append(row)
    return [compare_one(e, m[e], r[e]) for e in sorted(set(m) & set(r))]


def sputtered_atoms(rows: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Kinetic energies (eV) and polar angles from the surface normal (deg) of every atom
    the physical trajectories of ``rows`` sputtered (their ``sputtered_json``)."""
    atoms = [a for row in _physical(rows) for a in json.loads(row.get("sputtered_json") or "[]")]
    return (
        np.array([a["kinetic_eV"] for a in atoms], dtype=float),
        np.array([a["polar_deg"] for a in atoms], dtype=float),
    )


def plot_sputtered_distributions(
    path: str | Path,
    model_rows: Sequence[Mapping[str, Any]],
    reference_rows: Sequence[Mapping[str, Any]],
    title: str = "sputtered atoms",
) -> Path:
    """Histograms of the sputtered atoms' kinetic energy and polar angle, both drivers
    overlaid (normalised per impact, so the areas are the yields); a PNG. A driver
    without rows (no reference check) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2), dpi=120)
    series = [("NNP", model_rows, "tab:blue"), ("reference", reference_rows, "tab:orange")]
    series = [s for s in series if s[1]]
    data = [(name, sputtered_atoms(rows), len(_physical(rows)), c) for name, rows, c in series]
    top = max([float(d[1][0].max()) for d in data if d[1][0].size] + [1.0])
    bins_e = np.linspace(0.0, top, 16)
    bins_a = np.linspace(0.0, 90.0, 10)
    for name, (ke, polar), n, colour in data:
        w = np.full(ke.size, 1.0 / max(n, 1))
        label = f"{name}: {ke.size} atoms / {n} impacts"
        axes[0].hist(ke, bins=bins_e, weights=w, histtype="step", color=colour, label=label)
        axes[1].hist(polar, bins=bins_a, weights=w, histtype="step", color=colour, label=label)
    axes[0].set_xlabel("kinetic energy of sputtered atom (eV)")
    axes[1].set_xlabel("polar angle from the surface normal (deg)")
    for ax in axes:
        ax.set_ylabel("atoms per impact and bin")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
