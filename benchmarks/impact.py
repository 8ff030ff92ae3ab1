"""Impact MD cost: the paper's fixed-step protocol vs adaptive step + early termination.

For N seeds at one energy (default 100 eV) on a Be(0001) slab, per driver — the built-in
SNAP reference (``--driver reference``, the default), a neural-network potential
(``--driver model``) or both on the same seeds — every seed runs twice:

* fixed: 0.2 fs for 120 fs (+120 fs while undecided), with the early-stop test in
  "shadow" mode: it records when and with which outcome it would have stopped, so the
  paired agreement (same seed, same fixed step, with and without early termination)
  comes from the same, deterministic trajectory;
* adaptive + early stop: the adaptive time step (``AdaptiveTimestep()`` defaults) and
  early termination switched on. Its trajectory diverges chaotically from the fixed one,
  so it is compared statistically: yield difference in units of its standard error.

The model: ``--model DIR`` (an nnprefine model or committee directory; a committee runs
its member 0 through ``NNPCalculator``). Without it the benchmark trains a small
paper-architecture model itself — 53 symmetry functions (``paper_set("Be", 7.0)``),
30-30 softplus networks, a ZBL core (``--zbl``, default 1–2 Å, so close collisions stay
physical) — on a few dozen SNAP-labelled frames of the benchmark's own slab (impact
snapshots at the benchmark energy and at half of it, plus thermal frames), a few Kalman
epochs. It measures speed; its accuracy is not the point (the log prints its test RMSE),
but it must keep the slab intact (``unphysical`` counts the runs that did not). It is
stored beside ``--results`` (``runs.model/``, frames in ``runs.frames.extxyz``) and reused.

Reported per driver (keys prefixed ``model_`` / ``reference_``): core-seconds per
trajectory of each protocol, the fraction of core time spent outside the force call, the
paired agreement of outcomes (sputtered count and reflection) with its 95 % Wilson lower
bound, both yields with Y + n_undecided/N as an upper bound beside each, and their
difference in standard errors (and Fisher's exact p, which still means something when the
yields are near zero). The unprefixed keys repeat those of ``driver`` (the model when it
ran). Last line: one JSON object.

Long runs: ``--results runs.jsonl`` appends each finished seed at once (keyed by driver,
energy and seed; a model's records also by its fingerprint) and skips those already there,
so a killed run resumes where it stopped. The prepared slab is stored beside it
(``runs.slab.extxyz``, or ``--slab-file``) and reused. ``--workers 2`` runs seeds on a
local Dask cluster, one core each.

    python benchmarks/impact.py --slab small --trajectories 10
    python benchmarks/impact.py --slab paper --trajectories 100 --results impact100.jsonl
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/impact.py --driver model \
        --slab paper --trajectories 2 --results model.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io import read, write
from scipy.stats import fisher_exact

from nnprefine.impact import ImpactResult, ImpactSettings, run_impact
from nnprefine.md import AdaptiveTimestep
from nnprefine.parallel import make_executor
from nnprefine.reference import SnapReference
from nnprefine.structures import be0001_slab, equilibrate_nvt, relax_slab
from nnprefine.yields import estimate_yield, wilson_interval

SLABS = {"small": ((4, 4, 6), 5.8), "paper": ((7, 7, 10), 7.0)}
FIXED = ImpactSettings(early_stop="shadow")
FAST = ImpactSettings(adaptive=AdaptiveTimestep(), early_stop="on")


def _summary(r: ImpactResult) -> dict[str, Any]:
    return {
        "n_sputtered": r.n_sputtered,
        "reflected": r.reflected,
        "undecided": r.undecided,
        "unphysical": r.unphysical,
        "steps": r.steps,
        "simulated_fs": r.simulated_fs,
        "core_s": r.core_s,
        "force_s": r.force_s,
        "energy_drift_eV": r.energy_drift_eV,
        "shadow": r.shadow,
    }


def paired_seed(slab: Atoms, calc: Any, energy_eV: float, seed: int) -> dict[str, Any]:
    """One seed with the fixed protocol (early stop in shadow) and with adaptive + early stop."""
    fixed = run_impact(slab, calc, energy_eV, seed, FIXED)
    fast = run_impact(slab, calc, energy_eV, seed, FAST)
    return {"seed": seed, "energy_eV": energy_eV, "fixed": _summary(fixed), "fast": _summary(fast)}


def _slab(kind: str, equilibrate_fs: float, seed: int, cache: Path | None) -> Atoms:
    """The relaxed, 300 K equilibrated slab; read from ``cache`` when it exists."""
    if cache is not None and cache.exists():
        slab = read(cache)
        print(f"{len(slab)}-atom slab read from {cache}", flush=True)
        return slab
    calc = SnapReference()
    size, vacuum = SLABS[kind]
    t0 = time.perf_counter()
    slab = be0001_slab(size=size, a_A=2.2395, c_A=3.6043, vacuum_A=vacuum)
    relax_slab(slab, calc, fmax_eV_per_A=5e-3)
    equilibrate_nvt(slab, calc, temperature_K=300.0, duration_fs=equilibrate_fs, seed=seed)
    slab.calc = None
    print(
        f"{len(slab)}-atom slab relaxed and equilibrated ({equilibrate_fs:g} fs) in "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    if cache is not None:
        write(cache, slab)
    return slab


def _agree(run: dict[str, Any]) -> bool:
    f, sh = run["fixed"], run["fixed"]["shadow"]
    if sh.get("stop_time_fs") is None:  # early stop never fired: the same run
        return True
    return (sh["n_sputtered"], sh["reflected"]) == (f["n_sputtered"], f["reflected"])


def _yield(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Yield, its error bar D = 2σ/√N and the upper bound Y + n_undecided/N."""
    est = estimate_yield(0.0, rows)
    return est.yield_, est.error, est.yield_upper


def summarize(runs: list[dict[str, Any]], slab_atoms: int, energy_eV: float) -> dict[str, Any]:
    """The issue's figures from the per-seed records of one driver."""
    fixed = [r["fixed"] for r in runs]
    fast = [r["fast"] for r in runs]
    n = len(runs)

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in rows) / n

    def outside(rows: list[dict[str, Any]]) -> float:
        return 1.0 - sum(r["force_s"] for r in rows) / sum(r["core_s"] for r in rows)

    yf, df, uf = _yield(fixed)
    ya, da, ua = _yield(fast)
    se = math.hypot(df / 2, da / 2)  # D = 2σ/√N, so D/2 is the standard error
    fired = [r for r in fixed if r["shadow"].get("stop_time_fs") is not None]
    n_agree = sum(map(_agree, runs))
    # Near zero yield the normal approximation says nothing; Fisher's exact test on the
    # 2×2 table (trajectories with / without sputtering, fixed vs adaptive) still does.
    events = [sum(r["n_sputtered"] > 0 for r in rows) for rows in (fixed, fast)]
    _, fisher_p = fisher_exact([[events[0], n - events[0]], [events[1], n - events[1]]])
    return {
        "slab_atoms": slab_atoms,
        "energy_eV": energy_eV,
        "trajectories": n,
        "fixed_core_s_per_trajectory": mean(fixed, "core_s"),
        "adaptive_core_s_per_trajectory": mean(fast, "core_s"),
        "speedup": mean(fixed, "core_s") / mean(fast, "core_s"),
        "fixed_steps_mean": mean(fixed, "steps"),
        "adaptive_steps_mean": mean(fast, "steps"),
        "adaptive_simulated_fs_mean": mean(fast, "simulated_fs"),
        "early_stop_time_fs_mean": (
            sum(r["shadow"]["stop_time_fs"] for r in fired) / len(fired) if fired else None
        ),
        "fraction_outside_force_call": outside(fixed),
        "fraction_outside_force_call_adaptive": outside(fast),
        "max_abs_energy_drift_fixed_eV": max(abs(r["energy_drift_eV"]) for r in fixed),
        "max_abs_energy_drift_adaptive_eV": max(abs(r["energy_drift_eV"]) for r in fast),
        "early_stop_paired_agreement": n_agree / n,
        # what N seeds can show: the 95 % Wilson lower bound of the agreement
        "early_stop_agreement_wilson_low": wilson_interval(n_agree, n)[0],
        "early_stop_fired": len(fired),
        "fixed_yield": yf,
        "fixed_yield_error": df,
        "fixed_yield_upper": uf,
        "adaptive_yield": ya,
        "adaptive_yield_error": da,
        "adaptive_yield_upper": ua,
        "yield_difference_sigma": abs(yf - ya) / se if se > 0 else 0.0,
        "yield_difference_fisher_p": float(fisher_p),
        "sputtered_fixed": sum(r["n_sputtered"] for r in fixed),
        "sputtered_adaptive": sum(r["n_sputtered"] for r in fast),
        "reflected_fixed": sum(r["reflected"] for r in fixed),
        "reflected_adaptive": sum(r["reflected"] for r in fast),
        "undecided_fixed": sum(r["undecided"] for r in fixed),
        "undecided_adaptive": sum(r["undecided"] for r in fast),
        "unphysical": sum(r["unphysical"] for r in fixed + fast),
    }


#: the keys the issue asks for per driver (null when that driver did not run)
_PER_DRIVER = ("fixed_core_s_per_trajectory", "adaptive_core_s_per_trajectory")


def combine(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One JSON object: every driver's figures prefixed by its name, and unprefixed the
    figures of the model when it ran (else the reference), named by ``driver``."""
    main_driver = "model" if "model" in summaries else "reference"
    out: dict[str, Any] = {"driver": main_driver, **summaries[main_driver]}
    for driver in DRIVERS:
        for key in _PER_DRIVER:
            out[f"{driver}_{key}"] = None
    for driver, figures in summaries.items():
        out |= {f"{driver}_{k}": v for k, v in figures.items()}
    if len(summaries) == 2:  # the same seeds, fixed step: does the model sputter as SNAP?
        m, r = summaries["model"], summaries["reference"]
        se = math.hypot(m["fixed_yield_error"] / 2, r["fixed_yield_error"] / 2)
        diff = abs(m["fixed_yield"] - r["fixed_yield"])
        out["model_vs_reference_fixed_yield_difference_sigma"] = diff / se if se > 0 else 0.0
    return out


def _line(run: dict[str, Any]) -> str:
    f, a = run["fixed"], run["fast"]
    return (
        f"{run.get('driver', 'reference')} seed {run['seed']}: fixed {f['n_sputtered']} sp, "
        f"refl {int(f['reflected'])}, {f['steps']} steps, {f['core_s']:.1f} core-s, "
        f"outside {1 - f['force_s'] / f['core_s']:.2%}, dE {f['energy_drift_eV']:+.4f} eV, "
        f"shadow stop {f['shadow'].get('stop_time_fs')} fs -> {f['shadow'].get('n_sputtered')}"
        f" | adaptive {a['n_sputtered']} sp, {a['steps']} steps, {a['simulated_fs']:.0f} fs, "
        f"{a['core_s']:.1f} core-s, dE {a['energy_drift_eV']:+.4f} eV"
    )


# ------------------------------------------------------------------------ the model driver

DRIVERS = ("model", "reference")


def train_small_model(
    slab: Atoms,
    directory: Path,
    frames_path: Path,
    energy_eV: float,
    n_frames: int,
    epochs: int,
    zbl_A: tuple[float, float] | None,
    seed: int,
) -> None:
    """Train a paper-architecture model on SNAP frames of ``slab``; save it to ``directory``.

    Frames (written to ``frames_path`` as they come, read back on a rerun): snapshots of
    reference-driven impacts at ``energy_eV`` and ``energy_eV``/2 (0.5 fs, 50 fs, the
    initial-data protocol) and, one run in six, of the slab's own thermal motion; labels
    are the reference's energies (eV) and forces (eV/Å) along the run.
    """
    from nnprefine.config import InitialDataConfig
    from nnprefine.descriptors import paper_set
    from nnprefine.model import NNPotential, ZBLBaseline
    from nnprefine.training import TrainingSettings, rmse, split_frames, train
    from nnprefine.trajectories import reference_trajectory_frames

    frames = read(frames_path, ":") if frames_path.exists() else []
    settings = InitialDataConfig().impact
    run = len(frames) // 6  # six snapshots per run: resume after the runs on file
    t0 = time.perf_counter()
    while len(frames) < n_frames:
        kind = run % 6
        energy = 0.0 if kind == 5 else (energy_eV if kind % 2 == 0 else 0.5 * energy_eV)
        new = reference_trajectory_frames(
            slab, {"calculator": "builtin-snap"}, energy, 50.0, settings, 6, seed * 7919 + run
        )[: n_frames - len(frames)]
        write(frames_path, new, format="extxyz", append=True)
        frames += new
        run += 1
        print(f"  {len(frames)}/{n_frames} training frames", flush=True)
    frames = frames[:n_frames]
    print(f"{len(frames)} frames ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    train_set, test_set = split_frames(frames)
    base = {"baseline": ZBLBaseline(*zbl_A)} if zbl_A is not None else {}
    pot = NNPotential(
        paper_set("Be", r_cut_A=7.0), hidden=(30, 30), activation="softplus", seed=seed, **base
    )
    t0 = time.perf_counter()
    train(pot, train_set, test_set, TrainingSettings(epochs=epochs, seed=seed, quiet=True))
    err = rmse(pot, test_set or train_set)
    print(
        f"model trained in {time.perf_counter() - t0:.0f} s on {len(train_set)} frames: "
        f"test RMSE {np.mean(err['energy_meV_per_atom']):.1f} meV/atom, "
        f"{np.mean(err['force_meV_per_A']):.0f} meV/Å",
        flush=True,
    )
    pot.save(directory)


def model_calculator(directory: Path) -> tuple[Any, str]:
    """``NNPCalculator`` of the model in ``directory`` (member 0 of a committee), and the
    fingerprint of that model."""
    from nnprefine.calculators import NNPCalculator
    from nnprefine.model import Committee, load_model

    model = load_model(directory)
    pot = model[0] if isinstance(model, Committee) else model
    return NNPCalculator(pot), pot.fingerprint()


def _model(args: argparse.Namespace, slab: Atoms) -> tuple[Any, str]:
    if args.model is not None:
        if not args.model.is_dir():
            raise SystemExit(f"--model {args.model}: no such model directory")
        return model_calculator(args.model)
    if args.results is None:
        base = Path(tempfile.mkdtemp(prefix="nnprefine-impact-")) / "runs"
        print(f"no --results: the model is trained into {base.parent} (not reused)")
    else:
        base = args.results.with_suffix("")
    directory = base.with_suffix(".model")
    if not directory.exists():
        print(f"training a small paper-architecture model into {directory}", flush=True)
        zbl = None if args.zbl[0] <= 0 else (args.zbl[0], args.zbl[1])
        train_small_model(
            slab,
            directory,
            base.with_suffix(".frames.extxyz"),
            args.energy,
            args.train_frames,
            args.train_epochs,
            zbl,
            args.seed,
        )
    return model_calculator(directory)


def _records(path: Path | None, energy_eV: float) -> list[dict[str, Any]]:
    """The finished seeds in ``path`` at this energy (records without a driver are
    the reference's: files written before drivers existed)."""
    if path is None or not path.exists():
        return []
    runs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    for r in runs:
        r.setdefault("driver", "reference")
    return [r for r in runs if r["energy_eV"] == energy_eV]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slab", choices=sorted(SLABS), default="small")
    ap.add_argument("--driver", choices=("reference", "model", "both"), default="reference")
    ap.add_argument("--model", type=Path, default=None, help="model or committee directory")
    ap.add_argument("--trajectories", type=int, default=4)
    ap.add_argument("--energy", type=float, default=100.0, help="projectile energy (eV)")
    ap.add_argument("--equilibrate-fs", type=float, default=1000.0)
    ap.add_argument("--seed", type=int, default=0, help="first trajectory seed")
    ap.add_argument("--workers", type=int, default=1, help=">1: a local Dask cluster")
    ap.add_argument("--results", type=Path, default=None, help="JSONL file: resumable run")
    ap.add_argument("--slab-file", type=Path, default=None, help="slab cache (extxyz)")
    ap.add_argument("--train-frames", type=int, default=36, help="frames for the own model")
    ap.add_argument("--train-epochs", type=int, default=4, help="Kalman epochs, own model")
    ap.add_argument(
        "--zbl", type=float, nargs=2, default=(1.0, 2.0), metavar=("INNER_A", "OUTER_A"),
        help="ZBL core of the own model, switched off between these radii (0 0: none)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.trajectories < 1 or args.train_frames < 1 or args.train_epochs < 1:
        raise SystemExit("--trajectories, --train-frames and --train-epochs must be >= 1")

    drivers = DRIVERS if args.driver == "both" else (args.driver,)
    runs = _records(args.results, args.energy)
    if runs:
        print(f"{len(runs)} seeds already in {args.results}", flush=True)
    slab_cache = args.slab_file
    if slab_cache is None and args.results is not None:
        slab_cache = args.results.with_suffix(".slab.extxyz")
    slab = _slab(args.slab, args.equilibrate_fs, args.seed, slab_cache)
    seeds = range(args.seed, args.seed + args.trajectories)
    spec = None if args.workers <= 1 else {"kind": "dask", "n_workers": args.workers}
    summaries = {}
    for driver in drivers:
        if driver == "model":
            calc, fingerprint = _model(args, slab)
        else:
            calc, fingerprint = SnapReference(), None
        mine = [r for r in runs if r["driver"] == driver and r["seed"] in seeds]
        other = [r for r in mine if r.get("model_fingerprint") != fingerprint]
        if other:
            print(f"{len(other)} {driver} seeds on file are of another model: ignored")
        mine = [r for r in mine if r.get("model_fingerprint") == fingerprint]
        done = {r["seed"] for r in mine}
        tasks = ((str(s), {"seed": s}) for s in seeds if s not in done)
        shared = {"slab": slab, "calc": calc, "energy_eV": args.energy}
        with make_executor(spec) as executor:
            for out in executor.run(paired_seed, tasks, shared):
                if not out.ok:
                    print(f"{driver} seed {out.key} failed: {out.error}", flush=True)
                    continue
                record = {"driver": driver, **out.value}
                if fingerprint is not None:
                    record["model_fingerprint"] = fingerprint
                mine.append(record)
                if args.results is not None:
                    with args.results.open("a") as fh:
                        fh.write(json.dumps(record) + "\n")
                print(_line(record), flush=True)
        if not mine:
            raise SystemExit(f"no finished {driver} trajectories to summarize")
        summaries[driver] = summarize(sorted(mine, key=lambda r: r["seed"]), len(slab), args.energy)
        s = summaries[driver]
        print(
            f"{driver}: {s['fixed_core_s_per_trajectory']:.1f} core-s fixed, "
            f"{s['adaptive_core_s_per_trajectory']:.1f} adaptive + early stop "
            f"({s['speedup']:.2f}x), outside the force call {s['fraction_outside_force_call']:.2%}",
            flush=True,
        )
    print(json.dumps(combine(summaries)))


if __name__ == "__main__":
    main()
