"""torchrun's environment: join the process group it started, for training and for ``ssl-zoo embed``."""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist


def join_process_group(timeout: timedelta | None = None, backend: str = "gloo") -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the group) under torchrun (``WORLD_SIZE`` > 1), else
    (0, 1, False); a group already started in this process is used as it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, False
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
    return dist.get_rank(), dist.get_world_size(), started
