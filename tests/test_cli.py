"""The command line turns failures into one line on stderr with a fix and an exit code
(2 for user errors, 1 for failures), and shows the traceback only with --debug."""

from __future__ import annotations

import json

import pytest
from _tiny import write_tiny_config

from nnprefine.cli import main
from nnprefine.errors import ConfigError


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_empty_config_is_a_user_error_in_one_line(tmp_path, capsys):
    config = tmp_path / "empty.toml"
    config.write_text("")
    assert main(["status", str(config)]) == 2
    assert "examples/" in _one_line(capsys.readouterr().err)


def test_bad_json_for_the_reference_is_a_user_error(capsys):
    assert main(["check-reference", "--reference", "{kind: snap"]) == 2
    assert "not valid JSON" in _one_line(capsys.readouterr().err)


def test_a_damaged_results_database_is_named_with_the_way_to_rebuild(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.db").write_bytes(b"this is not a database " * 100)
    assert main(["status", str(config)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "damaged or not SQLite" in line and "rerun" in line


def test_an_output_dir_that_cannot_be_created_says_so(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output folder's parent should be
    config = tmp_path / "c.toml"
    config.write_text(write_tiny_config(tmp_path).read_text().replace(
        str(tmp_path / "out"), str(blocker / "out")
    ))  # fmt: skip
    assert main(["init", str(config)]) == 1
    assert str(blocker) in _one_line(capsys.readouterr().err)


def test_debug_shows_the_exception_itself(tmp_path):
    config = tmp_path / "empty.toml"
    config.write_text("")
    with pytest.raises(ConfigError):
        main(["--debug", "status", str(config)])


def test_import_stores_labelled_frames_skips_duplicates_and_reports_bad_ones(tmp_path, capsys):
    import sqlite3
    from contextlib import closing

    import numpy as np
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    from nnprefine.dataset import write_extxyz, write_n2p2_data

    frames = []
    for k in range(4):
        a = bulk("Be", "hcp", a=2.24, c=3.6) * (2, 2, 1)
        a.rattle(0.05, seed=k)
        a.calc = SinglePointCalculator(
            a, energy=-3.0 * len(a) + 0.1 * k, forces=a.positions * 0.0 + k
        )
        frames.append(a)
    bad = frames[3].copy()
    bad.numbers[0] = 74  # an element the project does not hold
    bad.calc = SinglePointCalculator(bad, energy=-1.0, forces=np.zeros((len(bad), 3)))
    write_extxyz(tmp_path / "set.extxyz", [*frames[:3], bad])
    write_n2p2_data(tmp_path / "input.data", frames[2:])  # frame 2 again, and frame 3
    config = write_tiny_config(tmp_path)
    assert (
        main(["import", str(config), str(tmp_path / "set.extxyz"), str(tmp_path / "input.data")])
        == 0
    )
    captured = capsys.readouterr()
    assert "4 frames stored" in captured.out and "1 already there, 1 rejected" in captured.out
    assert "set.extxyz:3:" in captured.err
    with closing(sqlite3.connect(tmp_path / "out" / "data.db")) as con:
        rows = con.execute("SELECT origin, selection FROM frames ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["import"] * 4
    assert json.loads(rows[1][1])["index"] == 1 and "set.extxyz" in rows[1][1]
    # a second import of the same files stores nothing new
    assert main(["import", str(config), str(tmp_path / "set.extxyz")]) == 0
    assert "0 frames stored" in capsys.readouterr().out


def test_a_binary_file_given_as_input_data_is_named(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    (tmp_path / "input.data").write_bytes(bytes(range(256)) * 4)
    assert main(["import", str(config), str(tmp_path / "input.data")]) == 1
    assert "is not a text file" in _one_line(capsys.readouterr().err)


def test_an_ase_db_in_other_units_imports_converted_and_trains(tmp_path, capsys):
    """ASE db of SNAP labels written in Hartree and Bohr: `import` with the units stores
    eV and Å (the same numbers SNAP gives, and the units in each frame's provenance), and a
    member trains on the imported frames."""
    import sqlite3
    from contextlib import closing

    import numpy as np
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.db import connect
    from ase.units import Bohr, Hartree

    from nnprefine.config import load_config
    from nnprefine.dataset import FrameStore
    from nnprefine.model import NNPotential
    from nnprefine.reference import SnapReference
    from nnprefine.training import TrainingSettings, train

    snap, truth = SnapReference(), []
    with connect(tmp_path / "set.db") as db:
        for k in range(6):
            a = bulk("Be", "hcp", a=2.24, c=3.6) * (2, 2, 2)
            a.rattle(0.05, seed=k)
            a.calc = snap
            e, f = a.get_potential_energy(), a.get_forces()
            truth.append((e, f, a.positions.copy()))
            b = a.copy()
            b.set_cell(a.cell / Bohr, scale_atoms=True)  # positions and cell in Bohr
            b.calc = SinglePointCalculator(b, energy=e / Hartree, forces=f / Hartree * Bohr)
            db.write(b)
    config = write_tiny_config(tmp_path)
    argv = ["import", str(config), str(tmp_path / "set.db"), "--energy-unit-eV", str(Hartree)]
    assert main([*argv, "--length-unit-A", str(Bohr)]) == 0
    assert "6 frames stored" in capsys.readouterr().out
    with closing(sqlite3.connect(tmp_path / "out" / "data.db")) as con:
        prov = [json.loads(r[0]) for r in con.execute("SELECT selection FROM frames ORDER BY id")]
    assert prov[0]["energy_unit_eV"] == pytest.approx(Hartree) and "set.db" in prov[0]["file"]
    cfg = load_config(config)
    with FrameStore(tmp_path / "out" / "data.db", elements=cfg.elements) as store:
        frames = store.frames(split="train") + store.frames(split="test")
    assert len(frames) == 6
    by_energy = sorted(frames, key=lambda a: a.get_potential_energy())
    for a, (e, f, pos) in zip(by_energy, sorted(truth, key=lambda t: t[0]), strict=True):
        assert a.get_potential_energy() == pytest.approx(e, abs=1e-8)
        np.testing.assert_allclose(a.get_forces(), f, atol=1e-8)
        np.testing.assert_allclose(a.positions, pos, atol=1e-8)
    pot = NNPotential(cfg.descriptor.symmetry_functions(cfg.elements), hidden=(6,), seed=1)
    settings = TrainingSettings(optimizer="adam", epochs=3, quiet=True, patience_epochs=3)
    history = train(pot, frames[:5], frames[5:], settings)
    assert len(history.rows) == 3 and all(np.isfinite(list(r.values())).all() for r in history.rows)
