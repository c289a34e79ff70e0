"""One training loop for all methods: ``train`` reads top to bottom; each stage is a named function below it."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import zoo
from zoo import Encoder, EncoderConfig, build_encoder
from zoo.eval.labelfree import label_free
from zoo.eval.probes import evaluate
from zoo.hub.rundir import (
    CHECKPOINT,
    EXPORT_FILES,
    METRICS,
    RESULTS,
    TRAIN_CONFIG,
    UNUSABLE,
    keep_previous_export,
    local_flags,
    public_training_config,
)
from zoo.io import write_json, write_jsonl

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import TrainData, load_train_data
from .distributed import DistEnv, all_reduce_sum, convert_batchnorm, init_distributed
from .estimate import (
    DataSizes,
    emulated_bf16_warning,
    epoch_flops,
    long_run_warning,
    measure_eval_images_per_s,
    measure_step_seconds,
    project,
    start_report,
)
from .hardware import memory_format, resolve_precision
from .methods import METHODS, SSLMethod
from .optim import build_optimizer, lr_at
from .provenance import LAUNCHES, launch_record, read_launches, run_provenance
from .recalibrate import recalibrate_batchnorm
from .resume import check_same_data, check_same_run, read_history, run_state
from .views import ViewMaker

EXPLODE_FACTOR = 100.0  # a logged loss this many times the first one counts as exploded


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


@dataclass
class Run:
    """Everything one training process holds: config, run directory, model and optimiser, data, history."""

    cfg: TrainConfig
    out: Path
    env: DistEnv
    method: SSLMethod
    encoder_config: EncoderConfig
    model: torch.nn.Module  # the method, or its DDP / compiled wrapper: what a step calls
    optimizer: torch.optim.Optimizer
    precision: str
    flops: list[int]  # training FLOPs of each epoch
    data: TrainData
    images: torch.Tensor  # the training images, uint8 (N, S, S, 3) on the device
    history: list[dict[str, Any]] = field(default_factory=list)
    first_loss: float | None = None
    started: tuple[float, float] = (0.0, 0.0)  # (process time, wall time) at which the run's clock reads zero

    @property
    def autocast(self) -> torch.autocast:
        return torch.autocast(self.env.device.type, torch.bfloat16, enabled=self.precision == "bf16")

    @property
    def memory_format(self) -> torch.memory_format:
        return memory_format(self.precision)


def build_method(cfg: TrainConfig) -> tuple[SSLMethod, EncoderConfig]:
    """The method of ``cfg`` (heads and all) on a fresh CIFAR ResNet-18, and the encoder's config."""
    encoder_config = EncoderConfig("resnet18_cifar", {"width": cfg.width}, input_size=cfg.image_size)
    return METHODS[cfg.method].from_config(build_encoder(encoder_config), cfg), encoder_config


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, re_export: bool = False) -> dict[str, Any]:
    """Train ``cfg.method`` (resolved when it was built); write the run directory ``out``; return the final
    results. ``resume`` continues the run in ``out`` (a finished one is left as it is); ``re_export``
    evaluates and exports a finished run again from its checkpoint, keeping the previous export."""
    started = (time.process_time(), time.perf_counter())
    out, env = Path(out), init_distributed(cfg.device)
    state = run_state(out, cfg, resume or re_export)
    if state == "finished" and not re_export:
        return _leave_finished(out, cfg, env)
    run = _start(cfg, out, env, state, re_export, started)
    for epoch in range(len(run.history), cfg.epochs):
        loss, seconds = _train_epoch(run, epoch)
        _end_epoch(run, epoch, loss, seconds)
    return _finish(run)


def _leave_finished(out: Path, cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    if env.is_main:
        print(f"{out} holds a finished {cfg.method} run: nothing to do (its encoder and results are unchanged). "
              f"Pass --re-export to evaluate and export it again from its checkpoint.", flush=True)
    return json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}


def _start(cfg: TrainConfig, out: Path, env: DistEnv, state: str, re_export: bool,
           started: tuple[float, float]) -> Run:
    """Load the data, build the method (seeded), announce the projected run time, restore a checkpoint on
    resume and write the run directory's records; every rank builds the same, only rank 0 writes."""
    resume = state != "new"
    if not env.is_main:
        torch.distributed.barrier()  # rank 0 decodes your own images into the cache first; the others read it
    data = load_train_data(cfg)
    if env.is_main and env.world_size > 1:
        torch.distributed.barrier()
    images = torch.from_numpy(data.images).to(env.device)
    _check_batching(len(images), cfg, env.world_size)
    torch.manual_seed(cfg.seed)
    method, encoder_config = build_method(cfg)
    precision = resolve_precision(cfg.precision, env.device)
    flops = epoch_flops(cfg, method, len(images))
    first_epoch = len(read_history(out)) if resume else 0
    if env.is_main and first_epoch < cfg.epochs:
        _announce(cfg, method, env, precision, flops, first_epoch, _sizes(data))
    if env.world_size > 1:
        method = convert_batchnorm(method)
    run = Run(cfg, out, env, method, encoder_config, method, build_optimizer(method, cfg), precision, flops,
              data, images)
    method.to(env.device, memory_format=run.memory_format)
    # DDP's constructor synchronises the ranks: every rank has checked the run directory before rank 0 writes.
    run.model = DistributedDataParallel(method) if env.world_size > 1 else method
    run.model = torch.compile(run.model) if cfg.compile else run.model
    if resume:
        progress = load_checkpoint(out / CHECKPOINT, method, run.optimizer)
        check_same_run(progress["config"], cfg, out / CHECKPOINT)
        check_same_data(progress.get("dataset"), data.dataset, cfg.data)
        run.history = progress["history"]
    run.first_loss = run.history[0]["loss"] if run.history else None
    # The clock carries the time spent before a resume (rank 0 keeps the totals in its history).
    spent = run.history[-1] if run.history else {}
    run.started = (started[0] - spent.get("cpu_seconds", 0.0), started[1] - spent.get("wall_seconds", 0.0))
    if env.is_main:
        _write_records(run, "re-export" if re_export else "resume" if resume else "start")
    return run


def _train_epoch(run: Run, epoch: int) -> tuple[float, float]:
    """One epoch of optimiser steps; returns its mean loss over all ranks and its seconds. Data order and
    augmentation are seeded by (seed, epoch), the same on every rank: a resumed run replays them exactly."""
    cfg, env = run.cfg, run.env
    batches = epoch_batches(len(run.images), cfg, epoch, env.rank, env.world_size, env.device)
    generator = torch.Generator(env.device).manual_seed((cfg.seed * 1000 + epoch) * 64)
    make_views = ViewMaker(cfg, run.memory_format)
    run.method.train()
    loss_sum, start, steps = torch.zeros((), device=env.device), time.perf_counter(), len(batches)
    bar = tqdm(batches, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not env.is_main or not sys.stderr.isatty())  # logs get the epoch lines, not bar redraws
    for step, index in enumerate(bar):
        for group in run.optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch, step, steps)
        inputs = make_views(run.images[index], generator, epoch, env.rank, env.world_size)
        loss = train_step(run.model, run.method, run.optimizer, inputs, run.autocast,
                          (epoch * steps + step + 1) / (cfg.epochs * steps))
        loss_sum += loss.detach()
        if (step + 1) % cfg.log_every == 0:  # the only host-device sync inside an epoch
            _check_loss(run, loss.item(), epoch, step)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    epoch_loss = (all_reduce_sum(loss_sum) / (steps * env.world_size)).item()
    _check_loss(run, epoch_loss, epoch, steps)
    return epoch_loss, time.perf_counter() - start


def train_step(model: torch.nn.Module, method: SSLMethod, optimizer: torch.optim.Optimizer,
               inputs: tuple[torch.Tensor, ...], autocast: torch.autocast, progress: float) -> torch.Tensor:
    """One optimiser step on ``inputs`` (global views, then any local crops); ``model`` is the method or
    its DDP / compiled wrapper; ``progress``: steps done / all steps, after this one. Returns the loss."""
    with autocast:
        loss = model(*inputs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.after_step(progress)
    return loss


def _end_epoch(run: Run, epoch: int, loss: float, seconds: float) -> None:
    """Recalibrate BatchNorm if asked (every rank), then on rank 0: the k-NN monitor, the epoch's record,
    the checkpoint, metrics and curves, and one line of progress."""
    cfg, env = run.cfg, run.env
    if cfg.bn_recalibrate:
        recalibrate_batchnorm(run.method.encoder, run.images, cfg.seed, env.rank, env.world_size)
    if not env.is_main:
        run.history.append({})
        return
    measured = _label_free(run, "monitor")
    if run.data.monitor is not None:
        monitor = evaluate(run.method.encoder, *run.data.monitor, linear=False, device=env.device)
        measured |= {"knn_accuracy": monitor["knn5"], "weighted_knn_accuracy": monitor["knn200"]}
    images = steps_per_epoch_images(len(run.images), cfg)
    record = {"epoch": epoch + 1, "loss": loss, "lr": run.optimizer.param_groups[0]["lr"], **measured,
              "images_per_s": images / seconds, "seconds": seconds,
              "cpu_seconds": time.process_time() - run.started[0], "wall_seconds": time.perf_counter() - run.started[1],
              "train_flops": sum(run.flops[:epoch + 1])}
    run.history.append(record)
    save_checkpoint(run.out / CHECKPOINT, run.method, run.optimizer,
                    {"config": asdict(cfg), "history": run.history, "dataset": run.data.dataset})
    write_jsonl(run.out / METRICS, run.history)
    _plot_curves(run.history, run.out / "curves.png", run.method.title)
    knn = (f"k-NN {100 * record['knn_accuracy']:.2f} % (weighted k=200: {100 * record['weighted_knn_accuracy']:.2f} %)"
           if "knn_accuracy" in record else f"alignment {record['alignment']:.3f}, uniformity {record['uniformity']:.3f}")
    print(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}, {knn}, RankMe {record['rankme']:.1f}, "
          f"{record['images_per_s']:.0f} img/s", flush=True)


def _label_free(run: Run, stage: str) -> dict[str, Any]:
    """RankMe, alignment and uniformity of the encoder on a fixed sample of the training images (and its protocol)."""
    sample, view_a, view_b = run.data.label_free_inputs(stage, run.cfg.image_size, run.cfg.seed)
    measured = label_free(run.method.encoder, sample, view_a, view_b, device=run.env.device)
    protocol = measured.pop("protocol")
    return measured | ({"protocol": protocol} if stage == "final" else {})


def _finish(run: Run) -> dict[str, Any]:
    """Rank 0: the final probes (model-card protocol) and the export (results.json, then the encoder's
    model.safetensors and config.json with provenance), written complete into a staging folder first; only
    then does an earlier export move to previous/<n>/ and the new one take its place (renames: a full disk
    cannot stop them half-way, and until then the run loads as it did)."""
    cfg, env = run.cfg, run.env
    if not env.is_main:
        return {}
    stage = run.out / ".export"
    shutil.rmtree(stage, ignore_errors=True)  # a staging folder an interrupted export left
    stage.mkdir()
    measured = _label_free(run, "final")
    results = {"protocol": {}}
    if run.data.final is not None:
        bank, test = run.data.final
        results = evaluate(run.method.encoder, bank, test, device=env.device)
        results.update({"train_images": len(bank), "test_images": len(test)})
    results["protocol"]["label_free"] = measured.pop("protocol")
    results.update({**measured, "epochs": cfg.epochs,
                    "environment": {"torch": torch.__version__, "device": str(env.device), "seed": cfg.seed,
                                    "processes": env.world_size, "precision": run.precision}})
    write_json(stage / RESULTS, results)
    provenance = run_provenance(run.history, env.device, env.world_size, read_launches(run.out), run.precision,
                                sum(run.flops))
    info = {"method": cfg.method, "method_title": run.method.title, "dataset": run.data.dataset["name"],
            "data": run.data.dataset, "epochs": cfg.epochs,
            "results": results, "training": public_training_config(asdict(cfg)), "provenance": provenance,
            "ssl_zoo_version": zoo.__version__}
    encoder = run.method.encoder.to(memory_format=torch.contiguous_format)
    Encoder(run.encoder_config, encoder).save_pretrained(stage, info=info)
    keep_previous_export(run.out)
    for name in EXPORT_FILES:  # config.json last: a run with one is finished
        (stage / name).rename(run.out / name)
    stage.rmdir()
    probes = (f"k-NN (k=5) {100 * results['knn5']:.2f} %, weighted k-NN (k=200) {100 * results['knn200']:.2f} %, "
              f"linear {100 * results['linear']:.2f} %, " if "knn5" in results else "")
    print(f"{cfg.method}: {probes}RankMe {results['rankme']:.1f}, alignment {results['alignment']:.3f}, uniformity "
          f"{results['uniformity']:.3f} -> {run.out}", flush=True)
    return results


def epoch_batches(num_images: int, cfg: TrainConfig, epoch: int, rank: int = 0, world_size: int = 1,
                  device: torch.device | None = None) -> list[torch.Tensor]:
    """This rank's image indices (on ``device``) for each step of ``epoch``: a permutation seeded by
    (seed, epoch) when ``cfg.shuffle`` (so a resumed run replays it), else dataset order; the partial
    last batch is dropped when ``cfg.drop_last``. Each global batch is split into equal contiguous
    parts, one per rank. One copy to the device per epoch: no host-device sync inside the epoch."""
    order = (torch.randperm(num_images, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
             if cfg.shuffle else torch.arange(num_images)).to(device)
    batches = list(order.split(cfg.batch_size))
    if cfg.drop_last and len(batches[-1]) < cfg.batch_size:
        batches.pop()
    return [b.view(world_size, -1)[rank] for b in batches]


def steps_per_epoch_images(num_images: int, cfg: TrainConfig) -> int:
    """Images trained on per epoch (all of them, less a dropped partial batch)."""
    return num_images - num_images % cfg.batch_size if cfg.drop_last else num_images


def _sizes(data: TrainData) -> DataSizes:
    """The images a run of ``data`` trains on per epoch and evaluates per epoch and at its end."""
    def probes(pair: tuple | None) -> int:
        return sum(map(len, pair)) if pair else 0

    monitor, final = (images + 2 * pairs for images, pairs in map(data.label_free_sizes, ("monitor", "final")))
    return DataSizes(len(data.images), probes(data.monitor) + monitor, probes(data.final) + final)


def _announce(cfg: TrainConfig, method: SSLMethod, env: DistEnv, precision: str, flops: list[int],
              first_epoch: int, sizes: DataSizes) -> None:
    """Time a few steps on a copy of ``method`` and print the projected run time, warning when it is long
    or when bf16 is emulated on this CPU (then with both precisions' measured speeds)."""
    batch = cfg.batch_size // env.world_size

    def seconds(p: str) -> float:
        return measure_step_seconds(method, cfg, env.device, p, batch, first_epoch, train_step)

    eval_rate = measure_eval_images_per_s(method.encoder, env.device, cfg.image_size)
    projection = project(cfg, flops, seconds(precision), first_epoch, eval_rate, sizes)
    print(start_report(cfg, projection, precision, env.device, cfg.epochs - first_epoch, sum(flops[first_epoch:])),
          flush=True)
    warnings = [long_run_warning(cfg, projection, env.device, sizes.train)]
    if env.device.type == "cpu" and precision == "bf16":
        fp32 = project(cfg, flops, seconds("fp32"), first_epoch, projection.eval_images_per_s, sizes)
        warnings.append(emulated_bf16_warning(projection.views_per_s, fp32.views_per_s))
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr, flush=True)


def _write_records(run: Run, action: str) -> None:
    """The run's config, its metrics so far, and this launch appended to launches.jsonl."""
    run.out.mkdir(parents=True, exist_ok=True)
    write_json(run.out / TRAIN_CONFIG, asdict(run.cfg))
    write_jsonl(run.out / METRICS, run.history)
    if run.data.failures:
        write_jsonl(run.out / UNUSABLE, run.data.failures)
        print(f"{len(run.data.failures)} file(s) of {run.cfg.data} could not be used (each with its reason in "
              f"{run.out / UNUSABLE}); training on the other {len(run.data.images):,}", file=sys.stderr, flush=True)
    launches = read_launches(run.out) if action != "start" else []
    write_jsonl(run.out / LAUNCHES, launches + [launch_record(action, len(run.history), local_flags())])


def _check_batching(num_images: int, cfg: TrainConfig, world_size: int) -> None:
    partial = 0 if cfg.drop_last else num_images % cfg.batch_size
    if cfg.batch_size % world_size or num_images < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the {world_size} processes and not "
                         f"exceed the {num_images} training images")
    if partial and (partial < 2 or partial % world_size):
        raise ValueError(f"the last batch would hold {partial} images; with --drop-last false it must hold at least 2 "
                         f"and divide by the {world_size} processes: pass --drop-last true or another --batch-size")


def _check_loss(run: Run, value: float, epoch: int, step: int) -> None:
    """Stop the run on a NaN/inf loss or one EXPLODE_FACTOR times the first logged one."""
    run.first_loss = value if run.first_loss is None else run.first_loss
    if not math.isfinite(value) or abs(value) > EXPLODE_FACTOR * max(abs(run.first_loss), 1e-8):
        raise TrainingDiverged(
            f"loss {value} at epoch {epoch + 1}, step {step} (first logged loss {run.first_loss:.4g}): training "
            f"diverged. The last good checkpoint (if any) is kept in {run.out / CHECKPOINT}; lower --lr or raise "
            f"--warmup-epochs.")


def _plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Loss, the k-NN monitor (with labels) and RankMe (always) against epochs, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.io import atomic_write

    epochs = [r["epoch"] for r in history]
    panels = [("loss", "training loss", "loss", "tab:blue")]
    if "knn_accuracy" in history[-1]:
        panels.append(("knn_accuracy", "k-NN accuracy (%)", "k-NN (k=5, eval subset)", "tab:green"))
    if "rankme" in history[-1]:
        panels.append(("rankme", "RankMe (effective rank)", "RankMe (label-free)", "tab:purple"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (key, label, name, color) in zip(axes[0], panels):
        scale = 100 if key == "knn_accuracy" else 1
        ax.plot(epochs, [scale * r[key] if key in r else float("nan") for r in history], marker="o", color=color)
        ax.set(xlabel="epoch", ylabel=label, title=f"{title}: {name}")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
