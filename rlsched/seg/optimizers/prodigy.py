"""Prodigy (Mishchenko & Defazio 2023, ``prodigyopt``): Adam whose step size is estimated D-Adaptation style;
its LR is a multiplier of that estimate."""

from rlsched.seg.optimizers.spec import TuningFree

OPTIMIZERS = {
    # README: "We recommend using lr=1. (default) for all networks"; no scheduler (or cosine)
    "prodigy": TuningFree("prodigyopt", "Prodigy", lr=1.0),
}
