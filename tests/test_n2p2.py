"""n2p2 export/import: file formats and conventions, round trip, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from nnprefine.descriptors import make_set
from nnprefine.errors import ModelError
from nnprefine.model import InputScaling, NNPotential, ZBLBaseline
from nnprefine.n2p2 import read_n2p2, write_n2p2


@pytest.fixture(scope="module")
def model():
    sfset = make_set(["Be"], n_radial=4, n_narrow=2, n_wide=2, r_cut_A=4.5)
    pot = NNPotential(sfset, hidden=(5, 4), activation="softplus", seed=3)
    cells = [bulk("Be", "hcp", a=2.24, c=3.6).repeat((2, 2, 2)) for _ in range(3)]
    for k, c in enumerate(cells):
        c.rattle(0.1, seed=k)
    rows = np.concatenate([pot.descriptor.values(c) for c in cells])
    pot.scaling = InputScaling.from_values({"Be": rows}, mode="scalecenter", s_min=-1, s_max=1)
    pot.set_energy_offsets({"Be": -3.2782})
    return pot


def _atoms():
    atoms = bulk("Be", "hcp", a=2.24, c=3.6).repeat((2, 2, 2))
    atoms.rattle(0.07, seed=11)
    return atoms


def _content(path):
    return [
        ln.split("#", 1)[0].split()
        for ln in path.read_text().splitlines()
        if ln.split("#", 1)[0].strip()
    ]


def test_round_trip_gives_identical_predictions(model, tmp_path):
    write_n2p2(model, tmp_path)
    back = read_n2p2(tmp_path)
    atoms = _atoms()
    e, f = model.energy_forces(atoms)
    e2, f2 = back.energy_forces(atoms)
    assert e2 == pytest.approx(e, abs=1e-10)
    np.testing.assert_allclose(f2, f, atol=1e-10)
    assert back.energy_offsets_eV["Be"] == -3.2782


def test_files_follow_n2p2_conventions(model, tmp_path):
    write_n2p2(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "input.nn",
        "lammps.in",
        "scaling.data",
        "weights.004.data",
    ]
    keys = {p[0]: p[1:] for p in _content(tmp_path / "input.nn") if p[0] != "symfunction_short"}
    assert keys["cutoff_type"][:1] == ["1"]  # cosine cutoff
    assert keys["global_activation_short"] == ["p", "p", "l"]
    assert keys["global_nodes_short"] == ["5", "4"]
    assert keys["elements"] == ["Be"] and keys["atom_energy"] == ["Be", "-3.2782"]
    assert "scale_symmetry_functions" in keys and "center_symmetry_functions" in keys
    sf = [p for p in _content(tmp_path / "input.nn") if p[0] == "symfunction_short"]
    assert len(sf) == model.sfset.n_functions("Be")
    types = [int(p[2]) for p in sf]
    assert types == sorted(types)  # n2p2 orders radial (2) < narrow (3) < wide (9)

    scaling = np.array(_content(tmp_path / "scaling.data"), dtype=float)
    assert scaling.shape == (len(sf), 6)
    np.testing.assert_array_equal(scaling[:, 0], 1)
    np.testing.assert_array_equal(scaling[:, 1], np.arange(1, len(sf) + 1))
    assert np.all(scaling[:, 3] >= scaling[:, 2])  # max >= min

    w = _content(tmp_path / "weights.004.data")
    n_in = len(sf)
    assert len(w) == n_in * 5 + 5 + 5 * 4 + 4 + 4 + 1
    # first a(0,1 -> 1,1), a(0,1 -> 1,2) ...: start neuron outer, end neuron inner
    assert w[0][1:] == ["a", "1", "0", "1", "1", "1"] and w[1][1:] == ["a", "2", "0", "1", "1", "2"]
    assert w[n_in * 5][1:] == ["b", str(n_in * 5 + 1), "1", "1"]
    assert w[-1][1] == "b"


def test_n2p2_formula_reproduces_the_energy(model, tmp_path):
    """An independent evaluation from the written files, with n2p2's documented formulas:
    scaled G = Smin + (Smax − Smin)(G − Gmean)/(Gmax − Gmin), y = f(b + Σ a y)."""
    write_n2p2(model, tmp_path)
    atoms = _atoms()
    g = model.descriptor.values(atoms)
    ours = [
        " ".join(ln.split("#", 1)[0].split())
        for ln in model.sfset.to_n2p2_lines()
        if ln.split()[:1] == ["symfunction_short"]
    ]
    written = [" ".join(p) for p in _content(tmp_path / "input.nn") if p[0] == "symfunction_short"]
    columns = [ours.index(line) for line in written]
    g = g[:, columns]
    s = np.array(_content(tmp_path / "scaling.data"), dtype=float)
    x = -1 + 2 * (g - s[:, 4]) / (s[:, 3] - s[:, 2])
    values = np.array([float(p[0]) for p in _content(tmp_path / "weights.004.data")])
    h, pos = x, 0
    for k, (n_in, n_out) in enumerate([(len(written), 5), (5, 4), (4, 1)]):
        a = values[pos : pos + n_in * n_out].reshape(n_in, n_out)
        pos += n_in * n_out
        b = values[pos : pos + n_out]
        pos += n_out
        h = h @ a + b
        if k < 2:
            h = np.logaddexp(0.0, h)
    energy = h.sum() + len(atoms) * -3.2782
    assert energy == pytest.approx(model.energy(atoms), abs=1e-10)


def test_malformed_files_name_file_and_line(model, tmp_path):
    write_n2p2(model, tmp_path)
    path = tmp_path / "weights.004.data"
    lines = path.read_text().splitlines()
    bad_line = 5
    lines[bad_line - 1] = "  nonsense a 4 0 1 1 4"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ModelError, match=rf"weights\.004\.data, line {bad_line}"):
        read_n2p2(tmp_path)

    write_n2p2(model, tmp_path)
    inp = tmp_path / "input.nn"
    text = inp.read_text().splitlines()
    text.insert(3, "normalize_nodes")
    inp.write_text("\n".join(text) + "\n")
    with pytest.raises(ModelError, match=r"input\.nn, line 4: keyword 'normalize_nodes'"):
        read_n2p2(tmp_path)

    write_n2p2(model, tmp_path)
    path.write_text("\n".join(path.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(ModelError, match="weights.004.data, line .*needs"):
        read_n2p2(tmp_path)


def test_training_keywords_are_ignored_and_baseline_snippet(model, tmp_path):
    with_zbl = model.copy()
    with_zbl.baseline = ZBLBaseline(1.0, 2.0)
    write_n2p2(with_zbl, tmp_path)
    inp = tmp_path / "input.nn"
    inp.write_text(inp.read_text() + "epochs 60\nkalman_lambda_short 0.96\n")
    back = read_n2p2(tmp_path, baseline=ZBLBaseline(1.0, 2.0))
    atoms = _atoms()
    assert back.energy(atoms) == pytest.approx(with_zbl.energy(atoms), abs=1e-10)
    snippet = (tmp_path / "lammps.in").read_text()
    assert "hybrid/overlay hdnnp" in snippet and "zbl 1 2" in snippet
    assert "pair_coeff 1 1 zbl 4 4" in snippet
    # LAMMPS's hdnnp: cutoff on pair_style, then "* *" and one element per atom type
    style = next(line for line in snippet.splitlines() if line.startswith("pair_style"))
    assert style.split()[2:4] == ["hdnnp", f"{with_zbl.r_cut_A:g}"]
    assert style.split()[5].endswith("/")
    coeff = [line.split() for line in snippet.splitlines() if "* * hdnnp" in line]
    assert coeff == [["pair_coeff", "*", "*", "hdnnp", *with_zbl.elements]]


def test_a_model_without_baseline_gets_a_plain_hdnnp_snippet(model, tmp_path):
    assert model.baseline is None
    write_n2p2(model, tmp_path / "plain")
    lines = (tmp_path / "plain" / "lammps.in").read_text().splitlines()
    style = next(line.split() for line in lines if line.startswith("pair_style"))
    assert style[1:3] == ["hdnnp", f"{model.r_cut_A:g}"] and "zbl" not in style
    assert [line.split() for line in lines if line.startswith("pair_coeff")] == [
        ["pair_coeff", "*", "*", *model.elements]
    ]


@pytest.mark.parametrize(
    ("value", "ok"),
    [("0", True), ("2", True), ("2G-HDNNP", True), ("1", False), ("4G-HDNNP", False)],
)
def test_nnp_type_short_range_only(model, tmp_path, value, ok):
    """n2p2 ≤ 2.3 spells the short-range network 0 (1 adds a charge network), later
    versions 2 or 2G-HDNNP; the export writes no nnp_type, which all versions accept."""
    write_n2p2(model, tmp_path)
    inp = tmp_path / "input.nn"
    assert "nnp_type" not in [p[0] for p in _content(inp)]
    inp.write_text(inp.read_text() + f"nnp_type {value}\n")
    if ok:
        read_n2p2(tmp_path)
    else:
        with pytest.raises(ModelError, match=rf"input\.nn, line \d+: nnp_type {value}"):
            read_n2p2(tmp_path)
