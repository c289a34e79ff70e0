"""Time-to-accuracy study of CPU training recipes (issue #11): which width, optimiser, learning rate,
batch size and compilation reach the best k-NN per CPU minute on this 2-core machine.

Each configuration is one ``ssl-zoo train`` run (full CIFAR-10 train split, bf16 autocast) in its own
directory under ``--runs`` (outside the work tree); a finished run is skipped and an interrupted one
resumed, so the study survives restarts. The monitor after every epoch is the model-card k-NN protocol
on a fixed evaluation subset (``eval_*_per_class``). Results: ``benchmarks/results/cpu_study.{json,md}``,
``cpu_study-curves.json`` and ``cpu_study.png`` (monitor k-NN vs 2-core CPU minutes, one line per configuration).

    nice -n 5 python benchmarks/cpu_study.py [--only simclr-] [--runs ~/ssl-zoo-runs/study]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from report import RESULTS, write_report

METHODS = ("simclr", "byol", "barlowtwins")

COMMON = {"train_per_class": "all", "precision": "bf16", "proj_hidden": 1024, "eval_train_per_class": 500,
          "eval_test_per_class": 200, "final_train_per_class": 1000, "log_every": 50}

ADAMW = {"width": 16, "epochs": 3, "batch_size": 256, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-6,
         "schedule": "step-warmup-cosine", "warmup_epochs": 1}
SGD = {**ADAMW, "optimizer": "sgd", "lr": 0.12, "weight_decay": 5e-4}

# (name, method, overrides). Budget per study run: about 6 minutes on 2 cores.
CONFIGS: list[tuple[str, str, dict]] = [
    ("simclr-adamw-w16-3ep", "simclr", ADAMW),
    ("simclr-sgd-w16-3ep", "simclr", SGD),
    ("simclr-lars-w16-3ep", "simclr", {**ADAMW, "optimizer": "lars", "lr": 0.4, "weight_decay": 1e-5}),
    ("simclr-sgd-t0.2-w16-3ep", "simclr", {**SGD, "temperature": 0.2}),
    ("byol-adamw-w16-3ep", "byol", ADAMW),
    ("byol-sgd-w16-3ep", "byol", SGD),
    ("barlowtwins-adamw-w16-3ep", "barlowtwins", {**ADAMW, "proj_out": 1024}),
    ("barlowtwins-sgd-w16-3ep", "barlowtwins", {**SGD, "proj_out": 1024}),
    ("simclr-sgd-w16-compile-1ep", "simclr", {**SGD, "epochs": 1, "compile": True}),  # speed only
]


def run_config(name: str, method: str, overrides: dict, runs: Path) -> Path:
    """Train (or resume, or skip) one configuration; return its run directory."""
    out = runs / name
    if (out / "results.json").is_file():
        return out
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**COMMON, **overrides}.items()]
    resume = ["--resume"] if (out / "train_config.json").is_file() else []
    cmd = [sys.executable, "-m", "training", "train", method, "--preset", "seed", "--out", str(out), *flags, *resume]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    return out


def full_run_label(out: Path) -> str:
    """A full-budget run's table row name: its folder and the optimiser it trained with."""
    config = json.loads((out / "train_config.json").read_text())
    return f"{out.name} (full run, {config['optimizer']} lr {config['lr']:g})"


def random_init_results(runs: Path) -> dict:
    """The model-card probes of the study's network (width-16 CIFAR ResNet-18) at random init, seed 0:
    what "points above random init" is measured from. Cached in ``runs``: the probes take ~2 CPU minutes."""
    cache = runs / "random-init-w16-seed0.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    import torch

    from zoo import Encoder, EncoderConfig, probe
    from zoo.io import write_json

    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig("resnet18_cifar", {"width": 16})).eval()
    results = probe(encoder, progress=False)
    write_json(cache, results)
    return results


def probe_cells(results: dict) -> dict:
    """A table row's final-probe columns: each probe's accuracy (%) and the bank / test sizes."""
    bank = results.get("protocol", {}).get("knn5", {})
    return {**{label: round(100 * results[key], 2) if key in results else "-" for key, label in
               (("knn5", "k-NN k=5 %"), ("knn200", "weighted k-NN k=200 %"), ("linear", "linear %"))},
            "final bank / test": f"{bank.get('train_images', '-')} / {bank.get('test_images', '-')}"}


def summarise(outs: dict[str, Path]) -> list[dict]:
    """Per configuration (name -> run directory): the monitor curve against CPU minutes, and the final probes."""
    rows = []
    for name, out in outs.items():
        if not (out / "metrics.jsonl").is_file():
            continue
        curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        final = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
        config = json.loads((out / "train_config.json").read_text())
        rows.append({"name": name, "config": config, "curve": curve, "final": final})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Monitor k-NN against 2-core CPU minutes, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colors = plt.get_cmap("tab20").colors  # more distinct colours than lines
    for i, row in enumerate(rows):
        x = [r["cpu_seconds"] / 2 / 60 for r in row["curve"]]
        ax.plot(x, [100 * r["weighted_knn_accuracy"] for r in row["curve"]], marker="o", markersize=3,
                color=colors[i % len(colors)], label=row["name"])
    ax.set_xscale("log")
    ax.set(xlabel="CPU minutes on 2 cores (process CPU time / 2; log scale)",
           ylabel="weighted k-NN (k=200, T=0.1, normalised), monitor subset (%)",
           title="CPU recipe study: accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path.home() / "ssl-zoo-runs" / "study")
    parser.add_argument("--zoo-runs", type=Path, default=Path.home() / "ssl-zoo-runs" / "zoo",
                        help="where `ssl-zoo train METHOD --preset cpu --out DIR/METHOD-cifar10.cpu[-SUFFIX]` "
                        "ran (the recipe at its full budget: finished runs are added to the table and plot)")
    parser.add_argument("--only", default="", help="run only configurations whose name starts with this")
    parser.add_argument("--report-only", action="store_true", help="summarise finished runs, train nothing")
    args = parser.parse_args()
    names = [name for name, _, _ in CONFIGS if name.startswith(args.only)]
    if not args.report_only:
        for name, method, overrides in CONFIGS:
            if name in names:
                run_config(name, method, overrides, args.runs)
    outs = {name: args.runs / name for name, _, _ in CONFIGS}
    outs |= {full_run_label(out): out for method in METHODS
             for out in sorted(args.zoo_runs.glob(f"{method}-cifar10.cpu*")) if (out / "results.json").is_file()}
    rows = summarise(outs)
    if not rows:
        return print("no finished study runs yet")
    table = []
    for row in rows:
        last, final = row["curve"][-1], row["final"]
        table.append({"configuration": row["name"], "epochs": last["epoch"],
                      "2-core CPU min": round(last["cpu_seconds"] / 120, 1),
                      "views/s": round(2 * max(r["images_per_s"] for r in row["curve"])),
                      "monitor weighted k-NN %": round(100 * last["weighted_knn_accuracy"], 2),
                      **probe_cells(final)})
    table.append({"configuration": "random init (the same network, seed 0; no training)", "epochs": 0,
                  "2-core CPU min": 0, "views/s": "-", "monitor weighted k-NN %": "-",
                  **probe_cells(random_init_results(args.runs))})
    plot(rows, RESULTS / "cpu_study.png")
    (RESULTS / "cpu_study-curves.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(write_report("cpu_study", "CPU recipe study: time to accuracy on 2 cores", table,
                       "Study runs: full CIFAR-10 train split, width-16 CIFAR ResNet-18, batch 256, bf16 autocast, projector "
                       "hidden 1024, 1 warm-up epoch then cosine, seed 0; `adamw`: lr 2e-3, wd 1e-6; `sgd`: lr 0.12, "
                       "momentum 0.9, wd 5e-4 (lightly's CIFAR-10 benchmarks); `lars`: lr 0.4, wd 1e-5 (solo-learn); "
                       "Barlow Twins projector output 1024. Full runs: `ssl-zoo train METHOD --preset cpu` with the "
                       "optimiser shown, 40-50 epochs; the `.cpu` registry tags ship each method's best. Monitor: "
                       "weighted k-NN (k=200, T=0.1, normalised) with a "
                       "5,000-image bank and 2,000 test images after each epoch. Final probes: the model-card "
                       "protocol with the bank and test sizes shown. views/s: the fastest epoch (2 views per image). "
                       "CPU minutes: process CPU time / 2, so other jobs on the machine cost little. "
                       "Command: `nice -n 5 python benchmarks/cpu_study.py`."))


if __name__ == "__main__":
    sys.exit(main())
