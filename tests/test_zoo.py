"""The zoo end to end against a Hub-protocol server on loopback, through the real huggingface_hub client."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
from zoo.io import sha256_file
from conftest import CIFAR10_JPEG, needs_cifar10
from training.config import build_config
from training.loop import train
from zoo.hub.download import HashMismatchError
from zoo.hub.registry import PRETRAINED_DIR
from zoo.hub.publish import publish, render_card

pytestmark = needs_cifar10
REPO = "tester/tiny-byol"
JPEG = CIFAR10_JPEG / "test" / "cat" / "0000.jpg"


@pytest.fixture(scope="module")
def token():
    os.environ["HF_TOKEN"] = "test-token"
    yield "test-token"
    os.environ.pop("HF_TOKEN", None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "byol"
    train(build_config("byol", "smoke", None, {"epochs": 1}), out)
    return out


@pytest.fixture(scope="module")
def published(hub_server, token, run_dir):
    return publish(run_dir, REPO)


def _registry(tmp_path, monkeypatch, **tag):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"tiny-byol": {"method": "byol", "dataset": "cifar10", "default_tag": "smoke",
                                              "tags": {"smoke": tag}}}))
    monkeypatch.setenv("SSL_ZOO_REGISTRY", str(path))


def _state_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_publish_then_load_by_id_and_pinned_revision_bit_exact(published, run_dir):
    commit = published["commit"]
    assert len(commit) == 40 and published["registry_entry"]["revision"] == commit
    trained = load_file(run_dir / "model.safetensors")
    for ref in (f"hf-hub:{REPO}", REPO, f"hf-hub:{REPO}@{commit}"):
        enc = zoo.load(ref)
        assert isinstance(enc, zoo.Encoder) and not enc.training and enc.info["revision"] == commit
        assert _state_equal(enc.backbone.state_dict(), trained)  # the file holds the backbone's own keys
    with safe_open(hf_hub_download(REPO, "model.safetensors", revision=commit), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "byol" and meta["architecture"] == "resnet18_cifar" and meta["epochs"] == "1"
    files = HfApi().list_repo_files(REPO, revision=commit)
    assert sorted(files) == [".gitattributes", "README.md", "config.json", "curves.png", "metrics.jsonl",
                             "model.safetensors", "results.json", "train_config.json"]


def test_published_files_hold_no_machine_local_paths(published, run_dir):
    commit = published["commit"]
    local = json.loads((run_dir / "train_config.json").read_text())
    assert "data" in local  # the run's own record keeps it
    for name in ("train_config.json", "README.md", "config.json"):
        text = open(hf_hub_download(REPO, name, revision=commit)).read()
        assert str(run_dir.parent) not in text and "/shared/data" not in text, name
    assert "data" not in json.loads(open(hf_hub_download(REPO, "train_config.json", revision=commit)).read())


def test_republishing_the_same_run_makes_no_new_commit(published, run_dir):
    again = publish(run_dir, REPO)
    assert again["commit"] == published["commit"]
    assert HfApi().model_info(REPO).sha == published["commit"]


def test_private_publish_to_an_existing_public_repo_is_refused(published, run_dir):
    with pytest.raises(PermissionError, match="PUBLIC"):
        publish(run_dir, REPO, private=True)
    assert HfApi().model_info(REPO).sha == published["commit"]


def test_publish_without_network_is_one_clear_error(run_dir, token, monkeypatch):
    code = ("import sys; from zoo.hub.publish import publish\n"
            f"try:\n    publish({str(run_dir)!r}, 'tester/x')\nexcept ConnectionError as e:\n    print('ERR', e)")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERR cannot reach the Hub (http://127.0.0.1:9)" in proc.stdout and "nothing was uploaded" in proc.stdout


def test_registry_name_is_verified_against_its_pins(published, tmp_path, monkeypatch):
    entry = dict(published["registry_entry"])
    _registry(tmp_path, monkeypatch, **entry)
    enc = zoo.load("tiny-byol")
    assert enc.info["sha256"] == entry["sha256"]["model.safetensors"] and enc.info["name"] == "tiny-byol.smoke"
    assert [row["name"] for row in zoo.list_models(details=True)] == ["tiny-byol.smoke"]
    assert zoo.list_models("nothing*") == []
    bad = {**entry["sha256"], "model.safetensors": "0" * 64}
    _registry(tmp_path, monkeypatch, **{**entry, "sha256": bad})
    with pytest.raises(HashMismatchError) as err:
        zoo.load("tiny-byol.smoke")
    assert entry["sha256"]["model.safetensors"] in str(err.value) and "0" * 64 in str(err.value)
    assert zoo.load(f"hf-hub:{REPO}@{entry['revision']}").feature_dim == 64  # the file was left in the cache
    with pytest.raises(KeyError, match="did you mean tiny-byol"):
        zoo.load("tiny-bypl")


def test_the_pin_covers_config_json(published, tmp_path, monkeypatch):
    entry = dict(published["registry_entry"])
    _registry(tmp_path, monkeypatch, **entry)
    cached = hf_hub_download(REPO, "config.json", revision=entry["revision"])
    original = open(cached).read()
    config = json.loads(original)
    config["encoder"]["mean"], config["encoder"]["std"] = [0.5] * 3, [0.1] * 3
    os.chmod(cached, 0o644)
    try:
        open(cached, "w").write(json.dumps(config))
        with pytest.raises(HashMismatchError, match="config.json"):
            zoo.load("tiny-byol")
    finally:
        open(cached, "w").write(original)
    assert zoo.load("tiny-byol").config.mean is None


def test_bundled_files_are_the_offline_fallback_and_are_verified(published, run_dir, tmp_path, monkeypatch):
    from zoo.hub import registry

    bundled = tmp_path / "pretrained" / "tiny-byol.smoke"
    bundled.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run_dir / name, bundled / name)
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path / "pretrained")
    entry = {**published["registry_entry"], "bundled": "tiny-byol.smoke"}
    # a pinned Hub revision that cannot be reached (empty cache, Hub offline): the bundled copy is used
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _registry(tmp_path, monkeypatch, **entry)
    enc = zoo.load("tiny-byol", cache_dir=tmp_path / "empty-cache")
    assert enc.info["source"] == "bundled:tiny-byol.smoke"
    assert _state_equal(enc.backbone.state_dict(), load_file(run_dir / "model.safetensors"))
    # without a Hub revision the bundled copy is the source; a changed bundled file is refused
    _registry(tmp_path, monkeypatch, **{**entry, "revision": None, "repo_id": None})
    assert zoo.load("tiny-byol").info["source"] == "bundled:tiny-byol.smoke"
    weights = load_file(bundled / "model.safetensors")
    weights["bn1.bias"] += 1
    save_file(weights, bundled / "model.safetensors")
    with pytest.raises(HashMismatchError, match="registry entry tiny-byol.smoke"):
        zoo.load("tiny-byol")


def test_a_run_is_bundled_as_a_verified_offline_registry_tag(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from zoo.hub import publish, registry
    from zoo.hub.publish import bundle

    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _registry(tmp_path, monkeypatch, pending="not trained yet")
    entry = bundle(run_dir, "tiny-byol.smoke")
    folder = tmp_path / "pretrained" / "tiny-byol.smoke"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md", "train_config.json",
                                                 "metrics.jsonl", "results.json", "curves.png"}
    card = (folder / "README.md").read_text()
    assert 'zoo.load("tiny-byol.smoke")' in card and "ssl-zoo serve tiny-byol.smoke" in card
    enc = zoo.load("tiny-byol", cache_dir=tmp_path / "empty-cache")  # the default tag, no network
    assert enc.info["source"] == "bundled:tiny-byol.smoke"
    assert _state_equal(enc.backbone.state_dict(), load_file(run_dir / "model.safetensors"))
    check = entry["results"]["check"]
    assert (check["train_per_class"], check["test_per_class"]) == (500, 100) and 0 < check["knn200"] <= 1
    assert "pending" not in json.loads((tmp_path / "registry.json").read_text())["tiny-byol"]["tags"]["smoke"]
    # a run that scores lower does not replace shipped weights, unless forced; a bad name says what to give
    models = json.loads((tmp_path / "registry.json").read_text())
    models["tiny-byol"]["tags"]["smoke"]["results"]["knn200"] = 0.99
    (tmp_path / "registry.json").write_text(json.dumps(models))
    with pytest.raises(ValueError, match="already ships weights"):
        bundle(run_dir, "tiny-byol.smoke")
    assert zoo.load("tiny-byol").info["source"] == "bundled:tiny-byol.smoke"  # untouched
    with pytest.raises(ValueError, match="NAME.TAG with NAME one of"):
        bundle(run_dir, "nope.smoke")
    # a new tag becomes the default only when it beats the default's weights on the same protocol
    monkeypatch.setattr(publish, "_reprobe", lambda *a: {})  # re-checked above; here only the tags matter
    bundle(run_dir, "tiny-byol.second")
    assert json.loads((tmp_path / "registry.json").read_text())["tiny-byol"]["default_tag"] == "smoke"  # 0.99 stays
    models = json.loads((tmp_path / "registry.json").read_text())
    models["tiny-byol"]["tags"]["smoke"]["results"]["knn200"] = 0.01
    (tmp_path / "registry.json").write_text(json.dumps(models))
    bundle(run_dir, "tiny-byol.third")
    assert zoo.load("tiny-byol").info["source"] == "bundled:tiny-byol.third"
    models = json.loads((tmp_path / "registry.json").read_text())
    models["tiny-byol"]["tags"]["third"]["results"]["knn200"] = 0.001
    models["tiny-byol"]["tags"]["third"]["protocol"]["knn200"]["train_images"] = 7  # measured another way
    (tmp_path / "registry.json").write_text(json.dumps(models))
    bundle(run_dir, "tiny-byol.fourth")
    assert zoo.load("tiny-byol").info["source"] == "bundled:tiny-byol.third"


@pytest.mark.parametrize("name", [row["name"] for row in zoo.list_models(details=True) if row["source"].startswith("bundled")])
def test_every_bundled_encoder_loads_verified_with_no_network_and_no_cache(name, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    row = next(r for r in zoo.list_models(details=True) if r["name"] == name)
    enc = zoo.load(name, cache_dir=tmp_path / "empty-cache")
    assert enc.info["source"] == f"bundled:{name}" and not list(tmp_path.iterdir())  # nothing fetched or cached
    assert enc.feature_dim == enc.embed([JPEG]).shape[1] and not enc.training
    assert (row["architecture"], row["width"]) == (enc.config.architecture, enc.config.kwargs.get("width"))
    card = (PRETRAINED_DIR / name / "README.md").read_text()
    for key in ("knn5", "knn200", "linear"):  # the card states the registry's numbers
        assert f"{100 * row['results'][key]:.2f} %" in card


@contextlib.contextmanager
def _counting_file_work():
    """Record every sha256 computed over a file and every file read as text (by file name)."""
    import hashlib

    hashed, read = [], []
    digest, read_text = hashlib.file_digest, Path.read_text
    hashlib.file_digest = lambda f, name: (hashed.append(Path(f.name).name), digest(f, name))[1]
    Path.read_text = lambda self, *a, **k: (read.append(self.name), read_text(self, *a, **k))[1]
    try:
        yield hashed, read
    finally:
        hashlib.file_digest, Path.read_text = digest, read_text


def test_zoo_load_reads_config_once_and_hashes_each_file_once(published, run_dir, monkeypatch):
    """Pins, the Hub's LFS object id and the provenance share one sha256 per file; config.json is parsed once."""
    bundled = next(r["name"] for r in zoo.list_models(details=True) if r["source"].startswith("bundled"))
    commit = published["commit"]
    pins = {name: sha256_file(run_dir / name) for name in ("config.json", "model.safetensors")}
    _registry(run_dir.parent, monkeypatch, repo_id=REPO, revision=commit, sha256=pins)
    for source, hashed_files in (("tiny-byol", ["config.json", "model.safetensors"]),  # Hub files, pinned
                                 (f"hf-hub:{REPO}@{commit}", ["model.safetensors"]),
                                 (f"local-dir:{run_dir}", ["model.safetensors"])):
        with _counting_file_work() as (hashed, read):
            zoo.load(source)
        # (the Hub cache's files are links to blobs named by hash: count the files, each hashed once)
        assert len(hashed) == len(set(hashed)) == len(hashed_files), (source, hashed)
        assert read.count("config.json") == 1, (source, read)
    monkeypatch.delenv("SSL_ZOO_REGISTRY")
    with _counting_file_work() as (hashed, read):
        zoo.load(bundled)  # a tag shipped in the package: both files pinned
    assert sorted(hashed) == ["config.json", "model.safetensors"] and read.count("config.json") == 1


def test_pending_tags_say_what_is_needed():
    with pytest.raises(zoo.PendingModelError, match="needs a GPU"):
        zoo.load("byol-cifar10.seed")
    rows = {row["name"]: row for row in zoo.list_models("byol*", details=True)}
    assert rows["byol-cifar10.seed"]["source"] == "pending" and not rows["byol-cifar10.seed"]["default"]


def test_tampered_cached_file_is_refused(published):
    zoo.load(f"hf-hub:{REPO}")
    blob = os.path.realpath(os.path.join(os.environ["HF_HOME"], "hub", "models--tester--tiny-byol", "snapshots",
                                         published["commit"], "model.safetensors"))
    original = open(blob, "rb").read()
    try:
        with open(blob, "r+b") as f:
            f.seek(len(original) - 8)
            f.write(b"\x00" * 8)
        with pytest.raises(HashMismatchError, match="LFS object id"):
            zoo.load(f"hf-hub:{REPO}@{published['commit']}")
        assert os.path.exists(blob)  # nothing deleted
    finally:
        open(blob, "wb").write(original)


def test_cached_load_works_offline(published, tmp_path):
    code = (f"import zoo; e = zoo.load('hf-hub:{REPO}@{published['commit']}'); print(e.info['sha256'])\n"
            "try:\n    zoo.load('hf-hub:tester/never-downloaded')\nexcept ConnectionError as err:\n"
            "    print('offline:', err)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert published["registry_entry"]["sha256"]["model.safetensors"] in proc.stdout
    assert "offline: " in proc.stdout and "not in the local cache and HF_HUB_OFFLINE is set" in proc.stdout


def test_hub_errors_are_clear(published, token):
    with pytest.raises(FileNotFoundError, match="tester/nope not found"):
        zoo.load("hf-hub:tester/nope")
    with pytest.raises(FileNotFoundError, match="revision v9 not found"):
        zoo.load(f"hf-hub:{REPO}@v9")
    HfApi().create_repo("tester/not-an-encoder", exist_ok=True)
    HfApi().upload_file(path_or_fileobj=b"# hello\n", path_in_repo="README.md", repo_id="tester/not-an-encoder")
    with pytest.raises(FileNotFoundError, match="not an ssl-zoo encoder repo"):
        zoo.load("hf-hub:tester/not-an-encoder")


def test_sources_are_explicit_and_ambiguity_is_refused(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run_dir, tmp_path / "random-init-resnet18")
    shutil.copytree(run_dir, tmp_path / "user" / "simclr")
    # a registry name is the registry, even with a folder of that name here
    assert zoo.load("random-init-resnet18").info["source"] == "built locally"
    assert zoo.load("./random-init-resnet18").feature_dim == 64
    assert zoo.load("local-dir:random-init-resnet18").feature_dim == 64
    with pytest.raises(ValueError, match="ambiguous.*./user/simclr.*hf-hub:user/simclr"):
        zoo.load("user/simclr")
    assert zoo.load("./user/simclr").info["source"].startswith("local-dir:")
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        zoo.load("./runs/byol")
    with pytest.raises(ValueError, match="runs/byol.*ambiguous"):
        (tmp_path / "runs").mkdir()
        zoo.load("runs/byol")
    shutil.copytree(run_dir, tmp_path / "mymodel")
    with pytest.raises(ValueError, match="write ./mymodel"):
        zoo.load("mymodel")
    with pytest.raises(ValueError, match="owner/name"):
        zoo.load("hf-hub:justaname")
    assert zoo.parse_source("hf-hub:a/b@v1") == zoo.hub.sources.Source("hub", "a/b", "v1")


def test_model_card_round_trips_its_results_and_states_the_protocol(published, run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    card = ModelCard.load(REPO)
    assert card.data.library_name == "ssl-zoo" and card.data.pipeline_tag == "image-feature-extraction"
    assert {"self-supervised", "image-feature-extraction"} <= set(card.data.tags)
    values = {r.metric_name.split(":")[0]: (r.metric_value, r.metric_name) for r in card.data.eval_results}
    assert {k: v for k, (v, _) in values.items()} == {
        "k-NN accuracy (k=5)": round(results["knn5"], 4), "weighted k-NN accuracy (k=200)": round(results["knn200"], 4),
        "linear probe accuracy": round(results["linear"], 4)}
    assert "temperature" in values["weighted k-NN accuracy (k=200)"][1]  # each metric names its protocol
    assert "solver" in values["linear probe accuracy"][1]
    assert str(render_card(run_dir, REPO)) == str(card)
    assert "ssl-zoo train byol --config train_config.json" in card.text
    for key in ("knn5", "knn200", "linear"):
        assert f"{100 * results[key]:.2f} %" in card.text
    assert "L2-normalised features" in card.text or "raw features" in card.text


def test_probe_command_reproduces_the_card(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    proc = subprocess.run(["ssl-zoo", "probe", str(run_dir), "--knn", "--train-per-class", "50"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{100 * results['knn5']:.2f} %" in proc.stdout and f"{100 * results['knn200']:.2f} %" in proc.stdout
    assert "linear" not in proc.stdout


def test_embed_accepts_one_image_or_many_in_any_form(run_dir, tmp_path, cifar10_test):
    enc = zoo.load(str(run_dir))
    images = cifar10_test.images[:3]
    paths = []
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    from_array = zoo.embed(enc, images)
    torch.testing.assert_close(enc.embed([Image.fromarray(im) for im in images]), from_array)
    torch.testing.assert_close(enc.embed(paths), from_array)
    torch.testing.assert_close(enc.embed(str(paths[1])), from_array[1:2])
    torch.testing.assert_close(enc.embed(paths[2].read_bytes()), from_array[2:3])
    torch.testing.assert_close(enc.embed(images[0]), from_array[:1])
    torch.testing.assert_close(enc.embed([images[0], paths[1]]), from_array[:2])
    torch.testing.assert_close(enc.embed(torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 255),
                               from_array[:2])
    readonly = np.asarray(Image.open(paths[0]))
    assert not readonly.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(enc.embed(readonly), from_array[:1])
    torch.testing.assert_close(enc.embed([Image.fromarray(images[0]).convert("RGBA")]), from_array[:1])
    assert enc.embed(Image.fromarray(images[0]).convert("L")).shape == (1, enc.feature_dim)
    assert enc.embed(Image.fromarray(images[0]).resize((96, 64))).shape == (1, enc.feature_dim)
    normalized = enc.embed(images, normalize=True)
    torch.testing.assert_close(normalized.norm(dim=1), torch.ones(3))
    with pytest.raises(TypeError, match="cannot read an image from int"):
        enc.embed([3])


def test_long_thin_images_cost_no_more_than_small_ones():
    from zoo.imagefile import image_to_array

    strip = Image.new("RGB", (1_000_000, 1), (200, 10, 10))
    out = image_to_array(strip, 32)
    assert out.shape == (32, 32, 3) and (out == (200, 10, 10)).all()


def test_encoder_exposes_features_config_and_timm_style_preprocessing(run_dir):
    enc = zoo.load(str(run_dir))
    x = torch.rand(2, 3, 32, 32)
    fmap = enc.forward_features(x)
    assert fmap.shape[:2] == (2, enc.feature_dim)
    torch.testing.assert_close(fmap.mean((2, 3)), enc(x))
    cfg = enc.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_features"] == enc.feature_dim and cfg["mean"] is None
    saved = enc.save_pretrained(run_dir.parent / "resaved")
    again = zoo.Encoder.from_directory(saved)
    assert _state_equal(again.backbone.state_dict(), enc.backbone.state_dict())
    assert set(load_file(saved / "model.safetensors")) == set(enc.backbone.state_dict())


def test_bad_files_and_configs_are_refused_at_load_naming_the_field(run_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    good_config = json.loads((run_dir / "config.json").read_text())

    def with_config(change):
        config = json.loads(json.dumps(good_config))
        change(config)
        (bad / "config.json").write_text(json.dumps(config))

    for change, message in [
        (lambda c: c["encoder"]["kwargs"].update(width=16), "does not fit architecture"),
        (lambda c: c["encoder"].update(architecture="vit_tiny"), "known: \\['resnet18_cifar'"),
        (lambda c: c["encoder"].update(input_size="32"), "input_size must be an integer"),
        (lambda c: c["encoder"].update(input_size=4000), "input_size must be an integer in 8..1024"),
        (lambda c: c["encoder"].update(mean=[0.5, 0.5], std=[0.2, 0.2]), "mean must be 3 numbers"),
        (lambda c: c["encoder"].update(mean=[0.5] * 3, std=[0.2, 0, 0.2]), "std must be 3 finite numbers of at least 0.001"),
    ]:
        with_config(change)
        with pytest.raises(ValueError, match=message):
            zoo.load(str(bad))
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        zoo.load(str(bad))
    shutil.copy(run_dir / "config.json", bad / "config.json")
    good = load_file(run_dir / "model.safetensors")
    for change, message in [
        (lambda w: w.__setitem__("extra.weight", w.pop("bn1.bias")),
         "missing keys \\['bn1.bias'\\], unexpected keys \\['extra.weight'\\]"),
        (lambda w: w.__setitem__("conv1.weight", w["conv1.weight"].half()), "conv1.weight is torch.float16"),
        (lambda w: w.__setitem__("bn1.running_var", w["bn1.running_var"] > 0), "bn1.running_var is torch.bool"),
        (lambda w: w["bn1.weight"].__setitem__(0, float("nan")), "bn1.weight holds NaN"),
    ]:
        weights = dict(good)
        weights = {k: v.clone() for k, v in weights.items()}
        change(weights)
        save_file(weights, bad / "model.safetensors")
        with pytest.raises(ValueError, match=message):
            zoo.load(str(bad))
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        zoo.load(str(bad))


def test_random_init_baseline_is_a_named_model():
    a, b = zoo.load("random-init-resnet18"), zoo.load("random-init-resnet18.seed0")
    assert _state_equal(a.state_dict(), b.state_dict())
    assert a(torch.rand(2, 3, 32, 32)).shape == (2, 512) and a.feature_dim == 512
