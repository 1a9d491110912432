"""The test split never reaches a decision: replace every instance's test images and masks with garbage and
every observation, reward, chosen LR and tuning choice stays bit-identical; only the reported test Dice moves.
(PBT, which runs on Ray, is checked in tests/test_ray.py.) Plus the test Dice's own bookkeeping: scored once
at the episode's end, 0 after a divergence, carried through the journal."""

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from rlsched import compare
from rlsched.common.journal import Journal
from rlsched.config import load_config
from rlsched.control import env as env_module
from rlsched.control.env import UNetLREnv, make_instances
from rlsched.experiment.harness import (
    EpisodeResult,
    Job,
    PolicyController,
    RandomController,
    ScheduleController,
    ScriptedController,
    run_episode,
)
from rlsched.experiment.jobs import run_journaled
from rlsched.seg.trainer import Trainer

# as in tests/test_compare.py: 16x16 images, 2-epoch budgets, 2 held-out and 2 train instances, LRs in [0.01, 0.1]
TINY = {
    "data.image_size": 16,
    "data.n_train": 16,
    "data.n_val": 8,
    "data.n_test": 8,
    "env.epochs": 2,
    "env.heldout_instances": 2,
    "env.train_instances": 2,
    "env.initial_lr_min": 0.01,
    "env.initial_lr_max": 0.1,
}


@pytest.fixture(scope="module")
def config():
    return load_config("fast", TINY)


def poison(monkeypatch):
    """From now on every dataset the env builds has a test split of noise with inverted masks; its train and
    validation splits are untouched."""
    make_dataset = env_module.make_dataset

    def poisoned(cfg, seed):
        data = make_dataset(cfg, seed)
        noise = torch.from_numpy(np.random.default_rng(seed).normal(0, 5, data.test_images.shape)).float()
        return dataclasses.replace(data, test_images=noise, test_masks=1 - data.test_masks)

    monkeypatch.setattr(env_module, "make_dataset", poisoned)


class ObservationHash:
    """A stand-in policy whose every action depends on every bit of the observation it is shown."""

    def predict(self, obs, deterministic=True):
        return int(hashlib.sha256(np.asarray(obs, dtype=np.float32).tobytes()).hexdigest(), 16) % 5, None


class Watched:
    """A controller that notes every observation it is shown, then acts as ``inner`` does."""

    def __init__(self, inner, seen):
        self.inner, self.seen, self.name = inner, seen, inner.name

    def start(self, env, info):
        self.inner.start(env, info)

    def act(self, env, obs, info):
        self.seen.append(obs.tobytes())
        return self.inner.act(env, obs, info)


def episodes(config):
    """Every kind of controller on every held-out instance, and every observation they were shown."""
    env, seen = UNetLREnv(config=config), []
    controllers = [
        ScheduleController("plateau", 0.05),
        ScheduleController("cosine"),
        RandomController(seed=3),
        ScriptedController(0.05),
        PolicyController(ObservationHash()),
    ]
    results = [
        run_episode(env, Watched(controller, seen), instance)
        for instance in make_instances(config, "heldout")
        for controller in controllers
    ]
    return results, seen


def decisions(results):
    """What the controllers saw in ``info`` and chose (LRs), and the rewards; JSON so NaNs compare equal."""
    return json.dumps([(r.method, r.instance.index, r.total_reward, r.records) for r in results])


def test_garbage_in_the_test_split_changes_no_observation_reward_or_lr_only_the_test_dice(
    config, monkeypatch
):
    clean, clean_seen = episodes(config)
    poison(monkeypatch)
    dirty, dirty_seen = episodes(config)
    assert len(clean_seen) >= 20 and dirty_seen == clean_seen  # the observations, bit for bit
    assert decisions(dirty) == decisions(clean)
    moved = [a.test_dice != b.test_dice for a, b in zip(clean, dirty)]
    assert sum(moved) >= len(moved) - 2  # not all: a net that predicts nothing scores 0 on any test split


def test_garbage_in_the_test_split_changes_no_tuning_choice_only_the_test_columns(config, monkeypatch):
    settings = compare.Settings(
        schedules=("constant", "plateau", "scripted"),
        tune_instances=2,
        grid_per_decade=1,
        robustness=(10.0,),
        workers=1,
    )
    clean = compare.run_comparison(config, [], settings, progress=False)
    poison(monkeypatch)
    dirty = compare.run_comparison(config, [], settings, progress=False)
    assert dirty.tuning == clean.tuning and compare.best_fixed(dirty) == compare.best_fixed(clean)
    assert decisions(dirty.results) == decisions(clean.results)
    assert all(
        decisions(dirty.robustness[f][1]) == decisions(runs) for f, (_, runs) in clean.robustness.items()
    )
    rows = [compare.summarize(c) for c in (clean, dirty)]

    def decided(row):
        return {k: v for k, v in row.items() if not k.startswith(("test_dice", "seconds"))}

    assert [decided(row) for row in rows[0]] == [decided(row) for row in rows[1]]
    assert all(a["test_dice_mean"] != b["test_dice_mean"] for a, b in zip(*rows) if not a["diverged"])


def test_test_dice_is_scored_once_after_the_last_step(config, monkeypatch):
    reads = []
    evaluate = Trainer.evaluate

    def counting(self, split="val"):
        reads.append(split)
        return evaluate(self, split)

    monkeypatch.setattr(Trainer, "evaluate", counting)
    env = UNetLREnv(config=config)
    with pytest.raises(RuntimeError, match="finished episode"):
        env.evaluate_test()  # no episode yet
    instance = make_instances(config, "heldout")[0]
    env.reset(options={"instance": instance})
    env.step(env.keep_action)
    with pytest.raises(RuntimeError, match="step until terminated first"):
        env.evaluate_test()  # mid-episode: a controller must not peek
    _, _, terminated, _, _ = env.step(env.keep_action)
    assert terminated and "test" not in reads  # reset, two steps: validation only
    dice = env.evaluate_test()
    assert reads[-1] == "test" and reads.count("test") == 1
    assert dice == env.trainer.evaluate("test").dice_mean and 0 < dice < 1

    reads.clear()
    result = run_episode(env, ScheduleController("constant"), instance)
    assert reads == ["val", "val", "val", "test"] and result.test_dice == dice  # the same run, scored once


def test_a_diverged_episode_scores_test_dice_zero_without_evaluating(config, monkeypatch):
    reads = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(
        Trainer, "evaluate", lambda self, split="val": reads.append(split) or evaluate(self, split)
    )
    env = UNetLREnv(config=dataclasses.replace(config, env=dataclasses.replace(config.env, lr_max=1e4)))
    result = run_episode(
        env, ScheduleController("constant", base_lr=1e4), make_instances(config, "heldout")[0]
    )
    assert result.diverged and result.final_dice == 0.0 and result.test_dice == 0.0
    assert "test" not in reads


def test_undefined_test_dice_counts_as_zero(config, monkeypatch):
    """No foreground in the test split and none predicted: Dice is NaN, and counted_dice makes it 0."""
    evaluate = Trainer.evaluate
    monkeypatch.setattr(
        Trainer,
        "evaluate",
        lambda self, split="val": (
            dataclasses.replace(evaluate(self, split), dice_mean=math.nan)
            if split == "test"
            else evaluate(self, split)
        ),
    )
    env = UNetLREnv(config=config)
    result = run_episode(env, ScheduleController("constant"), make_instances(config, "heldout")[0])
    assert not result.diverged and result.final_dice > 0 and result.test_dice == 0.0


def test_test_dice_round_trips_through_the_journal(config, tmp_path):
    instance = make_instances(config, "heldout")[0]
    jobs = [
        Job("constant", "schedule", "constant", instance, base_lr=0.05),
        Job("cosine", "schedule", "cosine", instance),
    ]
    journal = Journal(tmp_path / "jobs.jsonl")
    ran, reused = run_journaled(config, jobs, journal)
    assert reused == 0 and all(0 < r.test_dice < 1 for r in ran)
    again, reused = run_journaled(config, jobs, Journal(tmp_path / "jobs.jsonl"))  # read back from disk
    assert reused == 2 and [r.test_dice for r in again] == [r.test_dice for r in ran]  # bit for bit
    assert [r.to_dict() for r in again] == [r.to_dict() for r in ran]


def test_an_episode_saved_before_test_splits_existed_is_refused_naming_the_fix(config):
    env = UNetLREnv(config=config)
    saved = run_episode(env, ScheduleController("constant"), make_instances(config, "heldout")[0]).to_dict()
    del saved["test_dice"]
    with pytest.raises(
        ValueError,
        match=r"'constant' episode on heldout instance 0 was saved before test "
        r"splits existed and has no test Dice: start a new comparison",
    ):
        EpisodeResult.from_dict(saved)
