"""Publish a training run directory to the Hugging Face Hub: one commit, with its model card and provenance."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import httpx2
import torch
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError

from .hub import endpoint
from .io import sha256_file
from .model import CONFIG_NAME, WEIGHTS_NAME, Encoder, read_config

TEMPLATE = resources.files("model_cards") / "template.md"
PROBE_NAMES = {"knn5": "k-NN accuracy (k=5)", "knn200": "weighted k-NN accuracy (k=200)", "linear": "linear probe accuracy"}
PROVENANCE_FILES = ("train_config.json", "metrics.jsonl", "results.json", "curves.png")
LOCAL_KEYS = ("data", "device")  # machine-local settings: never published


def _run_info(run_dir: Path) -> dict[str, Any]:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found: publish a finished `ssl-zoo train` run directory")
    _, info = read_config(run_dir)
    if not info.get("results") or "method" not in info:
        raise ValueError(f"{run_dir / CONFIG_NAME} has no method or results: is this a finished training run?")
    return info


def public_training_config(training: dict[str, Any]) -> dict[str, Any]:
    """A training config without machine-local settings (data path, device)."""
    return {k: v for k, v in training.items() if k not in LOCAL_KEYS}


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


def render_card(run_dir: str | os.PathLike, repo_id: str) -> ModelCard:
    """The model card (README.md) for a run, from ``model_cards/template.md``."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    config, _ = read_config(run_dir)
    results, method = info["results"], info["method"]
    protocols = results.get("protocol", {})
    probes = [(key, describe_protocol(key, protocols.get(key, {}))) for key in PROBE_NAMES if key in results]
    card_data = ModelCardData(
        library_name="ssl-zoo", license="mit", pipeline_tag="image-feature-extraction", datasets=["cifar10"],
        tags=["self-supervised", "image-feature-extraction", method, "resnet18", "cifar10", "ssl-zoo"],
        model_name=repo_id.split("/")[-1],
        eval_results=[EvalResult(task_type="image-classification", dataset_type="cifar10", dataset_name="CIFAR-10",
                                 dataset_split="test", metric_type="accuracy", metric_name=label,
                                 metric_value=round(results[key], 4)) for key, label in probes])
    with torch.device("meta"):
        feature_dim = Encoder(config).feature_dim
    training = public_training_config(info["training"])
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=repo_id.split("/")[-1], repo_id=repo_id,
        method=method, method_title=info.get("method_title", method), epochs=info["epochs"], results=results,
        probes=probes, training=training, training_json=json.dumps(training, indent=2), config=config,
        feature_dim=feature_dim, provenance=info.get("provenance", {}),
        has_curves=(run_dir / "curves.png").is_file())


def publish(run_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> dict[str, Any]:
    """Create ``repo_id`` if needed and upload weights, config, card and provenance (training config,
    metrics, results, curves) in ONE commit; an unchanged run makes no new commit. ``private=True``
    refuses an existing public repo. Returns the commit and the registry tag entry to add."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    token = token or get_token()
    if not token:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` before publishing "
                              "(nothing was uploaded)")
    card = render_card(run_dir, repo_id)
    api = HfApi(token=token)
    try:
        if api.repo_exists(repo_id):
            if private and not api.model_info(repo_id).private:
                raise PermissionError(f"{repo_id} exists and is PUBLIC; --private would not make it private. "
                                      "Change its visibility on the Hub first, or publish to another repo "
                                      "(nothing was uploaded)")
        else:
            api.create_repo(repo_id, private=private)
        operations = [CommitOperationAdd(name, run_dir / name) for name in (WEIGHTS_NAME, CONFIG_NAME)]
        operations += [CommitOperationAdd(name, _public_file(run_dir, name)) for name in PROVENANCE_FILES
                       if (run_dir / name).is_file()]
        operations.append(CommitOperationAdd("README.md", str(card).encode()))
        commit = api.create_commit(repo_id, operations, commit_message=f"Publish {info['method']} encoder "
                                   f"({info['epochs']} epochs)")
    except PermissionError:
        raise
    except HfHubHTTPError as e:
        raise ConnectionError(f"the Hub ({endpoint()}) refused the upload to {repo_id}: {e}") from e
    except (OSError, httpx2.HTTPError) as e:  # httpx2: huggingface_hub's HTTP client
        raise ConnectionError(f"cannot reach the Hub ({endpoint()}) to publish {repo_id} ({e.__class__.__name__}: "
                              f"{e}); check the network or HF_ENDPOINT (nothing was uploaded)") from e
    entry = {"repo_id": repo_id, "revision": commit.oid, "encoder": read_config(run_dir)[0].to_dict(),
             "sha256": {name: sha256_file(run_dir / name) for name in (CONFIG_NAME, WEIGHTS_NAME)},
             "epochs": info["epochs"], "results": {k: v for k, v in info["results"].items() if k in PROBE_NAMES},
             "protocol": info["results"].get("protocol", {}), "compute": info.get("provenance", {}).get("compute")}
    return {"commit": commit.oid, "url": commit.commit_url, "registry_entry": entry}


def _public_file(run_dir: Path, name: str) -> bytes:
    """A provenance file as published: the training config without machine-local settings."""
    data = (run_dir / name).read_bytes()
    if name == "train_config.json":
        data = (json.dumps(public_training_config(json.loads(data)), indent=2) + "\n").encode()
    return data
