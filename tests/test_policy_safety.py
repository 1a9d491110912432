"""Loading a policy runs nothing from its files, acts exactly as SB3's full load, and refuses a policy whose
interface (features, their order, the action set, the normalisation) is not its config's, naming the file."""

import base64
import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import rlsched.pretrained
from rlsched import compare, evaluate
from rlsched.agents.loading import PolicyError, load_policy
from rlsched.agents.normalize import NormalizedPredictor, ObsNorm
from rlsched.agents.sb3_safe import load_resumable
from rlsched.config import config_to_toml, load_config
from rlsched.control.env import UNetLREnv, make_instances
from rlsched.control.interface import observation_names, observation_space
from rlsched.experiment.harness import Job
from rlsched.experiment.pbt import CHECKPOINT, load_member, save_member
from rlsched.pretrained import CONFIG, META, MODEL, NORM, PROVENANCE
from rlsched.scheduler import RLScheduler
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer

SHIPPED = Path(rlsched.pretrained.__file__).parent
TINY = {"data.image_size": 16, "data.n_train": 16, "data.n_val": 8}


class _Payload:
    """Unpickling it writes ``marker``: what a crafted file would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _shipped_copy(folder: Path) -> Path:
    """The shipped controller's files in ``folder`` (to alter one without touching the package)."""
    folder.mkdir()
    for name in (MODEL, NORM, CONFIG, PROVENANCE, META):
        shutil.copy(SHIPPED / name, folder / name)
    return folder / MODEL


def _rewrite_zip(path: Path, **entries: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in {**files, **entries}.items():
            archive.writestr(name, content)


def _with_pickled_schedule(path: Path, marker: Path) -> None:
    """Put the payload where SB3 keeps its LR schedule: a ``:serialized:`` entry of ``data``."""
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    data["lr_schedule"][":serialized:"] = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    _rewrite_zip(path, data=json.dumps(data).encode())


def _observations(space, n: int = 400) -> np.ndarray:
    return np.random.default_rng(0).uniform(space.low, space.high, (n, space.shape[0])).astype(np.float32)


def test_a_pickled_schedule_in_model_zip_runs_nothing_and_the_weights_load(tmp_path):
    path, marker = _shipped_copy(tmp_path / "evil"), tmp_path / "ran"
    _with_pickled_schedule(path, marker)
    loaded = load_policy(path)
    RLScheduler.load(path, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    obs = _observations(observation_space(loaded.config.env), 20)
    assert loaded.predictor.predict(obs)[0].shape == (20,)
    assert not marker.exists()
    load_policy(path, trust=True)  # the payload is real: SB3's full load runs it
    assert marker.read_text() == "ran"


def test_a_pickle_in_policy_pth_is_refused_by_the_api_and_both_clis_naming_trust(tmp_path, capsys):
    path, marker = _shipped_copy(tmp_path / "evil"), tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"action_net.weight": _Payload(marker)}, buffer)
    _rewrite_zip(path, **{"policy.pth": buffer.getvalue()})
    with pytest.raises(PolicyError, match="policy.pth holds more than tensors.*trust=True.*--trust-model"):
        load_policy(path)
    for main in (compare.main, evaluate.main):
        with pytest.raises(SystemExit):
            main(["--agent", str(path)] if main is compare.main else [str(path)])
        assert "--trust-model" in capsys.readouterr().err
    assert not marker.exists()


def test_the_shipped_controller_acts_exactly_as_sb3_loads_it(tmp_path):
    """Same actions and the same action probabilities as ``PPO.load`` on the same normalised observations,
    and ``RLScheduler.pretrained`` sets the LRs a scheduler on the fully loaded policy sets."""
    loaded = load_policy("pretrained")
    raw = PPO.load(SHIPPED / MODEL, device="cpu")
    norm = ObsNorm.load(SHIPPED / NORM)
    obs = _observations(observation_space(loaded.config.env))
    actions = loaded.predictor.predict(obs)[0]
    assert np.array_equal(actions, raw.predict(norm(obs), deterministic=True)[0])
    assert len(set(actions.tolist())) > 3  # observations that make it pick several actions
    safe = loaded.predictor.policy.policy
    probs = [p.get_distribution(p.obs_to_tensor(norm(obs))[0]).distribution.probs for p in (safe, raw.policy)]
    assert torch.allclose(probs[0], probs[1], atol=0, rtol=0)

    def lrs(scheduler: RLScheduler) -> list[float]:
        out = [scheduler.start(val_loss=0.7, dice=0.1)]
        for k in range(loaded.config.env.epochs):
            out.append(
                scheduler.step(
                    train_loss=0.6 / (k + 1),
                    val_loss=0.65 / (k + 1),
                    dice=min(0.9, 0.1 * k),
                    grad_norm=1.0 + k,
                    update_ratio=0.05 * (k + 1),
                )
            )
        return out

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.01)

    full = RLScheduler(NormalizedPredictor(raw, norm), optimizer(), loaded.config.env)
    assert lrs(RLScheduler.pretrained(optimizer())) == lrs(full)


def test_the_shipped_controller_records_its_observation_features():
    meta = json.loads((SHIPPED / META).read_text())
    assert meta["normalize_obs"] is True and len(meta["observation_features"]) == 16
    assert meta["observation_features"][:2] == ["log_lr", "budget_used"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A model written as ``python -m rlsched.train`` writes one (a rollout of 4 env steps)."""
    tiny = ("data.image_size=16", "data.n_train=16", "data.n_val=8", "env.epochs=2", "env.heldout_instances=1",
            "env.train_instances=1")  # fmt: skip
    return train_tiny(tmp_path_factory.mktemp("runs"), tiny)


def test_a_trained_model_loads_safely_with_its_features_and_acts_as_sb3_loads_it(trained_run):
    meta = json.loads((trained_run / "model.policy.json").read_text())
    loaded = load_policy(trained_run / "model.zip")
    assert meta == {
        "format": 1,
        "normalize_obs": True,
        "observation_features": observation_names(loaded.config.env),
    }
    raw = PPO.load(trained_run / "model.zip", device="cpu")
    obs = _observations(observation_space(loaded.config.env))
    norm = loaded.predictor.norm
    assert np.array_equal(loaded.predictor.predict(obs)[0], raw.predict(norm(obs), deterministic=True)[0])


def _refused(path: Path, *patterns: str) -> str:
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in patterns), message
    return message


def test_a_policy_saved_with_other_feature_names_is_refused_naming_the_difference(tmp_path):
    path = _shipped_copy(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / META).read_text())
    names = meta["observation_features"]
    reordered = "reordered: feature 0 is budget_used in the policy, log_lr now"
    for saved, difference in (
        (names[1::-1] + names[2:], reordered),
        (names[:-1] + ["log_lr_lag9"], "missing: log_lr_lag2; extra: log_lr_lag9"),
        (names[1:] + ["grad_norm_raw"], "missing: log_lr; extra: grad_norm_raw"),
    ):
        (tmp_path / "c" / META).write_text(json.dumps({**meta, "observation_features": saved}))
        _refused(path, META, difference)


def test_a_config_with_another_action_set_or_history_is_refused_naming_the_mismatch(tmp_path):
    path = _shipped_copy(tmp_path / "c")
    toml = (tmp_path / "c" / CONFIG).read_text()
    offsets = [round(-2.0 + 0.25 * i, 2) for i in range(17)]
    (tmp_path / "c" / CONFIG).write_text(
        toml.replace(
            toml[toml.index("offsets = ") : toml.index("\n", toml.index("offsets = "))],
            f"offsets = {offsets}",
        )
    )
    _refused(path, str(path), "it has 19 actions", "has 17", "env.offsets=")
    (tmp_path / "c" / CONFIG).write_text(toml.replace("history = 2", "history = 1"))
    _refused(path, META, "extra: dice_lag2, log_lr_lag2")
    (tmp_path / "c" / META).unlink()  # a policy saved before the metadata: its weights still say 16
    _refused(path, str(path), "it takes 16 observation features, the config gives 14")


def test_the_normalisation_file_must_be_there_exactly_when_the_policy_trained_normalised(tmp_path):
    path = _shipped_copy(tmp_path / "c")
    (tmp_path / "c" / NORM).unlink()
    _refused(path, str(tmp_path / "c" / NORM), "is missing", "normalised observations")
    (tmp_path / "c" / META).unlink()  # the shipped controller's controller.json says so as well
    _refused(path, str(tmp_path / "c" / NORM), "controller.json observations_normalised")
    shutil.copy(SHIPPED / NORM, tmp_path / "c" / NORM)
    shutil.copy(SHIPPED / META, tmp_path / "c" / META)
    meta = json.loads((tmp_path / "c" / META).read_text())
    (tmp_path / "c" / META).write_text(json.dumps({**meta, "normalize_obs": False}))
    _refused(path, str(tmp_path / "c" / NORM), "trained on raw observations", "remove the file")


def test_truncated_files_give_one_line_errors_naming_them(tmp_path):
    path = _shipped_copy(tmp_path / "c")
    for name in (NORM, META, MODEL):
        whole = (tmp_path / "c" / name).read_bytes()
        (tmp_path / "c" / name).write_bytes(whole[: len(whole) // 2])
        _refused(path, str(tmp_path / "c" / name), "truncated or corrupt")
        (tmp_path / "c" / name).write_bytes(whole)
    with zipfile.ZipFile(path) as archive:
        pth = archive.read("policy.pth")
    _rewrite_zip(path, **{"policy.pth": pth[: len(pth) // 2]})
    _refused(path, str(path), "policy.pth is unreadable", "truncated or corrupt")


def test_an_rllib_checkpoint_needs_trust(tmp_path):
    (tmp_path / "model.rllib").mkdir()
    (tmp_path / "config.toml").write_text(config_to_toml(load_config("fast")))
    _refused(tmp_path / "model.rllib", "unpickling", "trust=True", "--trust-model")


def test_a_reference_ppo_checkpoint_with_a_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"config": _Payload(marker)}, tmp_path / "model.pt")
    (tmp_path / "config.toml").write_text(config_to_toml(load_config("fast")))
    _refused(tmp_path / "model.pt", str(tmp_path / "model.pt"), "more than tensors")
    assert not marker.exists()


def test_trust_travels_to_the_workers_without_changing_journal_keys():
    instance = make_instances(load_config("fast"), "heldout")[0]
    job = Job("learned", "policy", "runs/x/model.zip", instance)
    assert job.key == Job("learned", "policy", "runs/x/model.zip", instance, trust=True).key


def test_resume_unpickles_nothing_and_restores_the_checkpoint(tmp_path):
    config = load_config("fast", {**TINY, "env.epochs": 2})
    env = VecNormalize(DummyVecEnv([lambda: UNetLREnv(config=config)]), norm_reward=False)  # as train's
    model = PPO(
        "MlpPolicy", env, n_steps=4, batch_size=4, seed=0, device="cpu", policy_kwargs={"net_arch": [8]}
    )
    model.learn(4)
    path, marker = tmp_path / "ckpt.zip", tmp_path / "ran"
    model.save(path)
    _with_pickled_schedule(path, marker)
    resumed = load_resumable(path, env, clip_range=0.2, tensorboard_log=str(tmp_path / "tb"))
    assert not marker.exists()
    assert resumed.num_timesteps == model.num_timesteps == 4 and resumed.clip_range(1.0) == 0.2
    for a, b in zip(resumed.policy.state_dict().values(), model.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.lr_schedule(1.0) == model.lr_schedule(1.0)
    resumed.learn(4, reset_num_timesteps=False)  # it trains on from there
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    data["my_object"] = {":type:": "<class 'object'>", ":serialized:": data["lr_schedule"][":serialized:"]}
    _rewrite_zip(path, data=json.dumps(data).encode())
    with pytest.raises(PolicyError, match="pickled my_object"):
        load_resumable(path, env, clip_range=0.2, tensorboard_log=str(tmp_path / "tb"))
    assert not marker.exists()


def test_pbt_member_checkpoints_load_as_plain_data_only(tmp_path):
    config = load_config("fast", TINY)
    trainer = Trainer(config, make_dataset(config.data, 0), 0, lr=0.01)
    result = trainer.train_slice(0.01, 1)
    save_member(tmp_path, trainer, [result.record()], 1.5)
    saved = load_member(tmp_path)
    assert saved["seconds"] == 1.5 and saved["records"][0]["epoch"] == 1
    Trainer(config, make_dataset(config.data, 0), 0).load_state_dict(saved["trainer"])
    marker = tmp_path / "ran"
    torch.save({"trainer": _Payload(marker)}, tmp_path / CHECKPOINT)
    with pytest.raises(pickle.UnpicklingError):
        load_member(tmp_path)
    assert not marker.exists()
