"""The inputs of one training step: two global views at the epoch's resolution, and the local crops."""

from __future__ import annotations

import torch

from .augment import AugmentConfig, BatchAugment
from .config import TrainConfig

RESOLUTION_STEP = 4  # progressive resolution moves in steps of this many pixels


def image_size_at(cfg: TrainConfig, epoch: int) -> int:
    """The global views' side in ``epoch`` (0-based): ``progressive_size`` growing linearly to ``image_size``
    over ``progressive_epochs`` epochs, in steps of RESOLUTION_STEP pixels; ``image_size`` after (or when off)."""
    if epoch >= cfg.progressive_epochs:
        return cfg.image_size
    size = cfg.progressive_size + (cfg.image_size - cfg.progressive_size) * epoch / cfg.progressive_epochs
    return min(cfg.image_size, max(cfg.progressive_size, RESOLUTION_STEP * round(size / RESOLUTION_STEP)))


class ViewMaker:
    """Callable: a rank's uint8 images -> the step's inputs, ``(views,)`` or ``(views, local_views)``,
    drawn for the global batch as one process would (``BatchAugment.views``)."""

    def __init__(self, cfg: TrainConfig, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.cfg, self.memory_format = cfg, memory_format
        self.local = (BatchAugment(AugmentConfig(size=cfg.local_size, scale=(cfg.local_scale_min,
                                                                             cfg.local_scale_max)))
                      if cfg.local_crops else None)

    def __call__(self, images: torch.Tensor, generator: torch.Generator, epoch: int, rank: int = 0,
                 world_size: int = 1) -> tuple[torch.Tensor, ...]:
        views = BatchAugment(AugmentConfig(size=image_size_at(self.cfg, epoch))).views(images, generator, 2, rank,
                                                                                         world_size)
        inputs = (views,)
        if self.local is not None:
            inputs += (self.local.views(images, generator, self.cfg.local_crops, rank, world_size),)
        return tuple(x.contiguous(memory_format=self.memory_format) for x in inputs)

    def shapes(self, batch_size: int, epoch: int) -> list[tuple[int, ...]]:
        """The shapes of the step's inputs for a global batch of ``batch_size`` images in ``epoch``."""
        size = image_size_at(self.cfg, epoch)
        shapes = [(2 * batch_size, 3, size, size)]
        if self.local is not None:
            shapes.append((self.cfg.local_crops * batch_size, 3, self.cfg.local_size, self.cfg.local_size))
        return shapes
