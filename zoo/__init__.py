"""ssl-zoo: self-supervised vision encoders and the tools to probe them."""

from .data import DatasetError, ImageArrays, load_cifar10, load_image_folder
from .encoders import ARCHITECTURES, EncoderConfig, build_encoder
from .hub import HashMismatchError
from .model import Encoder, embed
from .probes import ProbeResult, evaluate, extract_features, knn_probe, linear_probe, probe
from .registry import PendingModelError, UnknownModelError, list_models
from .sources import fetch, load, parse_source
from .transforms import Preprocess

__version__ = "0.1.0"
__all__ = [
    "ARCHITECTURES", "DatasetError", "Encoder", "EncoderConfig", "HashMismatchError", "ImageArrays",
    "PendingModelError", "Preprocess", "ProbeResult", "UnknownModelError", "build_encoder", "embed", "evaluate",
    "extract_features", "fetch", "knn_probe", "linear_probe", "list_models", "load", "load_cifar10",
    "load_image_folder", "parse_source", "probe",
]
