"""The tuning-free optimizer catalogue (``rlsched.seg.optimizers``): one module per family makes a catalogue
entry, an ``optim.name`` and a ``compare --baselines`` method; Mechanic and DoG train, survive rollback and
checkpoints, and name their extra when missing."""

import csv
import io
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from rlsched import compare
from rlsched import config as config_module
from rlsched.compare.methods import BASELINE_GROUPS, BASELINES
from rlsched.config import ConfigError, load_config
from rlsched.seg import optimizers
from rlsched.seg.optimizers import OPTIMIZERS, catalogue
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer

NEW = ("mechanic_sgd", "mechanic_adam", "dog")
TINY = {"data.image_size": 16, "data.n_train": 32, "data.n_val": 8, "env.epochs": 2}


def tiny(**overrides):
    return load_config("fast", {**TINY, **overrides})


@pytest.fixture(scope="module")
def data():
    return make_dataset(tiny().data, seed=3)


def params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def same(a, b):
    """Equal nested state: tensors by value, everything else by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


# ------------------------------------------------------------------------------------------------- catalogue
def test_the_catalogue_is_the_families_entries_and_each_is_a_config_name_and_a_baseline():
    expected = {name: spec for family in optimizers._FAMILIES for name, spec in family.OPTIMIZERS.items()}
    assert OPTIMIZERS == expected and list(OPTIMIZERS) == list(expected)
    assert set(NEW) <= set(OPTIMIZERS)
    assert config_module.OPTIMIZERS == ("sgd", "adam", "adamw", *OPTIMIZERS)
    assert all(BASELINES[name] == ("optimizer", name) for name in OPTIMIZERS)
    assert BASELINE_GROUPS["tuningfree"] == tuple(OPTIMIZERS)


def test_two_families_claiming_one_name_are_refused():
    from rlsched.seg.optimizers import dadaptation, prodigy

    with pytest.raises(ValueError, match=r"\['prodigy'\] of rlsched.seg.optimizers.prodigy are taken"):
        catalogue((prodigy, dadaptation, prodigy))


FAKE_FAMILY = '''
"""A family standing in for DoG: torch's own SGD under another name."""
from rlsched.seg.optimizers.spec import TuningFree

OPTIMIZERS = {"fake_sgd": TuningFree("torch.optim", "SGD", lr=0.5, momentum=0.5)}
'''

# run in a fresh interpreter: the family module rlsched.seg.optimizers.dog is read from the file in argv[1]
SWAP_DOG = """
import importlib.abc, importlib.util, sys

class Fake(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rlsched.seg.optimizers.dog":
            return importlib.util.spec_from_file_location(name, sys.argv[1])

sys.meta_path.insert(0, Fake())
"""


def test_a_family_module_is_all_a_new_optimizer_needs(tmp_path):
    """Whatever a family file lists becomes an ``optim.name`` the trainer builds, a baseline and a member of the
    ``tuningfree`` group; nothing else names it."""
    fake = tmp_path / "fake_family.py"
    fake.write_text(FAKE_FAMILY)
    check = SWAP_DOG + textwrap.dedent(
        """
        import torch
        from rlsched.compare.methods import BASELINE_GROUPS, BASELINES
        from rlsched.config import ConfigError, load_config
        from rlsched.experiment.kinds.optimizer import recipe
        from rlsched.seg.trainer import build_optimizer

        config = load_config("fast", {"optim.name": "fake_sgd"})
        optimizer = build_optimizer(config, [torch.zeros(1, requires_grad=True)], 0.5)
        assert type(optimizer) is torch.optim.SGD, optimizer
        assert BASELINES["fake_sgd"] == ("optimizer", "fake_sgd") and "fake_sgd" in BASELINE_GROUPS["tuningfree"]
        pinned = (("optim.name", "fake_sgd"), ("optim.momentum", "0.5"))
        assert recipe("fake_sgd") == ("constant", 0.5, pinned)
        assert "dog" not in BASELINES
        try:
            load_config("fast", {"optim.name": "dog"})
        except ConfigError:
            print("swapped")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(fake)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "swapped", done.stderr


@pytest.mark.parametrize(("name", "package"), [("mechanic_sgd", "mechanic_pytorch"), ("dog", "dog")])
def test_a_missing_package_names_the_extra_to_install(monkeypatch, name, package):
    monkeypatch.setitem(sys.modules, package, None)  # importing it now fails
    with pytest.raises(ConfigError, match=rf'{package}.*not installed: pip install -e "\.\[tuningfree\]"'):
        load_config("fast", {"optim.name": name})


# ------------------------------------------------------------------------------------ Mechanic and DoG
def test_mechanic_wraps_its_base_optimizer_with_the_package_defaults(data):
    pytest.importorskip("mechanic_pytorch")
    from mechanic_pytorch import is_mechanized

    sgd = Trainer(tiny(**{"optim.name": "mechanic_sgd"}), data, seed=0, lr=1.0).optimizer
    adam = Trainer(tiny(**{"optim.name": "mechanic_adam"}), data, seed=0, lr=1.0).optimizer
    assert is_mechanized(sgd) and isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert is_mechanized(adam) and isinstance(adam, torch.optim.Adam)


@pytest.mark.parametrize(("norm", "reps_rel"), [("batch", 1e-4), ("none", 1e-6), ("group", 1e-6)])
def test_dog_takes_the_first_step_its_docstring_suggests_for_the_model(data, norm, reps_rel):
    pytest.importorskip("dog")
    trainer = Trainer(tiny(**{"optim.name": "dog", "model.norm": norm}), data, seed=0, lr=1.0)
    assert trainer.optimizer.param_groups[0]["reps_rel"] == reps_rel


def blow_up_once(trainer, monkeypatch):
    """Make the next epoch's second batch a NaN loss, as a too-high LR would; later batches are healthy."""
    loss, calls = trainer.head.loss, []

    def second_is_nan(logits, target):
        calls.append(1)
        value = loss(logits, target)
        return value * math.nan if len(calls) == 2 else value

    monkeypatch.setattr(trainer.head, "loss", second_is_nan)


@pytest.mark.parametrize("name", NEW)
def test_an_undone_blow_up_restores_the_optimizer_state_and_training_goes_on(data, monkeypatch, name):
    """A NaN mid-slice is a divergence the trainer undoes: weights and optimizer state come back exactly
    (Mechanic's parameter-keyed state, DoG's step-size state in its parameter groups) and the next slice trains."""
    pytest.importorskip(OPTIMIZERS[name].package)
    trainer = Trainer(tiny(**{"optim.name": name}), data, seed=0, lr=1.0)
    trainer.train_slice(1.0, 1)
    good, state = params(trainer).clone(), trainer.state_dict()["optimizer"]
    blow_up_once(trainer, monkeypatch)
    result = trainer.train_slice(1.0, 1, undo_divergence=True)
    assert result.rolled_back and result.epochs[0].diverged and not result.diverged
    assert torch.equal(params(trainer), good) and same(trainer.state_dict()["optimizer"], state)
    after = trainer.train_slice(1.0, 1)
    assert not after.diverged and math.isfinite(after.evaluation.loss)
    assert not torch.equal(params(trainer), good)


@pytest.mark.parametrize("name", NEW)
def test_a_checkpoint_resumes_bit_for_bit_in_a_fresh_trainer(data, name):
    """The trainer's state dict, saved and read back as tensors and plain data only (PBT's checkpoints), continues
    in a newly built trainer exactly as the original run went on."""
    pytest.importorskip(OPTIMIZERS[name].package)
    config = tiny(**{"optim.name": name})
    straight = Trainer(config, data, seed=0, lr=1.0)
    for _ in range(3):
        straight.train_epoch()
    first = Trainer(config, data, seed=0, lr=1.0)
    first.train_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = Trainer(config, data, seed=7, lr=1.0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(2):
        resumed.train_epoch()
    assert torch.equal(params(resumed), params(straight))


def test_mechanic_and_dog_are_compare_baselines_end_to_end(tmp_path):
    """``python -m rlsched.compare --baselines mechanic_sgd mechanic_adam dog`` trains each on the held-out
    instance at its recommended LR and reports a finite test Dice in summary.csv."""
    for name in NEW:
        pytest.importorskip(OPTIMIZERS[name].package)
    overrides = [
        "data.image_size=16",
        "data.n_train=16",
        "data.n_val=8",
        "env.epochs=2",
        "env.heldout_instances=1",
        "env.train_instances=1",
        "env.initial_lr_min=0.01",
        "env.initial_lr_max=0.1",
    ]
    flags = ["--schedules", "constant", "--tune-instances", "1", "--grid-per-decade", "1", "--no-robustness"]
    sets = [arg for o in overrides for arg in ("--set", o)]
    argv = [
        "--preset",
        "fast",
        *sets,
        *flags,
        "--baselines",
        *NEW,
        "--workers",
        "1",
        "--runs-dir",
        str(tmp_path),
    ]
    assert compare.main(argv) == 0
    (out,) = tmp_path.iterdir()
    with open(out / "summary.csv", newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle) if r["factor"] == ""}
    for name in NEW:
        assert rows[name]["n"] == "1" and math.isfinite(float(rows[name]["test_dice_mean"])), rows[name]
