"""RLSchedulerCallback: the controller steers a real lightning.Trainer (CPU, a tiny conv net, 4 batches)."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from rlsched.config import load_config  # noqa: E402 (after the skip: lightning is an optional extra)
from rlsched.integrations.lightning import LR_METRIC, ROLLED_BACK_METRIC, RLSchedulerCallback  # noqa: E402
from rlsched.scheduler import RLScheduler  # noqa: E402

LR = 0.05


def _data(n: int, seed: int) -> torch.utils.data.DataLoader:
    """Binary masks of smoothed noise: learnable by a 2-layer conv net within a few epochs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (F.avg_pool2d(x, 3, stride=1, padding=1) > 0).float()
    # no shuffling: a resumed run sees the batches an uninterrupted one sees
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


class Tiny(pl.LightningModule):
    """BatchNorm: buffers an undone epoch must put back. Two param groups: their LR ratio must stay."""

    def __init__(
        self, train_log: dict | None = None, lr_scheduler: bool = False, blow_up_epoch: int = -1
    ) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every run
        self.conv, self.norm = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Conv2d(4, 1, 1)
        self.train_log = {"on_step": False, "on_epoch": True} if train_log is None else train_log
        self.lr_scheduler, self.blow_up_epoch = lr_scheduler, blow_up_epoch
        self.epoch_lrs: list[list[float]] = []  # the param groups' LRs each epoch trained with
        self.grad_norms: list[float] = []  # global gradient norm at each optimizer step
        self.losses: list[float] = []  # each training batch's loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))

    def on_train_epoch_start(self) -> None:
        self.epoch_lrs.append([g["lr"] for g in self.trainer.optimizers[0].param_groups])

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x), y)
        self.log("train_loss", loss, **self.train_log)
        self.losses.append(float(loss))
        return loss * (1e6 if self.current_epoch == self.blow_up_epoch else 1)

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad.flatten() for p in self.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.cat(grads).norm()))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        pred = (logits > 0).float()
        self.log("val_loss", F.binary_cross_entropy_with_logits(logits, y))
        self.log("val_dice", 2 * (pred * y).sum() / (pred.sum() + y.sum()).clamp_min(1))

    def configure_optimizers(self):
        rest = [*self.norm.parameters(), *self.head.parameters()]
        optimizer = torch.optim.SGD(
            [{"params": self.conv.parameters()}, {"params": rest, "lr": LR / 2}], lr=LR, momentum=0.9
        )
        if self.lr_scheduler:
            return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}
        return optimizer


class Scripted:
    """A stand-in policy: plays a fixed action sequence, records what it sees."""

    def __init__(self, actions: list[int]) -> None:
        self.actions, self.seen = actions, 0

    def predict(self, observation, deterministic=True):
        self.seen += 1
        return self.actions[self.seen - 1], None


class Recording(RLScheduler):
    """RLScheduler that records what each ``step`` was given and returned."""

    def step(self, **numbers) -> float:
        lr = super().step(**numbers)
        self.calls = [*getattr(self, "calls", []), (numbers, lr)]
        return lr


def _scripted(actions: list[int], **env) -> RLSchedulerCallback:
    config = load_config("fast", {"env.epochs": 3, **{f"env.{k}": v for k, v in env.items()}})
    policy = Scripted(actions)
    return RLSchedulerCallback(
        controller=lambda optimizer, total, module: Recording(policy, optimizer, config.env, total, module)
    )


def _fit(
    module: pl.LightningModule,
    callback: RLSchedulerCallback,
    epochs: int,
    tmp_path=None,
    ckpt_path=None,
    **trainer_args,
) -> pl.Trainer:
    extra = (
        {
            "logger": pl.loggers.CSVLogger(tmp_path, name="csv"),
            "enable_checkpointing": True,
            "default_root_dir": tmp_path,
        }
        if tmp_path
        else {"logger": False, "enable_checkpointing": False}
    )
    trainer_args.setdefault("callbacks", [callback])
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **extra,
        **trainer_args,
    )
    trainer.fit(module, _data(32, 0), _data(16, 1), ckpt_path=ckpt_path)
    return trainer


def test_the_controllers_lrs_are_what_lightning_trains_with(tmp_path):
    """Discrete factors 2, 0.5, 2: each epoch trains at the LR the controller set after the one before (both
    groups, ratio kept); the gradient norm it is fed is the mean over optimizer steps of the accumulated
    gradients' norm; the LR and the undone flag are logged."""
    callback = _scripted([2, 0, 2], factors=[0.5, 1.0, 2.0])
    module = Tiny()
    _fit(module, callback, 3, tmp_path, accumulate_grad_batches=2)
    calls = callback.scheduler.calls
    assert [lr for _, lr in calls] == pytest.approx([2 * LR, LR, 2 * LR])
    assert [lr for group_lrs in module.epoch_lrs for lr in group_lrs] == pytest.approx(
        [LR, LR / 2, 2 * LR, LR, LR, LR / 2]
    )
    assert len(module.grad_norms) == 3 * 2  # 4 batches, 2 per optimizer step
    fed = [numbers["grad_norm"] for numbers, _ in calls]
    assert fed == pytest.approx([sum(module.grad_norms[i : i + 2]) / 2 for i in (0, 2, 4)], rel=1e-5)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r[LR_METRIC]]
    assert [float(r[LR_METRIC]) for r in rows] == pytest.approx([2 * LR, LR, 2 * LR])
    assert [float(r[ROLLED_BACK_METRIC]) for r in rows] == [0.0, 0.0, 0.0]


def test_a_blown_up_epoch_is_undone_in_lightning():
    """The shipped controller (it undoes blow-ups): epoch 2's loss x 1e6 throws the weights off; parameters,
    BatchNorm buffers and momentum are back to the end of epoch 1, and the logs say so."""
    kept, logged = [], []

    class Keep(pl.Callback):  # after RLSchedulerCallback: sees each epoch as the controller left it
        def on_train_epoch_end(self, trainer, pl_module):
            kept.append(
                (
                    {k: v.clone() for k, v in pl_module.state_dict().items()},
                    [s["momentum_buffer"].clone() for s in trainer.optimizers[0].state.values()],
                )
            )
            logged.append(float(trainer.callback_metrics[ROLLED_BACK_METRIC]))

    module, callback = Tiny(blow_up_epoch=1), RLSchedulerCallback()
    _fit(module, callback, 3, callbacks=[callback, Keep()])
    assert callback.scheduler.rollbacks == 1 and logged == [0.0, 1.0, 0.0]
    (state1, momentum1), (state2, momentum2) = kept[0], kept[1]
    assert all(torch.equal(state2[k], v) for k, v in state1.items())  # running_mean/var included
    assert all(torch.equal(a, b) for a, b in zip(momentum1, momentum2))


def test_resuming_from_a_checkpoint_continues_the_controller_exactly(tmp_path):
    """The shipped controller: 4 epochs straight give the same LRs and controller state as 2 epochs, then
    Trainer.fit(ckpt_path=...) on to 4."""
    straight, straight_module = RLSchedulerCallback(), Tiny()
    _fit(straight_module, straight, 4)
    lrs = [e[0] for e in straight_module.epoch_lrs]
    assert lrs[1] != pytest.approx(LR), "the controller should move the LR on this task"

    first = RLSchedulerCallback(total_epochs=4)  # the interrupted run had a budget of 4
    trainer = _fit(Tiny(), first, 2, tmp_path / "a")
    resumed, resumed_module = RLSchedulerCallback(), Tiny()
    _fit(
        resumed_module,
        resumed,
        4,
        tmp_path / "b",
        ckpt_path=trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path,
    )
    assert [e[0] for e in resumed_module.epoch_lrs] == lrs[2:]
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()


@pytest.mark.parametrize("on_step", [False, True], ids=["on_epoch", "on_step-too"])
def test_the_controller_reads_the_epochs_mean_training_loss(on_step):
    callback = _scripted([1, 1], factors=[0.5, 1.0, 2.0])
    module = Tiny({"on_epoch": True, "on_step": on_step})
    _fit(module, callback, 2)
    fed = [numbers["train_loss"] for numbers, _ in callback.scheduler.calls]
    assert fed == pytest.approx([sum(module.losses[:4]) / 4, sum(module.losses[4:]) / 4])


def test_a_missing_metric_name_lists_the_logged_ones():
    logged = "train_loss, val_dice, val_loss"
    with pytest.raises(ValueError, match=f"no logged metric 'val_iou'; logged: {logged}: pass the names"):
        _fit(Tiny(), RLSchedulerCallback(score="val_iou"), 1)


class TwoOptimizers(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return [
            torch.optim.SGD(self.conv.parameters(), lr=LR),
            torch.optim.SGD(self.head.parameters(), lr=LR),
        ]


@pytest.mark.parametrize(
    ("module", "trainer_args", "error"),
    [
        (lambda: Tiny(lr_scheduler=True), {}, r"returns an LR scheduler \(StepLR\)"),
        (TwoOptimizers, {}, "steers one optimizer, but configure_optimizers gave 2"),
        (lambda: Tiny(train_log={}), {}, "'train_loss' is logged per step only; log it with on_epoch=True"),
        (Tiny, {"val_check_interval": 0.5}, "val_check_interval=0.5"),
        (Tiny, {"limit_val_batches": 0}, "never validates"),
    ],
    ids=["lr-scheduler", "two-optimizers", "train-loss-per-step", "val-check-interval", "no-validation"],
)
def test_what_the_callback_cannot_steer_is_refused(module, trainer_args, error):
    with pytest.raises(ValueError, match=error):
        _fit(module(), RLSchedulerCallback(), 1, **trainer_args)


@pytest.mark.slow
def test_the_lightning_monai_example_runs(tmp_path):
    """Tiny settings, in a fresh folder: the example exports the brain-folder slices itself (brain extra)."""
    pytest.importorskip("monai")
    pytest.importorskip("nilearn")
    script = Path(__file__).resolve().parent.parent / "examples" / "lightning_monai.py"
    done = subprocess.run(
        [sys.executable, str(script), "--epochs", "2", "--images", "8"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dices = re.findall(r"^(rlsched controller|constant LR): test Dice (\d\.\d+)$", done.stdout, re.MULTILINE)
    assert [name for name, _ in dices] == ["rlsched controller", "constant LR"], done.stdout
    assert all(0 <= float(dice) <= 1 for _, dice in dices)
    assert (tmp_path / "runs" / "brain-axial-folder" / "images").is_dir()
