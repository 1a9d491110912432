"""A tuning-free optimizer (``Job.arg``: a name in ``seg.optimizers.OPTIMIZERS``, whose family files are their
registry) at its recommended constant LR (``Job.base_lr`` overrides it)."""

from __future__ import annotations

from rlsched.experiment.kinds.recipe import recipe_controller, recipe_job
from rlsched.experiment.kinds.spec import ALTERNATIVE, MethodKind, Overrides, Recipe
from rlsched.seg.optimizers import OPTIMIZERS


def recipe(name: str) -> Recipe:
    """Optimizer ``name`` (and its momentum, for the SGD variants) at its recommended constant LR."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown tuning-free optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[name]
    needs: Overrides = (("optim.name", name),)
    if spec.momentum is not None:
        needs += (("optim.momentum", repr(spec.momentum)),)
    return Recipe("constant", spec.lr, needs)


KIND = MethodKind(
    name="optimizer",
    controller=recipe_controller(recipe),
    needs="nothing",
    accounting="nothing: {arg} at its recommended LR, {schedule}",
    style=ALTERNATIVE,
    robust=False,  # it has its own LR
    recipe=recipe,
    job=recipe_job(recipe),
    baselines={name: name for name in OPTIMIZERS},
    group="tuningfree",
)
