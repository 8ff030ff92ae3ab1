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
    assert project.slab_path("Be(0001)-3x3x4").exists()
    np.testing.assert_array_equal(again.positions, first.positions)
    np.testing.assert_array_equal(again.get_velocities(), first.get_velocities())
    # the reference's lattice constant, not the config's guess, sets the cell
    assert first.cell.lengths()[0] == pytest.approx(3 * 2.25)
    # equilibrated: free atoms move, fixed atoms do not
    v = np.linalg.norm(first.get_velocities(), axis=1)
    fixed = fixed_mask(first)
    assert fixed.any() and np.all(v[fixed] == 0.0) and np.all(v[~fixed] > 0.0)
    # a tag keeps a differently prepared slab apart
    assert not project.slab_path("Be(0001)-3x3x4-model").exists()


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
