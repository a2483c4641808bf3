"""aa-deploy: train adaptable adapters on Hugging Face encoders (this package), compile them (``export``)
and serve many tasks on one backbone (``serving``)."""

from .config import RECIPES, AdapterConfig
from .modeling import AdaptableAdapterModel, BackboneMismatchError, RationalActivation, UnsupportedModelError

__version__ = "0.1.0"
__all__ = [
    "RECIPES", "AdaptableAdapterModel", "AdapterConfig", "BackboneMismatchError", "RationalActivation",
    "UnsupportedModelError", "__version__",
]
