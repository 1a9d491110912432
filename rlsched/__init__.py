"""rlsched: learn the learning-rate schedule of UNet segmentation training with reinforcement learning.

Importing the package registers the Gymnasium env ids and nothing heavier: tools import it just for that
(``gymnasium.make("rlsched:rlsched/UNetLR-fast-v0")``, the RL Zoo, env workers), so the env, the trainer and
torch load when first used, ``RLScheduler`` included (module ``__getattr__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gymnasium.envs.registration import register

from rlsched.config import Config, ConfigError, load_config

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports it on first use
    from rlsched.scheduler import RLScheduler

__version__ = "0.1.0"

register(id="rlsched/UNetLR-v0", entry_point="rlsched.control.env:UNetLREnv")
register(id="rlsched/UNetLR-fast-v0", entry_point="rlsched.control.env:UNetLREnv", kwargs={"preset": "fast"})

__all__ = ["Config", "ConfigError", "RLScheduler", "load_config", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "RLScheduler":
        from rlsched.scheduler import RLScheduler

        return RLScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
