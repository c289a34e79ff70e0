"""Training configuration: each method's seed recipe as defaults, presets, file and command-line overrides."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .methods import METHODS, VIEWS, Recipe
from .optim import OPTIMIZERS, SCHEDULES

PRECISIONS = ("auto", "bf16", "fp32")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256  # --image-size: the CIFAR stem keeps full resolution through layer1
RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))  # None in TrainConfig: the method's seed value
PER_CLASS_FIELDS = ("train_per_class", "eval_train_per_class", "eval_test_per_class", "final_train_per_class")
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "views": VIEWS, "precision": PRECISIONS}
_TYPES = {"bool": bool, "int": int, "float": (int, float), "str": str, "dict": dict}  # by annotation


def _doc(default: Any, text: str) -> Any:
    """A dataclass field with its one-line description (the flag's help)."""
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``train_config.json`` in the run directory.

    Building one resolves and checks it, once: ``None`` in lr / weight_decay / schedule /
    warmup_epochs / views, and any option missing from ``method_options``, take the method's seed
    values (``METHODS[method].recipe`` and ``.options()``). ``*_per_class`` of ``None`` (or
    ``"all"``) means the full CIFAR-10 split. ``shuffle``/``drop_last``: a fresh data order every
    epoch and no partial last batch (the notebook: neither). ``precision``: ``auto`` is bf16
    autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 on other CPUs (where
    bf16 is emulated and about 10x slower); ``bf16`` and ``fp32`` force one. The step runs channels_last
    in bf16 (``hardware.memory_format``).
    """

    method: str = "simclr"
    epochs: int = _doc(50, "training epochs")
    batch_size: int = _doc(256, "images per step, over all processes")
    optimizer: str = _doc("adamw", "optimiser")
    lr: float | None = _doc(None, "peak learning rate")
    weight_decay: float | None = _doc(None, "weight decay")
    schedule: str | None = _doc(None, "learning-rate schedule")
    warmup_epochs: int | None = _doc(None, "epochs of linear warm-up (the warmup-cosine schedules)")
    views: str | None = _doc(None, "separate: one forward pass per view (BatchNorm statistics per view); "
                             "joint: both views in one batch")
    method_options: dict[str, Any] = field(default_factory=dict)
    width: int = _doc(64, "ResNet-18 base width (64: the standard network, 512-d features)")
    image_size: int = _doc(32, "side of the training views and of the encoder's input, in pixels (CIFAR-10: 32; "
                           "64 or 96 for photos); your own images are decoded once at this size")
    proj_hidden: int = _doc(2048, "hidden size of the projector (and BYOL's predictor)")
    proj_out: int = _doc(128, "output size of the projector")
    local_crops: int = _doc(0, "multi-crop: small local crops per image besides the two global views, each "
                            "one's loss taken against both global views (0: off)")
    local_size: int = _doc(16, "side of each local crop in pixels (kept small: a 16-px crop costs a quarter of "
                           "a 32-px view); at most --image-size")
    local_scale_min: float = _doc(0.1, "smallest area of a local crop, as a fraction of the image")
    local_scale_max: float = _doc(0.4, "largest area of a local crop, as a fraction of the image")
    progressive_size: int = _doc(32, "progressive resolution: the global views' side in the first epoch, "
                                 "growing linearly to --image-size over --progressive-epochs (at most --image-size)")
    progressive_epochs: int = _doc(0, "epochs over which the global views grow to --image-size (0: off)")
    bn_recalibrate: bool = _doc(False, "recompute the encoder's BatchNorm statistics on unaugmented training "
                                "images at --image-size before each evaluation (FixRes-style)")
    shuffle: bool = _doc(True, "a fresh data order every epoch, seeded by (seed, epoch)")
    drop_last: bool = _doc(True, "drop each epoch's partial last batch")
    train_per_class: int | None = _doc(None, "training images per class (all: 5,000 of CIFAR-10; your own labelled "
                                       "images: at most this many per class; without labels: all images)")
    eval_train_per_class: int | None = _doc(500, "k-NN bank images per class of the per-epoch monitor")
    eval_test_per_class: int | None = _doc(100, "test images per class of the per-epoch monitor")
    final_train_per_class: int | None = _doc(None, "train bank images per class of the final probes "
                                             "(the test set is always whole)")
    seed: int = _doc(0, "seed of initialisation, data order and augmentation")
    device: str = _doc("auto", "auto|cpu|cuda|cuda:N (auto: cuda when available)")
    precision: str = _doc("auto", "auto: bf16 autocast on CUDA and on CPUs with native bf16 "
                          "(AVX512-BF16 or AMX: 2-3x fp32), fp32 on other CPUs (bf16 emulated there: ~10x slower)")
    compile: bool = _doc(False, "torch.compile the training step (on 2 CPU cores: no faster than eager, a minute "
                         "to compile; benchmarks/cpu_kernels.py)")
    log_every: int = _doc(20, "steps between loss read-backs (divergence check, progress bar)")
    data: str | None = _doc(None, "what to train on: cifar10 (unset: $SSL_ZOO_DATA, the ../shared copy, or a "
                            "download) or a CIFAR-10 root; or your own images: a folder (first-level sub-folders "
                            "are labels when every image has one), a text file of paths, or webdataset shards "
                            "(shards/{00000..00099}.tar)")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(METHODS)}")
        method = METHODS[self.method]
        for name, seed_value in asdict(method.recipe).items():
            if getattr(self, name) is None:
                setattr(self, name, seed_value)
        seed_options = method.options()
        if unknown := sorted(set(self.method_options) - set(seed_options)):
            raise ValueError(f"{unknown} are not options of {self.method} (its options: {seed_options}); "
                             f"drop {', '.join('--' + k.replace('_', '-') for k in unknown)} or train another method")
        self.method_options = {k: _option_value(self.method, k, self.method_options.get(k, v), v)
                               for k, v in seed_options.items()}
        for name in PER_CLASS_FIELDS:
            if getattr(self, name) == "all":
                setattr(self, name, None)
        self._check()

    def _check(self) -> None:
        for f in fields(self):
            value, annotation = getattr(self, f.name), str(f.type)
            expected = _TYPES[annotation.split("[")[0].split(" ")[0]]
            if value is None and "None" in annotation:
                continue
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                raise ValueError(f"{f.name} must be of type {annotation}, got {value!r}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("epochs", "width", "proj_hidden", "proj_out", "log_every", *PER_CLASS_FIELDS):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1{' or all' if name in PER_CLASS_FIELDS else ''}, got {value}")
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels, got {self.image_size}")
        if self.local_crops < 0 or (self.local_crops and not 4 <= self.local_size <= self.image_size):
            raise ValueError(f"local_crops must be >= 0 and local_size in 4..{self.image_size} (the image size), got "
                             f"{self.local_crops} and {self.local_size}")
        if not 0 < self.local_scale_min <= self.local_scale_max <= 1:
            raise ValueError(f"local crop scales must satisfy 0 < min <= max <= 1, got {self.local_scale_min} and "
                             f"{self.local_scale_max}")
        if (self.progressive_epochs and not 8 <= self.progressive_size <= self.image_size) or \
                not 0 <= self.progressive_epochs <= self.epochs:
            raise ValueError(f"progressive_size must be in 8..{self.image_size} and progressive_epochs in 0..epochs "
                             f"({self.epochs}), got {self.progressive_size} and {self.progressive_epochs}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (contrastive and batch-statistics losses)")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in 0..epochs ({self.epochs}), got {self.warmup_epochs}")


def _option_value(method: str, name: str, value: Any, seed_value: Any) -> Any:
    """``value`` as the type of the option's seed value (an int is fine for a float option)."""
    if not (type(value) is type(seed_value) or (type(seed_value) is float and type(value) is int)):
        raise ValueError(f"{method} option {name} must be a {type(seed_value).__name__} like its seed value "
                         f"{seed_value!r}, got {value!r}")
    return type(seed_value)(value)


# The CPU presets' network, optimiser and evaluation (SGD as lightly's CIFAR-10 benchmarks), and their AdamW.
CPU_NETWORK = {"width": 16, "optimizer": "sgd", "weight_decay": 5e-4, "schedule": "step-warmup-cosine",
               "warmup_epochs": 1, "proj_hidden": 1024, "train_per_class": "all", "eval_train_per_class": 500,
               "eval_test_per_class": 200, "final_train_per_class": "all", "log_every": 50}
CPU_ADAMW = {"optimizer": "adamw", "weight_decay": 1e-6, "proj_out": 1024}

# Method-agnostic scalings of the seed recipe; what a preset leaves out is the method's own (METHODS).
PRESETS: dict[str, dict[str, Any]] = {
    # The notebook: full CIFAR-10, ResNet-18, 50 epochs, batch 256, each method's recipe. Needs a GPU.
    "seed": {},
    # The zoo's CPU recipe (the `.cpu` registry tags): at most 100 minutes per method on 2 CPU cores, chosen by
    # benchmarks/cpu_study.py (SGD as lightly's CIFAR-10 benchmarks; SimCLR temperature 0.2: +4.2 points at 3 epochs;
    # Barlow Twins with AdamW: +8.9 points at 3 epochs, +1.0 at its full 50 epochs).
    "cpu": {**CPU_NETWORK, "batch_size": 256, "lr": 0.12,
            "methods": {"simclr": {"epochs": 50, "method_options": {"temperature": 0.2}},
                        "byol": {"epochs": 40},
                        "barlowtwins": {"epochs": 50, **CPU_ADAMW, "lr": 2e-3}}},
    # The `.cpu2` tags' recipe, chosen by the short-schedule study (benchmarks/cpu_study.py): batch 128 with the
    # lr scaled (linearly for SGD, by the square root for AdamW): at a tenth of the budget +2.0 / +2.3 / +0.3 / +0.2
    # points of weighted k-NN for SimCLR / BYOL / Barlow Twins / VICReg, the only idea not worse for any method;
    # epochs fill the budget of 1.5x simclr-cifar10.cpu's training FLOPs (1.58 PFLOP).
    "cpu2": {**CPU_NETWORK, "batch_size": 128, "lr": 0.06,
             "methods": {"simclr": {"epochs": 75, "method_options": {"temperature": 0.2}},
                         "byol": {"epochs": 56},
                         "barlowtwins": {"epochs": 72, **CPU_ADAMW, "lr": 1.4e-3},
                         "vicreg": {"epochs": 71, **CPU_ADAMW, "lr": 1.4e-3}}},
    # Proves learning on 2 CPU cores in about 10 minutes per method (benchmarks/presets.py).
    "quick": {"width": 16, "train_per_class": 500, "epochs": 15, "batch_size": 128, "proj_hidden": 512,
            "lr": 2e-3, "weight_decay": 1e-6, "schedule": "step-warmup-cosine", "warmup_epochs": 1,
            "eval_train_per_class": 200, "eval_test_per_class": 50, "final_train_per_class": 1000, "log_every": 10},
    # Under a minute on 2 CPU cores: a complete run directory for tests and quick checks.
    "smoke": {"width": 8, "train_per_class": 40, "epochs": 2, "batch_size": 64, "proj_hidden": 128,
              "proj_out": 32, "lr": 2e-3, "weight_decay": 1e-6, "schedule": "step-warmup-cosine",
              "warmup_epochs": 0, "eval_train_per_class": 20, "eval_test_per_class": 10,
              "final_train_per_class": 50, "log_every": 2},
}


def preset_values(preset: str, method: str) -> dict[str, Any]:
    """A preset's settings for one method: the common ones, then the method's own (its ``methods`` entry)."""
    common = {k: v for k, v in PRESETS[preset].items() if k != "methods"}
    return {**common, **PRESETS[preset].get("methods", {}).get(method, {})}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_per_class(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images per class or 'all', got {text!r}") from None


def _parser_for(name: str, annotation: str) -> Any:
    if name in PER_CLASS_FIELDS:
        return _parse_per_class
    for type_name, parse in (("bool", _parse_bool), ("int", int), ("float", float)):
        if annotation.startswith(type_name):
            return parse
    return str


def _method_options() -> dict[str, dict[str, Any]]:
    """Every method option name -> {method: seed value}, over all of ``METHODS``."""
    options: dict[str, dict[str, Any]] = {}
    for name, method in METHODS.items():
        for option, seed_value in method.options().items():
            options.setdefault(option, {})[name] = seed_value
    return options


def _default_text(name: str, default: Any) -> str:
    """A field's default under the seed preset (each method's recipe where it has none), then the
    presets that change it: "default: 50; preset cpu: 15, smoke: 2"."""
    def show(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return str(value) if value is not None else "all" if name in PER_CLASS_FIELDS else "unset"

    text = (", ".join(f"{m} {show(getattr(method.recipe, name))}" for m, method in METHODS.items())
            if default is None and name in RECIPE_FIELDS else show(default))
    changed = []
    for preset in PRESETS:
        if any(name in preset_values(preset, m) for m in METHODS):
            per_method = {m: show(preset_values(preset, m).get(name, default)) for m in METHODS}
            values = set(per_method.values())
            changed.append(f"{preset}: " + (values.pop() if len(values) == 1 else
                                             ", ".join(f"{m} {v}" for m, v in per_method.items())))
    return f"default: {text}" + (f"; preset {', '.join(changed)}" if changed else "")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field and per method option, defaulting to 'not given'; the
    help shows the field's description and its default under each preset."""
    group = parser.add_argument_group("hyperparameters (override preset and config file)")
    for f in fields(TrainConfig):
        if f.name not in ("method", "method_options"):
            metavar = (None if f.name in CHOICES else "N|all" if f.name in PER_CLASS_FIELDS else
                       "true|false" if f.type == "bool" else "SOURCE" if f.name == "data" else f.name.upper())
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_parser_for(f.name, str(f.type)),
                               choices=CHOICES.get(f.name), default=None, metavar=metavar,
                               help=f"{f.metadata['help']} ({_default_text(f.name, f.default)})")
    options = parser.add_argument_group("method options (each applies to the methods named; default: the seed's)")
    for option, seeds in _method_options().items():
        seed_type = type(next(iter(seeds.values())))
        titles = " and ".join(METHODS[m].title for m in seeds)
        defaults = ", ".join(f"{m} {v}" for m, v in seeds.items())
        options.add_argument(f"--{option.replace('_', '-')}", dest=f"option_{option}",
                             type=_parse_bool if seed_type is bool else seed_type, default=None,
                             metavar=option.upper(), help=f"{titles} option (default: {defaults})")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line, method options under ``method_options``."""
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in ("method", "method_options")}
    overrides["method_options"] = {option: getattr(args, f"option_{option}") for option in _method_options()
                                   if getattr(args, f"option_{option}") is not None}
    return overrides


def _read_config_file(path: str, method: str) -> dict[str, Any]:
    loaded = json.loads(Path(path).read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a JSON object of TrainConfig fields, got {type(loaded).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    if unknown := set(loaded) - known:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if loaded.get("method", method) != method:
        raise ValueError(f"{path} is a {loaded['method']!r} configuration but the command trains {method!r}: "
                         f"run `ssl-zoo train {loaded['method']} ...` or remove the file's \"method\" key")
    if not isinstance(loaded.get("method_options", {}), dict):
        raise ValueError(f"{path}: method_options must be a JSON object, got {loaded['method_options']!r}")
    return loaded


def build_config(method: str, preset: str, config_file: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Preset, then the JSON config file, then command-line flags (``None``: not given); the
    method's seed recipe fills what is left unset. ``method_options`` merge key by key."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values: dict[str, Any] = {**preset_values(preset, method), "method": method}
    given = {k: v for k, v in overrides.items() if v is not None}
    options: dict[str, Any] = dict(values.pop("method_options", {}))
    for layer in ([_read_config_file(config_file, method)] if config_file else []) + [given]:
        options.update(layer.pop("method_options", None) or {})
        values.update(layer)
    return TrainConfig(**values, method_options=options)
