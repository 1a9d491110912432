"""Population-based training (``experiment.pbt`` on Ray Tune; PB2: its GP-bandit explore) as a peer of the
learned controllers: a population per held-out instance, run by ``compare.running.pbt_runs``, not as harness
jobs; the best member's run is the method's result there."""

from __future__ import annotations

from rlsched.experiment.kinds.spec import TUNED, MethodKind

KIND = MethodKind(
    name="pbt",
    controller=None,
    needs="a population per run",
    accounting="{algorithm}: population {population} x {epochs} epochs on each of {instances} held-out "
    "instance(s): {total:,} epochs trained in all (nominal {nominal:,}), the best member by validation Dice "
    "reported (its test Dice in the tables)",
    style=TUNED,
    robust=False,  # its members start from their own spread of LRs
    base_lr_text="PBT",
)
