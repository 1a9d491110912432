"""Learned LR controllers vs tuned fixed schedules and baselines on the same held-out instances.

One module, one job: ``methods`` (settings, the methods under test and their cost), ``running`` (base-LR tuning
and orchestration), ``summary`` (metrics and statistics), ``report`` (tables and CSV files), ``plots`` and
``cli`` (``python -m rlsched.compare``).
"""

from rlsched.compare.cli import main
from rlsched.compare.methods import (
    BASELINES,
    CONSTANT_INITIAL,
    Comparison,
    Method,
    Settings,
    Tuning,
    agent_methods,
    training_epochs,
)
from rlsched.compare.report import report, write_results
from rlsched.compare.running import run_comparison
from rlsched.compare.summary import best_fixed, run_metrics, summarize
from rlsched.experiment.tuning import SCRIPTED

__all__ = [
    "BASELINES",
    "CONSTANT_INITIAL",
    "SCRIPTED",
    "Comparison",
    "Method",
    "Settings",
    "Tuning",
    "agent_methods",
    "best_fixed",
    "main",
    "report",
    "run_comparison",
    "run_metrics",
    "summarize",
    "training_epochs",
    "write_results",
]
