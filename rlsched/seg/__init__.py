"""Segmentation core: data sources, the UNet, task heads, metrics, the trainer, optimizers, fixed LR
schedules and the restore point that undoes a blow-up. Knows nothing of control or RL."""
