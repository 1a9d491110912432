import tomllib

import pytest

from rlsched.config import (
    Config,
    ConfigError,
    available_presets,
    config_from_dict,
    config_to_toml,
    load_config,
    parse_override,
    resolve_preset,
)


def test_default_config_is_valid_and_roundtrips_through_toml():
    config = Config()
    assert config_from_dict(tomllib.loads(config_to_toml(config))) == config


@pytest.mark.parametrize(
    "text", ["two\nlines", 'a "quoted" \\ back\tslash', "ünïcödé ✓ 画像", "\x7f control"]
)
def test_strings_with_newlines_quotes_and_unicode_roundtrip_through_toml(text, tmp_path):
    config = Config(description=text, family=load_config("family").family)
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config), encoding="utf-8")
    assert load_config(path) == config
    assert config_from_dict(tomllib.loads(config_to_toml(config))) == config


@pytest.mark.parametrize("name", available_presets())
def test_every_shipped_preset_loads_and_roundtrips(name):
    config = load_config(name)
    assert config.name == name  # each shipped preset names itself after its file
    assert config_from_dict(tomllib.loads(config_to_toml(config))) == config


def test_a_preset_without_a_name_is_named_after_its_file(tmp_path):
    path = tmp_path / "my-run.toml"
    path.write_text("[env]\nepochs = 4\n")
    assert load_config(path).name == "my-run"
    path.write_text('name = "other"\n')
    assert load_config(path).name == "other"


def test_unknown_key_names_the_key_and_suggests_the_fix(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[data]\nimage_sise = 32\n")
    with pytest.raises(
        ConfigError, match=r"bad.toml \[data\]: unknown key 'image_sise'. Did you mean 'image_size'"
    ):
        load_config(path)


def test_unknown_section_is_rejected(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optimiser]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match="unknown section or key 'optimiser'. Did you mean 'optim'"):
        load_config(path)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("data", "task", "segmentation", "task='segmentation'"),
        ("data", "image_size", "64", "expected an integer"),
        ("data", "n_test", 0, "n_train, n_val and n_test must be >= 1"),
        ("data", "test_fraction", 0.0, r"test_fraction=0.0: each must lie in \(0, 1\)"),
        ("env", "lr_min", 1.0, "lr_min < lr_max"),
        ("env", "epochs", 10, "not a multiple of epochs_per_step"),
        ("optim", "name", "rmsprop", "name='rmsprop'"),
        ("model", "norm", "layer", "norm='layer'"),
        ("penalty", "divergence", -1.0, "divergence must be >= 0"),
        ("env", "on_divergence", "retry", r"on_divergence='retry': use one of \('end', 'rollback'\)"),
        ("env", "backoff_decades", 0.0, "backoff_decades must be > 0"),
        ("env", "loss_spike", 1.0, r"loss_spike must be 0 \(off\) or > 1"),
        ("env", "val_spike", 0.5, r"val_spike must be 0 \(off\) or > 1"),
    ],
)
def test_bad_values_are_rejected_with_the_key(section, key, value, message):
    overrides = {section: {key: value}}
    if key == "epochs":
        overrides["env"]["epochs_per_step"] = 3
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_overrides_accept_dotted_and_nested_keys():
    config = load_config(overrides={"env.epochs": 6, "data": {"task": "multiclass", "classes": 3}})
    assert config.env.epochs == 6 and config.data.task == "multiclass" and config.data.out_channels == 4


def test_parse_override_reads_toml_values_and_bare_words():
    assert parse_override("env.epochs=8") == ("env.epochs", 8)
    assert parse_override("env.factors=[0.5, 1.0, 2.0]") == ("env.factors", [0.5, 1.0, 2.0])
    assert parse_override("data.task=multiclass") == ("data.task", "multiclass")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("epochs8")


def test_missing_preset_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="not found.*fast"):
        resolve_preset("no-such-preset")


def test_list_values_become_tuples_and_ints_floats(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[env]\nfactors = [1, 2]\nlr_max = 1\n")
    config = load_config(path)
    assert config.env.factors == (1.0, 2.0) and isinstance(config.env.lr_max, float)
