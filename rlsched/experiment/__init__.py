"""Running controllers on instances: one episode (``harness``), many in processes or on Ray (``jobs``),
the practitioners' baselines, base-LR tuning, PBT, Optuna search."""
