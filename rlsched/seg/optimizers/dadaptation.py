"""D-Adaptation (Defazio & Mishchenko 2023, ``dadaptation``): SGD and Adam with an estimated step size; the LR
is a multiplier of that estimate."""

from rlsched.seg.optimizers.spec import TuningFree

OPTIMIZERS = {
    # README: "Set the LR parameter to 1.0"; the paper's SGD runs use momentum 0.9 (the package default is 0)
    "dadapt_sgd": TuningFree("dadaptation", "DAdaptSGD", lr=1.0, momentum=0.9),
    "dadapt_adam": TuningFree("dadaptation", "DAdaptAdam", lr=1.0),
}
