"""The method-kind registry (``rlsched.experiment.kinds``): every kind a ``compare.Method`` or a harness ``Job`` can
carry is declared there once, and an unknown kind is refused naming the registered ones, wherever it turns up."""

import pytest

from rlsched.agents.loading import resolve_agent_path
from rlsched.compare.methods import BASELINE_GROUPS, BASELINES, Method, baseline_methods, sampled_methods
from rlsched.control.env import make_instances
from rlsched.experiment.harness import Job
from rlsched.experiment.jobs import make_controller
from rlsched.experiment.kinds import KINDS, method_job, method_kind, optuna, oracle, pbt, policy, registry
from rlsched.experiment.kinds.spec import MethodKind
from rlsched.experiment.tuning import TUNABLE, Tuning, tuned_kind
from rlsched.seg.optimizers import OPTIMIZERS

REGISTERED = ", ".join(KINDS)


@pytest.fixture(scope="module")
def instance(fast_config):
    return make_instances(fast_config, "heldout")[0]


def every_method() -> list[Method]:
    """The methods a comparison makes (but those that need runs: the oracle's and PBT's, made by kind below)."""
    tuning = Tuning((0.01, 0.1), 1, 6, {name: {0.01: (0.5, 0.4), 0.1: (0.6, 0.5)} for name in TUNABLE})
    agent = Method("learned", policy.KIND.name, "model.zip")
    made = [agent, *sampled_methods([agent], 2), *baseline_methods(tuning, ("constant", "cosine"))]
    made += [Method(name, kind, arg) for name, (kind, arg) in BASELINES.items() if KINDS[kind].controller]
    optuna_choice = Method(
        "optuna", tuned_kind("cosine"), "cosine", 0.01, needs=optuna.KIND.needs
    )  # as searched
    return made + [
        optuna_choice,
        Method(oracle.ORACLE, oracle.KIND.name, "constant"),
        Method("pb2", pbt.KIND.name, "4"),
    ]


def test_every_kind_a_method_or_job_can_carry_is_registered(fast_config, instance):
    made = {m.kind for m in every_method()} | {tuned_kind(name) for name in TUNABLE}
    kinds = made | {kind for kind, _ in BASELINES.values()}
    assert kinds == set(KINDS)
    assert all(name == kind.name for name, kind in KINDS.items())
    # each --baselines name is its kind's, so dropping a kind's registry line drops its names: none is lost
    assert set(BASELINES) == {"range_test+onecycle", "range_test+cosine", *OPTIMIZERS, "nnunet", "optuna"}
    assert set(BASELINE_GROUPS) == {"range_test", "tuningfree", "all"}
    # every kind that runs as a harness job gets its controller from its declaration
    path = str(resolve_agent_path("pretrained"))
    args = {
        "policy": path,
        "policy_sample": path,
        "range_test": "onecycle",
        "optimizer": "schedulefree_adamw",
    }
    args |= {"random": "0", "scripted": "scripted"}
    for name, kind in KINDS.items():
        if kind.controller is not None:
            base_lr = 0.01 if name == "scripted" else None  # its target
            job = method_job(fast_config, name, args.get(name, "constant"), name, instance, base_lr)
            assert make_controller(job).name == name


def test_an_unknown_kind_is_refused_naming_the_registered_ones(fast_config, instance):
    message = f"unknown method kind 'swa': the registered kinds are {REGISTERED}$"
    with pytest.raises(ValueError, match=message):
        make_controller(Job("swa", "swa", "", instance))
    with pytest.raises(ValueError, match=message):
        Method("swa", "swa", "")
    with pytest.raises(ValueError, match=message):
        method_job(fast_config, "swa", "", "swa", instance)
    with pytest.raises(ValueError, match=message):
        method_kind("swa")
    for name in ("pbt", "optuna", "oracle"):  # run elsewhere: never a harness job of their kind
        with pytest.raises(ValueError, match=f"kind {name!r} does not run as a harness job"):
            make_controller(Job(name, name, "", instance))


def test_a_kind_declared_twice_is_refused_and_accounting_names_missing_facts():
    twice = MethodKind(name="schedule", controller=None, needs="nothing")
    with pytest.raises(ValueError, match="'schedule' is declared twice"):
        registry([*KINDS.values(), twice])
    with pytest.raises(ValueError, match="kind 'range_test': its accounting text needs per_run, runs"):
        KINDS["range_test"].account()
    assert (
        KINDS["range_test"].account(runs=2, per_run=0.5)
        == "an LR sweep before each of 2 runs (0.50 epochs each)"
    )


def test_a_methods_kind_decides_robustness_style_and_needs():
    made = {m.name: m for m in every_method()}
    robust = {name for name, m in made.items() if m.robust}
    assert robust == {"learned", "constant", "cosine", "step", "exponential", "warmup_cosine", "onecycle", "poly",
                      "plateau", "scripted", "suggested", "random", "optuna"}  # fmt: skip
    untuned = made["constant (initial LR)"]
    assert untuned.at_initial_lr and not untuned.tuned and untuned.needs == "an LR"
    assert made["constant"].tuned and made["constant"].needs == "an LR grid search"
    assert {name for name, m in made.items() if m.learned} == {"learned", "learned (sampled, mean of 2)"}
    assert (
        made[oracle.ORACLE].declared.base_lr_text == "per instance"
        and made["pb2"].needs == "a population per run"
    )
