"""The package's shape: its layers (the import-linter contract in pyproject.toml: a module imports only from its
own layer or those below; lazy imports inside functions count too), no module too long to read, and
``import rlsched`` stays light."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rlsched"
MAX_LINES = (
    550  # as `ruff format` writes them (its one-argument-per-line calls run ~15 % longer than hand wrapping)
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's ``lint-imports`` on the package under ``root``, with the contract in its pyproject.toml."""
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def test_the_layer_contract_is_kept() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path: Path) -> None:
    """The contract is only worth running if it fails: the UNet (segmentation core) importing the comparison
    (a command line) is refused, with the offending import named."""
    shutil.copytree(PACKAGE, tmp_path / "rlsched", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    unet = tmp_path / "rlsched" / "seg" / "unet.py"
    unet.write_text(
        unet.read_text() + "\n\ndef _reaches_up():\n    from rlsched.compare import cli  # noqa: F401\n"
    )
    done = lint_imports(tmp_path)
    assert done.returncode != 0 and "BROKEN" in done.stdout
    assert "rlsched.seg.unet -> rlsched.compare.cli" in done.stdout


def test_no_module_exceeds_the_line_limit() -> None:
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long[relative] = lines
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


def test_import_rlsched_registers_the_env_ids_and_loads_nothing_heavy(tmp_path: Path) -> None:
    """``import rlsched`` is what tools run just to register the env ids (env workers, the RL Zoo)."""
    script = (
        "import sys, rlsched\n"
        "heavy = sorted(m for m in ('rlsched.seg.trainer', 'rlsched.control.env', 'rlsched.experiment.harness',"
        " 'rlsched.scheduler', 'torch') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "import gymnasium\n"
        "env = gymnasium.make('rlsched/UNetLR-fast-v0')\n"
        "assert type(env.unwrapped).__name__ == 'UNetLREnv'\n"
        "assert rlsched.RLScheduler.__module__ == 'rlsched.scheduler'\n"
    )
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert done.returncode == 0, done.stderr
