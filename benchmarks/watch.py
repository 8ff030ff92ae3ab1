"""Cost of the committee watch (issue #21) on production impacts, per check interval.

Member 0 of a committee drives impacts on the production slab; the same seeds run once
without a watch and once per ``--intervals`` value k with a :class:`nnprefine.watch.
CommitteeWatch` every k steps. Seeds and intervals are interleaved in one process, and
time is the process's CPU time, so the ratios hold on a shared machine. Reported: core-s
per trajectory for each setting, the overhead t_k / t_off − 1, and the steps per check.

By default the committee and slab of the validation campaign (``docs/validation/model``
and ``docs/validation/slab.traj``: the paper-architecture committee of
``examples/be0001-validation.toml`` and its 490-atom slab). The runs use the production
settings of that config (adaptive step) with early stop off and a fixed ``--duration``, so
every setting integrates the same number of steps.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/watch.py --seeds 3

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase.io import read

from nnprefine.calculators import NNPCalculator
from nnprefine.impact import ImpactSettings, run_impact
from nnprefine.md import AdaptiveTimestep
from nnprefine.model import Committee
from nnprefine.watch import CommitteeWatch, WatchSettings

ROOT = Path(__file__).resolve().parents[1]


def one_run(committee, slab, energy, seed, settings, interval):
    """(core-s, steps, checks) of one impact; ``interval`` None: no watch."""
    calc = NNPCalculator(committee[0])
    observers = ()
    watch = None
    if interval is not None:
        watch = CommitteeWatch(committee, calc, WatchSettings(interval=interval))
        observers = ((watch, interval),)
    t0 = time.process_time()
    res = run_impact(slab, calc, energy, seed, settings, observers=observers)
    return time.process_time() - t0, res.steps, (watch.n_checked if watch else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "docs/validation/model")
    ap.add_argument("--slab", type=Path, default=ROOT / "docs/validation/slab.traj")
    ap.add_argument("--energy", type=float, default=100.0, help="eV")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=40.0, help="fs per impact")
    ap.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 5, 10])
    args = ap.parse_args()

    committee = Committee.load(args.model)
    slab = read(args.slab)
    settings = ImpactSettings(
        duration_fs=args.duration,
        max_extensions=0,
        early_stop="off",
        adaptive=AdaptiveTimestep(),
        r_cut_A=committee[0].r_cut_A,
    )
    settings_list = [None, *args.intervals]
    times: dict[str, list[float]] = {str(k): [] for k in settings_list}
    checks: dict[str, list[int]] = {str(k): [] for k in settings_list}
    one_run(committee, slab, args.energy, 10_000, settings, 5)  # warm caches and JIT
    for seed in range(args.seeds):
        steps = set()
        for k in settings_list:
            t, n, c = one_run(committee, slab, args.energy, seed, settings, k)
            times[str(k)].append(t)
            checks[str(k)].append(c)
            steps.add(n)
            print(f"seed {seed} interval {k}: {t:.1f} core-s, {n} steps, {c} checks", flush=True)
        if len(steps) != 1:
            raise SystemExit(f"seed {seed}: the settings integrated different steps {steps}")
    base = float(np.mean(times["None"]))
    out = {
        "atoms": len(slab),
        "members": len(committee),
        "energy_eV": args.energy,
        "seeds": args.seeds,
        "duration_fs": args.duration,
        "core_s_per_trajectory_no_watch": round(base, 2),
    }
    for k in args.intervals:
        t = float(np.mean(times[str(k)]))
        out[f"core_s_per_trajectory_interval_{k}"] = round(t, 2)
        out[f"overhead_interval_{k}"] = round(t / base - 1.0, 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
