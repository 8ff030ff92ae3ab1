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
        (
            {"training": {"epochs": -1}},
            r"training.epochs = -1 is not allowed: epochs must be at least 1",
        ),
        ({"initial_data": {"runs_per_energy": -3}}, r"initial_data.runs_per_energy = -3"),
        (
            {"refine": {"thresholds": [{"energy_meV_per_atom": 20.0, "force_eV_per_A": -1.0}]}},
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
        (
            {"production": [{"refine_on_flags": True, "watch_interval": 0}]},
            r"production\[0\].watch_interval = 0 .* refine_on_flags = true",
        ),
        (
            {"production": [{"refine_on_flags": True, "repair_frames": 0}]},
            r"production\[0\].repair_frames = 0",
        ),
        (
            {"production": [{"transfer_trajectories": 5}]},
            r"production\[0\].transfer_trajectories = 5 .* refine.second_surface_slab",
        ),
        (
            {"production": [{"watch_flag_fraction": 1.5}]},
            r"production\[0\].watch_flag_fraction = 1.5",
        ),
        ({"project": {"element": "Xx"}}, r"project.element"),
        ({"project": {"projectile": "Qq"}}, r"project.projectile = 'Qq'"),
        ({"project": {"elements": ["Be", "Zz"]}}, r"project.elements\[1\] = 'Zz'"),
        (
            {"structures": {"crystal": "bcc"}},
            r"initial_data.slab.surface = '0001' is not allowed: a bcc surface: '100' or '110'"
            r".*structures.crystal",
        ),
        ({"structures": {"crystal": "diamond"}}, r"structures.crystal = 'diamond'"),
        ({"production": [{"polar_deg": 95.0}]}, r"production\[0\].polar_deg = 95.0"),
        ({"refine": {"exploration_polar_deg": -5.0}}, r"refine.exploration_polar_deg = -5.0"),
        ({"production": [{"projectile": "Bee"}]}, r"production\[0\].projectile = 'Bee'"),
        ({"production": [{"projectile": "X"}]}, r"production\[0\].projectile = 'X'"),
        (
            {"production": [{"projectile": "W"}], "descriptor": {"preset": "generated"}},
            r"production\[0\].projectile = 'W' is not allowed: an element the training data "
            r"holds: .* shoot Be; set initial_data.projectile",
        ),
        (
            {"project": {"projectile": "W"}, "descriptor": {"preset": "paper"}},
            r"preset = 'paper' is the paper's one-element set; the project has Be, W",
        ),
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
    assert config.training.settings.optimizer == "kalman"  # the paper's n2p2 filter
    assert config.descriptor.r_cut_A == 7.0
    assert config.refine.thresholds_for(0).energy_meV_per_atom == 20.0
    assert config.refine.thresholds_for(1).force_eV_per_A == 0.8
    assert config.refine.thresholds_for(7).force_eV_per_A == 0.8
    assert config.production[0].slab.size == (7, 7, 10)
    assert config.production[0].impact.timestep_fs == 0.2


def test_relative_output_dir_resolves_against_config_folder(tmp_path):
    path = tmp_path / "sub" / "c.toml"
    path.parent.mkdir()
    path.write_text('[project]\noutput_dir = "out"\n[reference]\n[refine]\nmax_iterations = 0\n')
    assert load_config(path).output_dir == (tmp_path / "sub" / "out").resolve()


def test_refinement_without_thresholds_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[project]\noutput_dir = "out"\n[reference]\n')
    with pytest.raises(ConfigError, match="no \\[\\[refine.thresholds\\]\\]"):
        load_config(path)


def test_a_config_without_reference_table_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[project]\noutput_dir = "out"\n')
    with pytest.raises(ConfigError, match="no \\[reference\\] table"):
        load_config(path)


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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # training: TrainingSettings' own checks, under its own field names
        ({"training": {"kalman_force_fraction": 2.0}}, r"training.kalman_force_fraction = 2.0"),
        ({"training": {"learning_rate_schedule": "cosine"}}, r"training.learning_rate_schedule"),
        ({"training": {"scaling_mode": "minmax"}}, r"training.scaling_mode = 'minmax'"),
        # production impacts: ImpactSettings
        ({"production": [{"early_stop": "maybe"}]}, r"production\[0\].early_stop = 'maybe'"),
        ({"production": [{"min_distance_A": 0.0}]}, r"production\[0\].min_distance_A = 0.0"),
        # exploration impacts: ImpactSettings under the exploration_ prefix
        ({"refine": {"exploration_timestep_fs": -0.5}}, r"refine.exploration_timestep_fs = -0.5"),
        # reference-driven impacts of the initial data: ImpactSettings
        ({"initial_data": {"max_energy_drift_eV": 0.0}}, r"initial_data.max_energy_drift_eV = 0.0"),
        # selection: SelectionSettings, named by the TOML keys
        (
            {"refine": {"thresholds": [{"energy_meV_per_atom": 20.0, "force_eV_per_A": -1.0}]}},
            r"refine.thresholds\[0\].force_eV_per_A",
        ),
        ({"refine": {"max_selected_per_iteration": -1}}, r"refine.max_selected_per_iteration"),
        # descriptor: the symmetry-function set is built at load
        ({"descriptor": {"preset": "generated", "n_radial": -1}}, r"descriptor.n_radial = -1"),
        # network: only activations the model has
        ({"network": {"activation": "silu"}}, r"network.activation = 'silu'"),
    ],
)
def test_a_value_the_domain_rejects_fails_at_load_naming_its_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


@pytest.mark.parametrize(
    ("key", "new"),
    [
        ("batch_size", "batch_size_frames"),
        ("force_fraction", "kalman_force_fraction"),
        ("early_stopping_patience", "patience_epochs"),
    ],
)
def test_renamed_training_keys_say_their_new_name(key, new):
    with pytest.raises(ConfigError, match=f"training.{key}' was renamed .* {new}"):
        config_from_dict({"training": {key: 4}})


def test_domain_settings_are_built_at_load_with_the_toml_values():
    config = config_from_dict(
        {
            "structures": {"temperature_K": 450.0},
            "training": {
                "batch_size_frames": 3,
                "kalman_force_fraction": 0.1,
                "test_fraction": 0.2,
            },
            "refine": {"exploration_duration_fs": 12.0, "upper_trust_force_eV_per_A": 7.0},
            "production": [{"adaptive": {}, "early_stop": "shadow", "heat_sink": "langevin"}],
        }
    )
    from nnprefine.impact import ImpactSettings
    from nnprefine.md import AdaptiveTimestep
    from nnprefine.training import TrainingSettings

    t = config.training.settings
    assert isinstance(t, TrainingSettings)
    assert (t.batch_size_frames, t.kalman_force_fraction) == (3, 0.1)
    assert config.training.test_fraction == 0.2
    impact = config.production[0].impact
    assert isinstance(impact, ImpactSettings) and isinstance(impact.adaptive, AdaptiveTimestep)
    assert impact.heat_sink_temperature_K == 450.0  # structures.temperature_K, copied at load
    assert config.refine.exploration.duration_fs == 12.0
    assert config.refine.exploration.max_extensions == 0
    assert config.refine.selection(0).upper_trust_force_eV_per_A == 7.0
    assert config.refine.selection(0).energy_threshold_eV_per_atom == pytest.approx(0.020)


def test_recorded_config_loads_back_to_the_same_config():
    from nnprefine.config import config_to_dict

    config = load_config(EXAMPLES / "be0001-quick.toml")
    data = config_to_dict(config)
    assert "batch_size_frames" in data["training"] and "settings" not in data["training"]
    again = config_from_dict(data, base_dir=config.base_dir)
    assert config_to_dict(again) == data


def test_a_be_projectile_on_tungsten_gives_both_elements_and_bcc_slabs():
    """Target W (bcc), Be ions: the model covers both, every impact section carries the
    projectile unless a campaign names its own, angles reach the impact settings."""
    config = config_from_dict(
        {
            "project": {"element": "W", "projectile": "Be"},
            "structures": {"crystal": "bcc", "a_A": 3.17},
            "descriptor": {"preset": "generated", "r_cut_A": 5.0},
            "production": [
                {"slab": {"surface": "110", "size": [2, 4, 6]}, "polar_deg": 60.0},
                {"slab": {"surface": "111", "size": [2, 2, 6]}, "projectile": "He"},
            ],
            "initial_data": {
                "slab": {"surface": "100", "size": [2, 2, 4]},
                "projectile": "Be",
                "energies_eV": [100.0],
            },
            "refine": {
                "exploration_polar_deg": 45.0,
                "exploration_azimuth_deg": 10.0,
                "exploration_projectile": "He",  # He ions reach the data through exploration
            },
        }
    )
    assert config.elements == ("Be", "He", "W")
    assert config.initial_data.impact.projectile == "Be"
    assert config.refine.exploration.projectile == "He"
    assert (config.refine.exploration.polar_deg, config.refine.exploration.azimuth_deg) == (
        45.0,
        10.0,
    )
    first, second = config.production
    assert (first.impact.projectile, first.impact.polar_deg, first.impact.azimuth_deg) == (
        "Be",
        60.0,
        None,  # a random azimuth per impact
    )
    assert second.impact.projectile == "He"
    assert first.slab.label == "W(110)-2x4x6" and first.slab.crystal == "bcc"
    assert set(config.descriptor.symmetry_functions(config.elements).elements) == {"Be", "He", "W"}


def test_slab_labels_name_the_project_element():
    config = config_from_dict({"project": {"element": "W"}})
    assert config.initial_data.slab.label.startswith("W(0001)")
    with pytest.raises(ConfigError, match="unknown key 'initial_data.slab.element'"):
        config_from_dict({"initial_data": {"slab": {"element": "W"}}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"production": [{"duration_fs": float("inf")}]}, r"production\[0\].duration_fs = inf"),
        ({"initial_data": {"energies_eV": [float("nan")]}}, r"initial_data.energies_eV\[0\]"),
        ({"reference": {"kwargs": {"cutoff": 5.0}}}, r"reference.kwargs .* built-in SNAP"),
    ],
)
def test_non_finite_numbers_and_settings_the_builtin_reference_lacks_fail_at_load(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_an_empty_config_file_points_at_the_examples(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="empty.*examples/be0001-quick.toml"):
        load_config(path)


def test_a_thresholds_table_needs_both_of_its_keys():
    partial = {"refine": {"thresholds": [{"energy_meV_per_atom": 20.0}]}}
    with pytest.raises(ConfigError, match=r"refine.thresholds\[0\] needs force_eV_per_A"):
        config_from_dict(partial)


def test_production_slab_frames_need_the_reference_prepared_production_slab():
    data = {
        "structures": {"production_slab_driver": "model"},
        "initial_data": {"production_slab_snapshots": 5},
    }
    with pytest.raises(ConfigError, match="initial_data.production_slab_snapshots = 5"):
        config_from_dict(data)
