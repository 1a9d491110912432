"""The package's shape, checked from source: no import cycle inside rlsched, no module too long to read.

A cycle means a module can only be understood (and imported) together with the modules that import it back;
they used to make ``import rlsched`` pull in the whole trainer. Every import counts: module level, inside
functions (a lazy import is still a dependency), relative or absolute.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rlsched"
MAX_LINES = 450


def module_names(package: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``package`` (a package is its ``__init__.py``; as in Python,
    a package shadows a module file of the same name beside it)."""
    names: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        elif path.with_suffix("").joinpath("__init__.py").is_file():
            continue
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``name`` (at ``path``) imports anywhere in its source.

    ``from P import x`` depends on the module ``P.x`` when there is one, else on ``P`` (x is a name in it).
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import rlsched.agents.ppo` names the module itself
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    files = module_names(package)
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) per strongly connected group of modules (Tarjan): fixing
    the cycles shown until none is left fixes every one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(group)} holds no cycle")  # pragma: no cover - Tarjan's groups do


def test_the_import_graph_has_no_cycle() -> None:
    cycles = find_cycles(import_graph(PACKAGE))
    assert not cycles, "import cycles inside rlsched:\n" + "\n".join(" -> ".join(c) for c in cycles)


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
        "heavy = sorted(m for m in ('rlsched.trainer', 'rlsched.env', 'rlsched.harness', 'rlsched.scheduler',"
        " 'torch') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "import gymnasium\n"
        "env = gymnasium.make('rlsched/UNetLR-fast-v0')\n"
        "assert type(env.unwrapped).__name__ == 'UNetLREnv'\n"
        "assert rlsched.RLScheduler.__module__ == 'rlsched.scheduler'\n"
    )
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr


def test_the_parser_resolves_every_import_form(tmp_path: Path) -> None:
    """The checks above are only as good as this resolution: a missed form would hide a cycle."""
    files = {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "import pkg.sub.c as c\nA = 1\n",
        "pkg/b.py": "def f():\n    from . import a\n    from pkg.sub import d\n",
        "pkg/sub/__init__.py": "from .. import b\n",
        "pkg/sub/c.py": "from ..a import A\nfrom . import d\n",
        "pkg/sub/d.py": "from .. import A\nimport os\n",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.c"}, "pkg.b": {"pkg.a", "pkg.sub.d"},
                     "pkg.sub": {"pkg.b"}, "pkg.sub.c": {"pkg.a", "pkg.sub.d"}, "pkg.sub.d": {"pkg"}}
    assert find_cycles(graph) == [["pkg", "pkg.a", "pkg.sub.c", "pkg.sub.d", "pkg"]]
