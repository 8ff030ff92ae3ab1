"""Seconds per DFT label with GPAW (the ``dft`` extra): small cell and 96-atom slab.

Cases: an 8-atom hcp Be cell (2×2×1, rattled 0.05 Å) and the paper's 96-atom Be(0001)
slab (4×4×6, 5.8 Å vacuum each side, rattled 0.05 Å), each with the ``fast`` and the
``paper`` GPAW spec of :func:`nnprefine.dft.gpaw_spec`; one label = energy + forces from
scratch, one thread. A case that runs past ``--max-seconds`` is stopped and reported as
such. Last line: one JSON object.

    python benchmarks/dft_labels.py                     # every case
    python benchmarks/dft_labels.py --cases cell-fast cell-paper slab-fast
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

CASES = ("cell-fast", "cell-paper", "slab-fast", "slab-paper")


def _structure(kind: str):
    from ase.build import bulk

    from nnprefine.structures import be0001_slab

    if kind == "cell":
        atoms = bulk("Be", "hcp", a=2.29, c=3.58).repeat((2, 2, 1))
    else:
        atoms = be0001_slab(size=(4, 4, 6), a_A=2.29, c_A=3.58, vacuum_A=5.8)
        atoms.constraints = []
    atoms.rattle(stdev=0.05, seed=1)
    return atoms


def _label(case: str, queue: mp.Queue) -> None:
    from nnprefine.dft import gpaw_spec
    from nnprefine.reference import make_reference

    kind, quality = case.split("-")
    atoms = _structure(kind)
    spec = gpaw_spec(quality, threads=1)
    atoms.calc = make_reference(spec)
    t0 = time.perf_counter()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    seconds = time.perf_counter() - t0
    queue.put(
        {
            "case": case,
            "atoms": len(atoms),
            "seconds": seconds,
            "energy_eV_per_atom": energy / len(atoms),
            "max_force_eV_per_A": float(abs(forces).max()),
            "kpts": spec["kwargs"]["inner"]["kwargs"]["kpts"],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    figures: dict[str, float | None] = {}
    for case in args.cases:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_label, args=(case, queue))
        t0 = time.perf_counter()
        proc.start()
        proc.join(args.max_seconds)
        if proc.is_alive():
            proc.kill()
            proc.join()
            print(f"{case:>11}: stopped after {time.perf_counter() - t0:.0f} s", flush=True)
            figures[f"{case.replace('-', '_')}_s_per_label"] = None
            continue
        res = queue.get(timeout=10)
        print(
            f"{case:>11}: {res['atoms']:3d} atoms, {res['seconds']:8.1f} s per label, "
            f"E = {res['energy_eV_per_atom']:.4f} eV/atom, max |F| = "
            f"{res['max_force_eV_per_A']:.3f} eV/Å",
            flush=True,
        )
        figures[f"{case.replace('-', '_')}_s_per_label"] = round(res["seconds"], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
