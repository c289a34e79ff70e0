"""BatchNorm statistics recomputed at the evaluation resolution (FixRes; Touvron et al., 2019).

Training on small or heavily cropped views leaves running statistics that do not match unaugmented
32-px images; recomputing them costs a few forward passes and changes nothing else in the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.data import to_float_nchw

BATCHES, BATCH_SIZE = 20, 256  # 5,120 images: the statistics of this many are within ~1 % of the full set's


@torch.no_grad()
def recalibrate_batchnorm(encoder: nn.Module, images: torch.Tensor, seed: int, rank: int = 0,
                          world_size: int = 1) -> None:
    """Replace the running mean/var of every BatchNorm layer of ``encoder`` by their average over BATCHES
    batches of unaugmented uint8 ``images`` (N, H, W, 3), the batches drawn with ``seed``. Under torchrun
    every rank calls it with the same arguments and takes its part of each batch (GlobalBatchNorm)."""
    layers = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [layer.momentum for layer in layers]
    was_training = encoder.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches below
    encoder.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    size = min(BATCH_SIZE, len(images)) // world_size * world_size
    for start in range(0, min(BATCHES * size, len(order) - size + 1), size):
        part = order[start:start + size].view(world_size, -1)[rank].to(images.device)
        encoder(to_float_nchw(images[part]))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    encoder.train(was_training)
