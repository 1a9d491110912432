import math

import by_hand
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from rlsched.config import load_config
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer, autocast_dtype


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
    assert not last.diverged and last.batches == math.ceil(
        len(data.train_images) / fast_config.optim.batch_size
    )
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


def test_evaluate_scores_the_split_it_is_asked_for(fast_config, data):
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    trainer.train_epoch()
    with torch.no_grad():
        z = trainer.model(data.test_images)[:, 0].numpy()
    (dice,) = by_hand.dice_per_class((z > 0).astype(np.uint8), data.test_masks.numpy(), classes=1)
    test = trainer.evaluate("test")
    assert test.dice_mean == pytest.approx(dice) and test.dice_mean != trainer.evaluate().dice_mean
    assert trainer.test_dice(diverged=False) == test.dice_mean and trainer.test_dice(diverged=True) == 0.0
    with pytest.raises(ValueError, match="split='train': evaluate 'val' or 'test'"):
        trainer.evaluate("train")


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
    torch.manual_seed(1234)  # disturb the global RNG: training must not depend on it
    resumed = Trainer(fast_config, data, seed=99, lr=1.0)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2 and resumed.lr == 0.05
    for _ in range(2):
        resumed.train_epoch()
    assert torch.equal(params(straight), params(resumed))


def test_too_large_lr_is_reported_as_diverged_not_raised(fast_config, data):
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    trainer.train_epoch()
    result = trainer.train_slice(1e4, 2)
    assert result.diverged and result.evaluation is None and result.record()["diverged"]
    assert not result.rolled_back and not torch.isfinite(params(trainer)).all()


def test_an_undone_blow_up_restores_weights_and_optimizer_but_spends_its_epochs(fast_config, data):
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    trainer.train_epoch()
    good, momentum = params(trainer).clone(), trainer.state_dict()["optimizer"]
    result = trainer.train_slice(1e4, 2, undo_divergence=True)
    assert result.rolled_back and not result.diverged and result.record()["rolled_back"]
    assert torch.equal(params(trainer), good) and trainer.epoch == 1 + len(result.epochs)
    assert result.evaluation.loss == pytest.approx(trainer.evaluate().loss) and math.isfinite(
        result.evaluation.loss
    )
    restored = trainer.state_dict()["optimizer"]["state"]
    assert all(
        torch.equal(restored[k]["momentum_buffer"], v["momentum_buffer"])
        for k, v in momentum["state"].items()
    )
    # alive again: the next slice trains, at a sane LR, like any other
    assert not trainer.train_slice(0.05, 1).diverged and not torch.equal(params(trainer), good)


def test_a_healthy_slice_is_the_same_with_or_without_undo(fast_config, data):
    plain, guarded = (Trainer(fast_config, data, seed=0, lr=0.05) for _ in range(2))
    records = [
        trainer.train_slice(0.05, 2, undo_divergence=undo).record()
        for trainer, undo in ((plain, False), (guarded, True))
    ]
    assert records[0] | {"seconds": 0} == records[1] | {"seconds": 0}  # wall time aside
    assert torch.equal(params(plain), params(guarded))


def test_a_bad_batch_mid_epoch_is_found_at_the_end_and_the_trainer_stops_until_reloaded(
    fast_config, data, monkeypatch
):
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    start = trainer.state_dict()
    loss, calls = trainer.head.loss, []

    def third_is_nan(logits, target):
        calls.append(1)
        value = loss(logits, target)
        return value * math.nan if len(calls) == 3 else value

    monkeypatch.setattr(trainer.head, "loss", third_is_nan)
    stats = trainer.train_epoch()
    assert stats.diverged and stats.batches == 2
    assert math.isfinite(stats.loss) and math.isfinite(stats.grad_norm)  # the two batches before it
    assert len(calls) == math.ceil(len(data.train_images) / fast_config.optim.batch_size)  # ran to the end
    again = trainer.train_slice(0.05, 1)
    assert again.diverged and again.epochs[0].batches == 0 and len(calls) == 4  # skipped, not retrained
    monkeypatch.setattr(trainer.head, "loss", loss)
    trainer.load_state_dict(start)
    assert not trainer.train_epoch().diverged


class HostReads(TorchFunctionMode):
    """Counts the tensor reads that make the host wait for the device on a GPU."""

    READS = {"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__format__"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["train_epoch", "evaluate"])
def test_host_reads_per_epoch_do_not_grow_with_the_batch_count(fast_config, data, method):
    counts = []
    for batch_size in (32, 8):  # 2 then 8 training batches, 1 then 4 validation batches
        config = load_config("fast", {"optim.batch_size": batch_size})
        trainer = Trainer(config, data, seed=0, lr=0.05)
        with HostReads() as reads:
            getattr(trainer, method)()
        counts.append(reads.count)
    assert counts[0] == counts[1] <= 2


def test_bf16_where_the_gpu_has_it_else_fp16(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda, amp=True) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, amp=True) is torch.float16
    assert autocast_dtype(cuda, amp=False) is None and autocast_dtype(cpu, amp=True) is None


def test_fp16_gets_a_grad_scaler(fast_config, data, monkeypatch):
    assert not Trainer(fast_config, data, seed=0).scaler.is_enabled()  # full precision: nothing to scale
    monkeypatch.setattr("rlsched.seg.trainer.autocast_dtype", lambda device, amp: torch.float16)
    assert Trainer(fast_config, data, seed=0).scaler.is_enabled()


@pytest.mark.parametrize("scaling", [False, True])
def test_a_non_finite_gradient_diverges_unless_loss_scaling_skips_it(fast_config, data, scaling):
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    if scaling:
        trainer.scaler = torch.amp.GradScaler("cpu")  # what fp16 gets (fp16 itself is slow on a CPU)
    trainer.params[0].register_hook(lambda grad: grad * math.inf)  # every backward overflows; loss is fine
    before = params(trainer).clone()
    stats = trainer.train_epoch()
    assert stats.batches == 0 and stats.diverged is not scaling
    if scaling:  # the scaler skipped every step and backed off; nothing was lost
        assert torch.equal(params(trainer), before) and trainer.scaler.get_scale() < 2.0**16


def test_the_global_rng_is_left_alone(fast_config, data):
    torch.manual_seed(5)
    before = torch.get_rng_state()
    trainer = Trainer(fast_config, data, seed=0, lr=0.05)
    trainer.train_slice(0.05, 1)
    assert torch.equal(torch.get_rng_state(), before)
    state = trainer.state_dict()
    torch.rand(1)  # the caller draws from it meanwhile: loading a state must not rewind that
    before = torch.get_rng_state()
    trainer.load_state_dict(state)
    trainer.train_slice(1e4, 1, undo_divergence=True)
    assert torch.equal(torch.get_rng_state(), before)


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


def test_a_loss_spike_is_undone_like_a_blow_up_only_when_undoing(fast_config, data):
    guarded, plain = (Trainer(fast_config, data, seed=0, lr=0.05) for _ in range(2))
    start = params(guarded).clone()
    spiked = guarded.train_slice(
        0.05, 1, undo_divergence=True, loss_limit=0.0
    )  # every finite loss is above 0
    assert spiked.rolled_back and torch.equal(params(guarded), start) and guarded.epoch == 1
    assert not plain.train_slice(0.05, 1, loss_limit=0.0).rolled_back  # the limit is part of undoing


def test_a_validation_loss_spike_is_undone_and_the_restored_net_validated(fast_config, data):
    """A slice whose training loss looks sane but whose validation loss blew up (the net was thrown off) is
    undone too: the result carries the restored network's validation, not the thrown-off one's."""
    guarded = Trainer(fast_config, data, seed=0, lr=0.05)
    start, untrained = params(guarded).clone(), guarded.evaluate()
    result = guarded.train_slice(0.05, 1, undo_divergence=True, val_loss_limit=0.0)
    assert result.rolled_back and torch.equal(params(guarded), start) and guarded.epoch == 1
    assert result.evaluation.loss == pytest.approx(untrained.loss)
    assert math.isfinite(result.epochs[0].loss)  # the training loss was fine: only the validation spiked
    assert not guarded.train_slice(0.05, 1, undo_divergence=True, val_loss_limit=math.inf).rolled_back
