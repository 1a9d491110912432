"""rlsched: learn the learning-rate schedule of UNet segmentation training with reinforcement learning."""

from gymnasium.envs.registration import register

from .config import Config, ConfigError, load_config
from .scheduler import RLScheduler

__version__ = "0.1.0"

register(id="rlsched/UNetLR-v0", entry_point="rlsched.env:UNetLREnv")
register(id="rlsched/UNetLR-fast-v0", entry_point="rlsched.env:UNetLREnv", kwargs={"preset": "fast"})

__all__ = ["Config", "ConfigError", "RLScheduler", "load_config", "__version__"]
