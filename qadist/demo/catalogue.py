"""A shop's wording for the demo's generated domains: what its pages say and how its shoppers ask.

The camera store (`camera_text.CAMERA`) and the other shops whose labels train the teachers
(`shops_text.OTHER_SHOPS`) are values of this one type; `qadist.demo.domain` renders pages and
questions from any of them the same way, so the shift between the teachers' domain and the store's
is in the products, attributes and phrasings, not in the generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Catalogue:
    name: str  # the product word: "camera", "headphones", ...
    kinds: tuple[str, ...]  # what the intro calls a product ("mirrorless", "noise-cancelling", ...)
    intros: tuple[str, ...]  # the page's first sentence: `{title}`, `{kind}`
    brands: tuple[str, ...]
    prefixes: tuple[str, ...]  # model names: <prefix>-<digits><suffix>
    suffixes: tuple[str, ...]
    values: Callable[[random.Random, str], dict[str, str]]  # (rng, brand) -> attribute -> answer phrase
    statements: dict[str, tuple[str, ...]]  # attribute -> sentences with `{v}` (and `{ref}`, `{ref_cap}`)
    questions: dict[str, tuple[str, ...]]  # attribute -> questions with `{name}`
    distractors: tuple[str, ...]  # numbers a page states besides the answers: `{n2}`..`{n4}`, `{d1}`..`{d4}`
    fillers: tuple[str, ...]

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.statements)


def thousands(n: int) -> str:
    return f"{n:,}"
