"""Starting coefficients of the rational activation, and which (preset, version, degrees) are allowed.

The one owner of this rule (docs/METHOD.md §2): the configs check it when they are built, so that a
bad combination fails before any model is loaded, and :class:`~aa_deploy.modeling.rational.RationalActivation`
takes its starting coefficients from here. Pure Python (no torch): ``AdapterConfig`` and ``TrainConfig``
import it.

Two kinds of preset:

* **exact at every degree** -- ``one`` (the constant 1, the paper's start) and ``identity`` (``x``):
  a numerator with one non-zero coefficient and a zero denominator are these functions whatever the
  degrees, so they are built for the requested degrees;
* **tabulated** -- ``gelu``, ``relu``, ``leaky_relu``: least-squares fits of those functions by a
  version-A rational of degrees 5/4 (the published rational-activation tables). A fit at other
  degrees would be a different function, so these presets refuse other degrees and version B.
"""

from __future__ import annotations

# Version-A rational fits at degrees 5/4 (numerator a0..a5, denominator b1..b4).
_TABULATED: dict[str, tuple[list[float], list[float]]] = {
    "gelu": (
        [-0.0012423594497499122, 0.5080497063245629, 0.41586363182937475, 0.13022718688035761,
         0.024355900098993424, 0.00290283948155535],
        [-0.06675015696494944, 0.17927646217001553, 0.03746682605496631, 1.6561610853276082e-10],
    ),
    "leaky_relu": (
        [0.029792778657264946, 0.6183735264987601, 2.323309062531321, 3.051936237265109,
         1.4854203263828845, 0.2510244961111299],
        [-1.1419548357285474, 4.393159974992486, 0.8714712309957245, 0.34719662339598834],
    ),
    "relu": (
        [0.029963801610813613, 0.6168978366891341, 2.37534759733888, 3.0659900472408443,
         1.5246831881677423, 0.2528070864040542],
        [-1.191550121923625, 4.4080487697236626, 0.9110357113686055, 0.34884977946384615],
    ),
}  # fmt: skip
_TABULATED_VERSION = "A"
_TABULATED_DEGREES = (5, 4)
# Presets that are exactly their function at every degree: the power of x that carries coefficient 1.
_EXACT: dict[str, int] = {"one": 0, "identity": 1}

RATIONAL_VERSIONS: tuple[str, ...] = ("A", "B")
RATIONAL_PRESETS: tuple[str, ...] = (*_EXACT, *_TABULATED)
DEFAULT_DEGREES = (5, 4)
MIN_NUMERATOR_DEGREE = 1  # identity needs x
MIN_DENOMINATOR_DEGREE = 1
MAX_DEGREE = 10  # a guard, not a law: high powers of |x| grow fast in float32 and no recipe needs them


def preset_coefficients(
    init: str, version: str = "A", numerator_degree: int = 5, denominator_degree: int = 4
) -> tuple[list[float], list[float]]:
    """(numerator a0..an, denominator b1..bm) to start from; ``ValueError`` saying what is allowed otherwise."""
    if version not in RATIONAL_VERSIONS:
        raise ValueError(f"unknown rational version {version!r}: use one of {', '.join(RATIONAL_VERSIONS)}")
    for name, degree, low in (
        ("numerator", numerator_degree, MIN_NUMERATOR_DEGREE),
        ("denominator", denominator_degree, MIN_DENOMINATOR_DEGREE),
    ):
        if isinstance(degree, bool) or not isinstance(degree, int) or not low <= degree <= MAX_DEGREE:
            raise ValueError(f"rational {name} degree must be an integer from {low} to {MAX_DEGREE}, got {degree!r}")
    if init in _EXACT:
        numerator = [0.0] * (numerator_degree + 1)
        numerator[_EXACT[init]] = 1.0
        return numerator, [0.0] * denominator_degree
    if init not in _TABULATED:
        raise ValueError(f"unknown rational init {init!r}: choose one of {', '.join(RATIONAL_PRESETS)}")
    if version != _TABULATED_VERSION or (numerator_degree, denominator_degree) != _TABULATED_DEGREES:
        degrees = "/".join(map(str, _TABULATED_DEGREES))
        raise ValueError(
            f"rational init {init!r} is a fit tabulated for version {_TABULATED_VERSION} only, at degrees {degrees} "
            f"(asked: version {version}, degrees {numerator_degree}/{denominator_degree}); use those, or start "
            f"from one of {', '.join(_EXACT)}, which are exact at every degree"
        )
    numerator, denominator = _TABULATED[init]
    return list(numerator), list(denominator)


def check_rational(init: str, version: str, numerator_degree: int, denominator_degree: int) -> None:
    """Refuse a preset/version/degrees combination that has no starting coefficients (clear ``ValueError``)."""
    preset_coefficients(init, version, numerator_degree, denominator_degree)
