"""CPU recipe study (issue #23): which short-schedule ideas give the most weighted k-NN per training FLOP.

Every configuration trains on the full CIFAR-10 train split for about a tenth of the per-model budget
(1.5x the training FLOPs of today's simclr-cifar10.cpu run, counted by torch's FlopCounterMode, so the
budget means the same on every CPU); epochs are chosen to fill that tenth. Each idea is one
``ssl-zoo train`` option added to today's `cpu` recipe, side by side with the recipe itself. Runs live
under ``--runs`` (outside the work tree): a finished run is skipped and an interrupted one resumed.
Full-budget runs (``--zoo-runs``, and the bundled ones in zoo/pretrained) join the table and plot.
Results: ``benchmarks/results/cpu_study.{json,md}``, ``cpu_study-curves.json``, ``cpu_study.png``.

    nice -n 5 python benchmarks/cpu_study.py [--only simclr-] [--runs ~/ssl-zoo-runs/study2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from report import RESULTS, trained_on, write_report
from training.config import TrainConfig, build_config
from training.estimate import run_flops
from training.hardware import cpu_summary
from training.loop import build_method

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "zoo" / "pretrained"
REFERENCE = PRETRAINED / "simclr-cifar10.cpu"  # today's CPU recipe: the budget is 1.5x its training FLOPs
BUDGET_FACTOR, STUDY_FRACTION = 1.5, 0.1
CURVES = RESULTS / "cpu_study-curves.json"  # committed: the report rebuilds rows whose run folders are gone

# Today's `cpu` preset per method (as trained for the .cpu tags), spelled out so the study does not move
# when the preset does. Monitor and final-probe sizes are the study's own.
COMMON = {"width": 16, "proj_hidden": 1024, "schedule": "step-warmup-cosine", "warmup_epochs": 1,
          "train_per_class": "all", "eval_train_per_class": 500, "eval_test_per_class": 200,
          "final_train_per_class": 1000, "log_every": 50}
SGD = {"optimizer": "sgd", "lr": 0.12, "weight_decay": 5e-4}
ADAMW = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-6}
TODAY = {"simclr": {**SGD, "temperature": 0.2}, "byol": SGD, "barlowtwins": {**ADAMW, "proj_out": 1024},
         "vicreg": {**ADAMW, "proj_out": 1024}}
MULTICROP = {"local_crops": 4, "local_size": 16}
B128_SGD, B128_ADAMW = {"batch_size": 128, "lr": 0.06}, {"batch_size": 128, "lr": 1.4e-3}  # 2x the steps
PROGRESSIVE = {"progressive_size": 16, "progressive_epochs": "0.7", "bn_recalibrate": True}  # epochs: a fraction

# (name, method, the idea's options on top of today's recipe, what it tests)
CONFIGS: list[tuple[str, str, dict, str]] = [
    ("simclr-today", "simclr", {}, "today's cpu recipe"),
    ("simclr-multicrop", "simclr", MULTICROP, "2x32 px + 4x16 px local crops, each against both global views"),
    ("simclr-progressive", "simclr", PROGRESSIVE, "16 -> 32 px over 70 % of the epochs, BatchNorm recalibrated"),
    ("simclr-b128", "simclr", B128_SGD, "batch 128, lr scaled linearly"),
    ("simclr-t0.15-lr0.3", "simclr", {"temperature": 0.15, "lr": 0.3}, "temperature 0.15, higher lr"),
    ("simclr-b128-progressive", "simclr", {**B128_SGD, **PROGRESSIVE}, "batch 128 + progressive resolution"),
    ("byol-today", "byol", {}, "today's cpu recipe"),
    ("byol-cosine-ema", "byol", {"ema_schedule": "cosine"}, "target momentum 0.99 -> 1 on a cosine"),
    ("byol-b128", "byol", B128_SGD, "batch 128, lr scaled linearly"),
    ("byol-multicrop", "byol", {**MULTICROP, "ema_schedule": "cosine"}, "cosine momentum + multi-crop"),
    ("barlowtwins-today", "barlowtwins", {}, "today's cpu recipe"),
    ("barlowtwins-2048-inv-d", "barlowtwins", {"proj_hidden": 2048, "proj_out": 2048, "alpha": 1 / 2048},
     "2048-d projector, lambda = 1/d"),
    ("barlowtwins-b128", "barlowtwins", B128_ADAMW, "batch 128, AdamW lr scaled by the square root"),
    ("barlowtwins-multicrop", "barlowtwins", MULTICROP, "multi-crop"),
    ("vicreg-adamw", "vicreg", {}, "VICReg with Barlow Twins' CPU settings"),
    ("vicreg-b128", "vicreg", B128_ADAMW, "batch 128, AdamW lr scaled by the square root"),
    ("vicreg-multicrop", "vicreg", MULTICROP, "VICReg + multi-crop"),
]


def config_for(method: str, options: dict, epochs: int) -> dict:
    """The flags of one configuration at ``epochs`` epochs (a fractional progressive_epochs resolved)."""
    values = {**COMMON, **TODAY[method], **options, "epochs": epochs}
    if isinstance(values.get("progressive_epochs"), str):
        values["progressive_epochs"] = max(1, round(float(values["progressive_epochs"]) * epochs))
    return values


def train_config(method: str, values: dict) -> TrainConfig:
    fields = {k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__}
    options = {k: v for k, v in values.items() if k not in fields}
    return build_config(method, "seed", None, {**fields, "method_options": options})


def flops_of(method: str, values: dict) -> int:
    cfg = train_config(method, values)
    return run_flops(cfg, build_method(cfg)[0])


def budget_flops() -> int:
    """1.5x the training FLOPs of the reference run (its recorded configuration)."""
    cfg = TrainConfig(**json.loads((REFERENCE / "train_config.json").read_text()))
    return round(BUDGET_FACTOR * run_flops(cfg, build_method(cfg)[0]))


def epochs_for(method: str, options: dict, target: float) -> int:
    """The number of epochs whose training FLOPs come closest to ``target`` (low-resolution epochs are
    cheaper, so a progressive run gets more epochs)."""
    def flops(epochs: int) -> int:
        return flops_of(method, config_for(method, options, epochs))

    full_resolution = flops_of(method, config_for(method, {**options, "progressive_epochs": 0}, 1))
    low, high = max(1, int(target / full_resolution)), int(4 * target / full_resolution) + 1  # a 16-px epoch: 1/4
    while high - low > 1:  # bisect: the most epochs within target lie in [low, high)
        middle = (low + high) // 2
        low, high = (middle, high) if flops(middle) <= target else (low, middle)
    return min((low, low + 1), key=lambda e: abs(flops(e) - target))


def run_config(name: str, method: str, values: dict, runs: Path) -> Path:
    """Train (or resume, or skip) one configuration; return its run directory."""
    out = runs / name
    if (out / "results.json").is_file():
        return out
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    resume = ["--resume"] if (out / "train_config.json").is_file() else []
    cmd = [sys.executable, "-m", "training", "train", method, "--preset", "seed", "--out", str(out), *flags, *resume]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


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
    results = probe(Encoder(EncoderConfig("resnet18_cifar", {"width": 16})).eval(), progress=False)
    runs.mkdir(parents=True, exist_ok=True)  # a report on a machine whose study runs are gone
    write_json(cache, results)
    return results


def summarise(name: str, out: Path, note: str) -> dict | None:
    """A finished or partial run: its monitor curve with cumulative training FLOPs, and its final probes."""
    if not (out / "metrics.jsonl").is_file():
        return None
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not curve:
        return None
    config = json.loads((out / "train_config.json").read_text())
    if "train_flops" not in curve[-1]:  # runs from before FLOPs were recorded: count them now
        from training.estimate import epoch_flops

        cfg = TrainConfig(**config)
        per_epoch = epoch_flops(cfg, build_method(cfg)[0])
        for i, record in enumerate(curve):
            record["train_flops"] = sum(per_epoch[:i + 1])
    final = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    exported = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    cpu = trained_on(exported) or cpu_summary()  # an unfinished run is training here
    return {"name": name, "note": note, "config": config, "curve": curve, "final": final, "cpu": cpu}


def previous_rows() -> dict[str, dict]:
    """The rows of the last report, by name: what a run whose folder is gone (another machine) still shows."""
    return {row["name"]: row for row in json.loads(CURVES.read_text())} if CURVES.is_file() else {}


def probe_cells(results: dict) -> dict:
    """A table row's final-probe columns: each probe's accuracy (%) and the bank / test sizes."""
    bank = results.get("protocol", {}).get("knn5", {})
    return {**{label: round(100 * results[key], 2) if key in results else "-" for key, label in
               (("knn5", "k-NN k=5 %"), ("knn200", "weighted k-NN k=200 %"), ("linear", "linear %"))},
            "final bank / test": f"{bank.get('train_images', '-')} / {bank.get('test_images', '-')}"}


def plot(rows: list[dict], budget: int, path: Path) -> None:
    """Monitor weighted k-NN against training FLOPs (left) and 2-core CPU minutes (right), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    colors = plt.get_cmap("tab20").colors
    for i, row in enumerate(rows):
        y = [100 * r["weighted_knn_accuracy"] for r in row["curve"]]
        style = {"color": colors[i % len(colors)], "marker": "o", "markersize": 2.5,
                 "linewidth": 2.2 if "full" in row["note"] else 1.2, "label": row["name"]}
        axes[0].plot([r["train_flops"] / 1e15 for r in row["curve"]], y, **style)
        axes[1].plot([r["cpu_seconds"] / 120 for r in row["curve"]], y, **style)
    for ax, budget_x, label in ((axes[0], budget / 1e15, "training PFLOP (torch FlopCounterMode)"),
                                (axes[1], None, "CPU minutes on 2 cores (process CPU time / 2)")):
        ax.set_xscale("log")
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
        if budget_x:
            ax.axvline(budget_x, color="black", linestyle="--", linewidth=1)
            ax.text(budget_x, ax.get_ylim()[0] + 1, " budget", fontsize=8)
    axes[0].set_ylabel("weighted k-NN (k=200, T=0.1), monitor subset (%)")
    fig.suptitle("CPU recipe study: accuracy against training compute (width-16 CIFAR ResNet-18)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path.home() / "ssl-zoo-runs" / "study2")
    parser.add_argument("--zoo-runs", type=Path, default=Path.home() / "ssl-zoo-runs" / "zoo",
                        help="full-budget runs (METHOD-cifar10.cpu2*) to add to the table and plot")
    parser.add_argument("--only", default="", help="run only configurations whose name starts with this")
    parser.add_argument("--report-only", action="store_true", help="summarise finished runs, train nothing")
    args = parser.parse_args()
    budget = budget_flops()
    planned = {name: (method, config_for(method, options, epochs_for(method, options, STUDY_FRACTION * budget)), note)
               for name, method, options, note in CONFIGS}
    if not args.report_only:
        for name, (method, values, _) in planned.items():
            if name.startswith(args.only):
                run_config(name, method, values, args.runs)
    previous = previous_rows()
    rows = [summarise(name, args.runs / name, note) or previous.get(name) for name, (_, _, note) in planned.items()]
    full = {out.name: out for folder in (args.zoo_runs, PRETRAINED) for out in sorted(folder.glob("*-cifar10.cpu*"))
            if (out / "results.json").is_file()}  # a bundled run replaces its run folder
    rows += [summarise(f"{name} (full run)", out, "full run") for name, out in sorted(full.items())]
    rows = [row for row in rows if row]
    if not rows:
        return print("no study runs yet")
    table = [{"configuration": row["name"], "idea": row["note"], "epochs": row["curve"][-1]["epoch"],
              "training PFLOP": round(row["curve"][-1]["train_flops"] / 1e15, 3),
              "2-core CPU min": round(row["curve"][-1]["cpu_seconds"] / 120, 1), "CPU": row["cpu"],
              "monitor weighted k-NN %": round(100 * row["curve"][-1]["weighted_knn_accuracy"], 2),
              **probe_cells(row["final"])} for row in rows]
    table.append({"configuration": "random init (the same network, seed 0)", "idea": "no training", "epochs": 0,
                  "training PFLOP": 0, "2-core CPU min": 0, "CPU": "-", "monitor weighted k-NN %": "-",
                  **probe_cells(random_init_results(args.runs))})
    plot(rows, budget, RESULTS / "cpu_study.png")
    CURVES.write_text(json.dumps(rows, indent=1) + "\n")
    print(write_report("cpu_study", "CPU recipe study: weighted k-NN against training compute", table,
                       f"Budget per model: {budget / 1e15:.3f} PFLOP of training (1.5x simclr-cifar10.cpu's), counted "
                       "by torch's FlopCounterMode (convolutions and matrix products, forward and backward); study "
                       f"runs take a tenth of it ({STUDY_FRACTION * budget / 1e15:.3f} PFLOP, epochs chosen to fill "
                       "it). Every study run is today's cpu recipe (width-16 CIFAR ResNet-18, batch 256, projector "
                       "hidden 1024, 1 warm-up epoch then cosine; SGD lr 0.12 wd 5e-4 for SimCLR (T=0.2) and BYOL, "
                       "AdamW lr 2e-3 wd 1e-6 and a 1024-d projector output for Barlow Twins and VICReg) plus the "
                       "idea named. Monitor: weighted k-NN (k=200, T=0.1, L2-normalised), 5,000-image bank, 2,000 "
                       "test images, after each epoch. Final probes: the model-card protocol with the bank and test "
                       "sizes shown. CPU minutes: process CPU time / 2 on the CPU of the row; they depend on the "
                       "CPU, the FLOPs do not. Command: `nice -n 5 python benchmarks/cpu_study.py`."))


if __name__ == "__main__":
    sys.exit(main())
