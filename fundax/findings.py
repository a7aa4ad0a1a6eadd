"""The findings fundax classifies, and what the paper ties to each (§2.2).

The paper groups findings by lesion size: atrous pyramid pooling uses dilation
rates (1, 2, 4, 8) for findings with large lesions, (1, 2, 4) for medium and
(1, 2) for small ones, and it inserts a max-pooling layer before global average
pooling for the five small-lesion findings it names (hemorrhage, hard exudate,
cotton wool patch, drusen, retinal pigmentary change).

The paper does not say which size class the other three findings have. fundax
gives them:

* ``rnfl_defect`` — large: an RNFL defect is an arcuate wedge running from the
  disc margin out along the arcades, often a third of the image long, so it
  needs the widest receptive field.
* ``membrane`` — large: an epiretinal membrane shows as a sheen with wrinkles
  and vessel distortion spread over the whole macula and often beyond the
  arcades.
* ``macular_hole`` — medium: a single round defect at the fovea, about a third
  to half a disc diameter across — larger and more structured than the
  dot-like small lesions, but compact.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

LesionSize = Literal["small", "medium", "large"]

ATROUS_RATES: dict[str, tuple[int, ...]] = {
    "large": (1, 2, 4, 8),
    "medium": (1, 2, 4),
    "small": (1, 2),
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding: its registry name, how it is shown, and its lesion size."""

    name: str
    display_name: str
    lesion_size: LesionSize

    @property
    def atrous_rates(self) -> tuple[int, ...]:
        """Dilation rates of the atrous pyramid pooling for this lesion size."""
        return ATROUS_RATES[self.lesion_size]

    @property
    def max_pool_before_gap(self) -> bool:
        """Small lesions give low GAP values; the paper max-pools first."""
        return self.lesion_size == "small"


_REGISTRY = (
    Finding("hemorrhage", "Hemorrhage", "small"),
    Finding("hard_exudate", "Hard Exudate", "small"),
    Finding("cotton_wool_patch", "Cotton Wool Patch", "small"),
    Finding("drusen", "Drusen", "small"),
    Finding("retinal_pigmentary_change", "Retinal Pigmentary Change", "small"),
    Finding("macular_hole", "Macular Hole", "medium"),
    Finding("membrane", "Membrane", "large"),
    Finding("rnfl_defect", "RNFL Defect", "large"),
)

FINDINGS: tuple[str, ...] = tuple(f.name for f in _REGISTRY)
"""Finding names in registry order (the order of per-finding arrays on disk)."""

_BY_NAME = {f.name: f for f in _REGISTRY}

PAPER_FINDINGS: tuple[str, ...] = (
    "macular_hole",
    "hard_exudate",
    "hemorrhage",
    "membrane",
    "drusen",
    "cotton_wool_patch",
    "rnfl_defect",
)
"""The seven findings of the paper's Table 1, in its row order."""


class UnknownFindingError(ValueError):
    """A finding name that is not in the registry."""


def get_finding(name: str) -> Finding:
    """The registered finding called ``name``; an unknown name lists the valid ones."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise UnknownFindingError(
            f"unknown finding {name!r}; valid findings are: {', '.join(FINDINGS)}"
        ) from None


def finding_index(name: str) -> int:
    """Position of ``name`` in registry order."""
    return FINDINGS.index(get_finding(name).name)
