"""Soak test: 10,000 mixed requests (valid and invalid) at 16 clients on loopback.

    python benchmarks/soak.py [--requests 10000]

Checks: no 5xx, every valid response carries the embeddings of exactly the images it sent, in
order (compared with zoo.embed), every invalid one a 4xx; server memory (RSS of the whole
process tree) after warm-up vs at the end. Model: width-16 CIFAR ResNet-18.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random

import numpy as np
from PIL import Image

import zoo
from report import write_report
from serving_common import jpegs, model_dir, process_tree_rss_mb, run_load, start_server, stop_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    path, images = model_dir(16), jpegs(64)
    expected = zoo.embed(zoo.load(str(path)), [Image.open(io.BytesIO(b)) for b in images]).numpy()
    bad_bodies = [b"not an image", images[0][:200], b""]

    def make(i):
        rnd = random.Random(i)
        if rnd.random() < 0.2:  # invalid: non-image, truncated JPEG, empty file
            bad = bad_bodies[i % len(bad_bodies)]
            return {"files": [("images", ("bad.jpg", bad, "image/jpeg"))]}, lambda r: (
                None if 400 <= r.status_code < 500 else f"invalid request got {r.status_code}")
        picks = [rnd.randrange(len(images)) for _ in range(rnd.randint(1, 4))]

        def check(r):
            if r.status_code != 200:
                return f"valid request got {r.status_code}"
            got = np.array(r.json()["embeddings"])
            if got.shape != (len(picks), expected.shape[1]) or np.abs(got - expected[picks]).max() > 1e-4:
                return "embeddings do not match the images sent (dropped or reordered)"
            return None

        return {"files": [("images", (f"{k}.jpg", images[k], "image/jpeg")) for k in picks]}, check

    proc, url = start_server(path)  # the defaults: dynamic batching, up to 16 requests
    try:
        warm = asyncio.run(run_load(url, 16, 1000, make))
        rss_warm = process_tree_rss_mb(proc.pid)
        out = asyncio.run(run_load(url, 16, args.requests, make))
        rss_end = process_tree_rss_mb(proc.pid)
    finally:
        stop_server(proc)
    fivexx = sum(v for k, v in out["statuses"].items() if k >= 500)
    rows = [{"requests": args.requests, "clients": 16, "requests/s": round(out["requests/s"], 1),
             "status counts": " ".join(f"{k}: {v}" for k, v in sorted(out["statuses"].items())),
             "5xx": fivexx, "wrong or missing embeddings": len([p for p in out["problems"] if "match" in p]),
             "other problems": len([p for p in out["problems"] if "match" not in p]) + len(warm["problems"]),
             "RSS after warm-up MB": round(rss_warm, 1), "RSS at end MB": round(rss_end, 1),
             "RSS change %": round(100 * (rss_end / rss_warm - 1), 1)}]
    print(write_report("soak", "Soak: mixed valid (1-4 JPEGs) and invalid (20 %) requests, 16 clients",
                       rows, "Warm-up: 1,000 requests before the first RSS reading. "
                       "Command: `python benchmarks/soak.py`."))


if __name__ == "__main__":
    main()
