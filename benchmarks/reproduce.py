"""Rerun a bundled model's training command and compare its first epochs with the card's metrics.jsonl.

    python benchmarks/reproduce.py                       # all bundled models, 2 epochs each
    python benchmarks/reproduce.py byol-cifar10.cpu --epochs 3
    python benchmarks/reproduce.py simclr-cifar10.cpu --epochs 1 --kernels avx2

Runs the exact command recorded in the bundled config.json (its `--out` pointed at a temporary folder),
stops it once N epochs are logged, and compares loss, k-NN and weighted k-NN of each epoch with the
shipped run's; a full rerun takes the card's wall time (80-110 min per model on 2 cores). Naming tags
reruns only those: the table keeps the other rows (other models, or the same one rerun on another CPU:
bitwise on the kind it was trained on, close on another), each naming the commit, date and CPU it was
rerun on. With ``--kernels avx2`` it measures what another kind of CPU does to the same run: the
command runs twice in fp32 (emulated bf16 would take hours), with this CPU's kernels and restricted to AVX2 ones
(``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``: what an AVX2-only CPU such as AMD Zen 3
runs), and the two are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import AVX2_ONLY, RESULTS, environment, trained_on, write_report
from training.hardware import cpu_summary

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "zoo" / "pretrained"
COMPARED = ("loss", "knn_accuracy", "weighted_knn_accuracy")
RERUN = "rerun (commit, date, CPU)"  # a table row is one model rerun on one kind of CPU


def rerun_command(command: str, out: Path) -> list[str]:
    """A card's recorded launch command, with `ssl-zoo` as this interpreter's CLI and `--out` set to ``out``."""
    argv = shlex.split(command)
    if argv[0] != "ssl-zoo" or "--out" not in argv:
        sys.exit(f"{out.name}: the recorded command {command!r} is not an `ssl-zoo train ... --out` command")
    argv[argv.index("--out") + 1] = str(out)
    return [sys.executable, "-c", "from zoo.cli import main; main()", *argv[1:]]


def card_cpu(tag: str) -> str:
    """The CPU a bundled model was trained on, as its card records it."""
    return trained_on(json.loads((PRETRAINED / tag / "config.json").read_text())) or "not recorded"


def _rerun_cpu(row: dict) -> str:
    return row[RERUN].split(", ", 2)[2]


def run_epochs(argv: list[str], metrics: Path, epochs: int, log: Path, env: dict | None = None) -> list[dict]:
    """Start ``argv``, stop it once ``metrics`` has ``epochs`` lines, and return those lines."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        try:
            while _lines(metrics) < epochs and proc.poll() is None:
                time.sleep(2)
        finally:
            proc.terminate()
            proc.wait()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()[:epochs]] if metrics.exists() else []
    if len(rows) < epochs:
        tail = log.read_text()[-2000:].replace("\r", "\n")  # the temporary folder goes when the script exits
        sys.exit(f"the rerun stopped after {len(rows)} of {epochs} epochs; the end of its output:\n{tail}")
    return rows


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def compare(tag: str, epochs: int, work: Path) -> dict:
    """One table row: the largest per-epoch difference of each compared metric, rerun against the card."""
    bundle = PRETRAINED / tag
    shipped = [json.loads(line) for line in (bundle / "metrics.jsonl").read_text().splitlines()][:epochs]
    provenance = json.loads((bundle / "config.json").read_text())["provenance"]
    argv = rerun_command(provenance["command"], work / tag)
    print(f"{tag}: {shlex.join(argv[3:])} for {epochs} epochs", flush=True)
    rerun = run_epochs(argv, work / tag / "metrics.jsonl", epochs, work / f"{tag}.log")
    row = differences(tag, epochs, shipped, rerun)
    return {"model": tag, "epochs compared": epochs, "card's commit": provenance["git_commit"][:7],
            **{k: v for k, v in row.items() if k not in ("model", "epochs compared")},
            "rerun weighted k-NN by epoch (%)": " / ".join(f"{100 * r['weighted_knn_accuracy']:.2f}" for r in rerun)}


def differences(tag: str, epochs: int, a: list[dict], b: list[dict]) -> dict:
    """The largest per-epoch difference of each compared metric between two runs' records."""
    diffs = {k: max(abs(x[k] - y[k]) for x, y in zip(a, b)) for k in COMPARED}
    return {"model": tag, "epochs compared": epochs, "max Δ loss": f"{diffs['loss']:.3g}",
            "max Δ k-NN (points)": f"{100 * diffs['knn_accuracy']:.2f}",
            "max Δ weighted k-NN (points)": f"{100 * diffs['weighted_knn_accuracy']:.2f}",
            "bitwise equal": all(x[k] == y[k] for x, y in zip(a, b) for k in COMPARED)}


def compare_kernels(tag: str, epochs: int, work: Path) -> dict:
    """The card's command in fp32 with this CPU's kernels and with AVX2 ones only, compared epoch by epoch."""
    command = json.loads((PRETRAINED / tag / "config.json").read_text())["provenance"]["command"]
    runs = {}
    for kernels, env in (("native", {}), ("avx2", AVX2_ONLY)):
        argv = rerun_command(command, work / f"{tag}-{kernels}") + ["--precision", "fp32"]
        print(f"{tag} ({kernels} kernels): {shlex.join(argv[3:])} for {epochs} epochs", flush=True)
        runs[kernels] = run_epochs(argv, work / f"{tag}-{kernels}" / "metrics.jsonl", epochs,
                                   work / f"{tag}-{kernels}.log", env)
    return {**differences(tag, epochs, runs["native"], runs["avx2"]),
            "weighted k-NN by epoch, native / AVX2 (%)": ", ".join(
                f"{100 * a['weighted_knn_accuracy']:.2f} / {100 * b['weighted_knn_accuracy']:.2f}"
                for a, b in zip(runs["native"], runs["avx2"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tags", nargs="*", help="bundled models (default: every folder of zoo/pretrained)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs to rerun and compare (default %(default)s)")
    ap.add_argument("--kernels", choices=["card", "avx2"], default="card", help="card (default): rerun against the "
                    "shipped records; avx2: this CPU's kernels against AVX2-only ones, both in fp32")
    args = ap.parse_args()
    if args.epochs < 1:
        sys.exit(f"--epochs must be at least 1, not {args.epochs}")
    tags = args.tags or sorted(p.name for p in PRETRAINED.iterdir() if (p / "metrics.jsonl").exists())
    missing = [t for t in tags if not (PRETRAINED / t / "metrics.jsonl").exists()]
    if missing:
        sys.exit(f"no bundled run for {missing}; choose from {sorted(p.name for p in PRETRAINED.iterdir())}")
    short = {t: n for t in tags if (n := _lines(PRETRAINED / t / "metrics.jsonl")) < args.epochs}
    if short:
        sys.exit(f"--epochs {args.epochs} is more than these models were trained for: {short}; lower it")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if args.kernels == "avx2":
        with tempfile.TemporaryDirectory(prefix="reproduce-") as work:
            rows = [compare_kernels(tag, args.epochs, Path(work)) for tag in tags]
        print(write_report("reproduce-kernels", "The same command on other kernels: AVX-512 against AVX2-only, fp32",
                           rows, f"Each model's recorded command rerun at commit {commit.stdout.strip()} with "
                           "`--precision fp32` twice: with this CPU's kernels and restricted to AVX2 ones "
                           "(ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2), stopped after the epochs shown; the "
                           "per-epoch monitor compared. Command: `python benchmarks/reproduce.py TAG --kernels avx2`."))
        return
    rerun = {RERUN: f"{commit.stdout.strip()}, {environment()['date']}, {cpu_summary()}"}
    with tempfile.TemporaryDirectory(prefix="reproduce-") as work:
        rows = {(tag, cpu_summary()): {**compare(tag, args.epochs, Path(work)), **rerun} for tag in tags}
    previous = RESULTS / "reproduce.json"  # rows of other models or CPUs stay, each naming its own rerun
    if previous.exists():
        rows = {(row["model"], _rerun_cpu(row)): row for row in json.loads(previous.read_text())["rows"]
                if row["model"] in os.listdir(PRETRAINED) and RERUN in row} | rows
    rows = [{k: v for k, v in row.items() if k != RERUN} | {"card's CPU": card_cpu(row["model"]), RERUN: row[RERUN]}
            for _, row in sorted(rows.items())]
    configs = [json.loads((PRETRAINED / row["model"] / "train_config.json").read_text()) for row in rows]
    sizes = " or ".join(sorted({f"{10 * c['eval_train_per_class']:,}-image bank, {10 * c['eval_test_per_class']:,} "
                                "test images" for c in configs}))
    notes = ("Each model's recorded `ssl-zoo train` command rerun at the commit shown and stopped after the epochs "
             f"shown; per-epoch monitor (k-NN k=5 and weighted k-NN k=200 T=0.1, L2-normalised, "
             f"{sizes}, as the card's training curves) compared with the shipped "
             "metrics.jsonl; Δ: the largest absolute difference over those epochs.")
    print(write_report("reproduce", "Rerunning the cards' commands: first epochs against the shipped runs", rows,
                       notes))


if __name__ == "__main__":
    main()
