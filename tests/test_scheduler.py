"""RLScheduler: a learned policy steers a plain PyTorch loop exactly as it steers the env."""

import copy
import math
import warnings

import pytest
import torch
from stable_baselines3 import PPO

from rlsched.config import config_to_toml, load_config
from rlsched.control.env import UNetLREnv
from rlsched.experiment.harness import PolicyController, run_episode
from rlsched.scheduler import RLScheduler

OVERRIDES = {"data.image_size": 16, "data.n_train": 16, "data.n_val": 8, "env.epochs": 4}


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory):
    """An (untrained) SB3 policy saved as python -m rlsched.train saves one: model.zip beside config.toml."""
    run_dir = tmp_path_factory.mktemp("run")
    config = load_config("fast", OVERRIDES)
    (run_dir / "config.toml").write_text(config_to_toml(config))
    model = PPO("MlpPolicy", UNetLREnv(config=config), seed=3, n_steps=8, batch_size=8)
    # a policy that does not always pick one action, so the test sees the LR move both ways
    with torch.no_grad():
        model.policy.action_net.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    model.save(run_dir / "model.zip")
    return run_dir, config


def test_scheduler_reproduces_the_env_lr_sequence(policy_run):
    run_dir, config = policy_run
    env = UNetLREnv(config=config)
    episode = run_episode(env, PolicyController(PPO.load(run_dir / "model.zip")), env.instances["heldout"][1])
    env_lrs = [r["lr"] for r in episode.records]
    assert len(set(env_lrs)) > 1, "the test policy should change the LR"

    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([weight], lr=env_lrs[0])
    scheduler = RLScheduler.load(run_dir / "model.zip", optimizer)
    reset = episode.records[0]
    assert scheduler.start(val_loss=reset["val_loss"], dice=reset["dice_mean"]) == pytest.approx(env_lrs[1])
    for record, next_lr in zip(episode.records[1:], env_lrs[2:]):
        lr = scheduler.step(
            train_loss=record["train_loss"],
            val_loss=record["val_loss"],
            dice=record["dice_mean"],
            grad_norm=record["grad_norm"],
            update_ratio=record["update_ratio"],
        )
        assert lr == pytest.approx(next_lr) and scheduler.get_last_lr() == [lr]


def test_scheduler_drives_a_plain_training_loop(policy_run):
    run_dir, _ = policy_run
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(256)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.002}], lr=0.01)
    scheduler = RLScheduler.load(run_dir / "model.zip", optimizer, total_epochs=8)
    lrs = []
    for _ in range(8):
        for xb, yb in zip(x.split(32), y.split(32)):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb).squeeze(-1), yb)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(x).squeeze(-1), y).item()
        lrs.append(scheduler.step(train_loss=loss.item(), val_loss=val, dice=0.0))
        assert scheduler.get_last_lr()[1] == pytest.approx(lrs[-1] * 0.2)  # group ratios kept
    assert len(set(lrs)) > 1 and all(1e-5 <= lr <= 1.0 for lr in lrs)
    restored = RLScheduler.load(run_dir / "model.zip", optimizer, total_epochs=8)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.state_dict() == scheduler.state_dict()


def test_missing_model_is_a_clear_error(tmp_path):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(FileNotFoundError, match="no policy at .*model.zip"):
        RLScheduler.load(tmp_path / "model.zip", optimizer)


class _Scripted:
    """A stand-in policy: records what it sees and plays a fixed action sequence."""

    def __init__(self, actions):
        self.actions, self.seen = list(actions), []

    def predict(self, observation, deterministic=True):
        self.seen.append(observation.copy())
        return self.actions[len(self.seen) - 1], None


@pytest.mark.parametrize(
    ("actions_mode", "actions"),
    [
        ({"env.factors": [0.5, 1.0, 2.0]}, [2, 2, 0, 1, 2, 1]),
        ({"env.action": "residual", "env.offsets": [-0.5, 0.0, 0.5]}, [2, 1, 0, 1, 0, 1]),
        # offset 6 blows up: the env undoes that slice, the scheduler that epoch, and both back off the suggestion
        (
            {
                "env.action": "residual",
                "env.offsets": [-0.5, 0.0, 6.0],
                "env.lr_max": 1e4,
                "env.on_divergence": "rollback",
            },
            [1, 2, 1, 2, 0, 1],
        ),
    ],
    ids=["discrete", "residual", "rollback"],
)
def test_plain_loop_with_scheduler_sees_exactly_the_env_observations(actions_mode, actions):
    """The same instance trained by the env and by a plain Trainer loop steered by RLScheduler (which measures
    gradient norm and update ratio itself): identical observations at every epoch, hence identical LRs
    (residual actions: offsets from the suggested LR, which the loop measures itself too)."""
    from rlsched.seg.trainer import Trainer

    # 4 batches per epoch: the mean gradient norm of an epoch differs from its last batch's
    config = load_config("fast", {**OVERRIDES, "env.epochs": 5, **actions_mode, "optim.batch_size": 4})
    # the loop's last step also picks the LR of an epoch beyond the budget
    env_policy, loop_policy = _Scripted(actions), _Scripted(actions)
    env = UNetLREnv(config=config)
    instance = env.instances["heldout"][0]
    episode = run_episode(env, PolicyController(env_policy), instance)

    trainer = Trainer(config, env._data(instance.data_seed), instance.init_seed, lr=instance.initial_lr)
    scheduler = RLScheduler(loop_policy, trainer.optimizer, config.env)
    start = trainer.evaluate()
    scheduler.start(val_loss=start.loss, dice=start.dice_mean)
    loop_lrs = []
    for _ in range(config.env.epochs):
        epoch = trainer.train_epoch()
        loop_lrs.append(epoch.lr)
        evaluation = trainer.evaluate()
        scheduler.step(train_loss=epoch.loss, val_loss=evaluation.loss, dice=evaluation.dice_mean)
        trainer._diverged = False  # a plain loop has no such flag: the scheduler put its weights back
    assert len(env_policy.seen) == config.env.epochs and len(loop_policy.seen) == config.env.epochs + 1
    rolled_back = [r["rolled_back"] for r in episode.records[1:]]
    assert rolled_back == [
        a == 2 and "env.on_divergence" in actions_mode for a in actions[: config.env.epochs]
    ]
    assert scheduler.rollbacks == sum(rolled_back)
    for step, (from_env, from_loop) in enumerate(zip(env_policy.seen, loop_policy.seen)):
        assert from_loop == pytest.approx(from_env, abs=1e-5), f"observation {step} differs"
    assert loop_lrs == pytest.approx([r["lr"] for r in episode.records[1:]])


def test_stepping_past_the_budget_warns_once():
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.01)
    config = load_config("fast", {"env.epochs": 2, "env.factors": [0.5, 1.0, 2.0]})
    scheduler = RLScheduler(_Scripted([1] * 5), optimizer, config.env)
    scheduler.step(train_loss=1.0, val_loss=1.0, dice=0.1)
    scheduler.step(train_loss=1.0, val_loss=1.0, dice=0.1)
    with pytest.warns(UserWarning, match="past its budget of 2 epochs"):
        scheduler.step(train_loss=1.0, val_loss=1.0, dice=0.1)


def test_a_blown_up_epoch_in_a_plain_loop_is_undone_buffers_too():
    """Any model: parameters, optimizer state and (with ``model=``) buffers come back, the next LR backs off."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    config = load_config(
        "fast",
        {
            "env.epochs": 4,
            "env.action": "residual",
            "env.offsets": [0.0, 0.5],
            "env.on_divergence": "rollback",
        },
    )
    scheduler = RLScheduler(_Scripted([0] * 5), optimizer, config.env, model=model)
    x = torch.randn(64, 4)

    def epoch(lr: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr
        for xb in x.split(16):
            optimizer.zero_grad()
            loss = (model(xb) ** 2).mean()  # at lr 1e20 the weights overflow within the epoch
            loss.backward()
            optimizer.step()
        return loss.item()

    scheduler.step(train_loss=epoch(0.01), val_loss=1.0, dice=0.5)
    assert not scheduler.rolled_back
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = [s["momentum_buffer"].clone() for s in optimizer.state.values()]
    lr_before = scheduler.get_last_lr()[0]
    with pytest.warns(UserWarning, match="LR changed"):  # set by hand here, to blow the epoch up
        lr = scheduler.step(train_loss=epoch(1e20), val_loss=float("nan"), dice=0.0)
    assert scheduler.rolled_back and scheduler.rollbacks == 1
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(s["momentum_buffer"], m) for s, m in zip(optimizer.state.values(), momentum))
    assert lr == pytest.approx(min(lr_before, 1.0) * 10**-config.env.backoff_decades)


def test_an_undone_epoch_puts_float64_weights_back_exactly():
    weight = torch.nn.Parameter(
        torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
    )  # not representable in float32
    optimizer = torch.optim.SGD([weight], lr=0.01)
    config = load_config(
        "fast",
        {
            "env.epochs": 4,
            "env.action": "residual",
            "env.offsets": [0.0, 0.5],
            "env.on_divergence": "rollback",
        },
    )
    scheduler = RLScheduler(_Scripted([0] * 5), optimizer, config.env)
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(float("nan"))
    scheduler.step(train_loss=float("nan"), val_loss=float("nan"), dice=0.0)
    assert scheduler.rolled_back and torch.equal(weight.detach(), kept)


@pytest.mark.parametrize("val_spike, undone", [(2.0, True), (0.0, False)])
def test_a_validation_loss_spike_in_a_plain_loop_is_undone_when_the_policy_was_trained_so(val_spike, undone):
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.01)
    config = load_config(
        "fast",
        {
            "env.epochs": 4,
            "env.action": "residual",
            "env.offsets": [0.0, 0.5],
            "env.on_divergence": "rollback",
            "env.val_spike": val_spike,
        },
    )
    scheduler = RLScheduler(_Scripted([0] * 5), optimizer, config.env)
    scheduler.step(train_loss=1.0, val_loss=1.2, dice=0.5)
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    scheduler.step(train_loss=0.9, val_loss=3.0, dice=0.1)  # training loss fine, validation loss x2.5
    assert scheduler.rolled_back is undone
    assert torch.equal(weight.detach(), kept) is undone
    restored = RLScheduler(_Scripted([0] * 5), optimizer, config.env)
    restored.load_state_dict(
        scheduler.state_dict()
    )  # the healthy references travel (they differ from `before`)
    assert (restored._state.healthy_loss, restored._state.healthy_val_loss) == (
        scheduler._state.healthy_loss,
        scheduler._state.healthy_val_loss,
    )
    assert restored._state.loss_limits() == scheduler._state.loss_limits()


ROLLBACK = {
    "env.epochs": 4,
    "env.action": "residual",
    "env.offsets": [0.0, 0.5],
    "env.on_divergence": "rollback",
}


def _scheduler(weight: torch.nn.Parameter, policy: _Scripted | None = None) -> RLScheduler:
    """A rollback policy stand-in steering SGD on one parameter."""
    optimizer = torch.optim.SGD([weight], lr=0.01)
    return RLScheduler(policy or _Scripted([0] * 5), optimizer, load_config("fast", ROLLBACK).env)


def _one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> float:
    """One epoch of a plain loop that leaves the LR to the scheduler (NaN inputs make it blow up)."""
    for xb in x.split(16):
        optimizer.zero_grad()
        loss = (model(xb) ** 2).mean()
        loss.backward()
        optimizer.step()
    return loss.item()


def test_a_negative_loss_is_refused_and_a_zero_loss_sets_no_spike_limit():
    scheduler = _scheduler(torch.nn.Parameter(torch.ones(2)))
    for loss in ({"train_loss": -0.5, "val_loss": 1.0}, {"train_loss": 1.0, "val_loss": -0.5}):
        with pytest.raises(ValueError, match="is negative: .*>= 0.*1 - accuracy"):
            scheduler.step(**loss, dice=0.5)
    assert scheduler.state_dict()["step"] == 0  # refused before anything moved
    scheduler.step(train_loss=0.0, val_loss=0.0, dice=0.5)  # a perfect fit: no scale to call a spike against
    scheduler.step(train_loss=0.01, val_loss=0.01, dice=0.5)
    assert not scheduler.rolled_back and scheduler.rollbacks == 0


@pytest.mark.parametrize(
    ("dice", "error", "match"),
    [
        (85.0, ValueError, r"dice=85.0 is outside \[0, 1\]: .*percentage"),
        (1.5, ValueError, r"outside \[0, 1\]"),
        (-0.1, ValueError, r"outside \[0, 1\]"),
        (None, TypeError, "dice=None: pass a number"),
    ],
)
def test_a_dice_outside_zero_one_is_a_clear_error(dice, error, match):
    scheduler = _scheduler(torch.nn.Parameter(torch.ones(2)))
    with pytest.raises(error, match=match):
        scheduler.step(train_loss=1.0, val_loss=1.0, dice=dice)
    with pytest.raises(error, match=match):
        scheduler.start(val_loss=1.0, dice=dice)
    assert scheduler.state_dict()["step"] == 0


def test_a_nan_dice_keeps_the_last_finite_one():
    """A class absent everywhere scores NaN (metrics.py): the policy goes on seeing the last Dice it saw."""
    from rlsched.control.interface import feature_index

    policy = _Scripted([0] * 5)
    scheduler = _scheduler(torch.nn.Parameter(torch.ones(2)), policy)
    scheduler.step(train_loss=1.0, val_loss=1.0, dice=0.4)
    scheduler.step(train_loss=0.9, val_loss=0.9, dice=float("nan"))
    assert [seen[feature_index("dice")] for seen in policy.seen] == pytest.approx([0.4, 0.4])


def _bn_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))


def test_a_scheduler_built_before_the_checkpoint_is_loaded_undoes_to_the_loaded_state():
    """The usual resume order (build model, optimizer, scheduler, then load all three): a blown-up first epoch
    comes back to the loaded weights, buffers and optimizer state, not to the freshly built ones (nor to the
    state a forward pass saw before the load)."""
    torch.manual_seed(0)
    env = load_config("fast", ROLLBACK).env
    x = torch.randn(64, 4)
    model = _bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = RLScheduler(_Scripted([0] * 5), optimizer, env, model=model)
    scheduler.step(train_loss=_one_epoch(model, optimizer, x), val_loss=1.0, dice=0.5)
    checkpoint = [copy.deepcopy(s.state_dict()) for s in (model, optimizer, scheduler)]

    model = _bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = RLScheduler(_Scripted([0] * 5), optimizer, env, model=model)
    model(torch.zeros(2, 4))  # a shape check before loading: the load, not this forward, starts the epoch
    for part, state in zip((model, optimizer, scheduler), checkpoint):
        part.load_state_dict(copy.deepcopy(state))  # as from a file (the optimizer keeps the tensors it gets)
    loss = _one_epoch(model, optimizer, torch.full((64, 4), float("nan")))
    scheduler.step(train_loss=loss, val_loss=float("nan"), dice=0.0)
    assert scheduler.rolled_back
    assert all(torch.equal(v, checkpoint[0][k]) for k, v in model.state_dict().items())
    momentum = [s["momentum_buffer"] for s in checkpoint[1]["state"].values()]
    assert all(torch.equal(s["momentum_buffer"], m) for s, m in zip(optimizer.state.values(), momentum))


def test_the_update_ratio_counts_from_weights_loaded_after_the_scheduler_was_built():
    from rlsched.control.interface import feature_index

    torch.manual_seed(0)
    model, pretrained = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    with torch.no_grad():
        pretrained.weight.mul_(100)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    policy = _Scripted([0] * 5)
    scheduler = RLScheduler(policy, optimizer, load_config("fast", ROLLBACK).env)  # no model=: optimizer hook
    model.load_state_dict(pretrained.state_dict())  # fine-tuning: weights loaded once the scheduler is built
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    scheduler.step(train_loss=_one_epoch(model, optimizer, torch.randn(64, 4)), val_loss=1.0, dice=0.5)
    end = torch.cat([p.detach().flatten() for p in model.parameters()])
    ratio = float((end - start).norm() / start.norm())
    assert policy.seen[0][feature_index("log_update_ratio")] == pytest.approx(math.log10(ratio), abs=1e-4)


def test_a_state_saved_with_another_optimizer_is_refused():
    env = load_config("fast", ROLLBACK).env
    weight, bias = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    saved = RLScheduler(_Scripted([0]), torch.optim.SGD([weight], lr=0.1), env)
    saved.step(train_loss=1.0, val_loss=1.0, dice=0.5)
    state = saved.state_dict()
    groups = [{"params": [weight]}, {"params": [bias], "lr": 0.01}]
    two_groups = RLScheduler(_Scripted([0]), torch.optim.SGD(groups, lr=0.1), env)
    with pytest.raises(ValueError, match="1 param group.*this optimizer has 2"):
        two_groups.load_state_dict(state)
    unchanged = two_groups.state_dict()
    assert unchanged["ratios"] == pytest.approx([1.0, 0.1]) and unchanged["step"] == 0
    with pytest.raises(ValueError, match="SGD.*this optimizer is AdamW"):
        RLScheduler(_Scripted([0]), torch.optim.AdamW([weight], lr=0.1), env).load_state_dict(state)
    # a state saved before the optimizer was recorded loads where its group count matches
    legacy = {k: v for k, v in state.items() if k not in ("groups", "optimizer")}
    RLScheduler(_Scripted([0]), torch.optim.SGD([weight], lr=0.1), env).load_state_dict(legacy)
    with pytest.raises(ValueError, match="1 param group.*this optimizer has 2"):
        two_groups.load_state_dict(legacy)


def test_an_lr_set_by_something_else_between_steps_warns():
    torch.manual_seed(0)
    env = load_config("fast", ROLLBACK).env
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = RLScheduler(_Scripted([0] * 5), optimizer, env)
    x = torch.randn(64, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alone, the scheduler's own LR changes do not warn
        for _ in range(2):
            scheduler.step(train_loss=_one_epoch(model, optimizer, x), val_loss=1.0, dice=0.5)
    torch_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    loss = _one_epoch(model, optimizer, x)
    torch_scheduler.step()
    with pytest.warns(UserWarning, match="LR changed from .* since RLScheduler set it"):
        scheduler.step(train_loss=loss, val_loss=1.0, dice=0.5)


@pytest.mark.parametrize(
    ("lr", "total_epochs", "match"),
    [(0.0, None, "first param group's LR is 0.0: .*positive LR first"), (0.1, 0, "total_epochs=0: pass")],
    ids=["lr-0", "total-epochs-0"],
)
def test_a_zero_first_lr_or_epoch_budget_is_a_clear_error(lr, total_epochs, match):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=lr)
    with pytest.raises(ValueError, match=match):
        RLScheduler(_Scripted([0]), optimizer, load_config("fast", ROLLBACK).env, total_epochs=total_epochs)
