import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import CIFAR10_JPEG, REPO, needs_cifar10

pytestmark = needs_cifar10

METHODS = ("simclr", "byol", "barlowtwins")


def _table(path):
    """results.md's rows: method -> cells."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("| method |") and set(lines[1]) <= {"|", "-"}
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:])}


def test_the_gpu_script_trains_the_three_recipes_and_packs_their_records(tmp_path):
    out = tmp_path / "out"
    # The three smoke runs go in parallel, one thread each on this small machine.
    env = {**os.environ, "OUT": str(out), "PRESET": "smoke", "SSL_ZOO_DATA": str(CIFAR10_JPEG),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    script = ["bash", str(REPO / "benchmarks" / "gpu_seed.sh")]
    proc = subprocess.run(script, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _table(out / "results.md")
    assert set(rows) == set(METHODS)
    for method, (epochs, knn5, knn200, linear, wall) in rows.items():
        results = json.loads((out / f"{method}-smoke" / "results.json").read_text())
        assert epochs == "2/2" and float(wall) >= 0
        for cell, key in ((knn5, "knn5"), (knn200, "knn200"), (linear, "linear")):
            assert float(cell) == pytest.approx(100 * results[key], abs=0.006)
    with tarfile.open(out / "runs.tgz") as tar:
        names = set(tar.getnames())
        assert not any(name.endswith(".safetensors") for name in names)  # records only: weights stay out
        for method in METHODS:
            assert f"./{method}.log" in names
            packed = tar.extractfile(f"./{method}-smoke/metrics.jsonl").read()
            assert packed == (out / f"{method}-smoke" / "metrics.jsonl").read_bytes()
            assert [json.loads(line)["epoch"] for line in packed.decode().splitlines()] == [1, 2]
