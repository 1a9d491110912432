"""The shipped controller: exporting a run into the package folder, ``RLScheduler.pretrained`` in a plain loop
of a model that is not a UNet, ``pretrained`` as an agent path, and the errors that name their fix."""

import csv
import json
import shutil

import pytest
import torch
from conftest import train_tiny
from stable_baselines3 import PPO

from rlsched import compare, evaluate
from rlsched.agents.loading import load_policy, resolve_agent_path
from rlsched.common.files import read_jsonl
from rlsched.config import load_config
from rlsched.pretrained import CONFIG, ENV_VAR, META, MODEL, NORM, PROVENANCE, export
from rlsched.pretrained import __main__ as pretrained_cli
from rlsched.scheduler import RLScheduler

# 16x16 images, 2-epoch budgets and absolute actions (as envs/family.toml uses): a real run in seconds
TINY = [
    "data.image_size=16",
    "data.n_train=16",
    "data.n_val=8",
    "env.epochs=2",
    'env.action="absolute"',
    "env.heldout_instances=1",
    "env.train_instances=1",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished SB3 run of one tiny rollout. Its action head is then randomised: an untrained policy's most
    likely action barely depends on the observation, and the loop tests want to see the LR move."""
    run = train_tiny(tmp_path_factory.mktemp("runs"), TINY)
    model = PPO.load(run / "model.zip", device="cpu")
    with torch.no_grad():
        model.policy.action_net.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    model.save(run / "model.zip")
    return run


@pytest.fixture
def shipped(run_dir, tmp_path, monkeypatch):
    """``run_dir`` exported into a temporary controller folder that every reader uses ($RLSCHED_PRETRAINED_DIR)."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "pretrained"))
    export(run_dir)
    return tmp_path / "pretrained"


def test_export_copies_the_run_with_its_provenance(run_dir, shipped):
    assert sorted(p.name for p in shipped.iterdir()) == sorted(
        [MODEL, NORM, CONFIG, PROVENANCE, META]
    )  # no temps
    assert (shipped / MODEL).read_bytes() == (run_dir / "model.zip").read_bytes()
    assert (shipped / META).read_bytes() == (run_dir / "model.policy.json").read_bytes()
    assert (shipped / NORM).read_bytes() == (run_dir / "model.obs_norm.json").read_bytes()
    assert load_config(shipped / CONFIG) == load_config(run_dir / "config.toml")
    provenance = json.loads((shipped / PROVENANCE).read_text())
    records = read_jsonl(run_dir / "episodes.jsonl")
    assert provenance["training_epochs"] == sum(r["epochs"] for r in records) == 2 * len(records) > 0
    assert provenance["args"] == json.loads((run_dir / "args.json").read_text())
    assert provenance["source_run"] == run_dir.name and provenance["preset"] == "fast"
    assert {"git_commit", "exported", "trained", "model_sha256"} <= provenance.keys()


class _SmallCNN(torch.nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 3),
        )


def _plain_loop(make_optimizer, epochs: int) -> tuple[RLScheduler, list[float], float]:
    """The loop a user writes around ``RLScheduler.pretrained`` for a small CNN: train, validate, step.
    Returns the scheduler, the LRs it set and the optimizer's own LR before it."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    model = _SmallCNN()
    optimizer = make_optimizer(model.parameters())
    user_lr = optimizer.param_groups[0]["lr"]
    scheduler = RLScheduler.pretrained(optimizer, total_epochs=epochs)
    lrs = []
    for _ in range(epochs):
        for xb, yb in zip(x.split(16), y.split(16)):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = model(x)
        accuracy = (logits.argmax(1) == y).float().mean().item()
        val_loss = torch.nn.functional.cross_entropy(logits, y).item()
        lrs.append(scheduler.step(train_loss=loss.item(), val_loss=val_loss, dice=accuracy))
    return scheduler, lrs, user_lr


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), lambda p: torch.optim.Adam(p, lr=1e-3)],
    ids=["sgd", "adam"],
)
def test_pretrained_steers_a_plain_loop_of_any_model(shipped, make_optimizer):
    scheduler, lrs, _ = _plain_loop(make_optimizer, epochs=6)
    env = load_config(shipped / CONFIG).env
    assert len(set(lrs)) > 1, lrs
    assert all(env.lr_min <= lr <= env.lr_max for lr in lrs) and scheduler.get_last_lr() == [lrs[-1]]


def test_no_shipped_controller_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(
        FileNotFoundError, match="no pretrained controller is shipped .*--export runs/<run-id>"
    ):
        RLScheduler.pretrained(optimizer)
    assert pretrained_cli.main([]) == 1
    assert "python -m rlsched.pretrained --export" in capsys.readouterr().err


def test_an_interrupted_export_reads_as_none_shipped(shipped):
    (shipped / PROVENANCE).unlink()  # export removes it first and writes it last
    with pytest.raises(FileNotFoundError, match="no pretrained controller"):
        resolve_agent_path("pretrained")


def test_the_cli_exports_and_describes_what_is_shipped(run_dir, tmp_path, capsys):
    dest = tmp_path / "elsewhere"
    assert pretrained_cli.main(["--export", str(run_dir), "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert str(dest / MODEL) in out and run_dir.name in out and "loads and acts: ok" in out
    assert "absolute actions" in out and "UNet epochs" in out and "--bc-explore 0.0" in out
    assert pretrained_cli.main(["--dest", str(dest)]) == 0 and run_dir.name in capsys.readouterr().out


def _copy_without(run_dir, tmp_path, *missing):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(*missing))
    return copy


@pytest.mark.parametrize(
    "missing, extra, error, match",
    [
        (("model.zip",), "model.pt", ValueError, "reference-PPO or RLlib run; only SB3 policies"),
        (("model.zip",), None, FileNotFoundError, "has not finished .* --resume"),
        (("model.zip", "checkpoints"), None, FileNotFoundError, "no model.zip"),
        (("model.obs_norm.json",), None, FileNotFoundError, "model.obs_norm.json is missing"),
        (("episodes.jsonl",), None, FileNotFoundError, "no episodes.jsonl"),
    ],
)
def test_export_refuses_what_is_not_a_finished_sb3_run(run_dir, tmp_path, missing, extra, error, match):
    source = _copy_without(run_dir, tmp_path, *missing)
    if extra:
        (source / extra).write_bytes(b"")
    dest = tmp_path / "dest"
    with pytest.raises(error, match=match):
        export(source, dest)
    assert not dest.exists()  # checked before anything is written


def test_a_run_without_normalisation_leaves_no_stale_statistics(run_dir, shipped, tmp_path):
    """load_policy applies any obs_norm file beside the model: a --no-normalize-obs export must remove the old."""
    source = _copy_without(run_dir, tmp_path, "model.obs_norm.json")
    args = json.loads((source / "args.json").read_text())
    (source / "args.json").write_text(json.dumps({**args, "normalize_obs": False}))
    assert export(source)["observations_normalised"] is False
    assert not (shipped / NORM).exists() and (shipped / PROVENANCE).is_file()


def test_export_cli_errors_name_the_folder(tmp_path, capsys):
    assert pretrained_cli.main(["--export", str(tmp_path / "nope"), "--dest", str(tmp_path / "d")]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_pretrained_is_an_agent_path_with_its_training_epochs(shipped):
    assert resolve_agent_path("pretrained") == shipped / MODEL
    policy = load_policy("pretrained")
    assert policy.config == load_config(shipped / CONFIG)
    (method,) = compare.agent_methods([policy], policy.config)
    assert method.name == "pretrained" and method.arg == str(shipped / MODEL)
    provenance = json.loads((shipped / PROVENANCE).read_text())
    assert method.epochs_before == provenance["training_epochs"] and PROVENANCE in method.accounting


def test_compare_and_evaluate_take_pretrained(shipped, tmp_path):
    assert (
        compare.main(
            [
                "--agent",
                "pretrained",
                "--schedules",
                "constant",
                "--tune-instances",
                "1",
                "--grid-per-decade",
                "1",
                "--set",
                "env.initial_lr_min=0.01",
                "--set",
                "env.initial_lr_max=0.1",
                "--no-robustness",
                "--workers",
                "1",
                "--runs-dir",
                str(tmp_path / "compare"),
            ]
        )
        == 0
    )
    (out,) = (tmp_path / "compare").iterdir()
    with open(out / "summary.csv", newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    provenance = json.loads((shipped / PROVENANCE).read_text())
    assert float(rows["pretrained"]["epochs_before_eval"]) == provenance["training_epochs"]
    assert evaluate.main(["pretrained", "--runs-dir", str(tmp_path / "heldout")]) == 0
    (heldout,) = (tmp_path / "heldout").iterdir()  # not into the package's controller folder
    assert (heldout / "heldout.json").is_file() and not (shipped / "heldout.json").exists()


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9), lambda p: torch.optim.Adam(p, lr=1e-4)],
    ids=["sgd", "adam"],
)
def test_the_shipped_controller_steers_a_plain_loop(make_optimizer, monkeypatch):
    """The controller in the package itself (no $RLSCHED_PRETRAINED_DIR), in the loop a user writes, with a model
    that is not a UNet: after the first epoch (the user's LR) it sets an LR from that epoch's update size."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    scheduler, lrs, user_lr = _plain_loop(make_optimizer, epochs=5)
    env = load_config(resolve_agent_path("pretrained").with_name(CONFIG)).env
    assert all(env.lr_min <= lr <= env.lr_max for lr in lrs)
    assert scheduler.optimizer.param_groups[0]["lr"] == lrs[-1]
    assert lrs[0] != user_lr and scheduler.last_action is not None


def test_an_evaluation_of_the_shipped_controller_that_fails_leaves_no_run_directory(
    shipped, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("a worker died")

    monkeypatch.setattr(evaluate, "evaluate_heldout", broken)
    with pytest.raises(RuntimeError, match="a worker died"):
        evaluate.main(["pretrained", "--runs-dir", str(tmp_path / "heldout")])
    assert not any((tmp_path / "heldout").iterdir())
