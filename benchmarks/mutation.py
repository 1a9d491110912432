"""Mutation testing of the core modules: does each deliberately broken copy of the code fail a fast test?

    nice -n 10 python benchmarks/mutation.py                       # every core module (~30 min, 2 busy cores)
    nice -n 10 python benchmarks/mutation.py --modules stats runs  # some of them
    python benchmarks/mutation.py --modules heads --list           # only list the mutants
    nice -n 10 python benchmarks/mutation.py --max-mutants 20      # an evenly spread sample per module

A mutant changes one thing in one module: a comparison's boundary (``<`` -> ``<=``, ``==`` -> ``!=``,
``in`` -> ``not in``), an arithmetic operator (``+`` <-> ``-``, ``*`` <-> ``/``, ``**`` -> ``*``), ``and``
<-> ``or``, a removed ``not`` or unary minus, a number + 1, ``True`` <-> ``False``, or the first two arguments
of a call swapped. Strings, docstrings, annotations, error messages and ``__all__`` are left alone: no test
should pin those. Each mutant is written into a private copy of the repository and the module's fast tests
run against it with ``-x``, in a child forked from this process after it imported torch and the other heavy
dependencies, so a mutant costs the time of its tests rather than an interpreter start. It is *killed* when
a test fails or errors (a timeout counts as killed: the mutant hung), and *survives* when every test passes.

Survivors that no test could tell apart from the original (``EQUIVALENT``, with the reason) are listed but
left out of the score, ``killed / (mutants - equivalent)`` per module. Needs ``os.fork`` (Linux, macOS).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("rlsched", "envs", "tests", "pyproject.toml")  # what the tests need of the repository
PRELOAD = (
    "numpy",
    "scipy.stats",
    "scipy.special",
    "torch",
    "gymnasium",
    "stable_baselines3",
    "PIL.Image",
    "pytest",
)

# module -> (source file, the fast tests that exercise it)
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "heads": ("rlsched/seg/heads.py", ("tests/test_heads.py",)),
    "metrics": ("rlsched/seg/metrics.py", ("tests/test_metrics.py",)),
    "control": ("rlsched/control/interface.py", ("tests/test_control.py",)),
    "env": ("rlsched/control/env.py", ("tests/test_env.py",)),
    "ppo": ("rlsched/agents/ppo.py", ("tests/test_ppo_reference.py",)),
    "schedules": ("rlsched/seg/schedules.py", ("tests/test_schedules.py",)),
    "stats": ("rlsched/common/stats.py", ("tests/test_stats.py",)),
    "runs": ("rlsched/common/files.py", ("tests/test_runs.py",)),
}


@dataclass(frozen=True)
class Equivalent:
    """A surviving mutant judged equivalent: no test could tell it from the original, for the reason given."""

    module: str
    line: str  # a piece of the mutated source line
    change: str  # as printed: "before -> after"
    why: str


_TWO_SIDED = "two-sided test: the p-value is symmetric in its two samples"
_UNREACHABLE = "unreachable: past the allclose guard a difference is non-zero, so count_nonzero > 0 holds"
_CLIP = "np.clip(a, lo, hi) is min(max(a, lo), hi), and max is symmetric"
_UNMEASURED = (
    "at reset the gradient norm and update ratio read 0 behind the first_step flag, whatever they hold"
)
_ONE_ACTION = "an action is one number: reshape(1) and reshape(-2) flatten it as reshape(-1) does"
_DICE_SYMMETRIC = "soft Dice is symmetric in prediction and truth (value and gradient)"
_POS_WEIGHT_ONE = "pos_weight 1 weights positive pixels by 1, which is plain BCE"
_CACHE = "the data cache's capacity changes memory use and speed, never a result"
_COLUMN = "the tensor is always (batch, 1), where squeeze(1) is squeeze(-1)"
_PROXY = "the proxy parameter only carries the LR: its size and grad flag are never read"
_WILCOXON = "stats.wilcoxon(x, y).pvalue) if np.count_nonzero(diff) > 0"
_REDUCE_ACTION = "reshape(-1)[0], -1.0, 1.0)"
EQUIVALENT = (
    Equivalent(
        "stats",
        "np.allclose(diff, 0):",
        "np.allclose(diff, 0) -> np.allclose(0, diff)",
        "allclose scales rtol by |b|: verdicts differ only for |diff| within 1e-5 relative of 1e-8",
    ),
    Equivalent("stats", "ttest_rel(x, y)", "stats.ttest_rel(x, y) -> stats.ttest_rel(y, x)", _TWO_SIDED),
    Equivalent("stats", _WILCOXON, "stats.wilcoxon(x, y) -> stats.wilcoxon(y, x)", _TWO_SIDED),
    Equivalent("stats", _WILCOXON, "np.count_nonzero(diff) > 0 -> np.count_nonzero(diff) >= 0", _UNREACHABLE),
    Equivalent("stats", _WILCOXON, "1.0 -> 2.0", _UNREACHABLE),
    Equivalent(
        "stats",
        _WILCOXON,
        "0 -> 1",
        "one non-zero difference: Wilcoxon drops the zeros, has one signed rank and gives p = 1 too",
    ),
    Equivalent(
        "heads",
        "torch.where(count > 0, count, torch.ones_like(count))",
        "0 -> 1",
        "a count of 1 divides by 1 on either branch",
    ),
    Equivalent(
        "heads",
        "torch.promote_types(logits.dtype, torch.float32)",
        "torch.promote_types(logits.dtype, torch.float32) -> torch.promote_types(torch.float32, "
        "logits.dtype)",
        "type promotion is symmetric",
    ),
    Equivalent(
        "heads",
        "if self.dice_weight > 0:",
        "self.dice_weight > 0 -> self.dice_weight >= 0",
        "with dice_weight 0 it adds 0 x a finite soft-Dice term: the same loss and gradient",
    ),
    Equivalent(
        "heads",
        "soft_dice_loss(torch.sigmoid(z), t == 1, t != self.ignore_index)",
        "soft_dice_loss(torch.sigmoid(z), t == 1, t != self.ignore_index) -> "
        "soft_dice_loss(t == 1, torch.sigmoid(z), t != self.ignore_index)",
        _DICE_SYMMETRIC,
    ),
    Equivalent(
        "heads",
        "soft_dice_loss(torch.softmax(z, dim=1)[:, 1:], truth,",
        "soft_dice_loss(torch.softmax(z, dim=1)[:, 1:], truth, (target != se... -> "
        "soft_dice_loss(truth, torch.softmax(z, dim=1)[:, 1:], (target != se...",
        _DICE_SYMMETRIC,
    ),
    Equivalent(
        "heads",
        "def __init__(self, pos_weight: float = 0.0, dice_weight: float = 0.0,",
        "0.0 -> 1.0 #1",
        _POS_WEIGHT_ONE,
    ),
    Equivalent(
        "heads",
        "super().__init__(classes, 0.0, dice_weight, threshold, ignore_index)",
        "0.0 -> 1.0",
        _POS_WEIGHT_ONE,
    ),
    Equivalent(
        "heads",
        "ignored = target == self.ignore_index",
        "target == self.ignore_index -> target != self.ignore_index",
        "a pixel ignored in only some channels is kept in only some: the check reads the same",
    ),
    Equivalent(
        "heads",
        "weight[torch.where(valid, labels, 0)]",
        "0 -> 1",
        "the stand-in class looked up for ignored pixels is masked out by the outer where",
    ),
    Equivalent(
        "env",
        "self._done = True",
        "True -> False",
        "before the first reset the trainer is None, which step() refuses too",
    ),
    Equivalent(
        "env",
        "while len(self._data_cache) > 4:",
        "len(self._data_cache) > 4 -> len(self._data_cache) >= 4",
        _CACHE,
    ),
    Equivalent("env", "while len(self._data_cache) > 4:", "4 -> 5", _CACHE),
    Equivalent("env", "0.0, 0.0))", "0.0 -> 1.0 #1", _UNMEASURED),
    Equivalent("env", "0.0, 0.0))", "0.0 -> 1.0 #2", _UNMEASURED),
    Equivalent(
        "env",
        "return 0",
        "0 -> 1",
        "in absolute mode keep_action only goes with set_lr, which overrides whatever action is passed",
    ),
    Equivalent(
        "ppo",
        "last_gae = torch.zeros_like(values[0])",
        "0 -> 1",
        "zeros_like reads only the shape, the same for every row",
    ),
    Equivalent("ppo", "return self.critic(obs).squeeze(-1)", "-1 -> 1", _COLUMN),
    Equivalent("ppo", "generator=self._generator).squeeze(-1)", "-1 -> 1", _COLUMN),
    Equivalent(
        "ppo",
        "return dist.mean + dist.stddev * noise",
        "dist.mean + dist.stddev * noise -> dist.mean - dist.stddev * noise",
        "the noise is standard normal, so symmetric: the samples keep their distribution",
    ),
    Equivalent(
        "ppo",
        "action_np = action_np.reshape(-1, *self.action_space.shape)",
        "1 -> 2",
        "numpy reads any negative size as 'the rest': reshape(-2, ...) is reshape(-1, ...)",
    ),
    Equivalent(
        "ppo",
        "return np.clip(action_np, low, high)",
        "np.clip(action_np, low, high) -> np.clip(low, action_np, high)",
        _CLIP,
    ),
    Equivalent(
        "ppo",
        "advantages = (advantages - mean) / (std + 1e-8)",
        "std + 1e-08 -> std - 1e-08",
        "2e-8 on a standard deviation of order 1 is below float32 resolution",
    ),
    Equivalent(
        "ppo",
        "((ratio - 1).abs() > cfg.clip_range)",
        "(ratio - 1).abs() > cfg.clip_range -> (ratio - 1).abs() >= cfg.clip_range",
        "differs only when |ratio - 1| equals clip_range exactly, a float tie real ratios never make",
    ),
    Equivalent(
        "ppo",
        'stats["approx_kl"].item() > cfg.target_kl:',
        "stats['approx_kl'].item() > cfg.target_kl -> stats['approx_kl'].item() >= cfg.target_kl",
        "differs only on an exact tie: the one case, target_kl = 0 against the first minibatch's "
        "KL of 0, would stop before any step and is no real setting",
    ),
    Equivalent(
        "control",
        "@functools.lru_cache(maxsize=16)",
        "16 -> 17",
        "the cache size only sets how many bounds arrays are kept",
    ),
    Equivalent(
        "control",
        "0.0 if step else 1.0,",
        "1.0 -> 2.0",
        "the first_step flag is clipped to its upper bound, 1",
    ),
    Equivalent(
        "control",
        "math.isfinite(x) and x > 0) else math.nan",
        "x > 0 -> x >= 0",
        "x == 0 returned -inf on the line before, so x >= 0 and x > 0 agree here",
    ),
    Equivalent(
        "control",
        "return np.clip(obs, low, high)",
        "np.clip(obs, low, high) -> np.clip(low, obs, high)",
        _CLIP,
    ),
    Equivalent("control", "index = int(np.asarray(action).reshape(-1)[0])", "-1 -> 1", _ONE_ACTION),
    Equivalent("control", "index = int(np.asarray(action).reshape(-1)[0])", "1 -> 2", _ONE_ACTION),
    Equivalent(
        "control",
        _REDUCE_ACTION,
        "np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, ... -> "
        "np.clip(-1.0, np.asarray(action, dtype=np.float64).reshape(-1)[0], ...",
        _CLIP,
    ),
    Equivalent("control", _REDUCE_ACTION, "-1 -> 1", _ONE_ACTION),
    Equivalent("control", _REDUCE_ACTION, "1 -> 2", _ONE_ACTION),
    Equivalent(
        "schedules",
        "if steps <= warmup:",
        "steps <= warmup -> steps < warmup",
        "equal only for a 1-step budget, whose one LR (base / 10) is the same on both branches",
    ),
    Equivalent(
        "schedules",
        "ConstantLR(opt, factor=1.0, total_iters=0)",
        "0 -> 1",
        "with factor 1.0 the LR never changes, whatever total_iters",
    ),
    Equivalent("schedules", "torch.zeros(1, requires_grad=True)", "1 -> 2", _PROXY),
    Equivalent("schedules", "torch.zeros(1, requires_grad=True)", "True -> False", _PROXY),
    Equivalent(
        "schedules", "preview.step(0.0)", "0.0 -> 1.0", "any constant Dice stalls reduce-on-plateau alike"
    ),
    Equivalent(
        "runs",
        "mask = os.umask(0)",
        "0 -> 1",
        "the temporary umask is put back at once; the previous mask is returned either way",
    ),
    Equivalent(
        "runs",
        "Path(tmp).unlink(missing_ok=True)",
        "True -> False",
        "the temporary file always exists when the cleanup runs: os.replace is the last call to fail",
    ),
)


COMPARISONS: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
ARITHMETIC: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
}
NO_SWAP = {"min", "max", "isinstance", "getattr", "hasattr", "setattr"}  # symmetric, or a certain crash


@dataclass(frozen=True)
class Mutant:
    module: str
    path: str
    line: int
    column: int
    code: str  # the original source line, stripped
    change: str  # "before -> after" of the mutated expression; " #k" for the k-th of equal changes on a line
    source: str  # the whole mutated module

    def equivalence(self) -> Equivalent | None:
        """The entry of ``EQUIVALENT`` that names this mutant, if any."""
        return next(
            (
                e
                for e in EQUIVALENT
                if (e.module, e.change) == (self.module, self.change) and e.line in self.code
            ),
            None,
        )


# ------------------------------------------------------------------------------------------------ mutants
def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes no test should pin: docstrings, annotations, f-strings, raise statements, ``__all__``."""
    skipped: list[ast.AST] = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            skipped.append(body[0])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skipped += [a.annotation for a in ast.walk(node.args) if isinstance(a, ast.arg) and a.annotation]
            skipped += [node.returns] if node.returns else []
        elif isinstance(node, ast.AnnAssign):
            skipped.append(node.annotation)
        elif isinstance(node, (ast.JoinedStr, ast.Raise)):
            skipped.append(node)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            skipped.append(node)
    return {id(n) for root in skipped for n in ast.walk(root)}


def _edits(node: ast.AST) -> list[Callable[[ast.AST], ast.AST]]:
    """Each way to mutate ``node``: a function that changes (a fresh parse of) it and returns the result."""

    def set_attr(name: str, value: object) -> Callable[[ast.AST], ast.AST]:
        def edit(n: ast.AST) -> ast.AST:
            setattr(n, name, value)
            return n

        return edit

    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in ARITHMETIC:
        return [set_attr("op", ARITHMETIC[type(node.op)]())]
    if isinstance(node, ast.BoolOp):
        return [set_attr("op", ast.Or() if isinstance(node.op, ast.And) else ast.And())]
    if isinstance(node, ast.Compare):
        return [
            set_attr("ops", [*node.ops[:i], COMPARISONS[type(op)](), *node.ops[i + 1 :]])
            for i, op in enumerate(node.ops)
            if type(op) in COMPARISONS
        ]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        return [lambda n: n.operand]
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return [set_attr("value", not node.value)]
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return [set_attr("value", node.value + 1)]
    plain_args = isinstance(node, ast.Call) and not any(isinstance(a, ast.Starred) for a in node.args)
    if plain_args and len(node.args) >= 2:
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if name not in NO_SWAP and ast.dump(node.args[0]) != ast.dump(node.args[1]):
            return [set_attr("args", [node.args[1], node.args[0], *node.args[2:]])]
    return []


class _Replace(ast.NodeTransformer):
    """Puts ``replacement`` where ``target`` was."""

    def __init__(self, target: ast.AST, replacement: ast.AST) -> None:
        self.target, self.replacement = target, replacement

    def visit(self, node: ast.AST) -> ast.AST:
        return self.replacement if node is self.target else super().visit(node)


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def mutants(module: str) -> list[Mutant]:
    """Every mutant of ``module``, in source order."""
    path = MODULES[module][0]
    source = (ROOT / path).read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    skipped = _skipped_nodes(tree)
    found = []
    for ordinal, node in enumerate(ast.walk(tree)):
        if id(node) in skipped:
            continue
        for k in range(len(_edits(node))):
            fresh = ast.parse(source)
            target = list(ast.walk(fresh))[ordinal]
            before = ast.unparse(target)
            replacement = _edits(target)[k](target)
            after = ast.unparse(replacement)
            if after == before:
                continue
            mutated = ast.unparse(ast.fix_missing_locations(_Replace(target, replacement).visit(fresh)))
            found.append(
                Mutant(
                    module,
                    path,
                    node.lineno,
                    node.col_offset,
                    lines[node.lineno - 1].strip(),
                    f"{_short(before)} -> {_short(after)}",
                    mutated,
                )
            )
    found.sort(key=lambda m: (m.line, m.column))
    totals, numbered = Counter((m.line, m.change) for m in found), Counter()
    for i, m in enumerate(found):  # the same change twice on one line (two 0.0 defaults): number them
        if totals[m.line, m.change] > 1:
            numbered[m.line, m.change] += 1
            found[i] = replace(m, change=f"{m.change} #{numbered[m.line, m.change]}")
    return found


# ------------------------------------------------------------------------------------------------ running
def _fork_tests(workdir: Path, tests: tuple[str, ...]) -> int:
    """Run pytest on ``tests`` in a forked child (own process group, output discarded); returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.chdir(workdir)
        sys.path.insert(0, str(workdir))
        sys.dont_write_bytecode = True  # a stale .pyc of another mutant (same size and mtime) would be reused
        import pytest

        code = int(
            pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-o", "addopts="])
        )
    finally:
        os._exit(code)


def _wait(pid: int, deadline: float) -> str:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return "survived" if code == 0 else "no tests" if code == 5 else "killed"
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)


def _workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="rlsched-mutation-"))
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, workdir / name)
    return workdir


def run_module(module: str, selected: list[Mutant], timeout_factor: float) -> dict[str, list[Mutant]]:
    """Run every selected mutant of one module; returns them by outcome."""
    path, tests = MODULES[module]
    workdir = _workdir()
    try:
        start = time.monotonic()
        if _wait(_fork_tests(workdir, tests), float("inf")) != "survived":
            raise SystemExit(f"{module}: {' '.join(tests)} fail on the unmutated code; fix that first")
        timeout = timeout_factor * (time.monotonic() - start) + 30
        outcomes: dict[str, list[Mutant]] = {}
        for number, mutant in enumerate(selected, 1):
            (workdir / path).write_text(mutant.source)
            outcome = _wait(_fork_tests(workdir, tests), time.monotonic() + timeout)
            outcomes.setdefault(outcome, []).append(mutant)
            mark = {"killed": ".", "timeout": "T", "survived": "S"}.get(outcome, "?")
            print(mark, end="\n" if number % 50 == 0 else "", flush=True)
        print(flush=True)
        return outcomes
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def spread(items: list[Mutant], count: int | None) -> list[Mutant]:
    """At most ``count`` items, evenly spread over the module (so a sample covers all of it)."""
    if count is None or count >= len(items):
        return items
    return [items[i * len(items) // count] for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=list(MODULES))
    parser.add_argument("--max-mutants", type=int, default=None, help="per module, evenly spread")
    parser.add_argument(
        "--timeout-factor",
        type=float,
        default=5.0,
        help="a mutant times out after this many times the unmutated tests' time, + 30 s",
    )
    parser.add_argument("--fail-under", type=float, default=90.0, help="exit 1 if a module scores below (%%)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = parser.parse_args(argv)

    if args.list:
        for module in args.modules:
            for m in spread(mutants(module), args.max_mutants):
                print(f"{m.path}:{m.line}:{m.column}: {m.change}")
        return 0
    for name in PRELOAD:  # imported once here, inherited by every forked test run
        importlib.import_module(name)

    scores, failed = [], False
    for module in args.modules:
        selected = spread(mutants(module), args.max_mutants)
        print(f"{module}: {len(selected)} mutants against {' '.join(MODULES[module][1])}", flush=True)
        outcomes = run_module(module, selected, args.timeout_factor)
        survivors = outcomes.get("survived", []) + outcomes.get("no tests", [])
        equivalent = [m for m in survivors if m.equivalence()]
        killed = len(outcomes.get("killed", [])) + len(outcomes.get("timeout", []))
        scored = len(selected) - len(equivalent)
        score = 100.0 * killed / scored if scored else 100.0
        failed |= score < args.fail_under
        survived = len(survivors) - len(equivalent)
        scores.append((module, len(selected), killed, len(equivalent), survived, score))
        for m in survivors:
            known = m.equivalence()
            print(
                f"  {'equivalent' if known else 'SURVIVED'}  {m.path}:{m.line}:{m.column}  {m.change}"
                f"    [{m.code}]" + (f"\n      ({known.why})" if known else "")
            )

    print(f"\n{'module':<10} {'mutants':>8} {'killed':>7} {'equiv.':>7} {'survived':>9} {'score':>7}")
    for module, total, killed, equivalent, survived, score in scores:
        print(f"{module:<10} {total:>8} {killed:>7} {equivalent:>7} {survived:>9} {score:>6.1f}%")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
