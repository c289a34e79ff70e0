import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import zoo
from zoo import cli as zoo_cli

from conftest import CIFAR10_JPEG, REPO, needs_cifar10
from training import loop
from training.augment import BatchAugment
from training.checkpoint import load_checkpoint
from training.cli import COMMANDS
from training.config import TrainConfig, add_config_arguments, build_config, overrides_from_args
from training import estimate, hardware
from training.loop import TrainingDiverged, build_method, train
from training.resume import run_state
from training.losses import byol_loss
from training.methods import METHODS, Recipe, SSLMethod
from training.optim import LARS, build_optimizer
from zoo import load_cifar10
from zoo.hub.publish import render_card

pytestmark = needs_cifar10


TIMEOUT = 600  # seconds per training subprocess: a safety net, generous for a machine shared with other jobs


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "training", "train", *args]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One finished smoke run made by the command line, with an explicit --data path; tests copy it to change it."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    proc = subprocess.run(_cli("simclr", "--preset", "smoke", "--out", str(out), "--data", str(CIFAR10_JPEG)),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_smoke_preset_writes_a_complete_run_directory(smoke_run):
    out = smoke_run
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


def test_the_published_config_has_provenance_and_no_local_paths(smoke_run):
    assert json.loads((smoke_run / "train_config.json").read_text())["data"] == str(CIFAR10_JPEG)  # the run's own
    text = (smoke_run / "config.json").read_text()
    assert str(CIFAR10_JPEG) not in text
    info = json.loads(text)
    assert "data" not in info["training"] and "device" not in info["training"] and info["training"]["width"] == 8
    prov = info["provenance"]
    assert prov["command"] == f"python -m training train simclr --preset smoke --out {smoke_run}"  # no local path
    assert prov["later"] == []  # started once, never resumed
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert prov["git_commit"] == head.stdout.strip() and isinstance(prov["git_dirty"], bool)
    assert (prov["torch"], prov["device"], prov["cores"], prov["processes"]) == (torch.__version__, "cpu",
                                                                                 os.cpu_count(), 1)
    assert prov["cpu"] and "\n" not in prov["cpu"]
    # What ran and where: the precision --precision auto chose on this CPU, and the ISA facts that decide it.
    assert prov["cpu_isa"]["native_bf16"] == hardware.native_bf16()
    assert prov["precision"] == ("bf16" if hardware.native_bf16() else "fp32")
    metrics = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert prov["wall_minutes"] == pytest.approx(sum(m["seconds"] for m in metrics) / 60, abs=0.01)
    assert prov["cpu_minutes"] == pytest.approx(metrics[-1]["cpu_seconds"] / 60, abs=0.01)
    cfg = build_config("simclr", "smoke", None, {})
    method, _ = build_method(cfg)
    assert prov["train_flops"] == estimate.step_flops(method, [(2 * 64, 3, 32, 32)]) * (400 // 64) * 2 > 0
    assert metrics[-1]["train_flops"] == prov["train_flops"] == 2 * metrics[0]["train_flops"]
    assert prov["compute"] == {"device": "cpu", "minutes": prov["wall_minutes"], "train_flops": prov["train_flops"],
                               "cpu": hardware.cpu_summary(), "precision": prov["precision"],
                               "cpu_minutes": prov["cpu_minutes"], "cores": os.cpu_count()}


def _flip_a_tensor_byte(path):
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + (len(data) - 8 - header) // 2] ^= 0xFF  # still a valid safetensors file: only the content changed
    path.write_bytes(bytes(data))


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_finished_run_is_never_overwritten(smoke_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    cfg = build_config("simclr", "smoke", None, {"data": str(CIFAR10_JPEG)})
    original = _snapshot(run)
    ckpt = run / "checkpoint.safetensors"
    # Not without --resume, even with the checkpoint gone; not as another method.
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, run)
    with pytest.raises(ValueError, match="records a 'simclr' run but the command trains 'byol'"):
        train(build_config("byol", "smoke", None, {"data": str(CIFAR10_JPEG)}), run, resume=True)
    # --resume on a finished run says so and touches nothing, even with a corrupt checkpoint.
    _flip_a_tensor_byte(ckpt)
    corrupt = ckpt.read_bytes()
    train(cfg, run, resume=True)
    assert "finished simclr run: nothing to do" in capsys.readouterr().out
    assert _snapshot(run) == {**original, Path(ckpt.name): corrupt}
    # --re-export checks the checkpoint first: one line naming the file, nothing changed.
    good = original[Path(ckpt.name)]
    for damage in (_flip_a_tensor_byte, lambda p: p.write_bytes(good[:len(good) // 2]), lambda p: p.write_bytes(b"")):
        ckpt.write_bytes(good)
        damage(ckpt)
        damaged = _snapshot(run)
        assert zoo_cli.main(["train", "simclr", "--preset", "smoke", "--data", str(CIFAR10_JPEG), "--out", str(run),
                             "--re-export"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ssl-zoo train: error: ") and str(ckpt) in err and "Traceback" not in err
        assert "corrupt" in err or "not a readable checkpoint" in err
        assert _snapshot(run) == damaged
    # With the good checkpoint back, --re-export redoes the export and keeps the previous one.
    ckpt.write_bytes(good)
    train(cfg, run, re_export=True)
    for name in ("model.safetensors", "config.json", "results.json"):
        assert (run / "previous" / "1" / name).read_bytes() == original[Path(name)]
    new, old = load_file(run / "model.safetensors"), load_file(run / "previous" / "1" / "model.safetensors")
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)  # the same checkpoint
    # A deleted checkpoint does not let a new run take the directory over.
    ckpt.unlink()
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg, run)


def test_resume_of_a_run_stopped_in_its_first_epoch_starts_it_again(tmp_path):
    cfg = build_config("simclr", "smoke", None, {})
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps(asdict(cfg)))
    (run / "metrics.jsonl").write_text("")
    assert run_state(run, cfg, resume=True) == "new"  # nothing to lose
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")  # an epoch done, its checkpoint gone
    with pytest.raises(FileNotFoundError, match="checkpoint.safetensors is missing"):
        run_state(run, cfg, resume=True)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_takes_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(hardware, "native_bf16", lambda isa=None: native)
    assert hardware.resolve_precision("auto", torch.device("cpu")) == expected
    assert hardware.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # forced: as given
    assert hardware.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    from training.config import PRESETS

    assert {build_config(m, p, None, {}).precision for p in PRESETS for m in METHODS} == {"auto"}  # hardware decides


def test_native_bf16_needs_the_instructions_and_atens_avx512_kernels():
    isa = {"capability": "AVX512", "avx2": True, "avx512": True, "avx512_bf16": False, "amx": False}
    assert not hardware.native_bf16(isa)  # AVX-512 without bf16 (Intel Skylake-X): emulated
    assert hardware.native_bf16({**isa, "avx512_bf16": True}) and hardware.native_bf16({**isa, "amx": True})
    assert not hardware.native_bf16({**isa, "avx512_bf16": True, "capability": "AVX2"})  # ATEN_CPU_CAPABILITY=avx2
    assert "no native bf16" in hardware.cpu_summary({**isa, "model": "AMD EPYC 7B13", "native_bf16": False})


def test_training_flops_are_counted_by_torch_without_computing():
    cfg = build_config("simclr", "cpu", None, {})
    method, _ = build_method(cfg)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as real:  # the same step on real tensors
        method(torch.rand(2 * 8, 3, 32, 32)).backward()
    assert estimate.step_flops(method, [(16, 3, 32, 32)]) == real.get_total_flops() > 0
    assert estimate.run_flops(cfg, method) == estimate.step_flops(method, [(512, 3, 32, 32)]) * 195 * 50
    assert estimate.flops_text(1.06e15) == "1.06 PFLOP" and estimate.flops_text(8.1e10) == "81 GFLOP"


def _stop_after_the_projection(monkeypatch):
    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(loop, "build_optimizer", stop)  # the run stops once it has announced its projection
    return Stop


def test_every_run_measures_its_speed_and_warns_past_four_hours(tmp_path, monkeypatch, capsys):
    seed = build_config("simclr", "seed", None, {"device": "cpu"})
    measured = []

    def slow(method, cfg, device, precision, batch_size, epoch, step):  # a CPU that trains 50 views/s
        measured.append((batch_size, precision))
        return 2 * batch_size / 50.0

    monkeypatch.setattr(loop, "measure_step_seconds", slow)
    stop = _stop_after_the_projection(monkeypatch)
    with pytest.raises(stop):
        train(seed, tmp_path / "run")
    out, err = capsys.readouterr()
    hours = 2 * 195 * 256 * 50 / 50 / 3600  # views / (views/s), training alone
    assert re.search(r"simclr: 50 training views/s measured on .* projected (\d+\.\d) hours for 50 epoch", out)
    projected = float(re.search(r"projected (\d+\.\d) hours", out).group(1))
    assert hours <= projected < 1.1 * hours
    assert err.startswith("warning: this run (50 epochs of 50,000 images, width 64) is projected to take")
    assert "--preset cpu" in err and measured[0][0] == 256
    capsys.readouterr()
    quick = build_config("byol", "smoke", None, {})  # a short run: the projection, measured for real, no warning
    monkeypatch.undo()
    stop = _stop_after_the_projection(monkeypatch)
    with pytest.raises(stop):
        train(quick, tmp_path / "smoke")
    out, err = capsys.readouterr()
    assert re.search(r"byol: [\d,]+ training views/s measured .* projected \d+ s for 2 epoch", out) and err == ""


def test_forced_bf16_on_a_cpu_without_it_warns_with_both_measured_speeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hardware, "native_bf16", lambda isa=None: False)
    monkeypatch.setattr(estimate, "native_bf16", lambda isa=None: False)
    rates = {"bf16": 45.0, "fp32": 464.0}
    monkeypatch.setattr(loop, "measure_step_seconds", lambda m, c, d, precision, b, e, s: 2 * b / rates[precision])
    stop = _stop_after_the_projection(monkeypatch)
    with pytest.raises(stop):
        train(build_config("simclr", "smoke", None, {"precision": "bf16"}), tmp_path / "run")
    err = capsys.readouterr().err
    assert "--precision bf16 on a CPU without native bf16" in err and "45 training views/s against 464 in fp32" in err
    assert "(measured: 10.3x)" in err


def test_the_timed_steps_leave_the_run_bitwise_unchanged(tmp_path, monkeypatch):
    """The start-up timing trains a copy: weights, optimiser and random streams of the run stay as they were."""
    cfg = build_config("simclr", "smoke", None, {"epochs": 1})
    timed = train(cfg, tmp_path / "timed")
    monkeypatch.setattr(loop, "_announce", lambda *args: None)
    untimed = train(cfg, tmp_path / "untimed")
    assert timed == untimed
    a, b = load_file(tmp_path / "timed" / "model.safetensors"), load_file(tmp_path / "untimed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_python_m_training_runs_without_the_installed_entry_points(tmp_path):
    # A bare checkout on PYTHONPATH has no ssl_zoo.commands entry points: hide the installed ones.
    code = ("import importlib.metadata as m, runpy; installed = m.entry_points; m.entry_points = lambda **kw: "
            "m.EntryPoints([]) if kw.get('group') == 'ssl_zoo.commands' else installed(**kw); "
            "runpy.run_module('training', run_name='__main__', alter_sys=True)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    helped = subprocess.run([sys.executable, "-c", code, "train", "--help"], capture_output=True, text=True, env=env,
                            timeout=TIMEOUT)
    assert helped.returncode == 0, helped.stderr[-3000:]
    text = " ".join(helped.stdout.split())
    from training.config import preset_values

    cpu, cpu2 = (", ".join(f"{m} {preset_values(p, m).get('epochs', 50)}" for m in METHODS) for p in ("cpu", "cpu2"))
    assert f"training epochs (default: 50; preset cpu: {cpu}, cpu2: {cpu2}, quick: 15, smoke: 2)" in text
    assert "auto|cpu|cuda|cuda:N" in text and "--re-export" in text
    failed = subprocess.run([sys.executable, "-c", code, "train", "byol", "--out", str(tmp_path / "none"), "--resume"],
                            capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1  # zoo.cli's one-line error, no traceback
    assert "error: --resume:" in failed.stderr and "holds no run" in failed.stderr


def test_every_train_flag_shows_a_description_and_its_default():
    subparsers = argparse.ArgumentParser().add_subparsers()
    COMMANDS["train"].add_to(subparsers, "train")
    help_text = subparsers.choices["train"].format_help()
    entries = re.split(r"\n  (?=--)", help_text.split("hyperparameters (override preset and config file):")[1])[1:]
    flags = {entry.split()[0]: " ".join(entry.split()) for entry in entries}
    expected = {f"--{f.name.replace('_', '-')}" for f in fields(TrainConfig)
                if f.name not in ("method", "method_options")}
    expected |= {f"--{option.replace('_', '-')}" for method in METHODS.values() for option in method.options()}
    assert expected <= set(flags)
    for flag, entry in flags.items():
        assert "default: " in entry and len(entry.split("default: ")[0].split()) > 2, entry  # flag, description


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    # Two runs of one command (bf16 autocast and SGD, as the SimCLR and BYOL .cpu recipes) on one machine: bitwise
    # the same weights, also when the second is killed and resumed, so a rerun reproduces a card's numbers.
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ("byol", "--preset", "smoke", "--epochs", "3", "--precision", "bf16", "--optimizer", "sgd", "--lr", "0.05")
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
    # the card names the command and code that started the run, then the resume
    prov = json.loads((killed / "config.json").read_text())["provenance"]
    assert prov["command"].endswith(f"--out {killed}") and "--resume" not in prov["command"]
    assert [(r["action"], r["epoch"]) for r in prov["later"]] == [("resume", done)]
    assert prov["later"][0]["command"].endswith("--resume") and prov["later"][0]["git_commit"] == prov["git_commit"]
    # each launch names its CPU (a run resumed in a later session may have moved machine), and the card says it
    assert prov["started_on"] == prov["later"][0]["cpu"] == hardware.cpu_summary()
    card = str(render_card(killed, "someone/resumed"))
    assert f"--resume`, commit `{prov['git_commit']}`" in card and f", on {hardware.cpu_summary()}" in card
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
    COMMANDS["train"].add_to(parser.add_subparsers(), "train")  # `ssl-zoo train`: the method and its --scale flag come from METHODS
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
    method.after_step(0.5)
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
