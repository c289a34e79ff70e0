import argparse
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
from training.augment import BatchAugment
from training.checkpoint import load_checkpoint
from training.cli import register
from training.config import add_config_arguments, build_config, overrides_from_args
from training.loop import TrainingDiverged, build_method, train
from training.losses import byol_loss
from training.methods import METHODS, Recipe, SSLMethod
from training.optim import LARS, build_optimizer
from zoo import load_cifar10

pytestmark = needs_cifar10


TIMEOUT = 600  # seconds per training subprocess: a safety net, generous for a machine shared with other jobs


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "training", "train", *args]


def test_smoke_preset_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(_cli("simclr", "--preset", "smoke", "--out", str(out)), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"train_config.json", "metrics.jsonl", "curves.png", "results.json", "checkpoint.safetensors",
            "model.safetensors", "config.json"} <= names
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["method"] == "simclr" and saved["lr"] == 2e-3 and saved["method_options"] == {"temperature": 0.5}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["images_per_s"] > 0 and 0 <= m["knn_accuracy"] <= 1 for m in metrics)
    assert json.loads((out / "config.json").read_text())["method_title"] == "SimCLR"
    results = json.loads((out / "results.json").read_text())
    assert results["test_images"] == 10_000 and {"knn5", "knn200", "linear"} <= set(results)
    assert results["protocol"]["knn200"]["weighted"] is True  # the probes record their protocol
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The published encoder is the encoder alone, loadable strictly, equal to the trained one.
    encoder = zoo.Encoder.from_directory(out)
    weights = load_file(out / "model.safetensors")
    assert not any(k.startswith(("projector", "predictor", "target")) for k in weights)
    method, _ = build_method(build_config("simclr", "smoke", None, {}))
    load_checkpoint(out / "checkpoint.safetensors", method)
    for k, v in method.encoder.state_dict().items():
        assert torch.equal(v, weights[k]) and torch.equal(encoder.backbone.state_dict()[k], v)
    # An existing run is not overwritten by accident.
    again = subprocess.run(_cli("simclr", "--preset", "smoke", "--out", str(out)), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ("byol", "--preset", "smoke", "--epochs", "3")
    assert subprocess.run(_cli(*args, "--out", str(straight)), capture_output=True, timeout=TIMEOUT).returncode == 0
    proc = subprocess.Popen(_cli(*args, "--out", str(killed)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    metrics_file = killed / "metrics.jsonl"  # written after the epoch's checkpoint
    while not (metrics_file.exists() and metrics_file.read_text()) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()  # it really died mid-run
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 3
    resumed = subprocess.run(_cli(*args, "--out", str(killed), "--resume"), capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(straight / "checkpoint.safetensors"), load_file(killed / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # heads, target, optimiser too
    metrics = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3
    # Time totals continue from the saved ones: each covers every epoch so far, across the kill.
    for i, m in enumerate(metrics):
        assert m["wall_seconds"] >= sum(r["seconds"] for r in metrics[:i + 1])
        assert m["cpu_seconds"] > (metrics[i - 1]["cpu_seconds"] if i else 0)
    changed = subprocess.run(_cli(*args, "--out", str(killed), "--resume", "--lr", "0.1"), capture_output=True, text=True)
    assert changed.returncode == 2 and "configuration differs" in changed.stderr


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = build_config("barlowtwins", "smoke", None, {"epochs": 3})
    real_lr_at = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda cfg, epoch, *a: 1e30 if epoch >= 1 else real_lr_at(cfg, epoch, *a))
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


def _parse(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return overrides_from_args(parser.parse_args(argv))


def test_config_file_of_another_method_is_refused(tmp_path):
    other = tmp_path / "byol.json"
    other.write_text(json.dumps({"method": "byol", "lr": 0.1}))
    with pytest.raises(ValueError, match="'byol' configuration but the command trains 'simclr'"):
        build_config("simclr", "smoke", str(other), {})
    same = tmp_path / "simclr.json"
    same.write_text(json.dumps({"method": "simclr", "lr": 0.1, "method_options": {"temperature": 0.2}}))
    cfg = build_config("simclr", "smoke", str(same), _parse("--temperature", "0.3"))
    assert (cfg.lr, cfg.method_options) == (0.1, {"temperature": 0.3})  # flags override the file
    with pytest.raises(ValueError, match=r"\['ema'\] are not options of simclr"):
        build_config("simclr", "smoke", None, _parse("--ema", "0.9"))


def test_per_class_all_means_the_full_split():
    cfg = build_config("simclr", "smoke", None, _parse("--train-per-class", "all", "--eval-test-per-class", "all"))
    assert cfg.train_per_class is None and cfg.eval_test_per_class is None  # the smoke preset says 40 and 10
    assert cfg.eval_train_per_class == 20
    with pytest.raises(SystemExit):
        _parse("--final-train-per-class", "most")


class Toy(SSLMethod):
    """A fourth method as a user would add one: pulls the two views' features together, no heads."""

    title = "Toy"
    recipe = Recipe(lr=1e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0, views="joint")

    def __init__(self, encoder, hidden=0, out=0, views=None, *, scale: float = 1.0):
        super().__init__(encoder, views)
        self.scale = scale

    def forward(self, views):
        f1, f2 = self.per_view(self.encoder, views)
        return self.scale * (byol_loss(f1, f2) + byol_loss(f2, f1)) / 2


def test_a_fourth_method_is_one_class_and_one_table_line(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Toy)  # the one table line
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())  # `ssl-zoo train`: the method and its --scale flag come from METHODS
    args = parser.parse_args(["train", "toy", "--preset", "smoke", "--out", "unused", "--scale", "2"])
    cfg = build_config(args.method, args.preset, None, overrides_from_args(args))
    assert (cfg.lr, cfg.schedule, cfg.method_options) == (2e-3, "step-warmup-cosine", {"scale": 2.0})
    seed = build_config("toy", "seed", None, {})  # the seed preset takes Toy's recipe
    assert (seed.lr, seed.schedule, seed.views, seed.method_options) == (1e-3, "constant", "joint", {"scale": 1.0})
    method, _ = build_method(cfg)
    assert isinstance(method, Toy) and method.scale == 2.0 and method.title == "Toy"
    optimizer = build_optimizer(method, cfg)
    images = torch.from_numpy(load_cifar10("test").per_class(4).images)
    loss = method(BatchAugment()(torch.cat([images, images]), torch.Generator().manual_seed(0)))
    before = method.encoder.conv1.weight.detach().clone()
    loss.backward()
    optimizer.step()
    method.after_step()
    assert torch.isfinite(loss) and not torch.equal(before, method.encoder.conv1.weight)


def test_lars_step_matches_the_formula():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.mul_(0.1)  # shrinks the first layer's gradient: its trust ratio is clipped at 1, the last's not
    cfg = build_config("simclr", "smoke", None, {"optimizer": "lars", "lr": 0.3, "weight_decay": 1e-2})
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, LARS)
    model(torch.randn(8, 4)).pow(2).sum().backward()
    before = {k: (p.detach().clone(), p.grad.clone()) for k, p in model.named_parameters()}
    optimizer.step()
    trusts = []
    for k, p in model.named_parameters():
        w, g = before[k]
        if w.ndim > 1:  # weights: decayed, scaled by the clipped trust ratio
            trust = (0.02 * w.norm() / (g.norm() + 1e-2 * w.norm() + 1e-8) / 0.3).clamp(max=1.0)
            expected = w - 0.3 * trust * (g + 1e-2 * w)
            trusts.append(trust.item())
        else:  # biases and BatchNorm: a plain SGD step, no decay, no adaptation
            expected = w - 0.3 * g
        torch.testing.assert_close(p.detach(), expected, msg=k)
    assert min(trusts) < 1 and max(trusts) == 1
