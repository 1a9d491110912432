"""Population-based training (Ray Tune) as a peer of the learned controllers in ``rlsched.compare``.

PBT adapts the LR *during* one training run by spending a population: K members train the same instance
(the env's data and initial weights, through the same ``Trainer``) for the same epoch budget; every
``interval`` steps the worst quantile copies a better member's Trainer checkpoint (exploit) and multiplies its
LR by one of ``factors`` or redraws it (explore). Its result on an instance is the best member at the end,
with the LR and Dice history of that member's lineage. It costs about K x budget epochs per instance
(asynchronous PBT: a member that copies a member behind it retrains a few; every trained epoch is counted) and
picks its winner (like every exploit) on validation Dice, which flatters that winner's validation score; the
comparison's headline is the winner's Dice on the instance's test split, which no choice saw.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlsched.config import Config
from rlsched.control.env import Instance, instance_config
from rlsched.control.interface import clip_lr
from rlsched.experiment.harness import EpisodeResult
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer, counted_dice

CHECKPOINT = "member.pt"
ALGORITHMS = ("pbt", "pb2")


@dataclass(frozen=True)
class PBTSettings:
    """The population and its exploit/explore rule."""

    population: int = 4
    interval: int = 1  # env steps between exploit/explore rounds
    quantile: float = 0.25  # bottom (top) fraction that copies (is copied)
    factors: tuple[float, ...] = (2.0, 0.5)  # explore: LR x one of these
    resample_probability: float = 0.25  # explore: or redraw the LR from the initial-LR range
    # "pbt": random explore (factors, redraws); "pb2": a GP bandit picks log10 LR (PB2)
    algorithm: str = "pbt"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"unknown population algorithm {self.algorithm!r}: use one of {', '.join(ALGORITHMS)}"
            )
        if self.population < 2:
            raise ValueError(f"--pbt-population {self.population}: a population needs at least 2 members")
        if self.interval < 1 or not 0 < self.quantile <= 0.5 or not 0 <= self.resample_probability <= 1:
            raise ValueError(
                "PBT needs interval >= 1, 0 < quantile <= 0.5 and 0 <= resample_probability <= 1"
            )


def member_lrs(config: Config, population: int) -> list[float]:
    """Starting LRs: spread log-evenly over the preset's initial-LR range (the range the grid search covers)."""
    env = config.env
    return [float(lr) for lr in np.geomspace(env.initial_lr_min, env.initial_lr_max, population)]


def save_member(folder: Path, trainer: Trainer, records: list[dict[str, Any]], seconds: float) -> None:
    """A member's checkpoint: the Trainer's state dict (tensors, numbers), its records and time, all plain."""
    torch.save({"trainer": trainer.state_dict(), "records": records, "seconds": seconds}, folder / CHECKPOINT)


def load_member(folder: Path) -> dict[str, Any]:
    """What ``save_member`` wrote, read as tensors and plain data only (``weights_only``: a file put in Tune's
    storage in its place runs nothing)."""
    return torch.load(folder / CHECKPOINT, weights_only=True)


def member(tune_config: dict[str, Any], config: Config, instance: Instance) -> None:
    """One population member (a Tune function trainable): trains ``instance`` step by step at its LR, reporting
    Dice with a Trainer checkpoint after every step; starts from a better member's checkpoint after an exploit.
    A diverged member keeps reporting Dice 0 (the Trainer skips each later step) until it is replaced."""
    from ray import tune

    torch.set_num_threads(1)
    env = config.env
    lr = clip_lr(env, tune_config["lr"] if "lr" in tune_config else 10 ** tune_config["log10_lr"])
    trained = instance_config(config, instance)
    trainer = Trainer(trained, make_dataset(trained.data, instance.data_seed), instance.init_seed, lr=lr)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        evaluation = trainer.evaluate()
        records, seconds = [evaluation.record(lr, 0)], evaluation.seconds
    else:
        with checkpoint.as_directory() as folder:
            saved = load_member(Path(folder))
        trainer.load_state_dict(saved["trainer"])
        records, seconds = saved["records"], saved["seconds"]
    while trainer.epoch < env.epochs:
        result = trainer.train_slice(lr, env.epochs_per_step)
        record = result.record()
        seconds += record.pop("seconds")
        records.append(record)
        dice = result.counted_dice
        with tempfile.TemporaryDirectory() as folder:
            save_member(Path(folder), trainer, records, seconds)
            tune.report(
                {"dice": dice, "epoch": trainer.epoch}, checkpoint=tune.Checkpoint.from_directory(folder)
            )


def _step_counter() -> Any:
    """A Tune callback counting reports: each is one trained step, so this counts PBT's epochs exactly."""
    from ray import tune

    class StepCounter(tune.Callback):
        steps = 0

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self.steps += 1

    return StepCounter()


def run_instance(
    config: Config, instance: Instance, settings: PBTSettings, storage: Path, gpus_per_member: float = 0.0
) -> tuple[EpisodeResult, int]:
    """One PBT run on ``instance``: its best member at the budget's end, and the epochs the population trained.
    Asynchronous PBT (Tune's default): synchronous rounds pause and restart every member each round. Each
    member holds one CPU and ``gpus_per_member`` of a GPU (Ray assigns no GPU to a trial that asks for
    none)."""
    from ray import tune

    # Tune logs every exploit/explore at INFO, drowning the comparison's progress bar; the outcome is in the table.
    logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.WARNING)
    env = config.env
    starts = member_lrs(config, settings.population)
    if settings.algorithm == "pb2":
        from ray.tune.schedulers.pb2 import PB2  # needs GPy (the ray extra)

        # the bandit models log10 LR: LRs span decades, and PB2 explores linearly inside its bounds
        scheduler: Any = PB2(
            time_attr="training_iteration",
            perturbation_interval=settings.interval,
            hyperparam_bounds={"log10_lr": [np.log10(env.initial_lr_min), np.log10(env.initial_lr_max)]},
            quantile_fraction=settings.quantile,
        )
        param_space = {"log10_lr": tune.grid_search([float(np.log10(lr)) for lr in starts])}
    else:
        from ray.tune.schedulers import PopulationBasedTraining

        scheduler = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=settings.interval,
            hyperparam_mutations={"lr": tune.loguniform(env.initial_lr_min, env.initial_lr_max)},
            quantile_fraction=settings.quantile,
            resample_probability=settings.resample_probability,
            perturbation_factors=settings.factors,
        )
        param_space = {"lr": tune.grid_search(starts)}
    counter = _step_counter()
    trainable = tune.with_resources(
        tune.with_parameters(member, config=config, instance=instance), {"cpu": 1, "gpu": gpus_per_member}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="dice", mode="max", scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{settings.algorithm}-{instance.split}-{instance.index}",
            storage_path=str(storage),
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
            callbacks=[counter],
        ),
    )
    results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"PBT on {instance.split} instance {instance.index} failed: {results.errors[0]}")
    best = results.get_best_result(metric="dice", mode="max", scope="last")
    with best.checkpoint.as_directory() as folder:
        saved = load_member(Path(folder))
    records = saved["records"]
    if records[-1]["epoch"] < env.epochs:  # Tune stops an experiment on Ctrl-C and returns what it has
        raise KeyboardInterrupt(
            f"PBT on {instance.split} instance {instance.index} was stopped at epoch "
            f"{records[-1]['epoch']} of {env.epochs}"
        )
    dices = [counted_dice(r) for r in records]
    trained = instance_config(config, instance)
    winner = Trainer(trained, make_dataset(trained.data, instance.data_seed), instance.init_seed)
    winner.load_state_dict(saved["trainer"])  # chosen above on validation; its test split is read only now
    # the lineage's starting LR stands in for the instance's initial LR in the reports
    lineage = replace(instance, initial_lr=float(records[0]["lr"]))
    result = EpisodeResult(
        settings.algorithm,
        lineage,
        records,
        (dices[-1] - dices[0]) * env.reward_scale,
        saved["seconds"],
        winner.test_dice(bool(records[-1]["diverged"])),
    )
    return result, counter.steps * env.epochs_per_step


def run_pbt(
    config: Config, instances: list[Instance], settings: PBTSettings, gpus_per_member: float = 0.0
) -> tuple[list[EpisodeResult], int]:
    """PBT on each instance in turn (exploit only ever copies members of the same instance); also returns the
    UNet epochs all populations trained."""
    from rlsched.common.ray_backend import connect

    connect(feature="PBT")
    with tempfile.TemporaryDirectory(prefix="rlsched-pbt-") as storage:
        runs = [
            run_instance(config, instance, settings, Path(storage), gpus_per_member) for instance in instances
        ]
    return [result for result, _ in runs], sum(epochs for _, epochs in runs)
