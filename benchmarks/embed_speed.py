"""`ssl-zoo embed` throughput against the encoder's own batched inference, and its peak memory
as the collection grows ten-fold.

    nice -n 10 python benchmarks/embed_speed.py

Speed: a full-width (width 64) random-init CIFAR ResNet-18 saved to a temp folder embeds CIFAR-10
JPEGs (the test folder, 10,000 images, and a 3,000-image list of train files) with the default
DataLoader workers and batch 256. The pipeline's rate is its steady state: images between the first
and the last shard written (shards of 1,000), from the shard records' times, so model loading,
worker start-up and the ONNX export are left out (the end-to-end rate is shown too). The model's
own rate is measured on pre-decoded, preprocessed batches of 256 right before and right after each
pipeline run (their mean is the reference). CPU time per image (this process and its finished
children, the workers) is reported beside, as it does not depend on other jobs. Memory:
`python -m zoo embed` with the seed's random-init ResNet-18 (512-d, shards of 10,000) on 10,000
and 100,000 images (the train split listed twice); peak RSS (VmHWM) of the main process and of the
largest DataLoader worker.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import zoo
from report import RESULTS, write_report
from zoo.onnx import encoder_session
from zoo.retrieval.embed import embed_collection

CIFAR10 = Path(os.environ.get("SSL_ZOO_DATA", Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg"))
BATCH, SHARD = 256, 1000


def train_list(path: Path, per_class: int) -> Path:
    """A text file of the first ``per_class`` train JPEGs of every class."""
    files = [p for c in sorted((CIFAR10 / "train").iterdir()) for p in sorted(c.glob("*.jpg"))[:per_class]]
    path.write_text("".join(f"{p}\n" for p in files))
    return path


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def model_rate(forward, encoder: zoo.Encoder, images: np.ndarray) -> tuple[float, float]:
    """(images/s, CPU ms per image) of ``forward`` on pre-decoded, preprocessed batches (after a warm-up batch)."""
    batches = [encoder.preprocess(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]
    with torch.inference_mode():
        forward(batches[0])
        start, cpu = time.perf_counter(), cpu_seconds()
        for x in batches:
            forward(x)
    return len(images) / (time.perf_counter() - start), 1000 * (cpu_seconds() - cpu) / len(images)


def pipeline_rate(source: str, encoder: zoo.Encoder, out: Path, backend: str) -> tuple[float, float, float, int]:
    """(steady-state images/s between the first and last shard records, end-to-end images/s, CPU ms per image
    end to end, images)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    manifest = embed_collection(source, encoder, out, shard_size=SHARD, backend=backend, progress=False)
    total, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    stamps = sorted(p.stat().st_mtime_ns for p in (out / ".progress").glob("shard-*.json"))
    n = manifest["source"]["files"]
    steady = (n - SHARD) / ((stamps[-1] - stamps[0]) / 1e9)
    return steady, n / total, 1000 * cpu / n, n


def _vm_hwm_kb(pid: int) -> int:
    """A live process's peak resident set (VmHWM, kB); 0 once it is gone."""
    try:
        return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


def peak_rss_mb(source: str, out: Path) -> tuple[float, float]:
    """Peak RSS (MB) of `python -m zoo embed SOURCE --model random-init-resnet18`: (main process, largest
    DataLoader worker), polling /proc VmHWM (wait4's ru_maxrss would inherit this process's peak at exec)."""
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "embed", source, "--model", "random-init-resnet18",
                             "--out", str(out)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    main_kb, worker_kb = 0, 0
    while proc.poll() is None:
        main_kb = max(main_kb, _vm_hwm_kb(proc.pid))
        worker_kb = max([worker_kb, *(_vm_hwm_kb(c) for c in _children(proc.pid))])
        time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"embed of {source} failed (exit status {proc.returncode})")
    return round(main_kb / 1024, 1), round(worker_kb / 1024, 1)


def load_note(start: float) -> str:
    """The 1-minute load average at the start and the end of a run: how busy other jobs kept the cores."""
    return f"Load average (1 min) at start / end: {start:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores."


def main() -> None:
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="embed-speed-"))
    torch.manual_seed(0)
    zoo.Encoder(zoo.EncoderConfig("resnet18_cifar")).save_pretrained(tmp / "model")
    encoder = zoo.load(tmp / "model")
    sample = zoo.load_cifar10("test").images[:2048]
    torch_forward = encoder.forward
    inputs = [("cifar10:test folder", "cifar10:test", "torch"),
              ("3,000 train JPEGs (list)", str(train_list(tmp / "train3000.txt", 300)), "torch"),
              ("3,000 train JPEGs (list)", str(tmp / "train3000.txt"), "onnx")]
    session = encoder_session(encoder)

    def ort_forward(x: torch.Tensor) -> torch.Tensor:  # the graph `embed --backend onnx` runs
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    rows = []
    for i, (name, source, backend) in enumerate(inputs):
        forward = torch_forward if backend == "torch" else ort_forward
        before, cpu_before = model_rate(forward, encoder, sample)
        steady, end_to_end, cpu, n = pipeline_rate(source, encoder, tmp / f"out{i}", backend)
        after, cpu_after = model_rate(forward, encoder, sample)
        reference, cpu_reference = statistics.mean([before, after]), statistics.mean([cpu_before, cpu_after])
        rows.append({"input": name, "images": n, "backend": backend, "embed images/s (steady)": round(steady, 1),
                     "embed images/s (end to end)": round(end_to_end, 1),
                     "model alone images/s (before, after)": f"{reference:.1f} ({before:.1f}, {after:.1f})",
                     "embed / model": f"{100 * steady / reference:.1f} %",
                     "CPU ms/image: embed (all processes), model alone": f"{cpu:.1f}, {cpu_reference:.1f}",
                     "CPU ratio model / embed": f"{100 * cpu_reference / cpu:.1f} %"})
        print(rows[-1], flush=True)
    worst = min(float(r["embed / model"].rstrip(" %")) for r in rows if r["backend"] == "torch")
    memory = []
    twice = tmp / "train-twice.txt"  # 100,000 paths: the train split listed twice
    twice.write_text(train_list(tmp / "train-all.txt", 5000).read_text() * 2)
    collections = [("cifar10:test", "cifar10:test", 10_000), ("cifar10:train listed twice", str(twice), 100_000)]
    for name, source, n in collections:
        main_mb, worker_mb = peak_rss_mb(source, tmp / f"memory{n}")
        memory.append({"collection": name, "images": n, "main process peak RSS MB": main_mb,
                       "largest worker peak RSS MB": worker_mb})
    print(memory, flush=True)
    rss = ", ".join(f"{m['images']:,} images ({m['collection']}) **{m['main process peak RSS MB']} MB** (largest "
                    f"worker {m['largest worker peak RSS MB']} MB)" for m in memory)
    print(write_report(
        "embed", "`ssl-zoo embed` on CIFAR-10 JPEGs, full-width CIFAR ResNet-18, 2 CPU cores", rows,
        f"Minimum embed / model ratio over the torch inputs: **{worst:.1f} %**. CPU time per image does not "
        f"depend on other jobs sharing the cores; embed's includes decoding in the workers, start-up and (ONNX) "
        f"the export. Decoding runs in "
        f"{min(4, os.cpu_count() or 1)} DataLoader workers beside the model; batch {BATCH}, shards of {SHARD}. "
        f"Peak RSS of `python -m zoo embed` (seed's random-init ResNet-18, 512-d, shards of 10,000), main "
        f"process: {rss}. {load_note(load)} Command: `nice -n 10 python benchmarks/embed_speed.py`."))
    data = json.loads((RESULTS / "embed.json").read_text())
    (RESULTS / "embed.json").write_text(json.dumps({**data, "memory": memory}, indent=2) + "\n")


if __name__ == "__main__":
    main()
