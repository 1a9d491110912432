"""Policy improvement from branched rollouts: a Monte-Carlo Q of a few actions in sampled states.

Cloning the teacher rule gives PPO a sane start but no reason to leave it: the rule's own episodes never show
what another LR would have done. Branching does. In a state of a base-policy episode the env is frozen
(``UNetLREnv.snapshot``), each candidate action is taken for one slice, the base policy finishes the run, and
the final validation Dice is that action's value (undiscounted returns telescope to it). The base action's value
is the main episode's own final Dice, so it costs nothing. Acting on the argmax of these values in every state
cannot do worse than the base policy in expectation (one step of policy iteration); labelling the branched states
with it and cloning the labels (``agents.teacher.fit_policy``) is the distillation that carries it to states
never branched. Only validation Dice is read: test Dice stays for the held-out report.

With residual actions the rule re-applies the suggestion after every slice, so a one-slice deviation is mostly
undone before it can show (a too-high suggested LR keeps a run collapsed whatever one slice did). ``hold``
branches keep the candidate offset for the rest of the run instead: the improved policy switches to that offset
at the branched state, and the labels it is cloned from are the states that switch really visits.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize
from tqdm import tqdm

from rlsched.agents.teacher import fit_policy
from rlsched.agents.workers import die_with, start_method
from rlsched.common.files import append_jsonl
from rlsched.common.stats import mean_ci
from rlsched.config import Config, EnvConfig
from rlsched.control.env import Instance, UNetLREnv, make_instances
from rlsched.control.interface import STALL_DICE, STALL_EPOCHS, feature_index
from rlsched.control.rules import FIRST_STEP, ScriptedRule

Policy = Callable[[np.ndarray], int]  # raw observation -> action
DICE = feature_index("dice")


@dataclass(frozen=True)
class BranchedState:
    """One state of a base-policy episode and what each candidate action led to from it."""

    observation: np.ndarray  # raw (unnormalised), as the env returned it
    step: int
    base_action: int
    values: dict[int, float]  # action -> final validation Dice when the base policy follows it
    # hold branches: action -> (the observations after each of its slices but the last, the rewards of its slices)
    paths: dict[int, tuple[list[np.ndarray], list[float]]] = field(default_factory=dict)

    def best(self, margin: float) -> int:
        """The action to label this state with: the best candidate where it beats the base action by more than
        ``margin`` (ties and noise keep the base action)."""
        best = max(self.values, key=self.values.__getitem__)
        return best if self.values[best] > self.values[self.base_action] + margin else self.base_action


@dataclass(frozen=True)
class BranchedEpisode:
    """A base-policy episode with its branched states; ``epochs`` counts every epoch trained, branches too."""

    instance: Instance
    observations: list[np.ndarray]
    actions: list[int]
    rewards: list[float]
    lrs: list[float]  # the LR each step of the main episode trained at
    initial_dice: float
    final_dice: float
    branches: list[BranchedState]
    epochs: int

    def record(self) -> dict[str, object]:
        """Its ``episodes.jsonl`` record: the main episode's LRs, and each branched state's raw observation and
        what its candidates ended at (action index -> final validation Dice), so an advantage model can be fitted
        to what branching found without rerunning it."""
        return {
            "worker": -1,
            "phase": "branched",
            "split": self.instance.split,
            "instance": self.instance.index,
            "initial_lr": self.instance.initial_lr,
            "initial_dice": self.initial_dice,
            "final_dice": self.final_dice,
            "diverged": False,
            "epochs": self.epochs,
            "penalty": 0.0,
            "lrs": self.lrs,
            "branched_states": len(self.branches),
            "branches": [
                {
                    "step": b.step,
                    "base_action": b.base_action,
                    "observation": [float(x) for x in b.observation],
                    "values": {str(a): v for a, v in b.values.items()},
                }
                for b in self.branches
            ],
        }

    def labels(self, margin: float) -> list[int]:
        """The base actions, improved where a branch found better."""
        improved = {b.step: b.best(margin) for b in self.branches}
        return [improved.get(t, a) for t, a in enumerate(self.actions)]

    def switched(self, margin: float) -> tuple[list[np.ndarray], list[int], list[float]]:
        """Hold branches: the episode of the improved policy (observations, actions, rewards): the base episode up
        to its first branched state whose best held offset beats the base's by ``margin``, then that offset to the
        end along the path it took; the base episode where none does."""
        for b in sorted(self.branches, key=lambda b: b.step):
            best = b.best(margin)
            if best != b.base_action:
                later, rewards = b.paths[best]
                t = b.step
                observations = [*self.observations[: t + 1], *later]
                return (
                    observations,
                    [*self.actions[:t], *[best] * (len(later) + 1)],
                    [*self.rewards[:t], *rewards],
                )
        return self.observations, self.actions, self.rewards


def _finish(
    env: UNetLREnv, policy: Policy, obs: np.ndarray, first: int, hold: bool = False
) -> tuple[float, int, list[np.ndarray], list[float]]:
    """Step to the end (``first``, then the policy, or ``first`` throughout with ``hold``); the final validation
    Dice, the slices trained, the observations after each slice but the last, and the rewards."""
    action, observations, rewards = first, [], []
    while True:
        obs, reward, terminated, _, info = env.step(action)
        rewards.append(float(reward))
        if terminated:
            return float(info["final_dice"]), len(rewards), observations, rewards
        observations.append(obs)
        action = first if hold else policy(obs)


def branch_episode(
    env: UNetLREnv,
    policy: Policy,
    instance: Instance,
    branch_steps: Iterable[int],
    candidates: Iterable[int],
    hold: bool = False,
    stall_states: int = 0,
) -> BranchedEpisode:
    """Run ``policy`` on ``instance``; at each of ``branch_steps`` (and at the first ``stall_states`` states
    where the run has sat below validation Dice ``STALL_DICE`` for ``STALL_EPOCHS`` epochs: one more slice at
    that LR and it stalls) also try every candidate action from that state (then ``policy`` to the end, or the
    candidate throughout with ``hold``) and restore. The env is left at the end of the main episode."""
    steps, per_step = set(branch_steps), env.config.env.epochs_per_step
    below = 0  # slices in a row that ended below STALL_DICE
    obs, start = env.reset(options={"instance": instance})
    observations: list[np.ndarray] = []
    actions: list[int] = []
    rewards: list[float] = []
    lrs: list[float] = []
    pending: list[tuple[int, np.ndarray, int, dict[int, float], dict]] = []
    slices = 0
    while True:
        action = int(policy(obs))
        observations.append(obs)
        actions.append(action)
        t = len(actions) - 1
        below = below + 1 if obs[FIRST_STEP] < 0.5 and obs[DICE] < STALL_DICE else 0
        if below * per_step >= STALL_EPOCHS and stall_states > 0:
            stall_states -= 1
            steps.add(t)
        if t in steps:
            frozen, values, paths = env.snapshot(), {}, {}
            for candidate in candidates:
                if candidate != action:
                    values[candidate], spent, later, gains = _finish(env, policy, obs, candidate, hold)
                    if hold:
                        paths[candidate] = (later, gains)
                    slices += spent
                    env.restore(frozen)
            pending.append((t, obs, action, values, paths))
        obs, reward, terminated, _, info = env.step(action)
        rewards.append(float(reward))
        lrs.append(float(info["lr"]))
        slices += 1
        if terminated:
            break
    final = float(info["final_dice"])
    branches = [BranchedState(o, t, a, {**v, a: final}, p) for t, o, a, v, p in pending]
    return BranchedEpisode(
        instance,
        observations,
        actions,
        rewards,
        lrs,
        float(start["dice_mean"]),
        final,
        branches,
        slices * per_step,
    )


# ------------------------------------------------------------------------------------------ many episodes
_worker_env: UNetLREnv | None = None


def _init(config: Config, parent: int) -> None:
    global _worker_env
    die_with(parent)
    torch.set_num_threads(1)  # small UNets train fastest one thread per process
    _worker_env = UNetLREnv(config=config)


def _run(
    rule: ScriptedRule,
    instance: Instance,
    steps: tuple[int, ...],
    candidates: tuple[int, ...],
    hold: bool,
    stall_states: int,
) -> BranchedEpisode:
    assert _worker_env is not None, "worker not initialised"
    policy = lambda obs: int(rule.actions(obs)[0])  # noqa: E731
    return branch_episode(_worker_env, policy, instance, steps, candidates, hold, stall_states)


# where branching freezes a run (``collect``): random states, the brink of a stall, or the first decision that
# can read the suggestion: with held branches, that tries each offset rule on the instance from its second slice
BRANCH_AT = ("random", "stalls", "suggestion")


def candidate_actions(env: EnvConfig, offsets: Iterable[float]) -> tuple[int, ...]:
    """The residual actions of ``offsets`` (log10 LR offsets from the suggestion); refused if one is missing."""
    missing = [o for o in offsets if o not in env.offsets]
    if env.action != "residual" or missing:
        raise ValueError(
            f"branching tries residual offsets {list(offsets)}, but env.action = {env.action!r} with offsets "
            f"{list(env.offsets)}: use env.action = 'residual' and offsets among env.offsets"
        )
    return tuple(list(env.offsets).index(o) for o in offsets)


def collect(
    config: Config,
    rule: ScriptedRule,
    instances: list[Instance],
    branches_per_episode: int,
    candidates: tuple[int, ...],
    workers: int,
    seed: int,
    hold: bool = False,
    at: str = "random",
) -> Iterator[tuple[int, BranchedEpisode]]:
    """Branched episodes of ``rule`` on ``instances`` (``at``, one of ``BRANCH_AT``): ``branches_per_episode``
    states each drawn uniformly without replacement (seeded); the first that many where the run is about to
    stall (none where it never is: ``branch_episode``); or the one state where the suggestion was first measured
    (after the first slice), in ``workers`` processes; yields each as it finishes, with its
    position in ``instances`` (finishing order depends on the machine's load, so whatever learns from them sorts
    first)."""
    rng = np.random.default_rng(seed)
    steps = config.env.steps
    if at not in BRANCH_AT:
        raise ValueError(f"branching at {at!r}: expected one of {', '.join(BRANCH_AT)}")
    fixed = {"stalls": (), "suggestion": (1,)}.get(at)
    plans = [
        fixed
        if fixed is not None
        else tuple(sorted(rng.choice(steps, size=min(branches_per_episode, steps), replace=False).tolist()))
        for _ in instances
    ]
    stall_states = branches_per_episode if at == "stalls" else 0
    context = multiprocessing.get_context(start_method())
    with ProcessPoolExecutor(
        max(1, workers), mp_context=context, initializer=_init, initargs=(config, os.getpid())
    ) as pool:
        futures = {
            pool.submit(_run, rule, i, p, candidates, hold, stall_states): k
            for k, (i, p) in enumerate(zip(instances, plans))
        }
        for future in as_completed(futures):
            yield futures[future], future.result()


def advantages(episodes: list[BranchedEpisode], env: EnvConfig, margin: float) -> str:
    """What branching found, before any model reads it: per tried offset, the mean over branched states of its
    final validation Dice minus the rule's, with a 95 % t interval, and how often it was better / worse by more
    than ``margin`` (the relabelling's). Why: a policy that stays the rule can mean the branches found nothing,
    or a model that missed it."""
    gains: dict[int, list[float]] = {}
    for b in (b for e in episodes for b in e.branches):
        for action, value in b.values.items():
            if action != b.base_action:
                gains.setdefault(action, []).append(value - b.values[b.base_action])
    parts = []
    for action in sorted(gains, key=lambda a: env.offsets[a]):
        x = np.asarray(gains[action])
        ci = mean_ci(x)
        parts.append(
            f"{env.offsets[action]:+g} {ci.mean:+.3f} ({ci.low:+.3f} .. {ci.high:+.3f}), "
            f"better {np.mean(x > margin):.0%} / worse {np.mean(x < -margin):.0%}"
        )
    return "advantage over the rule by offset, final val Dice: " + ("; ".join(parts) or "no branched states")


# the ridge penalties pooled() cross-validates: from a near-per-state fit to a constant (the mean advantage)
RIDGE_PENALTIES = (0.1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e6)


def pooled(episodes: list[BranchedEpisode], folds: int = 5) -> list[BranchedEpisode]:
    """``episodes`` with each branched state's values replaced by advantages over its base action predicted by
    a ridge regression on the observation, one per candidate, fitted on every branched state (the penalty
    cross-validated over ``RIDGE_PENALTIES``, folds by episode). Why: one run's final Dice is a chaotic function
    of its LRs, so the argmax of single-rollout values mostly picks noise (the winner's curse over several
    candidates); pooling keeps the part of an advantage that similar states share, from a constant offset
    (the largest penalty) to a state-dependent one."""
    states = [(k, b) for k, e in enumerate(episodes) for b in e.branches]
    if len(states) < 2 * folds:
        return episodes
    x = np.stack([b.observation for _, b in states]).astype(np.float64)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
    x = np.hstack([x, np.ones((len(x), 1))])  # the intercept (the mean advantage) is not penalised
    fold = np.array([k % folds for k, _ in states])
    predicted: dict[int, np.ndarray] = {}
    for action in sorted({a for _, b in states for a in b.values}):
        known = np.array([action in b.values for _, b in states])
        gain = np.array([b.values.get(action, np.nan) - b.values[b.base_action] for _, b in states])

        def fit(rows: np.ndarray, penalty: float) -> np.ndarray:
            eye = penalty * np.eye(x.shape[1])
            eye[-1, -1] = 1e-6  # the intercept barely: solvable even on a fold of one episode
            return np.linalg.solve(x[rows].T @ x[rows] + eye, x[rows].T @ gain[rows])

        def errors(penalty: float) -> np.ndarray:
            test = [(known & (fold == f), fit(known & (fold != f), penalty)) for f in range(folds)]
            return np.array(
                [np.mean((x[rows] @ w - gain[rows]) ** 2) if rows.any() else 0.0 for rows, w in test]
            )

        # the one-standard-error rule: the strongest penalty within one standard error of the best fold-mean
        # error, since on a few hundred noisy states the plain minimum still fits noise
        scores = [errors(penalty) for penalty in RIDGE_PENALTIES]
        best = min(range(len(scores)), key=lambda i: scores[i].mean())
        bound = scores[best].mean() + scores[best].std(ddof=1) / np.sqrt(folds)
        penalty = max(p for p, e in zip(RIDGE_PENALTIES, scores) if e.mean() <= bound)
        predicted[action] = x @ fit(known, penalty)
    index = {id(b): n for n, (_, b) in enumerate(states)}

    def smoothed(b: BranchedState) -> BranchedState:
        n = index[id(b)]
        values = {a: float(predicted[a][n]) if a in predicted else 0.0 for a in b.values}
        return replace(b, values={**values, b.base_action: 0.0})

    return [replace(e, branches=[smoothed(b) for b in e.branches]) for e in episodes]


def improve(
    model: PPO, episodes: list[BranchedEpisode], margin: float, epochs: int = 200, hold: bool = False
) -> dict[str, float]:
    """Clone the improved labels of ``episodes`` into ``model``'s policy (its value head onto the returns that
    followed). A branched state weighs steps / branches as much as a plain one, so that where every episode was
    branched once at some step the improved label wins over the base labels of the same step elsewhere. ``hold``:
    clone each episode as the improved policy plays it (``BranchedEpisode.switched``), every state weighing one."""
    venv = model.get_env()
    if hold:
        played = [e.switched(margin) for e in episodes]
        raw = np.concatenate([np.stack(o) for o, _, _ in played]).astype(np.float32)
        labels = np.concatenate([a for _, a, _ in played])
        returns = np.concatenate([np.cumsum(r[::-1])[::-1] for _, _, r in played])
        weights = np.ones(len(labels))
    else:
        raw = np.concatenate([np.stack(e.observations) for e in episodes]).astype(np.float32)
        labels = np.concatenate([e.labels(margin) for e in episodes])
        returns = np.concatenate([np.cumsum(e.rewards[::-1])[::-1] for e in episodes])
        weights = np.concatenate(
            [
                [
                    len(e.actions) / max(1, len(e.branches)) if t in {b.step for b in e.branches} else 1.0
                    for t in range(len(e.actions))
                ]
                for e in episodes
            ]
        )
    observations = venv.normalize_obs(raw) if isinstance(venv, VecNormalize) else raw
    changed = sum(b.best(margin) != b.base_action for e in episodes for b in e.branches)
    stats = fit_policy(model.policy, observations, labels, returns, epochs, weights)
    return {
        **stats,
        "branched/states": float(sum(len(e.branches) for e in episodes)),
        "branched/changed": float(changed),
    }


def improve_from_branches(
    model: PPO,
    config: Config,
    rule: ScriptedRule,
    episodes_path: Path,
    episodes: int,
    states: int,
    offsets: tuple[float, ...],
    margin: float,
    workers: int,
    seed: int,
    hold: bool = False,
    pool_values: bool = False,
    at: str = "random",
) -> str:
    """One step of policy improvement over ``rule`` for ``model`` (``python -m rlsched.train
    --branch-episodes``, ``--branch-hold``, ``--branch-at``): branched episodes on train instances drawn
    with ``seed``, each recorded in ``episodes_path`` as it ends (every epoch they train counts as training), then
    ``improve`` (on ``pooled`` values with ``pool_values``). Returns a summary: what was relabelled, and
    ``advantages``."""
    candidates = candidate_actions(config.env, (0.0, *offsets))
    pool = make_instances(config, "train")
    order = np.random.default_rng(seed).permutation(max(len(pool), episodes)) % len(pool)
    picked = [pool[int(i)] for i in order[:episodes]]
    branched: dict[int, BranchedEpisode] = {}
    for k, episode in tqdm(
        collect(config, rule, picked, states, candidates, workers, seed, hold, at),
        total=episodes,
        desc="branched episodes",
        unit="episode",
    ):
        branched[k] = episode
        append_jsonl(episodes_path, [episode.record()])
    # the plan's order, not the workers' finishing order: the same seed clones the same policy
    ordered = [branched[k] for k in sorted(branched)]
    stats = improve(model, pooled(ordered) if pool_values else ordered, margin, hold=hold)
    return (
        f"branched improvement: {sum(e.epochs for e in ordered)} epochs in {len(ordered)} episodes; "
        f"{stats['branched/changed']:.0f} of {stats['branched/states']:.0f} branched states relabelled; "
        f"accuracy {stats['bc/accuracy']:.2f}\n{advantages(ordered, config.env, margin)}"
    )
