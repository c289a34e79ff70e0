"""One training loop for all methods: data, augmentation, AMP, schedule, checkpoints, evaluation."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import zoo
from zoo import Encoder, EncoderConfig, ImageArrays, build_encoder, load_cifar10
from zoo.io import atomic_write, write_json
from zoo.model import CONFIG_NAME, WEIGHTS_NAME
from zoo.probes import evaluate

from .augment import BatchAugment
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import all_reduce_sum, convert_batchnorm, init_distributed
from .estimate import (emulated_bf16_warning, long_run_warning, measure_eval_images_per_s, measure_views_per_s,
                       project, run_flops, start_report)
from .hardware import resolve_precision
from .methods import METHODS, SSLMethod
from .optim import build_optimizer, lr_at
from .provenance import LAUNCHES, launch_record, read_launches, run_provenance

CHECKPOINT = "checkpoint.safetensors"
EXPORT_FILES = ("results.json", WEIGHTS_NAME, CONFIG_NAME)  # the final evaluation and export, config.json last
RUN_FILES = ("train_config.json", "metrics.jsonl", CHECKPOINT, *EXPORT_FILES)
EXPLODE_FACTOR = 100.0  # a logged loss this many times the first one counts as exploded


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


def build_method(cfg: TrainConfig) -> tuple[SSLMethod, EncoderConfig]:
    """The method of ``cfg`` (heads and all) on a fresh CIFAR ResNet-18, and the encoder's config."""
    encoder_config = EncoderConfig("resnet18_cifar", {"width": cfg.width})
    return METHODS[cfg.method].from_config(build_encoder(encoder_config), cfg), encoder_config


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


def _check_batching(num_images: int, cfg: TrainConfig, world_size: int) -> None:
    partial = 0 if cfg.drop_last else num_images % cfg.batch_size
    if cfg.batch_size % world_size or num_images < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the {world_size} processes and not "
                         f"exceed the {num_images} training images")
    if partial and (partial < 2 or partial % world_size):
        raise ValueError(f"the last batch would hold {partial} images; with --drop-last false it must hold at least 2 "
                         f"and divide by the {world_size} processes: pass --drop-last true or another --batch-size")


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, re_export: bool = False) -> dict[str, Any]:
    """Train ``cfg.method`` (resolved when it was built); write the run directory ``out``; return the final
    results. ``resume`` continues the run in ``out`` (a finished one is left as it is); ``re_export``
    evaluates and exports a finished run again from its checkpoint, keeping the previous export."""
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    out = Path(out)
    env = init_distributed(cfg.device)
    resume = resume or re_export
    state = _run_state(out, cfg, resume)
    if state == "finished" and not re_export:
        if env.is_main:
            print(f"{out} holds a finished {cfg.method} run: nothing to do (its encoder and results are unchanged). "
                  f"Pass --re-export to evaluate and export it again from its checkpoint.", flush=True)
        return json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    resume = state != "new"
    torch.manual_seed(cfg.seed)
    dev = env.device
    method, encoder_config = build_method(cfg)
    precision = resolve_precision(cfg.precision, dev)
    epochs_left = cfg.epochs - (len(_read_history(out)) if resume else 0)
    flops = run_flops(cfg, method)
    if env.is_main and epochs_left > 0:
        _announce(cfg, method, dev, precision, cfg.batch_size // env.world_size, epochs_left, flops)
    train_set = load_cifar10("train", cfg.data)
    test_set = load_cifar10("test", cfg.data)
    images = torch.from_numpy(_subset(train_set, cfg.train_per_class).images).to(dev)  # uint8 (N, 32, 32, 3)
    eval_bank, eval_test = _subset(train_set, cfg.eval_train_per_class), _subset(test_set, cfg.eval_test_per_class)
    _check_batching(len(images), cfg, env.world_size)

    if env.world_size > 1:
        method = convert_batchnorm(method)
    bf16 = precision == "bf16"
    memory_format = torch.channels_last if bf16 else torch.contiguous_format  # fp32 CPU convs: slower
    method.to(dev, memory_format=memory_format)
    # DDP's constructor synchronises the ranks: every rank has checked the run directory before rank 0 writes.
    model = DistributedDataParallel(method) if env.world_size > 1 else method
    step_fn = torch.compile(model) if cfg.compile else model
    optimizer = build_optimizer(method, cfg)

    history: list[dict[str, Any]] = []
    if resume:
        progress = load_checkpoint(out / CHECKPOINT, method, optimizer)
        _check_same_run(progress["config"], cfg, out / CHECKPOINT)
        history = progress["history"]
    # Time already spent by the run before a resume (rank 0 keeps the totals in its history).
    cpu_start -= history[-1].get("cpu_seconds", 0.0) if history else 0.0
    wall_start -= history[-1].get("wall_seconds", 0.0) if history else 0.0
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", asdict(cfg))
        _write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        action = "re-export" if re_export else "resume" if resume else "start"
        launches = (read_launches(out) if resume else []) + [launch_record(action, len(history), _local_flags())]
        _write_text(out / LAUNCHES, "".join(json.dumps(r) + "\n" for r in launches))
    augment, autocast = BatchAugment(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16)
    first_loss = history[0]["loss"] if history else None

    for epoch in range(len(history), cfg.epochs):
        # Data order and augmentation are seeded per epoch: a resumed run replays them exactly.
        batches = epoch_batches(len(images), cfg, epoch, env.rank, env.world_size, dev)
        steps = len(batches)
        aug_gen = torch.Generator(dev).manual_seed((cfg.seed * 1000 + epoch) * 64)  # the same on every rank
        method.train()
        loss_sum, start = torch.zeros((), device=dev), time.perf_counter()
        bar = tqdm(batches, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not env.is_main,
                   leave=False)
        for step, index in enumerate(bar):
            views = augment.two_views(images[index], aug_gen, env.rank, env.world_size)
            views = views.contiguous(memory_format=memory_format)
            lr = lr_at(cfg, epoch, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(step_fn, method, optimizer, views, autocast)
            loss_sum += loss.detach()
            if (step + 1) % cfg.log_every == 0:  # the only host-device sync inside an epoch
                value = loss.item()
                first_loss = first_loss if first_loss is not None else value
                _check_loss(value, first_loss, epoch, step, out)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{(step + 1) * cfg.batch_size / (time.perf_counter() - start):.0f}")
        epoch_loss = (all_reduce_sum(loss_sum) / (steps * env.world_size)).item()
        first_loss = first_loss if first_loss is not None else epoch_loss
        _check_loss(epoch_loss, first_loss, epoch, steps, out)
        seconds = time.perf_counter() - start
        if env.is_main:
            monitor = evaluate(method.encoder, eval_bank, eval_test, linear=False, device=dev)  # model-card k-NN protocol
            knn = monitor["knn5"]
            record = {"epoch": epoch + 1, "loss": epoch_loss, "lr": lr, "knn_accuracy": knn,
                      "weighted_knn_accuracy": monitor["knn200"],
                      "images_per_s": sum(len(b) for b in batches) * env.world_size / seconds, "seconds": seconds,
                      "cpu_seconds": time.process_time() - cpu_start, "wall_seconds": time.perf_counter() - wall_start}
            history.append(record)
            save_checkpoint(out / CHECKPOINT, method, optimizer, {"config": asdict(cfg), "history": history})
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            _plot_curves(history, out / "curves.png", method.title)
            print(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}: loss {epoch_loss:.4f}, k-NN {100 * knn:.2f} % "
                  f"(weighted k=200: {100 * monitor['knn200']:.2f} %), "
                  f"{record['images_per_s']:.0f} img/s", flush=True)
        else:
            history.append({})
    return _finish(cfg, method, encoder_config, train_set, test_set, history, out, env,
                   {"precision": precision, "train_flops": flops})


def train_step(model: torch.nn.Module, method: SSLMethod, optimizer: torch.optim.Optimizer, views: torch.Tensor,
               autocast: torch.autocast) -> torch.Tensor:
    """One optimiser step on ``views`` (``model``: the method, or its DDP / compiled wrapper); returns the loss."""
    with autocast:
        loss = model(views)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.after_step()
    return loss


def _announce(cfg: TrainConfig, method: SSLMethod, dev: torch.device, precision: str, batch_size: int,
              epochs_left: int, flops: int) -> None:
    """Time a few steps on a copy of ``method`` and print the projected run time, warning when it is long
    or when bf16 is emulated on this CPU (then with both precisions' measured speeds)."""
    views_per_s = measure_views_per_s(method, cfg, dev, precision, batch_size, train_step)
    projection = project(cfg, views_per_s, measure_eval_images_per_s(method.encoder, dev), epochs_left)
    print(start_report(cfg, projection, precision, dev, epochs_left, flops), flush=True)
    warnings = [long_run_warning(cfg, projection, dev)]
    if dev.type == "cpu" and precision == "bf16":
        fp32 = measure_views_per_s(method, cfg, dev, "fp32", batch_size, train_step)
        warnings.append(emulated_bf16_warning(views_per_s, fp32))
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr, flush=True)


def _read_history(out: Path) -> list[dict[str, Any]]:
    """The finished epochs recorded in ``out``'s metrics.jsonl (empty when there is none)."""
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _subset(data: ImageArrays, per_class: int | None) -> ImageArrays:
    return data.per_class(per_class) if per_class else data


def _finish(cfg, method, encoder_config, train_set, test_set, history, out: Path, env,
            compute: dict[str, Any]) -> dict[str, Any]:
    if not env.is_main:
        return {}
    from zoo.publish import public_training_config  # huggingface_hub: imported only when a run ends

    _keep_previous_export(out)
    bank = _subset(train_set, cfg.final_train_per_class)
    results = evaluate(method.encoder, bank, test_set, device=env.device)
    results.update({"train_images": len(bank), "test_images": len(test_set), "epochs": cfg.epochs,
                    "environment": {"torch": torch.__version__, "device": str(env.device), "seed": cfg.seed,
                                    "processes": env.world_size}})
    write_json(out / "results.json", results)
    info = {"method": cfg.method, "method_title": method.title, "dataset": "cifar10", "epochs": cfg.epochs,
            "results": results, "training": public_training_config(asdict(cfg)),
            "provenance": run_provenance(history, env.device, env.world_size, read_launches(out), **compute),
            "ssl_zoo_version": zoo.__version__}
    Encoder(encoder_config, method.encoder.to(memory_format=torch.contiguous_format)).save_pretrained(out, info=info)
    print(f"{cfg.method}: k-NN (k=5) {100 * results['knn5']:.2f} %, weighted k-NN (k=200) "
          f"{100 * results['knn200']:.2f} %, linear {100 * results['linear']:.2f} % -> {out}", flush=True)
    return results


def _run_state(out: Path, cfg: TrainConfig, resume: bool) -> str:
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
    if (saved := out / "train_config.json").is_file():
        try:
            saved_config = json.loads(saved.read_text())
        except ValueError as e:
            raise ValueError(f"--resume: {saved} is not valid JSON ({e}); restore it or train in another --out") from e
        _check_same_run(saved_config, cfg, saved)
    if (out / CONFIG_NAME).is_file():  # written last by _finish
        return "finished"
    if (out / CHECKPOINT).exists():
        return "resume"
    metrics = out / "metrics.jsonl"
    if not (metrics.is_file() and metrics.read_text().strip()):
        return "new"  # stopped before its first epoch ended: nothing to lose, start it again
    raise FileNotFoundError(f"--resume: {out / CHECKPOINT} is missing, so the run in {out} cannot continue (its "
                            f"metrics.jsonl records finished epochs); train again in another --out "
                            f"(nothing was changed)")


def _check_same_run(saved: dict[str, Any], cfg: TrainConfig, source: Path) -> None:
    """Refuse to resume the run recorded in ``source`` with another method or configuration."""
    if saved.get("method") != cfg.method:
        raise ValueError(f"--resume: {source} records a {saved.get('method')!r} run but the command trains "
                         f"{cfg.method!r}: resume it with `ssl-zoo train {saved.get('method')} --resume`, or train "
                         f"{cfg.method} in another --out (nothing was changed)")
    if saved != asdict(cfg):
        changed = ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in asdict(cfg).items() if saved.get(k) != v)
        raise ValueError(f"--resume: the configuration differs from the run's ({source}): {changed}. Resume with "
                         f"the run's settings (--config {source.parent / 'train_config.json'}), or train in another "
                         f"--out (nothing was changed)")


def _keep_previous_export(out: Path) -> None:
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


def _check_loss(value: float, first: float, epoch: int, step: int, out: Path) -> None:
    if not math.isfinite(value) or abs(value) > EXPLODE_FACTOR * max(abs(first), 1e-8):
        raise TrainingDiverged(
            f"loss {value} at epoch {epoch + 1}, step {step} (first logged loss {first:.4g}): training diverged. "
            f"The last good checkpoint (if any) is kept in {out / CHECKPOINT}; lower --lr or raise --warmup-epochs.")


def _local_flags() -> tuple[str, ...]:
    """Flags whose values are machine-local (data path, device): left out of recorded commands."""
    from zoo.publish import LOCAL_KEYS  # huggingface_hub: imported by rank 0 only

    return tuple(f"--{k}" for k in LOCAL_KEYS)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, [r["loss"] for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title=f"{title}: loss")
    ax_knn.plot(epochs, [100 * r["knn_accuracy"] for r in history], marker="o", color="tab:green")
    ax_knn.set(xlabel="epoch", ylabel="k-NN accuracy (%)", title=f"{title}: k-NN (k=5, eval subset)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
