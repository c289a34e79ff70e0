"""Files and folders nobody vetted (issue #25): decoding bombs that pass every pixel limit, folders with FIFOs,
link loops and undecodable names, damaged records and configs, and outputs that must not change or be lost."""

import errno
import io
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

import hostile
import zoo
from conftest import CIFAR10_JPEG, needs_cifar10, tiny_model_dir
from zoo.imagefile import ImageLimits, ImageRejected, decode_file, decode_image, image_to_array

JPEG = CIFAR10_JPEG / "test" / "cat" / "0000.jpg"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, width=4)


@pytest.mark.parametrize("name, data, too_large, message", [
    ("progressive JPEG declaring 11585 x 11585", hostile.declared_size(hostile.jpeg((256, 256), True), 11585, 11585),
     True, "progressive JPEG of 11585x11585"),
    ("JPEG of 2,000 scans", hostile.repeated_scans(hostile.jpeg((256, 256), True), 2000), False, "more than 32 scans"),
    ("PNG with 5,000 colour profiles", hostile.icc_profiles(5000), False, "second colour profile"),
    ("PNG of 1 x 80,000,000", hostile.long_thin_png(80_000_000), False, "aspect ratio of 80000000:1"),
    ("EPS, a Ghostscript format", hostile.EPS, False, "not a JPEG, PNG, WebP, GIF, BMP or TIFF image"),
])
def test_decoding_bombs_are_refused_from_their_structure_in_milliseconds(name, data, too_large, message):
    start = time.process_time()
    with pytest.raises(ImageRejected, match=message) as refused:
        decode_image(data, 32, name=name)
    assert refused.value.too_large is too_large and name in str(refused.value)
    assert time.process_time() - start < 0.5  # refused before any decoding work


def test_real_files_pass_the_structure_checks():
    for data in (hostile.jpeg(), hostile.jpeg(progressive=True), hostile.png(), JPEG.read_bytes()):
        assert decode_image(data, 32).shape == (32, 32, 3)
    limits = ImageLimits(max_png_chunks=3)
    decode_image(hostile.png(extra_chunks=[hostile.png_chunk(b"tEXt", b"a\x00b")] * 3), 32, limits)
    with pytest.raises(ImageRejected, match="more than 3 chunks"):
        decode_image(hostile.png(extra_chunks=[hostile.png_chunk(b"tEXt", b"a\x00b")] * 4), 32, limits)


def test_exif_orientation_is_applied_everywhere(tmp_path, model_dir):
    y, x = np.mgrid[0:60, 0:40]
    upright = Image.fromarray(np.stack([x * 6, y * 4, np.zeros_like(x)], -1).astype(np.uint8))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores a portrait photo
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored.save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    reference = decode_image(_jpeg_bytes(upright), 32).astype(int)
    for got in (decode_file(str(tmp_path / "phone.jpg"), 32)[0], image_to_array(tmp_path / "phone.jpg", 32)):
        assert np.abs(got.astype(int) - reference).mean() < 2  # JPEG noise only; sideways would be ~60
    enc = zoo.load(model_dir)
    torch.testing.assert_close(enc.embed(tmp_path / "phone.jpg"), enc.embed(Image.fromarray(reference.astype(np.uint8))),
                               atol=0.05, rtol=0)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95)
    return buf.getvalue()


@needs_cifar10
def test_embed_on_a_hostile_folder_finishes_and_lists_what_it_refused(model_dir, tmp_path):
    folder = tmp_path / "untrusted"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(sorted((CIFAR10_JPEG / "test" / "cat").glob("*.jpg"))[:3]):
        shutil.copy(path, folder / "sub" / f"{i}.jpg")
    os.mkfifo(folder / "fifo.jpg")  # reading it would hang the run
    (folder / "sub" / "loop").symlink_to("..")  # walking it again and again would never end
    (folder / "notes.jpg").write_bytes(hostile.EPS)
    (folder / "thin.png").write_bytes(hostile.long_thin_png(80_000_000))
    (folder / "bomb.jpg").write_bytes(hostile.declared_size(hostile.jpeg((256, 256), True), 11585, 11585))
    fd = os.open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), os.O_WRONLY | os.O_CREAT)  # Latin-1 name
    os.write(fd, JPEG.read_bytes())
    os.close(fd)
    manifest = zoo.embed_collection(folder, model_dir, tmp_path / "out", workers=0, progress=False)
    assert manifest["rows"] == 3  # the three real images, each once
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    reasons = {os.path.basename(f["path"]): f["reason"] for f in failures}
    assert "not valid UTF-8" in reasons["caf\\xe9.jpg"] and "not a regular file" in reasons["fifo.jpg"]
    assert "not a JPEG, PNG" in reasons["notes.jpg"] and "aspect ratio" in reasons["thin.png"]
    assert "progressive JPEG" in reasons["bomb.jpg"]
    no_links = zoo.embed_collection(folder / "sub", model_dir, tmp_path / "out2", workers=0, progress=False,
                                    follow_symlinks=False)
    assert no_links["rows"] == 3


@needs_cifar10
def test_damaged_records_and_configs_are_one_clear_error_or_redone(model_dir, tmp_path):
    out = tmp_path / "out"
    zoo.embed_collection("cifar10:test", model_dir, out, shard_size=5000, workers=0, progress=False)
    (out / ".progress" / "shard-00000.json").write_text("[1, 2]")  # valid JSON, not a record: the shard is redone
    assert zoo.embed_collection("cifar10:test", model_dir, out, shard_size=5000, workers=0,
                                progress=False)["rows"] == 10_000
    (out / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        zoo.load_collection(out)
    nested = tmp_path / "nested"
    shutil.copytree(model_dir, nested)
    (nested / "config.json").write_text('{"encoder": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        zoo.load(nested)


def test_a_model_folder_cannot_set_its_provenance_or_an_infinite_scale(model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "name": "simclr-cifar10.cpu", "repo_id": "big/lab",
                                                    "revision": "v9", "sha256": "0" * 64}))
    info = zoo.load(folder).info
    assert "name" not in info and "repo_id" not in info and info["source"] == f"local-dir:{folder.resolve()}"
    assert info["sha256"] == zoo.io.sha256_file(folder / "model.safetensors")
    config["encoder"].update(mean=[0.5, 0.5, 0.5], std=[1e-300, 1e-300, 1e-300])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="std must be 3 finite numbers of at least 0.001"):
        zoo.load(folder)


def test_exports_are_byte_deterministic_and_a_full_disk_keeps_the_previous_export(tmp_path, monkeypatch):
    from training import loop
    from training.config import build_config

    run = tmp_path / "run"
    loop.train(build_config("simclr", "smoke", None, {"epochs": 1}), run)
    first = (run / "model.safetensors").read_bytes()
    (run / ".checkpoint.safetensors.deadbeef.tmp").write_bytes(b"a write killed half-way")

    def full_disk(self, directory, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zoo.Encoder, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        loop.train(build_config("simclr", "smoke", None, {"epochs": 1}), run, re_export=True)
    assert zoo.load(run).info["sha256"] == zoo.io.sha256_file(run / "model.safetensors")  # still loads, unchanged
    assert (run / "model.safetensors").read_bytes() == first and not (run / "previous").exists()
    monkeypatch.undo()
    loop.train(build_config("simclr", "smoke", None, {"epochs": 1}), run, re_export=True)
    assert (run / "model.safetensors").read_bytes() == first == (run / "previous" / "1" / "model.safetensors").read_bytes()


@needs_cifar10
def test_an_index_refuses_changed_files_and_non_finite_vectors(model_dir, tmp_path):
    out = tmp_path / "out"
    zoo.embed_collection(CIFAR10_JPEG / "test" / "cat", model_dir, out, workers=0, progress=False)
    zoo.build_index(out)
    index = zoo.NeighborIndex.load(out)
    vectors, _ = zoo.load_collection(out)
    huge = vectors[:1] * 1e38 / np.abs(vectors[:1]).max()  # ~1e38: a float32 norm would overflow to inf
    assert index.search(huge, k=1)[0][0]["row"] == index.search(vectors[:1], k=1)[0][0]["row"]
    for bad, message in ((np.full_like(vectors[:1], np.nan), "NaN or infinity"),
                         (np.zeros_like(vectors[:1]), "all zeros")):
        with pytest.raises(ValueError, match=message):
            index.search(bad)
    data = bytearray((out / "index.faiss").read_bytes())
    data[-1] ^= 0xFF
    (out / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the checksum"):
        zoo.NeighborIndex.load(out)
    shard = out / "embeddings-00000.npy"
    array = np.load(shard)
    array[3, 0] = np.inf
    np.save(shard, array)
    record = json.loads((out / ".progress" / "shard-00000.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in (record["embeddings"], manifest["shards"][0]["embeddings"]):
        entry["sha256"] = zoo.io.sha256_file(shard)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"NaN or infinity \(rows \[3\]\)"):
        zoo.build_index(out)


def test_the_file_checks_come_before_reading(tmp_path):
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(ImageRejected, match="not a regular file"):
        decode_file(str(tmp_path / "fifo.jpg"), 32)  # returns at once: a FIFO is never opened
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8" + bytes(2 * 1024 * 1024))
    with pytest.raises(ImageRejected, match="over the limit of 1048576") as refused:
        decode_file(str(tmp_path / "big.jpg"), 32, ImageLimits(max_file_bytes=1024 * 1024))
    assert refused.value.too_large
