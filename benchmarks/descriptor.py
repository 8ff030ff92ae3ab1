"""Benchmark of the descriptor kernels on the 490-atom Be(0001) slab.

Run: ``python benchmarks/descriptor.py [--repeats N]``

Prints µs per atom for values alone and for values + forces (given ∂E/∂G) on 1 and 2
threads, the same for a straightforward numba implementation (one function at a time,
a plain double loop over neighbour pairs, libm exp/cos) on a sample of atoms, and the
throughput of two independent single-thread processes relative to one. The last line is
one JSON object.

Timings are wall-clock minima over the repeats; CPU-time figures (process time, 1
thread) are printed as well because the machine is shared and the load average is
printed with them.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import time

import numba
import numpy as np
from ase.build import hcp0001

from nnprefine.descriptors import (
    Descriptor,
    NarrowAngularG3,
    RadialG2,
    SymmetryFunctionSet,
    paper_set,
)


def slab():
    return hcp0001("Be", size=(7, 7, 10), a=2.24, c=3.60, vacuum=7.0)


def benchmark_set() -> SymmetryFunctionSet:
    """The issue's 53-function set: it is exactly :func:`paper_set` at 7 Å."""
    return paper_set("Be", r_cut_A=7.0)


# --------------------------------------------------------------------- straightforward


@numba.njit(cache=True)
def _fc(r, rc):
    if r >= rc:
        return 0.0, 0.0
    return 0.5 * (math.cos(math.pi * r / rc) + 1.0), -0.5 * math.pi / rc * math.sin(
        math.pi * r / rc
    )


@numba.njit(cache=True)
def straightforward(atoms_idx, pos, cell, offsets, nbj, shift, kind, par, W, G, F):
    """Values and forces one function at a time (kind 2, 3, 9; par = η, ζ, λ, r_c)."""
    for i in atoms_idx:
        lo, hi = offsets[i], offsets[i + 1]
        d = np.empty((hi - lo, 3))
        r = np.empty(hi - lo)
        js = np.empty(hi - lo, np.int64)
        n = 0
        for p in range(lo, hi):
            v = (
                pos[nbj[p]]
                - pos[i]
                + shift[p, 0] * cell[0]
                + shift[p, 1] * cell[1]
                + shift[p, 2] * cell[2]
            )
            rr = math.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
            if rr < par[:, 3].max():
                d[n] = v
                r[n] = rr
                js[n] = nbj[p]
                n += 1
        for f in range(kind.shape[0]):
            eta, zeta, lam, rc = par[f, 0], par[f, 1], par[f, 2], par[f, 3]
            w = W[i, f]
            if kind[f] == 2:
                for a in range(n):
                    fc, dfc = _fc(r[a], rc)
                    e = math.exp(-eta * r[a] ** 2)
                    G[i, f] += e * fc
                    g = w * e * (dfc - 2 * eta * r[a] * fc) / r[a]
                    for x in range(3):
                        F[i, x] += g * d[a, x]
                        F[js[a], x] -= g * d[a, x]
                continue
            norm = 2.0 ** (1 - zeta)
            for a in range(n):
                for b in range(a + 1, n):
                    rj, rk = r[a], r[b]
                    djk = (d[a, 0] - d[b, 0], d[a, 1] - d[b, 1], d[a, 2] - d[b, 2])
                    rjk = math.sqrt(djk[0] ** 2 + djk[1] ** 2 + djk[2] ** 2)
                    c = (d[a, 0] * d[b, 0] + d[a, 1] * d[b, 1] + d[a, 2] * d[b, 2]) / (rj * rk)
                    fj, dfj = _fc(rj, rc)
                    fk, dfk = _fc(rk, rc)
                    s = rj * rj + rk * rk
                    fjk, dfjk = 1.0, 0.0
                    if kind[f] == 3:
                        fjk, dfjk = _fc(rjk, rc)
                        s += rjk * rjk
                    rad = math.exp(-eta * s) * fj * fk * fjk
                    if rad == 0.0:
                        continue
                    base = 1.0 + lam * c
                    ang = base**zeta
                    G[i, f] += norm * ang * rad
                    dang = lam * zeta * base ** (zeta - 1)
                    e = math.exp(-eta * s)
                    drj = e * (dfj - 2 * eta * rj * fj) * fk * fjk
                    drk = e * fj * (dfk - 2 * eta * rk * fk) * fjk
                    drjk = 0.0
                    if kind[f] == 3:
                        drjk = e * fj * fk * (dfjk - 2 * eta * rjk * fjk)
                    wn = w * norm
                    for x in range(3):
                        gj = wn * (
                            dang * rad * (d[b, x] / (rj * rk) - c * d[a, x] / rj**2)
                            + ang * (drj * d[a, x] / rj + drjk * djk[x] / rjk)
                        )
                        gk = wn * (
                            dang * rad * (d[a, x] / (rj * rk) - c * d[b, x] / rk**2)
                            + ang * (drk * d[b, x] / rk - drjk * djk[x] / rjk)
                        )
                        F[js[a], x] -= gj
                        F[js[b], x] -= gk
                        F[i, x] += gj + gk


def _straightforward_us_per_atom(sfset, atoms, nbl, W, sample):
    kind = np.array([f.n2p2_type for f in sfset.functions], np.int64)
    par = np.array(
        [
            (f.eta, getattr(f, "zeta", 1.0), getattr(f, "lambda_", 1.0), f.r_cut)
            for f in sfset.functions
        ]
    )
    args = (atoms.positions, atoms.cell.array, nbl.offsets, nbl.j, nbl.shift, kind, par, W)

    def run(idx):
        G = np.zeros(W.shape)
        F = np.zeros((len(atoms), 3))
        straightforward(idx, *args, G, F)
        return G

    run(sample[:1])
    t = time.perf_counter()
    c = time.process_time()
    G = run(sample)
    return (
        (time.perf_counter() - t) / len(sample) * 1e6,
        (time.process_time() - c) / len(sample) * 1e6,
        G,
    )


# --------------------------------------------------------------------- timing helpers


def _time(fn, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def _loop_worker(barrier, queue, repeats):
    numba.set_num_threads(1)
    atoms = slab()
    d = Descriptor(benchmark_set())
    nbl = d.neighbours(atoms)
    W = np.random.default_rng(0).normal(size=(len(atoms), 53))
    d.values_and_forces(atoms, W, nbl)
    barrier.wait()
    t = time.perf_counter()
    for _ in range(repeats):
        d.values_and_forces(atoms, W, nbl)
    queue.put(time.perf_counter() - t)


def two_process_speedup(repeats: int) -> float:
    """Throughput of two concurrent single-thread processes relative to one alone."""
    ctx = mp.get_context("spawn")
    times = {}
    for n_proc in (1, 2):
        barrier, queue = ctx.Barrier(n_proc), ctx.Queue()
        procs = [
            ctx.Process(target=_loop_worker, args=(barrier, queue, repeats)) for _ in range(n_proc)
        ]
        for p in procs:
            p.start()
        times[n_proc] = max(queue.get() for _ in procs)
        for p in procs:
            p.join()
    return 2.0 * times[1] / times[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-every", type=int, default=10, help="straightforward: every n-th atom")
    args = ap.parse_args()

    atoms = slab()
    sfset = benchmark_set()
    n = len(atoms)
    d = Descriptor(sfset, skin_A=1.0)
    nbl = d.neighbours(atoms)
    W = np.random.default_rng(0).normal(size=(n, sfset.max_functions))
    counts = np.diff(nbl.offsets)
    rvec = (
        atoms.positions[nbl.j]
        + nbl.shift @ atoms.cell.array
        - np.repeat(atoms.positions, counts, axis=0)
    )
    neighbours_per_atom = float(np.sum(np.linalg.norm(rvec, axis=1) < 7.0) / n)
    kinds = [type(f).__name__ for f in sfset.functions]
    print(f"Be(0001) slab: {n} atoms; {sfset.max_functions} functions "
          f"({kinds.count(RadialG2.__name__)} G2, {kinds.count(NarrowAngularG3.__name__)} G3, "
          f"{sfset.max_functions - kinds.count('RadialG2') - kinds.count('NarrowAngularG3')} G9); "
          f"{neighbours_per_atom:.1f} neighbours per atom within 7 Å")  # fmt: skip
    print(f"load average before: {os.getloadavg()}")

    res: dict[str, float] = {"n_atoms": n, "neighbours_per_atom": neighbours_per_atom}
    before = numba.get_num_threads()
    for threads in (1, 2):
        numba.set_num_threads(threads)
        d.values(atoms, nbl)
        d.values_and_forces(atoms, W, nbl)
        for key, fn in (
            ("values", lambda: d.values(atoms, nbl)),
            ("values_forces", lambda: d.values_and_forces(atoms, W, nbl)),
            ("jvp", lambda: d.jvp(atoms, W[:, :3], nbl)),
        ):
            wall, cpu = _time(fn, args.repeats)
            res[f"{key}_us_per_atom_{threads}t"] = wall / n * 1e6
            if threads == 1:
                res[f"{key}_cpu_us_per_atom_1t"] = cpu / n * 1e6
            print(f"{key:>14s}, {threads} thread(s): {wall / n * 1e6:8.1f} µs/atom wall"
                  + (f", {cpu / n * 1e6:8.1f} µs/atom CPU" if threads == 1 else ""))  # fmt: skip
    numba.set_num_threads(1)
    lone = atoms[:1]
    lone.pbc = False
    lone_nbl = d.neighbours(lone)
    t_lone = _time(lambda: d.values_and_forces(lone, W[:1], lone_nbl), 200)
    numba.set_num_threads(before)

    sample = np.arange(0, n, args.sample_every, dtype=np.int64)
    numba.set_num_threads(1)
    sw_wall, sw_cpu, G_sw = _straightforward_us_per_atom(sfset, atoms, nbl, W, sample)
    numba.set_num_threads(before)
    G_fast = d.values(atoms, nbl)
    agree = float(np.max(np.abs(G_sw[sample] - G_fast[sample]) / (1.0 + np.abs(G_fast[sample]))))
    res["straightforward_values_forces_us_per_atom_1t"] = sw_wall
    res["straightforward_values_forces_cpu_us_per_atom_1t"] = sw_cpu
    res["speedup_vs_straightforward_1t"] = sw_wall / res["values_forces_us_per_atom_1t"]
    print(f"straightforward values+forces, 1 thread ({len(sample)} atoms sampled): "
          f"{sw_wall:.0f} µs/atom wall, {sw_cpu:.0f} CPU; speed-up "
          f"{res['speedup_vs_straightforward_1t']:.1f}×; values agree to {agree:.1e}")  # fmt: skip

    res["two_process_speedup"] = two_process_speedup(max(2, args.repeats))
    res["two_thread_speedup"] = (
        res["values_forces_us_per_atom_1t"] / res["values_forces_us_per_atom_2t"]
    )
    res["two_thread_fraction_of_two_process"] = (
        res["two_thread_speedup"] / res["two_process_speedup"]
    )
    res["call_overhead_us"] = t_lone[0] * 1e6
    res["load_average_after"] = os.getloadavg()[0]
    print(f"two independent processes: {res['two_process_speedup']:.2f}× one; two threads: "
          f"{res['two_thread_speedup']:.2f}× one "
          f"({100 * res['two_thread_fraction_of_two_process']:.0f} % of the two-process figure)")  # fmt: skip
    print(f"per-call overhead of values_and_forces (one isolated atom): {t_lone[0] * 1e6:.0f} µs")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
