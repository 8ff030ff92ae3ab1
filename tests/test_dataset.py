"""The labelled-frame store and its file formats: exactness, dedup, crash safety, errors."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from _dataset_writer import REFERENCE, make_frame
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Bohr, Hartree
from hypothesis import given, settings
from hypothesis import strategies as st

from nnprefine.dataset import (
    FrameStore,
    content_hash,
    read_extxyz,
    read_n2p2_data,
    write_extxyz,
    write_n2p2_data,
)
from nnprefine.errors import DatasetError, NnprefineError, UnsupportedElementError

WRITER = Path(__file__).with_name("_dataset_writer.py")
OTHER_REFERENCE = {"calculator": "made-up-labels", "kwargs": {"purpose": "other"}}


def _labelled(atoms: Atoms, seed: int, stress: bool = False) -> Atoms:
    rng = np.random.default_rng(seed)
    results = {
        "energy": float(rng.normal(-3.3 * len(atoms), 1.0)),
        "forces": rng.normal(size=(len(atoms), 3)),
    }
    if stress:
        results["stress"] = rng.normal(scale=0.01, size=6)
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _tiny(k: int) -> Atoms:
    """A 2-atom Be frame, cheap enough to store thousands of."""
    rng = np.random.default_rng(10_000 + k)
    atoms = bulk("Be", "hcp", a=2.24, c=3.6)
    atoms.positions += rng.normal(scale=0.05, size=(2, 3))
    return _labelled(atoms, k)


def _slab(k: int) -> Atoms:
    """A non-periodic-in-z Be slab frame with vacuum (pbc = T, T, F), with stress."""
    atoms = bulk("Be", "hcp", a=2.24, c=3.6).repeat((2, 2, 1))
    atoms.center(vacuum=5.0, axis=2)
    atoms.pbc = (True, True, False)
    atoms.positions += np.random.default_rng(k).normal(scale=0.03, size=atoms.positions.shape)
    return _labelled(atoms, k, stress=True)


def _cluster(k: int) -> Atoms:
    """A non-periodic Be cluster with a zero cell."""
    atoms = Atoms("Be4", positions=[[0, 0, 0], [2.2, 0, 0], [0, 2.2, 0], [0, 0, 2.2]])
    atoms.positions += np.random.default_rng(k).normal(scale=0.05, size=(4, 3))
    return _labelled(atoms, k)


def _same_frame(a: Atoms, b: Atoms) -> None:
    """Bit-for-bit equality of structure and labels."""
    assert np.array_equal(a.numbers, b.numbers)
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.cell.array, b.cell.array)
    assert np.array_equal(a.pbc, b.pbc)
    assert a.get_potential_energy() == b.get_potential_energy()
    assert np.array_equal(a.get_forces(), b.get_forces())
    a_stress, b_stress = a.calc.results.get("stress"), b.calc.results.get("stress")
    assert (a_stress is None) == (b_stress is None)
    if a_stress is not None:
        assert np.array_equal(np.asarray(a_stress).ravel()[:6], np.asarray(b_stress).ravel()[:6])


@pytest.fixture
def store(tmp_path):
    with FrameStore(tmp_path / "frames.sqlite", elements=("Be",)) as s:
        yield s


# --- storing and reading back --------------------------------------------------------


def test_frames_come_back_exactly_with_provenance(store):
    frames = [make_frame(0), _slab(1), _cluster(2)]
    selection = {"energy_spread_eV_per_atom": np.float64(0.031), "max_force_spread_eV_per_A": 2.4}
    ids = [
        store.add(
            atoms,
            origin="refine",
            iteration=3,
            reference=REFERENCE,
            reference_version="made-up 1.0",
            selection=selection,
            seed=42,
            trajectory="impact-75eV-017",
            time_fs=12.5,
        )
        for atoms in frames
    ]
    assert ids == [1, 2, 3]
    back = store.frames()
    assert len(back) == 3 and len(store) == 3
    for original, atoms, frame_id in zip(frames, back, ids, strict=True):
        _same_frame(original, atoms)
        assert isinstance(atoms.calc, SinglePointCalculator)
        info = atoms.info
        assert info["frame_id"] == frame_id
        assert info["content_hash"] == content_hash(original, REFERENCE)
        assert info["split"] in ("train", "test")
        assert (info["origin"], info["iteration"], info["seed"]) == ("refine", 3, 42)
        assert info["reference"] == REFERENCE
        assert info["reference_version"] == "made-up 1.0"
        assert info["selection"] == {
            "energy_spread_eV_per_atom": 0.031,
            "max_force_spread_eV_per_A": 2.4,
        }
        assert (info["trajectory"], info["time_fs"]) == ("impact-75eV-017", 12.5)
        assert info["code_version"] and info["created"].endswith("+00:00")
    assert "stress" in back[1].calc.results and "stress" not in back[0].calc.results
    _same_frame(store.get(2), frames[1])
    with pytest.raises(DatasetError, match="no frame with id 99"):
        store.get(99)


def test_labels_from_a_real_reference_calculator(store):
    from nnprefine.reference import BUILTIN_SPEC, SnapReference

    atoms = bulk("Be", "hcp", a=2.24, c=3.6).repeat((2, 2, 1))
    atoms.rattle(0.05, seed=3)
    atoms.calc = SnapReference()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    frame_id = store.add(atoms, origin="initial", reference=BUILTIN_SPEC)
    stored = store.get(frame_id)
    assert stored.get_potential_energy() == energy
    assert np.array_equal(stored.get_forces(), forces)
    assert store.status(atoms, "builtin-snap") == "labelled"  # the spec is normalised


def test_reopened_store_keeps_frames_and_settings(tmp_path):
    path = tmp_path / "frames.sqlite"
    with FrameStore(path, test_fraction=0.25) as store:
        store.add(make_frame(0), origin="initial", reference=REFERENCE)
    with FrameStore(path) as store:
        assert store.test_fraction == 0.25 and store.count() == 1
        _same_frame(store.frames()[0], make_frame(0))
    with pytest.raises(DatasetError, match="test_fraction=0.25"):
        FrameStore(path, test_fraction=0.1)


# --- duplicates and candidate status -------------------------------------------------


def test_duplicates_are_stored_once(store):
    assert store.add(make_frame(0), origin="initial", reference=REFERENCE) == 1
    assert store.add(make_frame(0), origin="refine", iteration=2, reference=REFERENCE) is None
    ids = store.add_many(
        [make_frame(1), make_frame(0), make_frame(1), make_frame(2)],
        origin="initial",
        reference=REFERENCE,
    )
    assert ids == [2, None, None, 3]
    assert store.count() == 3
    # The same structure labelled by another reference is a different calculation.
    assert store.add(make_frame(0), origin="initial", reference=OTHER_REFERENCE) == 4


def test_content_hash_covers_structure_and_reference_only():
    a = make_frame(0)
    key = content_hash(a, REFERENCE)
    relabelled = _labelled(a.copy(), seed=99)
    assert content_hash(relabelled, REFERENCE) == key
    assert content_hash(a, OTHER_REFERENCE) != key
    for change in ("positions", "cell", "pbc", "numbers"):
        b = a.copy()
        if change == "positions":
            b.positions[3, 1] = np.nextafter(b.positions[3, 1], np.inf)
        elif change == "cell":
            b.cell[2, 2] += 1e-12
        elif change == "pbc":
            b.pbc = (True, True, False)
        else:
            b.numbers[0] = 74
        assert content_hash(b, REFERENCE) != key, change
    # -0.0 and 0.0 are the same coordinate.
    c = Atoms("Be", positions=[[0.0, 0.0, 0.0]])
    d = Atoms("Be", positions=[[-0.0, 0.0, -0.0]])
    assert content_hash(c, REFERENCE) == content_hash(d, REFERENCE)


def test_duplicate_with_different_labels_warns(store):
    store.add(make_frame(0), origin="initial", reference=REFERENCE)
    changed = _labelled(make_frame(0), seed=7)
    with pytest.warns(UserWarning, match="different labels"):
        assert store.add(changed, origin="initial", reference=REFERENCE) is None
    assert store.get(1).get_potential_energy() == make_frame(0).get_potential_energy()


def test_quarantine_is_recorded_counted_and_never_a_label(store):
    failed = make_frame(5)
    failed.calc = None  # a failed reference call has no labels
    assert store.status(failed, REFERENCE) is None
    qid = store.quarantine(
        failed, "SCF did not converge in 60 steps", origin="refine", reference=REFERENCE,
        iteration=2, trajectory="t7", time_fs=30.0,
    )  # fmt: skip
    assert qid == 1
    assert store.status(failed, REFERENCE) == "quarantined"
    assert store.status(content_hash(failed, REFERENCE)) == "quarantined"
    assert store.status(failed, OTHER_REFERENCE) is None
    again = store.quarantine(failed, "again", origin="refine", reference=REFERENCE, iteration=3)
    assert again is None
    assert store.count() == 0 and store.frames() == []
    assert store.n_quarantined() == 1 and store.n_quarantined(iteration=2) == 1
    assert store.n_quarantined(iteration=3) == 0
    (record,) = store.quarantined()
    assert record.calc is None
    assert record.info["error"] == "SCF did not converge in 60 steps"
    assert (record.info["iteration"], record.info["trajectory"]) == (2, "t7")
    assert np.array_equal(record.positions, failed.positions)

    # A later successful retry is stored; the failure stays on record.
    store.add(make_frame(5), origin="refine", iteration=3, reference=REFERENCE)
    assert store.status(failed, REFERENCE) == "labelled"
    per_iteration = store.counts_per_iteration()
    assert per_iteration[2] == {"train": 0, "test": 0, "total": 0, "quarantined": 1}
    assert per_iteration[3]["total"] == 1 and per_iteration[3]["quarantined"] == 0
    assert per_iteration[3]["train"] + per_iteration[3]["test"] == 1
    with pytest.raises(DatasetError, match="already labelled"):
        store.quarantine(failed, "late", origin="refine", reference=REFERENCE)


# --- transactions and crashes ----------------------------------------------------------


def test_add_many_stores_all_or_nothing(store):
    store.add(make_frame(0), origin="initial", reference=REFERENCE)
    bad = make_frame(3)
    bad.calc.results["forces"][2, 1] = np.nan
    with pytest.raises(DatasetError, match="frame 2: NaN or inf in the forces"):
        store.add_many(
            [make_frame(1), make_frame(2), bad, make_frame(4)], origin="initial",
            reference=REFERENCE,
        )  # fmt: skip
    assert store.count() == 1


def _verify_store(path: Path, expect_batches_of: int = 1) -> int:
    """Integrity check, then every stored frame k must equal make_frame(k) bit for bit."""
    with closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with FrameStore(path, elements=("Be",)) as store:
        frames = store.frames()
        assert len(frames) % expect_batches_of == 0
        for k, atoms in enumerate(frames):
            _same_frame(atoms, make_frame(k))
            assert atoms.info["frame_id"] == k + 1
        # The store still works after the crash.
        store.add(make_frame(len(frames)), origin="initial", reference=REFERENCE)
        assert store.count() == len(frames) + 1
        return len(frames)


def test_sigkill_during_appends_leaves_every_committed_frame_complete(tmp_path):
    path = tmp_path / "frames.sqlite"
    FrameStore(path, elements=("Be",)).close()
    child = subprocess.Popen([sys.executable, str(WRITER), str(path), "single"])
    try:
        with FrameStore(path) as watcher:
            deadline = time.monotonic() + 30.0
            while watcher.count() < 25 and time.monotonic() < deadline:
                assert child.poll() is None, "the writer died on its own"
                time.sleep(0.02)
        time.sleep(0.013)  # land somewhere inside a later append
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        assert child.wait(timeout=30) == -signal.SIGKILL
    assert _verify_store(path) >= 25


@pytest.mark.parametrize(
    ("statement", "kill_at", "expected"),
    [
        ("INSERT INTO frames", 2 * 20 + 7, 40),  # in the middle of the third batch
        ("COMMIT", 3, 40),  # all 20 inserts of the third batch done, COMMIT not yet run
    ],
)
def test_sigkill_inside_a_batch_transaction_stores_none_of_it(
    tmp_path, statement, kill_at, expected
):
    path = tmp_path / "frames.sqlite"
    args = [sys.executable, str(WRITER), str(path), "batch", "20", str(kill_at), statement]
    assert subprocess.run(args, timeout=30).returncode == -signal.SIGKILL
    assert _verify_store(path, expect_batches_of=20) == expected


def test_a_held_write_lock_gives_a_clear_error_and_stores_nothing(tmp_path):
    path = tmp_path / "frames.sqlite"
    with FrameStore(path, timeout_s=0.1) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writing, for too long
        try:
            with pytest.raises(DatasetError, match="write lock"):
                store.add(make_frame(0), origin="initial", reference=REFERENCE)
            assert store.count() == 0  # reading is never blocked
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.add(make_frame(0), origin="initial", reference=REFERENCE) == 1


# --- the train/test split --------------------------------------------------------------


def test_split_is_stable_reproducible_and_near_the_fraction(tmp_path):
    frames = [_tiny(k) for k in range(2000)]
    with FrameStore(tmp_path / "a.sqlite") as first:
        first.add_many(frames[:1000], origin="initial", reference=REFERENCE)
        before = {a.info["content_hash"]: a.info["split"] for a in first.frames()}
        first.add_many(frames[1000:], origin="refine", iteration=1, reference=REFERENCE)
        after = {a.info["content_hash"]: a.info["split"] for a in first.frames()}
        assert all(after[key] == split for key, split in before.items())
        n_test = first.count(split="test")
        # Binomial(2000, 0.1): mean 200, sd 13.4.
        assert 150 < n_test < 250
        assert first.count(split="train") + n_test == 2000
    # Another store, frames in the opposite order and another reference: same splits.
    with FrameStore(tmp_path / "b.sqlite") as second:
        second.add_many(frames[::-1], origin="import", reference=OTHER_REFERENCE)
        by_position = {a.positions.tobytes(): a.info["split"] for a in second.frames()}
    assert by_position == {f.positions.tobytes(): after[content_hash(f, REFERENCE)] for f in frames}
    with FrameStore(tmp_path / "c.sqlite", test_fraction=0.0) as none_test:
        none_test.add_many(frames[:200], origin="initial", reference=REFERENCE)
        assert none_test.count(split="test") == 0


def test_queries_and_counts(store):
    store.add_many([make_frame(k) for k in range(6)], origin="initial", reference=REFERENCE)
    for k in (1, 2):
        store.add_many(
            [make_frame(10 * k + j) for j in range(3)], origin="refine", iteration=k,
            reference=REFERENCE,
        )  # fmt: skip
    assert store.count() == 12
    assert store.count(iteration=1) == 3 and store.count(origin="initial") == 6
    assert store.count(max_iteration=1) == 9
    assert [a.info["iteration"] for a in store.frames(origin="refine")] == [1, 1, 1, 2, 2, 2]
    assert len(store.frames(iteration=2, origin="initial")) == 0
    n_test = store.count(split="test")
    assert sum(a.info["split"] == "test" for a in store.frames()) == n_test
    assert all(a.info["split"] == "train" for a in store.frames(split="train"))
    assert store.counts() == {0: 6, 1: 3, 2: 3}
    assert store.counts("origin") == {"initial": 6, "refine": 6}
    by_both = store.counts(("origin", "split"))
    assert sum(by_both.values()) == 12 and set(by_both) <= {
        (o, s) for o in ("initial", "refine") for s in ("train", "test")
    }
    per_iteration = store.counts_per_iteration()
    assert [per_iteration[k]["total"] for k in (0, 1, 2)] == [6, 3, 3]
    assert sum(v["test"] for v in per_iteration.values()) == n_test


# --- bad input ---------------------------------------------------------------------------


def _no_calc():
    a = make_frame(0)
    a.calc = None
    return a


def _only_energy():
    a = make_frame(0)
    a.calc = SinglePointCalculator(a, energy=-1.0)
    return a


def _only_forces():
    a = make_frame(0)
    a.calc = SinglePointCalculator(a, forces=np.zeros((len(a), 3)))
    return a


def _with(**results):
    def build():
        a = make_frame(0)
        a.calc.results.update(results)
        return a

    return build


def _moved_after_labelling():
    a = make_frame(0)
    a.positions[0, 0] += 0.1
    return a


def _nan_position():
    a = make_frame(0)
    a.calc = None
    a.positions[1, 2] = np.nan
    a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((len(a), 3)))
    return a


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_no_calc, "no calculator"),
        (_only_energy, "no forces"),
        (_only_forces, "no energy"),
        (_with(energy=float("nan")), "NaN or inf in the energy"),
        (_with(energy=np.array([1.0, 2.0])), "one number"),
        (_with(forces=np.zeros((15, 3))), r"shape \(15, 3\), expected \(16, 3\)"),
        (_with(forces=np.full((16, 3), np.inf)), "NaN or inf in the forces"),
        (_with(stress=np.zeros(4)), r"stress has shape \(4,\)"),
        (_with(stress=np.full(6, np.nan)), "NaN or inf in the stress"),
        (_moved_after_labelling, "stale"),
        (_nan_position, "NaN or inf in positions"),
        (lambda: Atoms(), "no atoms"),
        (lambda: "not atoms", "not an ase.Atoms"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(store, build, message):
    with pytest.raises(DatasetError, match=message):
        store.add(build(), origin="initial", reference=REFERENCE)
    assert store.count() == 0


def test_unknown_elements_are_rejected(store):
    w = _labelled(bulk("W", "bcc", a=3.16), seed=1)
    with pytest.raises(UnsupportedElementError, match="accepts only Be"):
        store.add(w, origin="initial", reference=REFERENCE)
    ghost = make_frame(0)
    ghost.numbers[0] = 0
    with pytest.raises(UnsupportedElementError, match="not chemical elements"):
        store.add(ghost, origin="initial", reference=REFERENCE)
    with pytest.raises(UnsupportedElementError, match="'Bx'"):
        FrameStore(store.path, elements=("Be", "Bx"))
    assert store.count() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"origin": ""}, "origin must be"),
        ({"iteration": -1}, "iteration must be >= 0"),
        ({"iteration": 1.5}, "iteration must be an integer"),
        ({"seed": "7"}, "seed must be an integer"),
        ({"time_fs": float("nan")}, "time_fs must be a finite"),
        ({"time_fs": "12 fs"}, "time_fs must be a finite"),
        ({"selection": {"max_force_spread_eV_per_A": float("nan")}}, "selection must be JSON"),
        ({"selection": [0.1]}, "selection must be a dict"),
        ({"reference": {"calculator": "x", "kwargs": {"f": object()}}}, "reference spec"),
    ],
)
def test_bad_provenance_is_rejected(store, kwargs, message):
    args = {"origin": "initial", "reference": REFERENCE, **kwargs}
    with pytest.raises(DatasetError, match=message):
        store.add(make_frame(0), **args)


def test_bad_store_arguments_and_files(tmp_path):
    with pytest.raises(DatasetError, match=r"test_fraction must be a number in \[0, 1\)"):
        FrameStore(tmp_path / "x.sqlite", test_fraction=1.0)
    with pytest.raises(DatasetError, match="does not exist; create it first"):
        FrameStore(tmp_path / "missing" / "x.sqlite")
    foreign = tmp_path / "foreign.sqlite"
    with closing(sqlite3.connect(foreign)) as conn, conn:
        conn.execute("CREATE TABLE systems (id INTEGER)")
    with pytest.raises(DatasetError, match="not an nnprefine frame store"):
        FrameStore(foreign)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, it is just text" * 100)
    with pytest.raises(DatasetError, match="cannot be opened as a frame store"):
        FrameStore(garbage)
    store = FrameStore(tmp_path / "ok.sqlite")
    with pytest.raises(DatasetError, match="split must be"):
        store.frames(split="holdout")
    with pytest.raises(DatasetError, match="counts"):
        store.counts("energy")
    with pytest.raises(DatasetError, match="not a content hash"):
        store.status("abc")
    store.close()
    with pytest.raises(DatasetError, match="closed"):
        store.count()
    assert issubclass(DatasetError, NnprefineError)


# --- extended XYZ and n2p2 ---------------------------------------------------------------


def test_extxyz_round_trip_is_exact_and_keeps_provenance(store, tmp_path):
    store.add_many([make_frame(0), _slab(1), _cluster(2)], origin="refine", iteration=1,
                   reference=REFERENCE, selection={"e_spread": 0.03}, trajectory="7")  # fmt: skip
    frames = store.frames()
    path = tmp_path / "frames.xyz"
    assert write_extxyz(path, frames) == 3
    back = read_extxyz(path)
    assert len(back) == 3
    for a, b in zip(frames, back, strict=True):
        _same_frame(a, b)
        assert b.info == a.info  # selection/reference dicts, trajectory "7" stays a string
    # Import into a second store: the same calculations, same hashes and splits.
    with FrameStore(tmp_path / "copy.sqlite") as copy:
        copy.add_many(back, origin="import", reference=REFERENCE)
        assert [a.info["content_hash"] for a in copy.frames()] == [
            a.info["content_hash"] for a in frames
        ]
        assert [a.info["split"] for a in copy.frames()] == [a.info["split"] for a in frames]


def test_read_extxyz_maps_foreign_label_names(tmp_path):
    from ase.io import write

    atoms = make_frame(0)
    ref_energy, ref_forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = None
    atoms.info["REF_energy"] = ref_energy
    atoms.arrays["REF_forces"] = ref_forces
    write(tmp_path / "foreign.xyz", atoms, format="extxyz")  # ASE's writer: 8 decimals
    (back,) = read_extxyz(tmp_path / "foreign.xyz", energy_key="REF_energy",
                          forces_key="REF_forces")  # fmt: skip
    assert back.get_potential_energy() == pytest.approx(ref_energy, abs=1e-12)
    assert np.allclose(back.get_forces(), ref_forces, atol=1e-8)
    assert "REF_energy" not in back.info and "REF_forces" not in back.arrays
    with pytest.raises(DatasetError, match="does not exist"):
        read_extxyz(tmp_path / "nothing.xyz")


def test_n2p2_round_trip_is_exact(tmp_path):
    frames = [make_frame(0), _cluster(1), make_frame(2)]
    path = tmp_path / "input.data"
    assert write_n2p2_data(path, frames) == 3
    text = path.read_text()
    assert text.count("begin") == 3 and text.count("lattice") == 6  # none for the cluster
    back = read_n2p2_data(path)
    for a, b in zip(frames, back, strict=True):
        if not a.pbc.any():
            assert not b.pbc.any() and not b.cell.any()  # n2p2 keeps no cell for clusters
            b.cell = a.cell
        _same_frame(a, b)


def test_n2p2_partial_pbc_and_units(tmp_path):
    slab = _slab(0)
    with pytest.raises(DatasetError, match="partial_pbc='periodic'"):
        write_n2p2_data(tmp_path / "x.data", [slab])
    write_n2p2_data(tmp_path / "x.data", [slab], partial_pbc="periodic")
    (back,) = read_n2p2_data(tmp_path / "x.data")
    assert back.pbc.all() and np.array_equal(back.positions, slab.positions)
    # Bohr and Hartree in the file, eV and Å in memory.
    write_n2p2_data(
        tmp_path / "au.data", [make_frame(1)], length_unit_A=Bohr, energy_unit_eV=Hartree
    )
    line = next(x for x in (tmp_path / "au.data").read_text().splitlines() if x.startswith("atom"))
    assert float(line.split()[1]) == pytest.approx(make_frame(1).positions[0, 0] / Bohr)
    (au,) = read_n2p2_data(tmp_path / "au.data", length_unit_A=Bohr, energy_unit_eV=Hartree)
    assert np.allclose(au.positions, make_frame(1).positions, rtol=1e-15, atol=1e-14)
    assert np.allclose(au.get_forces(), make_frame(1).get_forces(), rtol=1e-14, atol=1e-14)
    assert au.get_potential_energy() == pytest.approx(make_frame(1).get_potential_energy())


N2P2_SAMPLE = """\
begin
comment This periodic structure contains 2 Cd and 2 S atoms.
lattice 1.0 0.0 0.0
lattice 0.0 1.0 0.0
lattice 0.0 0.0 1.0
atom 0.1 0.2 0.3 Cd -0.1 0.0 -0.1 -0.3  0.1
atom 0.2 0.4 0.8 Cd -0.1 0.0 -0.2  0.6 -0.6
atom 0.7 0.2 0.7 S   0.1 0.0 -0.8 -0.1  0.1
atom 0.1 0.1 0.4 S   0.1 0.0  1.1 -0.2  0.4
energy 123.456
charge 0.0
end
begin
comment This non-periodic structure contains 1 Cd and 2 S atoms.
atom 0.9 0.1 0.8 Cd -0.1 0.0 -0.3 -0.3  0.1
atom 0.7 0.2 0.2 S   0.1 0.0 -0.8  0.1  0.3
atom 0.6 0.9 0.4 S   0.1 0.0  1.1  0.2 -0.4
energy 1337.00
charge 0.0
end
"""


def test_reads_the_example_of_the_n2p2_documentation(tmp_path):
    path = tmp_path / "input.data"
    path.write_text(N2P2_SAMPLE)
    periodic, cluster = read_n2p2_data(path)
    assert periodic.get_chemical_formula() == "Cd2S2" and periodic.pbc.all()
    assert np.array_equal(periodic.cell.array, np.eye(3))
    assert periodic.get_potential_energy() == 123.456
    assert np.array_equal(periodic.get_forces()[1], [-0.2, 0.6, -0.6])
    assert np.array_equal(periodic.get_initial_charges(), [-0.1, -0.1, 0.1, 0.1])
    assert periodic.info["comment"].startswith("This periodic structure")
    assert not cluster.pbc.any() and cluster.get_potential_energy() == 1337.0
    # Written again, the charges survive too.
    write_n2p2_data(tmp_path / "again.data", [periodic, cluster])
    again = read_n2p2_data(tmp_path / "again.data")
    assert np.array_equal(again[0].get_initial_charges(), periodic.get_initial_charges())
    assert again[1].info["comment"] == cluster.info["comment"]
    # A Be-only store refuses the Cd/S frames with the right error.
    with FrameStore(tmp_path / "be.sqlite", elements=("Be",)) as store:
        with pytest.raises(
            UnsupportedElementError, match="holds S, Cd, but this store accepts only Be"
        ):
            store.add_many([periodic, cluster], origin="import", reference="unknown-dft")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("begin\natom 0 0 0 Be 0 0 0 0 0\nenergy 1.0\n", "no 'end'"),
        ("atom 0 0 0 Be 0 0 0 0 0\n", "outside a frame"),
        ("begin\natom 0 0 0 Be 0 0 0 0\nenergy 1\nend\n", "has 8"),
        ("begin\natom 0 0 zero Be 0 0 0 0 0\nenergy 1\nend\n", ":2: not a number"),
        ("begin\natom 0 0 0 Be 0 0 0 0 0\nend\n", "without an 'energy'"),
        ("begin\nlattice 1 0 0\natom 0 0 0 Be 0 0 0 0 0\nenergy 1\nend\n", "three 'lattice'"),
        ("begin\nenergy 1\nend\n", "without 'atom'"),
        ("begin\nforce 1 2 3\nend\n", "unknown keyword 'force'"),
        ("begin\nbegin\n", "'begin' inside a frame"),
    ],
)
def test_malformed_n2p2_files_say_where_and_what(tmp_path, text, message):
    path = tmp_path / "bad.data"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_n2p2_data(path)


def test_n2p2_file_with_an_unknown_element(tmp_path):
    path = tmp_path / "bad.data"
    path.write_text("begin\natom 0 0 0 Xx 0 0 0 0 0\nenergy 1\nend\n")
    with pytest.raises(UnsupportedElementError, match=":2: 'Xx' is not a chemical symbol"):
        read_n2p2_data(path)


def test_writers_need_labels_where_the_format_does(tmp_path):
    unlabelled = make_frame(0)
    unlabelled.calc = None
    with pytest.raises(DatasetError, match="no calculator"):
        write_n2p2_data(tmp_path / "x.data", [unlabelled])
    write_extxyz(tmp_path / "x.xyz", [unlabelled])  # a candidate structure is fine in extxyz
    (back,) = read_extxyz(tmp_path / "x.xyz")
    assert back.calc is None and np.array_equal(back.positions, unlabelled.positions)
    clash = make_frame(0)
    clash.info["energy"] = 1.0
    with pytest.raises(DatasetError, match="clash"):
        write_extxyz(tmp_path / "y.xyz", [clash])


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=25, deadline=None)
@given(
    positions=st.lists(finite, min_size=9, max_size=9),
    forces=st.lists(finite, min_size=9, max_size=9),
    energy=finite,
)
def test_any_float64_survives_both_formats(tmp_path_factory, positions, forces, energy):
    atoms = Atoms("Be3", positions=np.reshape(positions, (3, 3)), cell=np.eye(3) * 9.1, pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.reshape(forces, (3, 3)))
    folder = tmp_path_factory.mktemp("hypothesis")
    write_n2p2_data(folder / "input.data", [atoms])
    write_extxyz(folder / "frames.xyz", [atoms])
    _same_frame(atoms, read_n2p2_data(folder / "input.data")[0])
    _same_frame(atoms, read_extxyz(folder / "frames.xyz")[0])


def test_validation_frames_form_their_own_split(store):
    store.add_many([_tiny(k) for k in range(40)], origin="initial", reference=REFERENCE)
    ids = store.add_many(
        [_tiny(100 + k) for k in range(30)], origin="validation", reference=REFERENCE
    )
    assert all(i is not None for i in ids)
    trained_on = store.frames(split="train") + store.frames(split="test")
    assert len(trained_on) == 40
    assert all(f.info["origin"] != "validation" for f in trained_on)
    validation = store.frames(split="validation")
    assert len(validation) == 30 and {f.info["split"] for f in validation} == {"validation"}
    assert store.counts_per_iteration()[0]["total"] == 40
    # a query that names no split never returns them
    assert len(store.frames()) == len(store) == store.count(iteration=0) == 40
    assert store.frames(origin="validation") == []


def test_a_schema_1_store_migrates_and_keeps_its_frames(tmp_path):
    path = tmp_path / "old.db"
    with FrameStore(path) as store:
        store.add_many([_tiny(k) for k in range(12)], origin="initial", reference=REFERENCE)
        before = [(f.info["frame_id"], f.info["split"]) for f in store.frames()]
    # turn it back into a schema-1 store: the old CHECK allows only train and test
    with closing(sqlite3.connect(path)) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'frames'").fetchone()[0]
        conn.execute("ALTER TABLE frames RENAME TO f2")
        conn.execute(sql.replace("'train', 'test', 'validation'", "'train', 'test'"))
        conn.execute("INSERT INTO frames SELECT * FROM f2")
        conn.execute("DROP TABLE f2")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.commit()
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE frames SET split = 'validation' WHERE id = 1")
    with FrameStore(path) as store:
        assert [(f.info["frame_id"], f.info["split"]) for f in store.frames()] == before
        store.add(_tiny(99), origin="validation", reference=REFERENCE)
        assert store.count(split="validation") == 1
    with closing(sqlite3.connect(path)) as conn:
        assert dict(conn.execute("SELECT key, value FROM meta"))["schema_version"] == "3"
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"frames_iteration", "frames_origin", "frames_split"} <= indexes


def test_a_changed_byte_in_a_label_blob_is_found_on_read(tmp_path):
    path = tmp_path / "d.db"
    with FrameStore(path) as store:
        store.add_many([_tiny(k) for k in range(3)], origin="initial", reference=REFERENCE)
    with closing(sqlite3.connect(path)) as conn, conn:
        blob = bytearray(conn.execute("SELECT forces FROM frames WHERE id = 2").fetchone()[0])
        blob[8:16] = bytes(8)  # eight bytes of one force component overwritten
        conn.execute("UPDATE frames SET forces = ? WHERE id = 2", (bytes(blob),))
    with FrameStore(path) as store:
        assert store.get(1).info["frame_id"] == 1  # the others still read
        with pytest.raises(DatasetError, match="frame 2 is corrupt"):
            store.frames()


def test_a_schema_2_store_gets_checksums_for_its_rows(tmp_path):
    path = tmp_path / "d.db"
    with FrameStore(path) as store:
        store.add_many([_tiny(k) for k in range(4)], origin="initial", reference=REFERENCE)
        before = [f.get_forces().tolist() for f in store.frames()]
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE frames DROP COLUMN checksum")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with FrameStore(path) as store:
        assert [f.get_forces().tolist() for f in store.frames()] == before
    with closing(sqlite3.connect(path)) as conn, conn:
        assert conn.execute("SELECT COUNT(*) FROM frames WHERE checksum IS NULL").fetchone() == (0,)
        conn.execute("UPDATE frames SET energy_eV = energy_eV + 1e-9 WHERE id = 3")
    with FrameStore(path) as store, pytest.raises(DatasetError, match="frame 3 is corrupt"):
        store.get(3)
