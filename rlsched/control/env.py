"""``UNetLREnv``: real UNet training as a learning-rate control problem (``rlsched/UNetLR-v0``)."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlsched.config import Config, DataConfig, load_config, with_overrides
from rlsched.control.interface import (
    ControlState,
    Dynamics,
    action_space,
    clip_lr,
    next_lr,
    observation_space,
    undone,
)
from rlsched.control.penalties import CombinedPenalty, Penalty, Transition
from rlsched.family import Overrides
from rlsched.seg.dataset import SegmentationData
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer, counted_dice

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class EnvSnapshot:
    """A running episode frozen mid-way (``UNetLREnv.snapshot``): the network, optimizer and data order, and the
    controller's view of the run, so ``restore`` continues it exactly as if nothing had happened since."""

    instance: Instance
    trainer: dict[str, Any]
    control: ControlState
    lr: float
    forced_lr: float | None
    initial_dice: float
    seconds: float


@dataclass(frozen=True)
class Instance:
    """One training run to control: its data, its initial weights, its initial LR and, in a family preset, the
    config overrides it trains under (one option per ``[family]`` axis; see ``instance_config``)."""

    split: str
    index: int
    data_seed: int
    init_seed: int
    initial_lr: float
    variant: Overrides = ()

    def __post_init__(self) -> None:  # JSON (journals, asdict round trips) gives lists back: keep it hashable
        object.__setattr__(self, "variant", tuple((str(k), str(v)) for k, v in self.variant))


def make_instances(config: Config, split: str) -> list[Instance]:
    """The fixed instance set of a split; train and held-out seeds come from disjoint seed streams. Variants come
    from a stream of their own, so a preset's seeds and initial LRs do not depend on its family."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use 'train' or 'heldout'")
    env = config.env
    count = env.train_instances if split == "train" else env.heldout_instances
    rng = np.random.default_rng([env.instance_seed, SPLITS.index(split), 0x5EED])
    seeds = rng.integers(0, 2**31 - 1, size=(count, 2))
    log_lrs = rng.uniform(math.log10(env.initial_lr_min), math.log10(env.initial_lr_max), size=count)
    family_rng = np.random.default_rng([env.instance_seed, SPLITS.index(split), 0xFA3, 0x11])
    picks = [family_rng.integers(len(axis.options), size=count) for axis in config.family]
    variants = [
        tuple(pair for axis, pick in zip(config.family, picks) for pair in axis.options[pick[i]])
        for i in range(count)
    ]
    return [
        Instance(split, i, int(seeds[i, 0]), int(seeds[i, 1]), float(10 ** log_lrs[i]), variants[i])
        for i in range(count)
    ]


def instance_config(config: Config, instance: Instance, pinned: Overrides = ()) -> Config:
    """The config ``instance`` trains under: ``config``, then the instance's variant, then ``pinned`` (a method's
    own changes, e.g. the nnU-Net recipe's optimizer, win over the family's). Every trainer and dataset built for an
    instance comes from here."""
    return with_overrides(
        with_overrides(replace(config, family=()), instance.variant, "instance variant"), pinned
    )


# --------------------------------------------------------------------------------------------- the env
class UNetLREnv(gym.Env):
    """Steer the learning rate of a real UNet segmentation training run.

    ## Description
    Each episode is one training run of a UNet on a segmentation task (synthetic shapes, a folder of images and
    masks, or brain MRI slices) with a fixed budget of ``env.epochs`` epochs. Each step trains one slice of
    ``env.epochs_per_step`` epochs at the LR the action chose, then validates. The agent's job is to pick the LR
    schedule that ends with the best validation Dice. Everything comes from a preset (``envs/*.toml``).

    ## Action Space
    ``env.action = "discrete"`` (default): ``Discrete(len(factors))``; action ``i`` multiplies the LR by
    ``factors[i]`` (default ``(0.5, 0.8, 1.0, 1.25, 2.0)``). ``"continuous"``: ``Box(-1, 1, (1,))``; action ``a``
    multiplies the LR by ``10 ** (a * max_log10_change)``. ``"absolute"``: ``Discrete(grid_points)``; action
    ``i`` sets the LR to the ``i``-th of ``grid_points`` log-spaced values in ``[lr_min, lr_max]`` (any LR is one
    step away). ``"residual"``: ``Discrete(len(offsets))``; action ``i`` sets the LR to the suggested LR (feature
    11; before the first slice, ``probe_lr``) times ``10 ** offsets[i]``, so the offset 0 follows the
    suggestion and the initial LR plays no part. The LR is always clipped to ``[lr_min, lr_max]``.

    ## Observation Space
    ``Box(float32)`` of normalised training-dynamics features a real controller can compute, in the order of
    ``rlsched.control.interface.OBS_FEATURES`` (name, range, meaning; ``docs/env.md`` lists them), then ``env.history``
    past (Dice, log LR) pairs (``HISTORY_FEATURES``).

    Values out of range are clipped; NaN (a blown-up loss) is reported as the upper bound. The raw values are in
    ``info``: ``lr``, ``epoch``, ``train_loss``, ``val_loss``, ``dice`` (per class), ``dice_mean``, ``iou``,
    ``grad_norm``, ``update_ratio``, ``diverged``, ``rolled_back``, ``penalty`` and one ``penalty/<name>`` per
    term. Wall time is kept out of ``info`` (which must be deterministic) in ``env.unwrapped.seconds`` (this
    episode, so far).

    ## Rewards
    ``reward = (dice_after - dice_before) * env.reward_scale - penalty``, with Dice = 0 after a diverged slice.
    The penalty is the weighted sum of the built-ins named in ``[penalty]`` (``lr_change``: |log10 LR change|,
    ``divergence``: 1 once on blow-up, ``compute``: 1 per step, ``val_loss_increase``: rise of ln val loss) plus an
    optional user callable (``penalty=fn``, ``fn(Transition) -> float``). Without penalties the undiscounted return
    telescopes to ``(final Dice - initial Dice) * reward_scale``, so maximising return maximises final Dice.

    ## Starting State
    ``reset(seed=...)`` draws an instance from the train set (data seed, init seed, initial LR log-uniform in
    ``[initial_lr_min, initial_lr_max]``), builds a fresh network and optimizer, and validates once to get the
    initial Dice. ``reset(options={"split": "heldout", "instance": k})`` picks held-out instance ``k`` exactly;
    ``options={"lr": x}`` overrides the initial LR. In a preset with a ``[family]`` table each instance also carries
    a variant, one option per axis (optimizer, batch size, UNet width, data, task, ...), and trains under the preset
    with its variant applied (``instance_config``; the env's ``pinned`` overrides, a method's own, apply last). The
    spaces and the budget are shared: a family sets no ``[env]`` key.

    ## Episode End
    ``terminated=True`` when the epoch budget is spent (the observation carries ``budget_used``, so this is a
    true terminal state and must not be bootstrapped) or when training diverged (NaN/inf loss; the divergence
    penalty applies). With ``env.on_divergence = "rollback"`` a blown-up slice (NaN/inf, or a mean training /
    validation loss above ``env.loss_spike`` / ``env.val_spike`` x the last healthy slice's) is undone instead and
    the episode goes on: its epochs stay spent, the network is the one from before the slice (its validation is
    the step's Dice, so the reward is 0 minus the divergence penalty), ``info["rolled_back"]`` is True, the train
    loss, gradient norm and update ratio of the failed slice (NaN) show at their bounds, and the suggested LR
    drops ``backoff_decades`` below the LR that blew up. ``truncated`` is always False: only an outer
    ``TimeLimit`` may truncate. Nothing raises on divergence. Once the episode is over, ``evaluate_test()``
    scores the trained network on the instance's test split (held out like validation, same distribution): the
    number comparisons report. Observations, rewards and ``info`` read validation only, and RL training never
    calls it.

    ## Arguments
    ``gymnasium.make("rlsched/UNetLR-v0", preset="envs/demo.toml", penalty=None, **overrides)`` where overrides
    are section tables (``env={"epochs": 8}``) or dotted keys (``**{"env.epochs": 8}``). ``pinned`` (``(("optim.name",
    '"sgd"'), ...)``) is applied after each instance's variant: how ``experiment.jobs`` makes a method's overrides win.
    ``rlsched/UNetLR-fast-v0`` is the same with ``preset="fast"`` and needs no arguments.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        preset: str | None = None,
        penalty: Penalty | None = None,
        config: Config | None = None,
        pinned: Overrides = (),
        **overrides: Any,
    ) -> None:
        self.config = config if config is not None else load_config(preset, overrides)
        if config is not None and (preset is not None or overrides):
            raise ValueError("pass either config=... or preset/overrides, not both")
        self.pinned = tuple(
            (str(k), str(v)) for k, v in pinned
        )  # applied after each instance's variant (instance_config): a method's overrides win
        cfg = self.config.env
        self.action_space: spaces.Space = action_space(cfg)
        self.observation_space = observation_space(cfg)
        self.instances = {split: make_instances(self.config, split) for split in SPLITS}
        self.penalty = CombinedPenalty(self.config.penalty, penalty)
        self.trainer: Trainer | None = None
        self.seconds = 0.0  # wall time of this episode's training and validation
        self.instance: Instance | None = None
        self._data_cache: OrderedDict[tuple[int, str], SegmentationData] = OrderedDict()
        self._done = True
        self._diverged = False  # the episode ended by a divergence (its test Dice is 0)
        self._forced_lr: float | None = None  # set_lr's override of the next step's LR

    # ------------------------------------------------------------------------------------------- helpers
    @property
    def keep_action(self) -> int | np.ndarray:
        """An action to pass with ``set_lr`` (ignored then); in relative modes it leaves the LR unchanged."""
        cfg = self.config.env
        if cfg.action == "continuous":
            return np.zeros(1, dtype=np.float32)
        if cfg.action in ("absolute", "residual"):
            return 0  # set_lr ignores it; these modes have no action that keeps the LR as such
        if 1.0 not in cfg.factors:
            raise ValueError("env.factors has no 1.0, so no action keeps the LR; add 1.0 to the factors")
        return list(cfg.factors).index(1.0)

    def _check_action(self, action: Any) -> None:
        """Refuse an action outside the action space, as ``Discrete.contains`` / ``Box.contains`` would (a
        one-element array counts as its element): indexing the factors would take -1 as the last one and fail
        on 7, and a continuous action would be clipped silently."""
        space, value = self.action_space, np.asarray(action)
        if isinstance(space, spaces.Discrete):
            ok = (
                value.size == 1
                and np.issubdtype(value.dtype, np.integer)
                and space.contains(int(value.flat[0]))
            )
            expected = f"an integer in {space.start}..{space.start + space.n - 1}"
        else:
            ok = (
                value.size == int(np.prod(space.shape))
                and np.issubdtype(value.dtype, np.number)
                and space.contains(value.reshape(space.shape).astype(space.dtype))
            )
            expected = f"{space.shape[0]} float(s) in [{space.low.min():g}, {space.high.max():g}]"
        if not ok:
            raise ValueError(
                f"action {action!r} is outside the action space {space} (env.action = "
                f"{self.config.env.action!r}): pass {expected}"
            )

    def set_lr(self, lr: float) -> None:
        """The next step trains at ``lr`` whatever its action: how fixed schedules drive the env."""
        if self.trainer is None:
            raise RuntimeError("call reset() before set_lr()")
        self._forced_lr = clip_lr(self.config.env, lr)

    def _data(self, seed: int, data: DataConfig | None = None) -> SegmentationData:
        """The dataset of ``seed`` under ``data`` (default: the preset's), cached by both: family instances with
        different data options never share a dataset. ``repr`` keys it because ``mask_map`` makes it unhashable."""
        data = data if data is not None else self.config.data
        key = (seed, repr(data))
        if key not in self._data_cache:
            self._data_cache[key] = make_dataset(data, seed)
            while len(self._data_cache) > 4:
                self._data_cache.popitem(last=False)
        self._data_cache.move_to_end(key)
        return self._data_cache[key]

    def _pick_instance(self, options: Mapping[str, Any]) -> Instance:
        unknown = set(options) - {"instance", "split", "lr"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}: use 'instance', 'split', 'lr'")
        chosen = options.get("instance")
        if isinstance(chosen, Instance):
            instance = chosen
        else:
            split = options.get("split", "train")
            pool = self.instances.get(split)
            if pool is None:
                raise ValueError(f"unknown split {split!r}: use 'train' or 'heldout'")
            if chosen is None:
                chosen = int(self.np_random.integers(len(pool)))
            if not 0 <= int(chosen) < len(pool):
                raise ValueError(
                    f"instance {chosen} out of range: the {split} split has {len(pool)} instances"
                )
            instance = pool[int(chosen)]
        if "lr" in options:
            instance = replace(instance, initial_lr=float(options["lr"]))
        return instance

    def _info(self, record: Mapping[str, Any]) -> dict[str, Any]:
        assert self.instance is not None
        return {
            **record,
            "instance": self.instance.index,
            "split": self.instance.split,
            "initial_lr": self.instance.initial_lr,
        }

    # ------------------------------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.instance = self._pick_instance(options or {})
        self._lr = clip_lr(self.config.env, self.instance.initial_lr)
        self._forced_lr = None
        config = instance_config(self.config, self.instance, self.pinned)
        self.trainer = Trainer(
            config, self._data(self.instance.data_seed, config.data), self.instance.init_seed, lr=self._lr
        )
        evaluation = self.trainer.evaluate()
        record = evaluation.record(self._lr, 0)
        dice = counted_dice(record)
        self._control = ControlState(
            self.config.env, Dynamics(self._lr, evaluation.loss, evaluation.loss, dice, 0.0, 0.0)
        )
        self._initial_dice = dice
        self._done = self._diverged = False
        obs = self._control.observation()
        self.seconds = evaluation.seconds
        info = self._info({**record, "dice_mean": dice})
        return obs, info

    def step(self, action):
        if self._done or self.trainer is None:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        self._check_action(action)
        cfg = self.config.env
        lr = self._forced_lr
        if lr is None:
            lr = next_lr(cfg, self._lr, action, self._control.suggested)
        self._forced_lr = None
        loss_limit, val_loss_limit = self._control.loss_limits()
        result = self.trainer.train_slice(
            lr, cfg.epochs_per_step, cfg.on_divergence == "rollback", loss_limit, val_loss_limit
        )
        record = result.record()
        del record["seconds"]  # info must be deterministic (env checker); wall time lives in self.seconds
        self.seconds += result.seconds
        dice = result.counted_dice
        measured = Dynamics(
            lr, record["train_loss"], record["val_loss"], dice, record["grad_norm"], record["update_ratio"]
        )
        now = undone(lr, self._control.now) if result.rolled_back else measured
        self._control.advance(now, rolled_back=result.rolled_back)
        before = self._control.before
        transition = Transition(
            before.lr,
            lr,
            before.dice,
            dice,
            before.val_loss,
            record["val_loss"],
            result.diverged or result.rolled_back,
            self._control.step,
            cfg.steps,
            result.seconds,
        )
        penalty, parts = self.penalty(transition)
        reward = (dice - before.dice) * cfg.reward_scale - penalty
        terminated = result.diverged or self._control.step >= cfg.steps
        self._lr = lr
        self._done, self._diverged = terminated, result.diverged
        obs = self._control.observation()
        info = self._info({**record, "penalty": penalty, **{f"penalty/{k}": v for k, v in parts.items()}})
        if terminated:
            info.update(final_dice=dice, initial_dice=self._initial_dice)
        return obs, float(reward), terminated, False, info

    def snapshot(self) -> EnvSnapshot:
        """The episode as it stands, to ``restore`` later: how branched rollouts try several actions from one
        state (``rlsched.agents.branched``). Only a running episode can be frozen."""
        if self.trainer is None or self._done or self.instance is None:
            raise RuntimeError(
                "snapshot() freezes a running episode: call reset() and step until before the end"
            )
        return EnvSnapshot(
            self.instance,
            self.trainer.state_dict(),
            copy.deepcopy(self._control),
            self._lr,
            self._forced_lr,
            self._initial_dice,
            self.seconds,
        )

    def restore(self, snapshot: EnvSnapshot) -> np.ndarray:
        """Continue from ``snapshot`` (of this env, any episode since); returns the observation it had. Later steps
        give exactly what they would have given then: training on CPU is deterministic given its state."""
        if self.trainer is None or self.instance != snapshot.instance:
            self.reset(options={"instance": snapshot.instance})
        assert self.trainer is not None
        self.trainer.load_state_dict(copy.deepcopy(snapshot.trainer))
        self.instance = snapshot.instance
        self._control = copy.deepcopy(snapshot.control)
        self._lr, self._forced_lr = snapshot.lr, snapshot.forced_lr
        self._initial_dice, self.seconds = snapshot.initial_dice, snapshot.seconds
        self._done = self._diverged = False
        return self._control.observation()

    def evaluate_test(self) -> float:
        """Test Dice of the network as the finished episode left it (0 if it diverged): what a comparison reports
        for the run, so it is read once, after the last step, and reaches no observation, reward or action."""
        if self.trainer is None or not self._done:
            raise RuntimeError("evaluate_test() scores a finished episode: step until terminated first")
        return self.trainer.test_dice(self._diverged)
