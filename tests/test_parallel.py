"""Executors: the Dask cluster gives what the in-process executor gives, and survives faults.

Every test uses a real ``distributed.LocalCluster`` of worker processes bound to 127.0.0.1,
and the built-in SNAP reference (LAMMPS) as the work: short NVE runs of rattled Be cells,
seeded, so equal seeds give equal numbers wherever they run.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase import Atoms
from ase.md.verlet import VelocityVerlet
from ase.units import fs
from distributed import Client, LocalCluster

from nnprefine.errors import ConfigError, NnprefineError
from nnprefine.parallel import (
    DaskExecutor,
    ExecutorError,
    InProcessExecutor,
    TaskOutcome,
    make_executor,
)
from nnprefine.reference import SnapReference
from nnprefine.structures import hcp_bulk

# -- the work: seeded MD of a rattled Be cell -------------------------------------------------


def be_cell() -> Atoms:
    """36-atom hcp Be supercell."""
    return hcp_bulk().repeat((3, 3, 2))


def md_task(
    calc: SnapReference,
    cell: Atoms,
    seed: int,
    n_steps: int,
    log: str | None = None,
    fail_seed: int | None = None,
    kill_seed: int | None = None,
) -> dict[str, Any]:
    """Rattle ``cell`` with ``seed``, give it seeded velocities, run ``n_steps`` of 0.5 fs."""
    if log is not None:
        with open(log, "a") as f:
            f.write(f"{seed}\n")
    if seed == fail_seed:
        raise ValueError(f"seed {seed} is a bad seed")
    if seed == kill_seed:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash in compiled code, say
    atoms = cell.copy()
    atoms.rattle(0.05, seed=seed)
    rng = np.random.default_rng(seed)
    atoms.set_velocities(rng.normal(0.0, 0.02, size=(len(atoms), 3)))  # Å/(ASE time)
    atoms.calc = calc
    VelocityVerlet(atoms, timestep=0.5 * fs).run(n_steps)
    return {
        "energy_eV": atoms.get_total_energy(),
        "forces_eV_per_A": atoms.get_forces(),
        "pid": os.getpid(),
    }


def tasks_for(seeds: list[int], n_steps: int, **extra: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(f"seed-{s}", {"seed": s, "n_steps": n_steps, **extra}) for s in seeds]


def shared_objects() -> dict[str, Any]:
    # The calculator travels to the workers pickled: its LAMMPS handle is dropped, and each
    # worker builds its own instance on first use.
    return {"calc": SnapReference(), "cell": be_cell()}


def collect(outcomes: Any) -> dict[str, TaskOutcome]:
    """Outcomes by key, failing if any key comes twice."""
    out: dict[str, TaskOutcome] = {}
    for outcome in outcomes:
        assert outcome.key not in out, f"{outcome.key} yielded twice"
        out[outcome.key] = outcome
    return out


def assert_same_values(a: TaskOutcome, b: TaskOutcome) -> None:
    assert a.ok and b.ok, (a.error, b.error)
    assert a.value["energy_eV"] == pytest.approx(b.value["energy_eV"], rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(
        a.value["forces_eV_per_A"], b.value["forces_eV_per_A"], rtol=1e-10, atol=1e-10
    )


@pytest.fixture(scope="module")
def dask_executor():
    executor = DaskExecutor(n_workers=2, threads_per_worker=1)
    try:
        yield executor
    finally:
        executor.close()


# -- agreement -------------------------------------------------------------------------------


def test_dask_gives_the_in_process_results(dask_executor: DaskExecutor) -> None:
    tasks = tasks_for(list(range(6)), n_steps=10)
    with InProcessExecutor() as local:
        expected = collect(local.run(md_task, tasks, shared=shared_objects()))
    got = collect(dask_executor.run(md_task, tasks, shared=shared_objects()))
    assert set(got) == set(expected) == {key for key, _ in tasks}
    for key in expected:
        assert_same_values(got[key], expected[key])
    # It did run in the worker processes, not here.
    pids = {o.value["pid"] for o in got.values()}
    assert os.getpid() not in pids
    assert pids <= set(dask_executor.client.run(os.getpid).values())


def test_worker_threads_are_limited(dask_executor: DaskExecutor) -> None:
    def probe() -> dict[str, Any]:
        import numba
        import torch

        return {
            "env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")},
            "torch": torch.get_num_threads(),
            "numba": numba.get_num_threads(),
        }

    outcomes = collect(dask_executor.run(lambda: probe(), [("a", {}), ("b", {})]))
    for outcome in outcomes.values():
        assert outcome.ok, outcome.error
        assert outcome.value == {
            "env": {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
            "torch": 1,
            "numba": 1,
        }


# -- failures --------------------------------------------------------------------------------


def test_a_failing_task_is_reported_once_and_not_retried(
    dask_executor: DaskExecutor, tmp_path: Path
) -> None:
    log = tmp_path / "calls.txt"
    tasks = tasks_for([0, 1, 2, 3], n_steps=2, log=str(log), fail_seed=2)
    got = collect(dask_executor.run(md_task, tasks, shared=shared_objects()))
    assert set(got) == {"seed-0", "seed-1", "seed-2", "seed-3"}
    assert got["seed-2"].error == "ValueError: seed 2 is a bad seed"
    assert all(got[k].ok for k in ("seed-0", "seed-1", "seed-3"))
    calls = Counter(log.read_text().split())
    assert calls == {"0": 1, "1": 1, "2": 1, "3": 1}
    # The in-process executor reports the same text.
    local = collect(InProcessExecutor().run(md_task, tasks[2:3], shared=shared_objects()))
    assert local["seed-2"].error == got["seed-2"].error


def test_killing_a_worker_mid_run_still_completes_every_task_once() -> None:
    seeds = list(range(6))
    tasks = tasks_for(seeds, n_steps=20)  # ~0.25 s each
    with DaskExecutor(n_workers=2, threads_per_worker=1) as executor:
        pids = set(executor.client.run(os.getpid).values())
        assert len(pids) == 2
        victim = min(pids)
        got: dict[str, TaskOutcome] = {}
        for outcome in executor.run(md_task, tasks, shared=shared_objects()):
            assert outcome.key not in got, f"{outcome.key} yielded twice"
            got[outcome.key] = outcome
            if len(got) == 1:
                os.kill(victim, signal.SIGKILL)  # the other worker is busy with its own task
        assert set(got) == {key for key, _ in tasks}
        assert all(o.ok for o in got.values()), [o.error for o in got.values()]
        # The nanny started a new worker process in place of the killed one.
        executor.client.wait_for_workers(2, timeout=30)
        new_pids = set(executor.client.run(os.getpid).values())
        assert victim not in new_pids and len(new_pids) == 2
        assert victim not in {o.value["pid"] for o in list(got.values())[1:]}
    with InProcessExecutor() as local:
        expected = collect(local.run(md_task, tasks, shared=shared_objects()))
    for key in expected:
        assert_same_values(got[key], expected[key])


def test_a_task_that_kills_its_worker_is_reported_failed_and_others_finish() -> None:
    # Each death of the bad task also takes a copy of the shared objects; after the second,
    # none is left and they are shipped again to the restarted workers.
    tasks = tasks_for([0, 1, 2, 3], n_steps=2, kill_seed=1)
    with DaskExecutor(n_workers=2, threads_per_worker=1, allowed_failures=1) as executor:
        got = collect(executor.run(md_task, tasks, shared=shared_objects()))
    assert set(got) == {"seed-0", "seed-1", "seed-2", "seed-3"}
    assert not got["seed-1"].ok
    assert "worker process died each of the 2 times" in got["seed-1"].error
    assert all(got[k].ok for k in ("seed-0", "seed-2", "seed-3")), [
        got[k].error for k in ("seed-0", "seed-2", "seed-3")
    ]


def test_closing_the_stream_early_cancels_the_rest(dask_executor: DaskExecutor) -> None:
    stream = dask_executor.run(md_task, tasks_for(list(range(6)), n_steps=5), shared_objects())
    first = next(stream)
    assert first.ok
    stream.close()
    deadline = time.monotonic() + 10
    while dask_executor.client.futures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not dask_executor.client.futures


def test_max_in_flight_reads_tasks_lazily(dask_executor: DaskExecutor) -> None:
    dask_executor.max_in_flight = 2
    handed_out: list[int] = []

    def lazy_tasks():
        for s in range(5):
            handed_out.append(s)
            yield f"seed-{s}", {"seed": s, "n_steps": 1}

    try:
        stream = dask_executor.run(md_task, lazy_tasks(), shared_objects())
        next(stream)
        assert len(handed_out) <= 3
        rest = collect(stream)
    finally:
        dask_executor.max_in_flight = None
    assert len(rest) == 4


# -- an existing scheduler, and the factory ----------------------------------------------------


@pytest.fixture
def external_cluster():
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not the shared default 8787
    )
    try:
        yield cluster
    finally:
        cluster.close()


def test_connecting_to_an_existing_scheduler(external_cluster: LocalCluster) -> None:
    spec = {"kind": "dask", "scheduler_address": external_cluster.scheduler_address}
    with make_executor(spec) as executor:
        assert isinstance(executor, DaskExecutor)
        got = collect(executor.run(md_task, tasks_for([4, 5], n_steps=1), shared_objects()))
        assert all(o.ok for o in got.values())
    # Closing the executor leaves a cluster it did not start running.
    with Client(external_cluster.scheduler_address, timeout=10) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1


def test_an_unreachable_scheduler_is_a_clear_error() -> None:
    with pytest.raises(ExecutorError, match=r"tcp://127\.0\.0\.1:9.*scheduler is running"):
        DaskExecutor(scheduler_address="tcp://127.0.0.1:9", connect_timeout_s=1.0)


def test_make_executor_specs() -> None:
    for spec in (None, "local", "in-process", {"kind": "in-process"}):
        assert isinstance(make_executor(spec), InProcessExecutor)
    executor = InProcessExecutor()
    assert make_executor(executor) is executor
    with pytest.raises(ConfigError, match="did you mean 'dask'"):
        make_executor({"kind": "dusk"})
    with pytest.raises(ConfigError, match="did you mean 'n_workers'"):
        make_executor({"kind": "dask", "n_worker": 2})
    with pytest.raises(ConfigError, match="n_workers must be an integer"):
        make_executor({"kind": "dask", "n_workers": "2"})
    with pytest.raises(ConfigError, match="only apply to kind = 'dask'"):
        make_executor({"kind": "in-process", "n_workers": 2})
    assert issubclass(ExecutorError, NnprefineError)


def test_make_executor_starts_a_local_cluster() -> None:
    with make_executor({"kind": "dask", "n_workers": 1, "threads_per_worker": 1}) as executor:
        assert isinstance(executor, DaskExecutor)
        assert executor.n_workers == 1
        got = collect(executor.run(md_task, tasks_for([7], n_steps=1), shared_objects()))
        assert got["seed-7"].ok
    with pytest.raises(ExecutorError, match="closed"):
        executor.client  # noqa: B018
