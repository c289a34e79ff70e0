"""The training run directory, written by ``ssl-zoo train`` and read by ``ssl-zoo publish``: its files and
which of its settings are machine-local (never published)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import CONFIG_NAME, WEIGHTS_NAME

TRAIN_CONFIG = "train_config.json"  # the resolved TrainConfig
METRICS = "metrics.jsonl"  # one record per finished epoch
CHECKPOINT = "checkpoint.safetensors"  # method with heads and target, optimiser, history (every epoch)
RESULTS = "results.json"  # the final probes
CURVES = "curves.png"
UNUSABLE = "unusable_images.jsonl"  # --data files that could not be used, each with its reason (not published)
EXPORT_FILES = (RESULTS, WEIGHTS_NAME, CONFIG_NAME)  # the final evaluation and export, config.json last
RUN_FILES = (TRAIN_CONFIG, METRICS, CHECKPOINT, *EXPORT_FILES)
PROVENANCE_FILES = (TRAIN_CONFIG, METRICS, RESULTS, CURVES)  # published beside the encoder
LOCAL_KEYS = ("data", "device")  # machine-local settings: never published, left out of recorded commands
__all__ = ["CHECKPOINT", "CONFIG_NAME", "CURVES", "EXPORT_FILES", "LOCAL_KEYS", "METRICS", "PROVENANCE_FILES",
           "RESULTS", "RUN_FILES", "TRAIN_CONFIG", "UNUSABLE", "WEIGHTS_NAME", "keep_previous_export", "local_flags",
           "public_training_config"]


def public_training_config(training: dict[str, Any]) -> dict[str, Any]:
    """A training config without machine-local settings (data path, device)."""
    return {k: v for k, v in training.items() if k not in LOCAL_KEYS}


def local_flags() -> tuple[str, ...]:
    """The command-line flags of the machine-local settings (``--data``, ``--device``)."""
    return tuple(f"--{k}" for k in LOCAL_KEYS)


def keep_previous_export(out: Path) -> None:
    """Move an earlier final evaluation/export of this run into ``previous/<n>/`` so nothing overwrites it."""
    present = [name for name in EXPORT_FILES if (out / name).exists()]
    if not present:
        return
    number = 1
    while (out / "previous" / str(number)).exists():
        number += 1
    keep = out / "previous" / str(number)
    keep.mkdir(parents=True)
    for name in present:
        (out / name).rename(keep / name)
    print(f"the run's previous export ({', '.join(present)}) moved to {keep}", flush=True)
