import copy

import pytest
import torch

from rlsched.seg.restore_point import RestorePoint


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))


def _train(net: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """Two SGD steps with momentum on batches drawn from ``generator``."""
    net.train()
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.randn(8, 3, generator=generator)).square().mean().backward()
        optimizer.step()


def _state(net, optimizer, generator) -> dict[str, torch.Tensor]:
    """Copies of everything a restore must put back: parameters, buffers, momentum, the generator."""
    momentum = {f"momentum.{i}": s["momentum_buffer"] for i, s in enumerate(optimizer.state.values())}
    live = {**net.state_dict(), **momentum, "generator": generator.get_state()}
    return {name: t.detach().clone() for name, t in live.items()}


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    _train(net, optimizer, generator)  # momentum buffers and BatchNorm statistics exist from here
    return net, optimizer, generator


def test_restore_puts_params_buffers_momentum_and_generator_back_exactly_and_again():
    net, optimizer, generator = _setup()
    point = RestorePoint(net.state_dict(keep_vars=True), optimizer, generator=generator)
    kept = _state(net, optimizer, generator)
    weight = net[0].weight  # a training loop's reference to a parameter stays the live one
    for _ in range(2):  # restorable more than once: the optimizer does not take over the kept tensors
        _train(net, optimizer, generator)
        moved = _state(net, optimizer, generator)
        # a no-op restore fails below: each kind of state moved since the point was taken
        for name in ("0.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked", "momentum.0"):
            assert not torch.equal(moved[name], kept[name]), name
        assert not torch.equal(moved["generator"], kept["generator"])
        point.restore()
        now = _state(net, optimizer, generator)
        assert now.keys() == kept.keys() and all(torch.equal(now[k], kept[k]) for k in kept)
        assert net[0].weight is weight and optimizer.state[weight]["momentum_buffer"] is not None


def test_a_saved_state_restores_into_fresh_objects_exactly():
    net, optimizer, generator = _setup()
    state = copy.deepcopy(RestorePoint(net.state_dict(keep_vars=True), optimizer, generator=generator).state)
    fresh, fresh_optimizer, fresh_generator = _setup(seed=1)  # other weights, momentum and stream
    assert not torch.equal(fresh[0].weight, net[0].weight)
    RestorePoint(
        fresh.state_dict(keep_vars=True), fresh_optimizer, generator=fresh_generator, state=state
    ).restore()
    kept, now = _state(net, optimizer, generator), _state(fresh, fresh_optimizer, fresh_generator)
    assert now.keys() == kept.keys() and all(torch.equal(now[k], kept[k]) for k in kept)


def test_a_saved_state_of_another_model_is_refused_changing_nothing():
    net, optimizer, _ = _setup()
    state = RestorePoint(net.state_dict(keep_vars=True), optimizer).state
    wider = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 1))
    with pytest.raises(ValueError, match=r"does not fit this model \(0.weight is \(4, 3\), here \(5, 3\)"):
        RestorePoint(wider.state_dict(keep_vars=True), torch.optim.SGD(wider.parameters()), state=state)
    partial = {**state, "model": {k: v for k, v in state["model"].items() if k != "2.bias"}}
    with pytest.raises(ValueError, match=r"missing 2.bias\): load a state saved with the same model config"):
        RestorePoint(net.state_dict(keep_vars=True), optimizer, state=partial)


def test_a_grad_scaler_is_restored():
    net, optimizer, _ = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale exists once something was scaled
    point = RestorePoint(net.state_dict(keep_vars=True), optimizer, scaler)
    scaler.update(new_scale=8.0)
    assert scaler.get_scale() == 8.0
    point.restore()
    assert scaler.get_scale() == 1024.0
