"""Child process for tests/test_dataset.py: appends labelled frames until it is killed.

    python _dataset_writer.py PATH single
        appends frames 0, 1, 2, ... one transaction each, forever (the test kills it);
    python _dataset_writer.py PATH batch BATCH_SIZE KILL_AT_STATEMENT
        appends batches of BATCH_SIZE frames with add_many (one transaction per batch) and
        SIGKILLs itself just before the KILL_AT_STATEMENT-th SQL statement that starts with
        'INSERT INTO frames' or 'COMMIT' (see the statement filter below).

Frame ``k`` (the k-th frame stored, in id order) is ``make_frame(k)``, so the parent can
check every stored number bit for bit.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

REFERENCE = {"calculator": "made-up-labels", "kwargs": {"purpose": "tests"}}


def make_frame(k: int) -> Atoms:
    """A rattled 16-atom hcp Be cell with made-up labels, all determined by ``k``."""
    rng = np.random.default_rng(k)
    atoms = bulk("Be", "hcp", a=2.24, c=3.6).repeat((2, 2, 2))
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=-3.28 * len(atoms) + rng.normal(scale=0.1),
        forces=rng.normal(scale=0.5, size=(len(atoms), 3)),
    )
    return atoms


def main(argv: list[str]) -> None:
    from nnprefine.dataset import FrameStore

    path, mode = argv[0], argv[1]
    store = FrameStore(path, elements=("Be",))
    if mode == "single":
        for k in itertools.count():
            store.add(make_frame(k), origin="initial", reference=REFERENCE, seed=k)
    elif mode == "batch":
        batch, kill_at = int(argv[2]), int(argv[3])
        prefix = argv[4] if len(argv) > 4 else "INSERT INTO frames"
        seen = 0

        def trace(sql: str) -> None:
            nonlocal seen
            if sql.lstrip().startswith(prefix):
                seen += 1
                if seen == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        store._db.set_trace_callback(trace)  # the test reaches inside on purpose
        for b in itertools.count():
            frames = [make_frame(b * batch + j) for j in range(batch)]
            store.add_many(frames, origin="initial", reference=REFERENCE, iteration=b)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
