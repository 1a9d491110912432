"""The comparison methods practitioners use instead of a learned schedule: LR range test, tuning-free optimizers,
the nnU-Net recipe and an Optuna search, each through the same harness as the fixed schedules."""

import sys

import pytest
import torch

from rlsched.config import ConfigError, load_config
from rlsched.data import make_dataset
from rlsched.trainer import Trainer

# 16x16 images, 2 batches of 16 per epoch, 2-epoch budgets: every episode well under a second
TINY = {"data.image_size": 16, "data.n_train": 32, "data.n_val": 8, "env.epochs": 2, "env.train_instances": 3,
        "env.heldout_instances": 2}
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
    result = trainer.train_slice(1)  # without train() the optimizer's step raises
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
    hook = norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].mean(dim=(0, 2, 3))))
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
