"""The nnU-Net recipe (``nnUNetTrainer``; ``Job.arg`` unused): SGD, Nesterov momentum 0.99, weight decay 3e-5,
gradient-norm clip 12, poly decay (exponent 0.9) from LR 1e-2."""

from __future__ import annotations

from rlsched.experiment.kinds.recipe import recipe_controller, recipe_job
from rlsched.experiment.kinds.spec import ALTERNATIVE, MethodKind, Overrides, Recipe

NNUNET_LR = 1e-2
NNUNET_SCHEDULE = "poly"  # lr = base * (1 - step / steps) ** 0.9, nnU-Net's PolyLRScheduler
NNUNET: Overrides = (
    ("optim.name", "sgd"),
    ("optim.momentum", "0.99"),
    ("optim.nesterov", "true"),
    ("optim.weight_decay", "3e-05"),
    ("optim.grad_clip", "12.0"),
)


def recipe(arg: str) -> Recipe:
    return Recipe(NNUNET_SCHEDULE, NNUNET_LR, NNUNET)


KIND = MethodKind(
    name="nnunet",
    controller=recipe_controller(recipe),
    needs="nothing (a recipe)",
    accounting="nothing: nnU-Net's recipe (SGD, Nesterov 0.99, {schedule} 0.9 from {lr:g})",
    style=ALTERNATIVE,
    robust=False,  # it has its own LR
    recipe=recipe,
    job=recipe_job(recipe),
    baselines={"nnunet": ""},
)
