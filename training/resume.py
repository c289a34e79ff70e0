"""What a run directory allows: start a new run, resume one from its checkpoint, or leave a finished one."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from zoo.hub.rundir import CHECKPOINT, CONFIG_NAME, METRICS, RUN_FILES, TRAIN_CONFIG

from .config import TrainConfig


def run_state(out: Path, cfg: TrainConfig, resume: bool) -> str:
    """What to do with ``out``: start a ``new`` run, ``resume`` one from its checkpoint, or leave a
    ``finished`` one; raises, changing nothing, when run files would be lost or belong to another run."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not resume:
        if present:
            raise FileExistsError(f"{out} already holds a run ({', '.join(present)}): pass --resume to continue it, "
                                  f"or choose another --out (nothing was changed)")
        return "new"
    if not present:
        raise FileNotFoundError(f"--resume: {out} holds no run to continue; drop --resume to start one there")
    if (saved := out / TRAIN_CONFIG).is_file():
        try:
            saved_config = json.loads(saved.read_text())
        except ValueError as e:
            raise ValueError(f"--resume: {saved} is not valid JSON ({e}); restore it or train in another --out") from e
        check_same_run(saved_config, cfg, saved)
    if (out / CONFIG_NAME).is_file():  # written last by the export
        return "finished"
    if (out / CHECKPOINT).exists():
        return "resume"
    if not read_history(out):
        return "new"  # stopped before its first epoch ended: nothing to lose, start it again
    raise FileNotFoundError(f"--resume: {out / CHECKPOINT} is missing, so the run in {out} cannot continue (its "
                            f"{METRICS} records finished epochs); train again in another --out (nothing was changed)")


def check_same_run(saved: Any, cfg: TrainConfig, source: Path) -> None:
    """Refuse to resume the run recorded in ``source`` with another method or configuration. Settings the
    record lacks (added to ssl-zoo after the run started) count as their defaults."""
    if not isinstance(saved, dict):
        raise ValueError(f"--resume: {source} holds {type(saved).__name__}, not a training configuration object; "
                         f"restore it or train in another --out (nothing was changed)")
    if saved.get("method") != cfg.method:
        raise ValueError(f"--resume: {source} records a {saved.get('method')!r} run but the command trains "
                         f"{cfg.method!r}: resume it with `ssl-zoo train {saved.get('method')} --resume`, or train "
                         f"{cfg.method} in another --out (nothing was changed)")
    saved = {**{f.name: f.default for f in fields(TrainConfig) if f.name not in saved}, **saved}
    current = asdict(cfg)
    saved["data"] = current["data"]  # where the images are is the machine's business; check_same_data checks them
    if saved != current:
        changed = ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v)
        raise ValueError(f"--resume: the configuration differs from the run's ({source}): {changed}. Resume with "
                         f"the run's settings (--config {source.parent / TRAIN_CONFIG}), or train in another "
                         f"--out (nothing was changed)")


IDENTITY_KEYS = ("name", "image_size", "images", "sha256", "pixels_sha256", "classes")  # not how they were given


def check_same_data(saved: dict[str, Any] | None, dataset: dict[str, Any], data: str | None) -> None:
    """Refuse to resume a run on other images than it started on (the identity its checkpoint records; a
    checkpoint without one is from before ``--data`` took other images than CIFAR-10's)."""
    saved = {"name": "cifar10"} if saved is None else saved
    if changed := ", ".join(f"{k}: {saved.get(k)!r} -> {dataset.get(k)!r}" for k in IDENTITY_KEYS
                            if saved.get(k) != dataset.get(k)):
        raise ValueError(f"--resume: the images of --data {data} are not the ones the run started on ({changed}). "
                         f"Restore them, or train on the new ones in another --out (nothing was changed)")


def read_history(out: Path) -> list[dict[str, Any]]:
    """The finished epochs recorded in ``out``'s metrics.jsonl (empty when there is none)."""
    path = out / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
