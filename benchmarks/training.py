"""Benchmark: train a committee (paper architecture) on frames of the paper's initial-data protocol.

Frames: the 96-atom Be(0001) slab (4×4×6), relaxed and equilibrated at 300 K with the
built-in SNAP reference; reference-driven impacts at 20, 35, 50, 75 and 100 eV (150 fs for
20–50 eV, 50 fs above, dt 0.5 fs, as the paper) with random snapshots, plus thermal frames
of the slab; labels are the reference's own energies and forces. They are written to
``--data`` (extxyz) as they are made and read back on a rerun. 90/10 split by hash.

Trains the paper's 53-30-30-1 softplus networks (53 symmetry functions, rc 7 Å) with the
Jacobian cache, and measures one member-epoch on the fly (no cache) in the same run for
the ratio. Prints the learning curve to ``--figure`` and, last, one JSON object.

    OMP_NUM_THREADS=1 python benchmarks/training.py --frames 300 --epochs 20 --zbl 1 2
    OMP_NUM_THREADS=1 python benchmarks/training.py --optimizer adam --epochs 200
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

ENERGIES_EV = (20.0, 35.0, 50.0, 75.0, 100.0)


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _slab(seed: int):
    from nnprefine.reference import SnapReference
    from nnprefine.structures import be0001_slab, equilibrate_nvt, relax_slab

    calc = SnapReference()
    slab = be0001_slab(size=(4, 4, 6), a_A=2.24, c_A=3.60, vacuum_A=5.8, fixed_layers=2)
    relax_slab(slab, calc, fmax_eV_per_A=1e-3)
    equilibrate_nvt(
        slab, calc, temperature_K=300.0, duration_fs=1000.0, timestep_fs=1.0, seed=seed,
        thermostat="langevin",
    )  # fmt: skip
    slab.calc = None
    return slab


def make_frames(n_frames: int, seed: int, path: Path, snapshots_per_run: int = 6) -> list:
    """``n_frames`` labelled frames (≈ 90 % impact snapshots, 10 % thermal), resumable."""
    from ase.io import read, write

    from nnprefine.config import InitialDataConfig
    from nnprefine.trajectories import reference_trajectory_frames

    frames = read(path, ":") if path.exists() and path.stat().st_size else []
    if len(frames) >= n_frames:
        return frames[:n_frames]
    slab = _slab(seed)
    spec = {"calculator": "builtin-snap"}
    settings = InitialDataConfig().impact  # the initial-data protocol: 0.5 fs, its sanity bounds
    n_thermal = n_frames // 10
    run = len(frames) // snapshots_per_run
    while len(frames) < n_frames:
        thermal = len(frames) >= n_frames - n_thermal
        energy = 0.0 if thermal else ENERGIES_EV[run % len(ENERGIES_EV)]
        duration = 150.0 if energy <= 50.0 else 50.0
        new = reference_trajectory_frames(
            slab, spec, energy, duration, settings, snapshots_per_run, seed * 100_003 + run
        )
        new = new[: n_frames - len(frames)]
        for f in new:
            f.info["origin"] = "thermal" if thermal else f"impact {energy:g} eV"
        write(path, new, format="extxyz", append=True)
        frames += new
        run += 1
        print(f"  {len(frames)}/{n_frames} frames", flush=True)
    return frames


def _settings(args, **kw):
    from nnprefine.training import TrainingSettings

    base = dict(
        optimizer=args.optimizer,
        epochs=args.epochs,
        seed=args.seed,
        energy_weight=args.kalman_energy_weight
        if args.optimizer == "kalman"
        else args.energy_weight,
        force_weight=1.0,
        batch_size_frames=args.batch,
        learning_rate=args.learning_rate,
        learning_rate_decay_per_epoch=args.decay,
        learning_rate_min=1e-5,
        learning_rate_schedule=args.schedule,
        plateau_patience_epochs=args.plateau_patience,
        energy_weight_late=args.energy_weight_late,
        scaling_mode="scalesigma",
        patience_epochs=args.epochs,
        kalman_force_fraction=args.force_fraction,
        kalman_force_error_threshold=args.force_threshold,
        quiet=True,
    )
    base.update(kw)
    return TrainingSettings(**base)


def _figure(histories, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for k, h in enumerate(histories):
        ep = [r["epoch"] + 1 for r in h.rows]
        for ax, key, unit in zip(
            axes, ("energy_meV_per_atom", "force_meV_per_A"), ("meV/atom", "meV/Å"), strict=True
        ):
            ax.plot(ep, [r[f"train_rmse_{key}"] for r in h.rows], lw=1, ls="--", color=f"C{k}")
            ax.plot(ep, [r[f"test_rmse_{key}"] for r in h.rows], lw=1.5, color=f"C{k}",
                    label=f"member {k} test (dashed: train)")  # fmt: skip
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"RMSE ({unit})")
    axes[0].axhline(2.0, color="grey", lw=0.8, ls=":")
    axes[1].axhline(80.0, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--optimizer", default="kalman", choices=("adam", "kalman"))
    ap.add_argument("--learning-rate", type=float, default=5e-3, help="Adam's initial rate")
    ap.add_argument("--decay", type=float, default=0.98, help="Adam's rate factor per epoch")
    ap.add_argument("--schedule", default="exponential", choices=("exponential", "plateau"))
    ap.add_argument("--plateau-patience", type=int, default=5)
    ap.add_argument("--energy-weight-late", type=float, default=None)
    ap.add_argument("--batch", type=int, default=4, help="frames per Adam step")
    ap.add_argument("--energy-weight", type=float, default=100.0, help="Adam's energy weight")
    ap.add_argument("--force-fraction", type=float, default=0.02, help="Kalman force components")
    ap.add_argument(
        "--kalman-energy-weight", type=float, default=1.0,
        help="Kalman: scale of the energy observations (the filter then trusts them more, as "
        "a smaller noise would); the quick preset uses 100",
    )  # fmt: skip
    ap.add_argument(
        "--force-threshold", type=float, default=0.0,
        help="Kalman: n2p2's force error threshold (0: components at random)",
    )  # fmt: skip
    ap.add_argument(
        "--zbl", type=float, nargs=2, default=None, metavar=("INNER_A", "OUTER_A"),
        help="a ZBL baseline switched off between these radii (the quick preset: 1 2)",
    )  # fmt: skip
    ap.add_argument(
        "--fly-frames", type=int, default=None,
        help="time the on-the-fly epoch on this many training frames (and a tenth as many "
        "test frames) and scale it to the whole set (default: the whole set)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="training-frames.extxyz", help="labelled frames (resumes)")
    ap.add_argument("--figure", default="docs/figures/training_curve.png")
    ap.add_argument("--log-dir", default=None)
    args = ap.parse_args()

    from nnprefine.descriptors import paper_set
    from nnprefine.model import Committee, NNPotential, ZBLBaseline
    from nnprefine.training import rmse, split_frames, train

    t0 = time.perf_counter()
    frames = make_frames(args.frames, args.seed, Path(args.data))
    print(f"{len(frames)} frames ready in {time.perf_counter() - t0:.0f} s", flush=True)
    train_set, test_set = split_frames(frames)
    sfset = paper_set("Be", r_cut_A=7.0)
    base = {} if args.zbl is None else {"baseline": ZBLBaseline(*args.zbl)}

    # one member-epoch on the fly (no cache), for the ratio measured in this run
    fly = NNPotential(sfset, hidden=(30, 30), activation="softplus", seed=args.seed, **base)
    n_fly = min(args.fly_frames or len(train_set), len(train_set))
    fly_test = test_set[: max(1, round(len(test_set) * n_fly / len(train_set)))]
    fly_settings = _settings(args, epochs=1, jacobian_cache_GiB=0.0)
    h_fly = train(fly, train_set[:n_fly], fly_test, fly_settings)
    s_fly = h_fly.rows[0]["seconds"] * len(train_set) / n_fly
    print(f"on the fly: {s_fly:.1f} s per member-epoch", flush=True)

    com = Committee.create(
        sfset,
        n_members=args.members,
        hidden=(30, 30),
        activation="softplus",
        seed=args.seed,
        **base,
    )
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="nnprefine-bench-train-")
    t0 = time.perf_counter()
    histories = train(com, train_set, test_set, _settings(args, quiet=False), log_dir=log_dir)
    t_train = time.perf_counter() - t0
    cache = com[0].metadata["training"]["jacobian_cache"]
    rows = [r for h in histories for r in h.rows]
    s_cached = float(np.mean([r["seconds"] for r in rows]))
    res, res_train = rmse(com, test_set), rmse(com, train_set)
    _figure(
        histories,
        Path(args.figure),
        f"{len(train_set)} train / {len(test_set)} test frames, {args.optimizer}, "
        f"53-30-30-1 softplus",
    )
    out = {
        "frames": len(frames),
        "train_frames": len(train_set),
        "test_frames": len(test_set),
        "optimizer": args.optimizer,
        "schedule": args.schedule if args.optimizer == "adam" else None,
        "energy_weight": args.energy_weight
        if args.optimizer == "adam"
        else args.kalman_energy_weight,
        "energy_weight_late": args.energy_weight_late,
        "members": args.members,
        "zbl_baseline_A": args.zbl,
        "force_fraction": args.force_fraction if args.optimizer == "kalman" else None,
        "force_error_threshold": args.force_threshold if args.optimizer == "kalman" else None,
        "epochs_per_member": [len(h.rows) for h in histories],
        "seconds_per_member_epoch_cached": round(s_cached, 2),
        "seconds_per_member_epoch_on_the_fly": round(s_fly, 2),
        "on_the_fly_timed_on_frames": n_fly,
        "epoch_speedup": round(s_fly / s_cached, 1),
        "test_rmse_energy_mev_per_atom": round(float(np.mean(res["energy_meV_per_atom"])), 3),
        "test_rmse_force_mev_per_A": round(float(np.mean(res["force_meV_per_A"])), 2),
        "train_rmse_energy_mev_per_atom": round(
            float(np.mean(res_train["energy_meV_per_atom"])), 3
        ),
        "train_rmse_force_mev_per_A": round(float(np.mean(res_train["force_meV_per_A"])), 2),
        "test_rmse_per_member": [res["energy_meV_per_atom"], res["force_meV_per_A"]],
        "training_wall_s": round(t_train, 1),
        "cache_mib_per_frame": round(cache["bytes"] / 2**20 / max(1, cache["frames"]), 2),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "figure": args.figure,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
