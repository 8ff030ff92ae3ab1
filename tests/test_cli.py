"""The command line turns failures into one line on stderr with a fix and an exit code
(2 for user errors, 1 for failures), and shows the traceback only with --debug."""

from __future__ import annotations

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
