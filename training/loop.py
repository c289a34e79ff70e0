"""One training loop for all methods: data, augmentation, AMP, schedule, checkpoints, evaluation."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import zoo
from zoo import Encoder, EncoderConfig, build_encoder, load_cifar10
from zoo.probes import evaluate
from zoo.io import atomic_write

from .augment import BatchAugment
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import all_reduce_sum, convert_batchnorm, init_distributed
from .methods import METHODS

CHECKPOINT = "checkpoint.safetensors"
METHOD_PARAM = {"simclr": "temperature", "byol": "ema", "barlowtwins": "alpha"}
EXPLODE_FACTOR = 100.0  # a logged loss this many times the first one counts as exploded


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def build_method(cfg: TrainConfig) -> tuple[torch.nn.Module, EncoderConfig]:
    encoder_config = EncoderConfig("resnet18_cifar", {"width": cfg.width})
    encoder = build_encoder(encoder_config)
    param = METHOD_PARAM[cfg.method]
    method = METHODS[cfg.method](encoder, cfg.proj_hidden, cfg.proj_out, **{param: getattr(cfg, param)})
    return method, encoder_config


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.method``; write the run directory ``out``; return the final results."""
    cfg, out = cfg.resolved(), Path(out)
    env = init_distributed(cfg.device)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    torch.manual_seed(cfg.seed)
    dev = env.device
    train_set = load_cifar10("train", cfg.data)
    test_set = load_cifar10("test", cfg.data)
    data = train_set.per_class(cfg.train_per_class) if cfg.train_per_class else train_set
    images = torch.from_numpy(data.images).to(dev)  # uint8 (N, 32, 32, 3), decoded once
    eval_bank, eval_test = train_set.per_class(cfg.eval_train_per_class), test_set.per_class(cfg.eval_test_per_class)

    method, encoder_config = build_method(cfg)
    if env.world_size > 1:
        method = convert_batchnorm(method)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
    memory_format = torch.channels_last if bf16 else torch.contiguous_format  # fp32 CPU convs: slower
    method.to(dev, memory_format=memory_format)
    model = DistributedDataParallel(method) if env.world_size > 1 else method
    step_fn = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    local_batch = cfg.batch_size // env.world_size
    steps = len(images) // cfg.batch_size
    if steps == 0 or local_batch * env.world_size != cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} must divide by the {env.world_size} processes and not "
                         f"exceed the {len(images)} training images")
    total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps

    history: list[dict[str, Any]] = []
    if resume:
        progress = load_checkpoint(ckpt_path, method, optimizer)
        if progress["config"] != asdict(cfg):
            raise ValueError(f"--resume: the configuration differs from the run in {out}; "
                             f"saved: {progress['config']}")
        history = progress["history"]
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "train_config.json", asdict(cfg))
        _write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    augment, autocast = BatchAugment(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16)
    first_loss = history[0]["loss"] if history else None

    for epoch in range(len(history), cfg.epochs):
        # Data order and augmentation are seeded per epoch: a resumed run replays them exactly.
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        order = order[: steps * cfg.batch_size].view(steps, cfg.batch_size)
        order = order[:, env.rank * local_batch:(env.rank + 1) * local_batch].to(dev)
        aug_gen = torch.Generator(dev).manual_seed((cfg.seed * 1000 + epoch) * 64 + env.rank)
        method.train()
        loss_sum, start = torch.zeros((), device=dev), time.perf_counter()
        bar = tqdm(range(steps), desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not env.is_main,
                   leave=False)
        for step in bar:
            x = images[order[step]]
            views = augment(torch.cat([x, x]), aug_gen).contiguous(memory_format=memory_format)
            lr = lr_at(epoch * steps + step, total, warmup, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss = step_fn(views)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.after_step()
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
            knn = evaluate(method.encoder, eval_bank, eval_test, weighted_knn=False, linear=False, device=dev)["knn5"]
            record = {"epoch": epoch + 1, "loss": epoch_loss, "lr": lr, "knn_accuracy": knn,
                      "images_per_s": steps * cfg.batch_size / seconds, "seconds": seconds}
            history.append(record)
            save_checkpoint(ckpt_path, method, optimizer, {"config": asdict(cfg), "history": history})
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            _plot_curves(history, out / "curves.png", cfg.method)
            print(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}: loss {epoch_loss:.4f}, k-NN {100 * knn:.2f} %, "
                  f"{record['images_per_s']:.0f} img/s", flush=True)
        else:
            history.append({})
    return _finish(cfg, method, encoder_config, train_set, test_set, history, out, env)


def _finish(cfg, method, encoder_config, train_set, test_set, history, out: Path, env) -> dict[str, Any]:
    if not env.is_main:
        return {}
    bank = train_set.per_class(cfg.final_train_per_class) if cfg.final_train_per_class else train_set
    results = evaluate(method.encoder, bank, test_set, device=env.device)
    results.update({"train_images": len(bank), "test_images": len(test_set), "epochs": cfg.epochs,
                    "environment": {"torch": torch.__version__, "device": str(env.device), "seed": cfg.seed,
                                    "processes": env.world_size}})
    _write_json(out / "results.json", results)
    info = {"method": cfg.method, "dataset": "cifar10", "epochs": cfg.epochs, "results": results,
            "training": asdict(cfg), "ssl_zoo_version": zoo.__version__}
    Encoder(encoder_config, method.encoder.to(memory_format=torch.contiguous_format)).save_pretrained(out, info=info)
    print(f"{cfg.method}: k-NN (k=5) {100 * results['knn5']:.2f} %, weighted k-NN (k=200) "
          f"{100 * results['knn200']:.2f} %, linear {100 * results['linear']:.2f} % -> {out}", flush=True)
    return results


def _check_loss(value: float, first: float, epoch: int, step: int, out: Path) -> None:
    if not math.isfinite(value) or abs(value) > EXPLODE_FACTOR * max(abs(first), 1e-8):
        raise TrainingDiverged(
            f"loss {value} at epoch {epoch + 1}, step {step} (first logged loss {first:.4g}): training diverged. "
            f"The last good checkpoint (if any) is kept in {out / CHECKPOINT}; lower --lr or raise --warmup-epochs.")


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=2) + "\n")


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
