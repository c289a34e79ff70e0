"""Write a benchmark's rows as JSON and as a markdown table under benchmarks/results/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from training.hardware import cpu_summary

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    """What every figure depends on: torch, threads, and the CPU with its kernels and bf16 support."""
    return {"torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(),
            "cpu": cpu_summary(), "date": time.strftime("%Y-%m-%d")}


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


def update_readme(readme: Path = RESULTS.parents[1] / "README.md") -> None:
    """Copy each results/<name>.md between ``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->``."""
    text = readme.read_text()
    for md in sorted(RESULTS.glob("*.md")):
        start, end = f"<!-- bench:{md.stem} -->", f"<!-- /bench:{md.stem} -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + md.read_text().rstrip() + "\n" + end + rest.split(end, 1)[1]
    readme.write_text(text)


if __name__ == "__main__":
    update_readme()
