"""Embedding-server throughput and latency: batch size 1 vs dynamic batching, 1/4/16 clients;
server overhead vs calling the model directly; onnxruntime vs torch eager.

    python benchmarks/serving_speed.py

Model: full-width CIFAR ResNet-18 (512-d). Each request uploads one real CIFAR-10 JPEG
(multipart). Load: an httpx/asyncio generator on loopback, a bounded number of requests.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import torch

import zoo
from report import write_report
from serving.decode import decode_image
from serving.onnx_export import export_onnx, onnx_session
from serving_common import jpegs, model_dir, run_load, start_server, stop_server

REQUESTS = {1: 150, 4: 300, 16: 600}


def load_rows(path, images) -> tuple[list[dict], dict]:
    def make(i):
        return {"files": [("images", ("x.jpg", images[i % len(images)], "image/jpeg"))]}, lambda r: (
            None if r.status_code == 200 else f"status {r.status_code}")

    rows, best = [], {}
    for label, args in (("batch size 1", ["--max-batch-size", "1"]),
                        ("dynamic batching (max 16, 10 ms)", ["--max-batch-size", "16", "--batch-timeout", "0.01"])):
        proc, url = start_server(path, *args)
        try:
            asyncio.run(run_load(url, 4, 40, make))  # warm-up
            for clients, n in REQUESTS.items():
                out = asyncio.run(run_load(url, clients, n, make))
                assert not out["problems"], out["problems"][:3]
                rows.append({"server": label, "clients": clients, "requests": n,
                             "requests/s": round(out["requests/s"], 1), "p50 ms": round(out["p50 ms"], 1),
                             "p99 ms": round(out["p99 ms"], 1)})
                best[(label, clients)] = out["requests/s"]
        finally:
            stop_server(proc)
    return rows, best


def direct_images_per_s(path, images, batch: int) -> float:
    """decode + preprocess + model in-process, in batches of ``batch``: what the server wraps."""
    enc = zoo.load(str(path))
    n = len(images)

    def run():
        for i in range(0, n, batch):
            arrays = np.stack([decode_image(b, 32, 1 << 24) for b in images[i:i + batch]])
            with torch.inference_mode():
                enc(enc.preprocess(arrays))

    run()
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def onnx_rows(path, images) -> list[dict]:
    enc = zoo.load(str(path))
    session = onnx_session(export_onnx(enc, path / "encoder.onnx"))
    x_all = enc.preprocess(np.stack([decode_image(b, 32, 1 << 24) for b in images]))
    rows = []
    for batch in (1, 64):
        x = x_all[:batch]
        reps = max(3, 256 // batch)
        timings = {}
        for name, fn in (("torch eager (inference_mode)", lambda x=x: enc(x)),
                         ("onnxruntime", lambda x=x: session.run(None, {"images": x.numpy()}))):
            with torch.inference_mode():
                fn()
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
            timings[name] = reps * batch / (time.perf_counter() - start)
        base = timings["torch eager (inference_mode)"]
        for name, rate in timings.items():
            rows.append({"backend": name, "batch": batch, "images/s": round(rate, 1), "vs torch": f"{rate / base:.2f}x"})
    return rows


def main() -> None:
    path, images = model_dir(64), jpegs(256)
    rows, best = load_rows(path, images)
    direct = direct_images_per_s(path, images, 16)
    batched, single = best[("dynamic batching (max 16, 10 ms)", 16)], best[("batch size 1", 16)]
    notes = (f"At 16 clients dynamic batching serves {batched / single:.2f}x the requests/s of batch size 1. "
             f"Calling decode + preprocess + model directly in batches of 16: {direct:.1f} images/s; the "
             f"batching server reaches {batched:.1f} (overhead {100 * (1 - batched / direct):.1f} %). "
             "Command: `python benchmarks/serving_speed.py`.")
    print(write_report("serving", "Embedding server on 2 CPU cores, full-width CIFAR ResNet-18, one JPEG per request",
                       rows, notes))
    print(write_report("onnx", "onnxruntime vs torch eager, full-width CIFAR ResNet-18, CPU", onnx_rows(path, images),
                       "Session options: ORT_ENABLE_ALL graph optimisation, intra-op threads = torch threads (2), "
                       "sequential execution, CPUExecutionProvider; opset 18. Command: `python benchmarks/serving_speed.py`."))


if __name__ == "__main__":
    main()
