"""ssl-zoo: self-supervised vision encoders and the tools to probe them."""

from .data import DatasetError, ImageArrays, load_cifar10, load_image_folder
from .encoders import ARCHITECTURES, EncoderConfig, build_encoder
from .hub import HashMismatchError, embed, load, probe
from .registry import list_models as list
from .probes import ProbeResult, evaluate, extract_features, knn_probe, linear_probe
from .transforms import Preprocess

__version__ = "0.1.0"
__all__ = [
    "ARCHITECTURES", "DatasetError", "EncoderConfig", "HashMismatchError", "ImageArrays", "Preprocess",
    "ProbeResult", "build_encoder", "embed", "evaluate", "extract_features", "knn_probe", "linear_probe", "list", "load",
    "load_cifar10", "load_image_folder", "probe",
]
