import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import zoo

from conftest import needs_cifar10
from training import loop
from training.checkpoint import load_checkpoint
from training.config import build_config
from training.loop import TrainingDiverged, build_method, train
from zoo import load_cifar10

pytestmark = needs_cifar10


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "training", "train", *args]


def test_smoke_preset_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(_cli("simclr", "--preset", "smoke", "--out", str(out)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"train_config.json", "metrics.jsonl", "curves.png", "results.json", "checkpoint.safetensors",
            "model.safetensors", "config.json"} <= names
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["method"] == "simclr" and saved["lr"] == 2e-3 and saved["temperature"] == 0.5
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["images_per_s"] > 0 and 0 <= m["knn_accuracy"] <= 1 for m in metrics)
    results = json.loads((out / "results.json").read_text())
    assert results["test_images"] == 10_000 and {"knn5", "knn200", "linear"} <= set(results)
    assert results["protocol"]["knn200"]["temperature"] == 0.07
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The published encoder is the encoder alone, loadable strictly, equal to the trained one.
    encoder = zoo.Encoder.from_directory(out)
    weights = load_file(out / "model.safetensors")
    assert not any(k.startswith(("projector", "predictor", "target")) for k in weights)
    method, _ = build_method(build_config("simclr", "smoke", None, {}))
    load_checkpoint(out / "checkpoint.safetensors", method)
    for k, v in method.encoder.state_dict().items():
        assert torch.equal(v, weights[k]) and torch.equal(encoder.state_dict()[k], v)
    # An existing run is not overwritten by accident.
    again = subprocess.run(_cli("simclr", "--preset", "smoke", "--out", str(out)), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ("byol", "--preset", "smoke", "--epochs", "3")
    assert subprocess.run(_cli(*args, "--out", str(straight)), capture_output=True, timeout=120).returncode == 0
    proc = subprocess.Popen(_cli(*args, "--out", str(killed)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()  # it really died mid-run
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 3
    resumed = subprocess.run(_cli(*args, "--out", str(killed), "--resume"), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(straight / "checkpoint.safetensors"), load_file(killed / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # heads, target, optimiser too
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 3
    changed = subprocess.run(_cli(*args, "--out", str(killed), "--resume", "--lr", "0.1"), capture_output=True, text=True)
    assert changed.returncode == 2 and "configuration differs" in changed.stderr


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = build_config("barlowtwins", "smoke", None, {"epochs": 3})
    steps = 400 // cfg.batch_size
    real_lr_at = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda step, *a: 1e30 if step >= steps else real_lr_at(step, *a))
    with pytest.raises(TrainingDiverged, match="epoch 2") as err:
        train(cfg, tmp_path / "run")
    assert "checkpoint" in str(err.value)
    method, _ = build_method(cfg)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors", method)
    assert len(saved["history"]) == 1  # epoch 1 is kept
    assert all(torch.isfinite(p).all() for p in method.parameters())
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("name", ["simclr", "byol", "barlowtwins"])
def test_short_training_lowers_the_loss_without_collapse(name, tmp_path):
    cfg = build_config(name, "smoke", None, {"train_per_class": 60, "epochs": 4, "lr": 3e-3})
    train(cfg, tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    method, _ = build_method(cfg)
    load_checkpoint(tmp_path / "run" / "checkpoint.safetensors", method)
    images = torch.from_numpy(load_cifar10("test").per_class(20).images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        z = F.normalize(method.eval().projector(method.encoder(images)), dim=1)
    # Collapsed embeddings have ~0 spread; a healthy one is near 1/sqrt(d) per dimension.
    assert z.std(0).mean() > 0.3 / z.shape[1] ** 0.5
