"""Adapters, rational activations, switches and their insertion into Hugging Face encoders."""

from ..contract.families import SUPPORTED_FAMILIES, UnsupportedModelError
from .adapter import AdapterBlock, BottleneckAdapter
from .model import AdaptableAdapterModel, BackboneMismatchError, load_sequence_classifier
from .rational import RATIONAL_INITS, RationalActivation
from .switch import GumbelSwitch

__all__ = [
    "AdaptableAdapterModel",
    "AdapterBlock",
    "BackboneMismatchError",
    "BottleneckAdapter",
    "GumbelSwitch",
    "RATIONAL_INITS",
    "RationalActivation",
    "SUPPORTED_FAMILIES",
    "UnsupportedModelError",
    "load_sequence_classifier",
]
