"""Publish a training run directory to the Hugging Face Hub: one commit, with its model card."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token

from .hub import sha256_of
from .serialization import CONFIG_NAME, WEIGHTS_NAME

TEMPLATE = resources.files("model_cards") / "template.md"
METHOD_TITLES = {"simclr": "SimCLR", "byol": "BYOL", "barlowtwins": "Barlow Twins"}
PROBES = (("knn5", "k-NN accuracy (k=5)"), ("knn200", "weighted k-NN accuracy (k=200, T=0.07)"),
          ("linear", "linear probe accuracy"))


def _run_info(run_dir: Path) -> dict[str, Any]:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found: publish a finished `ssl-zoo train` run directory")
    info = json.loads((run_dir / CONFIG_NAME).read_text())
    if not info.get("results") or "method" not in info:
        raise ValueError(f"{run_dir / CONFIG_NAME} has no method or results: is this a finished training run?")
    return info


def render_card(run_dir: str | os.PathLike, repo_id: str) -> ModelCard:
    """The model card (README.md) for a run, from ``model_cards/template.md``."""
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    results, training, method = info["results"], info["training"], info["method"]
    card_data = ModelCardData(
        library_name="ssl-zoo", license="mit", pipeline_tag="image-feature-extraction", datasets=["cifar10"],
        tags=["self-supervised", "image-feature-extraction", method, "resnet18", "cifar10", "ssl-zoo"],
        model_name=repo_id.split("/")[-1],
        eval_results=[EvalResult(task_type="image-classification", dataset_type="cifar10", dataset_name="CIFAR-10",
                                 dataset_split="test", metric_type="accuracy", metric_name=label,
                                 metric_value=round(results[key], 4))
                      for key, label in PROBES])
    encoder = info["encoder"]
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=repo_id.split("/")[-1], repo_id=repo_id,
        method=method, method_title=METHOD_TITLES.get(method, method), epochs=info["epochs"], results=results,
        training=training, training_json=json.dumps(training, indent=2), input_size=encoder["input_size"],
        mean=encoder["mean"], std=encoder["std"], feature_dim=8 * encoder["kwargs"].get("width", 64),
        train_per_class=training.get("final_train_per_class"), has_curves=(run_dir / "curves.png").is_file())


def publish(run_dir: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> dict[str, Any]:
    """Create ``repo_id`` if needed and upload weights, config, card and curves in ONE commit.

    Re-publishing an unchanged run makes no new commit. Returns the commit hash and the
    registry entry to add to ``zoo/registry.json``.
    """
    run_dir = Path(run_dir)
    info = _run_info(run_dir)
    token = token or get_token()
    if not token:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` before publishing "
                              "(nothing was uploaded)")
    card = render_card(run_dir, repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    files = [WEIGHTS_NAME, CONFIG_NAME] + (["curves.png"] if (run_dir / "curves.png").is_file() else [])
    operations = [CommitOperationAdd(name, run_dir / name) for name in files]
    operations.append(CommitOperationAdd("README.md", str(card).encode()))
    commit = api.create_commit(repo_id, operations, commit_message=f"Publish {info['method']} encoder "
                               f"({info['epochs']} epochs)")
    results = {k: info["results"][k] for k in ("knn5", "knn200", "linear")}
    entry = {"method": info["method"], "dataset": info["dataset"], "repo_id": repo_id, "revision": commit.oid,
             "sha256": sha256_of(run_dir / WEIGHTS_NAME), "encoder": info["encoder"], "results": results}
    return {"commit": commit.oid, "url": commit.commit_url, "registry_entry": entry}
