"""The model card of an adapter artefact: README.md (Hub metadata + what was learned) and its picture.

An artefact should describe itself before it is shared, so the exporter calls :func:`write_model_card`
on every export folder and ``aa-deploy push`` writes a fresh card (with the real repo id) into its
staging folder. Two constraints shape this package:

* it must be fast (well under a second) and must never fail an export because an optional file
  (metrics.json, selection.json, the weights, the manifest...) is absent or unreadable: every input
  but ``adapter_config.json`` is optional and a missing one only drops a section;
* it must not need torch: weights are read with safetensors' numpy backend, activations are drawn
  with :mod:`aa_deploy.plotting`, and nothing imports :mod:`aa_deploy.data` (which pulls scipy).

Modules: ``artifact`` reads the folder, ``facts`` computes results and sizes, ``sections`` turns them
into the variables of the template ``model_card.md.j2``, ``picture`` draws or reuses the picture, and
``render`` puts them together.
"""

from .artifact import GLUE_HUB_CONFIGS
from .picture import PICTURE_NAME
from .render import CARD_NAME, build_model_card, write_model_card

__all__ = ["CARD_NAME", "GLUE_HUB_CONFIGS", "PICTURE_NAME", "build_model_card", "write_model_card"]
