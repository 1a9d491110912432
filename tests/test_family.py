"""Instance families (``[family]``): instances that differ in optimizer, width, data and task, each trained under its
own variant, with a method's overrides winning over the variant."""

import json
import tomllib
from dataclasses import asdict

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import rlsched  # noqa: F401  (registers the env ids)
from rlsched.config import ConfigError, config_from_dict, config_to_toml, load_config, with_overrides
from rlsched.control.env import Instance, UNetLREnv, instance_config, make_instances
from rlsched.experiment import jobs
from rlsched.experiment.harness import EpisodeResult, ScheduleController, run_episode
from rlsched.experiment.jobs import run_jobs
from rlsched.experiment.kinds import method_job
from rlsched.experiment.kinds.nnunet import NNUNET
from rlsched.fixed import main as fixed_main

# 16x16 images, 2-epoch budgets: every episode well under a second
TINY = {
    "data.image_size": 16,
    "data.n_train": 32,
    "data.n_val": 8,
    "data.n_test": 8,
    "env.epochs": 2,
    "env.train_instances": 12,
    "env.heldout_instances": 3,
}
FAMILY = {
    "optimizer": [
        {"optim.name": "sgd", "optim.momentum": 0.9},
        {"optim": {"name": "adam"}},
    ],  # both TOML spellings
    "width": [{"model.base_width": 4}, {"model.base_width": 8}],
    "task": [{"data.task": "binary"}, {"data.task": "multiclass", "data.classes": 2, "data.noise": 0.1}],
}
TOML_FAMILY = """
[family]
optimizer = [{ "optim.name" = "sgd", "optim.momentum" = 0.9 }, { optim.name = "adam" }]
width = [{ "model.base_width" = 4 }, { "model.base_width" = 8 }]
task = [{ "data.task" = "binary" }, { "data.task" = "multiclass", "data.classes" = 2, "data.noise" = 0.1 }]
"""


@pytest.fixture(scope="module")
def config():
    return load_config("fast", {**TINY, "family": FAMILY})


def tiny_family_preset(tmp_path, family: str = TOML_FAMILY):
    path = tmp_path / "tiny-family.toml"
    path.write_text(
        "[data]\nimage_size = 16\nn_train = 32\nn_val = 8\nn_test = 8\n[model]\ndepth = 2\n"
        'norm = "none"\n[env]\nepochs = 2\ntrain_instances = 4\nheldout_instances = 2\n' + family
    )
    return path


def option(config, axis: str, index: int):
    return next(a for a in config.family if a.name == axis).options[index]


def test_each_instance_draws_one_option_per_axis_deterministically(config):
    train = make_instances(config, "train")
    assert train == make_instances(
        load_config("fast", {**TINY, "family": FAMILY}), "train"
    )  # fixed by the preset
    for axis in config.family:
        seen = {o for o in axis.options for i in train if set(o) <= set(i.variant)}
        assert len(seen) == len(axis.options), f"12 instances should cover both {axis.name} options"
    for instance in train:
        parts = [next(o for o in a.options if set(o) <= set(instance.variant)) for a in config.family]
        assert instance.variant == tuple(pair for o in parts for pair in o)
    assert len({i.variant for i in train}) > 2


def test_a_family_leaves_seeds_and_initial_lrs_unchanged(config):
    """Variants come from their own seed stream: the instances of a preset without family are those published."""
    plain = load_config("fast", TINY)
    for split in ("train", "heldout"):
        assert [(i.data_seed, i.init_seed, i.initial_lr) for i in make_instances(config, split)] == [
            (i.data_seed, i.init_seed, i.initial_lr) for i in make_instances(plain, split)
        ]
    heldout = make_instances(load_config("fast"), "heldout")
    assert heldout[0] == Instance("heldout", 0, 995326737, 880480477, pytest.approx(0.013209942215439344))
    assert all(i.variant == () for i in heldout)


def test_the_env_trains_each_instance_under_its_variant(config):
    env = UNetLREnv(config=config)
    for index, instance in enumerate(env.instances["train"][:6]):
        env.reset(options={"split": "train", "instance": index})
        trained = env.trainer.config
        assert trained == instance_config(config, instance) and not trained.family
        adam = option(config, "optimizer", 1)[0] in instance.variant
        assert type(env.trainer.optimizer) is (torch.optim.Adam if adam else torch.optim.SGD)
        multiclass = option(config, "task", 1)[0] in instance.variant
        assert env.trainer.model(torch.zeros(1, 1, 16, 16)).shape[1] == (3 if multiclass else 1)
        assert int(env.trainer.train_masks.max()) <= (2 if multiclass else 1)
        assert trained.model.base_width == (4 if ("model.base_width", "4") in instance.variant else 8)
        assert env.config == config  # the env's own config is the preset's: methods check it
    assert env.observation_space.shape == UNetLREnv(config=load_config("fast", TINY)).observation_space.shape


def test_the_data_cache_tells_data_options_apart(config):
    env = UNetLREnv(config=config)
    binary, multiclass = (
        instance_config(config, Instance("train", 0, 7, 0, 0.01, option(config, "task", i))).data
        for i in (0, 1)
    )
    assert env._data(7, binary) is env._data(7, binary)
    assert int(env._data(7, multiclass).train_masks.max()) == 2 != int(env._data(7, binary).train_masks.max())


def test_a_methods_overrides_win_over_the_variant(config):
    """nnU-Net's SGD with Nesterov momentum trains even on an instance whose variant says Adam."""
    adam = next(i for i in make_instances(config, "train") if ("optim.name", '"adam"') in i.variant)
    assert instance_config(config, adam, NNUNET).optim.name == "sgd"
    assert instance_config(config, adam).optim.name == "adam"
    job = method_job(config, "nnunet", "", "nnU-Net", adam)
    (result,) = run_jobs(config, [job])
    env = jobs._worker_env(job.overrides)
    group = env.trainer.optimizer.param_groups[0]
    assert type(env.trainer.optimizer) is torch.optim.SGD and group["momentum"] == 0.99 and group["nesterov"]
    assert (
        env.trainer.config.model.base_width == instance_config(config, adam).model.base_width
    )  # the rest stays
    assert env.config == with_overrides(config, job.overrides) and result.instance == adam


@pytest.mark.parametrize(
    "family, message",
    [
        ({"optimizer": []}, r"\[family\] optimizer: an axis needs a non-empty list of options"),
        ({"optimizer": "adam"}, "an axis needs a non-empty list"),
        ({"optimizer": ["adam"]}, r"optimizer option 1: 'adam' is not a table; write an inline table"),
        (
            {"optimizer": [{"optim.nmae": "adam"}]},
            r"optimizer option 1 \{optim.nmae = \"adam\"\} \[optim\]: unknown key "
            r"'nmae'. Did you mean 'name'",
        ),
        ({"optimizer": [{"optim.name": "rmsprop"}]}, r"optimizer option 1 .*name='rmsprop': use one of"),
        ({"width": [{"model.base_width": "wide"}]}, r"width option 1 .*expected an integer"),
        (
            {"budget": [{"env.epochs": 4}]},
            r"budget option 1: 'env.epochs' is an env setting; every instance of a "
            "family shares the observation and action spaces and the epoch budget",
        ),
        ({"x": [{"name": "a"}]}, r"x option 1: key 'name' names no setting; write section.key"),
        (
            {"a": [{"data.task": "binary"}], "b": [{"data.task": "multiclass"}]},
            "axes 'a' and 'b' both set 'data.task'",
        ),
        (
            {"task": [{"data.task": "binary"}], "classes": [{"data.classes": 2}]},
            r"classes option 1 \{data.classes = 2\} \[data\]: \[data\] classes=2 with task='binary'",
        ),
    ],
)
def test_bad_families_are_rejected_naming_axis_option_and_fix(family, message):
    with pytest.raises(ConfigError, match=message):
        load_config("fast", {"family": family})


def test_options_valid_only_together_are_accepted_and_errors_name_the_file(tmp_path):
    config = load_config(
        "fast",
        {
            "family": {
                "task": [{"data.task": "multiclass"}],
                "classes": [{"data.classes": 2}, {"data.classes": 3}],
            }
        },
    )
    assert {instance_config(config, i).data.classes for i in make_instances(config, "train")} == {2, 3}
    path = tiny_family_preset(tmp_path, '[family]\noptimizer = [{ "optim.lr" = -1.0 }]\n')
    with pytest.raises(ConfigError, match=r"tiny-family.toml \[family\] optimizer option 1 .*lr must be > 0"):
        load_config(path)


def test_family_round_trips_through_toml_and_overrides_replace_an_axis(tmp_path, config):
    text = config_to_toml(config)
    assert config_from_dict(tomllib.loads(text)) == config
    assert "[family]" not in config_to_toml(load_config("fast", TINY))  # no family: the text of before
    from_file = load_config(tiny_family_preset(tmp_path))
    assert from_file.family == config.family
    shipped = load_config("family")
    narrowed = load_config("family", {"family": {"optimizer": [{"optim.name": "adam"}]}})
    assert [a.name for a in narrowed.family] == [a.name for a in shipped.family]
    assert (
        option(narrowed, "optimizer", 0) == (("optim.name", '"adam"'),)
        and narrowed.family[1:] == shipped.family[1:]
    )


def test_an_episode_with_a_variant_round_trips_through_a_journal(config):
    instance = make_instances(config, "heldout")[0]
    env = UNetLREnv(config=config)
    result = run_episode(env, ScheduleController("constant"), instance)
    back = EpisodeResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.instance == instance and hash(back.instance) == hash(instance)
    assert isinstance(back.instance.variant, tuple) and all(
        isinstance(p, tuple) for p in back.instance.variant
    )
    assert Instance(**json.loads(json.dumps(asdict(instance)))) == instance
    assert run_episode(env, ScheduleController("constant"), back.instance).final_dice == result.final_dice


def test_a_family_preset_passes_gymnasiums_env_checker(tmp_path):
    env = gym.make("rlsched/UNetLR-v0", preset=str(tiny_family_preset(tmp_path)))
    check_env(env.unwrapped, skip_render_check=True)
    assert gym.make("rlsched/UNetLR-v0", preset="family").unwrapped.config.family


def test_fixed_refuses_a_family_preset(capsys):
    with pytest.raises(SystemExit):
        fixed_main(["--preset", "family"])
    assert "has a [family]" in capsys.readouterr().err
