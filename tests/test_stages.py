"""Pieces of the workflow layer tested apart from a whole run: slab preparation, the
rebuild of selected exploration frames as Atoms, and the gathering of exploration files."""

from __future__ import annotations

import numpy as np
import pytest

from nnprefine.common import save_npz
from nnprefine.config import SlabConfig, config_from_dict
from nnprefine.reference import SnapReference
from nnprefine.selection import select_frames
from nnprefine.stages import Project, prepared_slab
from nnprefine.structures import be0001_slab, fixed_mask
from nnprefine.trajectories import frame_atoms, gather_explorations


class CountingSnap(SnapReference):
    """The SNAP reference, counting its calculations."""

    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        super().calculate(*args, **kwargs)


@pytest.fixture
def project(tmp_path):
    config = config_from_dict(
        {
            "project": {"output_dir": str(tmp_path / "out"), "seed": 3},
            "descriptor": {"preset": "generated", "r_cut_A": 4.0},
            "structures": {"equilibration_fs": 20.0, "relax_fmax_eV_per_A": 1e-2},
            "initial_data": {"slab": {"size": [3, 3, 4], "vacuum_A": 6.0}},
            "production": [{"slab": {"size": [3, 3, 4], "vacuum_A": 6.0}}],
        }
    )
    return Project(config)


def test_a_prepared_slab_is_built_once_then_read_from_its_file(project):
    slab_cfg = SlabConfig("0001", (3, 3, 4), 6.0)
    project.record_stage("lattice", {"a_A": 2.25, "c_A": 3.55, "energy_eV_per_atom": -3.7})
    CountingSnap.calls = 0
    first = prepared_slab(project, slab_cfg, calc=CountingSnap())
    built_with = CountingSnap.calls
    assert built_with > 10  # relaxation and equilibration steps
    again = prepared_slab(project, slab_cfg, calc=CountingSnap())
    assert CountingSnap.calls == built_with  # read back, no new calculation
    assert project.slab_path("Be(0001)-3x3x4-vacuum6A").exists()
    np.testing.assert_array_equal(again.positions, first.positions)
    np.testing.assert_array_equal(again.get_velocities(), first.get_velocities())
    # the reference's lattice constant, not the config's guess, sets the cell
    assert first.cell.lengths()[0] == pytest.approx(3 * 2.25)
    # equilibrated: free atoms move, fixed atoms do not
    v = np.linalg.norm(first.get_velocities(), axis=1)
    fixed = fixed_mask(first)
    assert fixed.any() and np.all(v[fixed] == 0.0) and np.all(v[~fixed] > 0.0)
    # a tag keeps a differently prepared slab apart
    assert not project.slab_path("Be(0001)-3x3x4-vacuum6A-model").exists()
    # another vacuum is another slab, not this file read back
    CountingSnap.calls = 0
    prepared_slab(project, SlabConfig("0001", (3, 3, 4), 7.0), calc=CountingSnap())
    assert CountingSnap.calls > 10 and project.slab_path("Be(0001)-3x3x4-vacuum7A").exists()


def test_selected_frames_rebuild_as_the_atoms_that_were_explored(tmp_path):
    slab = be0001_slab(size=(3, 3, 4), vacuum_A=6.0)
    rng = np.random.default_rng(0)
    n_frames = 6
    positions = np.concatenate([slab.positions, [[1.0, 1.0, 20.0]]])[None] + rng.normal(
        0, 0.05, size=(n_frames, len(slab) + 1, 3)
    )
    save_npz(
        tmp_path / "explore-50eV-0000.npz",
        time_fs=np.arange(n_frames, dtype=float),
        energy_disagreement_eV_per_atom=np.array([0.0, 0.0, 0.05, 0.0, 0.0, 0.1]),
        force_disagreement_eV_per_A=np.full(n_frames, 0.1),
        positions=positions,
        before_halt=np.zeros(n_frames, dtype=bool),
        halted=np.array(""),
    )
    explored = gather_explorations([tmp_path / "explore-50eV-0000.npz"])
    sel = select_frames(
        explored["trajectory"],
        explored["time_fs"],
        explored["energy"],
        explored["force"],
        energy_threshold_eV_per_atom=0.02,
        force_threshold_eV_per_A=2.0,
    )
    assert sorted(sel.selected) == [2, 5]
    for i in sel.selected:
        atoms = frame_atoms(slab, explored["positions"][i])
        assert len(atoms) == len(slab) + 1
        assert atoms.get_chemical_symbols()[-1] == "Be"  # the projectile
        np.testing.assert_array_equal(atoms.positions, positions[i])
        np.testing.assert_array_equal(atoms.cell.array, slab.cell.array)
        assert list(atoms.pbc) == list(slab.pbc)


def test_gathering_skips_failed_and_empty_runs_and_counts_halts(tmp_path):
    def write(name, n, halted=""):
        save_npz(
            tmp_path / f"{name}.npz",
            time_fs=np.arange(n, dtype=float),
            energy_disagreement_eV_per_atom=np.full(n, 0.001),
            force_disagreement_eV_per_A=np.full(n, 0.2),
            positions=np.zeros((n, 4, 3)),
            before_halt=np.arange(n) >= n - 2 if halted else np.zeros(n, dtype=bool),
            halted=np.array(halted),
        )

    write("explore-20eV-0001", 3, halted="trust")
    write("explore-20eV-0000", 5)
    write("explore-50eV-0000", 0)
    save_npz(tmp_path / "explore-50eV-0001.npz", failed=np.array("SimulationError: boom"))
    out = gather_explorations(sorted(tmp_path.glob("*.npz"), reverse=True))
    assert len(out["time_fs"]) == len(out["positions"]) == 8
    # files in name order, frames in time order within each
    assert list(out["trajectory"]) == ["explore-20eV-0000"] * 5 + ["explore-20eV-0001"] * 3
    np.testing.assert_array_equal(out["time_fs"], [0, 1, 2, 3, 4, 0, 1, 2])
    assert out["halted"] == 1
    np.testing.assert_array_equal(out["before_halt"], [False] * 6 + [True, True])
    empty = gather_explorations([tmp_path / "explore-50eV-0001.npz"])
    assert len(empty["time_fs"]) == 0 and empty["halted"] == 0


def test_coverage_additions_label_hot_slab_bulk_and_production_slab_frames(tmp_path):
    from nnprefine.stages import initial_data

    config = config_from_dict(
        {
            "project": {"output_dir": str(tmp_path / "out"), "seed": 4},
            "descriptor": {"preset": "generated", "r_cut_A": 4.0},
            "structures": {"equilibration_fs": 10.0, "relax_fmax_eV_per_A": 5e-2},
            "initial_data": {
                "slab": {"size": [3, 3, 3], "vacuum_A": 5.0},
                "energies_eV": [],
                "thermal_frames": 0,
                "hot_temperatures_K": [2500.0],
                "hot_snapshots": 3,
                "hot_duration_fs": 5.0,
                "bulk_strains": [-0.02, 0.02],
                "bulk_size": [2, 2, 2],
                "bulk_snapshots": 2,
                "bulk_duration_fs": 3.0,
                "production_slab_snapshots": 2,
                "production_slab_duration_fs": 3.0,
            },
            "production": [{"slab": {"size": [3, 3, 4], "vacuum_A": 5.0}}],
        }
    )
    project = Project(config)
    rec = initial_data(project)
    with project.store() as store:
        frames = store.frames(origin="initial")
    by_run: dict[str, list] = {}
    for f in frames:
        by_run.setdefault(f.info["trajectory"], []).append(f)
    assert sorted(by_run) == ["bulk-+0.020", "bulk--0.020", "hot_slab-2500K", "production_slab"]
    assert rec["frames"] == len(frames) == 3 + 2 * 2 + 2
    for name, group in by_run.items():
        if name.startswith("bulk"):
            assert all(len(f) == 16 and f.pbc.all() for f in group)  # 2x2x2 cells of 2 atoms
            # stored with the reference's stress (stress_weight trains on it)
            assert all(np.abs(f.get_stress()).max() > 1e-4 for f in group)
        elif name == "production_slab":
            assert all(len(f) == 36 and list(f.pbc) == [True, True, False] for f in group)
        else:
            assert all(len(f) == 27 for f in group)
        if not name.startswith("bulk"):
            assert all("stress" not in f.calc.results for f in group)
    # the hot slab is hot: its atoms moved far more than in the 300 K slab
    slab = prepared_slab(project, config.initial_data.slab)
    shift = np.abs(by_run["hot_slab-2500K"][-1].positions - slab.positions).max()
    assert shift > 0.05


def test_a_second_writer_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(project):
    import json
    import socket
    import subprocess
    import sys

    from nnprefine.errors import NnprefineError

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {
            "pid": other.pid,
            "host": socket.gethostname(),
            "started": "now",
            "command": "nnprefine run other.toml",
        }
        project.lock_path.write_text(json.dumps(holder))
        with pytest.raises(NnprefineError, match=rf"in use by process {other.pid} .*other.toml"):
            with project.lock("nnprefine run"):
                pass
    finally:
        other.kill()
        other.wait()
    # the holder is gone: its lock is stale and taken over, then released
    with project.lock("nnprefine run"):
        assert json.loads(project.lock_path.read_text())["pid"] != other.pid
        with project.lock("nested stage"):  # re-entrant within one process
            pass
        assert project.lock_path.exists()
    assert not project.lock_path.exists()


def test_a_reference_returning_nan_in_reference_driven_md_fails_the_stage_loudly(tmp_path):
    """Not a silent truncation: each such trajectory is a recorded failure with its cause,
    and the stage stops before training when too many failed."""
    import dataclasses
    import sys

    from _tiny import TESTS_DIR

    from nnprefine.config import ReferenceConfig
    from nnprefine.errors import ReferenceCalculationError
    from nnprefine.stages import initial_data, lattice

    sys.path.insert(0, str(TESTS_DIR))
    base = config_from_dict(
        {
            "project": {"output_dir": str(tmp_path / "out"), "seed": 5},
            "descriptor": {"preset": "generated", "r_cut_A": 4.0},
            "structures": {"equilibration_fs": 10.0, "relax_fmax_eV_per_A": 5e-2},
            "initial_data": {
                "slab": {"size": [3, 3, 3], "vacuum_A": 5.0},
                "energies_eV": [50.0],
                "runs_per_energy": 3,
                "duration_fs": 5.0,
                "snapshots_per_run": 2,
                "thermal_frames": 0,
            },
            "production": [{"slab": {"size": [3, 3, 3], "vacuum_A": 5.0}}],
        }
    )
    good = Project(base)
    lattice(good)
    prepared_slab(good, base.initial_data.slab)  # the slab, prepared by the sound reference
    nan_every_third = ReferenceConfig("_tiny:TestReference", {"fail_pattern": "..n"})
    project = Project(dataclasses.replace(base, reference=nan_every_third))
    with pytest.raises(
        ReferenceCalculationError,
        match=r"3 of 3 reference trajectories of initial_data failed.*non-finite",
    ):
        initial_data(project)
    failed = project.finished_tasks("initial_data")
    assert len(failed) == 3 and all("non-finite" in r["failed"] for r in failed.values())
    with project.store() as store:
        assert store.count(origin="initial") == 0  # no truncated run slipped in as data


def test_a_slab_the_calculator_cannot_handle_is_a_clear_error_and_no_file(project, tmp_path):
    import sys

    from _tiny import TESTS_DIR, TestReference

    from nnprefine.errors import ReferenceCalculationError

    sys.path.insert(0, str(TESTS_DIR))
    slab_cfg = SlabConfig("0001", (3, 3, 4), 6.5)
    with pytest.raises(ReferenceCalculationError, match="non-finite positions or energy"):
        prepared_slab(project, slab_cfg, calc=TestReference(fail_pattern="n"))
    assert not project.slab_path(slab_cfg.file_key).exists()
    with pytest.raises(ReferenceCalculationError, match="preparing slab .* failed .*SCF"):
        prepared_slab(project, slab_cfg, calc=TestReference(fail_pattern="r"))


def test_production_sections_pool_only_when_their_protocol_is_the_same(tmp_path):
    from nnprefine.stages.production import campaigns

    slab = {"size": [3, 3, 4], "vacuum_A": 6.0}
    config = config_from_dict(
        {
            "project": {"output_dir": str(tmp_path / "out"), "seed": 3},
            "descriptor": {"preset": "generated", "r_cut_A": 4.0},
            "initial_data": {"slab": slab},
            "production": [
                {"slab": slab, "energies_eV": [50.0, 60.0], "trajectories_per_energy": 5},
                {"slab": slab, "energies_eV": [60.0], "trajectories_per_energy": 50},
                {"slab": slab, "energies_eV": [60.0], "timestep_fs": 0.1},
            ],
        }
    )
    labels = [c["label"] for c in campaigns(Project(config))]
    assert labels[0] == labels[1]  # the same protocol: more trajectories, one statistics
    assert labels[2] not in labels[:2] and labels[2].endswith("/production2")


def test_two_processes_taking_over_a_stale_lock_at_once_cannot_both_win(tmp_path):
    import json
    import socket
    import subprocess
    import sys
    import textwrap
    import time

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    (out / "nnprefine.lock").write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "t"})
    )
    start = time.time() + 3.0
    script = textwrap.dedent(
        f"""
        import time
        from nnprefine.config import config_from_dict
        from nnprefine.stages import project as pm
        real = pm._read_lock
        def slow_read(path):  # widen the window between reading the stale lock and acting
            holder = real(path)
            time.sleep(0.5)
            return holder
        pm._read_lock = slow_read
        config = config_from_dict({{"project": {{"output_dir": {str(out)!r}}}}})
        p = pm.Project(config)
        time.sleep(max(0.0, {start} - time.time()))
        try:
            with p.lock("test"):
                print("won", flush=True)
                time.sleep(2.0)
        except Exception as exc:
            print("refused:", exc, flush=True)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=60)[0] for p in procs]
    assert sum(r.startswith("won") for r in results) == 1, results
    assert sum("is in use by process" in r for r in results) == 1, results


def test_imported_frames_can_be_the_whole_initial_data_set(tmp_path):
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    from nnprefine.dataset import write_extxyz
    from nnprefine.errors import ConfigError
    from nnprefine.stages import initial_data

    frames = []
    for k in range(3):
        a = bulk("Be", "hcp", a=2.24, c=3.6) * (2, 2, 1)
        a.rattle(0.05, seed=k)
        a.calc = SinglePointCalculator(a, energy=-3.7 * len(a), forces=np.zeros((len(a), 3)))
        frames.append(a)
    write_extxyz(tmp_path / "mine.extxyz", frames)
    base = {
        "project": {"output_dir": str(tmp_path / "out"), "seed": 4},
        "descriptor": {"preset": "generated", "r_cut_A": 4.0},
        "structures": {"equilibration_fs": 10.0, "relax_fmax_eV_per_A": 5e-2},
        "initial_data": {
            "slab": {"size": [3, 3, 3], "vacuum_A": 5.0},
            "runs_per_energy": 0,
            "thermal_frames": 0,
            "import_files": ["mine.extxyz"],
        },
    }
    with pytest.raises(ConfigError, match="not found"):
        config_from_dict(base)  # relative to the config's folder, which here is the cwd
    config = config_from_dict(base, base_dir=tmp_path)
    rec = initial_data(Project(config))
    assert rec == {**rec, "frames": 3, "imported": 3, "trajectories": 0}
    empty = dict(base, project={"output_dir": str(tmp_path / "out2")})
    empty["initial_data"] = {k: v for k, v in base["initial_data"].items() if k != "import_files"}
    with pytest.raises(ConfigError, match="initial data set is empty"):
        initial_data(Project(config_from_dict(empty)))
