"""``nnprefine run`` end to end on a tiny project with the real built-in reference.

One uninterrupted run is shared by the module; another run is killed with SIGKILL and
resumed. The reference logs a fingerprint of every structure it is asked about, so a
resumed run that re-labelled a stored frame or re-ran a stored trajectory would show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from _tiny import TESTS_DIR, position_hash, write_tiny_config
from ase.io import read

from nnprefine.cli import main
from nnprefine.common import atomic_path
from nnprefine.config import load_config
from nnprefine.dataset import FrameStore
from nnprefine.sputter import ResultsDB
from nnprefine.stages import Project

pytestmark = pytest.mark.slow


def _reference(log: Path) -> str:
    return (
        'calculator = "_tiny:TestReference"\n'
        f'kwargs = {{ log_path = "{log}", position_hashes = true }}'
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny project run once to the end by ``nnprefine run``; returns its folder."""
    folder = tmp_path_factory.mktemp("run")
    config = write_tiny_config(folder, _reference(folder / "calls.log"))
    assert main(["run", str(config)]) == 0
    return folder


def _frames(out: Path) -> dict[str, int]:
    with closing(sqlite3.connect(out / "data.db")) as con, con:
        return dict(con.execute("SELECT hash, id FROM frames"))


def _positions(out: Path) -> list[str]:
    """Fingerprints of the stored frames' positions, in storage order."""
    with closing(sqlite3.connect(out / "data.db")) as con, con:
        rows = con.execute("SELECT positions FROM frames ORDER BY id").fetchall()
    return [position_hash(np.frombuffer(blob, dtype="<f8").reshape(-1, 3)) for (blob,) in rows]


def _trajectories(out: Path) -> list[tuple]:
    with ResultsDB(out / "results.db") as db:
        return [
            (r["surface"], r["energy_eV"], r["idx"], r["seed"], r["n_sputtered"]) for r in db.rows()
        ]


def test_run_writes_report_and_summary_with_every_section(finished):
    out = finished / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    for it in summary["iterations"]:
        for key in (
            "frames_explored",
            "frames_selected",
            "frames_labelled",
            "labels_failed",
            "fraction_over_threshold",
            "test_rmse_energy_mev_per_atom",
            "test_rmse_force_mev_per_A",
        ):
            assert key in it, key
        assert it["frames_labelled"] + it["labels_failed"] == it["frames_selected"]
    for who in ("model", "reference"):
        assert 2.0 < summary["lattice"][who]["a"] < 2.5
        assert 3.3 < summary["lattice"][who]["c"] < 3.9
    assert summary["lattice"]["reference"]["a"] == pytest.approx(2.2395, abs=2e-3)
    drivers = {(y["driver"], y["energy_eV"]): y for y in summary["yields"]}
    assert set(drivers) == {("model", 100.0), ("model", 300.0), ("reference", 300.0)}
    for y in summary["yields"]:
        assert y["trajectories"] == (2 if y["driver"] == "model" else 1)
        assert y["yield"] == pytest.approx(y["sputtered"] / y["trajectories"])
        assert y["error_2sigma"] >= 0 and 0 <= y["reflected"] <= 1
        k = min(y["sputtered"], y["trajectories"])  # the successes the exact interval is for
        assert y["clopper_pearson_low"] <= k / y["trajectories"] <= y["clopper_pearson_high"]
        assert y["yield_upper"] >= y["yield"]
        assert (y["sputtered_energy_mean_eV"] is None) == (y["sputtered"] == 0)
        # the committee watch (default every 10 steps) sees every model-driven trajectory
        if y["driver"] == "model":
            assert y["watched"] == y["trajectories"]
            assert y["flagged_fraction"] == pytest.approx(y["flagged"] / y["watched"])
        else:
            assert "watched" not in y
    # the reference check ran the model's seeds: one pair at 300 eV
    [cmp] = summary["comparisons"]
    assert cmp["energy_eV"] == 300.0 and cmp["n_paired"] == 1
    flags = cmp["watch_by_fate"]
    assert sum(v for row in flags.values() for v in row.values()) == 1
    # The data set holds exactly what the iterations say they added.
    with closing(sqlite3.connect(out / "data.db")) as con, con:
        per_iteration = dict(
            con.execute(
                "SELECT iteration, COUNT(*) FROM frames WHERE origin != 'validation' GROUP BY 1"
            )
        )
        origins = dict(con.execute("SELECT origin, COUNT(*) FROM frames GROUP BY 1"))
    # every reference trajectory of the initial data and of the validation set ran
    for log in ("initial_data", "validation"):
        rows = [json.loads(x) for x in (out / "tasks" / f"{log}.jsonl").read_text().splitlines()]
        assert rows and not [r for r in rows if "failed" in r], log
    # the validation set: 3 impact + 2 hot-slab snapshots, the production slab, 2 bulk cells
    assert origins["validation"] == summary["validation"]["all"]["frames"] == 8
    assert set(summary["validation"]["groups"]) == {"impact", "hot_slab", "production_slab", "bulk"}
    verdict = summary["validation"]["verdict"]
    assert verdict["ok"] is False and "misses" in verdict["line"]  # 4 epochs of a 6-node net
    assert per_iteration[0] == summary["initial_frames"]
    for it in summary["iterations"]:
        assert per_iteration.get(it["iteration"], 0) == it["frames_labelled"]

    html = (out / "report.html").read_text()
    figures = ["dataset_growth", "convergence", "disagreement_iter001", "parity", "yields"]
    figures.append("validation_error_vs_disagreement")
    for name in figures:
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000, name
    # Figures are embedded, so the page opens offline and alone.
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) >= len(figures)
    assert "class='verdict-missed'" in html
    for heading in ("Refinement", "Validation", "Parity", "Lattice", "Sputtering yield"):
        assert heading.lower() in html.lower(), heading


def test_run_again_is_a_no_op(finished, capsys):
    out = finished / "out"
    calls = (finished / "calls.log").read_text()
    frames, trajectories = _frames(out), _trajectories(out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*") if p.is_file()}
    assert main(["run", str(finished / "tiny.toml")]) == 0
    printed = capsys.readouterr().out
    assert "training committee" not in printed and "labelling" not in printed
    assert (finished / "calls.log").read_text() == calls  # the reference was not asked again
    assert _frames(out) == frames and _trajectories(out) == trajectories
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_status_lists_every_stage(finished, capsys):
    assert main(["status", str(finished / "tiny.toml")]) == 0
    text = capsys.readouterr().out
    for stage in ("lattice", "initial_data", "refine", "final_model"):
        assert re.search(rf"{stage}: done", text), stage
    assert "model 4/4" in text and "reference 1/1 trajectories" in text
    assert "report: written" in text and "to do" not in text


def test_killed_run_resumes_without_redoing_labels_or_trajectories(finished, tmp_path):
    log = tmp_path / "calls.log"
    config = write_tiny_config(tmp_path, _reference(log))
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnprefine.cli", "run", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    try:
        # Kill in the middle: after iteration 1 labelled its frames, while iteration 2 trains.
        for line in proc.stdout:
            seen.append(line)
            if "training committee 'iter-002'" in line:
                time.sleep(0.3)
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    out = tmp_path / "out"
    frames_before = _frames(out)
    calls_before = log.read_text().splitlines()
    assert not (out / "results.db").exists()

    assert main(["run", str(config)]) == 0
    resumed_calls = {line.split()[1] for line in log.read_text().splitlines()[len(calls_before) :]}
    stored_positions = _positions(out)
    frames_after = _frames(out)
    # Frames stored before the kill are untouched, none was labelled again, none twice.
    assert all(frames_after[h] == i for h, i in frames_before.items())
    assert len(stored_positions) == len(set(stored_positions)) == len(frames_after)
    old = set(stored_positions[: len(frames_before)])
    assert not resumed_calls & old
    # The resumed run ends where the uninterrupted one did: same data, same trajectories.
    assert sorted(stored_positions) == sorted(_positions(finished / "out"))
    assert _trajectories(out) == _trajectories(finished / "out")
    project = Project(load_config(config))
    assert project.stage_record("refine")["stop_reason"]


def test_a_changed_config_is_reported_on_resume(finished, tmp_path, capsys):
    shutil.copytree(finished / "out", tmp_path / "out")
    text = (finished / "tiny.toml").read_text().replace("epochs = 4", "epochs = 5")
    (tmp_path / "tiny.toml").write_text(text.replace(str(finished / "out"), str(tmp_path / "out")))
    assert main(["report", str(tmp_path / "tiny.toml")]) == 0
    printed = capsys.readouterr().out
    assert "config sections changed since the last run: project, training;" in printed


def test_production_slab_prepared_by_the_model(finished, tmp_path):
    """With structures.production_slab_driver = "model" the NNP, not the reference,
    relaxes and equilibrates the production slab (what a DFT reference needs)."""
    shutil.copytree(finished / "out", tmp_path / "out")
    (tmp_path / "out" / "results.db").unlink()
    text = (
        (finished / "tiny.toml").read_text().replace(str(finished / "out"), str(tmp_path / "out"))
    )
    text = text.replace("fixed_layers = 1", 'fixed_layers = 1\nproduction_slab_driver = "model"')
    text = text.replace(str(finished / "calls.log"), str(tmp_path / "calls.log"))
    (tmp_path / "tiny.toml").write_text(text)
    calls = (finished / "calls.log").read_text().splitlines()
    shutil.copy(finished / "calls.log", tmp_path / "calls.log")
    assert main(["sputter", str(tmp_path / "tiny.toml")]) == 0
    slabs = tmp_path / "out" / "slabs"
    assert (slabs / "Be(0001)-3x3x3-vacuum5A-model.traj").exists()
    model_slab = read(slabs / "Be(0001)-3x3x3-vacuum5A-model.traj")
    reference_slab = read(slabs / "Be(0001)-3x3x3-vacuum5A.traj")
    assert len(model_slab) == len(reference_slab)
    assert np.abs(model_slab.positions - reference_slab.positions).max() > 1e-3
    assert len(_trajectories(tmp_path / "out")) == 5
    # The reference was asked only for its own campaign (one 300 eV trajectory), not for
    # relaxing or equilibrating the slab.
    new_calls = len((tmp_path / "calls.log").read_text().splitlines()) - len(calls)
    with ResultsDB(tmp_path / "out" / "results.db") as db:
        (ref_run,) = [r for r in db.rows() if r["surface"].endswith("/reference")]
    assert new_calls <= ref_run["steps"] + 1  # one force call per step, plus the first


def test_sequential_stopping_from_the_config(finished, tmp_path, capsys):
    """production.target_error / max_trajectories_per_energy reach run_campaign: with a
    target no tiny campaign can meet, every energy runs to the cap; the reference check
    keeps its fixed count."""
    shutil.copytree(finished / "out", tmp_path / "out")
    (tmp_path / "out" / "results.db").unlink()
    text = (
        (finished / "tiny.toml").read_text().replace(str(finished / "out"), str(tmp_path / "out"))
    )
    text = text.replace(
        "trajectories_per_energy = 2",
        "trajectories_per_energy = 2\ntarget_error = 1e-3\nmax_trajectories_per_energy = 3",
    )
    (tmp_path / "tiny.toml").write_text(text)
    assert main(["sputter", str(tmp_path / "tiny.toml")]) == 0
    with ResultsDB(tmp_path / "out" / "results.db") as db:
        rows = db.rows()
    model = [r for r in rows if r["surface"].endswith("/model")]
    reference = [r for r in rows if r["surface"].endswith("/reference")]
    assert sorted(r["energy_eV"] for r in model) == [100.0] * 3 + [300.0] * 3
    assert len(reference) == 1


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "slab.traj"
    with atomic_path(path) as tmp:
        assert tmp.suffix == ".traj" and tmp.parent == path.parent
        tmp.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["slab.traj"]


def test_validation_frames_never_reach_training_or_early_stopping(finished, monkeypatch):
    import nnprefine.training
    from nnprefine.config import load_config
    from nnprefine.stages import Project, train_committee

    seen = {}

    def spy(model, train_frames, test_frames, settings, log_dir=None):
        seen["train"], seen["test"] = list(train_frames), list(test_frames)
        raise KeyboardInterrupt  # stop here: the frames are what this test is about

    monkeypatch.setattr(nnprefine.training, "train", spy)
    project = Project(load_config(finished / "tiny.toml"))
    with pytest.raises(KeyboardInterrupt):
        train_committee(project, "spy")
    with project.store() as store:
        n_validation = store.count(split="validation")
    assert n_validation > 0
    assert seen["train"] and seen["test"]
    for frame in seen["train"] + seen["test"]:
        assert frame.info["origin"] != "validation" and frame.info["split"] != "validation"


def test_validate_command_scores_a_model_and_exits_3_when_targets_are_missed(finished, capsys):
    assert main(["validate", str(finished / "tiny.toml"), "--model", "iter-001"]) == 3
    text = capsys.readouterr().out
    for group in ("impact", "hot_slab", "production_slab", "bulk"):
        assert re.search(rf"validation +{group}: +\d+ frames", text), group
    assert "[MISSED] model 'iter-001'" in text
    scored = json.loads((finished / "out" / "models" / "iter-001" / "validation.json").read_text())
    assert scored["model"] == "iter-001" and scored["all"]["frames"] == 8
    assert main(["validate", str(finished / "tiny.toml"), "--model", "nope"]) == 1
    assert "no model 'nope'" in capsys.readouterr().err


def test_a_second_run_on_a_project_in_use_fails_at_once_naming_the_holder(
    finished, tmp_path, capsys
):
    import socket

    shutil.copytree(finished / "out", tmp_path / "out")
    config = tmp_path / "tiny.toml"
    text = (finished / "tiny.toml").read_text()
    config.write_text(text.replace(str(finished / "out"), str(tmp_path / "out")))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "out" / "nnprefine.lock"
        lock.write_text(
            json.dumps(
                {"pid": other.pid, "host": socket.gethostname(), "started": "t", "command": "x"}
            )
        )
        assert main(["run", str(config)]) == 1
        assert f"in use by process {other.pid}" in capsys.readouterr().err
        assert main(["status", str(config)]) == 0  # reading still works
    finally:
        other.kill()
        other.wait()
    assert main(["report", str(config)]) == 0  # the holder is gone: its stale lock is taken


def _copy_of(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished / "out", tmp_path / "out")
    config = tmp_path / "tiny.toml"
    config.write_text(
        (finished / "tiny.toml").read_text().replace(str(finished / "out"), str(tmp_path / "out"))
    )
    return config


def test_a_lost_or_replaced_data_db_is_an_error_not_a_silent_rebuild(finished, tmp_path, capsys):
    config = _copy_of(finished, tmp_path)
    out = tmp_path / "out"
    for path in out.glob("data.db*"):
        path.unlink()
    assert main(["status", str(config)]) == 1
    assert "missing or empty" in capsys.readouterr().err
    (out / "data.db").write_bytes(b"")  # a zero-byte file is no database either
    assert main(["run", str(config)]) == 1
    assert "the labels are lost" in capsys.readouterr().err
    # another project's database with frames of its own
    (out / "data.db").unlink()
    from nnprefine.dataset import FrameStore

    with (
        FrameStore(out / "data.db", elements=("Be",)) as store,
        closing(sqlite3.connect(finished / "out" / "data.db")) as con,
    ):
        n = con.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
        first = next(iter(FrameStore(finished / "out" / "data.db").frames()))
        for k in range(n):
            frame = first.copy()
            frame.positions[0, 0] += 0.01 * (k + 1)
            frame.calc = first.calc.__class__(frame, energy=-1.0, forces=first.get_forces())
            store.add(frame, origin="initial", reference=first.info["reference"])
    assert main(["report", str(config)]) == 1
    assert "is not the database stage" in capsys.readouterr().err


def test_the_report_refuses_yields_of_other_settings_and_drops_energies_no_longer_asked(
    finished, tmp_path, capsys
):
    config = _copy_of(finished, tmp_path)
    text = config.read_text()
    config.write_text(text.replace("energies_eV = [100.0, 300.0]", "energies_eV = [100.0]"))
    assert main(["report", str(config)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {(y["driver"], y["energy_eV"]) for y in summary["yields"]} == {
        ("model", 100.0),
        ("reference", 300.0),
    }
    config.write_text(text.replace("timestep_fs = 0.5", "timestep_fs = 0.25"))
    assert main(["report", str(config)]) == 2
    assert "run with other settings (timestep_fs differ" in capsys.readouterr().err
    assert main(["status", str(config)]) == 0
    assert "model run with other settings (timestep_fs)" in capsys.readouterr().out


def test_export_of_a_member_that_does_not_exist_is_a_user_error(finished, capsys):
    assert main(["export-n2p2", str(finished / "tiny.toml"), "--member", "5"]) == 2
    assert "has members 0 … 1" in capsys.readouterr().err


def test_a_full_disk_is_one_line_that_says_the_run_resumes(tmp_path, monkeypatch, capsys):
    import errno

    from nnprefine import pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "data.db"))

    monkeypatch.setattr(pipeline, "run", full)
    config = write_tiny_config(tmp_path)
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "resumes" in err


def test_refine_on_flags_labels_flagged_frames_retrains_and_reruns_the_same_seeds(
    finished, tmp_path
):
    """[[production]] refine_on_flags: the watch's frames go to the reference (origin
    'production'), a model 'repair-1' is trained on them, the flagged trajectories re-run
    on their own seeds under their own label; yields never mix the two models, and a
    second run changes nothing."""
    shutil.copytree(finished / "out", tmp_path / "out")
    (tmp_path / "out" / "results.db").unlink()
    shutil.copy(finished / "calls.log", tmp_path / "calls.log")
    text = (finished / "tiny.toml").read_text().replace(str(finished), str(tmp_path))
    text = text.replace(
        "reference_trajectories = 1",
        "reference_trajectories = 1\nrefine_on_flags = true\nrepair_rounds = 2\nrepair_frames = 3",
    )
    # a last threshold pair nothing stays under: every watched trajectory is flagged
    text = text.replace(
        "force_eV_per_A = 2.0",
        "force_eV_per_A = 2.0\n[[refine.thresholds]]\nenergy_meV_per_atom = 1e-6\n"
        "force_eV_per_A = 1e-6",
    )
    config = tmp_path / "tiny.toml"
    config.write_text(text)
    assert main(["sputter", str(config)]) == 0
    out = tmp_path / "out"
    with ResultsDB(out / "results.db") as db:
        rows = db.rows()
        kept = {
            (a.info["energy_eV"], a.info["idx"], a.info["time_fs"])
            for a in db.flagged_frames("Be(0001)-3x3x3/model")
        }
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["surface"], []).append(r)
    base = "Be(0001)-3x3x3/model"
    first, rerun = by_label[base], by_label[f"{base}/repair-1"]
    assert all(r["flagged"] == 1 and r["model"] == "final" for r in first)
    assert {r["model"] for r in rerun} == {"repair-1"}
    assert {r["model"] for r in by_label[f"{base}/repair-2"]} == {"repair-2"}
    # the re-runs are the flagged trajectories, on the very same seeds
    assert {(r["energy_eV"], r["idx"], r["seed"]) for r in rerun} == {
        (r["energy_eV"], r["idx"], r["seed"]) for r in first
    }
    assert len({r["driver_fingerprint"] for r in first + rerun}) == 2
    # the labelled frames are watch frames of flagged trajectories, spread over them
    with closing(sqlite3.connect(out / "data.db")) as con, con:
        labelled = con.execute(
            "SELECT iteration, trajectory, time_fs FROM frames WHERE origin = 'production'"
        ).fetchall()
    rounds = [json.loads((out / "stages" / f"repair-{r}.json").read_text()) for r in (1, 2)]
    assert sorted({it for it, _, _ in labelled}) == [3, 4]  # after refinement's 2 iterations
    first_round = [(t, time_fs) for it, t, time_fs in labelled if it == 3]
    assert len(first_round) == rounds[0]["frames_labelled"] == 3
    assert len({t for t, _ in first_round}) == 3  # 4 flagged trajectories: 3 different ones
    for t, time_fs in first_round:
        label, energy, idx = t.split("|")
        assert label == base and (float(energy.removesuffix("eV")), int(idx), time_fs) in kept
    assert rounds[0]["flagged_before"] == rounds[0]["rerun"] == 4
    assert rounds[1]["previous_model"] == "repair-1" and (out / "models" / "repair-2").is_dir()
    # the report keeps the final model's yields and shows the repair apart
    assert main(["report", str(config)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {(y["driver"], y["trajectories"]) for y in summary["yields"]} == {
        ("model", 2),
        ("reference", 1),
    }
    assert [r["round"] for r in summary["repairs"]] == [1, 2]
    [at300] = [e for e in summary["repairs"][0]["energies"] if e["energy_eV"] == 300.0]
    assert at300["reference_paired"] == 1
    assert "Repair on flags" in (out / "report.html").read_text()
    # resumed: nothing is labelled, trained or run again
    calls = (tmp_path / "calls.log").read_text()
    assert main(["sputter", str(config)]) == 0
    assert (tmp_path / "calls.log").read_text() == calls
    with ResultsDB(out / "results.db") as db:
        assert len(db.rows()) == len(rows)


def test_second_surface_round_compares_the_first_surface_model_with_the_final_one(
    finished, tmp_path, capsys
):
    """The paper's NNP5 → NNP6: refinement's round on a second surface follows the first
    surface's iterations; the committee that explored it first (trained on the first
    surface only) drives transfer_trajectories on the final model's seeds on both
    surfaces; both models are scored on the second surface's validation frames, and the
    report shows them side by side. A second run changes nothing."""
    shutil.copytree(finished / "out", tmp_path / "out")
    out = tmp_path / "out"
    (out / "results.db").unlink()
    for stage in ("refine", "final_model", "validation_data"):
        (out / "stages" / f"{stage}.json").unlink()
    shutil.rmtree(out / "models" / "final")
    shutil.copy(finished / "calls.log", tmp_path / "calls.log")
    text = (finished / "tiny.toml").read_text().replace(str(finished), str(tmp_path))
    second = 'slab = { surface = "01-10", size = [2, 4, 4], vacuum_A = 5.0 }'
    text = text.replace(
        "adaptive_count = 4\n",
        f"adaptive_count = 4\nsecond_surface_{second}\nsecond_surface_iterations = 1\n",
    )
    text = text.replace(
        "reference_trajectories = 1", "reference_trajectories = 1\ntransfer_trajectories = 1"
    )
    text = text.replace(
        "[executor]",
        f"[[production]]\n{second}\nenergies_eV = [300.0]\ntrajectories_per_energy = 2\n"
        "timestep_fs = 0.5\nduration_fs = 8.0\nextension_fs = 4.0\nmax_extensions = 1\n"
        "transfer_trajectories = 2\n\n[executor]",
    )
    config = tmp_path / "tiny.toml"
    config.write_text(text)
    assert main(["run", str(config)]) == 0
    refine_rec = json.loads((out / "stages" / "refine.json").read_text())
    surfaces = [it["surface"] for it in refine_rec["iterations"]]
    assert surfaces == ["Be(0001)-3x3x3", "Be(0001)-3x3x3", "Be(01-10)-2x4x4"]
    # the first-surface model saw only the first surface's frames (iterations 0–2)
    with closing(sqlite3.connect(out / "data.db")) as con, con:
        n_first = con.execute(
            "SELECT COUNT(*) FROM frames WHERE iteration <= 2 AND split = 'train'"
        ).fetchone()[0]
        n_all = con.execute("SELECT COUNT(*) FROM frames WHERE split = 'train'").fetchone()[0]
    first_rec = json.loads((out / "stages" / "train-iter-003.json").read_text())
    final_rec = json.loads((out / "stages" / "train-final.json").read_text())
    assert first_rec["train_frames"] == n_first < final_rec["train_frames"] == n_all
    with ResultsDB(out / "results.db") as db:
        rows = db.rows()
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["surface"], []).append(r)
    for label, n in (("Be(0001)-3x3x3/model", 1), ("Be(01-10)-2x4x4/model", 2)):
        first = by_label[f"{label}/first-surface"]
        assert {r["model"] for r in first} == {"iter-003"}
        assert {r["model"] for r in by_label[label]} == {"final"}
        seeds = {(r["energy_eV"], r["idx"]): r["seed"] for r in by_label[label]}
        assert len(first) == n * len({r["energy_eV"] for r in by_label[label]})
        assert all(seeds[(r["energy_eV"], r["idx"])] == r["seed"] for r in first)
    scores = {
        name: json.loads((out / "models" / name / "validation.json").read_text())
        for name in ("iter-003", "final")
    }
    assert all(s["groups"]["second_surface"]["frames"] == 3 for s in scores.values())
    summary = json.loads((out / "summary.json").read_text())
    transfer = summary["transfer"]
    assert transfer["first_surface_model"] == "iter-003"
    assert (
        transfer["validation"]["first_surface_model"]["second_surface"]
        == (scores["iter-003"]["groups"]["second_surface"])
    )
    got = {(y["surface"], y["energy_eV"], y["n_paired"]) for y in transfer["yields"]}
    assert got == {
        ("Be(0001)-3x3x3", 100.0, 1),
        ("Be(0001)-3x3x3", 300.0, 1),
        ("Be(01-10)-2x4x4", 300.0, 2),
    }
    [with_ref] = [
        y for y in transfer["yields"] if y["energy_eV"] == 300.0 and "0001" in y["surface"]
    ]
    assert with_ref["first_surface_model"]["paired"] == 1
    # the campaign's yields stay the final model's
    assert {(y["surface"], y["driver"], y["trajectories"]) for y in summary["yields"]} >= {
        ("Be(01-10)-2x4x4", "model", 2)
    }
    html = (out / "report.html").read_text()
    assert "Transferability" in html
    # one yield panel per surface, both in the report
    for name in ("yields.png", "yields_1.png"):
        assert (out / "figures" / name).stat().st_size > 5000, name
    for name in ("yields.png", "yields_1.png"):
        assert f'<img alt="{name}"' in html, name
    capsys.readouterr()
    assert main(["status", str(config)]) == 0
    assert "model iter-003" in capsys.readouterr().out
    calls = (tmp_path / "calls.log").read_text()
    assert main(["run", str(config)]) == 0
    assert (tmp_path / "calls.log").read_text() == calls


def test_initial_model_from_n2p2_is_member_one_start_and_keeps_its_scaling(finished, tmp_path):
    """[network] initial_model: an n2p2 set becomes member 1's start (its cutoff and layers
    replace the config's), training continues it on its own scaling and offsets, and the
    fresh member beside it trains on that scaling."""
    from nnprefine.model import Committee
    from nnprefine.n2p2 import read_n2p2, write_n2p2
    from nnprefine.stages.training import new_committee, train_committee

    shutil.copytree(finished / "out", tmp_path / "out")
    start_dir = tmp_path / "start"
    write_n2p2(Committee.load(finished / "out" / "models" / "final").members[0], start_dir)
    text = (finished / "tiny.toml").read_text().replace(str(finished), str(tmp_path))
    text = text.replace("r_cut_A = 4.0", "r_cut_A = 5.5").replace("hidden = [6]", "hidden = [9, 9]")
    text = text.replace("[network]\n", '[network]\ninitial_model = "start"\n')
    # a learning rate that cannot move the weights: the start must survive training intact
    text = text.replace("learning_rate = 1e-2", "learning_rate = 1e-9").replace(
        "epochs = 4", "epochs = 1"
    )
    config = tmp_path / "tiny.toml"
    config.write_text(text)
    cfg = load_config(config)
    start = read_n2p2(start_dir)
    assert cfg.descriptor.r_cut_A == start.r_cut_A == 4.0
    assert cfg.network.hidden == start.hidden == (6,)
    project = Project(cfg)
    with project.store() as store:
        frame = store.frames(split="validation")[0]
    e_start = start.energy_forces(frame)[0]
    committee = new_committee(project)
    assert committee.members[0].energy_forces(frame)[0] == pytest.approx(e_start, abs=1e-9)
    trained, _ = train_committee(project, "from-start")
    m0, m1 = trained.members
    assert m0.energy_forces(frame)[0] == pytest.approx(e_start, abs=1e-4 * len(frame))
    assert m0.metadata["training"]["initial_model"] == str(start_dir)
    for el in m0.elements:
        assert np.array_equal(m1.input_affine()[el][0], m0.input_affine()[el][0])
        assert np.array_equal(m0.input_affine()[el][0], start.input_affine()[el][0])
    assert abs(m1.energy_forces(frame)[0] - e_start) > 1e-3  # a fresh network, not a copy


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, r"network.initial_model = 'start': .* is not a directory"),
        (lambda d: d.mkdir(), r"network.initial_model = 'start': .* holds no model"),
    ],
)
def test_initial_model_that_is_not_there_is_a_config_error(tmp_path, make, message):
    from nnprefine.errors import ConfigError

    make(tmp_path / "start")
    config = write_tiny_config(tmp_path)
    config.write_text(
        config.read_text().replace("[network]\n", '[network]\ninitial_model = "start"\n')
    )
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_a_be_projectile_on_a_tungsten_slab_runs_end_to_end(tmp_path):
    """Beyond self-sputtering: a bcc W target, Be ions at 20° off the normal, the built-in
    W–Be reference, through every stage. The lattice is bcc W's, the data and the model
    hold both elements, every impact's projectile is Be, and the report names the system."""
    slab = 'slab = { surface = "100", size = [2, 2, 4], vacuum_A = 5.0 }'
    config = write_tiny_config(
        tmp_path,
        project=f'name = "w"\noutput_dir = "{tmp_path / "out"}"\nelement = "W"\n'
        'projectile = "Be"\nseed = 3',
        structures=(
            'crystal = "bcc"\na_A = 3.17\nrelax_fmax_eV_per_A = 0.05\nequilibration_fs = 10.0\n'
            'thermostat = "langevin"\nfixed_layers = 1'
        ),
        initial_data=(
            f"{slab}\nenergies_eV = [100.0]\nruns_per_energy = 1\ntimestep_fs = 0.5\n"
            "duration_fs = 8.0\nsnapshots_per_run = 6\nthermal_frames = 4\n"
            "thermal_interval_fs = 2.0\npolar_deg = 20.0"
        ),
        validation=(
            "impact_energies_eV = [100.0]\nimpact_runs_per_energy = 1\n"
            "impact_snapshots_per_run = 2\nimpact_duration_fs = 8.0\nbulk_strains = [0.0]"
        ),
        refine=(
            "max_iterations = 1\nexploration_energies_eV = [100.0]\n"
            "exploration_runs_per_energy = 1\nexploration_duration_fs = 5.0\n"
            "exploration_timestep_fs = 0.5\nexploration_polar_deg = 20.0\n"
            "frame_interval_fs = 0.5\nmax_selected_per_iteration = 3\n"
            "min_frame_separation_fs = 1.0\nupper_trust_force_eV_per_A = 1000.0\n"
            "stop_fraction = 0.0\nadaptive_count = 3\n"
            "[[refine.thresholds]]\nenergy_meV_per_atom = 20.0\nforce_eV_per_A = 2.0"
        ),
        production=(
            f"{slab}\nenergies_eV = [200.0]\ntrajectories_per_energy = 2\ntimestep_fs = 0.5\n"
            "duration_fs = 6.0\nmax_extensions = 0\npolar_deg = 20.0\nescape_energy_eV = 8.0"
        ),
    )
    assert main(["run", str(config)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    ref = summary["lattice"]["reference"]
    assert 3.10 < ref["a"] < 3.25 and ref["c"] == ref["a"]  # bcc W: one constant
    with closing(sqlite3.connect(out / "data.db")) as con, con:
        n_frames = con.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    with FrameStore(out / "data.db", elements=("Be", "W")) as store:
        frames = store.frames(split="train") + store.frames(split="test")
    assert len(frames) == n_frames - summary["validation"]["all"]["frames"]
    species = [set(a.get_chemical_symbols()) for a in frames]
    assert {"W"} in species and {"Be", "W"} in species  # thermal frames and impacts
    for a in frames:  # a Be atom is only ever the projectile, the last atom
        assert a.get_chemical_symbols().count("Be") <= 1
        assert "Be" not in a.get_chemical_symbols()[:-1]
    model = json.loads((out / "models" / "final" / "member_000" / "model.json").read_text())
    assert sorted(model["elements"]) == ["Be", "W"]
    with ResultsDB(out / "results.db") as db:
        rows = db.rows("W(100)-2x2x4/model")
        meta = db.campaign_meta("W(100)-2x2x4/model")
    assert len(rows) == 2 and all(r["polar_deg"] == 20.0 for r in rows)
    assert meta["settings"]["projectile"] == "Be"
    assert "Be on W sputtering" in (out / "report.html").read_text()
