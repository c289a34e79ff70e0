"""The zoo end to end against a Hub-protocol server on loopback, through the real huggingface_hub client."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
from conftest import needs_cifar10
from training.config import build_config
from training.loop import train
from zoo.hub import HashMismatchError
from zoo.publish import publish, render_card

pytestmark = needs_cifar10
REPO = "tester/tiny-byol"


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


def _registry(tmp_path, monkeypatch, **entry):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"tiny-byol": entry}))
    monkeypatch.setenv("SSL_ZOO_REGISTRY", str(path))


def test_publish_then_load_by_id_and_pinned_revision_bit_exact(published, run_dir):
    commit = published["commit"]
    assert len(commit) == 40 and published["registry_entry"]["revision"] == commit
    trained = load_file(run_dir / "model.safetensors")
    for ref in (REPO, f"{REPO}@{commit}"):
        enc = zoo.load(ref)
        assert not enc.training and enc.info["revision"] == commit
        state = enc.state_dict()
        assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in trained)
    with safe_open(hf_hub_download(REPO, "model.safetensors", revision=commit), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "byol" and meta["dataset"] == "cifar10" and meta["epochs"] == "1"
    assert meta["ssl_zoo_version"] == zoo.__version__
    files = HfApi().list_repo_files(REPO, revision=commit)
    assert sorted(files) == [".gitattributes", "README.md", "config.json", "curves.png", "model.safetensors"]


def test_republishing_the_same_run_makes_no_new_commit(published, run_dir):
    again = publish(run_dir, REPO)
    assert again["commit"] == published["commit"]
    assert HfApi().model_info(REPO).sha == published["commit"]


def test_registry_name_is_verified_against_its_pin(published, tmp_path, monkeypatch):
    entry = dict(published["registry_entry"])
    _registry(tmp_path, monkeypatch, **entry)
    assert zoo.load("tiny-byol").info["sha256"] == entry["sha256"]
    assert [row["name"] for row in zoo.list()] == ["tiny-byol"]
    _registry(tmp_path, monkeypatch, **{**entry, "sha256": "0" * 64})
    with pytest.raises(HashMismatchError) as err:
        zoo.load("tiny-byol")
    assert entry["sha256"] in str(err.value) and "0" * 64 in str(err.value)
    assert zoo.load(f"{REPO}@{entry['revision']}")  # the file was left in the cache
    _registry(tmp_path, monkeypatch, **{**entry, "revision": None})
    with pytest.raises(RuntimeError, match="no published revision"):
        zoo.load("tiny-byol")
    with pytest.raises(KeyError, match="did you mean tiny-byol"):
        zoo.load("tiny-bypl")


def test_tampered_cached_file_is_refused(published):
    enc = zoo.load(REPO)
    blob = os.path.realpath(os.path.join(os.environ["HF_HOME"], "hub", "models--tester--tiny-byol", "snapshots",
                                         published["commit"], "model.safetensors"))
    original = open(blob, "rb").read()
    try:
        with open(blob, "r+b") as f:
            f.seek(len(original) - 8)
            f.write(b"\x00" * 8)
        with pytest.raises(HashMismatchError, match="LFS object id"):
            zoo.load(f"{REPO}@{published['commit']}")
        assert os.path.exists(blob)  # nothing deleted
    finally:
        open(blob, "wb").write(original)
    assert enc is not None


def test_cached_load_works_offline(published, tmp_path):
    code = (f"import zoo; e = zoo.load('{REPO}@{published['commit']}'); print(e.info['sha256'])\n"
            "try:\n    zoo.load('tester/never-downloaded')\nexcept ConnectionError as err:\n    print('offline:', err)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert published["registry_entry"]["sha256"] in proc.stdout
    assert "offline: cannot reach the Hub" in proc.stdout and "not in the local cache" in proc.stdout


def test_hub_errors_are_clear(published, token):
    with pytest.raises(FileNotFoundError, match="tester/nope not found"):
        zoo.load("tester/nope")
    with pytest.raises(FileNotFoundError, match="revision v9 not found"):
        zoo.load(f"{REPO}@v9")
    HfApi().create_repo("tester/not-an-encoder", exist_ok=True)
    HfApi().upload_file(path_or_fileobj=b"# hello\n", path_in_repo="README.md", repo_id="tester/not-an-encoder")
    with pytest.raises(FileNotFoundError, match="not an ssl-zoo encoder repo"):
        zoo.load("tester/not-an-encoder")


def test_publish_without_a_token_fails_before_any_upload(hub_server, run_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PermissionError, match="HF_TOKEN"):
        publish(run_dir, "tester/no-token")
    assert not HfApi().repo_exists("tester/no-token")


def test_model_card_round_trips_its_results(published, run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    card = ModelCard.load(REPO)
    assert card.data.library_name == "ssl-zoo" and card.data.pipeline_tag == "image-feature-extraction"
    assert {"self-supervised", "image-feature-extraction"} <= set(card.data.tags)
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert values == {"k-NN accuracy (k=5)": round(results["knn5"], 4),
                      "weighted k-NN accuracy (k=200, T=0.07)": round(results["knn200"], 4),
                      "linear probe accuracy": round(results["linear"], 4)}
    assert str(render_card(run_dir, REPO)) == str(card)
    assert "ssl-zoo train byol --config train_config.json" in card.text


def test_probe_command_reproduces_the_card(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    proc = subprocess.run(["ssl-zoo", "probe", str(run_dir), "--knn", "--train-per-class", "50"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{100 * results['knn5']:.2f} %" in proc.stdout and f"{100 * results['knn200']:.2f} %" in proc.stdout
    assert "linear" not in proc.stdout
    listed = subprocess.run(["ssl-zoo", "list"], capture_output=True, text=True)
    assert "byol-cifar10" in listed.stdout and "33.27" in listed.stdout


def test_embed_accepts_tensors_pil_images_and_paths(run_dir, tmp_path, cifar10_test):
    enc = zoo.load(str(run_dir))
    images = cifar10_test.images[:3]
    paths = []
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    from_array = zoo.embed(enc, images)
    torch.testing.assert_close(zoo.embed(enc, [Image.fromarray(im) for im in images]), from_array)
    torch.testing.assert_close(zoo.embed(enc, paths), from_array)
    rgba = Image.fromarray(images[0]).convert("RGBA")
    torch.testing.assert_close(zoo.embed(enc, [rgba]), from_array[:1])
    gray = zoo.embed(enc, [Image.fromarray(images[0]).convert("L")])
    assert gray.shape == (1, from_array.shape[1])
    big = zoo.embed(enc, [Image.fromarray(images[0]).resize((96, 96))])
    assert big.shape == (1, from_array.shape[1])


def test_local_directory_errors(run_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["encoder"]["kwargs"]["width"] = 16
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit architecture"):
        zoo.load(str(bad))
    config["encoder"]["architecture"] = "vit_tiny"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="known: \\['resnet18_cifar'"):
        zoo.load(str(bad))
    shutil.copy(run_dir / "config.json", bad / "config.json")
    weights = load_file(bad / "model.safetensors")
    weights["extra.weight"] = weights.pop("bn1.bias")
    save_file(weights, bad / "model.safetensors")
    with pytest.raises(ValueError, match="missing keys \\['bn1.bias'\\], unexpected keys \\['extra.weight'\\]"):
        zoo.load(str(bad))


def test_random_init_baseline_is_a_named_model():
    a, b = zoo.load("random-init-resnet18"), zoo.load("random-init-resnet18")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a(torch.rand(2, 3, 32, 32)).shape == (2, 512)
