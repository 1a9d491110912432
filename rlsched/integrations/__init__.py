"""Adapters that put ``RLScheduler`` where people train: ``rlsched.integrations.lightning`` holds
``RLSchedulerCallback`` (PyTorch Lightning, the ``lightning`` extra). Each adapter is imported on its own, so
this package needs none of them."""
