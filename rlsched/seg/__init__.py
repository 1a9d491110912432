"""Segmentation core: data sources, the UNet, task heads, metrics, the trainer, optimizers and fixed LR
schedules. Knows nothing of control or RL."""
