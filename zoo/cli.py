"""The ``ssl-zoo`` command. Subcommands are entry points in the ``ssl_zoo.commands`` group:
each is a ``register(subparsers)`` function, so ``training`` and ``serving`` add theirs
without ``zoo`` importing them."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points

import torch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-zoo", description="Self-supervised vision encoders: "
                                     "train, evaluate, publish, load and serve.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for ep in sorted(entry_points(group="ssl_zoo.commands"), key=lambda e: e.name):
        ep.load()(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, RuntimeError, OSError, LookupError) as e:
        print(f"ssl-zoo {args.command}: error: {e}", file=sys.stderr)
        return 2


def register_baseline(subparsers) -> None:
    p = subparsers.add_parser("baseline", help="random-init ResNet-18 k-NN and linear probe on CIFAR-10 "
                              "(the seed's section 2)")
    p.add_argument("--data", help="CIFAR-10 root (default: $SSL_ZOO_DATA, ../shared copy, or download)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--linear-solver", choices=["sklearn", "fast"], default="sklearn",
                   help="sklearn: the seed's LogisticRegression(max_iter=1000); fast: L-BFGS in torch")
    p.add_argument("--per-class", type=int, help="use only the first N images per class of each split "
                   "(a quick check; default: the full splits)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_baseline)


def _baseline(args: argparse.Namespace) -> None:
    from .data import load_cifar10
    from .encoders import build_encoder
    from .probes import extract_features, knn_probe, linear_probe

    torch.manual_seed(args.seed)
    model = build_encoder({"architecture": "resnet18_imagenet"})
    feats = {}
    for split in ("train", "test"):
        data = load_cifar10(split, args.data)
        if args.per_class:
            data = data.per_class(args.per_class)
        feats[split] = (extract_features(model, data), data.labels)
    (tx, ty), (vx, vy) = feats["train"], feats["test"]
    knn = knn_probe(tx, ty, vx, vy, k=5)
    linear = linear_probe(tx, ty, vx, vy, solver=args.linear_solver)
    print(f"random-init ResNet-18 (torchvision, seed {args.seed}), CIFAR-10 test set ({len(vy)} images):")
    print(f"  k-NN (k=5, Euclidean):   {100 * knn.accuracy:.2f} %")
    print(f"  linear probe ({args.linear_solver}): {100 * linear.accuracy:.2f} %")
    if args.json:
        result = {"seed": args.seed, "torch": torch.__version__, "test_images": len(vy), "knn": knn.accuracy,
                  "linear": linear.accuracy, "knn_protocol": knn.protocol, "linear_protocol": linear.protocol}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def register_list(subparsers) -> None:
    p = subparsers.add_parser("list", help="the registry's named models")
    p.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> None:
    from .registry import list_models

    def pct(x):
        return f"{100 * x:.2f}" if x is not None else "-"

    print(f"{'name':<22} {'method':<12} {'dataset':<8} {'k-NN %':>7} {'linear %':>8}  hub")
    for row in list_models():
        hub = f"{row['repo_id']}@{(row['revision'] or 'unpublished')[:12]}" if row["repo_id"] else "(built locally)"
        print(f"{row['name']:<22} {row['method']:<12} {row['dataset']:<8} {pct(row['knn5']):>7} "
              f"{pct(row['linear']):>8}  {hub}")


def register_probe(subparsers) -> None:
    p = subparsers.add_parser("probe", help="k-NN and linear probes of a model on CIFAR-10 (the model-card protocol)")
    p.add_argument("model", help="registry name, Hub id (owner/name[@revision]) or local directory")
    p.add_argument("--knn", action="store_true", help="k-NN probes only (with --linear: both; default: both)")
    p.add_argument("--linear", action="store_true", help="linear probe only (with --knn: both)")
    p.add_argument("--train-per-class", type=int, help="train bank: first N images per class (default: all)")
    p.add_argument("--data", help="CIFAR-10 root (default: $SSL_ZOO_DATA, ../shared copy, or download)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> None:
    from . import load, probe

    both = args.knn == args.linear
    results = probe(load(args.model, device=args.device), knn=both or args.knn, linear=both or args.linear,
                    train_per_class=args.train_per_class, data=args.data)
    labels = {"knn5": "k-NN (k=5, Euclidean)", "knn200": "weighted k-NN (k=200, T=0.07, cosine)",
              "linear": "linear probe"}
    for key, label in labels.items():
        if key in results:
            print(f"{label:<40} {100 * results[key]:.2f} %")


def register_publish(subparsers) -> None:
    p = subparsers.add_parser("publish", help="upload a training run to the Hugging Face Hub in one commit")
    p.add_argument("run_dir")
    p.add_argument("--repo", required=True, help="owner/name on the Hub")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_publish)


def _publish(args: argparse.Namespace) -> None:
    from .publish import publish

    out = publish(args.run_dir, args.repo, private=args.private)
    print(f"commit {out['commit']}  {out['url']}")
    print("registry entry for zoo/registry.json (name it, e.g. \"<method>-cifar10\"):")
    print(json.dumps(out["registry_entry"], indent=2))
