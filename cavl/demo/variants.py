"""The demo's variants: the parameters that make a synthetic world.

Variant 1 is the original demo. Variant 2, on which settings tuned to variant 1 are checked, has
another palette (no colour name or RGB value shared with variant 1), more objects per scene, other
VQA templates and its own random streams (files.rng_for); everything else is shared. The format
modules read all they need from :class:`Variant` and never branch on its number.
"""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from . import language
from .scenes import COLORS, sample_scene

# Variant 2's palette: names and RGB values disjoint from variant 1's (scenes.COLORS) and from
# the background names (white / gray / black), so an answer or phrase names one colour only.
COLORS_2 = {
    "pink": (240, 125, 180),
    "brown": (130, 80, 35),
    "cyan": (35, 200, 215),
    "lime": (150, 220, 40),
    "navy": (30, 40, 135),
    "magenta": (195, 30, 190),
}


@dataclass(frozen=True)
class Variant:
    """number: the ``--variant`` value (part of the random stream names); colors: colour name →
    RGB; objects: (min, max) objects per scene, vcr_objects: the same for VCR images (relation
    questions need two); vqa_candidates: (scene, rng, colors) → {answer_type: [(question,
    answer, question_type)]}."""
    number: int
    colors: Mapping[str, tuple]
    objects: tuple
    vcr_objects: tuple
    vqa_candidates: Callable

    def scene(self, rng, image_size, vcr=False, **kwargs):
        """A random scene of this world (see scenes.sample_scene for `kwargs`)."""
        lo, hi = self.vcr_objects if vcr else self.objects
        return sample_scene(rng, image_size, min_objects=lo, max_objects=hi, colors=self.colors,
                            **kwargs)


VARIANTS = {
    1: Variant(number=1, colors=MappingProxyType(COLORS), objects=(1, 4), vcr_objects=(2, 4),
               vqa_candidates=language.vqa_candidates),
    2: Variant(number=2, colors=MappingProxyType(COLORS_2), objects=(2, 6), vcr_objects=(3, 6),
               vqa_candidates=language.vqa_candidates_2),
}


def get(number) -> Variant:
    try:
        return VARIANTS[int(number)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"unknown demo variant {number!r}; known: "
                         f"{', '.join(map(str, VARIANTS))}") from None
