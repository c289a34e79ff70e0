"""zoo.load timings for a full-width ResNet-18 (44.7 MB safetensors) from a loopback Hub.

    python benchmarks/zoo_load.py

Starts tests/hub_server.py on 127.0.0.1, uploads an encoder with the real huggingface_hub
client, then times cold (download) and warm (cached) loads side by side; median of 5.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="zoo-load-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp / "hf"), HF_HUB_DISABLE_XET="1",
                      HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN="bench")
    from hub_server import HubServer
    from huggingface_hub import HfApi, constants

    from report import write_report
    import zoo
    
    server = HubServer(tmp / "hub", port=port).start()
    config = zoo.EncoderConfig("resnet18_cifar")
    zoo.Encoder(config).save_pretrained(tmp / "enc")
    api = HfApi()
    api.create_repo("bench/resnet18", exist_ok=True)
    sha = api.upload_folder(repo_id="bench/resnet18", folder_path=tmp / "enc").oid

    def timed(fn, n=5):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rows = []
    start = time.perf_counter()
    zoo.load(f"bench/resnet18@{sha}")
    rows.append({"load": "cold: download 44.7 MB + verify + build", "seconds": round(time.perf_counter() - start, 3)})
    rows.append({"load": "warm, pinned revision (no network)",
                 "seconds": round(timed(lambda: zoo.load(f"bench/resnet18@{sha}")), 3)})
    rows.append({"load": "warm, by id (HEAD revalidation on loopback)",
                 "seconds": round(timed(lambda: zoo.load("bench/resnet18")), 3)})
    constants.HF_HUB_OFFLINE = True
    rows.append({"load": "warm, HF_HUB_OFFLINE", "seconds": round(timed(lambda: zoo.load("bench/resnet18")), 3)})
    constants.HF_HUB_OFFLINE = False
    rows.append({"load": "build_encoder only (random init, for reference)",
                 "seconds": round(timed(lambda: zoo.build_encoder(config)), 3)})
    server.stop()
    print(write_report("zoo_load", "zoo.load of a ResNet-18 (CIFAR stem, 11.2 M parameters) from a loopback Hub",
                       rows, "Median of 5 (cold: once). Command: `python benchmarks/zoo_load.py`."))


if __name__ == "__main__":
    main()
