"""Ray, when the optional ``ray`` extra is installed: the import with a clear error and the connection (used by
``jobs.run_jobs(..., backend="ray")``, PBT and RLlib).

Ray is imported only inside these functions, so the project runs without it. It imports nothing else of
rlsched, so any layer may use it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

INSTALL = 'pip install -e ".[ray]"'


def require_ray(feature: str) -> Any:
    """The ``ray`` module, or an ImportError that says which feature needed it and how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            f"{feature} needs Ray (RLlib and Tune), which is not installed: {INSTALL}"
        ) from None
    return ray


def connect(address: str | None = None, feature: str = "the Ray backend") -> Any:
    """A local Ray instance by default, or the cluster at ``address``; reuses one the caller already started.
    Keeps the caller's SIGTERM handler (``rlsched.train`` checkpoints on SIGTERM; Ray's would just exit)."""
    ray = require_ray(feature)
    if not ray.is_initialized():
        on_term = signal.getsignal(signal.SIGTERM)
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
    return ray
