"""Figures, ``report.html`` (static, opens offline) and ``summary.json`` of a project.

Everything here works on plain data gathered by the pipeline; nothing is recomputed.
``summary.json`` is for scripts: its shape is documented in docs/report.md and kept
stable (add keys, never rename them).

Figures (PNG files beside the report, embedded in the HTML as data URIs):

- ``dataset_growth.png``: labelled frames per iteration, by split;
- ``disagreement_iter<k>.png``: energy vs max-force committee disagreement of every
  exploration frame, thresholds and selected frames (paper Fig. 2/3);
- ``parity.png``: NNP vs reference energy and force components, train and test (Fig. 4);
- ``yields.png``: yields with error bars, the Eckstein fit and the paper's points (Fig. 5);
- ``convergence.png``: fraction over threshold and test RMSE per iteration.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnprefine.common import atomic_path, json_default

__all__ = [
    "SUMMARY_VERSION",
    "plot_convergence",
    "plot_dataset_growth",
    "plot_disagreement",
    "plot_parity",
    "write_html",
    "write_summary",
]

SUMMARY_VERSION = 1


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_dataset_growth(iterations: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bar chart of labelled frames per iteration (``train``/``test`` counts per entry)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks = [int(it["iteration"]) for it in iterations]
    train = np.array([it.get("train_frames", 0) for it in iterations])
    test = np.array([it.get("test_frames", 0) for it in iterations])
    ax.bar(ks, train, label="train", color="tab:blue")
    ax.bar(ks, test, bottom=train, label="test", color="tab:orange")
    ax.set_xlabel("refinement iteration (0 = initial data)")
    ax.set_ylabel("labelled frames (cumulative)")
    ax.set_xticks(ks)
    ax.legend()
    return _save(fig, path)


def plot_disagreement(
    energy_eV_per_atom: np.ndarray,
    force_eV_per_A: np.ndarray,
    selected: np.ndarray,
    energy_threshold_eV_per_atom: float,
    force_threshold_eV_per_A: float,
    path: Path,
    title: str = "",
) -> Path:
    """Committee disagreement of every exploration frame (paper Fig. 2/3).

    Arrays (n_frames,): |ΔE| in eV/atom (plotted in meV/atom), max |ΔF| in eV/Å; ``selected``
    is a boolean mask of frames sent to the reference.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    e = np.asarray(energy_eV_per_atom) * 1000.0
    f = np.asarray(force_eV_per_A)
    sel = np.asarray(selected, dtype=bool)
    finite = np.isfinite(e) & np.isfinite(f)
    ax.scatter(f[finite & ~sel], e[finite & ~sel], s=6, alpha=0.5, label="explored", color="0.5")
    ax.scatter(f[finite & sel], e[finite & sel], s=14, label="selected", color="tab:red")
    ax.axhline(energy_threshold_eV_per_atom * 1000.0, color="tab:blue", ls="--", lw=1)
    ax.axvline(force_threshold_eV_per_A, color="tab:blue", ls="--", lw=1, label="thresholds")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("max |F1 − F2| (eV/Å)")
    ax.set_ylabel("|E1 − E2| (meV/atom)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_error_vs_disagreement(
    force_disagreement_eV_per_A: np.ndarray,
    max_force_error_eV_per_A: np.ndarray,
    groups: np.ndarray,
    path: Path,
    rank_correlation: float,
    alpha: float | None = None,
) -> Path:
    """Member 1's true max force error against the committee's force disagreement, per
    validation frame (arrays (n_frames,), eV/Å), coloured by group; the diagonal y = x
    and, when ``alpha`` is given, the calibrated estimate y = α·x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    d = np.asarray(force_disagreement_eV_per_A, dtype=float)
    err = np.asarray(max_force_error_eV_per_A, dtype=float)
    groups = np.asarray(groups)
    for g in dict.fromkeys(groups):
        m = (groups == g) & np.isfinite(d) & np.isfinite(err) & (d > 0) & (err > 0)
        ax.scatter(d[m], err[m], s=10, alpha=0.7, label=str(g))
    positive = np.concatenate([d[d > 0], err[err > 0]])
    if len(positive):
        x = np.array([positive.min(), positive.max()])
        ax.plot(x, x, color="0.4", lw=1, ls="--", label="error = disagreement")
        if alpha is not None and np.isfinite(alpha):
            ax.plot(x, alpha * x, color="tab:red", lw=1, label=f"calibrated, α = {alpha:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("force disagreement max |F1 − F2| (eV/Å)")
    ax.set_ylabel("true max |F1 − F_ref| (eV/Å)")
    ax.set_title(f"validation frames: Spearman ρ = {rank_correlation:.2f}")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_parity(parity: Mapping[str, Mapping[str, np.ndarray]], path: Path) -> Path:
    """NNP vs reference parity of energies (meV/atom) and force components (eV/Å).

    ``parity[split]`` for split in train/test holds arrays ``energy_ref``, ``energy_nnp``
    (eV/atom) and ``force_ref``, ``force_nnp`` (eV/Å, flattened components).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    colors = {"train": "tab:blue", "test": "tab:orange"}
    for split, data in parity.items():
        er, en = np.asarray(data["energy_ref"]), np.asarray(data["energy_nnp"])
        fr, fn = np.asarray(data["force_ref"]), np.asarray(data["force_nnp"])
        if len(er) == 0:
            continue
        rmse_e = 1000 * float(np.sqrt(np.mean((en - er) ** 2)))
        rmse_f = 1000 * float(np.sqrt(np.mean((fn - fr) ** 2))) if len(fr) else float("nan")
        axes[0].scatter(
            er, en, s=6, color=colors.get(split), label=f"{split}: {rmse_e:.2f} meV/atom"
        )
        axes[1].scatter(
            fr, fn, s=2, alpha=0.4, color=colors.get(split), label=f"{split}: {rmse_f:.1f} meV/Å"
        )
    for ax, unit in zip(axes, ("E (eV/atom)", "F component (eV/Å)"), strict=True):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_xlabel(f"reference {unit}")
        ax.set_ylabel(f"NNP {unit}")
        ax.legend(fontsize=8, title="RMSE")
    return _save(fig, path)


def plot_convergence(iterations: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Fraction of exploration frames over threshold and test RMSE per iteration."""
    plt = _pyplot()
    rows = [it for it in iterations if it.get("frames_explored")]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if rows:
        ks = [it["iteration"] for it in rows]
        ax.plot(
            ks,
            [it["fraction_over_threshold"] for it in rows],
            "o-",
            label="fraction over threshold",
        )
        ax.set_xticks(ks)
        ax2 = ax.twinx()
        ax2.plot(
            ks,
            [it.get("test_rmse_force_mev_per_A") or np.nan for it in rows],
            "s--",
            color="tab:green",
            label="test force RMSE",
        )
        ax2.set_ylabel("test force RMSE (meV/Å)", color="tab:green")
    ax.set_xlabel("refinement iteration")
    ax.set_ylabel("fraction over threshold")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def write_summary(summary: Mapping[str, Any], path: Path) -> Path:
    """Write ``summary.json`` atomically (write a temporary file, then rename)."""
    data = {"summary_version": SUMMARY_VERSION, **summary}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=json_default, allow_nan=True))
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            v = row.get(key, "")
            if v is None:
                v = "–"
            elif isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


_CSS = """
body { font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; }
img { max-width: 100%; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; }
.verdict-ok { color: #1a7f37; font-weight: bold; }
.verdict-missed { color: #c62828; font-weight: bold; }
"""


def _transfer_html(transfer: Mapping[str, Any]) -> str:
    """The paper's NNP5 → NNP6 section: both models' validation per group, exploration,
    and their yields on the same seeds of each surface."""
    first, second = transfer["first_surface_model"], transfer["second_surface"]
    parts = [
        f"<h3>Transferability: the first-surface model '{first}' and the final model "
        f"(the paper's NNP5 → NNP6, second surface {html.escape(second)})</h3>"
        f"<p class='note'>'{first}' was trained on the first surface's frames only, before "
        "any exploration of the second surface; the final model also saw the frames "
        "selected there. The second_surface validation group is frames neither was trained "
        "on.</p>"
    ]
    v = transfer["validation"]
    groups = [g for g in (v.get("final") or v.get("first_surface_model") or {})]
    rows = []
    for g in groups:
        a = (v.get("first_surface_model") or {}).get(g, {})
        b = (v.get("final") or {}).get(g, {})
        rows.append(
            {
                "group": g,
                "e": f"{a.get('energy_rmse_meV_per_atom', math.nan):.2f} → "
                f"{b.get('energy_rmse_meV_per_atom', math.nan):.2f}",
                "f": f"{a.get('force_rmse_meV_per_A', math.nan):.0f} → "
                f"{b.get('force_rmse_meV_per_A', math.nan):.0f}",
            }
        )
    cols = [("group", "validation group"), ("e", "E RMSE (meV/atom)"), ("f", "F RMSE (meV/Å)")]
    parts.append(_table(rows, cols))
    rows = [{"model": name, **it} for name, it in transfer["exploration"].items()]
    parts.append(
        _table(
            rows,
            [
                ("model", "committee"),
                ("surface", "explored surface"),
                ("fraction_over_threshold", "exploration frames over threshold"),
            ],
        )
    )
    rows = []
    for y in transfer["yields"]:
        a, b = y["first_surface_model"], y["final_model"]
        row = {
            "surface": y["surface"],
            "energy_eV": y["energy_eV"],
            "first": f"{a['yield']:.3f} ± {a['error_2sigma']:.3f}",
            "final": f"{b['yield']:.3f} ± {b['error_2sigma']:.3f}",
            "n": y["n_paired"],
            "z": y["z"],
            "fisher_p": y["fisher_p"],
            "same_fate": y["same_fate"],
            "flagged": f"{_fraction(a['flagged_fraction'])} → {_fraction(b['flagged_fraction'])}",
            "reference": (
                f"{a['same_fate']} / {b['same_fate']} of {a['paired']}" if "paired" in a else "—"
            ),
        }
        rows.append(row)
    cols = [
        ("surface", "surface"),
        ("energy_eV", "E (eV)"),
        ("first", f"yield, {first}"),
        ("final", "yield, final"),
        ("n", "same seeds"),
        ("z", "z"),
        ("fisher_p", "Fisher p"),
        ("same_fate", "same fate"),
        ("flagged", "flagged by the watch"),
        ("reference", "same fate as reference"),
    ]
    parts.append(_table(rows, cols))
    return "\n".join(parts)


def _fraction(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _system_line(system: Mapping[str, Any] | None) -> str:
    """'Be on W sputtering: W target (bcc), Be ions; the model covers Be, W.'"""
    if not system:
        return ""
    return (
        f"<p>{html.escape(system['title'])}: {html.escape(system['target'])} target "
        f"({html.escape(system['crystal'])}), {html.escape(system['projectile'])} ions; the "
        f"model covers {html.escape(', '.join(system['elements']))}.</p>"
    )


def write_html(
    path: Path, summary: Mapping[str, Any], figures: Mapping[str, Path | Sequence[Path]]
) -> Path:
    """Write the static report: tables from ``summary`` and the figures, embedded."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>nnprefine report: {html.escape(str(summary.get('project', '')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>nnprefine report: {html.escape(str(summary.get('project', '')))}</h1>",
        _system_line(summary.get("system")),
        f"<p class='note'>nnprefine {html.escape(str(summary.get('code_version', '')))}, "
        f"reference {html.escape(json.dumps(summary.get('reference', {})))}</p>",
    ]

    def figs(name: str) -> str:
        value = figures.get(name)
        if value is None:
            return "<p class='note'>(no figure: this stage has not run)</p>"
        paths = [value] if isinstance(value, Path) else list(value)
        return "".join(_img(p) for p in paths if Path(p).exists())

    iterations = summary.get("iterations", [])
    parts.append("<h2>Refinement</h2>")
    parts.append(
        _table(
            iterations,
            [
                ("iteration", "iteration"),
                ("frames_explored", "explored"),
                ("frames_selected", "selected"),
                ("frames_labelled", "labelled"),
                ("labels_failed", "failed"),
                ("fraction_over_threshold", "fraction over threshold"),
                ("train_rmse_energy_mev_per_atom", "train E RMSE (meV/atom)"),
                ("test_rmse_energy_mev_per_atom", "test E RMSE (meV/atom)"),
                ("train_rmse_force_mev_per_A", "train F RMSE (meV/Å)"),
                ("test_rmse_force_mev_per_A", "test F RMSE (meV/Å)"),
            ],
        )
    )
    if summary.get("refine_stop_reason"):
        parts.append(f"<p>Stopped because: {html.escape(str(summary['refine_stop_reason']))}</p>")
    parts.append("<h3>Data set growth</h3>" + figs("dataset_growth"))
    parts.append("<h3>Convergence</h3>" + figs("convergence"))
    parts.append(
        "<h3>Committee disagreement per iteration (paper Fig. 2/3)</h3>" + figs("disagreement")
    )
    validation = summary.get("validation")
    parts.append("<h2>Validation of the final model</h2>")
    if validation:
        verdict = validation["verdict"]
        css = "verdict-ok" if verdict["ok"] else "verdict-missed"
        parts.append(f"<p class='{css}'>The final model {html.escape(verdict['line'])}.</p>")
        parts.append(
            _table(
                verdict["checks"],
                [("name", "figure"), ("value", "value"), ("target", "target"), ("ok", "met")],
            )
        )
        rows = [{"group": g, **r} for g, r in validation["groups"].items()]
        rows.append({"group": "all", **validation["all"]})
        parts.append(
            _table(
                rows,
                [
                    ("group", "validation group"),
                    ("frames", "frames"),
                    ("energy_rmse_meV_per_atom", "E RMSE (meV/atom)"),
                    ("energy_mean_error_meV_per_atom", "E mean error (meV/atom)"),
                    ("force_rmse_meV_per_A", "F RMSE (meV/Å)"),
                ],
            )
        )
        parts.append(figs("validation"))
    else:
        parts.append("<p class='note'>(no validation set: run 'nnprefine init')</p>")
    parts.append("<h2>Accuracy of the final model (paper Fig. 4)</h2>" + figs("parity"))
    final = summary.get("final_model", {})
    if final:
        rows = [
            {
                "set": split,
                "frames": final.get(f"{split}_frames"),
                "e": final.get(f"{split}_rmse_energy_mev_per_atom"),
                "f": final.get(f"{split}_rmse_force_mev_per_A"),
            }
            for split in ("train", "test")
        ]
        cols = [("set", "set"), ("frames", "frames"), ("e", "E RMSE (meV/atom)")]
        parts.append(_table(rows, [*cols, ("f", "F RMSE (meV/Å)")]))
    lattice = summary.get("lattice", {})
    if lattice:
        parts.append("<h2>Lattice constants and slab energy (paper Table 1)</h2>")
        rows = [{"driver": k, **v} for k, v in lattice.items() if isinstance(v, Mapping)]
        parts.append(
            _table(
                rows,
                [
                    ("driver", "driver"),
                    ("a", "a (Å)"),
                    ("c", "c (Å)"),
                    ("energy_eV_per_atom", "bulk E (eV/atom)"),
                    ("slab_energy_eV_per_atom", "slab E (eV/atom)"),
                ],
            )
        )
    parts.append("<h2>Sputtering yields (paper Fig. 5, Table 2)</h2>" + figs("yields"))
    if figures.get("sputtered"):
        parts.append("<h3>Sputtered atoms: kinetic energy and polar angle</h3>")
        parts.append(figs("sputtered"))
    parts.append(
        _table(
            summary.get("yields", []),
            [
                ("surface", "surface"),
                ("energy_eV", "E (eV)"),
                ("driver", "driver"),
                ("trajectories", "N"),
                ("sputtered", "sputtered"),
                ("yield", "yield"),
                ("error_2sigma", "2σ/√N"),
                ("yield_upper", "Y + undecided/N"),
                ("undecided", "undecided"),
                ("reflected", "reflected"),
                ("core_seconds_per_trajectory", "core-s / trajectory"),
                ("flagged_fraction", "flagged by the watch"),
                ("yield_unflagged", "yield, unflagged"),
                ("error_2sigma_unflagged", "2σ/√N, unflagged"),
            ],
        )
    )
    comparisons = summary.get("comparisons", [])
    if comparisons:
        parts.append(
            "<h3>NNP against its reference on the same seeds</h3>"
            "<p class='note'>z: yield difference in combined standard errors; Fisher's exact "
            "p on sputtered / not; same fate: seeds with the same sputtered count and "
            "reflection; watch: flagged seeds whose fate differs / flagged, and the same "
            "for unflagged seeds.</p>"
        )
        rows = []
        for c in comparisons:
            w = c.get("watch_by_fate", {})
            f, n = w.get("flagged", {}), w.get("not_flagged", {})
            rows.append(
                {
                    "surface": c["surface"],
                    "energy_eV": c["energy_eV"],
                    "model": f"{c['model']['yield']:.3f} ± {c['model']['error_2sigma']:.3f}",
                    "reference": (
                        f"{c['reference']['yield']:.3f} ± {c['reference']['error_2sigma']:.3f}"
                    ),
                    "n": f"{c['model']['n']} / {c['reference']['n']}",
                    "z": c["z"],
                    "fisher_p": c["fisher_p"],
                    "same_fate": c["same_fate"],
                    "flagged": f"{f.get('differ', 0)} / {f.get('differ', 0) + f.get('same', 0)}",
                    "unflagged": (
                        f"{n.get('differ', 0)} / {n.get('differ', 0) + n.get('same', 0)}"
                    ),
                }
            )
        cols = [
            ("surface", "surface"),
            ("energy_eV", "E (eV)"),
            ("model", "NNP yield"),
            ("reference", "reference yield"),
            ("n", "N (NNP / ref)"),
            ("z", "z"),
            ("fisher_p", "Fisher p"),
            ("same_fate", "same fate"),
            ("flagged", "watch: flagged, fate differs"),
            ("unflagged", "unflagged, fate differs"),
        ]
        parts.append(_table(rows, cols))
    repairs = summary.get("repairs", [])
    if repairs:
        parts.append(
            "<h3>Repair on flags</h3><p class='note'>Flagged trajectories re-run on their own "
            "seeds with a model retrained on their frames (yields of those seeds only; the "
            "campaign's yields above are the final model's). Same fate as reference: seeds "
            "the reference check also ran.</p>"
        )
        rows = []
        for rec in repairs:
            if "stopped" in rec:
                parts.append(f"<p>Round {rec['round']}: {rec['stopped']}.</p>")
                continue
            for e in rec["energies"]:
                ref = (
                    f"{e['same_fate_as_reference_before']} → {e['same_fate_as_reference_after']}"
                    f" of {e['reference_paired']}"
                    if "reference_paired" in e
                    else "—"
                )
                rows.append(
                    {
                        "round": rec["round"],
                        "model": rec["model"],
                        "frames": rec["frames_labelled"],
                        "campaign": e["campaign"],
                        "energy_eV": e["energy_eV"],
                        "flagged": f"{e['flagged_before']} → {e['flagged_after']} of {e['rerun']}",
                        "yield": f"{e['yield_before']:.3f} → {e['yield_after']:.3f}",
                        "reference": ref,
                    }
                )
        cols = [
            ("round", "round"),
            ("model", "model"),
            ("frames", "frames labelled"),
            ("campaign", "campaign"),
            ("energy_eV", "E (eV)"),
            ("flagged", "flagged, before → after"),
            ("yield", "yield of these seeds"),
            ("reference", "same fate as reference"),
        ]
        if rows:
            parts.append(_table(rows, cols))
    transfer = summary.get("transfer")
    if transfer:
        parts.append(_transfer_html(transfer))
    fits = summary.get("eckstein_fits", [])
    if fits:
        parts.append("<h3>Eckstein fits</h3>" + _table(fits, [(k, k) for k in fits[0]]))
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
