"""The training step's kernels on this CPU (issue #23): memory format, precision and torch.compile side by
side, and which oneDNN implementation runs each convolution.

    python benchmarks/cpu_kernels.py

Step: the loop's own ``train_step`` on the `cpu` preset's SimCLR (width-16 CIFAR ResNet-18, batch 256,
views drawn by the loop's ``ViewMaker`` from real CIFAR-10 images), in fp32 and bf16 autocast, contiguous
and channels_last, eager and ``torch.compile``; several rounds on different images, the minimum reported.
torch.compile's first step (the compilation) is timed apart, and the table gives the steps after which it
pays for itself. Kernels: a subprocess runs steps under ``ONEDNN_VERBOSE=1`` and lists each executed
convolution / matmul primitive by implementation; a ``ref`` (reference, unvectorised) or ``gemm``
(im2col) implementation would be a slow fallback. The aten convolution ops come from torch.profiler.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import torch
from report import AVX2_ONLY, write_report

from training.config import build_config
from training.hardware import cpu_summary
from training.loop import build_method, train_step
from training.optim import build_optimizer
from training.views import ViewMaker
from zoo import load_cifar10

VARIANTS = [  # (name, precision, memory format, compiled)
    ("fp32, contiguous", "fp32", torch.contiguous_format, False),
    ("fp32, channels_last", "fp32", torch.channels_last, False),
    ("bf16 autocast, contiguous", "bf16", torch.contiguous_format, False),
    ("bf16 autocast, channels_last (the loop's choice)", "bf16", torch.channels_last, False),
    ("bf16 autocast, channels_last, torch.compile", "bf16", torch.channels_last, True),
]


class Step:
    """The loop's SimCLR step under one variant, on batches drawn from ``images``."""

    def __init__(self, images: torch.Tensor, precision: str, memory_format: torch.memory_format, compiled: bool,
                 batch: int) -> None:
        self.cfg = build_config("simclr", "cpu", None, {"batch_size": batch})
        torch.manual_seed(0)
        self.method = build_method(self.cfg)[0].to(memory_format=memory_format)
        self.model = torch.compile(self.method) if compiled else self.method
        self.optimizer = build_optimizer(self.method, self.cfg)
        self.autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
        self.views, self.images, self.batch = ViewMaker(self.cfg, memory_format), images, batch
        self.generator = torch.Generator().manual_seed(0)

    def run(self, first: int, steps: int) -> float:
        """Seconds for ``steps`` steps on the batches starting at batch ``first``."""
        start = time.perf_counter()
        for i in range(first, first + steps):
            inputs = self.views(self.images[i * self.batch:(i + 1) * self.batch], self.generator, 0)
            train_step(self.model, self.method, self.optimizer, inputs, self.autocast, 0.5)
        return time.perf_counter() - start


def step_rows(images: torch.Tensor, batch: int, steps: int, rounds: int, variants: list[tuple]) -> list[dict]:
    """Each variant's views/s (minimum over rounds on different batches) and torch.compile's start-up."""
    rows, eager_rate, kernels = [], None, cpu_summary() + (" [AVX2 kernels only]" if AVX2_ONLY.items() <=
                                                            os.environ.items() else "")
    for name, precision, memory_format, compiled in variants:
        step = Step(images, precision, memory_format, compiled, batch)
        first_step = step.run(0, 1)  # warm-up; for torch.compile, the compilation
        rates = [steps * 2 * batch / step.run(1 + r * steps, steps) for r in range(rounds)]
        rate = min(rates)
        row = {"CPU kernels": kernels, "step": name, "views/s (min)": round(rate, 1),
               "views/s (max)": round(max(rates), 1), "first step s": round(first_step, 1), "pays off after": "-"}
        if compiled and eager_rate:
            saved = 2 * batch / eager_rate - 2 * batch / rate  # seconds saved per step
            row["pays off after"] = f"{first_step / saved:.0f} steps" if saved > 0 else "never (slower)"
        if "loop's choice" in name:
            eager_rate = rate
        rows.append(row)
        print(row, flush=True)
    return rows


def verbose_primitives(precision: str, batch: int) -> list[dict]:
    """Run two steps in a subprocess under ONEDNN_VERBOSE=1; executed conv / matmul primitives by implementation."""
    out = subprocess.run([sys.executable, __file__, "--batch", str(batch), "--one-step", precision],
                         env={**os.environ, "ONEDNN_VERBOSE": "1"}, capture_output=True, text=True, check=True).stdout
    calls: dict[tuple, list[float]] = collections.defaultdict(list)
    for line in out.split("---measure---", 1)[-1].splitlines():
        fields = line.split(",")
        if line.startswith("onednn_verbose") and "exec" in fields and fields[5] in ("convolution", "matmul",
                                                                                    "inner_product"):
            calls[(fields[5], fields[7], fields[6])].append(float(fields[-1]))
    return [{"precision": precision, "primitive": kind, "pass": prop, "implementation": impl, "calls": len(ms),
             "ms": round(sum(ms), 1), "fallback": "yes" if impl.startswith(("ref", "gemm")) else "no"}
            for (kind, prop, impl), ms in sorted(calls.items())]


def aten_convolutions(images: torch.Tensor, batch: int) -> dict[str, int]:
    """The aten convolution ops one bf16 channels_last step calls (mkldnn_convolution is oneDNN)."""
    step = Step(images, "bf16", torch.channels_last, False, batch)
    step.run(0, 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step.run(1, 1)
    return {e.key: e.count for e in prof.key_averages() if "conv" in e.key and e.key.startswith("aten::")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fp32-rows-json", action="store_true", help="(internal) print the fp32 rows as JSON")
    parser.add_argument("--one-step", choices=("bf16", "fp32"), help="(internal) a warm-up step, ---measure---, a step")
    args = parser.parse_args()
    torch.set_num_threads(2)
    needed = (1 + args.rounds * args.steps) * args.batch
    images = torch.from_numpy(load_cifar10("train").images[:needed])
    if args.one_step:
        step = Step(images, args.one_step, torch.channels_last, False, args.batch)
        step.run(0, 1)
        print("---measure---", flush=True)
        return step.run(1, 1)
    fp32 = [v for v in VARIANTS if v[1] == "fp32"]
    if args.fp32_rows_json:
        return print(json.dumps(step_rows(images, args.batch, args.steps, args.rounds, fp32)))
    rows = step_rows(images, args.batch, args.steps, args.rounds, VARIANTS)
    restricted = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--fp32-rows-json"], check=True,
                                env={**os.environ, **AVX2_ONLY}, capture_output=True, text=True)
    rows += json.loads(restricted.stdout.splitlines()[-1])
    here = cpu_summary()
    print(write_report("cpu_step_variants", f"SimCLR training step (cpu preset, batch {args.batch}), 2 CPU cores",
                       rows,
                       f"The loop's `train_step` and `ViewMaker` on real CIFAR-10; {args.rounds} rounds of "
                       f"{args.steps} steps on different images after one warm-up step (for torch.compile, its "
                       "compilation); views/s minimum and maximum over rounds. 'Pays off after': the steps "
                       "torch.compile's first step costs, divided by the time it saves per step against the "
                       "loop's eager choice. The AVX2 rows run this machine restricted to AVX2 kernels "
                       "(ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2), where the loop trains in fp32. "
                       "Command: `python benchmarks/cpu_kernels.py`."))
    rows = verbose_primitives("bf16", args.batch) + verbose_primitives("fp32", args.batch)
    ops = aten_convolutions(images, args.batch)
    print(write_report("cpu_kernels", f"oneDNN implementations of one training step, {here}", rows,
                       "Executed convolution and matmul primitives of one SimCLR step (cpu preset, channels_last) "
                       "under ONEDNN_VERBOSE=1, grouped by pass and implementation; 'fallback' marks a ref "
                       "(reference) or gemm (im2col) implementation. aten convolution ops of one bf16 step "
                       f"(torch.profiler): {json.dumps(ops)}. Command: `python benchmarks/cpu_kernels.py`."))


if __name__ == "__main__":
    main()
