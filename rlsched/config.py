"""Typed, frozen configuration and preset loading.

A preset is a TOML file in ``envs/`` with the sections below; every key is optional and falls back to the
embedded default (a CPU-sized synthetic binary task). Unknown sections or keys and badly typed values are
rejected with an error that names the file, the key and the fix, because a silently ignored typo in a preset
turns into a wrong experiment. An optional ``[family]`` table makes instances differ in config (``rlsched.family``).
"""

from __future__ import annotations

import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from rlsched.family import Axis, check_family, family_toml, merge, parse_family, toml_value
from rlsched.seg.optimizers import OPTIMIZERS as TUNING_FREE
from rlsched.seg.optimizers import require as require_optimizer

TASKS = ("binary", "multiclass", "multilabel")
NORMS = ("batch", "group", "instance", "none")
OPTIMIZERS = ("sgd", "adam", "adamw", *TUNING_FREE)
ACTIONS = ("discrete", "continuous", "absolute", "residual")
ON_DIVERGENCE = ("end", "rollback")


class ConfigError(ValueError):
    """A preset or override is invalid; the message says which key and how to fix it."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and what the task is."""

    source: str = "synthetic"  # synthetic | folder | brain
    task: str = "binary"  # binary | multiclass | multilabel
    classes: int = 1  # foreground classes (binary: 1; multiclass: K, plus background; multilabel: K labels)
    image_size: int = 64
    channels: int = 1
    n_train: int = 256
    n_val: int = 64
    # held-out test split per instance: reported, never read by a decision (those all use validation)
    n_test: int = 64
    # synthetic generator
    noise: float = 0.35
    blur: float = 1.0
    contrast: float = 0.6
    min_objects: int = 1
    max_objects: int = 4
    min_radius: float = 0.08  # object radius as a fraction of the image size; sets the foreground fraction
    max_radius: float = 0.2
    ignore_border: bool = False  # mark pixels outside a circular field of view as "don't care"
    ignore_index: int = 255
    # folder datasets: <root>/images and <root>/masks, matched by file stem
    root: str = ""
    mask_map: dict[str, int] = field(default_factory=dict)  # every raw mask value -> class: {"0"=0, "255"=1}
    val_fraction: float = 0.2  # folder: share of files; brain: share of slabs held out (validation + test)
    test_fraction: float = 0.2  # folder: share of files in the test split (brain and synthetic use n_test)
    split_seed: int = 0
    # brain slices (optional extra): which anatomical planes to slice; n_train/n_val/n_test must fit the split
    planes: tuple[str, ...] = ("axial",)

    def __post_init__(self) -> None:
        _require(
            self.source in ("synthetic", "folder", "brain"),
            f"[data] source={self.source!r}: use 'synthetic', 'folder' or 'brain'",
        )
        _require(self.task in TASKS, f"[data] task={self.task!r}: use one of {TASKS}")
        _require(self.classes >= 1, f"[data] classes={self.classes}: needs at least 1 foreground class")
        _require(
            self.task != "binary" or self.classes == 1,
            f"[data] classes={self.classes} with task='binary': a binary task has 1 foreground class; "
            "use task='multiclass' or 'multilabel' for more",
        )
        _require(self.image_size >= 8, f"[data] image_size={self.image_size}: use at least 8 pixels")
        _require(self.channels in (1, 3), f"[data] channels={self.channels}: use 1 (gray) or 3 (RGB)")
        _require(
            self.n_train >= 1 and self.n_val >= 1 and self.n_test >= 1,
            "[data] n_train, n_val and n_test must be >= 1",
        )
        _require(1 <= self.min_objects <= self.max_objects, "[data] need 1 <= min_objects <= max_objects")
        _require(
            0 < self.min_radius <= self.max_radius < 0.5,
            "[data] need 0 < min_radius <= max_radius < 0.5 (fractions of the image size)",
        )
        _require(
            0 < self.val_fraction < 1
            and 0 < self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1,
            f"[data] val_fraction={self.val_fraction}, test_fraction={self.test_fraction}: each must lie in "
            "(0, 1) and together below 1, leaving files to train on",
        )
        _require(0 <= self.ignore_index <= 255, "[data] ignore_index must lie in 0..255")
        _require(
            self.source != "folder" or bool(self.root),
            "[data] source='folder' needs root = '<folder holding images/ and masks/>'",
        )

    @property
    def out_channels(self) -> int:
        """Channels the network must output for this task (1 for binary, K+1 multiclass, K multilabel)."""
        return {"binary": 1, "multiclass": self.classes + 1, "multilabel": self.classes}[self.task]


@dataclass(frozen=True)
class ModelConfig:
    """UNet shape; the net always returns logits."""

    depth: int = 3
    base_width: int = 8
    up: str = "bilinear"  # bilinear | transpose
    norm: str = "batch"  # batch | group | instance | none

    def __post_init__(self) -> None:
        _require(1 <= self.depth <= 6, f"[model] depth={self.depth}: use 1..6")
        _require(self.base_width >= 1, f"[model] base_width={self.base_width}: must be >= 1")
        _require(
            self.up in ("bilinear", "transpose"), f"[model] up={self.up!r}: use 'bilinear' or 'transpose'"
        )
        _require(self.norm in NORMS, f"[model] norm={self.norm!r}: use one of {NORMS}")


@dataclass(frozen=True)
class LossConfig:
    """Loss on logits and the prediction rule of the head."""

    pos_weight: float = 0.0  # binary: BCE pos_weight; 0 = none
    class_weights: tuple[float, ...] = ()  # multiclass: one weight per class incl. background; () = none
    label_smoothing: float = 0.0  # multiclass only
    dice_weight: float = 0.0  # weight of an added soft-Dice term
    threshold: float = 0.5  # binary / multilabel: probability threshold for a positive pixel

    def __post_init__(self) -> None:
        _require(self.pos_weight >= 0, "[loss] pos_weight must be >= 0 (0 disables it)")
        _require(all(w >= 0 for w in self.class_weights), "[loss] class_weights must be >= 0")
        _require(0 <= self.label_smoothing < 1, "[loss] label_smoothing must lie in [0, 1)")
        _require(self.dice_weight >= 0, "[loss] dice_weight must be >= 0")
        _require(0 < self.threshold < 1, "[loss] threshold must lie in (0, 1)")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, batching and device."""

    # sgd | adam | adamw | a tuning-free optimizer (rlsched.seg.optimizers, the tuningfree extra)
    name: str = "sgd"
    lr: float = 0.01  # LR used when nothing else sets one (the env draws its own initial LR)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 16
    grad_clip: float = 0.0  # global grad-norm clip; 0 = off
    augment: bool = True  # random flips of training batches
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast, only on CUDA
    channels_last: bool = True  # only on CUDA

    def __post_init__(self) -> None:
        _require(self.name in OPTIMIZERS, f"[optim] name={self.name!r}: use one of {OPTIMIZERS}")
        if self.name in TUNING_FREE:
            try:
                require_optimizer(self.name)
            except ImportError as err:
                raise ConfigError(f"[optim] {err}") from None
        _require(self.lr > 0, "[optim] lr must be > 0")
        _require(0 <= self.momentum < 1, "[optim] momentum must lie in [0, 1)")
        _require(
            self.name != "schedulefree_sgd" or self.momentum > 0,
            "[optim] schedulefree_sgd interpolates with its momentum: set 0 < momentum < 1 (0.9 recommended)",
        )
        _require(self.batch_size >= 1, "[optim] batch_size must be >= 1")
        _require(self.grad_clip >= 0, "[optim] grad_clip must be >= 0 (0 disables it)")


@dataclass(frozen=True)
class EnvConfig:
    """The LR-control problem: budget, actions, observation, instances."""

    epochs: int = 12  # training budget T of one episode, in epochs
    epochs_per_step: int = 1
    lr_min: float = 1e-5
    lr_max: float = 1.0
    initial_lr_min: float = 1e-4  # initial LR drawn log-uniformly from [initial_lr_min, initial_lr_max]
    initial_lr_max: float = 0.5
    # discrete (x a factor) | continuous (x 10**(a*max_log10_change)) | absolute (a grid LR) | residual (offsets)
    action: str = "discrete"
    factors: tuple[float, ...] = (0.5, 0.8, 1.0, 1.25, 2.0)  # discrete: LR multipliers
    max_log10_change: float = 0.301  # continuous: action 1 multiplies the LR by 10**this (2x)
    grid_points: int = 11  # absolute: action i sets the i-th of this many log-spaced LRs in [lr_min, lr_max]
    # residual: action i sets the LR to base * 10**offsets[i] (base: the suggested LR, probe_lr until measured)
    offsets: tuple[float, ...] = tuple(q / 4 for q in range(-12, 7))
    probe_lr: float = 1e-3  # residual: the first slice's base (fixed, so the first action means the same)
    history: int = 2  # past (dice, log LR) pairs in the observation
    # weight change per slice the suggested LR aims at (calibrated by benchmarks/update_ratio_calibration.py)
    target_update_ratio: float = 0.1
    # a blow-up (NaN/inf; with rollback a train / val loss > loss_spike / val_spike x the last healthy one, 0 = off)
    on_divergence: str = "end"  # "end"s the episode, or "rollback" undoes it and backs off (docs/env.md)
    backoff_decades: float = 0.5
    loss_spike: float = 2.0
    val_spike: float = 0.0
    reward_scale: float = 10.0
    train_instances: int = 64
    heldout_instances: int = 16
    instance_seed: int = 0
    # torch threads rlsched's in-process runners set (workers take their share; the env sets none); 0 = default
    torch_threads: int = 0

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "[env] epochs must be >= 1")
        _require(1 <= self.epochs_per_step <= self.epochs, "[env] need 1 <= epochs_per_step <= epochs")
        _require(
            self.epochs % self.epochs_per_step == 0,
            f"[env] epochs={self.epochs} is not a multiple of epochs_per_step={self.epochs_per_step}",
        )
        _require(0 < self.lr_min < self.lr_max, "[env] need 0 < lr_min < lr_max")
        _require(
            self.lr_min <= self.initial_lr_min <= self.initial_lr_max <= self.lr_max,
            "[env] need lr_min <= initial_lr_min <= initial_lr_max <= lr_max",
        )
        _require(self.action in ACTIONS, f"[env] action={self.action!r}: use one of {ACTIONS}")
        _require(
            len(self.factors) >= 2 and all(f > 0 for f in self.factors),
            "[env] factors needs at least two positive LR multipliers",
        )
        _require(self.max_log10_change > 0, "[env] max_log10_change must be > 0")
        _require(
            len(self.offsets) >= 2 and all(math.isfinite(o) for o in self.offsets),
            "[env] offsets needs at least two finite log10 LR offsets (e.g. [-0.5, 0.0, 0.5])",
        )
        _require(self.lr_min <= self.probe_lr <= self.lr_max, "[env] need lr_min <= probe_lr <= lr_max")
        _require(self.grid_points >= 2, "[env] grid_points must be >= 2 (absolute actions need a choice)")
        _require(self.history >= 0, "[env] history must be >= 0")
        _require(self.target_update_ratio > 0, "[env] target_update_ratio must be > 0 (e.g. 0.1)")
        _require(
            self.on_divergence in ON_DIVERGENCE,
            f"[env] on_divergence={self.on_divergence!r}: use one of {ON_DIVERGENCE}",
        )
        for key, loss in (("loss_spike", "training"), ("val_spike", "validation")):
            _require(
                getattr(self, key) == 0 or getattr(self, key) > 1,
                f"[env] {key} must be 0 (off) or > 1 (e.g. 2: a slice whose {loss} loss doubles is undone)",
            )
        _require(
            self.backoff_decades > 0, "[env] backoff_decades must be > 0 (e.g. 0.5: LR / 3 after a blow-up)"
        )
        _require(
            self.train_instances >= 1 and self.heldout_instances >= 1,
            "[env] train_instances and heldout_instances must be >= 1",
        )
        _require(self.torch_threads >= 0, "[env] torch_threads must be >= 0 (0 = torch's default)")

    @property
    def steps(self) -> int:
        return self.epochs // self.epochs_per_step


@dataclass(frozen=True)
class PenaltyConfig:
    """Weights of the built-in penalties subtracted from the reward (0 turns one off)."""

    lr_change: float = 0.0  # per unit of |log10 LR change|
    divergence: float = 1.0  # once, when the run diverges
    compute: float = 0.0  # per step
    val_loss_increase: float = 0.0  # per unit of increase of log validation loss

    def __post_init__(self) -> None:
        for f in fields(self):
            _require(getattr(self, f.name) >= 0, f"[penalty] {f.name} must be >= 0")


@dataclass(frozen=True)
class Config:
    """One complete experiment description: what a preset file resolves to."""

    name: str = "default"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    # instance families: one option per axis on top of the sections above (env.instance_config); () = none
    family: tuple[Axis, ...] = ()


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "env": EnvConfig,
    "penalty": PenaltyConfig,
}
_TOP_LEVEL = ("name", "description")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}."


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a TOML value against a dataclass field type, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        _require(isinstance(value, bool), f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        _require(
            isinstance(value, int) and not isinstance(value, bool),
            f"{where}: expected an integer, got {value!r}",
        )
        return value
    if annotation is float:
        _require(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            f"{where}: expected a number, got {value!r}",
        )
        _require(math.isfinite(value), f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        _require(isinstance(value, str), f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), f"{where}: expected a list, got {value!r}")
        item_type = typing.get_args(annotation)[0]
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _require(isinstance(value, Mapping), f'{where}: expected a table like {{"255" = 1}}, got {value!r}')
        return {str(k): _coerce(v, int, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(
        f"unsupported config type {annotation} at {where}"
    )  # pragma: no cover - programming error


def _build_section(cls: type, values: Mapping[str, Any], base: Any, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    changes = {}
    for key, value in values.items():
        _require(key in valid, f"{where}: unknown key {key!r}.{_suggest(key, valid)}")
        changes[key] = _coerce(value, hints[key], f"{where} {key}")
    try:
        return replace(base, **changes)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def config_from_dict(raw: Mapping[str, Any], base: Config | None = None, source: str = "config") -> Config:
    """Apply a nested mapping (a parsed TOML file or overrides) on top of ``base``."""
    config = base or Config()
    valid = list(SECTIONS) + list(_TOP_LEVEL) + ["family"]
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        _require(key in valid, f"{source}: unknown section or key {key!r}.{_suggest(key, valid)}")
        if key == "family":
            try:
                changes[key] = merge(config.family, parse_family(value, f"{source} [family]"))
            except ValueError as err:
                raise ConfigError(str(err)) from None
            continue
        if key in _TOP_LEVEL:
            changes[key] = _coerce(value, str, f"{source} {key}")
            continue
        _require(isinstance(value, Mapping), f"{source}: [{key}] must be a table of settings, got {value!r}")
        changes[key] = _build_section(SECTIONS[key], value, getattr(config, key), f"{source} [{key}]")
    config = replace(config, **changes)
    if (
        config.family and raw
    ):  # new options, or sections they now apply to: the config's checks judge them all
        members = replace(config, family=())
        try:
            check_family(
                config.family,
                lambda overrides, where: with_overrides(members, overrides, where),
                f"{source} [family]",
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` (value in TOML syntax, bare words taken as strings) for the CLIs."""
    _require(
        "=" in text and "." in text.split("=", 1)[0],
        f"override {text!r}: write section.key=value, e.g. env.epochs=8 or data.task=multiclass",
    )
    key, value_text = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return key.strip(), value


def nest_overrides(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"env.epochs": 8}`` -> ``{"env": {"epochs": 8}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        section, _, key = dotted.partition(".")
        _require(bool(key), f"override {dotted!r}: write section.key, e.g. env.epochs")
        nested.setdefault(section, {})[key] = value
    return nested


def presets_dir() -> Path:
    """The folder holding the shipped presets: ``envs/`` of a source checkout, else the installed copy."""
    checkout = Path(__file__).resolve().parent.parent / "envs"
    if checkout.is_dir():
        return checkout
    from importlib import resources

    return Path(str(resources.files("rlsched.presets")))


def available_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def resolve_preset(preset: str | Path) -> Path:
    """A path to a TOML file, or the bare name of a shipped preset (``"fast"`` -> ``envs/fast.toml``)."""
    path = Path(preset)
    if path.is_file():
        return path
    shipped = presets_dir() / f"{path.stem}.toml"
    if path.suffix in ("", ".toml") and path.parent in (Path("."), Path("envs")) and shipped.is_file():
        return shipped
    raise ConfigError(
        f"preset {str(preset)!r} not found: pass a path to a .toml file or one of the shipped "
        f"presets: {', '.join(available_presets())}"
    )


def load_config(preset: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a preset (or the embedded default when None) and apply nested or dotted overrides."""
    config = Config()
    if preset is not None:
        path = resolve_preset(preset)
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
        config = config_from_dict(raw, config, source=str(path))
        if "name" not in raw:
            config = replace(config, name=path.stem)
    if overrides:
        flat = {k: v for k, v in overrides.items() if "." in k}
        nested = {k: v for k, v in overrides.items() if "." not in k}
        for section, values in nest_overrides(flat).items():
            nested.setdefault(section, {})
            nested[section] = {**nested[section], **values}
        config = config_from_dict(nested, config, source="overrides")
    return config


def with_overrides(
    config: Config, overrides: tuple[tuple[str, str], ...], source: str = "job overrides"
) -> Config:
    """``config`` with ``("section.key", "TOML value")`` pairs applied, checked like ``--set section.key=value``
    (how a harness job carries the config changes its method needs, and an instance its family options)."""
    if not overrides:
        return config
    flat = dict(parse_override(f"{key}={value}") for key, value in overrides)
    return config_from_dict(nest_overrides(flat), config, source=source)


def config_to_toml(config: Config) -> str:
    """Serialise a config back to preset TOML, so a run directory records exactly what ran (no family: no
    ``[family]`` section)."""
    lines = [f"name = {toml_value(config.name)}", f"description = {toml_value(config.description)}"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for f in fields(getattr(config, section)):
            lines.append(f"{f.name} = {toml_value(getattr(getattr(config, section), f.name))}")
    if config.family:
        lines += family_toml(config.family)
    return "\n".join(lines) + "\n"


__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EnvConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PenaltyConfig",
    "available_presets",
    "config_from_dict",
    "config_to_toml",
    "load_config",
    "nest_overrides",
    "parse_override",
    "presets_dir",
    "resolve_preset",
    "with_overrides",
]
