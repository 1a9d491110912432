"""The LR controller shipped inside the package, so ``RLScheduler.pretrained(optimizer)`` works right after
``pip install``, without training anything.

This folder holds one exported SB3 run under fixed names: ``controller.zip`` (the policy),
``controller.obs_norm.json`` (its observation statistics; absent only for a ``--no-normalize-obs`` run),
``controller.toml`` (the config it trained on: its ``[env]`` is the policy's interface),
``controller.policy.json`` (the observation features it sees, in order, and whether they are normalised:
``agents.policy_meta``) and ``controller.json`` (provenance: the run's arguments, the UNet epochs its training
spent, commit, dates). ``load_policy`` reads the weights without unpickling anything
(``agents.sb3_safe``). ``python -m rlsched.pretrained --export runs/<id>`` writes them, each atomically;
``controller.json`` is removed first and written last, so an interrupted export reads as "none shipped", never
as one run's policy with another's statistics.

``$RLSCHED_PRETRAINED_DIR`` moves the folder for every reader and the export (tests; trying a controller
before shipping it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from rlsched.agents.policy_meta import meta_path
from rlsched.common.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl
from rlsched.common.provenance import git_commit
from rlsched.config import load_config

ENV_VAR = "RLSCHED_PRETRAINED_DIR"
AGENT_NAME = "pretrained"  # what --agent and load_policy take for the shipped controller
MODEL, NORM, CONFIG, PROVENANCE = (
    "controller.zip",
    "controller.obs_norm.json",
    "controller.toml",
    "controller.json",
)
META = "controller.policy.json"  # agents.policy_meta.meta_path of MODEL
HOW_TO_EXPORT = "python -m rlsched.pretrained --export runs/<run-id>"


def pretrained_dir() -> Path:
    """``$RLSCHED_PRETRAINED_DIR`` when set, else this package's folder (the files ship with the package)."""
    return Path(os.environ.get(ENV_VAR) or Path(__file__).resolve().parent)


def controller_path(folder: Path | str | None = None) -> Path:
    """The shipped ``controller.zip``: a clear error when none (or an interrupted export) is there."""
    folder = Path(folder) if folder else pretrained_dir()
    if not all((folder / name).is_file() for name in (PROVENANCE, MODEL, CONFIG)):
        raise FileNotFoundError(
            f"no pretrained controller is shipped in {folder}: export a finished SB3 run into "
            f"it with {HOW_TO_EXPORT} (or load a run's model.zip with RLScheduler.load)"
        )
    return folder / MODEL


def read_provenance(model_path: Path | str) -> dict[str, Any] | None:
    """The ``controller.json`` beside an exported ``controller.zip``; None for any other model (a run's)."""
    path = Path(model_path)
    provenance = path.with_name(PROVENANCE)
    if path.name != MODEL or not provenance.is_file():
        return None
    return json.loads(provenance.read_text())


def export(run_dir: Path | str, dest: Path | str | None = None) -> dict[str, Any]:
    """Copy a finished SB3 run of ``python -m rlsched.train`` into ``dest`` (default: ``pretrained_dir()``) as
    the shipped controller; returns the provenance it wrote."""
    run_dir = Path(run_dir)
    dest = Path(dest) if dest else pretrained_dir()
    args = _check_run(run_dir)
    normalised = args.get("normalize_obs", True)
    model = run_dir / "model.zip"
    records = read_jsonl(run_dir / "episodes.jsonl")
    provenance = {
        "source_run": run_dir.resolve().name,
        "preset": load_config(run_dir / "config.toml").name,
        "args": args,
        "training_episodes": len(records),
        "training_epochs": sum(
            int(r["epochs"]) for r in records
        ),  # what compare charges it before evaluation
        "observations_normalised": normalised,
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "trained": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(model.stat().st_mtime)),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "git_commit": git_commit(),  # of the rlsched checkout that exported it; None outside a git checkout
    }
    dest.mkdir(parents=True, exist_ok=True)
    (dest / PROVENANCE).unlink(
        missing_ok=True
    )  # until the last write below, the folder reads as "none shipped"
    atomic_write_bytes(dest / MODEL, model.read_bytes())
    if normalised:
        atomic_write_bytes(dest / NORM, (run_dir / "model.obs_norm.json").read_bytes())
    else:  # load_policy applies any statistics it finds: none may be left from an earlier export
        (dest / NORM).unlink(missing_ok=True)
    if meta_path(model).is_file():
        atomic_write_bytes(dest / META, meta_path(model).read_bytes())
    else:  # a run saved before the metadata: its features are unknown, so none may remain from an earlier export
        (dest / META).unlink(missing_ok=True)
    atomic_write_text(dest / CONFIG, (run_dir / "config.toml").read_text())
    atomic_write_json(dest / PROVENANCE, provenance)
    return provenance


def _check_run(run_dir: Path) -> dict[str, Any]:
    """Refuse anything but a finished SB3 run, naming the fix; returns its ``args.json``."""
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"{run_dir}: no such folder; pass a run directory of python -m rlsched.train (runs/<run-id>)"
        )
    if not (run_dir / "model.zip").is_file():
        if (run_dir / "model.pt").is_file() or (run_dir / "model.rllib").is_dir():
            raise ValueError(
                f"{run_dir}: a reference-PPO or RLlib run; only SB3 policies (model.zip) are shipped: "
                "train one with python -m rlsched.train (--algo sb3, --backend sb3: the defaults)"
            )
        if (run_dir / "checkpoints" / "last.json").is_file():
            raise FileNotFoundError(
                f"{run_dir}: the run has not finished (no model.zip, only a checkpoint); "
                f"finish it with python -m rlsched.train --resume {run_dir}"
            )
        raise FileNotFoundError(
            f"{run_dir}: no model.zip; pass a finished run directory of python -m rlsched.train"
        )
    if not zipfile.is_zipfile(run_dir / "model.zip"):
        raise ValueError(f"{run_dir / 'model.zip'}: not an SB3 model (not a zip file)")
    for name in ("config.toml", "args.json", "episodes.jsonl"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir}: no {name}; python -m rlsched.train writes config.toml, args.json "
                "and episodes.jsonl beside model.zip: export the whole run directory"
            )
    args = json.loads((run_dir / "args.json").read_text())
    if args.get("normalize_obs", True) and not (run_dir / "model.obs_norm.json").is_file():
        raise FileNotFoundError(
            f"{run_dir}: model.obs_norm.json is missing, and the policy trained on normalised "
            "observations: without its statistics it would act on features at the wrong scale. "
            "Restore the file from where the run was trained, or retrain"
        )
    return args
