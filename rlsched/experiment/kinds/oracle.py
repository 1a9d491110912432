"""The per-instance oracle: the best of ``ORACLE_SCHEDULES`` over an LR grid on each held-out instance, picked
on its validation Dice and reported on its test Dice. The room a schedule has there, an upper bound no method can
claim, not a method: its grid runs as ``schedule`` jobs (``compare.running.oracle_jobs``)."""

from __future__ import annotations

from rlsched.experiment.kinds.spec import BASELINE, MethodKind

ORACLE = "oracle"  # its kind, and the name its row is reported under
ORACLE_SCHEDULES = ("constant", "cosine")

KIND = MethodKind(
    name=ORACLE,
    controller=None,
    needs="a grid per held-out instance (an upper bound)",
    accounting=f"{ORACLE}: {{runs}} runs per held-out instance ({{schedules}} x {{lrs}} LRs, {{per_decade}} "
    "per decade), the best by validation Dice reported; epochs beyond one run each; picked {choices}",
    style=BASELINE,
    robust=False,
    base_lr_text="per instance",
)
