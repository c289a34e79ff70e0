"""Publish a training run directory as a Hub-shaped model (weights, config, card, provenance): to the
Hugging Face Hub in one commit (``publish``), or into the package as a bundled registry tag (``bundle``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx2
import torch
from huggingface_hub import (
    CommitOperationAdd,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError

from ..eval.figures import FIGURES, card_figures, writable_folder
from ..io import CONFIG_NAME, WEIGHTS_NAME, sha256_file, write_bytes, write_json
from ..model import Encoder, read_config
from . import registry
from .download import endpoint
from .rundir import CURVES, PROVENANCE_FILES, TRAIN_CONFIG, public_training_config
from .sources import HUB_PREFIX, Resolved, fetch, load

TEMPLATE = resources.files("model_cards") / "template.md"
PROBE_NAMES = {"knn5": "k-NN accuracy (k=5)", "knn200": "weighted k-NN accuracy (k=200)", "linear": "linear probe accuracy"}
CHECK_PER_CLASS = (500, 100)  # train / test images per class of a bundled tag's quick re-check
ADDED_SECTION = re.compile(r"<!-- ssl-zoo:([\w-]+) -->.*?<!-- /ssl-zoo:\1 -->", re.DOTALL)  # kept by write_card


def _run_info(run_dir: Path) -> dict[str, Any]:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found: publish a finished `ssl-zoo train` run directory")
    _, info = read_config(run_dir)
    if not info.get("results") or "method" not in info:
        raise ValueError(f"{run_dir / CONFIG_NAME} has no method or results: is this a finished training run?")
    return info


def describe_protocol(name: str, protocol: dict[str, Any]) -> str:
    """One line naming everything a probe's number depends on (from its stored protocol)."""
    parts = ["L2-normalised features" if protocol.get("features_normalized") else "raw features"]
    if protocol.get("probe") == "knn":
        parts.insert(0, f"k={protocol.get('k')}")
        if protocol.get("weighted"):
            parts.append(f"temperature {protocol.get('temperature')}, cosine similarity, exp(sim/T) votes")
        else:
            parts.append(f"{protocol.get('distance', 'euclidean')} distance, majority vote")
    elif protocol.get("probe") == "linear":
        parts.append(f"multinomial logistic regression, L2 penalty C={protocol.get('C')}, solver "
                     f"{protocol.get('solver')}")
    return f"{PROBE_NAMES.get(name, name)}: " + ", ".join(parts)


def describe_data(data: dict[str, Any]) -> str:
    """Your own images as a card names them: by image count, kind and the hash of the sorted file list, no paths."""
    if not data or data["name"] == "cifar10":
        return "CIFAR-10"
    labels = f", {data['classes']} classes" if data.get("classes") else ", no labels"
    return (f"{data['images']:,} images of the trainer's own ({data['kind']}{labels}; sha256 of the sorted file list "
            f"`{data['sha256'][:16]}`)")


def render_card(run_dir: str | os.PathLike, repo_id: str, load_name: str | None = None,
                figures: Iterable[str] = ()) -> ModelCard:
    """The model card (README.md) for a run, from ``model_cards/template.md``; ``load_name``: what the
    card tells users to load (default ``hf-hub:REPO_ID``); ``figures``: the file names of the figures
    (``zoo.eval.figures.FIGURES``) that lie beside the card, which it shows."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    config, _ = read_config(run_dir)
    results, method = info["results"], info["method"]
    protocols = results.get("protocol", {})
    probes = [(key, describe_protocol(key, protocols.get(key, {}))) for key in PROBE_NAMES if key in results]
    own_data = info.get("dataset", "cifar10") != "cifar10"
    card_data = ModelCardData(
        library_name="ssl-zoo", license="mit", pipeline_tag="image-feature-extraction",
        datasets=None if own_data else ["cifar10"], model_name=repo_id.split("/")[-1],
        tags=["self-supervised", "image-feature-extraction", method, "resnet18", *([] if own_data else ["cifar10"]),
              "ssl-zoo"],
        eval_results=None if own_data else [
            EvalResult(task_type="image-classification", dataset_type="cifar10", dataset_name="CIFAR-10",
                       dataset_split="test", metric_type="accuracy", metric_name=label,
                       metric_value=round(results[key], 4)) for key, label in probes])
    with torch.device("meta"):
        feature_dim = Encoder(config).feature_dim
    training = public_training_config(info["training"])
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=repo_id.split("/")[-1], repo_id=repo_id,
        load_name=load_name or f"hf-hub:{repo_id}", method=method, method_title=info.get("method_title", method), epochs=info["epochs"], results=results,
        probes=probes, training=training, training_json=json.dumps(training, indent=2), config=config,
        feature_dim=feature_dim, provenance=info.get("provenance", {}), own_data=own_data,
        data=info.get("data", {}), data_text=describe_data(info.get("data", {})),
        has_curves=(run_dir / CURVES).is_file(), figures=list(figures))


def publish(run_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
            figures: bool = False) -> dict[str, Any]:
    """Create ``repo_id`` if needed and upload weights, config, card and provenance (training config,
    metrics, results, curves; with ``figures``, the card's figures too) in ONE commit; an unchanged run
    makes no new commit. ``private=True`` refuses an existing public repo. Returns the commit and the
    registry tag entry to add."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    token = token or get_token()
    if not token:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` before publishing "
                              "(nothing was uploaded)")
    api = HfApi(token=token)
    files = repo_files(run_dir, repo_id, figures=figures)
    try:
        if api.repo_exists(repo_id):
            if private and not api.model_info(repo_id).private:
                raise PermissionError(f"{repo_id} exists and is PUBLIC; --private would not make it private. "
                                      "Change its visibility on the Hub first, or publish to another repo "
                                      "(nothing was uploaded)")
        else:
            api.create_repo(repo_id, private=private)
        operations = [CommitOperationAdd(name, data) for name, data in files.items()]
        commit = api.create_commit(repo_id, operations, commit_message=f"Publish {info['method']} encoder "
                                   f"({info['epochs']} epochs)")
    except PermissionError:
        raise
    except HfHubHTTPError as e:
        raise ConnectionError(f"the Hub ({endpoint()}) refused the upload to {repo_id}: {e}") from e
    except (OSError, httpx2.HTTPError) as e:  # httpx2: huggingface_hub's HTTP client
        raise ConnectionError(f"cannot reach the Hub ({endpoint()}) to publish {repo_id} ({e.__class__.__name__}: "
                              f"{e}); check the network or HF_ENDPOINT (nothing was uploaded)") from e
    entry = {"repo_id": repo_id, "revision": commit.oid, **registry_entry(run_dir)}
    return {"commit": commit.oid, "url": commit.commit_url, "registry_entry": entry}


def repo_files(run_dir: str | os.PathLike, repo_id: str, load_name: str | None = None, *,
               figures: bool = False) -> dict[str, Path | bytes]:
    """Every file of the run's model repo by name: weights, config, provenance files, with ``figures`` the
    card's figures (drawn here, minutes on a CPU), and the card."""
    run_dir = Path(run_dir)
    _run_info(run_dir)
    files: dict[str, Path | bytes] = {name: run_dir / name for name in (WEIGHTS_NAME, CONFIG_NAME)}
    files |= {name: _public_file(run_dir, name) for name in PROVENANCE_FILES if (run_dir / name).is_file()}
    if figures:
        files |= card_figures(load(run_dir.resolve()), repo_id.split("/")[-1])
    files["README.md"] = str(render_card(run_dir, repo_id, load_name, figures=[f for f in FIGURES if f in files])).encode()
    return files


def registry_entry(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A registry tag's description of a run: encoder config, file pins, epochs, results and protocol, compute."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    return {"encoder": read_config(run_dir)[0].to_dict(),
            "sha256": {name: sha256_file(run_dir / name) for name in (CONFIG_NAME, WEIGHTS_NAME)},
            "epochs": info["epochs"], "results": {k: v for k, v in info["results"].items() if k in PROBE_NAMES},
            "protocol": {k: v for k, v in info["results"].get("protocol", {}).items() if k in PROBE_NAMES},
            "compute": info.get("provenance", {}).get("compute")}


def bundle(run_dir: str | os.PathLike, name_tag: str, *, force: bool = False, figures: bool = False) -> dict[str, Any]:
    """Ship a run with the package as registry tag ``NAME.TAG``: the files ``publish`` would upload (with
    ``figures``, the card's figures too) go to ``zoo/pretrained/NAME.TAG/`` and the tag in the registry
    (``registry_file()``) points at them, pinned by sha256, with a re-check on a reduced bank (``_reprobe``).
    A tag that already has weights with a higher weighted k-NN is kept unless ``force``; the model's default tag
    moves to this one when it scores higher than the default's weights on the same protocol."""
    name, _, tag = name_tag.partition(".")
    registry_path = registry.registry_file()
    models = json.loads(registry_path.read_text())
    if name not in models or not tag:
        raise ValueError(f"{name_tag!r}: give NAME.TAG with NAME one of {sorted(models)} (add the model to "
                         f"{registry_path} first)")
    entry = registry_entry(run_dir)
    old = models[name]["tags"].get(tag, {})
    if not force and old.get("results", {}).get("knn200", -1) > entry["results"].get("knn200", 0):
        raise ValueError(f"{name_tag} already ships weights with weighted k-NN {old['results']['knn200']:.4f} > "
                         f"{entry['results'].get('knn200', 0):.4f} of {run_dir}: nothing changed (force=True / "
                         "--force replaces them)")
    entry["results"]["check"] = _reprobe(run_dir, entry["results"], entry["protocol"])
    target = registry.PRETRAINED_DIR / name_tag
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name_tag}.", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a package folder is readable like any other
    try:
        for filename, data in repo_files(run_dir, f"ssl-zoo/{name}", load_name=name_tag, figures=figures).items():
            if isinstance(data, Path):
                shutil.copyfile(data, staging / filename)
            else:
                (staging / filename).write_bytes(data)
        if any(sha256_file(staging / f) != h for f, h in entry["sha256"].items()):
            raise RuntimeError(f"{run_dir} changed while it was being copied: bundle it again")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    models[name]["tags"][tag] = {"bundled": name_tag, **entry}
    if _beats(entry, models[name]["tags"].get(models[name].get("default_tag"), {})):
        models[name]["default_tag"] = tag
    write_json(registry_path, models)
    return models[name]["tags"][tag]


def _beats(entry: dict[str, Any], default: dict[str, Any]) -> bool:
    """Whether a tag's weighted k-NN is higher than the default tag's, measured the same way (or it has none)."""
    if "knn200" not in default.get("results", {}):
        return True
    new, old = ({k: v for k, v in tag.get("protocol", {}).get("knn200", {}).items() if k != "implementation"}
                for tag in (entry, default))  # the settings, not how the code that measured them is described
    return new == old and entry["results"].get("knn200", 0) > default["results"]["knn200"]


def write_card(source: str | os.PathLike, out: str | os.PathLike | None = None, **options: Any) -> list[Path]:
    """Re-render the card (README.md) of a bundled registry model or a model folder with its figures, each file
    written atomically into the model's own folder or ``out`` (with ``curves.png``, which the card shows);
    ``config.json`` and the weights are never written. ``options`` go to ``zoo.eval.figures.CardData``
    (``data``: the CIFAR-10 root). Returns the files written, the card last."""
    resolved = fetch(source)
    if resolved.folder is None:
        raise ValueError(f"{source} is built from a seed: it has no model folder or training record to make a "
                         "card of")
    repo_id, load_name = _card_names(source, resolved)
    card = str(render_card(resolved.folder, repo_id, load_name, figures=FIGURES)).encode()  # checks the folder first
    target = writable_folder(out if out is not None else _own_folder(source, resolved))
    files: dict[str, bytes] = card_figures(resolved.load(), repo_id.split("/")[-1], **options)
    if (resolved.folder / CURVES).is_file() and target.resolve() != resolved.folder.resolve():
        files[CURVES] = (resolved.folder / CURVES).read_bytes()
    files["README.md"] = _keep_added_sections(card, target / "README.md")
    for name, data in files.items():
        write_bytes(target / name, data)
    return [target / name for name in files]


def _keep_added_sections(card: bytes, old: Path) -> bytes:
    """The re-rendered card with the sections other commands added to the old one (between ``<!-- ssl-zoo:NAME -->``
    markers, e.g. ``export-onnx --quantize``'s int8 numbers), before its limitations."""
    sections = [m.group(0) for m in ADDED_SECTION.finditer(old.read_text())] if old.is_file() else []
    if not sections:
        return card
    head, limitations, rest = card.decode().partition("## Limitations")
    return (head + "\n\n".join(sections) + "\n\n" + limitations + rest).encode()


def _card_names(source: str | os.PathLike, resolved: Resolved) -> tuple[str, str | None]:
    """The repo id a card names its model by and what it tells users to load: a registry tag's name (repo
    ``ssl-zoo/NAME``, as ``bundle`` writes it), a Hub repo, or the folder as it was given."""
    provenance = resolved.provenance
    if "name" in provenance:
        return provenance.get("repo_id", f"ssl-zoo/{provenance['name'].partition('.')[0]}"), provenance["name"]
    if "repo_id" in provenance:
        return provenance["repo_id"], None
    return resolved.folder.resolve().name, os.fspath(source)


def _own_folder(source: str | os.PathLike, resolved: Resolved) -> Path:
    """Where a model's card lies: its bundled or local folder (never the Hub cache)."""
    if resolved.provenance["source"].startswith(HUB_PREFIX):
        raise ValueError(f"{source} comes from the Hub cache, which is not the place for a card: give an output "
                         "folder (ssl-zoo card --out DIR)")
    return resolved.folder


def _reprobe(run_dir: str | os.PathLike, results: dict[str, Any], protocol: dict[str, Any]) -> dict[str, Any]:
    """Re-measure the run's exported encoder as ``ssl-zoo probe`` would: refuse it unless that gives
    the run's own numbers; its numbers on a reduced bank (``CHECK_PER_CLASS``) for the test suite."""
    from ..eval.probes import probe

    encoder = load(Path(run_dir).resolve())
    bank = protocol["knn5"]["train_images"]
    again = probe(encoder, train_per_class=bank // 10 if bank < 50_000 else None, progress=False)
    if differ := [k for k in PROBE_NAMES if k in results and again[k] != results[k]]:
        raise ValueError(f"`ssl-zoo probe {run_dir}` gives {[again[k] for k in differ]} for {differ}, the run says "
                         f"{[results[k] for k in differ]}: not shipped (re-export the run with --re-export)")
    train, test = CHECK_PER_CLASS
    check = probe(encoder, train_per_class=train, test_per_class=test, progress=False)
    return {"train_per_class": train, "test_per_class": test, **{k: check[k] for k in PROBE_NAMES}}


def _public_file(run_dir: Path, name: str) -> bytes:
    """A provenance file as published: the training config without machine-local settings."""
    data = (run_dir / name).read_bytes()
    if name == TRAIN_CONFIG:
        data = (json.dumps(public_training_config(json.loads(data)), indent=2) + "\n").encode()
    return data
