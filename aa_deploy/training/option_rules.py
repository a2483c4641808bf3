"""Which ``aa-deploy train`` options contradict each other, stated once.

Several options only mean something for some recipes (a layer list for ``focused``, a switch
temperature for ``search``, rational degrees for the recipes with rational activations). Before these
rules, a user who passed ``--layers 0,3 --recipe standard`` got a standard run with adapters on every
layer and no word about it. Now such a combination is refused with a message naming the option, the
recipe and what to do instead.

Two callers: :class:`aa_deploy.training.TrainConfig` refuses the options whose default is "not given"
(``None``), so library callers are covered too; the CLI also knows which flags were typed (see
:func:`aa_deploy.cli_options.explicit_options`) and refuses a typed flag the recipe ignores even when
its value equals the default. Standard library only (``--help`` must stay light).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..contract.rules import RATIONAL_RECIPES

# option (TrainConfig field) -> the recipes that use it. Everything not listed applies to every recipe.
RECIPE_OPTIONS: dict[str, tuple[str, ...]] = {
    "selection_from": ("focused", "standard"),
    "selected_layers": ("focused", "standard"),
    "max_layers": ("search",),
    "layer_cost": ("search",),
    "switch_temperature": ("search",),
    "switch_temperature_final": ("search",),
    "switch_learning_rate": ("search",),
    "adapterdrop_max_layers": ("adapterdrop",),
    "adapterdrop_eval_layers": ("adapterdrop",),
    "rational_init": RATIONAL_RECIPES,
    "rational_version": RATIONAL_RECIPES,
    "numerator_degree": RATIONAL_RECIPES,
    "denominator_degree": RATIONAL_RECIPES,
    "rational_learning_rate": RATIONAL_RECIPES,
}
# Options whose "not given" value is None: a value other than None means the caller asked for it.
UNSET_BY_DEFAULT = ("selection_from", "selected_layers", "switch_temperature_final", "adapterdrop_max_layers",
                    "adapterdrop_eval_layers", "max_layers")  # fmt: skip
# Pairs that cannot both be given (each names the same thing another way).
EXCLUSIVE_PAIRS: tuple[tuple[str, str], ...] = (("selection_from", "selected_layers"),)
# How each option is spelled on the command line, for messages (the field name otherwise).
FLAG_NAMES: dict[str, str] = {"selected_layers": "--layers", "switch_temperature_final": "--anneal-to"}


def flag_name(option: str) -> str:
    return FLAG_NAMES.get(option, "--" + option.replace("_", "-"))


def option_conflicts(recipe: str, given: Iterable[str]) -> list[str]:
    """One message per contradiction among the options ``given`` (field names) for ``recipe``."""
    given = set(given)
    problems = []
    for option in sorted(given):
        recipes = RECIPE_OPTIONS.get(option)
        if recipes is not None and recipe not in recipes:
            problems.append(
                f"{flag_name(option)} only applies to the {' and '.join(recipes)} recipe"
                f"{'s' if len(recipes) > 1 else ''}, but --recipe is {recipe}: drop {flag_name(option)} or pick "
                f"--recipe {recipes[0]}"
            )
    for first, second in EXCLUSIVE_PAIRS:
        if first in given and second in given:
            problems.append(f"{flag_name(first)} and {flag_name(second)} both give the adapters' layers: pass only one")
    return problems


def set_options(values: Mapping[str, Any]) -> list[str]:
    """The options of :data:`UNSET_BY_DEFAULT` that carry a value in ``values`` (a TrainConfig's fields)."""
    return [name for name in UNSET_BY_DEFAULT if values.get(name) is not None]


def check_option_conflicts(recipe: str, given: Iterable[str]) -> None:
    """Raise ``ValueError`` listing every contradiction (none: return)."""
    problems = option_conflicts(recipe, given)
    if problems:
        raise ValueError("contradictory options: " + "; ".join(problems))
