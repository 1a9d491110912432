"""One harness for every LR controller: learned policies, fixed schedules, random and constant baselines.

Every controller runs an episode of the *same* env (same instance: data, initial weights, epoch budget), so
their results differ only by the LRs they chose. Fixed schedules reach the trainer through ``env.set_lr`` and
the keep-LR action, i.e. through exactly the code path a policy's actions take. Episodes run in local worker
processes or on Ray actors (``run_jobs``), each holding one env.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from rlsched.agents.loading import Predictor
from rlsched.common.journal import journal_key
from rlsched.control.env import Instance, UNetLREnv
from rlsched.control.interface import STALL_DICE, STALL_EPOCHS
from rlsched.control.rules import ScriptedRule
from rlsched.seg.schedules import FixedSchedule
from rlsched.seg.trainer import counted_dice


class Controller(Protocol):
    """Chooses the next action; ``start`` is called with the reset info, ``act`` before every step."""

    name: str

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None: ...

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any: ...


@dataclass
class PolicyController:
    """A trained agent (SB3 or the reference PPO): anything with SB3's ``predict``.

    ``twin``: a scripted rule asked in every state too. Where it would have chosen the same action in every
    state of the episode, it would have played this very episode (on a CPU the env is deterministic given its
    actions; on a GPU this is one draw of the rule's run), so ``twins`` names it and its row can reuse the
    episode instead of training it again: how a held-out table affords its teacher row when the policy is still
    its teacher."""

    policy: Predictor
    name: str = "learned"
    deterministic: bool = True
    seed: int = 0  # sampled actions: rollout ``seed`` of an instance draws the same actions every time
    twin: ScriptedController | None = None
    _agrees: bool = field(default=False, init=False, repr=False)

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        if not self.deterministic:  # SB3 and the reference PPO sample with torch's global generator
            torch.manual_seed(self.seed * 1_000_003 + (env.instance.index if env.instance else 0))
        if self.twin is not None:
            self.twin.start(env, info)
        self._agrees = self.twin is not None

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        action, _ = self.policy.predict(obs, deterministic=self.deterministic)
        if self._agrees:
            assert self.twin is not None
            self._agrees = np.array_equal(np.asarray(action).reshape(-1), [self.twin.act(env, obs, info)])
        return action

    def twins(self) -> tuple[str, ...]:
        """The controllers that would have played exactly the episode just run."""
        return (self.twin.name,) if self._agrees and self.twin is not None else ()


@dataclass
class ScheduleController:
    """A named torch LR schedule with its own base LR (``None``: start from the instance's initial LR)."""

    schedule: str
    base_lr: float | None = None
    name: str = ""
    _plan: FixedSchedule | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.schedule

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        base = self.base_lr if self.base_lr is not None else info["lr"]
        self._plan = FixedSchedule(self.schedule, base, env.config.env.steps)

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        assert self._plan is not None, "start() must run before act()"
        if info.get("epoch", 0) > 0:
            self._plan.step(info["dice_mean"])
        env.set_lr(self._plan.lr)
        return env.keep_action


@dataclass
class ScriptedController:
    """A scripted rule as a controller (``follow_suggestion``: the suggested-LR rule, shifted by ``offset``
    decades)."""

    target: float
    name: str = "scripted"
    follow_suggestion: bool = False
    offset: float = 0.0

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        self._rule = ScriptedRule(env.config.env, self.target, self.follow_suggestion, self.offset)

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        return int(self._rule.actions(obs)[0])


@dataclass
class RandomController:
    """Uniformly random actions: the floor any learned controller must clear."""

    seed: int = 0
    name: str = "random"

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        env.action_space.seed(self.seed + (env.instance.index if env.instance else 0))

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        return env.action_space.sample()


@dataclass
class EpisodeResult:
    """One controlled training run, step by step, and its score on the instance's test split."""

    method: str
    instance: Instance
    records: list[dict[str, Any]]  # env info of the reset and of every step
    total_reward: float
    seconds: float  # wall time of training and validation
    test_dice: float  # after the last step (0 if diverged): reported, never seen by the controller
    # controllers that would have played exactly this episode (``PolicyController.twin``); not saved: a journal
    # holds each method's own episode
    twins: tuple[str, ...] = ()
    observations: list[list[float]] = field(default_factory=list)  # each the controller acted on; not saved

    @property
    def diverged(self) -> bool:
        return bool(self.records[-1].get("diverged", False))

    @property
    def rollbacks(self) -> int:
        """Slices that blew up and were undone (``env.on_divergence = "rollback"``): the run went on after each."""
        return sum(bool(r.get("rolled_back", False)) for r in self.records)

    @property
    def longest_stall(self) -> int:
        """The most consecutive slices that ended at Dice below ``STALL_DICE`` while training at one LR (within 5 %
        of the stretch's first): a run sitting at "all background" while its controller keeps the LR, the failure
        a comparison must show rather than average away. Undone slices count: the LR they leave is what trains."""
        longest = current = 0
        start_lr = math.nan
        for record, dice in zip(self.records[1:], self.dices[1:]):
            lr = float(record["lr"])
            if dice < STALL_DICE and current and abs(math.log(lr / start_lr)) <= math.log(1.05):
                current += 1
            elif dice < STALL_DICE:
                current, start_lr = 1, lr
            else:
                current = 0
            longest = max(longest, current)
        return longest

    def stalled(self, epochs_per_step: int) -> bool:
        """More than ``STALL_EPOCHS`` epochs at Dice below ``STALL_DICE`` at one LR (``longest_stall``)."""
        return self.longest_stall * epochs_per_step > STALL_EPOCHS

    @property
    def dices(self) -> list[float]:
        """The Dice that counts after the reset and after every step (``trainer.counted_dice``)."""
        return [counted_dice(r) for r in self.records]

    @property
    def final_dice(self) -> float:
        return self.dices[-1]

    def dice_curve(self, steps: int) -> np.ndarray:
        """Dice after each of ``steps`` steps (index 0: before training); a diverged run scores 0 for the rest of
        the budget."""
        dices = np.zeros(steps + 1)
        dices[: len(self.dices)] = self.dices
        return dices

    @property
    def epochs(self) -> int:
        return int(self.records[-1]["epoch"])

    @property
    def extra_epochs(self) -> float:
        """Training the controller did outside the episode's budget (an LR range test's sweep), in epochs."""
        return float(self.records[0].get("extra_epochs", 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "instance": asdict(self.instance),
            "records": self.records,
            "total_reward": self.total_reward,
            "seconds": self.seconds,
            "test_dice": self.test_dice,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeResult:
        """An episode from ``to_dict``; one journaled before test splits existed has no test Dice to report,
        and making one up would put validation numbers (or NaN) in a test column: refused."""
        if "test_dice" not in data:
            raise ValueError(
                f"the {data['method']!r} episode on {data['instance']['split']} instance "
                f"{data['instance']['index']} was saved before test splits existed and has no test "
                "Dice: start a new comparison (or journal) instead of resuming the old one"
            )
        return cls(
            data["method"],
            Instance(**data["instance"]),
            data["records"],
            data["total_reward"],
            data["seconds"],
            data["test_dice"],
        )


def run_episode(
    env: UNetLREnv, controller: Controller, instance: Instance, initial_lr: float | None = None
) -> EpisodeResult:
    """Run one full episode of ``controller`` on ``instance`` (optionally forcing the initial LR), then score
    it once on the instance's test split: the controller has acted on validation alone."""
    options: dict[str, Any] = {"instance": instance}
    if initial_lr is not None:
        options["lr"] = initial_lr
    obs, info = env.reset(options=options)
    controller.start(env, info)
    records, total, seen = [info], 0.0, []
    terminated = truncated = False
    while not (terminated or truncated):
        seen.append(np.asarray(obs, dtype=float).tolist())
        action = controller.act(env, obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        records.append(info)
        total += reward
    twins = controller.twins() if isinstance(controller, PolicyController) else ()
    return EpisodeResult(
        controller.name, env.instance, records, total, env.seconds, env.evaluate_test(), twins, seen
    )


@dataclass(frozen=True)
class Job:
    """One episode to run, described by value so it can travel to a worker process."""

    method: str  # the name results are reported under
    # a registered kind (experiment.kinds: its module says what arg and base_lr mean; make a job whose kind
    # needs config overrides with kinds.method_job)
    kind: str
    arg: str
    instance: Instance
    base_lr: float | None = None  # schedules: their base LR (None = the instance's initial LR)
    initial_lr: float | None = None  # force the episode's initial LR (robustness runs)
    # config changes this episode trains under, as ("section.key", "TOML value") pairs (experiment.kinds makes
    # them)
    overrides: tuple[tuple[str, str], ...] = ()
    rollout: int = 0  # "policy_sample": which stochastic rollout of the policy (seeds its action sampling)
    # policies: load with trust=True (the user allowed unpickling it); how, not what, it runs
    trust: bool = False
    # policies: a scripted rule (its method name, rule arg and LR) to check against in every state
    # (``PolicyController.twin``); what is reported about the run, not what it runs
    twin: tuple[str, str, float] | None = None

    @property
    def key(self) -> str:
        """The job's full description as one string: what a journal of finished jobs is keyed by (not how its
        policy is loaded, nor which rule it is checked against)."""
        return journal_key({k: v for k, v in asdict(self).items() if k not in ("trust", "twin")})
