"""What the command lines share: one-line argparse errors, numbers checked against their range as they are
parsed, and which flags a command line actually gave (to refuse ones a mode would silently ignore)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``prog: error: ...``), without the usage block,
    which for these commands runs over many lines and buries the message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def ranged(
    kind: Callable[[str], Any],
    low: float = -math.inf,
    high: float = math.inf,
    *,
    above: bool = False,
    or_zero: bool = False,
) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)``, finite and in ``[low, high]`` (``above``: ``> low``; ``or_zero``:
    0 also allowed); else argparse's one-line error for the flag, saying what it expects, e.g.
    ``argument --gamma: got 2; expected a number in [0, 1]``."""
    what, show = ("an integer", lambda v: str(int(v))) if kind is int else ("a number", lambda v: f"{v:g}")
    if high < math.inf:
        expected = f"{what} in [{show(low)}, {show(high)}]"
    else:
        expected = f"{what} {'>' if above else '>='} {show(low)}"
    expected = f"0 or {expected}" if or_zero else expected

    def parse(text: str) -> Any:
        value = kind(text)  # a ValueError here is argparse's "invalid int value: ..."
        fits = math.isfinite(value) and (value > low if above else value >= low) and value <= high
        if not (fits or (or_zero and value == 0)):
            raise argparse.ArgumentTypeError(f"got {text}; expected {expected}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid <type> value" message
    return parse


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the options ``argv`` sets explicitly (a default-valued flag counts as given)."""
    unset: list = []  # a marker no parsed value is: append actions copy it, every other action replaces it
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, namespace=namespace)
    return {dest for dest, value in vars(namespace).items() if value is not unset}


def add_set_flag(parser: argparse.ArgumentParser, example: str = "env.epochs=8") -> None:
    """``--set SECTION.KEY=VALUE``, repeatable: the preset override every command line takes."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override a preset value, e.g. --set {example} (repeatable)",
    )
