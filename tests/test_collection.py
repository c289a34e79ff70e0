"""``ssl-zoo embed``: shards on disk that match ``encoder.embed`` row for row, bad files skipped and
listed, a killed run resumed to identical output, and a 2-process torchrun run equal to one process."""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import CIFAR10_JPEG, REPO, free_port, needs_cifar10, tiny_model_dir
import zoo
from zoo import DatasetError, Encoder, EncoderConfig
from zoo.cli import main as cli_main
from zoo.retrieval.embed import embed_collection
from zoo.retrieval.images import list_images
from zoo.retrieval.shards import load_collection, read_manifest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, width=8)


@pytest.fixture(scope="module")
def train_list(tmp_path_factory) -> Path:
    """A text file of 500 CIFAR-10 train JPEG paths, 50 per class."""
    if not (CIFAR10_JPEG / "train").is_dir():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR10_JPEG}")
    paths = [p for c in sorted((CIFAR10_JPEG / "train").iterdir()) for p in sorted(c.glob("*.jpg"))[:50]]
    path = tmp_path_factory.mktemp("lists") / "train500.txt"
    path.write_text("".join(f"{p}\n" for p in paths))
    return path


def _files(directory: Path) -> dict[str, bytes]:
    """Every file of an embed output (manifest, shards, failures, shard records) by relative path."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _embed_cmd(source, model, out, *extra) -> list[str]:
    return [sys.executable, "-m", "zoo", "embed", str(source), "--model", str(model), "--out", str(out), *extra]


def _png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width x height`` (what a decompression bomb looks like to a reader)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@needs_cifar10
def test_cifar10_test_split_matches_encoder_embed_row_for_row(model_dir, cifar10_test, tmp_path):
    manifest = embed_collection("cifar10:test", model_dir, tmp_path, shard_size=4096, workers=1, progress=False)
    embeddings, metadata = load_collection(tmp_path)
    encoder = zoo.load(model_dir)
    rows = np.arange(0, 10_000, 7)  # every shard and class; encoder.embed of all 10,000 would double the test
    expected = encoder.embed(cifar10_test.images[rows]).numpy()
    assert embeddings.dtype == np.float32 and embeddings.shape == (10_000, 64)
    np.testing.assert_allclose(embeddings[rows], expected, rtol=0, atol=1e-5)
    assert metadata["row"].to_pylist() == metadata["file_index"].to_pylist() == list(range(10_000))
    assert metadata["label"].to_pylist() == [cifar10_test.classes[i] for i in cifar10_test.labels]
    assert set(metadata["width"].to_pylist()) == set(metadata["height"].to_pylist()) == {32}
    assert [s["rows"] for s in manifest["shards"]] == [4096, 4096, 1808] and manifest["failures"] == 0
    assert manifest["model"]["sha256"] == encoder.info["sha256"] and manifest["feature_dim"] == 64
    assert manifest["classes"] == list(cifar10_test.classes) and manifest == read_manifest(tmp_path)


def test_bad_files_are_skipped_listed_and_rows_stay_deterministic(model_dir, tmp_path):
    src = tmp_path / "images"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a/0.png", "a/2.jpg", "b/1.png", "b/3.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(src / name)
    (src / "a/1.jpg").write_text("not an image")
    (src / "b/0.jpg").write_bytes((src / "b/3.jpg").read_bytes()[:200])  # truncated
    (src / "b/2.png").write_bytes(_png_claiming_size(12_000, 12_000))    # over --max-file-pixels
    (src / "b/notes.txt").write_text("not listed: not an image extension")
    outs = []
    for run in ("first", "rerun"):
        out = tmp_path / run
        manifest = embed_collection(src, model_dir, out, shard_size=3, progress=False, workers=0)
        outs.append(out)
    embeddings, metadata = load_collection(outs[0])
    failures = [json.loads(line) for line in (outs[0] / "failures.jsonl").read_text().splitlines()]
    # sorted file list: a/0.png a/1.jpg a/2.jpg b/0.jpg b/1.png b/2.png b/3.jpg
    assert [(f["file_index"], Path(f["path"]).name) for f in failures] == [(1, "1.jpg"), (3, "0.jpg"), (5, "2.png")]
    assert "over the limit of" in failures[2]["reason"] and all(f["reason"] for f in failures)
    assert metadata["file_index"].to_pylist() == [0, 2, 4, 6]  # positions in the file list
    assert metadata["row"].to_pylist() == [0, 1, 2, 3]  # indices into the embeddings
    assert metadata["label"].to_pylist() == ["a", "a", "b", "b"]
    assert metadata["width"].to_pylist() == [30] * 4 and metadata["height"].to_pylist() == [40] * 4
    expected = zoo.load(model_dir).embed([src / "a/0.png", src / "a/2.jpg", src / "b/1.png",
                                                         src / "b/3.jpg"]).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    assert manifest["failures"] == 3 and [s["rows"] for s in manifest["shards"]] == [2, 1, 1]
    assert _files(outs[0]) == _files(outs[1])  # a rerun writes the same bytes


def test_float16_and_normalize(model_dir, train_list, tmp_path):
    lines = train_list.read_text().splitlines()[::25]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n\n")
    plain = embed_collection(tmp_path / "list.txt", model_dir, tmp_path / "f32", progress=False, workers=0)
    half = embed_collection(tmp_path / "list.txt", model_dir, tmp_path / "f16", dtype="float16", normalize=True,
                            progress=False, workers=0)
    x, meta = load_collection(tmp_path / "f32")
    y, _ = load_collection(tmp_path / "f16")
    assert meta["path"].to_pylist() == lines and meta["label"].null_count == len(lines)  # list order, no labels
    assert y.dtype == np.float16 and half["dtype"] == "float16" and half["normalized"] and not plain["normalized"]
    np.testing.assert_allclose(y.astype(np.float32), x / np.linalg.norm(x, axis=1, keepdims=True), atol=2e-3)


@needs_cifar10
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker processes from /proc (Linux)")
def test_killed_run_resumes_to_identical_output_and_redoes_corrupt_shards(model_dir, train_list, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "resumed"
    proc = subprocess.Popen(_embed_cmd(train_list, model_dir, out, "--shard-size", "25", "--workers", "1"), cwd=REPO,
                            stderr=subprocess.DEVNULL)
    first = out / ".progress" / "shard-00000.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "manifest.json").exists(), "the run was not killed mid-way"
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers and not any(map(_alive, workers)), "DataLoader workers outlived the killed run"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*-00000.*")}

    for directory in (out, reference):  # resume the killed run; an uninterrupted one for reference
        embed_collection(train_list, model_dir, directory, shard_size=25, workers=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*-00000.*")} == stamps  # verified and skipped
    assert _files(out) == _files(reference)

    shard = out / "embeddings-00003.npy"
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)  # corrupt a finished shard
    embed_collection(train_list, model_dir, out, shard_size=25, workers=0, progress=False)
    assert _files(out) == _files(reference)


def test_resume_refuses_output_of_other_settings(model_dir, train_list, tmp_path):
    lines = train_list.read_text().splitlines()[:20]
    (tmp_path / "list.txt").write_text("\n".join(lines))
    embed_collection(tmp_path / "list.txt", model_dir, tmp_path / "out", progress=False, workers=0)
    with pytest.raises(ValueError, match="another embed run"):
        embed_collection(tmp_path / "list.txt", model_dir, tmp_path / "out", normalize=True, progress=False, workers=0)


@needs_cifar10
def test_torchrun_two_processes_equal_one_process(model_dir, train_list, tmp_path):
    lines = train_list.read_text().splitlines()[::4]
    source = tmp_path / "list.txt"
    source.write_text("\n".join(lines))
    single, multi = tmp_path / "single", tmp_path / "multi"
    embed_collection(source, model_dir, single, shard_size=20, workers=0, progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           *_embed_cmd(source, model_dir, multi, "--shard-size", "20", "--workers", "0")[1:]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = {json.loads(p.read_text())["shard"]: p for p in (multi / ".progress").glob("*.json")}
    assert sorted(records) == [0, 1, 2, 3, 4, 5, 6]
    assert "rank 1: shard 2/7" in proc.stderr and "rank 0: shard 1/7" in proc.stderr  # shard i on rank i % 2
    x, meta_single = load_collection(single)
    y, meta_multi = load_collection(multi)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-6)
    assert meta_multi.equals(meta_single) and len(x) == 125
    strip = [{k: v for k, v in s.items() if k != "embeddings"} for s in read_manifest(single)["shards"]]
    assert [{k: v for k, v in s.items() if k != "embeddings"} for s in read_manifest(multi)["shards"]] == strip


def test_sources_and_bad_arguments_get_clear_errors(model_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="cifar10:train or cifar10:test"):
        list_images("cifar10:val")
    with pytest.raises(FileNotFoundError, match="SOURCE"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        list_images(tmp_path / "empty")
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    with pytest.raises(ValueError, match="is an image: give the folder that holds it"):
        list_images(tmp_path / "one.png")
    flat = list_images(tmp_path)  # an image directly in the root: no ImageFolder labels
    assert flat.labels is None and flat.paths == [str(tmp_path / "one.png")]
    with pytest.raises(ValueError, match="shard_size"):
        embed_collection(tmp_path, model_dir, tmp_path / "out", shard_size=0)
    assert cli_main(["embed", str(tmp_path), "--model", str(model_dir), "--out", str(tmp_path / "o"),
                     "--backend", "onnx", "--device", "cuda"]) == 2
    assert "--backend onnx runs on the CPU" in capsys.readouterr().err


def test_onnx_backend_matches_torch(model_dir, tmp_path):
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    torch_out = embed_collection(tmp_path, model_dir, tmp_path / "torch", progress=False, workers=0)
    onnx_out = embed_collection(tmp_path, model_dir, tmp_path / "onnx", backend="onnx", progress=False, workers=0)
    x, _ = load_collection(tmp_path / "torch")
    y, _ = load_collection(tmp_path / "onnx")
    np.testing.assert_allclose(y, x, atol=1e-4)
    assert onnx_out["backend"] == "onnx" and torch_out["settings_sha256"] != onnx_out["settings_sha256"]
    assert pq.read_table(tmp_path / "onnx" / "metadata-00000.parquet").num_rows == 6
