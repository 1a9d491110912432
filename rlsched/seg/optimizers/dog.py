"""DoG (Ivgi, Hinder & Carmon 2023, ``dog-optimizer``): SGD whose step size is the distance travelled from the
initial weights over the root of the summed squared gradient norms; no LR to tune.

Choices, from the ``dog.DoG`` docstring:

- ``lr`` 1.0: "The default value is 1.0 and changing it is not recommended".
- ``reps_rel``, which sets the first step: "Suggested value is 1e-6, unless the model uses batch-normalization,
  in which case the suggested value is 1e-4", so it follows ``[model] norm``.
- No iterate averaging, although the docstring calls it "crucial" for the best performance: the package's
  ``PolynomialDecayAverager`` keeps a second, averaged model, and the trainer evaluates, rolls back and
  checkpoints its one model and its optimizer. The comparison scores the last iterate.
- Plain DoG, not the layer-wise ``LDoG``: the one the docstring introduces first, one global step size like
  the other optimizers here.

One change to the package: ``DoG`` asserts that the summed squared gradient norm is positive, which a NaN
gradient fails, so a blown-up batch would raise instead of reaching the trainer's divergence check. The step
goes on with a NaN step size instead (what ``python -O``, which drops asserts, does anyway): the weights turn
NaN and the trainer reports the divergence, or undoes it.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

from rlsched.seg.optimizers.spec import Request, TuningFree

if TYPE_CHECKING:
    import torch

REPS_REL = 1e-6
REPS_REL_BATCH_NORM = 1e-4


@functools.cache
def _diverging(base: type) -> type:
    """``base`` (DoG) letting a NaN gradient through to the weights rather than raising."""
    import torch

    class Diverging(base):  # type: ignore[misc, valid-type]
        def _update_group_state(self, group: dict[str, Any], init: list[torch.Tensor]) -> None:
            try:
                super()._update_group_state(group, init)
            except AssertionError:  # "DoG cannot work when G is not strictly positive": G is NaN
                group["eta"] = [torch.full_like(group["G"], math.nan)] * len(group["params"])

    return Diverging


def build(spec: TuningFree, package: ModuleType, params: Any, request: Request) -> torch.optim.Optimizer:
    """``dog.DoG`` with its recommended ``reps_rel`` for the model's normalisation."""
    reps_rel = REPS_REL_BATCH_NORM if request.batch_norm else REPS_REL
    return _diverging(getattr(package, spec.cls))(params, **spec.kwargs(request), reps_rel=reps_rel)


OPTIMIZERS = {
    "dog": TuningFree("dog", "DoG", lr=1.0, build=build),
}
