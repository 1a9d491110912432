"""Learned LR controllers vs tuned fixed schedules and baselines on the same held-out instances.

One module, one job: ``methods`` (settings, the methods under test and their cost), ``running`` (base-LR tuning
and orchestration), ``summary`` (metrics and statistics), ``report`` (tables and CSV files), ``plots`` and
``cli`` (``python -m rlsched.compare``).
"""

from .cli import main
from .methods import (BASELINES, CONSTANT_INITIAL, SCRIPTED, Comparison, Method, Settings, Tuning, agent_methods,
                      training_epochs)
from .report import report, write_results
from .running import run_comparison
from .summary import best_fixed, dice_curve, run_metrics, summarize

__all__ = ["BASELINES", "CONSTANT_INITIAL", "SCRIPTED", "Comparison", "Method", "Settings", "Tuning", "agent_methods",
           "best_fixed", "dice_curve", "main", "report", "run_comparison", "run_metrics", "summarize",
           "training_epochs", "write_results"]
