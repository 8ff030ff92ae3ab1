"""The refinement loop end to end on a tiny slab with the real built-in reference.

Initial data are labelled once per module and copied for each test; each test then
runs refinement iterations (train, explore, select, label) for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _tiny import TESTS_DIR, position_hash, write_tiny_config

from nnprefine.config import load_config
from nnprefine.model import Committee
from nnprefine.stages import Project, initial_data, prepared_slab, refine, refine_iteration

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def initial(tmp_path_factory) -> Path:
    """A project folder holding lattice, slab and initial data (labelled with SNAP)."""
    folder = tmp_path_factory.mktemp("initial")
    project = Project(load_config(write_tiny_config(folder)))
    rec = initial_data(project)
    assert rec["frames"] == 12  # 6 impact snapshots + 6 thermal frames
    return folder / "out"


def _copy(initial: Path, tmp_path: Path, reference: str = "", **sections: str) -> Project:
    shutil.copytree(initial, tmp_path / "out")
    return Project(load_config(write_tiny_config(tmp_path, reference, **sections)))


def test_two_iterations_add_labelled_frames_with_provenance(initial, tmp_path):
    project = _copy(initial, tmp_path)
    rec = refine(project)
    assert [s["iteration"] for s in rec["iterations"]] == [1, 2]
    assert "max_iterations" in rec["stop_reason"]
    snap = project.config.reference.spec()
    with project.store() as store:
        assert store.count(iteration=0) == 12
        for s in rec["iterations"]:
            k = s["iteration"]
            frames = store.frames(iteration=k)
            assert s["frames_selected"] > 0
            assert len(frames) == s["frames_labelled"] == s["frames_selected"]
            assert s["labels_failed"] == 0 and store.n_quarantined(k) == 0
            # The committee that explored iteration k measured exactly the stored metrics.
            committee = Committee.load(project.model_dir(f"iter-{k:03d}"))
            for frame in frames:
                info = frame.info
                assert info["origin"] == "refine" and info["reference"] == snap
                assert info["trajectory"].startswith("explore-50eV-")
                assert 0.0 <= info["time_fs"] <= 6.0 + 1e-9
                metrics = committee.evaluate(frame).metrics
                sel = info["selection"]
                assert sel["force_disagreement_eV_per_A"] == pytest.approx(
                    metrics.force_disagreement_eV_per_A, rel=1e-8, abs=1e-10
                )
                assert sel["energy_disagreement_eV_per_atom"] == pytest.approx(
                    metrics.energy_disagreement_eV_per_atom, rel=1e-8, abs=1e-12
                )
                # The label is the reference's own energy of those positions.
                atoms = frame.copy()
                atoms.calc = project_reference()
                assert atoms.get_potential_energy() == pytest.approx(
                    frame.get_potential_energy(), abs=1e-8
                )
            # Iteration k's committee was trained on the frames of iterations < k only.
            train_rec = project.stage_record(f"train-iter-{k:03d}")
            assert train_rec["train_frames"] + train_rec["test_frames"] == store.count(
                max_iteration=k - 1
            )
        # Selected frames are spread in time within one trajectory (min separation 1 fs).
        times = sorted(f.info["time_fs"] for f in store.frames(iteration=1))
        assert np.all(np.diff(times) >= 1.0 - 1e-9)


def project_reference():
    from nnprefine.reference import SnapReference

    return SnapReference()


def test_failing_reference_is_quarantined_and_not_retried(initial, tmp_path):
    log = tmp_path / "calls.log"
    reference = (
        'calculator = "_tiny:TestReference"\n'
        f'kwargs = {{ log_path = "{log}", fail_pattern = "r.n." }}'
    )
    project = _copy(initial, tmp_path, reference)
    slab = prepared_slab(project, project.config.initial_data.slab)
    s = refine_iteration(project, 1, slab, "test")
    calls = log.read_text().split()
    assert len(calls) == s["frames_selected"] == 4
    assert s["labels_failed"] == calls.count("raise") + calls.count("nan") == 2
    with project.store() as store:
        assert store.count(iteration=1) == s["frames_labelled"] == calls.count("ok") == 2
        bad = store.quarantined(iteration=1)
        assert len(bad) == 2
        errors = " | ".join(b.info["error"] for b in bad)
        assert "SCF did not converge" in errors and "NaN" in errors
        assert all(np.isfinite(f.get_potential_energy()) for f in store.frames())
    # Running the iteration again asks the reference nothing: labelled frames are known,
    # quarantined ones are failures on record, not retried.
    (project.iteration_dir(1) / "summary.json").unlink()
    again = refine_iteration(project, 1, slab, "test")
    assert log.read_text().split() == calls
    assert again["labels_failed"] == 2 and again["frames_labelled"] == 2


def test_resume_after_sigkill_while_labelling_redoes_no_label(initial, tmp_path):
    log = tmp_path / "calls.log"
    reference = (
        'calculator = "_tiny:TestReference"\n'
        f'kwargs = {{ log_path = "{log}", position_hashes = true }}'
    )
    # no validation set: the first reference calls of `refine` are then the labels
    no_validation = "impact_energies_eV = []\nhot_temperatures_K = []\nproduction_slab = false\nbulk_strains = []"
    project = _copy(initial, tmp_path, reference, validation=no_validation)
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "TINY_REFERENCE_DELAY_S": "1.5"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnprefine.cli", "refine", str(tmp_path / "tiny.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        # Kill once two labels are under way: the first is stored, the second in flight.
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert proc.poll() is None, "the refine subprocess ended before labelling"
            assert time.time() < deadline, "no labelling started within 240 s"
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    with project.store() as store:
        before = {f.info["content_hash"]: f.info["frame_id"] for f in store.frames(iteration=1)}
        stored_positions = {position_hash(f.positions) for f in store.frames(iteration=1)}
    assert 1 <= len(before) < 4
    calls_before = len(log.read_text().splitlines())

    slab = prepared_slab(project, project.config.initial_data.slab)
    s = refine_iteration(project, 1, slab, "test")
    new_calls = log.read_text().splitlines()[calls_before:]
    assert len(new_calls) == 4 - len(before)
    assert not {line.split()[1] for line in new_calls} & stored_positions
    with project.store() as store:
        after = {f.info["content_hash"]: f.info["frame_id"] for f in store.frames(iteration=1)}
    assert len(after) == s["frames_labelled"] == 4
    assert all(after[h] == i for h, i in before.items())
