"""Config loading is strict: each error class gets one clear message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnprefine.config import config_from_dict, load_config
from nnprefine.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"projekt": {}}, r"unknown key 'projekt'; did you mean 'project'\?"),
        (
            {"training": {"learning_rte": 0.1}},
            r"training.learning_rte'; did you mean 'learning_rate'",
        ),
        ({"training": {"epochs": 1.5}}, r"training.epochs must be an integer"),
        ({"training": {"epochs": "10"}}, r"training.epochs must be an integer"),
        ({"training": {"force_weight": True}}, r"training.force_weight must be a number"),
        ({"training": {"epochs": -1}}, r"training.epochs = -1 is not allowed: 1 or more"),
        ({"initial_data": {"runs_per_energy": -3}}, r"initial_data.runs_per_energy = -3"),
        (
            {"refine": {"thresholds": [{"force_eV_per_A": -1.0}]}},
            r"refine.thresholds\[0\].force_eV_per_A",
        ),
        ({"refine": {"thresholds": []}}, r"refine.thresholds"),
        ({"network": {"hidden": [30, 0]}}, r"network.hidden"),
        ({"network": {"committee_size": 1}}, r"network.committee_size = 1"),
        ({"production": [{"slab": {"surface": "111"}}]}, r"production\[0\].slab.surface = '111'"),
        ({"production": [{"energies_eV": "100"}]}, r"production\[0\].energies_eV must be a list"),
        ({"reference": {"calculator": "gpaw"}}, r"reference.calculator"),
        ({"executor": {"kind": "slurm"}}, r"executor.kind = 'slurm'"),
        ({"training": {"kalman_type": "ekf"}}, r"training.kalman_type = 'ekf'"),
        ({"training": {"jacobian_cache_GiB": -1}}, r"training.jacobian_cache_GiB = -1"),
        (
            {"production": [{"target_error": 0.01}]},
            r"production\[0\].max_trajectories_per_energy = None .* when target_error is set",
        ),
        ({"production": [{"target_error": -0.01}]}, r"production\[0\].target_error = -0.01"),
        ({"production": [{"heat_sink": "nose"}]}, r"production\[0\].heat_sink = 'nose'"),
        ({"project": {"element": "Xx"}}, r"project.element"),
        (
            {"initial_data": {"slab": {"size": [2, 2, 6]}}},
            r"initial_data.slab.size = \[2, 2, 6\] gives a surface cell .* less than descriptor.r_cut_A",
        ),
    ],
)
def test_each_error_names_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_defaults_follow_the_paper():
    config = config_from_dict({})
    assert config.network.hidden == (30, 30) and config.network.activation == "softplus"
    assert config.training.optimizer == "kalman"  # the paper's n2p2 filter
    assert config.descriptor.r_cut_A == 7.0
    assert config.refine.thresholds_for(0).energy_meV_per_atom == 20.0
    assert config.refine.thresholds_for(1).force_eV_per_A == 0.8
    assert config.refine.thresholds_for(7).force_eV_per_A == 0.8
    assert config.production[0].slab.size == (7, 7, 10)
    assert config.production[0].timestep_fs == 0.2


def test_relative_output_dir_resolves_against_config_folder(tmp_path):
    path = tmp_path / "sub" / "c.toml"
    path.parent.mkdir()
    path.write_text('[project]\noutput_dir = "out"\n')
    assert load_config(path).output_dir == (tmp_path / "sub" / "out").resolve()


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[project\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_shipped_examples_load(name):
    load_config(EXAMPLES / name)
