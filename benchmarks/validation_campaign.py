"""The headline test (issue #23): NNP-driven against reference-driven yields, same seeds.

Runs (or continues) the production impacts of ``examples/be0001-validation.toml`` with
either driver on the 490-atom Be(0001) slab and compares the two, energy by energy
(:mod:`nnprefine.comparison`). Everything it needs to continue lives in ``--out``
(default ``docs/validation/``), committed, so the campaign spans sessions and machines:

* ``slab.traj``: the relaxed, 300 K slab both drivers start from (taken once from the
  project of the config, which ``nnprefine init`` prepares with the reference);
* ``model/``: the final committee (copied once from the project's ``models/final``;
  member 0 drives the NNP runs);
* ``campaign.json``: campaign seed, seed label, impact settings and the fingerprints of
  slab and drivers; a later run with anything different is refused;
* ``trajectories.csv``: one row per finished trajectory, appended as each one finishes
  (a kill loses only those in flight); rows already there are never run again.

Trajectory i at energy E has the same seed for both drivers
(:func:`nnprefine.sputter.trajectory_seed` of the campaign seed and seed label), hence
the same impact point and direction. Both classify with the model's range (7 Å).

    python benchmarks/validation_campaign.py --driver reference --hours 2
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/validation_campaign.py \
        --driver model --workers 2 --hours 2
    python benchmarks/validation_campaign.py --report-only

``--hours`` stops starting new batches after that wall time. Batches go round-robin over
the energies, so an interrupted campaign stays balanced. After the runs (or with
``--report-only``) it writes ``comparison.json``, ``yields.png`` and one
``sputtered-<E>eV.png`` per energy; the last line is one JSON object with, per energy,
N, the yields and error bars of both drivers, z, Fisher's p and the same-fate fraction,
and the core-hours spent per driver.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "be0001-validation.toml"
OUT = ROOT / "docs" / "validation"

#: the CSV's columns: the issue's (driver, energy_eV, seed, sputtered, reflected,
#: undecided, core_s, model_fingerprint) and what a yield, a fate table or a histogram needs
COLUMNS = (
    "driver",
    "energy_eV",
    "idx",
    "seed",
    "sputtered",
    "reflected",
    "undecided",
    "unphysical",
    "core_s",
    "wall_s",
    "model_fingerprint",
    "stop_reason",
    "steps",
    "simulated_fs",
    "n_extensions",
    "energy_drift_eV",
    "x_A",
    "y_A",
    "polar_deg",
    "azimuth_deg",
    "sputtered_json",
    "watched",
    "n_watched",
    "n_over_threshold",
    "flagged",
    "max_disagreement",
    "max_energy_disagreement",
    "detail",
    "code_version",
    "created_unix",
)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The CSV's rows with numbers as numbers and the names nnprefine's yields expect."""
    if not path.exists():
        return []
    out = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            r: dict[str, Any] = dict(row)
            for k in (
                "energy_eV", "core_s", "wall_s", "simulated_fs", "energy_drift_eV",
                "max_disagreement", "max_energy_disagreement",
            ):  # fmt: skip
                r[k] = float(r[k]) if r.get(k) not in ("", None) else math.nan
            for k in ("idx", "seed", "sputtered", "reflected", "undecided", "unphysical"):
                r[k] = int(r[k])
            for k in ("watched", "n_watched", "n_over_threshold", "flagged"):
                r[k] = int(r[k]) if r.get(k) not in ("", None) else 0
            r["n_sputtered"] = r["sputtered"]
            out.append(r)
    return out


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one trajectory (a :func:`nnprefine.sputter.impact_task` row) and flush."""
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({**row, "sputtered": row["n_sputtered"]})
        fh.flush()


def _project(config: Path) -> Any:
    from nnprefine.config import load_config
    from nnprefine.stages import Project

    return Project(load_config(config))


def ensure_slab(out: Path, project: Any) -> Any:
    """The committed slab, or the project's reference-prepared one copied in once."""
    from ase.io import read

    path = out / "slab.traj"
    if not path.exists():
        prod = project.config.production[0]
        src = project.slab_path(prod.slab.file_key)
        if not src.exists():
            sys.exit(
                f"no slab yet: {path} is missing and {src} does not exist; run "
                f"'nnprefine init {CONFIG.relative_to(ROOT)}' first (it prepares it)"
            )
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
    return read(path)


def ensure_model(out: Path, project: Any) -> Any:
    """The committed final committee, or the project's copied in once."""
    from nnprefine.model import Committee

    path = out / "model"
    if not path.exists():
        src = project.model_dir("final")
        if not (src / "committee.json").exists():
            sys.exit(
                f"no model yet: {path} is missing and {src} holds no committee; run "
                f"'nnprefine train {CONFIG.relative_to(ROOT)}' first"
            )
        shutil.copytree(
            src, path, ignore=shutil.ignore_patterns("validation.npz", "parity.npz", "*.png")
        )
    return Committee.load(path)


def check_campaign(out: Path, meta: dict[str, Any]) -> None:
    """Record the campaign's identity, or refuse when it differs from the recorded one
    (driver fingerprints are added as each driver first runs)."""
    path = out / "campaign.json"
    if not path.exists():
        path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return
    old = json.loads(path.read_text())
    changed = [
        k for k in sorted(set(old) | set(meta)) if k != "drivers" and old.get(k) != meta.get(k)
    ]
    for name, fp in meta["drivers"].items():
        if old["drivers"].setdefault(name, fp) != fp:
            changed.append(f"drivers.{name}")
    if changed:
        sys.exit(
            f"{path} records another campaign ({', '.join(changed)} differ); continuing would "
            "mix trajectories. Use another --out, or restore the settings"
        )
    path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")


def run(args: argparse.Namespace) -> None:
    from nnprefine.calculators import NNPCalculator
    from nnprefine.parallel import make_executor
    from nnprefine.reference import cached_reference
    from nnprefine.sputter import (
        driver_fingerprint,
        impact_task,
        settings_record,
        slab_fingerprint,
        trajectory_seed,
    )
    from nnprefine.stages.production import watch_settings

    out: Path = args.out
    project = _project(args.config)
    cfg = project.config
    prod = cfg.production[0]
    slab = ensure_slab(out, project)
    committee = ensure_model(out, project) if args.driver == "model" else None
    watch = None
    if args.driver == "model":
        calc = NNPCalculator(committee[0])
        # the committee watch of issue #21 rides along: its flags meet the reference's fates
        ws = watch_settings(project, prod, model_dir=out / "model")
        watch = None if ws is None else (committee, ws)
    else:
        calc = cached_reference(cfg.reference.spec())
    settings = dataclasses.replace(prod.impact, r_cut_A=cfg.descriptor.r_cut_A)
    seed_label = prod.slab.label
    campaign_seed = project.seed("production", seed_label)
    fingerprint = driver_fingerprint(calc)
    check_campaign(
        out,
        {
            "config": str(args.config.resolve().relative_to(ROOT)),
            "campaign_seed": campaign_seed,
            "seed_label": seed_label,
            "settings": settings_record(settings, target=slab.get_chemical_symbols()[0]),
            "slab": slab_fingerprint(slab),
            "drivers": {args.driver: fingerprint},
        },
    )
    csv_path = out / "trajectories.csv"
    done = {(r["driver"], r["energy_eV"], r["idx"]) for r in read_rows(csv_path)}
    energies = [float(e) for e in (args.energies or prod.energies_eV)]
    todo = {
        e: [i for i in range(args.trajectories) if (args.driver, e, i) not in done]
        for e in energies
    }
    left = sum(map(len, todo.values()))
    print(
        f"{args.driver}: {left} trajectories to run at {energies} eV "
        f"(N = {args.trajectories} each; fingerprint {fingerprint})",
        flush=True,
    )
    shared = {
        "slab": slab,
        "calc": calc,
        "settings": settings,
        "surface": f"{seed_label}/{args.driver}",
        "campaign_seed": campaign_seed,
        "driver": args.driver,
        "watch": watch,
    }
    t0 = time.perf_counter()
    spec = "in-process" if args.workers == 1 else {"kind": "dask", "n_workers": args.workers}
    executor = make_executor(spec)
    try:
        finished = 0
        while any(todo.values()):
            if args.hours is not None and time.perf_counter() - t0 > args.hours * 3600:
                print(f"stopping: the {args.hours} h budget is spent", flush=True)
                break
            tasks = []
            for e in energies:
                batch, todo[e] = todo[e][: args.batch], todo[e][args.batch :]
                for i in batch:
                    seed = trajectory_seed(campaign_seed, seed_label, e, i)
                    tasks.append((f"{e!r}|{i}", {"energy_eV": e, "index": i, "seed": seed}))
            for res in executor.run(impact_task, tasks, shared):
                if not res.ok:
                    print(f"  task {res.key} failed: {res.error}", flush=True)
                    continue
                append_row(csv_path, {**res.value, "model_fingerprint": fingerprint})
                finished += 1
                v = res.value
                print(
                    f"  {v['energy_eV']:g} eV #{v['idx']}: sputtered {v['n_sputtered']}, "
                    f"reflected {v['reflected']}, {v['core_s']:.0f} core-s "
                    f"({finished}/{left}, {(time.perf_counter() - t0) / 60:.0f} min)",
                    flush=True,
                )
    finally:
        executor.close()


def report(out: Path) -> dict[str, Any]:
    """comparison.json and the figures from the CSV; returns the figures' summary."""
    from nnprefine.comparison import compare_drivers, flag_table, plot_sputtered_distributions
    from nnprefine.yields import estimate_yield, plot_yields

    rows = read_rows(out / "trajectories.csv")
    by_driver: dict[str, list[dict[str, Any]]] = {"model": [], "reference": []}
    for r in rows:
        by_driver.setdefault(r["driver"], []).append(r)
    comparisons = compare_drivers(by_driver["model"], by_driver["reference"])
    flags = {
        f"{e:g}": flag_table(
            [r for r in by_driver["model"] if r["energy_eV"] == e],
            [r for r in by_driver["reference"] if r["energy_eV"] == e],
        )
        for e in sorted({r["energy_eV"] for r in by_driver["model"]})
    }
    core_h = {d: sum(r["core_s"] for r in rs) / 3600 for d, rs in by_driver.items()}
    summary: dict[str, Any] = {
        "trajectories": {d: len(rs) for d, rs in by_driver.items()},
        "core_hours": {d: round(h, 3) for d, h in core_h.items()},
        "energies": [c.as_dict() for c in comparisons],
        # issue #21: the watch's flags against the fates (does it flag where fates differ?)
        "watch_by_fate": flags,
    }
    (out / "comparison.json").write_text(json.dumps(summary, indent=1) + "\n")
    est = {
        d: [
            estimate_yield(e, [r for r in rs if r["energy_eV"] == e])
            for e in sorted({r["energy_eV"] for r in rs})
        ]
        for d, rs in by_driver.items()
    }
    if est["model"] or est["reference"]:
        plot_yields(
            out / "yields.png",
            est["model"] or est["reference"],
            label="NNP" if est["model"] else "reference (SNAP)",
            more=[("reference (SNAP)", est["reference"], None)] if est["model"] else (),
            title="Be(0001), 490 atoms: NNP against its reference on the same seeds",
        )
    for c in comparisons:
        e = c.energy_eV
        plot_sputtered_distributions(
            out / f"sputtered-{e:g}eV.png",
            [r for r in by_driver["model"] if r["energy_eV"] == e],
            [r for r in by_driver["reference"] if r["energy_eV"] == e],
            title=f"{e:g} eV on Be(0001), same seeds",
        )
    flat: dict[str, Any] = {"core_hours": summary["core_hours"]}
    flat["trajectories"] = summary["trajectories"]
    for d, ests in est.items():
        for x in ests:
            key = f"{d}_{x.energy_eV:g}eV"
            flat[key] = {"n": x.n, "yield": round(x.yield_, 4), "error_2sigma": round(x.error, 4)}
    flat["watch_by_fate"] = flags
    for c in comparisons:
        flat[f"z_{c.energy_eV:g}eV"] = round(c.z, 2)
        flat[f"fisher_p_{c.energy_eV:g}eV"] = round(c.fisher_p, 3)
        flat[f"same_fate_{c.energy_eV:g}eV"] = round(c.same_fate, 3)
    return flat


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--driver", choices=("model", "reference"))
    ap.add_argument("--energies", type=float, nargs="+", help="default: the config's")
    ap.add_argument("--trajectories", type=int, default=200, help="N per energy (default 200)")
    ap.add_argument("--batch", type=int, default=4, help="trajectories per energy per batch")
    ap.add_argument("--workers", type=int, default=1, help="1: in-process; more: local Dask")
    ap.add_argument("--hours", type=float, help="start no new batch after this wall time")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.report_only:
        if args.driver is None:
            ap.error("--driver is needed unless --report-only")
        run(args)
    print(json.dumps(report(args.out)))


if __name__ == "__main__":
    main()
