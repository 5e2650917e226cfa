"""The invented names of the natural-text tasks: needle keys, people, companies, cities, variables.

Keys are ``adjective-noun`` pairs (``"quiet-harbor"``), people are first and last names,
companies are invented (``"Brightmoor Systems"``) so that a model cannot know where they are,
variables are five capital letters, numbers have a fixed count of digits. None of them can occur
in the filler prose: the prose has no digits, no hyphenated lowercase pairs and none of the
phrases the facts are written with (see :mod:`~depthkv.workload.prose`).
"""

from __future__ import annotations

import random
import string

ADJECTIVES = (
    "amber", "ancient", "bitter", "bold", "brave", "bright", "calm", "clever", "crimson", "curious",
    "dusty", "eager", "fancy", "gentle", "golden", "hollow", "humble", "icy", "jolly", "lively",
    "lucky", "mellow", "misty", "noble", "olive", "polite", "proud", "quiet", "rapid", "rusty",
    "scarlet", "silent", "silver", "sleepy", "smooth", "steady", "stormy", "sunny", "tender", "witty",
)  # fmt: skip
NOUNS = (
    "anchor", "badger", "beacon", "canyon", "cedar", "comet", "falcon", "fern", "garden", "glacier",
    "harbor", "island", "kettle", "lantern", "meadow", "mirror", "orchard", "otter", "pebble", "pepper",
    "pilgrim", "planet", "quarry", "raven", "ribbon", "saddle", "shadow", "spruce", "summit", "thistle",
    "timber", "tulip", "valley", "velvet", "walnut", "willow", "window", "wizard", "yarrow", "zephyr",
)  # fmt: skip
FIRST_NAMES = (
    "Ada", "Bruno", "Carmen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas",
    "Keiko", "Liam", "Marta", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq",
    "Uma", "Viktor", "Wanda", "Xavier", "Yara", "Zoran",
)  # fmt: skip
LAST_NAMES = (
    "Abbott", "Baptiste", "Castellano", "Dunmore", "Eriksen", "Fairbanks", "Galloway", "Hartley",
    "Ibarra", "Jablonski", "Kowalczyk", "Lindqvist", "Montague", "Nakamura", "Oyelaran", "Pettersen",
    "Quimby", "Rasmussen", "Salazar", "Thornbury", "Underhill", "Valdivia", "Whitcombe", "Yilmaz",
)  # fmt: skip
COMPANY_STEMS = (
    "Amber", "Bright", "Cobalt", "Copper", "Ever", "Fern", "Granite", "Harbor", "Iron", "Lumen",
    "Maple", "North", "Oak", "Quill", "Silver", "Stone", "Sun", "Tidal", "Velvet", "Willow",
)  # fmt: skip
COMPANY_ENDINGS = ("brook", "crest", "field", "gate", "moor", "ridge", "vale", "wick")
COMPANY_KINDS = ("Analytics", "Foods", "Labs", "Logistics", "Media", "Robotics", "Systems", "Textiles")
CITIES = (
    "Accra", "Ankara", "Athens", "Bergen", "Bogota", "Cairo", "Dakar", "Dublin", "Hanoi", "Helsinki",
    "Kyoto", "Lagos", "Lima", "Lisbon", "Madrid", "Manila", "Montreal", "Nairobi", "Osaka", "Oslo",
    "Porto", "Prague", "Quito", "Riga", "Santiago", "Seoul", "Sydney", "Tallinn", "Tunis", "Vienna",
)  # fmt: skip


def _fresh(rng: random.Random, taken: set[str], draw) -> str:
    while True:
        name = draw()
        if name not in taken:
            taken.add(name)
            return name


def random_key(rng: random.Random, taken: set[str]) -> str:
    """A fresh ``adjective-noun`` key (1,600 possible); added to ``taken``."""
    return _fresh(rng, taken, lambda: f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}")


def random_person(rng: random.Random, taken: set[str]) -> str:
    """A fresh ``"First Last"`` name (624 possible); added to ``taken``."""
    return _fresh(rng, taken, lambda: f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}")


def random_company(rng: random.Random, taken: set[str]) -> str:
    """A fresh invented company such as ``"Northvale Robotics"`` (1,280 possible); added to ``taken``."""
    return _fresh(
        rng,
        taken,
        lambda: f"{rng.choice(COMPANY_STEMS)}{rng.choice(COMPANY_ENDINGS)} {rng.choice(COMPANY_KINDS)}",
    )


def random_city(rng: random.Random, taken: set[str]) -> str:
    """A fresh city from :data:`CITIES`; added to ``taken``."""
    return _fresh(rng, taken, lambda: rng.choice(CITIES))


def random_variable(rng: random.Random, taken: set[str], length: int = 5) -> str:
    """A fresh name of ``length`` capital letters; added to ``taken``."""
    return _fresh(rng, taken, lambda: "".join(rng.choice(string.ascii_uppercase) for _ in range(length)))


def random_number(rng: random.Random, taken: set[str], digits: int) -> str:
    """A fresh decimal number of exactly ``digits`` digits (no leading zero); added to ``taken``."""
    return _fresh(rng, taken, lambda: str(rng.randint(10 ** (digits - 1), 10**digits - 1)))
