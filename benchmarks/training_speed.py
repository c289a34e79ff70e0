"""Augmentation and training-step throughput vs the seed's pipeline, side by side in one run.

    python benchmarks/training_speed.py

Augmentation: view pairs/s from real CIFAR-10 uint8 images, for the seed's torchvision PIL
pipeline in a 2-worker DataLoader, kornia's AugmentationSequential (if installed) and
training.augment.BatchAugment. Step: SimCLR steps/s on the same model and batch, seed-style
(PIL loader, two forward passes) vs ours (batched augmentation, both views in one pass), in fp32 and
bf16, on this CPU's own kernels and again restricted to AVX2 (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2, in a subprocess): the kernels an AVX2-only CPU such as AMD Zen 3 runs, where
bf16 is emulated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from report import AVX2_ONLY, write_report
from training.augment import BatchAugment, seed_pil_pipeline
from training.hardware import cpu_summary
from training.losses import nt_xent
from training.methods import SimCLR
from zoo import build_encoder, load_cifar10

WORKERS = 2


class SeedPairs(Dataset):
    """The seed's dataset: two independently augmented PIL views per image."""

    def __init__(self, images) -> None:
        self.images, self.transform = images, seed_pil_pipeline()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        im = Image.fromarray(self.images[i])
        return self.transform(im), self.transform(im)


def seed_loader(images, batch: int) -> DataLoader:
    return DataLoader(SeedPairs(images), batch_size=batch, shuffle=True, num_workers=WORKERS, drop_last=True,
                      persistent_workers=True)


def pairs_per_s(fn, pairs: int, repeats: int = 2) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return repeats * pairs / (time.perf_counter() - start)


def kornia_augment():
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    return K.AugmentationSequential(
        K.RandomResizedCrop((32, 32), scale=(0.2, 1.0)), K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=0.5))


def augmentation_rows(images) -> list[dict]:
    n, batch = 4096, 256
    uint8 = torch.from_numpy(images[:n])
    loader = seed_loader(images[:n], batch)
    ours = BatchAugment()
    variants = [("seed: torchvision PIL per sample, DataLoader 2 workers", lambda: [None for _ in loader])]
    k = kornia_augment()
    if k is not None:
        floats = uint8.permute(0, 3, 1, 2).float() / 255
        variants.append(("kornia AugmentationSequential, batched", lambda: [
            k(torch.cat([floats[i:i + batch]] * 2)) for i in range(0, n, batch)]))
    variants.append(("zoo BatchAugment, batched", lambda: [ours(torch.cat([uint8[i:i + batch]] * 2))
                                                           for i in range(0, n, batch)]))
    rows, base = [], None
    for name, fn in variants:
        rate = pairs_per_s(fn, n)
        base = base or rate
        rows.append({"pipeline": name, "pairs/s": round(rate), "vs seed": f"{rate / base:.1f}x"})
    return rows


BATCH, STEPS = 128, 8


def step_rates(images, seed_style: bool) -> dict[str, float]:
    """Steps/s of the seed-style loop (if ``seed_style``) and of ours in fp32 and in bf16."""
    torch.manual_seed(0)
    model = SimCLR(build_encoder({"architecture": "resnet18_cifar", "kwargs": {"width": 16}}), 512, 128, views="joint")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def seed_epoch():  # the notebook's loop: PIL views from workers, one forward per view
        for x1, x2 in seed_loader(images[: BATCH * STEPS], BATCH):
            z1, z2 = model.projector(model.encoder(x1)), model.projector(model.encoder(x2))
            loss = nt_xent(z1, z2, 0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()

    uint8, augment = torch.from_numpy(images[: BATCH * STEPS]), BatchAugment()

    def our_epoch(bf16: bool):  # training.loop's step: batched augmentation, both views in one forward
        fmt = torch.channels_last if bf16 else torch.contiguous_format
        model.to(memory_format=fmt)
        for i in range(STEPS):
            x = uint8[i * BATCH:(i + 1) * BATCH]
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = model(augment(torch.cat([x, x])).contiguous(memory_format=fmt))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    variants = ([("seed", seed_epoch)] if seed_style else []) + [("fp32", lambda: our_epoch(False)),
                                                                  ("bf16", lambda: our_epoch(True))]
    return {name: pairs_per_s(fn, BATCH * STEPS, repeats=1) / BATCH for name, fn in variants}


def step_rows(images) -> list[dict]:
    native = step_rates(images, seed_style=True)
    restricted = subprocess.run([sys.executable, __file__, "--step-rates-json"], env={**os.environ, **AVX2_ONLY},
                                capture_output=True, text=True, check=True)
    avx2 = json.loads(restricted.stdout.splitlines()[-1])
    here = cpu_summary()
    labels = [(here, "seed", "seed-style: PIL DataLoader, two forwards", native),
              (here, "fp32", "zoo, fp32", native), (here, "bf16", "zoo, bf16 autocast + channels_last", native),
              (avx2["cpu"], "fp32", "zoo, fp32", avx2), (avx2["cpu"], "bf16", "zoo, bf16 autocast + channels_last", avx2)]
    base = native["seed"]
    return [{"CPU kernels": cpu, "step": name, "steps/s": round(rates[key], 3),
             "views/s": round(2 * BATCH * rates[key], 1), "vs seed": f"{rates[key] / base:.2f}x"}
            for cpu, key, name, rates in labels]


def main() -> None:
    images = load_cifar10("train").images
    torch.set_num_threads(2)
    if sys.argv[1:] == ["--step-rates-json"]:
        print(json.dumps({**step_rates(images, seed_style=False), "cpu": cpu_summary() + " [AVX2 kernels only]"}))
        return
    print(write_report("augmentation", "SimCLR augmentation throughput, real CIFAR-10, 2 CPU cores",
                       augmentation_rows(images), "Command: `python benchmarks/training_speed.py`."))
    print(write_report("step", "SimCLR training step, width-16 CIFAR ResNet-18, batch 128, 2 CPU cores",
                       step_rows(images), "The AVX2 rows run this machine restricted to AVX2 kernels "
                       "(ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2): what an AVX2-only CPU such as AMD Zen 3 "
                       "runs; there bf16 is emulated, which is why `--precision auto` picks fp32 on such CPUs. "
                       "Command: `python benchmarks/training_speed.py`."))


if __name__ == "__main__":
    main()
