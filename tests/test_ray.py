"""The Ray extra on a local 2-CPU Ray: RLlib training end to end, compare on Ray equals the local pool, PBT."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from rlsched import compare, train  # noqa: E402
from rlsched.agents.loading import load_policy  # noqa: E402
from rlsched.common.files import read_jsonl  # noqa: E402
from rlsched.config import load_config  # noqa: E402
from rlsched.control.env import UNetLREnv, make_instances  # noqa: E402
from rlsched.experiment.harness import PolicyController, run_episode  # noqa: E402

pytestmark = pytest.mark.slow

# as in tests/test_compare.py: 16x16 images, 2-epoch budgets, 2 held-out and 2 train instances, LRs in [0.01, 0.1]
TINY = {
    "data.image_size": 16,
    "data.n_train": 16,
    "data.n_val": 8,
    "env.epochs": 2,
    "env.heldout_instances": 2,
    "env.train_instances": 2,
    "env.initial_lr_min": 0.01,
    "env.initial_lr_max": 0.1,
}
SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
SETTINGS = {
    "schedules": ("constant", "cosine"),
    "tune_instances": 1,
    "grid_per_decade": 1,
    "robustness": (10.0,),
    "workers": 2,
}


def trajectories(results):
    """What must match across backends (wall time may not); JSON so NaNs compare equal."""
    return json.dumps([(r.method, r.instance.index, r.total_reward, r.records) for r in results])


def pbt_members_cannot_read_the_test_split():
    """Ray worker setup: a PBT member (a Tune trainable in a worker) whose Trainer evaluates the test split fails
    its trial, and with it the comparison. PBT cannot be replayed bit for bit (its exploits depend on timing), so
    this, not a rerun on other test data, is how the tests show that no PBT choice reads the test split; the
    winner's test Dice is scored in the driver, which this leaves alone."""
    from rlsched.experiment import pbt

    class ValidationOnly(pbt.Trainer):
        def evaluate(self, split="val"):
            if split != "val":
                raise RuntimeError("a PBT member read the test split")
            return super().evaluate(split)

    pbt.Trainer = ValidationOnly


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    this_module = sys.modules[__name__]  # workers cannot import the tests: send the setup hook by value
    ray.cloudpickle.register_pickle_by_value(this_module)
    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,  # a declared GPU: Ray places on it, torch uses CPU
        runtime_env={"worker_process_setup_hook": pbt_members_cannot_read_the_test_split},
    )
    ray.cloudpickle.unregister_pickle_by_value(this_module)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def config():
    return load_config("fast", TINY)


def test_rllib_trains_and_its_policy_loads_like_any_other(tmp_path, config):
    assert (
        train.main(
            [
                "--preset",
                "fast",
                *SETS,
                "--backend",
                "rllib",
                "--num-env-runners",
                "2",
                "--episodes-per-rollout",
                "1",
                "--total-timesteps",
                "8",
                "--no-eval",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("fast__ppo-rllib__s0__")
    assert {
        "config.toml",
        "args.json",
        "episodes.jsonl",
        "progress.jsonl",
        "checkpoints",
        "tb",
        "model.rllib",
    } <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"] >= 8
    assert (run_dir / "checkpoints" / "last" / "rllib_checkpoint.json").is_file()
    progress = read_jsonl(run_dir / "progress.jsonl")
    assert progress and progress[-1]["num_timesteps"] >= 8
    episodes = read_jsonl(run_dir / "episodes.jsonl")
    assert len(episodes) >= 4 and all(len(e["lrs"]) == 2 for e in episodes)
    assert {e["worker"] for e in episodes} == {1, 2}  # both env runners trained UNets

    policy = load_policy(run_dir / "model.rllib", trust=True)  # RLlib unpickles; this test wrote it
    obs = UNetLREnv(config=config).observation_space.sample()
    action, state = policy.predictor.predict(obs, deterministic=True)
    assert state is None and action.shape == () and 0 <= int(action) < len(config.env.factors)
    batch, _ = policy.predictor.predict(np.stack([obs, obs]))
    assert batch.shape == (2,) and batch[0] == action
    env = UNetLREnv(config=policy.config)
    result = run_episode(env, PolicyController(policy.predictor), make_instances(config, "heldout")[0])
    assert result.epochs == 2 and 0 <= result.final_dice <= 1
    (method,) = compare.agent_methods([policy], config)
    assert method.name == "learned-rllib" and method.epochs_before == sum(e["epochs"] for e in episodes)


def test_rllib_sigterm_checkpoints_and_resume_finishes(tmp_path):
    """In a subprocess on this test's Ray: SIGTERM after the first iteration, then --resume to the end.

    The run is asked for far more steps than it can take before the signal lands (an idle machine finished a
    40-step run first); the resume then shortens it to a few steps past the checkpoint."""
    address = ray.get_runtime_context().gcs_address
    command = [
        sys.executable,
        "-m",
        "rlsched.train",
        "--preset",
        "fast",
        *SETS,
        "--backend",
        "rllib",
        "--num-env-runners",
        "1",
        "--episodes-per-rollout",
        "1",
        "--total-timesteps",
        "100000",
        "--no-eval",
        "--address",
        address,
        "--runs-dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:  # a loaded machine can take minutes to the first checkpoint; a failed wait must not leave the run going
        deadline = time.time() + 600
        while not list(tmp_path.glob("*/checkpoints/last.json")):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()  # reading the output of a live process would block until it ends (100000 steps)
                pytest.fail(
                    f"no checkpoint before the run ended or 600 s passed:\n{proc.communicate()[0][-3000:]}"
                )
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    (run_dir,) = tmp_path.iterdir()
    assert proc.returncode == 130 and f"--resume {run_dir}" in out, out[-3000:]  # the run's own words if not
    done = json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"]
    assert 0 < done < 100000
    target = done + 8  # four more iterations of one 2-step episode
    assert train.main(["--resume", str(run_dir), "--total-timesteps", str(target), "--no-eval"]) == 0
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"] == target
    assert read_jsonl(run_dir / "progress.jsonl")[-1]["num_timesteps"] == target
    assert (run_dir / "model.rllib").is_dir()


def test_compare_on_ray_equals_the_local_pool_and_adds_pbt(config, monkeypatch):
    from ray import tune

    from rlsched.experiment.jobs import EpisodeWorker

    local = compare.run_comparison(config, [], compare.Settings(**SETTINGS), progress=False)
    actors, members = [], []  # the resources each episode actor and each PBT trainable asked for
    remote, with_resources = ray.remote, tune.with_resources

    def recording_remote(*args, **options):
        decorate = remote(*args, **options)
        if args:  # @ray.remote without options (Ray's own tasks)
            return decorate

        def apply(target):
            if target is EpisodeWorker:
                actors.append(options)
            return decorate(target)

        return apply

    def recording_with_resources(trainable, resources):
        members.append(resources)
        return with_resources(trainable, resources)

    monkeypatch.setattr(ray, "remote", recording_remote)
    monkeypatch.setattr(tune, "with_resources", recording_with_resources)
    settings = compare.Settings(**SETTINGS, backend="ray", pbt_population=2, gpus_per_worker=0.5)
    on_ray = compare.run_comparison(config, [], settings, progress=False)
    # every episode actor and PBT member asked for its GPU share (without one, Ray assigns it no GPU)
    assert actors and all(kwargs == {"num_cpus": 1, "num_gpus": 0.5} for kwargs in actors)
    assert members and all(resources == {"cpu": 1, "gpu": 0.5} for resources in members)
    assert on_ray.tuning.scores == local.tuning.scores
    pbt = [r for r in on_ray.results if r.method == "pbt"]
    assert trajectories(r for r in on_ray.results if r.method != "pbt") == trajectories(local.results)
    for factor, (lr, runs) in local.robustness.items():
        assert on_ray.robustness[factor][0] == lr
        assert trajectories(on_ray.robustness[factor][1]) == trajectories(runs)

    # PBT: one run per held-out instance, a full budget, the population's epochs in the accounting
    assert sorted(r.instance.index for r in pbt) == [0, 1]
    assert all(r.epochs == 2 and len(r.records) == 3 and 0 <= r.final_dice <= 1 for r in pbt)
    # the winner, chosen on validation by members that could not read the test split, scored on it afterwards
    assert all(0 < r.test_dice < 1 for r in pbt)
    method = next(m for m in on_ray.methods if m.name == "pbt")
    # about K x budget x instances (a member copying one behind it retrains a step), beyond one evaluation run
    trained = int(method.epochs_before) + 2 * 2
    assert 2 * 2 * 2 <= trained <= 2 * 2 * 2 + 2
    assert (
        f"population 2 x 2 epochs on each of 2 held-out instance(s): {trained} epochs trained in all "
        "(nominal 8)"
    ) in method.accounting
    rows = {r["method"]: r for r in compare.summarize(on_ray) if r["factor"] is None}
    assert rows["pbt"]["n"] == 2 and math.isfinite(rows["pbt"]["final_dice_mean"])
    assert rows["pbt"]["test_dice_mean"] == pytest.approx(np.mean([r.test_dice for r in pbt]))
    assert f"| pbt | a population per run | PBT | {trained - 4} |" in compare.report(
        on_ray, compare.summarize(on_ray)
    )


def test_a_gpu_share_needs_a_cluster_with_that_many_gpus(config):
    from rlsched.experiment.harness import Job
    from rlsched.experiment.jobs import run_jobs

    job = Job("constant", "schedule", "constant", make_instances(config, "heldout")[0])
    with pytest.raises(ValueError, match="the Ray cluster has 1 GPU"):
        run_jobs(config, [job], backend="ray", gpus_per_worker=2.0)


def test_pbt_needs_the_ray_backend_and_two_members():
    with pytest.raises(ValueError, match="--backend ray"):
        compare.Settings(pbt_population=2)
    with pytest.raises(ValueError, match="at least 2 members"):
        compare.Settings(backend="ray", pbt_population=1)


def test_pb2_explores_log10_lr_inside_the_initial_range(config):
    """PB2 beside PBT: the same members, checkpoints and accounting; its GP bandit picks log10 LR within the
    preset's initial-LR range, and the winner is reported under "pb2"."""
    pytest.importorskip("GPy")
    from rlsched.experiment.pbt import PBTSettings, run_pbt

    three = load_config("fast", {**TINY, "env.epochs": 3})
    instance = make_instances(three, "heldout")[0]
    (result,), trained = run_pbt(three, [instance], PBTSettings(population=2, algorithm="pb2"))
    assert result.method == "pb2" and result.epochs == 3 and 0 <= result.test_dice <= 1
    # the winner's 3 steps and at least the first step of the other member: a member that copies one ahead of it
    # continues from that member's epoch and skips the steps between (5 seen on a fresh run), one behind retrains
    assert trained >= 3 + 1
    env = three.env
    assert all(env.initial_lr_min * 0.999 <= r["lr"] <= env.initial_lr_max * 1.001 for r in result.records)


def processes() -> dict[int, bytes]:
    """pid -> command line of every process we can read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
    return found


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        chain.append(pid)
    return chain


def test_a_dead_ray_actor_is_replaced_and_its_job_retried(config):
    """Kill an episode actor while it runs a job: the job runs again on a new actor and every job finishes."""
    from rlsched.experiment.harness import Job
    from rlsched.experiment.jobs import _iter_ray

    instance = make_instances(config, "heldout")[0]
    jobs = [Job(f"constant@{k}", "schedule", "constant", instance, base_lr=0.05) for k in range(4)]
    stream = _iter_ray(config, jobs, 2, 0.0, 3)
    first = next(stream)
    # Ray titles an actor's process after its class ("ray::EpisodeWorker"); ours descend from this process (the
    # raylet is its child), where another Ray session on the machine has actors of the same name
    actors = [
        pid
        for pid, command in processes().items()
        if command.startswith(b"ray::EpisodeWorker") and os.getpid() in ancestors(pid)
    ]
    os.kill(actors[0], signal.SIGKILL)
    with pytest.warns(UserWarning, match="retrying, attempt 2 of 3"):
        rest = list(stream)
    outcomes = dict([first, *rest])
    assert sorted(outcomes) == [0, 1, 2, 3] and all(
        o.final_dice == outcomes[0].final_dice for o in outcomes.values()
    )
