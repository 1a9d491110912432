"""What a comparison compares: its settings, the methods under test (with the epochs each spent before
evaluation), the base-LR tuning and everything one comparison ran."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

from rlsched.agents.loading import LoadedPolicy, check_compatible
from rlsched.common.files import read_jsonl
from rlsched.config import Config
from rlsched.control.env import Instance
from rlsched.experiment.harness import EpisodeResult, Job
from rlsched.experiment.jobs import BACKENDS, JobFailure
from rlsched.experiment.kinds import (
    KINDS,
    MethodKind,
    method_job,
    method_kind,
    policy,
    random_policy,
    schedule,
)
from rlsched.experiment.tuning import TUNABLE, Tuning, is_tunable, tuned_kind
from rlsched.pretrained import AGENT_NAME, PROVENANCE, read_provenance
from rlsched.seg.schedules import SCHEDULES


def initial_lr_name(schedule: str) -> str:
    """How a schedule run untuned from each instance's initial LR is reported."""
    return f"{schedule} (initial LR)"


CONSTANT_INITIAL = initial_lr_name("constant")
AGENT_KINDS = {".zip": "sb3", ".pt": "reference", ".rllib": "rllib"}  # model suffix -> method name suffix
# what a practitioner runs instead of a learned schedule, as its kind declares them (experiment.kinds):
# name -> (kind, arg)
BASELINES = {name: (kind.name, arg) for kind in KINDS.values() for name, arg in kind.baselines.items()}
BASELINE_GROUPS = {
    **{kind.group: tuple(kind.baselines) for kind in KINDS.values() if kind.group},
    "all": tuple(BASELINES),
}


def expand_baselines(names: tuple[str, ...]) -> tuple[str, ...]:
    """Baseline names with groups (``range_test``, ``tuningfree``, ``all``) spelled out, in order, once each."""
    unknown = [n for n in names if n not in BASELINES and n not in BASELINE_GROUPS]
    if unknown:
        raise ValueError(
            f"unknown baseline(s) {', '.join(map(repr, unknown))}; choose from: "
            f"{', '.join([*BASELINES, *BASELINE_GROUPS])}"
        )
    spelled = [m for n in names for m in BASELINE_GROUPS.get(n, (n,))]
    return tuple(dict.fromkeys(spelled))


@dataclass(frozen=True)
class Settings:
    """What to compare and how hard to look (the CLI flags)."""

    seeds: int | None = None  # held-out instances to evaluate on; None = all of the preset's
    schedules: tuple[str, ...] = tuple(SCHEDULES)
    tune_instances: int = 4  # train instances of the base-LR grid search (one or two make a noisy choice)
    grid_per_decade: int = 2
    robustness: tuple[float, ...] = (0.01, 0.1, 10.0, 100.0)  # initial LR = factor x best tuned constant LR
    dice_target: float = 0.8
    workers: int = 2
    backend: str = "local"  # where episodes run: local processes or Ray actors
    gpus_per_worker: float = 0.0  # ray: GPU share of each actor / PBT member (0: Ray assigns none)
    pbt_population: int = 0  # > 0: add PBT (Ray Tune) with this population per held-out instance
    pb2_population: int = 0  # > 0: add PB2 (PBT with a GP-bandit explore) with this population
    baselines: tuple[str, ...] = ()  # BASELINES (or BASELINE_GROUPS) to add
    optuna_epochs: int | None = None  # Optuna's budget (None: what the first learned agent's training spent)
    # > 0: also each agent's sampled actions, this many rollouts per instance, averaged
    sampled_rollouts: int = 0
    # schedules also run untuned, from each instance's initial LR
    at_initial_lr: tuple[str, ...] = ("constant",)
    # > 0: the per-instance oracle (best of its schedules over this many LRs per decade, picked on validation)
    oracle_per_decade: int = 0

    def __post_init__(self) -> None:
        if self.oracle_per_decade < 0:
            raise ValueError(
                f"--oracle {self.oracle_per_decade}: LRs per decade is >= 1 (or 0: no oracle row)"
            )
        if self.sampled_rollouts < 0:
            raise ValueError(f"--sampled-rollouts {self.sampled_rollouts}: a number of rollouts is >= 0")
        object.__setattr__(self, "baselines", expand_baselines(self.baselines))
        if self.optuna_epochs is not None and self.optuna_epochs < 1:
            raise ValueError(f"--optuna-epochs {self.optuna_epochs}: the search needs a budget of >= 1 epoch")
        if self.optuna_epochs is not None and "optuna" not in self.baselines:
            raise ValueError(
                "--optuna-epochs is the optuna baseline's budget, and it is not compared: add "
                "--baselines optuna, or drop --optuna-epochs"
            )
        unknown = [s for s in self.schedules if not is_tunable(s)]
        if unknown or not self.schedules:
            raise ValueError(
                f"unknown schedule(s) {', '.join(map(repr, unknown))}; choose from: "
                f"{', '.join(TUNABLE)}, offset:<decades>"
                if unknown
                else "no schedules: pass at least one"
            )
        untunable = [s for s in self.at_initial_lr if s not in SCHEDULES]
        if untunable:
            raise ValueError(
                f"--at-initial-lr {', '.join(map(repr, untunable))}: not a fixed schedule; choose from: "
                f"{', '.join(SCHEDULES)}"
            )
        if self.seeds is not None and self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds}: evaluate on at least 1 held-out instance")
        if self.tune_instances < 1 or self.grid_per_decade < 1 or self.workers < 1:
            raise ValueError("--tune-instances, --grid-per-decade and --workers must be >= 1")
        if not all(f > 0 and math.isfinite(f) for f in self.robustness):
            raise ValueError(f"--robustness factors must be positive numbers, got {list(self.robustness)}")
        if not 0 < self.dice_target <= 1:
            raise ValueError(f"--dice-target {self.dice_target}: a Dice target lies in (0, 1]")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if (self.pbt_population or self.pb2_population) and self.backend != "ray":
            raise ValueError("--pbt-population / --pb2-population run on Ray Tune: add --backend ray")
        if not (math.isfinite(self.gpus_per_worker) and self.gpus_per_worker >= 0):
            raise ValueError(f"--num-gpus-per-worker {self.gpus_per_worker}: a GPU share is a number >= 0")
        if self.gpus_per_worker and self.backend != "ray":
            raise ValueError(
                "--num-gpus-per-worker places Ray actors: add --backend ray (local workers see every GPU)"
            )
        for flag, population in (
            ("--pbt-population", self.pbt_population),
            ("--pb2-population", self.pb2_population),
        ):
            if population < 0 or population == 1:
                raise ValueError(f"{flag} {population}: a population needs at least 2 members")


@dataclass(frozen=True)
class Method:
    """One controller under comparison, with the training epochs it consumed before evaluation."""

    name: str
    kind: (
        str  # a registered kind (experiment.kinds): how its jobs run, and how it is counted, shown and drawn
    )
    arg: str  # model path | schedule name | random seed | ... (the kind's Job.arg)
    # schedules: tuned base LR (None: the instance's initial LR); scripted: target
    base_lr: float | None = None
    epochs_before: float = 0.0  # NaN when unknown (an agent without its training records)
    accounting: str = "nothing"  # how epochs_before was counted, for the report
    needs: str = ""  # what it needed from the user (default: its kind's)
    rollouts: int = 1  # episodes per instance ("policy_sample": sampled rollouts, averaged per instance)
    trust: bool = False  # policies: loaded with trust=True (--trust-model), so their workers load them so too

    def __post_init__(self) -> None:
        declared = self.declared  # an unknown kind is refused here, naming the registered ones
        if not self.needs:
            object.__setattr__(self, "needs", declared.needs)

    @property
    def declared(self) -> MethodKind:
        """Its kind's declaration; without a base LR, the kind's untuned one where it has one (a schedule from
        the instance's initial LR)."""
        kind = method_kind(self.kind)
        return kind.untuned if self.base_lr is None and kind.untuned is not None else kind

    @property
    def robust(self) -> bool:
        """Whether a forced initial LR means anything to it (its kind says: the range test picks its own LR,
        the tuning-free optimizers and the nnU-Net recipe have theirs, a schedule at the initial LR would repeat
        the tuned schedule's robustness run)."""
        return self.declared.robust

    @property
    def at_initial_lr(self) -> bool:
        """A fixed schedule run untuned, from each instance's initial LR (what a user who does not tune gets)."""
        return self.base_lr is None and method_kind(self.kind).untuned is not None

    @property
    def learned(self) -> bool:
        return self.declared.learned

    @property
    def tuned(self) -> bool:
        return self.declared.tuned and self.base_lr is not None

    def jobs(self, config: Config, instance: Instance, initial_lr: float | None = None) -> list[Job]:
        """Its episodes on ``instance`` (one, or one per sampled rollout). Robustness runs (``initial_lr`` set)
        start every method, base LRs included, from that LR; the scripted rule keeps steering towards its tuned
        target from there."""
        declared = self.declared
        if declared.job is not None:  # a kind whose job it makes and checks itself: one per instance
            return [method_job(config, self.kind, self.arg, self.name, instance, self.base_lr, initial_lr)]
        base_lr = self.base_lr if initial_lr is None or declared.keeps_base_lr else initial_lr
        return [
            Job(
                self.name,
                self.kind,
                self.arg,
                instance,
                base_lr=base_lr,
                initial_lr=initial_lr,
                rollout=k,
                trust=self.trust,
            )
            for k in range(self.rollouts)
        ]


@dataclass
class Comparison:
    """Everything one comparison ran: the input to the report and the plots."""

    config: Config
    settings: Settings
    methods: list[Method]
    tuning: Tuning
    instances: list[Instance]
    results: list[EpisodeResult]  # the main runs
    # factor -> (the initial LR it gave, the runs from it)
    robustness: dict[float, tuple[float, list[EpisodeResult]]] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of this session (a resumed comparison: since the resume)
    failures: list[JobFailure] = field(default_factory=list)  # jobs whose worker kept dying
    reused: int = 0  # episodes read back from the journal of a resumed comparison

    def groups(self) -> list[tuple[float | None, float | None, list[EpisodeResult]]]:
        """(factor, forced initial LR, runs): the main runs (None, None), then each robustness factor."""
        return [(None, None, self.results)] + [(f, lr, runs) for f, (lr, runs) in self.robustness.items()]


def agent_methods(policies: list[LoadedPolicy], config: Config) -> list[Method]:
    """One method per trained agent; refuses agents whose observation/action interface is not the env's."""
    methods: list[Method] = []
    for loaded in policies:
        check_compatible(loaded, config)
        shipped = read_provenance(loaded.path) is not None
        base = AGENT_NAME if shipped else f"learned-{AGENT_KINDS.get(loaded.path.suffix, 'reference')}"
        name = base if all(m.name != base for m in methods) else f"{base}#{len(methods) + 1}"
        epochs, source = training_epochs(loaded)
        methods.append(
            Method(
                name,
                policy.KIND.name,
                str(loaded.path),
                epochs_before=epochs,
                trust=loaded.trusted,
                accounting=policy.KIND.account(
                    model=f"{'the shipped controller, ' if shipped else ''}{loaded.path}", source=source
                ),
            )
        )
    return methods


def sampled_methods(agents: list[Method], rollouts: int) -> list[Method]:
    """Each agent again, acting on sampled rather than most likely actions: ``rollouts`` seeded episodes per
    instance, averaged per instance (the policy is stochastic; its argmax is one way to use it)."""
    return [
        replace(
            m, name=f"{m.name} (sampled, mean of {rollouts})", kind=policy.SAMPLED.name, rollouts=rollouts
        )
        for m in agents
        if rollouts and m.kind == policy.KIND.name
    ]


def training_epochs(policy: LoadedPolicy) -> tuple[float, str]:
    """UNet training epochs the agent's PPO training consumed, from the run directory it was saved in (the
    shipped controller: from the provenance its export copied out of that run)."""
    shipped = read_provenance(policy.path)
    if shipped is not None:
        return (
            float(shipped["training_epochs"]),
            f"{shipped['training_episodes']} episodes of run {shipped['source_run']}, in {PROVENANCE}",
        )
    for run_dir in (policy.path.parent, policy.path.parent.parent):
        episodes = run_dir / "episodes.jsonl"
        if episodes.is_file():
            records = read_jsonl(episodes)
            return float(sum(int(r["epochs"]) for r in records)), f"{len(records)} episodes in episodes.jsonl"
        last = run_dir / "checkpoints" / "last.json"
        if last.is_file():
            steps = int(json.loads(last.read_text())["num_timesteps"])
            per_step = policy.config.env.epochs_per_step
            return float(steps * per_step), f"{steps} env steps x {per_step} epochs in checkpoints/last.json"
    return math.nan, "unknown: no episodes.jsonl or checkpoints/last.json beside the model"


def baseline_methods(tuning: Tuning, at_initial_lr: tuple[str, ...] = ("constant",)) -> list[Method]:
    """Tuned fixed schedules, the schedules run from the instance's initial LR and the random policy."""
    facts = {"lrs": len(tuning.grid), "instances": tuning.instances, "epochs": tuning.epochs}
    tuned = [
        Method(
            name,
            tuned_kind(name),
            name,
            lr,
            tuning.epochs_per_schedule,
            method_kind(tuned_kind(name)).account(**facts),
        )
        for name, lr in tuning.base_lrs.items()
    ]
    untuned = [Method(initial_lr_name(name), schedule.KIND.name, name) for name in at_initial_lr]
    return tuned + untuned + [Method("random", random_policy.KIND.name, "0")]


def recipe_method(name: str) -> Method:
    """The ``--baselines`` method ``name`` of a kind that trains under a recipe (a tuning-free optimizer, the
    nnU-Net recipe): at its recipe's LR, with its kind's accounting."""
    kind, arg = BASELINES[name]
    declared = method_kind(kind)
    schedule_name, lr, _ = declared.recipe(arg)
    return Method(name, kind, arg, lr, accounting=declared.account(arg=arg, schedule=schedule_name, lr=lr))
