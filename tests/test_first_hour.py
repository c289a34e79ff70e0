"""The traps a new user fell into in their first hour (issue #24), each as the behaviour that replaced it."""

import base64
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from conftest import CIFAR10_JPEG, REPO, needs_cifar10, tiny_model_dir

JPEG = CIFAR10_JPEG / "test" / "cat" / "0000.jpg"
TIMEOUT = 300


def _ssl_zoo(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from zoo.cli import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, width=8)


def _interrupt_after(cmd: list[str], marker: str, where) -> subprocess.CompletedProcess:
    """Start ``cmd``, send it SIGINT (Ctrl-C) once ``marker`` shows in the file ``where`` it writes, and wait."""
    with open(where, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + TIMEOUT
        while marker not in where.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(cmd, proc.returncode, where.read_text(), err)


@needs_cifar10
def test_ctrl_c_of_train_is_one_line_naming_what_was_kept_and_the_command_that_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "training", "train", "simclr", "--preset", "smoke", "--epochs", "40", "--out", str(run)]
    stopped = _interrupt_after(cmd, "simclr epoch 1/40", tmp_path / "log")
    assert stopped.returncode == 130 and stopped.stderr.count("\n") == 1, stopped.stderr
    assert "Traceback" not in stopped.stderr and "interrupted: the checkpoint in" in stopped.stderr
    argv = shlex.split(stopped.stderr.split("continue with: ")[1])
    assert argv[:3] == ["python", "-m", "training"] and argv[-3:] == ["--out", str(run), "--resume"]
    assert "\r" not in stopped.stdout  # not a terminal: lines, not progress-bar redraws
    kept = int(stopped.stderr.split("keeps epoch ")[1].split()[0])
    resumed = _interrupt_after([sys.executable, *argv[1:]], f"simclr epoch {kept + 1}/40", tmp_path / "log2")
    assert f"simclr epoch {kept + 1}/40" in resumed.stdout and resumed.returncode == 130


@needs_cifar10
def test_ctrl_c_of_embed_is_one_line_and_the_same_command_resumes(model_dir, tmp_path):
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "zoo", "embed", "cifar10:test", "--model", str(model_dir), "--out", str(out),
           "--shard-size", "500", "--workers", "0"]
    deadline = time.monotonic() + TIMEOUT
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    while not list((out / ".progress").glob("shard-*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    last = err.strip().splitlines()[-1]  # the lines before it: one per finished shard, as in any log
    assert proc.returncode == 130 and "Traceback" not in err and last.startswith("ssl-zoo embed: interrupted: "), err
    assert "finished shard(s) are kept in" in last and "run the same command again" in last
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)
    assert done.returncode == 0 and zoo.load_collection(out)[0].shape[0] == 10_000


def test_embed_takes_every_unambiguous_layout_and_names_the_rule_otherwise(model_dir):
    enc = zoo.load(model_dir)
    hwc = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    reference = enc.embed(hwc)
    chw_uint8 = torch.from_numpy(hwc).permute(2, 0, 1)  # what torchvision.io.read_image returns
    for image in (chw_uint8, hwc.astype(np.float32) / 255, chw_uint8.float() / 255):
        torch.testing.assert_close(enc.embed(image), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.embed(torch.stack([chw_uint8, chw_uint8])), enc.embed([hwc, hwc]))
    gray = hwc.mean(2).astype(np.uint8)
    torch.testing.assert_close(enc.embed(gray), enc.embed(Image.fromarray(gray)))
    with pytest.raises(ValueError, match=r"ambiguous: an image array or tensor is \(H, W, 3\)"):
        enc.embed(np.zeros((3, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*divide 0..255 pixels by 255"):
        enc.embed(hwc.astype(np.float32))


def test_embed_reads_data_urls_and_refuses_a_missing_path_in_one_short_line(model_dir):
    enc = zoo.load(model_dir)
    url = "data:image/jpeg;base64," + base64.b64encode(JPEG.read_bytes()).decode()
    torch.testing.assert_close(enc.embed(url), enc.embed(JPEG))
    with pytest.raises(ValueError, match="malformed"):
        enc.embed("data:image/jpeg;base64,@@not-base64@@")
    with pytest.raises(FileNotFoundError) as error:
        enc.embed("x" * 100_000)
    assert len(str(error.value)) < 300 and "100000 characters" in str(error.value)


def test_a_broken_image_is_named_in_the_error(model_dir, tmp_path):
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(JPEG.read_bytes()[:300])  # truncated
    with pytest.raises(ValueError, match=r"holiday\.jpg cannot be read as an image"):
        zoo.load(model_dir).embed([JPEG, broken])


def test_list_into_head_is_not_an_error_and_a_pattern_without_matches_says_so():
    piped = subprocess.run(f"{sys.executable} -m zoo list | head -1", shell=True, capture_output=True, text=True,
                           timeout=TIMEOUT, cwd=REPO)
    assert piped.returncode == 0 and piped.stdout.startswith("name") and "Broken pipe" not in piped.stderr
    none = _ssl_zoo("list", "foo*")
    assert none.returncode == 2 and none.stdout == "" and "no model matches 'foo*'" in none.stderr
    assert "simclr-cifar10.cpu" in none.stderr  # and what there is


def test_list_models_gives_names_as_timm_does_and_rows_on_request():
    names = zoo.list_models()
    assert all(isinstance(n, str) for n in names) and "simclr-cifar10.cpu" in names
    rows = zoo.list_models(details=True)
    assert [r["name"] for r in rows] == names and all("protocol" in r for r in rows)
    assert zoo.list_models("byol*") == [n for n in names if n.startswith("byol")]


@needs_cifar10
def test_create_transform_is_the_preprocessing_embed_applies(model_dir):
    enc = zoo.load(model_dir)
    cfg = zoo.resolve_data_config(enc)
    assert cfg == {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": None, "std": None,
                   "crop_pct": 1.0, "crop_mode": "center"}
    transform = zoo.create_transform(enc)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    for image in (Image.open(JPEG), photo):
        with torch.inference_mode():
            torch.testing.assert_close(enc(transform(image)[None]), enc.embed(image), atol=1e-6, rtol=0)


def test_the_collection_commands_build_their_help_without_torch():
    code = ("import argparse, sys; from zoo.cli import COMMANDS\n"
            "subparsers = argparse.ArgumentParser().add_subparsers()\n"
            "for name in ('embed', 'index', 'neighbors'):\n"
            "    COMMANDS[name].add_to(subparsers, name)\n"
            "    subparsers.choices[name].format_help()\n"
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT).stdout.strip() == "False"


def test_a_grid_into_a_missing_folder_names_that_folder_and_rows_name_their_query(tmp_path):
    from zoo.retrieval.grid import grid_cells, write_grid

    hits = [[{"path": str(JPEG), "label": "cat", "similarity": 0.9}]]
    with pytest.raises(FileNotFoundError, match=f"the folder {tmp_path / 'nodir'} does not exist"):
        write_grid([JPEG], hits, tmp_path / "nodir" / "x.png")
    assert not list(tmp_path.iterdir())
    assert [cell[1] for cell in grid_cells([JPEG, Image.open(JPEG)], hits * 2)[0][:1]] == ["0000.jpg"]
    assert grid_cells([Image.open(JPEG)], hits)[0][0][1] == "query 1"


def test_the_offline_hub_error_says_hf_hub_offline_is_set(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE is set"):
        zoo.load("hf-hub:nobody/not-cached", cache_dir=tmp_path)
