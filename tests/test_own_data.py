"""Training on your own images (issue #28): a folder, a flat unlabeled copy, real photographs of other sizes and
webdataset shards, decoded once into a cache; the label-free monitor; and the rest of the life cycle (publish,
load, serve) unchanged."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from huggingface_hub import hf_hub_download
from PIL import Image

import zoo
from conftest import CIFAR10_JPEG, REPO, needs_cifar10
from test_serving import ServerProcess
from training.config import build_config
from training.data import load_train_data
from training.resume import IDENTITY_KEYS
from training.loop import train
from zoo.eval.labelfree import alignment, rankme, uniformity
from zoo.hub.publish import publish, repo_files
from zoo.imagefile import decode_file
from zoo.retrieval.arrays import decode_collection
from zoo.retrieval.images import list_images

spec = importlib.util.spec_from_file_location("sample_photos", REPO / "benchmarks" / "sample_photos.py")
sample_photos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sample_photos)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs (scikit-image's and scikit-learn's) cut into 240 files of many sizes, shapes and formats,
    plus one truncated JPEG and one text file named like an image."""
    pytest.importorskip("skimage", reason="needs scikit-image (pip install scikit-image; in the test extra)")
    folder = tmp_path_factory.mktemp("own") / "photos"
    files = sample_photos.make_photos(folder, count=240)
    (folder / "truncated.jpg").write_bytes(files[1].read_bytes()[:200] if files[1].suffix == ".jpg" else b"\xff\xd8\xff")
    (folder / "notes.png").write_text("not an image")
    return folder, files


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", "train", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def test_rankme_alignment_and_uniformity_measure_what_they_say():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64, generator=g))[0]
    four_directions = torch.randn(500, 4, generator=g) @ basis[:4]  # rank 4 in 64 dimensions
    assert 3.5 < rankme(four_directions) <= 4.0 + 1e-6
    assert rankme(torch.randn(2000, 64, generator=g)) > 55  # nearly full rank
    x = torch.randn(300, 16, generator=g)
    assert alignment(x, x) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, -x) == pytest.approx(4.0)  # opposite unit vectors are 2 apart
    collapsed = torch.ones(300, 16)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)  # every pair at distance 0
    assert uniformity(x) < uniformity(x + 5.0) < 0  # spread features are more uniform than shifted ones
    for bad in (lambda: rankme(torch.ones(5)), lambda: alignment(x, x[:10]), lambda: uniformity(x[:1])):
        with pytest.raises(ValueError, match="needs"):
            bad()


@needs_cifar10
def test_the_cifar10_folder_read_as_plain_images_is_the_cifar10_split_and_its_flat_copy_has_no_labels(tmp_path):
    plain = decode_collection(CIFAR10_JPEG / "test", 32, cache_dir=tmp_path, progress=False)
    cifar = zoo.load_cifar10("test")
    assert plain.classes == cifar.classes and np.array_equal(plain.labels, cifar.labels)
    assert np.array_equal(plain.images, cifar.images)  # the same pixels as the CIFAR-10 path
    assert plain.source["images"] == 10_000 and plain.decode_seconds is not None and not plain.failures
    again = decode_collection(CIFAR10_JPEG / "test", 32, cache_dir=tmp_path, progress=False)
    assert again.decode_seconds is None and np.array_equal(again.images, plain.images)  # from the cache
    flat = tmp_path / "flat"
    flat.mkdir()
    for cls in ("cat", "ship"):
        for path in sorted((CIFAR10_JPEG / "test" / cls).glob("*.jpg"))[:50]:
            shutil.copyfile(path, flat / f"{cls}-{path.name}")
    unlabeled = decode_collection(flat, 32, cache_dir=tmp_path, progress=False)
    assert unlabeled.labels is None and unlabeled.images.shape == (100, 32, 32, 3)
    moved = tmp_path / "elsewhere" / "flat"
    shutil.copytree(flat, moved)
    # The identity names no path: the same files elsewhere are the same data set.
    assert decode_collection(moved, 32, cache_dir=tmp_path, progress=False).source == unlabeled.source


def test_photos_of_any_size_decode_once_and_unusable_files_are_listed(photos, tmp_path):
    folder, files = photos
    decoded = decode_collection(folder, 64, cache_dir=tmp_path, progress=False)
    assert decoded.images.shape == (240, 64, 64, 3) and decoded.labels is None
    assert sorted(f["path"] for f in decoded.failures) == ["notes.png", "truncated.jpg"]
    assert all(f["reason"] for f in decoded.failures)
    assert decoded.files[0] == files[0].name  # sorted, relative names
    assert np.array_equal(decoded.images[0], decode_file(str(files[0]), 64)[0])  # decoded as the server decodes
    (folder / files[0].name).write_bytes(files[2].read_bytes())  # a changed file rebuilds the cache
    try:
        changed = decode_collection(folder, 64, cache_dir=tmp_path, progress=False)
    finally:
        (folder / files[0].name).write_bytes(files[0].read_bytes())  # the module's photographs as they were
    assert changed.decode_seconds is not None and np.array_equal(changed.images[0], decode_file(str(files[2]), 64)[0])


def test_a_file_replaced_at_the_same_size_and_mtime_is_decoded_again(tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (16, 16), colour).save(folder / f"{i}.bmp")  # uncompressed: every file the same size
    first = decode_collection(folder, 16, cache_dir=tmp_path / "cache", progress=False)
    stamp = (folder / "0.bmp").stat()
    (folder / "0.bmp").write_bytes((folder / "1.bmp").read_bytes())  # as `cp -p` or `rsync -t` replace a file
    os.utime(folder / "0.bmp", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert (folder / "0.bmp").stat().st_size == stamp.st_size
    again = decode_collection(folder, 16, cache_dir=tmp_path / "cache", progress=False)
    assert again.decode_seconds is not None and again.images[0].tolist() == first.images[1].tolist()


def test_webdataset_shards_are_read_in_place_with_their_labels(photos, tmp_path):
    _, files = photos
    labels = [f.name.split("-")[0] for f in files]
    pattern = sample_photos.write_shards(files, tmp_path / "shards", per_shard=100, labels=labels)
    listed = list_images(pattern)
    assert listed.kind == "webdataset" and len(listed.paths) == 240 and listed.labels == labels
    assert listed.members.read(5, 10**7) == files[5].read_bytes()
    assert listed.paths[5].endswith(".tar/000000005" + files[5].suffix)
    from_tar = decode_collection(pattern, 48, cache_dir=tmp_path, progress=False)
    from_folder = decode_collection(files[0].parent, 48, cache_dir=tmp_path, progress=False)
    by_name = dict(zip(from_folder.files, from_folder.images))
    assert all(np.array_equal(image, by_name[f.name]) for image, f in zip(from_tar.images, files))
    with pytest.raises(FileNotFoundError, match="shards .* are missing"):
        list_images(str(tmp_path / "shards" / "{00000..00009}.tar"))


def test_train_on_unlabeled_photos_records_rankme_publishes_a_card_and_serves(photos, tmp_path, hub_server,
                                                                              monkeypatch):
    folder, _ = photos
    out = tmp_path / "run"
    proc = _cli("simclr", "--data", str(folder), "--image-size", "64", "--preset", "smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 file(s)" in proc.stderr and "unusable_images.jsonl" in proc.stderr
    unusable = [json.loads(line) for line in (out / "unusable_images.jsonl").read_text().splitlines()]
    assert sorted(u["path"] for u in unusable) == ["notes.png", "truncated.jpg"]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(1 < r["rankme"] <= 64 and "knn_accuracy" not in r for r in history)  # width 8: 64-d features
    results = json.loads((out / "results.json").read_text())
    assert "knn200" not in results and results["protocol"]["label_free"]["images"] == 240
    encoder = zoo.load(str(out))
    assert encoder.config.input_size == 64
    assert encoder.embed([sorted(folder.glob("*.jpg"))[0]]).shape == (1, 64)  # width 8: 64-d features
    monkeypatch.setenv("HF_TOKEN", "test-token")
    publish(out, "tester/photos-simclr")  # to the loopback Hub, with the real huggingface_hub client
    card = Path(hf_hub_download("tester/photos-simclr", "README.md")).read_text()
    info = json.loads((out / "config.json").read_text())["data"]
    assert f"{info['images']} images" in card and info["sha256"][:16] in card and "CIFAR-10 test set" not in card
    assert "| rankme |" in card
    from_hub = zoo.load("hf-hub:tester/photos-simclr")
    image = sorted(folder.glob("*.jpg"))[0]
    torch.testing.assert_close(from_hub.embed([image]), encoder.embed([image]))
    published = b"".join(v if isinstance(v, bytes) else v.read_bytes() for v in repo_files(out, "x/y").values())
    assert str(folder).encode() not in published and str(folder.parent).encode() not in published  # no data paths
    server = ServerProcess(str(out))
    try:
        r = httpx.post(f"{server.url}/embed", files=[("images", (image.name, image.read_bytes(), "image/jpeg"))])
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["embeddings"], encoder.embed([image]).numpy(), rtol=1e-4, atol=1e-5)
    finally:
        server.stop()


@needs_cifar10
def test_train_on_labelled_webdataset_shards_holds_images_out_for_knn_and_resume_checks_the_images(tmp_path):
    files = [p for cls in ("airplane", "cat", "ship") for p in sorted((CIFAR10_JPEG / "train" / cls).glob("*.jpg"))[:60]]
    labels = [p.parent.name for p in files]
    pattern = sample_photos.write_shards(files, tmp_path / "shards", per_shard=64, labels=labels)
    cfg = build_config("byol", "smoke", None, {"data": pattern, "epochs": 1, "final_train_per_class": "all",
                                               "train_per_class": "all"})
    out = tmp_path / "run"
    results = train(cfg, out)
    assert results["test_images"] == 36 and results["train_images"] == 144  # every 5th of each class held out
    assert 0 <= results["knn200"] <= 1 and results["rankme"] > 1
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"knn_accuracy", "weighted_knn_accuracy", "rankme", "alignment", "uniformity"} <= set(record)
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "own images" and config["data"]["kind"] == "webdataset"
    assert config["data"]["classes"] == 3 and config["data"]["images"] == 180
    moved = tmp_path / "moved"
    (tmp_path / "shards").rename(moved)  # the same images elsewhere: the same data set
    again = build_config("byol", "smoke", None, {"data": str(moved / "{00000..00002}.tar"), "epochs": 1,
                                                 "final_train_per_class": "all", "train_per_class": "all"})
    for name in ("config.json", "results.json"):
        (out / name).unlink()  # unfinished again: --resume continues from the checkpoint (and exports)
    assert train(again, out, resume=True)["knn200"] == results["knn200"]
    for name in ("config.json", "results.json"):
        (out / name).unlink()
    sample_photos.write_shards(files[::-1], moved, per_shard=64, labels=labels[::-1])  # same names, other pixels
    with pytest.raises(ValueError, match="not the ones the run started on.*pixels_sha256"):
        train(again, out, resume=True)


def test_bad_layouts_get_clear_errors_and_a_batch_that_decodes_nothing_is_listed(photos, tmp_path, monkeypatch):
    _, files = photos
    monkeypatch.setattr("zoo.retrieval.arrays.DECODE_BATCH", 2)  # the two unusable files sort first: a batch of them
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a0.jpg", "a1.jpg"):
        (junk / name).write_text("garbage")
    shutil.copyfile(files[0], junk / f"b{files[0].suffix}")
    decoded = decode_collection(junk, 32, cache_dir=tmp_path, progress=False)
    assert len(decoded) == 1 and [f["path"] for f in decoded.failures] == ["a0.jpg", "a1.jpg"]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(f) for f in files[:5]))
    with_bad_line = tmp_path / "list2.txt"
    with_bad_line.write_text(listing.read_text() + "\n/etc/hostname\n")
    one, two = (decode_collection(p, 32, cache_dir=tmp_path, progress=False) for p in (listing, with_bad_line))
    assert len(two.failures) == 1 and all(one.source[k] == two.source[k] for k in IDENTITY_KEYS if k in one.source)
    splits = tmp_path / "splits"
    for split, chosen in (("train", files[:40]), ("test", files[40:60])):
        for i, f in enumerate(chosen):
            (splits / split / ("even" if i % 2 else "odd")).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, splits / split / ("even" if i % 2 else "odd") / f.name)
    data = load_train_data(build_config("simclr", "smoke", None, {"data": str(splits), "train_per_class": "all"}))
    assert data.monitor[0].classes == ("even", "odd") and len(data.images) == 40 and len(data.final[1]) == 20
    lopsided = tmp_path / "lopsided"
    for cls, chosen in (("big", files[:20]), ("small", files[20:23])):
        (lopsided / cls).mkdir(parents=True)
        for f in chosen:
            shutil.copyfile(f, lopsided / cls / f.name)
    with pytest.raises(ValueError, match="fewer than 2 classes have 5 images"):
        load_train_data(build_config("simclr", "smoke", None, {"data": str(lopsided)}))
    with pytest.raises(ValueError, match="SOURCE is empty"):
        list_images("")
    with pytest.raises(ValueError, match="compressed tar: decompress it"):
        (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
        list_images(tmp_path / "x.tar.gz")
