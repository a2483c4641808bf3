"""aa-deploy: train adaptable adapters on Hugging Face encoders (this package), compile them (``export``)
and serve many tasks on one backbone (``serving``).

Public names are imported lazily so that light modules (``aa_deploy.hub``, ``aa_deploy.data``) can be
used by the server without pulling in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RECIPES": "aa_deploy.config",
    "AdapterConfig": "aa_deploy.config",
    "AdaptableAdapterModel": "aa_deploy.modeling",
    "BackboneMismatchError": "aa_deploy.modeling",
    "RationalActivation": "aa_deploy.modeling",
    "UnsupportedModelError": "aa_deploy.modeling",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aa_deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
