"""Where a run came from: the command, the code's commit, the machine and the time it took."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .hardware import cpu_summary, describe_cpu

CPU_ISA_KEYS = ("capability", "avx2", "avx512", "avx512_bf16", "amx", "native_bf16")

SOURCE = Path(__file__).resolve().parents[1]  # the checkout holding training/ and zoo/


def command_line(argv: list[str] | None = None, local_flags: tuple[str, ...] = ()) -> str:
    """The command as run, argv[0] shortened to the program (``ssl-zoo``, or ``python -m training``),
    without ``local_flags`` and their values (machine-local settings such as ``--data PATH``)."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0]).name
    if program == "__main__.py":  # python -m <package> (also torchrun -m)
        program = f"python -m {Path(argv[0]).parent.name}"
    kept, args = [], iter(argv[1:])
    for arg in args:
        if arg in local_flags:
            next(args, None)  # `--flag value`: its value goes too
        elif arg.split("=", 1)[0] not in local_flags:
            kept.append(arg)
    return " ".join([program, *map(shlex.quote, kept)])


def git_state(source: Path = SOURCE) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of ``source`` when it is a git checkout, else (None, None)."""
    if not (source / ".git").exists():
        return None, None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()

        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):  # no git, not a repository it trusts, or too slow
        return None, None


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)`` for an accelerator."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


LAUNCHES = "launches.jsonl"  # in the run directory: one record per process that trained or exported the run


def launch_record(action: str, epoch: int, local_flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """This process's ``action`` (start, resume, re-export) at ``epoch``: its command (without
    ``local_flags``), code (commit, dirty), CPU (a run resumed in another session may move machine) and start time."""
    commit, dirty = git_state()
    return {"action": action, "epoch": epoch, "command": command_line(local_flags=local_flags), "git_commit": commit,
            "git_dirty": dirty, "cpu": cpu_summary(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_launches(run_dir: Path) -> list[dict[str, Any]]:
    """The run's launch records, first (the one that started it) first; empty for runs from before them."""
    path = run_dir / LAUNCHES
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_provenance(history: list[dict[str, Any]], device: torch.device, processes: int,
                   launches: list[dict[str, Any]], precision: str, train_flops: int) -> dict[str, Any]:
    """The card's provenance block for a run whose per-epoch records are ``history``: the command, code and
    CPU that started it (``launches[0]``), then each later launch's action (resume, re-export), epoch,
    command, code and CPU; the machine (CPU model and the ISA facts that decide its speed) and the
    ``precision`` that ran; ``compute`` (device, training minutes, training FLOPs) is what a registry
    entry copies."""
    first, later = launches[0], launches[1:]
    cpu = describe_cpu()
    wall_minutes = sum(r["seconds"] for r in history) / 60
    name = device_name(device)
    return {"command": first["command"], "git_commit": first["git_commit"], "git_dirty": first["git_dirty"],
            "started_on": first.get("cpu"),  # launches from before CPUs were recorded have none
            "later": [{k: r.get(k) for k in ("action", "epoch", "command", "git_commit", "git_dirty", "cpu")}
                      for r in later],
            "torch": torch.__version__,
            "device": name, "cpu": cpu["model"], "cpu_isa": {k: cpu[k] for k in CPU_ISA_KEYS},
            "cores": os.cpu_count(), "processes": processes, "precision": precision,
            "wall_minutes": round(wall_minutes, 2), "cpu_minutes": round(history[-1]["cpu_seconds"] / 60, 2),
            "train_flops": train_flops,
            "compute": {"device": name, "minutes": round(wall_minutes, 2), "train_flops": train_flops,
                        "cpu": cpu_summary(cpu), "precision": precision,
                        "cpu_minutes": round(history[-1]["cpu_seconds"] / 60, 2), "cores": os.cpu_count()}}
