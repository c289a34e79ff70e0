"""The ``ssl-zoo`` command. Subcommands are entry points in the ``ssl_zoo.commands`` group, each
naming a package's ``COMMANDS`` dict of ``Command`` specs, so ``training`` and ``serving`` add theirs
without ``zoo`` importing them."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .eval.protocol import BATCH_NORM_MODES, SOLVERS
from .io import write_json


@dataclass(frozen=True)
class Command:
    """One ``ssl-zoo`` subcommand: its help line, and ``arguments`` (``"module:function"``) that adds its
    arguments to its parser. Packages list theirs in a ``COMMANDS`` dict that the ``ssl_zoo.commands``
    entry points name; ``arguments`` is imported only for the command being run, so ``ssl-zoo --help``
    imports no command's dependencies (torch among them)."""

    help: str
    arguments: str
    description: str | None = None

    def add_to(self, subparsers: argparse._SubParsersAction, name: str, *, arguments: bool = True) -> None:
        """Add the command's parser; with ``arguments``, import and add its arguments too."""
        parser = subparsers.add_parser(name, help=self.help, description=self.description or self.help)
        if arguments:
            module, _, function = self.arguments.partition(":")
            getattr(importlib.import_module(module), function)(parser)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``ssl-zoo`` parser: every installed subcommand, with the arguments of the one named in
    ``argv`` only (the others' modules are not imported)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="ssl-zoo", description="Self-supervised vision encoders: "
                                     "train, evaluate, publish, load and serve.")
    parser.add_argument("--version", action="version", version=f"ssl-zoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    named = next((a for a in argv if not a.startswith("-")), None)
    for ep in sorted(entry_points(group="ssl_zoo.commands"), key=lambda e: e.name):
        ep.load()[ep.name].add_to(subparsers, ep.name, arguments=ep.name == named)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one subcommand (``parser``: default every installed one); expected errors print one line."""
    args = (parser or build_parser(argv)).parse_args(argv)
    try:
        return args.func(args) or 0
    except BrokenPipeError:  # the reader went away (`ssl-zoo list | head -1`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 0
    except KeyboardInterrupt as e:  # Ctrl-C: the command says what it kept and how to go on, in one line
        print(f"ssl-zoo {args.command}: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, LookupError) as e:
        print(f"ssl-zoo {args.command}: error: {e}", file=sys.stderr)
        return 2


BASELINE = "random-init-resnet18"
PROBE_KEYS = ("knn5", "knn200", "linear")


def add_baseline_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo baseline``'s arguments."""
    p.add_argument("--data", help="CIFAR-10 root (default: $SSL_ZOO_DATA, ../shared copy, or download)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (and, with --bn "
                   "batch-stats, of the batches' shuffle)")
    p.add_argument("--bn", choices=BATCH_NORM_MODES, default="eval",
                   help="eval (default): BatchNorm running statistics, deterministic and independent of the batch "
                   "composition; batch-stats: what the notebook's code does (it never calls .eval()), each batch of "
                   "256 normalised by its own statistics, batches drawn in shuffled order")
    p.add_argument("--linear-solver", choices=SOLVERS, default="sklearn",
                   help="sklearn (default): the notebook's LogisticRegression(max_iter=1000); fast: the same "
                   "objective and stopping rule by L-BFGS-B in preconditioned coordinates, several times faster")
    p.add_argument("--per-class", type=int, help="use only the first N images per class of each split "
                   "(a quick check; default: the full splits)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results and their protocol to this JSON file")
    p.set_defaults(func=_baseline)


def _baseline(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from . import fetch, probe

    encoder = replace(fetch(BASELINE), build_seed=args.seed).load(args.device)
    results = probe(encoder, knn=True, weighted_knn=False, linear=True, normalize=False, batch_norm=args.bn,
                    solver=args.linear_solver, seed=args.seed, train_per_class=args.per_class,
                    test_per_class=args.per_class, data=args.data, device=args.device, progress=True)
    _report(f"random-init ResNet-18 (torchvision, seed {args.seed})", results, args.json)


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo list``'s arguments."""
    p.add_argument("pattern", nargs="?", help="shell-style filter on name.tag, e.g. 'byol*'")
    p.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> None:
    from . import list_models

    def pct(x):
        return f"{100 * x:.2f}" if x is not None else "-"

    rows = list_models(args.pattern, details=True)
    if not rows:
        raise LookupError(f"no model matches {args.pattern!r}; the registry holds: {', '.join(list_models())}")
    print(f"{'name':<28} {'method':<12} {'architecture':<22} {'epochs':>6} {'compute':<26} {'k-NN %':>7} "
          f"{'wk-NN %':>7} {'linear %':>8}  {'features':<8} {'solver':<7} {'train/test':<12} {'numbers from':<14} "
          "files")
    for row in rows:
        results, protocol = row["results"], row["protocol"]
        first = next(iter(protocol.values()), {})
        normalized = protocol.get("knn5", protocol.get("linear", {})).get("features_normalized")
        features = "-" if normalized is None else "L2-norm" if normalized else "raw"
        images = f"{first['train_images']}/{first['test_images']}" if "train_images" in first else "-"
        origin = ("-" if not results else "ssl-zoo probe" if row["source"] == "built locally" else "training run")
        architecture = (f"{row['architecture']}" + (f" w{row['width']}" if row["width"] else "")
                        if row["architecture"] else "-")
        compute = _compute_text(row["compute"])
        epochs = "-" if row["epochs"] is None else row["epochs"]
        print(f"{row['name']:<28} {row['method'] or '-':<12} {architecture:<22} {epochs:>6} {compute:<26} "
              f"{pct(results.get('knn5')):>7} {pct(results.get('knn200')):>7} {pct(results.get('linear')):>8}  "
              f"{features:<8} {protocol.get('linear', {}).get('solver', '-'):<7} {images:<12} {origin:<14} "
              f"{row['source']}")


def _compute_text(compute: dict | None) -> str:
    """``cpu 83 min, 1.06 PFLOP``: training time on its machine and training FLOPs (the same on every machine)."""
    if not compute:
        return "-"
    flops = f", {compute['train_flops'] / 1e15:.2f} PFLOP" if compute.get("train_flops") else ""
    if compute.get("cpu_minutes") and compute.get("cores"):  # CPU time per core: what other jobs do not inflate
        return f"{compute['device']} {compute['cpu_minutes'] / compute['cores']:.0f} min x{compute['cores']}{flops}"
    return f"{compute['device']} {compute['minutes']:.0f} min{flops}"


def add_probe_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo probe``'s arguments."""
    p.add_argument("model", help="registry name[.tag], hf-hub:owner/name[@revision] or a local directory")
    p.add_argument("--knn", action="store_true", help="k-NN probes only (with --linear: both; default: both)")
    p.add_argument("--linear", action="store_true", help="linear probe only (with --knn: both)")
    p.add_argument("--train-per-class", type=int, help="train bank: first N images per class (default: all)")
    p.add_argument("--test-per-class", type=int, help="test set: first N images per class (default: all)")
    p.add_argument("--raw-features", action="store_true", help="probe raw features (default: L2-normalised, "
                   "the model-card protocol)")
    p.add_argument("--linear-solver", choices=SOLVERS, default="fast", help="fast (default, the model-card "
                   "protocol) or sklearn: LogisticRegression(max_iter=1000), the same objective")
    p.add_argument("--bn", choices=BATCH_NORM_MODES, default="eval", help="BatchNorm statistics: eval (default) or "
                   "batch-stats (each batch of 256 by its own, as a model left in train mode)")
    p.add_argument("--data", help="CIFAR-10 root (default: $SSL_ZOO_DATA, ../shared copy, or download)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results and their protocol to this JSON file")
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> None:
    from . import load, probe

    both = args.knn == args.linear
    encoder = load(args.model, device=args.device)
    results = probe(encoder, knn=both or args.knn, linear=both or args.linear, train_per_class=args.train_per_class,
                    test_per_class=args.test_per_class, data=args.data, normalize=not args.raw_features,
                    batch_norm=args.bn, solver=args.linear_solver, device=args.device, progress=True)
    _report(encoder.info.get("name", args.model), results, args.json)


def _report(model: str, results: dict, json_path: str | None) -> None:
    """Print each number with its protocol (the same lines for baseline and probe); optionally save them."""
    from .hub.publish import describe_protocol

    protocol = results["protocol"]
    first = next(iter(protocol.values()))
    print(f"{model} on CIFAR-10: train bank {first['train_images']} images, test {first['test_images']} images, "
          f"BatchNorm {first['batch_norm']}")
    for key in PROBE_KEYS:
        if key in results:
            print(f"  {100 * results[key]:6.2f} %  {describe_protocol(key, protocol[key])}")
    if json_path:
        import torch

        write_json(json_path, {"model": model, "torch": torch.__version__, **results})


def add_publish_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo publish``'s arguments."""
    p.add_argument("run_dir")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", help="owner/name on the Hub")
    where.add_argument("--bundle", metavar="NAME.TAG", help="write the repo's files to zoo/pretrained/NAME.TAG and "
                       "pin them in zoo/registry.json, after re-probing the encoder (a maintainer's step)")
    p.add_argument("--private", action="store_true", help="with --repo: create the repo private")
    p.add_argument("--force", action="store_true", help="with --bundle: replace a tag whose weights score higher")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="leave out the card's figures "
                   "(drawing them embeds all of CIFAR-10: minutes on a CPU)")
    p.set_defaults(func=_publish)


def _publish(args: argparse.Namespace) -> None:
    from .hub.publish import bundle, publish

    if args.bundle:
        from .hub import registry

        entry = bundle(args.run_dir, args.bundle, force=args.force, figures=args.figures)
        name = args.bundle.partition(".")[0]
        default = json.loads(registry.registry_file().read_text())[name]["default_tag"]
        print(f"{args.bundle}: bundled in zoo/pretrained/{args.bundle}, registry tag updated "
              f"(weighted k-NN {100 * entry['results']['knn200']:.2f} %); zoo.load({name!r}) loads tag {default!r}")
        return
    out = publish(args.run_dir, args.repo, private=args.private, figures=args.figures)
    print(f"commit {out['commit']}  {out['url']}")
    print("registry entry for zoo/registry.json (name it, e.g. \"<method>-cifar10\"):")
    print(json.dumps(out["registry_entry"], indent=2))


def add_card_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo card``'s arguments."""
    p.add_argument("model", help="registry name[.tag] of a bundled model, or a model folder (./dir or local-dir:dir)")
    p.add_argument("--out", help="folder for README.md and the figures (default: the model's own folder; "
                   "config.json and the weights are never written)")
    p.add_argument("--data", help="CIFAR-10 root (default: $SSL_ZOO_DATA, ../shared copy, or download)")
    p.set_defaults(func=_card)


def _card(args: argparse.Namespace) -> None:
    from .hub.publish import write_card

    written = write_card(args.model, args.out, data=args.data)
    print(f"card and figures -> {written[-1].parent}: {', '.join(path.name for path in written)}")


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo compare``'s arguments."""
    p.add_argument("models", nargs="+", metavar="MODEL", help="registry name[.tag], hf-hub:owner/name[@revision] "
                   "or a model folder")
    p.add_argument("--out", default="compare.png", help="the figure: embedding maps and per-class accuracy side by "
                   "side (default %(default)s)")
    p.add_argument("--data", help="CIFAR-10 root (default: $SSL_ZOO_DATA, ../shared copy, or download)")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> None:
    from pathlib import Path

    from . import load
    from .data import CIFAR10_CLASSES
    from .eval.figures import CardData, compare_figure, writable_folder
    from .io import write_bytes

    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder: give the figure's file name, e.g. {out / 'compare.png'}")
    writable_folder(out.parent)
    encoders = {}
    for model in args.models:  # every name is checked before minutes of work
        encoder = load(model)
        encoders[encoder.info.get("name", model)] = encoder
    summaries = {name: CardData(encoder, data=args.data).summary for name, encoder in encoders.items()}
    print(_compare_table({name: _listed(encoder) for name, encoder in encoders.items()}, summaries, CIFAR10_CLASSES))
    write_bytes(out, compare_figure(summaries, CIFAR10_CLASSES))
    print(f"figure -> {out}")


def _listed(encoder: Any) -> dict[str, Any]:
    """A model's numbers as listed: a registry tag's (``ssl-zoo list``), else its own config.json's."""
    from .hub.registry import list_models

    if "name" in encoder.info:
        return list_models(encoder.info["name"], details=True)[0]
    results = encoder.info.get("results") or {}
    return {"results": results, "protocol": results.get("protocol", {}), "epochs": encoder.info.get("epochs"),
            "compute": encoder.info.get("provenance", {}).get("compute")}


def _compare_table(listed: dict[str, dict], summaries: dict[str, dict], classes: tuple[str, ...]) -> str:
    """Models side by side: listed accuracies, per-class accuracy, epochs and compute, then the protocol."""
    rows = _compare_rows(listed, summaries, classes)
    widths = [max(len(row[0]) for row in rows)] + [max(len(row[1][i]) for row in rows) for i in range(len(listed))]
    lines = ["  ".join([label.ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(cells, widths[1:])]).rstrip()
             for label, cells in rows]
    return "\n".join(lines + _protocol_lines(listed))


def _compare_rows(listed: dict[str, dict], summaries: dict[str, dict],
                  classes: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """The table's rows: a label and one cell per model."""
    from .eval.figures import PROBE_LABELS

    def pct(x: float | None) -> str:
        return f"{100 * x:.2f} %" if x is not None else "-"

    labels = {"knn5": "k-NN (k=5)", **PROBE_LABELS}
    rows = [("CIFAR-10 test accuracy", list(listed))]
    rows += [(labels[key], [pct(m["results"].get(key)) for m in listed.values()]) for key in PROBE_KEYS]
    rows.append(("per class: weighted k-NN / linear", [""] * len(listed)))
    rows += [(f"  {name}", [f"{100 * s['knn200'][c]:.1f} / {100 * s['linear'][c]:.1f}" for s in summaries.values()])
             for c, name in enumerate(classes)]
    rows.append(("epochs", ["-" if m["epochs"] is None else str(m["epochs"]) for m in listed.values()]))
    rows.append(("training compute", [_compute_text(m["compute"]) for m in listed.values()]))
    return rows


def _protocol_lines(listed: dict[str, dict]) -> list[str]:
    """Each probe's protocol, once per distinct protocol among the models, and how per-class accuracy was had."""
    from .hub.publish import describe_protocol

    lines = ["Protocol (numbers as listed by `ssl-zoo list`):"]
    for key in PROBE_KEYS:
        protocols = [m["protocol"][key] for m in listed.values() if key in m["protocol"]]
        lines += sorted({f"  {describe_protocol(key, p)}; bank {p.get('train_images', '-')} / test "
                         f"{p.get('test_images', '-')} images, BatchNorm {p.get('batch_norm', '-')}" for p in protocols})
    lines.append("  per class: the weighted k-NN and the linear probe above, run by `ssl-zoo compare` on the full "
                 "splits (cached in $SSL_ZOO_CACHE/figures)")
    return lines


# Image limits: flag, field of zoo.imagefile.ImageLimits, the field's units in one unit of the flag, help. The
# same flags, with the same defaults (the dataclass's), on `ssl-zoo serve`, `embed` and `neighbors`.
IMAGE_LIMIT_FLAGS = (
    ("--max-pixels", "max_pixels", 1, "pixels per image once decoded (large JPEGs decode at a reduced scale)"),
    ("--max-file-pixels", "max_file_pixels", 1, "pixels an image file may declare (decompression-bomb guard)"),
    ("--max-aspect-ratio", "max_aspect_ratio", 1, "longest side / shortest side"),
    ("--max-jpeg-scans", "max_jpeg_scans", 1, "scans a JPEG may have (real encoders write at most about 12)"),
    ("--max-progressive-pixels", "max_progressive_pixels", 1, ("pixels of a progressive JPEG (decoding holds all "
                                                               "of them in memory)")),
    ("--max-png-chunks", "max_png_chunks", 1, "ancillary chunks (text, profiles) a PNG may have before its image data"),
    ("--max-file-mb", "max_file_bytes", 1024 * 1024, "size of an image file"),
)


def add_image_limit_arguments(p: argparse.ArgumentParser) -> None:
    """The image limits' flags, in a group of their own."""
    from .imagefile import ImageLimits

    group = p.add_argument_group("image limits (a file over one is refused before it is decoded)")
    defaults = ImageLimits()
    for flag, field, unit, help_text in IMAGE_LIMIT_FLAGS:
        default = getattr(defaults, field) / unit if unit > 1 else getattr(defaults, field)
        group.add_argument(flag, dest=field, type=float if isinstance(default, float) else int, default=default,
                           help=f"{help_text} (default {default:,})" if isinstance(default, int) else f"{help_text} (default {default:g})")


def image_limits(args: argparse.Namespace) -> Any:
    """The ``ImageLimits`` the image-limit flags of ``args`` give."""
    from .imagefile import ImageLimits

    return ImageLimits(**{field: type(getattr(ImageLimits(), field))(getattr(args, field) * unit)
                          for _, field, unit, _ in IMAGE_LIMIT_FLAGS})


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo embed``'s arguments (also ``python -m zoo embed``, what ``torchrun -m zoo embed`` runs)."""
    from .retrieval import BACKENDS, DEFAULT_SHARD_SIZE, DTYPES, SPLIT_PREFIX

    p.add_argument("source", help=f"a folder of images (recursive; ImageFolder sub-folders give labels), a text file "
                   f"of image paths (one per line), webdataset shards ('shards/{{00000..00099}}.tar', quoted; .cls "
                   f"members give labels) or {SPLIT_PREFIX}train / {SPLIT_PREFIX}test")
    p.add_argument("--model", required=True, help="registry name, hf-hub:owner/repo[@rev] or a model folder")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume a killed run)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard (default %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--normalize", action="store_true", help="L2-normalise every row")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, help="DataLoader decoding processes (default: min(4, CPUs))")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help="onnx: ONNX Runtime on the CPU (the graph "
                   "`ssl-zoo export-onnx` and `serve --backend onnx` run)")
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: cuda:LOCAL_RANK) or auto")
    p.add_argument("--follow-symlinks", type=_true_false, default=True, metavar="true|false",
                   help="follow symbolic links in a SOURCE folder (each real folder is walked once; default true)")
    add_image_limit_arguments(p)
    p.set_defaults(func=_embed)


def _true_false(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _embed(args: argparse.Namespace) -> None:
    import shlex
    from pathlib import Path

    from .retrieval.embed import embed_collection
    from .retrieval.shards import PROGRESS

    try:
        manifest = embed_collection(args.source, args.model, args.out, shard_size=args.shard_size, dtype=args.dtype,
                                    normalize=args.normalize, batch_size=args.batch_size, workers=args.workers,
                                    backend=args.backend, device=args.device, limits=image_limits(args),
                                    follow_symlinks=args.follow_symlinks)
    except KeyboardInterrupt:
        done = len(list((Path(args.out) / PROGRESS).glob("shard-*.json")))
        raise KeyboardInterrupt(f"{done} finished shard(s) are kept in {args.out}; run the same command again to "
                                f"embed the rest: ssl-zoo {shlex.join(sys.argv[1:])}") from None
    if manifest is not None:
        print(f"{manifest['rows']} rows x {manifest['feature_dim']} ({manifest['dtype']}) in "
              f"{len(manifest['shards'])} shards, {manifest['failures']} failed files -> {args.out}")


def add_index_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo index``'s arguments."""
    from .retrieval import DEFAULT_NPROBE, FLAT_MAX_ROWS

    p.add_argument("directory", help="the embed output folder (index.faiss and index.json are written there)")
    p.add_argument("--type", dest="kind", choices=["auto", "flat", "ivf"], default="auto",
                   help=f"flat: exact; ivf: approximate; auto: flat up to {FLAT_MAX_ROWS} rows (default)")
    p.add_argument("--nlist", type=int, help="IVF lists (default: 4 sqrt(rows))")
    p.add_argument("--nprobe", type=int, help=f"IVF lists searched per query (default {DEFAULT_NPROBE})")
    p.set_defaults(func=_index)


def _index(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .retrieval.index import INDEX_FILE, build_index

    info = build_index(args.directory, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe)
    extra = f", nlist {info['nlist']}, nprobe {info['nprobe']}" if info["type"] == "ivf" else ""
    print(f"{info['type']} index of {info['rows']} x {info['dim']} ({info['metric']}{extra}) -> "
          f"{Path(args.directory) / INDEX_FILE}")


def add_neighbors_arguments(p: argparse.ArgumentParser) -> None:
    """``ssl-zoo neighbors``'s arguments."""
    p.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    p.add_argument("--index", required=True, help="an embed output folder indexed by `ssl-zoo index`")
    p.add_argument("-k", type=int, default=10, help="neighbours per query (default %(default)s)")
    p.add_argument("--nprobe", type=int, help="IVF lists searched per query (default: the index's)")
    p.add_argument("--grid", help="also write a PNG: each query, then its neighbours with labels")
    add_image_limit_arguments(p)
    p.set_defaults(func=_neighbors)


def _neighbors(args: argparse.Namespace) -> None:
    from pathlib import Path

    import numpy as np

    from .imagefile import decode_file
    from .retrieval.grid import write_grid
    from .retrieval.index import NeighborIndex, vote

    index = NeighborIndex.load(args.index, nprobe=args.nprobe)
    for query in args.queries:
        if not Path(query).exists():
            raise FileNotFoundError(f"query image {query} not found")
    size = int(index.manifest["encoder"]["input_size"])
    vectors = index.embed(np.stack([decode_file(q, size, image_limits(args))[0] for q in args.queries]))
    results = index.search(vectors, args.k)
    for query, hits in zip(args.queries, results):
        label = vote(hits)
        print(f"{query}" + (f"  (k-NN label: {label})" if label else ""))
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:>3}  {hit['similarity']:.4f}  {hit['label'] or '-':<12}  {hit['path']}")
    if args.grid:
        print(f"grid -> {write_grid(list(args.queries), results, args.grid)}")


COMMANDS = {
    "baseline": Command("the notebook's section 2: random-init ResNet-18, k-NN (k=5) and linear probe on raw "
                        "CIFAR-10 features", "zoo.cli:add_baseline_arguments"),
    "list": Command("the registry's named models, their results and protocol", "zoo.cli:add_list_arguments"),
    "probe": Command("k-NN and linear probes of a model on CIFAR-10 (the model-card protocol)",
                     "zoo.cli:add_probe_arguments"),
    "publish": Command("upload a training run to the Hugging Face Hub in one commit, or ship it with the package "
                       "as a registry tag (--bundle)", "zoo.cli:add_publish_arguments"),
    "embed": Command("embed a folder, a list of paths, webdataset shards or a CIFAR-10 split into shards on disk (resumable; splits "
                     "over torchrun ranks)", "zoo.cli:add_embed_arguments"),
    "index": Command("build a faiss nearest-neighbour index over an `ssl-zoo embed` output",
                     "zoo.cli:add_index_arguments"),
    "neighbors": Command("the nearest images of an indexed collection to query images",
                         "zoo.cli:add_neighbors_arguments"),
    "card": Command("re-render a model's card with its figures (nearest neighbours, embedding map, per-class "
                    "accuracy, feature-map matches)", "zoo.cli:add_card_arguments"),
    "compare": Command("models side by side: their listed numbers, per-class accuracy and compute in one table, "
                       "embedding maps and per-class accuracy in one figure", "zoo.cli:add_compare_arguments"),
}
