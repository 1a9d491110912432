"""Mechanic (Cutkosky, Defazio & Mehta 2023, ``mechanic-pytorch``): a base optimizer whose updates are scaled by
a factor Mechanic learns online, so the base LR needs no tuning.

Mechanic keeps its own state in ``optimizer.state["_mechanic"]``, with the reference weights keyed by the
parameter tensors themselves. ``state_dict()`` keeps those keys as they are, so a copy of it (the trainer's
rollback and checkpoints) holds copies of the tensors as keys, and after ``load_state_dict`` the next step
looks its parameters up in vain (a ``KeyError``). The two hooks below store those entries by parameter index,
as torch does for the base optimizer's own state, and map them back to the parameters on load.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from rlsched.seg.optimizers.spec import Request, TuningFree

if TYPE_CHECKING:
    import torch

STATE = "_mechanic"  # where mechanic_pytorch keeps its state
BY_INDEX = "params_by_index"  # the per-parameter entries in a state dict, by parameter index


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters in the order torch numbers them in a state dict."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _pack(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any] | None:
    """``state_dict`` post-hook: Mechanic's per-parameter entries by index instead of by tensor."""
    mechanic = state_dict["state"].get(STATE)
    if mechanic is None:  # no step taken yet
        return None
    packed = {key: value for key, value in mechanic.items() if isinstance(key, str)}
    packed[BY_INDEX] = {i: mechanic[p] for i, p in enumerate(_params(optimizer)) if p in mechanic}
    return {**state_dict, "state": {**state_dict["state"], STATE: packed}}


def _unpack(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any] | None:
    """``load_state_dict`` pre-hook: the entries ``_pack`` numbered, keyed by this optimizer's parameters again."""
    packed = state_dict["state"].get(STATE)
    if packed is None or BY_INDEX not in packed:
        return None
    params = _params(optimizer)
    mechanic: dict[Any, Any] = {key: value for key, value in packed.items() if key != BY_INDEX}
    mechanic.update({params[i]: entry for i, entry in packed[BY_INDEX].items()})
    return {**state_dict, "state": {**state_dict["state"], STATE: mechanic}}


def build(spec: TuningFree, package: ModuleType, params: Any, request: Request) -> torch.optim.Optimizer:
    """``mechanize(torch.optim.<cls>)`` with the package's defaults, its state made to survive a state dict."""
    import torch

    optimizer = package.mechanize(getattr(torch.optim, spec.cls))(params, **spec.kwargs(request))
    optimizer.register_state_dict_post_hook(_pack)
    optimizer.register_load_state_dict_pre_hook(_unpack)
    return optimizer


# README: "optimizer = mechanize(torch.optim.SGD)(model.parameters(), lr=1.0)"; the lr may be anything but
# very small values (numerical precision). mechanize's other settings keep their defaults (README: s_decay
# "We use a default of 0.01 in all our experiments"; the default betas (0.9, ..., 0.999999) work in a range of
# tasks; s_init 1e-8; store_delta=False "to minimize memory usage"). SGD runs with momentum 0.9, as the other
# SGD variants here.
OPTIMIZERS = {
    "mechanic_sgd": TuningFree("mechanic_pytorch", "SGD", lr=1.0, momentum=0.9, build=build),
    "mechanic_adam": TuningFree("mechanic_pytorch", "Adam", lr=1.0, build=build),
}
