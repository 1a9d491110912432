"""RLScheduler: a learned policy steers a plain PyTorch loop exactly as it steers the env."""

import pytest
import torch
from stable_baselines3 import PPO

from rlsched.config import config_to_toml, load_config
from rlsched.env import UNetLREnv
from rlsched.harness import PolicyController, run_episode
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
        lr = scheduler.step(train_loss=record["train_loss"], val_loss=record["val_loss"], dice=record["dice_mean"],
                            grad_norm=record["grad_norm"], update_ratio=record["update_ratio"])
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


@pytest.mark.parametrize(("actions_mode", "actions"), [
    ({"env.factors": [0.5, 1.0, 2.0]}, [2, 2, 0, 1, 2, 1]),
    ({"env.action": "residual", "env.offsets": [-0.5, 0.0, 0.5]}, [2, 1, 0, 1, 0, 1]),
    # offset 6 blows up: the env undoes that slice, the scheduler that epoch, and both back off the suggestion
    ({"env.action": "residual", "env.offsets": [-0.5, 0.0, 6.0], "env.lr_max": 1e4, "env.on_divergence": "rollback"},
     [1, 2, 1, 2, 0, 1])], ids=["discrete", "residual", "rollback"])
def test_plain_loop_with_scheduler_sees_exactly_the_env_observations(actions_mode, actions):
    """The same instance trained by the env and by a plain Trainer loop steered by RLScheduler (which measures
    gradient norm and update ratio itself): identical observations at every epoch, hence identical LRs
    (residual actions: offsets from the suggested LR, which the loop measures itself too)."""
    from rlsched.trainer import Trainer

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
    assert rolled_back == [a == 2 and "env.on_divergence" in actions_mode for a in actions[:config.env.epochs]]
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
    config = load_config("fast", {"env.epochs": 4, "env.action": "residual", "env.offsets": [0.0, 0.5],
                                  "env.on_divergence": "rollback"})
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
    lr = scheduler.step(train_loss=epoch(1e20), val_loss=float("nan"), dice=0.0)
    assert scheduler.rolled_back and scheduler.rollbacks == 1
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(s["momentum_buffer"], m) for s, m in zip(optimizer.state.values(), momentum))
    assert lr == pytest.approx(min(lr_before, 1.0) * 10 ** -config.env.backoff_decades)


def test_an_undone_epoch_puts_float64_weights_back_exactly():
    weight = torch.nn.Parameter(torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))  # not representable in float32
    optimizer = torch.optim.SGD([weight], lr=0.01)
    config = load_config("fast", {"env.epochs": 4, "env.action": "residual", "env.offsets": [0.0, 0.5],
                                  "env.on_divergence": "rollback"})
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
    config = load_config("fast", {"env.epochs": 4, "env.action": "residual", "env.offsets": [0.0, 0.5],
                                  "env.on_divergence": "rollback", "env.val_spike": val_spike})
    scheduler = RLScheduler(_Scripted([0] * 5), optimizer, config.env)
    scheduler.step(train_loss=1.0, val_loss=1.2, dice=0.5)
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    scheduler.step(train_loss=0.9, val_loss=3.0, dice=0.1)  # training loss fine, validation loss x2.5
    assert scheduler.rolled_back is undone
    assert torch.equal(weight.detach(), kept) is undone
    restored = RLScheduler(_Scripted([0] * 5), optimizer, config.env)
    restored.load_state_dict(scheduler.state_dict())  # the healthy references travel (they differ from `before`)
    assert (restored._state.healthy_loss, restored._state.healthy_val_loss) == (
        scheduler._state.healthy_loss, scheduler._state.healthy_val_loss)
    assert restored._state.loss_limits() == scheduler._state.loss_limits()
