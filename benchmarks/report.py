"""Write a benchmark's rows as JSON and as a markdown table under benchmarks/results/."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    return {"torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}


def write_report(name: str, title: str, rows: list[dict], notes: str = "") -> str:
    """Save ``rows`` to ``results/<name>.json`` and ``results/<name>.md``; return the markdown."""
    RESULTS.mkdir(exist_ok=True)
    env = environment()
    (RESULTS / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    columns = list(rows[0])
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    env_line = ", ".join(f"{k} {v}" for k, v in env.items())
    lines += ["", f"{notes} Environment: {env_line}.".strip(), ""]
    markdown = "\n".join(lines)
    (RESULTS / f"{name}.md").write_text(markdown)
    return markdown
