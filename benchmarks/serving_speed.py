"""Embedding-server throughput and latency: batch size 1 vs dynamic batching, 1/4/16 clients;
server overhead vs calling the model directly; onnxruntime vs torch eager.

    python benchmarks/serving_speed.py [--rounds 3] [--dynamic-args "--batch-gap 0.008"]

Model: full-width CIFAR ResNet-18 (512-d). Each request uploads one real CIFAR-10 JPEG (multipart)
from a bounded list. This machine's speed drifts by up to 20 % from minute to minute, so each
round measures the direct call and both servers back to back, and the table gives the median
over rounds; ratios are taken within a round.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import time

import numpy as np
import torch

import zoo
from report import write_report
from serving.decode import decode_image
from zoo.onnx import export_onnx, onnx_session
from serving_common import (jpegs, model_dir, multipart_upload, process_tree_cpu_s, run_raw_load, start_server,
                            stop_server)

REQUESTS = {1: 150, 4: 300, 16: 600}
SINGLE, DYNAMIC = "batch size 1", "dynamic batching"


def server_round(path, images, label: str, args: list[str]) -> dict[int, dict]:
    """Start a server with ``args``, warm it up, and load it at 1, 4 and 16 clients."""
    uploads = [multipart_upload(b) for b in images]
    proc, url = start_server(path, *args)
    try:
        asyncio.run(run_raw_load(url, 4, uploads[:32], 512))  # warm-up
        out = {}
        for clients, n in REQUESTS.items():
            server_cpu, client_cpu = process_tree_cpu_s(proc.pid), time.process_time()
            out[clients] = asyncio.run(run_raw_load(url, clients, [uploads[i % len(uploads)] for i in range(n)], 512))
            out[clients]["server CPU ms/request"] = 1000 * (process_tree_cpu_s(proc.pid) - server_cpu) / n
            out[clients]["client CPU ms/request"] = 1000 * (time.process_time() - client_cpu) / n
            assert not out[clients]["problems"], (label, clients, out[clients]["problems"][:3])
        return out
    finally:
        stop_server(proc)


def direct_call(path, images, batch: int) -> tuple[float, float]:
    """decode + preprocess + model in-process, in batches of ``batch`` (what the server wraps):
    images/s and ms of CPU per image."""
    enc = zoo.load(str(path))
    n = len(images)

    def run():
        for i in range(0, n, batch):
            arrays = np.stack([decode_image(b, 32) for b in images[i:i + batch]])
            with torch.inference_mode():
                enc(enc.preprocess(arrays))

    run()
    start, cpu = time.perf_counter(), time.process_time()
    run()
    return n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n


def onnx_rows(path, images, rounds: int = 5) -> list[dict]:
    """torch eager vs onnxruntime images/s at batch 1 and 64, alternating within each round; medians."""
    enc = zoo.load(str(path))
    session = onnx_session(export_onnx(enc, path / "encoder.onnx"))
    x_all = enc.preprocess(np.stack([decode_image(b, 32) for b in images]))
    backends = {"torch eager (inference_mode)": lambda x: enc(x),
                "onnxruntime": lambda x: session.run(None, {"images": x.numpy()})}
    rows = []
    for batch in (1, 64):
        x, reps = x_all[:batch], max(3, 256 // batch)
        rates = {name: [] for name in backends}
        with torch.inference_mode():
            for _ in range(rounds):
                for name, fn in backends.items():
                    fn(x)
                    start = time.perf_counter()
                    for _ in range(reps):
                        fn(x)
                    rates[name].append(reps * batch / (time.perf_counter() - start))
        base = rates["torch eager (inference_mode)"]
        for name, rate in rates.items():
            ratios = [r / b for r, b in zip(rate, base)]
            rows.append({"backend": name, "batch": batch, "images/s": round(statistics.median(rate), 1),
                         "vs torch (median of rounds)": f"{statistics.median(ratios):.2f}x",
                         "per round": " ".join(f"{r:.2f}" for r in ratios)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dynamic-args", default="", help="extra `ssl-zoo serve` flags for the batching server")
    cli = parser.parse_args()
    path, images = model_dir(64), jpegs(256)
    configs = {SINGLE: ["--max-batch-size", "1"], DYNAMIC: shlex.split(cli.dynamic_args)}
    rounds = []
    for _ in range(cli.rounds):
        direct = {batch: direct_call(path, images, batch) for batch in (1, 16)}
        rounds.append({"direct": direct, **{label: server_round(path, images, label, args)
                                             for label, args in configs.items()}})
    rows = [{"server": label, "clients": clients, "requests": n,
             **{k: round(statistics.median(r[label][clients][k] for r in rounds), 1)
                for k in ("requests/s", "p50 ms", "p99 ms", "server CPU ms/request", "client CPU ms/request")}}
            for label in configs for clients, n in REQUESTS.items()]
    gains = [r[DYNAMIC][16]["requests/s"] / r[SINGLE][16]["requests/s"] for r in rounds]
    ceilings = [r["direct"][16][0] / r["direct"][1][0] for r in rounds]
    overheads = [100 * (1 - r[DYNAMIC][16]["requests/s"] / r["direct"][16][0]) for r in rounds]
    directs = [r["direct"][16][0] for r in rounds]
    direct_cpu = statistics.median(r["direct"][16][1] for r in rounds)
    flags = " ".join(configs[DYNAMIC]) or "the defaults"
    notes = (f"Median of {cli.rounds} rounds. Dynamic batching server: `ssl-zoo serve` with {flags} (max batch 16; "
             f"a batch starts when full, after a quiet gap, or at the timeout). At 16 clients it serves "
             f"**{statistics.median(gains):.2f}x** the requests/s of batch size 1 (rounds: "
             f"{', '.join(f'{g:.2f}' for g in gains)}); the model itself, called directly, gains "
             f"{statistics.median(ceilings):.2f}x from batches of 16 over batches of 1 (rounds: "
             f"{', '.join(f'{c:.2f}' for c in ceilings)}), which bounds what batching can give here. "
             f"Decode + preprocess + model called directly in batches of 16: {statistics.median(directs):.1f} "
             f"images/s, using {direct_cpu:.1f} ms of CPU per image; server overhead at 16 clients "
             f"**{statistics.median(overheads):.1f} %** (rounds: {', '.join(f'{o:.1f}' for o in overheads)}). "
             "Load generator: keep-alive HTTP/1.1 on loopback, on the same 2 cores. "
             "Command: `python benchmarks/serving_speed.py`.")
    print(write_report("serving", "Embedding server on 2 CPU cores, full-width CIFAR ResNet-18, one JPEG per request",
                       rows, notes))
    print(write_report("onnx", "onnxruntime vs torch eager, full-width CIFAR ResNet-18, CPU", onnx_rows(path, images),
                       "Session options: ORT_ENABLE_ALL graph optimisation, intra-op threads = torch threads (2), "
                       "sequential execution, CPUExecutionProvider; opset 18. After ORT's optimisation the graph is 20 "
                       "fused NCHWc convolutions (batch norm folded, ReLU and residual adds fused), so there is "
                       "nothing left to fuse. 5 rounds, alternating backends. "
                       "Command: `python benchmarks/serving_speed.py`."))


if __name__ == "__main__":
    main()
