"""Utilities every layer may use: run directories and crash-safe files, JSONL journals, checkpoints,
statistics, command-line helpers, connecting to Ray. Imports nothing else of rlsched."""
