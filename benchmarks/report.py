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


AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # the kernels an AVX2-only CPU runs


def trained_on(exported: dict) -> str | None:
    """The CPU a run's exported config.json says it trained on (older runs record the model only)."""
    provenance = exported.get("provenance", {})
    return provenance.get("compute", {}).get("cpu") or provenance.get("cpu")


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


DOCS = [RESULTS.parents[1] / "README.md", *sorted((RESULTS.parents[1] / "docs").glob("*.md"))]
ASSETS = RESULTS.parents[1] / "docs" / "assets"


def zoo_table() -> str:
    """The registry's models (default tags) with compute and the model-card numbers, as a markdown table."""
    import zoo

    rows = ["| model | method | training compute | weighted k-NN | k-NN | linear |", "|---|---|---|---|---|---|"]
    for row in zoo.list_models(details=True):
        if not row["default"] or row["pending"]:
            continue
        name, _, tag = row["name"].partition(".")
        compute = row["compute"] or {}
        cost = (f"{compute['train_flops'] / 1e15:.2f} PFLOP; {compute['cpu_minutes'] / compute['cores']:.0f} min on "
                f"{compute['cores']} cores" if compute.get("train_flops") else "0")
        results = row["results"]
        rows.append(f"| `{name}` (`.{tag}`) | {row['method']} | {cost} | " +
                    " | ".join(f"{100 * results[k]:.2f} %" for k in ("knn200", "knn5", "linear")) + " |")
    return "\n".join(rows)


def _replace(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    return head + start + "\n" + content.rstrip() + "\n" + end + rest.split(end, 1)[1]


def update_docs() -> None:
    """Copy each results/<name>.md between ``<!-- bench:<name> -->`` markers and the registry's table between
    ``<!-- zoo-table -->`` markers, in the README and every docs page; the results' PNGs to docs/assets."""
    tables = {f"bench:{md.stem}": md.read_text() for md in sorted(RESULTS.glob("*.md"))}
    tables["zoo-table"] = zoo_table()
    for page in DOCS:
        text = page.read_text()
        for name, content in tables.items():
            text = _replace(text, name, content)
        page.write_text(text)
    ASSETS.mkdir(exist_ok=True)
    for png in RESULTS.glob("*.png"):
        (ASSETS / png.name).write_bytes(png.read_bytes())


if __name__ == "__main__":
    update_docs()
