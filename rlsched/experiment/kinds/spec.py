"""What a method kind declares, in one place: the frozen ``MethodKind`` each kind's module makes, and the plot
styles several kinds share. Its own module so each kind's file can import it while the package's ``__init__``
imports the kinds."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple

if TYPE_CHECKING:
    from rlsched.config import Config
    from rlsched.experiment.harness import Controller, Job

Overrides = tuple[tuple[str, str], ...]  # ("section.key", "TOML value") pairs a job trains under


class Recipe(NamedTuple):
    """What a kind that changes the training config trains with: a fixed schedule from a base LR, under
    config overrides (a tuning-free optimizer, the nnU-Net recipe)."""

    schedule: str
    lr: float  # the default base LR (a job's base_lr overrides it)
    overrides: Overrides


@dataclass(frozen=True)
class Style:
    """A method's line in the comparison's figures: the next colour of ``palette`` ("learned" or "fixed", the
    cycles in ``compare.plots``) or, without one, ``colour``."""

    line: str = ":"
    width: float = 1.8
    palette: str = ""
    colour: str = "#444444"


LEARNED = Style("-", 3.0, "learned")  # bold, on top
TUNED = Style("-", palette="fixed")  # a schedule's own colour, solid
ALTERNATIVE = Style("-.", palette="fixed")  # practitioners' alternatives: range test, optimizers, recipes
BASELINE = Style()  # grey, dotted: what a method must beat without being one (untuned, the oracle)


@dataclass(frozen=True)
class MethodKind:
    """One kind of method (``Job.kind`` / ``compare.Method.kind``): how its episodes run and how the comparison
    counts, reports and draws it."""

    name: str
    # Job -> its controller; None: the kind's runs come from elsewhere (the PBT population, the Optuna search,
    # the oracle's grid), never as a harness job of this kind
    controller: Callable[[Job], Controller] | None
    needs: str  # what it needs from the user (the report's column)
    # how its epochs before evaluation are counted: a str.format template of the facts ``account`` is given
    accounting: str = "nothing"
    style: Style = BASELINE
    robust: bool = True  # a forced initial LR means something to it: it runs in the robustness tables
    learned: bool = False  # a trained controller (the report's bold rows, the paired tests)
    tuned: bool = False  # its base LR (a scripted rule: its target) comes from the base-LR grid search
    keeps_base_lr: bool = False  # a forced initial LR leaves its base LR alone (a scripted rule's target)
    sweeps: bool = (
        False  # each run first spends epochs of its own (EpisodeResult.extra_epochs), counted after
    )
    base_lr_text: str = "instance's initial"  # the report's base-LR cell for its runs without one
    # arg -> the schedule, base LR and config overrides it trains under (kinds that change the training config)
    recipe: Callable[[str], Recipe] | None = None
    # (config, a plain job) -> the job checked, with the overrides it needs (None: the plain job, one per rollout)
    job: Callable[[Config, Job], Job] | None = None
    baselines: Mapping[str, str] = field(default_factory=dict)  # its `compare --baselines` names -> Job.arg
    group: str = ""  # the `compare --baselines` group of those names ("" : none)
    untuned: MethodKind | None = None  # what it is without a base LR (a schedule from the initial LR)

    def account(self, **facts: object) -> str:
        """The accounting text with ``facts`` filled in; a fact it needs and was not given is a bug, named."""
        needed = {name for _, name, _, _ in string.Formatter().parse(self.accounting) if name}
        missing = sorted(needed - set(facts))
        if missing:
            raise ValueError(f"kind {self.name!r}: its accounting text needs {', '.join(missing)}")
        return self.accounting.format(**facts)

    def control(self, job: Job) -> Controller:
        """The controller of ``job``, or a one-line error for a kind whose runs come from elsewhere."""
        if self.controller is None:
            raise ValueError(
                f"job {job.method!r}: kind {self.name!r} does not run as a harness job (its runs come from "
                f"elsewhere: see rlsched/experiment/kinds/)"
            )
        return self.controller(job)
