"""What the CPU can do, asked of torch: which precision a run gets and how the machine is named in records.

CPUs differ in the one feature that decides the CPU recipe's speed: native bf16 (AVX512-BF16 or AMX).
Where it is missing, bf16 autocast is emulated and about 10x slower than fp32 (AMD Zen 3: 45 against
464 views/s for a width-16 SimCLR step), so ``--precision auto`` chooses by hardware.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

RESOLVED_PRECISIONS = ("bf16", "fp32")


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``), None when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_isa() -> dict[str, Any]:
    """The instruction-set facts that decide CPU training speed, as torch sees them: the kernels ATen
    dispatches to (``capability``: DEFAULT, AVX2, AVX512, ...) and the CPU's avx2 / avx512 / avx512_bf16 /
    amx support (cpuinfo, through ``torch.cpu``)."""
    cpu = torch.cpu
    return {"capability": torch.backends.cpu.get_cpu_capability(), "avx2": cpu._is_avx2_supported(),
            "avx512": cpu._is_avx512_supported(), "avx512_bf16": cpu._is_avx512_bf16_supported(),
            "amx": cpu._is_amx_tile_supported()}


def native_bf16(isa: dict[str, Any] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX) and ATen uses its AVX-512 kernels
    (``ATEN_CPU_CAPABILITY=avx2`` turns them off, and with them the fast bf16 path)."""
    isa = cpu_isa() if isa is None else isa
    return bool(isa["avx512_bf16"] or isa["amx"]) and isa["capability"] == "AVX512"


def resolve_precision(precision: str, device: torch.device) -> str:
    """What ``--precision`` means on ``device``: ``auto`` is bf16 on CUDA and on CPUs with native bf16,
    fp32 elsewhere; ``bf16`` and ``fp32`` are taken as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and native_bf16() else "fp32"


def memory_format(precision: str) -> torch.memory_format:
    """The training step's memory format: channels_last in bf16, contiguous in fp32. (fp32 channels_last is
    1.4-1.5x faster on CPU, benchmarks/cpu_kernels.py, but torch's CPU channels_last BatchNorm sums its batch
    statistics less exactly: 0.9-3.5e-5 from float64 against 0.5-1e-6 contiguous at 128x64x16x16, the likely reason
    a torchrun run moves from its one-process twin by 3e-4 of the first loss, past tests/test_distributed.py's 1e-4.)"""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def describe_cpu() -> dict[str, Any]:
    """The CPU as records name it: model, cores, ISA facts and whether bf16 is native."""
    isa = cpu_isa()
    return {"model": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), **isa,
            "native_bf16": native_bf16(isa)}


def cpu_summary(info: dict[str, Any] | None = None) -> str:
    """One line for tables and logs: ``AMD EPYC (AVX512, native bf16: avx512_bf16)``."""
    info = describe_cpu() if info is None else info
    native = [flag for flag in ("avx512_bf16", "amx") if info.get(flag)]
    bf16 = f"native bf16: {'+'.join(native)}" if info.get("native_bf16") else "no native bf16 (emulated)"
    return f"{info.get('model') or 'unknown CPU'} ({info.get('capability')}, {bf16})"
