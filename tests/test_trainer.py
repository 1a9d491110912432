import math

import numpy as np
import pytest
import torch

import by_hand

from rlsched.config import load_config
from rlsched.data import make_dataset
from rlsched.trainer import Trainer


@pytest.fixture(scope="module")
def data(fast_config):
    return make_dataset(fast_config.data, seed=3)


def params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_training_lowers_the_loss_and_reports_dynamics(fast_config, data):
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    first = trainer.train_epoch()
    for _ in range(3):
        last = trainer.train_epoch()
    assert last.loss < first.loss
    assert not last.diverged and last.batches == math.ceil(len(data.train_images) / fast_config.optim.batch_size)
    assert last.grad_norm > 0 and 0 < last.update_ratio < 1 and last.lr == 0.05

    # evaluate() scores the whole validation set: Dice, IoU and loss by hand from the model's logits
    evaluation = trainer.evaluate()
    with torch.no_grad():
        z = trainer.model(data.val_images)[:, 0].double().numpy()  # no norm layers: batching changes nothing
    target = data.val_masks.numpy()
    prediction = (z > 0).astype(np.uint8)  # sigmoid(z) > 0.5
    (dice,) = by_hand.dice_per_class(prediction, target, classes=1)
    assert 0.05 < dice < 0.95  # a partly trained net: a wrong count would show
    tp = int(((prediction == 1) & (target == 1)).sum())
    iou = tp / int(((prediction == 1) | (target == 1)).sum())
    bce = np.mean(np.maximum(z, 0) - z * (target == 1) + np.log1p(np.exp(-np.abs(z))))
    assert evaluation.dice == [pytest.approx(dice)] and evaluation.dice_mean == pytest.approx(dice)
    assert evaluation.iou == [pytest.approx(iou)] and evaluation.iou_mean == pytest.approx(iou)
    assert evaluation.loss == pytest.approx(bce, rel=1e-5)


def test_same_seed_same_training_different_seed_different(fast_config, data):
    a, b, c = (Trainer(fast_config, data, seed=s, lr=0.05) for s in (1, 1, 2))
    for t in (a, b, c):
        t.train_epoch()
    assert torch.equal(params(a), params(b)) and not torch.equal(params(a), params(c))


def test_resume_from_state_dict_is_bit_for_bit(fast_config, data):
    straight = Trainer(fast_config, data, seed=0, lr=0.05)
    for _ in range(4):
        straight.train_epoch()

    first = Trainer(fast_config, data, seed=0, lr=0.05)
    for _ in range(2):
        first.train_epoch()
    state = first.state_dict()
    torch.manual_seed(1234)  # disturb the global RNG: the checkpoint must carry it
    resumed = Trainer(fast_config, data, seed=99, lr=1.0)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2 and resumed.lr == 0.05
    for _ in range(2):
        resumed.train_epoch()
    assert torch.equal(params(straight), params(resumed))


def test_too_large_lr_is_reported_as_diverged_not_raised(fast_config, data):
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    trainer.train_epoch()
    good = params(trainer).clone()
    trainer.set_lr(1e4)
    result = trainer.train_slice(2)
    assert result.diverged and result.evaluation is None and result.record()["diverged"]
    trainer.restore_last_good()
    assert torch.equal(params(trainer), good)


def test_grad_clip_bounds_the_update(data):
    config = load_config("fast", {"optim.grad_clip": 1e-3, "optim.momentum": 0.0})
    clipped = Trainer(config, data, seed=0, lr=0.1).train_epoch()
    free = Trainer(load_config("fast", {"optim.momentum": 0.0}), data, seed=0, lr=0.1).train_epoch()
    assert clipped.update_ratio < free.update_ratio / 10


@pytest.mark.parametrize("lr", [0.0, -1.0, math.nan])
def test_bad_lr_is_rejected(fast_config, data, lr):
    with pytest.raises(ValueError, match="positive finite"):
        Trainer(fast_config, data, seed=0).set_lr(lr)


def test_training_works_when_the_caller_disabled_gradients(fast_config, data):
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    before = params(trainer).clone()
    with torch.no_grad():  # as an RL agent's rollout collection does around env.step
        stats = trainer.train_epoch()
    assert not stats.diverged and not torch.equal(params(trainer), before)
