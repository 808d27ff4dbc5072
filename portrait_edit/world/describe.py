"""A world person in words: the detailed description of the paper's 900 identity-free validation pairs.

`describe_identity(identity)` names what the renderer draws (skin tone, hair colour and style, glasses,
beard) as a phrase that follows the gender word: "with light skin and short black hair and round glasses"
(no commas: the prompt templates use one to separate the edit).
Colours are named by the nearest palette entry (identities are drawn around those entries).
"""

from __future__ import annotations

from portrait_edit.world.identity import HAIR_COLOURS, SKIN_TONES, Identity
from portrait_edit.world.raster import Color

SKIN_NAMES = ("very light", "light", "medium", "tan", "brown", "dark brown")  # SKIN_TONES order
HAIR_COLOUR_NAMES = ("black", "dark brown", "brown", "auburn", "blond", "grey")  # HAIR_COLOURS order
HAIR_STYLE_PHRASES = {
    "short": "short {colour} hair",
    "long": "long {colour} hair",
    "bun": "{colour} hair in a bun",
    "buzz": "a {colour} buzz cut",
    "bald": "a bald head",
    "curly": "curly {colour} hair",
    "bob": "a {colour} bob",
}
GLASSES_PHRASES = {"none": None, "round": "round glasses", "square": "square glasses"}
BEARD_PHRASES = {"none": None, "goatee": "a {colour} goatee", "full": "a full {colour} beard"}


def _nearest(colour: Color, palette: tuple[Color, ...], names: tuple[str, ...]) -> str:
    distances = [sum((a - b) ** 2 for a, b in zip(colour, entry)) for entry in palette]
    return names[distances.index(min(distances))]


def describe_identity(identity: Identity) -> str:
    """'with <skin> skin and <hair>[ and <glasses>][ and <beard>]' (no gender word: prompts add it)."""
    hair = _nearest(identity.hair_colour, HAIR_COLOURS, HAIR_COLOUR_NAMES)
    parts = [
        f"{_nearest(identity.skin, SKIN_TONES, SKIN_NAMES)} skin",
        HAIR_STYLE_PHRASES[identity.hair_style].format(colour=hair),
    ]
    for phrase in (GLASSES_PHRASES[identity.glasses], BEARD_PHRASES[identity.beard]):
        if phrase is not None:
            parts.append(phrase.format(colour=hair))
    return "with " + " and ".join(parts)
