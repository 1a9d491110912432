"""The comparison methods practitioners use instead of a learned schedule: LR range test, tuning-free optimizers,
the nnU-Net recipe and an Optuna search, each through the same harness as the fixed schedules."""

import math
import sys

import pytest
import torch

from rlsched.config import ConfigError, load_config, with_overrides
from rlsched.control.env import UNetLREnv, make_instances
from rlsched.experiment import jobs
from rlsched.experiment.harness import Job, ScheduleController, run_episode
from rlsched.experiment.jobs import run_jobs
from rlsched.experiment.kinds import method_job
from rlsched.experiment.kinds.nnunet import NNUNET_LR
from rlsched.experiment.kinds.range_test import RangeTestController
from rlsched.seg.optimizers import OPTIMIZERS
from rlsched.seg.range_test import range_test, valley
from rlsched.seg.schedules import FixedSchedule
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer

# 16x16 images, 2 batches of 16 per epoch, 2-epoch budgets: every episode well under a second
TINY = {
    "data.image_size": 16,
    "data.n_train": 32,
    "data.n_val": 8,
    "env.epochs": 2,
    "env.train_instances": 3,
    "env.heldout_instances": 2,
}
BATCHES_PER_EPOCH = 2


def tiny(**overrides):
    return load_config("fast", {**TINY, **overrides})


@pytest.fixture(scope="module")
def config():
    return tiny()


@pytest.fixture(scope="module")
def data(config):
    return make_dataset(config.data, seed=3)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ---------------------------------------------------------------------- tuning-free optimizers in the trainer
def test_schedule_free_trains_at_y_and_leaves_the_weights_at_x_outside_training(config, data):
    pytest.importorskip("schedulefree")
    trainer = Trainer(tiny(**{"optim.name": "schedulefree_sgd"}), data, seed=0, lr=0.5)
    calls = []
    for mode in ("train", "eval"):
        method = getattr(trainer.optimizer, mode)
        setattr(trainer.optimizer, mode, lambda method=method, mode=mode: (calls.append(mode), method())[1])
    result = trainer.train_slice(trainer.lr, 1)  # without train() the optimizer's step raises
    assert calls == ["train", "eval"] and not result.diverged
    assert trainer.optimizer.param_groups[0]["train_mode"] is False
    x = params(trainer.model).clone()  # what evaluate() and state_dict() see
    trainer.optimizer.train()
    assert not torch.equal(params(trainer.model), x)  # y, the training point, differs


def test_schedule_free_recomputes_batch_norm_statistics_at_the_evaluation_point(config, data):
    pytest.importorskip("schedulefree")
    trainer = Trainer(tiny(**{"optim.name": "schedulefree_sgd", "model.norm": "batch"}), data, seed=0, lr=0.5)
    trainer.train_epoch()
    norm = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    got = norm.running_mean.clone()
    seen = []
    hook = norm.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].mean(dim=(0, 2, 3)))
    )
    with torch.no_grad():
        trainer.model.train()
        trainer.model(trainer.train_images)  # the whole training set at x, in one batch
    hook.remove()
    assert torch.allclose(got, seen[0], atol=1e-5)


def test_schedule_free_warms_up_over_two_percent_of_the_run(config, data):
    pytest.importorskip("schedulefree")
    trainer = Trainer(tiny(**{"optim.name": "schedulefree_adamw", "env.epochs": 100}), data, seed=0)
    assert trainer.optimizer.param_groups[0]["warmup_steps"] == int(0.02 * 100 * BATCHES_PER_EPOCH)


def test_a_missing_optimizer_package_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt now fails
    with pytest.raises(ConfigError, match=r'prodigyopt.*pip install -e "\.\[tuningfree\]"'):
        load_config("fast", {"optim.name": "prodigy"})


# ---------------------------------------------------------------------------------------------- LR range test
def test_range_test_leaves_the_trainer_as_it_was(config, data):
    """Sweeping first, then training, must equal training a fresh trainer: weights, optimizer, batch stream."""
    swept = Trainer(config, data, seed=0, lr=0.05)
    before = params(swept.model).clone()
    sweep = range_test(swept, 1e-4, 1.0, batches=7)  # 3.5 epochs of batches: crosses epoch boundaries
    assert sweep.batches == 7 and len(sweep.lrs) == 7  # it did train (the loss never exploded)
    assert torch.equal(params(swept.model), before) and swept.lr == 0.05 and swept.epoch == 0
    fresh = Trainer(config, data, seed=0, lr=0.05)
    for trainer in (swept, fresh):
        trainer.train_epoch()
        trainer.train_epoch()
    assert torch.equal(params(swept.model), params(fresh.model))
    assert torch.equal(swept.generator.get_state(), fresh.generator.get_state())


def test_range_test_sweeps_exponentially_and_suggests_an_lr_inside_the_sweep(config, data):
    sweep = range_test(Trainer(config, data, seed=0, lr=0.05), 1e-4, 1.0, batches=20)
    assert sweep.lrs[0] == pytest.approx(1e-4) and sweep.lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(sweep.lrs, sweep.lrs[1:])]
    assert ratios == pytest.approx([1e4 ** (1 / 19)] * 19)
    assert sweep.suggestion in sweep.lrs[2:-5]  # fastai drops the first tenth and the last five points
    assert sweep.batches == 20 and sweep.batches_per_epoch == BATCHES_PER_EPOCH and sweep.epochs == 10.0


def test_range_test_stops_when_the_loss_explodes(config, data):
    sweep = range_test(Trainer(config, data, seed=0, lr=0.05), 1e-2, 1e6, batches=40)
    assert sweep.batches < 40  # stopped early
    stopped_by_blow_up = len(sweep.lrs) < sweep.batches  # a non-finite loss is not recorded
    assert stopped_by_blow_up or sweep.losses[-1] > 4 * min(sweep.losses)
    assert all(loss <= 4 * min(sweep.losses[: i + 1]) for i, loss in enumerate(sweep.losses[:-1]))
    assert sweep.lrs[0] <= sweep.suggestion < sweep.lrs[-1]


def test_valley_is_halfway_into_the_longest_decreasing_stretch_by_fastais_arithmetic():
    flat, down, up = [1.0] * 10, [1.0 - 0.09 * k for k in range(1, 11)], [0.1 + 0.5 * k for k in range(1, 6)]
    # the longest decreasing subsequence: one flat point and the 10 falling ones, ending at index 19;
    # fastai: start = 19 - 11 = 8, third = 11 / 3, index = 8 + int(3.67) + int(1.83) = 12
    assert valley(flat + down + up) == 12
    assert valley([3.0, 2.0]) == 0  # fastai's arithmetic would give -1: clamped to the curve
    assert valley([1.0, 2.0, 3.0]) == 0  # no descent at all: the first point


def test_range_test_refuses_tuning_free_optimizers_and_bad_ranges(config, data):
    pytest.importorskip("prodigyopt")
    with pytest.raises(ValueError, match="sets its own step size"):
        range_test(Trainer(tiny(**{"optim.name": "prodigy"}), data, seed=0), 1e-4, 1.0)
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        range_test(Trainer(config, data, seed=0), 1.0, 1e-4)


# ---------------------------------------------------------------------------- method jobs through the harness
def records_without(records, *keys):
    return [{k: v for k, v in r.items() if k not in keys} for r in records]


def test_range_test_episode_trains_like_the_schedule_from_the_suggestion_and_reports_the_cost(config):
    env = UNetLREnv(config=config)
    instance = env.instances["train"][1]
    swept = run_episode(env, RangeTestController("onecycle", batches=9), instance)
    first = swept.records[0]
    assert (
        first["range_test_batches"] == 9
        and first["extra_epochs"] == swept.extra_epochs == 9 / BATCHES_PER_EPOCH
    )
    suggestion = first["range_test_lr"]
    assert config.env.lr_min <= suggestion <= config.env.lr_max
    planned = [
        max(lr, config.env.lr_min) for lr in FixedSchedule("onecycle", suggestion, 2).lrs()
    ]  # env clips
    assert [r["lr"] for r in swept.records[1:]] == pytest.approx(planned)
    plain = run_episode(env, ScheduleController("onecycle", suggestion), instance)  # no sweep before it
    assert (
        records_without(swept.records, "extra_epochs", "range_test_batches", "range_test_lr") == plain.records
    )
    assert plain.extra_epochs == 0.0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_tuning_free_optimizer_runs_an_episode_at_its_recommended_lr(config, name):
    spec = OPTIMIZERS[name]
    pytest.importorskip(spec.package)
    instance = make_instances(config, "train")[0]
    job = method_job(config, "optimizer", name, name, instance)
    (result,) = run_jobs(config, [job])
    assert result.method == name
    assert len(result.records) == 3 or result.diverged
    assert [r["lr"] for r in result.records[1:]] == [spec.lr] * (len(result.records) - 1)
    trainer = jobs._worker_env(job.overrides).trainer
    # the class itself, or one that wraps or extends it (Mechanic, DoG)
    assert spec.cls in {c.__name__ for c in type(trainer.optimizer).__mro__}
    assert trainer.config.optim.name == name
    if spec.momentum is not None:
        assert trainer.config.optim.momentum == spec.momentum


def test_an_lr_beyond_the_env_range_is_widened_not_clipped(config):
    pytest.importorskip("prodigyopt")
    narrow = with_overrides(config, (("env.lr_max", "0.5"),))
    job = method_job(narrow, "optimizer", "prodigy", "prodigy", make_instances(narrow, "train")[0])
    assert ("env.lr_max", "1.0") in job.overrides
    (result,) = run_jobs(narrow, [job])
    assert [r["lr"] for r in result.records[1:]] == [1.0, 1.0]


def test_an_optimizer_job_without_its_overrides_is_refused(config):
    pytest.importorskip("prodigyopt")
    job = Job("prodigy", "optimizer", "prodigy", make_instances(config, "train")[0])  # made by hand
    with pytest.raises(ValueError, match="method_job"):
        run_jobs(config, [job])


def test_nnunet_job_trains_sgd_nesterov_099_with_poly_09_from_1e_2(config):
    job = method_job(config, "nnunet", "", "nnU-Net", make_instances(config, "train")[0])
    (result,) = run_jobs(config, [job])
    optimizer = jobs._worker_env(job.overrides).trainer.optimizer
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.SGD and group["momentum"] == 0.99 and group["nesterov"] is True
    assert group["weight_decay"] == 3e-5 and jobs._worker_env(job.overrides).config.optim.grad_clip == 12.0
    steps = config.env.steps
    assert [r["lr"] for r in result.records[1:]] == pytest.approx(
        [NNUNET_LR * (1 - k / steps) ** 0.9 for k in range(steps)]
    )


def test_jobs_with_different_overrides_train_in_different_envs(config):
    instance = make_instances(config, "train")[0]
    nnunet = method_job(config, "nnunet", "", "nnU-Net", instance)
    plain = Job("poly", "schedule", "poly", instance, base_lr=NNUNET_LR)
    a, b = run_jobs(config, [nnunet, plain])
    assert jobs._worker_env(()).trainer.optimizer.param_groups[0]["momentum"] == config.optim.momentum == 0.9
    assert [r["lr"] for r in a.records] == [r["lr"] for r in b.records]  # the same schedule ...
    assert a.records[-1]["val_loss"] != b.records[-1]["val_loss"]  # ... under another optimizer
    with pytest.raises(ConfigError, match="momentum"):
        with_overrides(config, (("optim.momentum", "1.5"),))


def test_method_jobs_are_checked_before_anything_trains(monkeypatch, config):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)
    with pytest.raises(ConfigError, match="tuningfree"):
        method_job(config, "optimizer", "prodigy", "prodigy", make_instances(config, "train")[0])
    with pytest.raises(ValueError, match="unknown tuning-free optimizer 'adam'.*prodigy"):
        method_job(config, "optimizer", "adam", "adam", make_instances(config, "train")[0])
    instance = make_instances(config, "train")[0]
    with pytest.raises(ValueError, match="chooses the base LR itself"):
        method_job(config, "range_test", "onecycle", "rt", instance, base_lr=0.1)
    with pytest.raises(ValueError, match="unknown schedule 'bogus'"):
        method_job(config, "range_test", "bogus", "rt", instance)
    with pytest.raises(ValueError, match="unknown method kind 'swa'"):
        method_job(config, "swa", "", "swa", instance)


# ---------------------------------------------------------------------------------------------- Optuna search
@pytest.fixture(scope="module")
def optuna():
    module = pytest.importorskip("optuna")
    module.logging.set_verbosity(module.logging.WARNING)
    return module


def spy_on_instances(monkeypatch):
    splits = []
    reset = UNetLREnv.reset

    def recording(self, *, seed=None, options=None):
        splits.append(options["instance"].split)
        return reset(self, seed=seed, options=options)

    monkeypatch.setattr(UNetLREnv, "reset", recording)
    return splits


def test_search_spends_exactly_its_budget_on_train_instances_only(optuna, config, monkeypatch):
    from rlsched.experiment.search import search

    splits = spy_on_instances(monkeypatch)
    result = search(config, budget_epochs=9, instances=2, seed=0)
    assert splits and set(splits) == {"train"}
    # 4 epochs per full trial (2 instances x 2 epochs): two complete trials, the third stopped at the last
    # step the budget holds (MedianPruner prunes nothing before 5 complete trials)
    assert [t.state for t in result.trials] == ["complete", "complete", "budget"]
    assert [t.epochs for t in result.trials] == [4, 4, 1] and result.epochs_spent == 9
    best = max(result.trials[:2], key=lambda t: t.value)
    assert (result.schedule, result.base_lr, result.value) == (best.schedule, best.base_lr, best.value)
    low, high = config.env.initial_lr_min, config.env.initial_lr_max
    assert all(low <= t.base_lr <= high for t in result.trials)


def test_pruned_trials_count_the_epochs_they_trained(optuna, config):
    from rlsched.experiment.search import search

    class EveryOtherTrial(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number % 2 == 1

    result = search(config, budget_epochs=8, instances=1, seed=0, pruner=EveryOtherTrial())
    assert [t.state for t in result.trials] == ["complete", "pruned", "complete", "pruned", "complete"]
    assert [t.epochs for t in result.trials] == [2, 1, 2, 1, 2] and result.epochs_spent == 8
    assert all(math.isnan(t.value) for t in result.trials if t.state == "pruned")


def test_search_is_reproducible_and_refuses_held_out_instances(optuna, config):
    from rlsched.experiment.search import search

    first, second = (search(config, budget_epochs=6, schedules=("cosine", "step"), seed=3) for _ in range(2))
    assert first == second and {t.schedule for t in first.trials} <= {"cosine", "step"}
    with pytest.raises(ValueError, match="train instances only"):
        search(config, budget_epochs=6, instances=make_instances(config, "heldout")[:1])
    with pytest.raises(ValueError, match="does not cover one trial"):
        search(config, budget_epochs=3, instances=2)
    with pytest.raises(ValueError, match="unknown schedule"):
        search(config, budget_epochs=6, schedules=("cosine", "bogus"))
