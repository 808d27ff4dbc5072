"""Identity parameters of a world portrait: who the person is, independent of pose and edit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from portrait_edit.world.raster import Color

GENDERS = ("man", "woman")
FACE_SHAPES = ("round", "oval", "square", "long")
HAIR_STYLES = ("short", "long", "bun", "buzz", "bald", "curly", "bob")
GLASSES = ("none", "round", "square")
BEARDS = ("none", "goatee", "full")
CLOTHES_STYLES = ("tshirt", "shirt", "hoodie", "sweater")

# Hair style distribution per gender: visibly different populations (long / bun / bob mostly women,
# buzz / bald / beards only men), with some overlap as in real portraits.
HAIR_STYLE_PROBS = {
    "man": {"short": 0.42, "buzz": 0.22, "bald": 0.12, "curly": 0.2, "long": 0.04},
    "woman": {"long": 0.36, "bun": 0.2, "bob": 0.2, "curly": 0.16, "short": 0.08},
}
SKIN_TONES: tuple[Color, ...] = (
    (255, 226, 198), (242, 196, 162), (226, 174, 132), (198, 138, 100), (160, 106, 72), (112, 74, 50),
)  # fmt: skip
HAIR_COLOURS: tuple[Color, ...] = (
    (28, 24, 24), (66, 42, 28), (108, 68, 38), (150, 72, 34), (214, 176, 102), (150, 150, 156),
)  # fmt: skip
EYE_COLOURS: tuple[Color, ...] = ((70, 44, 26), (38, 28, 24), (52, 108, 170), (62, 124, 70), (110, 120, 128))
# Source clothes avoid the costume palettes (red, white, gold, pink, green) so every edit changes
# the colour of every pixel it covers.
CLOTHES_COLOURS: tuple[Color, ...] = (
    (44, 70, 140), (30, 36, 64), (24, 120, 128), (100, 104, 112), (40, 40, 44), (96, 56, 140),
    (110, 74, 46), (210, 110, 40), (80, 150, 200), (60, 90, 70),
)  # fmt: skip
# Muted backgrounds: never white, red or gold, so costume colours stand out against them.
BACKGROUNDS: tuple[Color, ...] = (
    (176, 200, 222), (196, 198, 210), (178, 214, 192), (204, 190, 222), (226, 212, 182),
    (232, 196, 176), (160, 200, 200), (120, 134, 150), (210, 222, 170),
)  # fmt: skip


@dataclass(frozen=True)
class Identity:
    """Everything that stays fixed across the poses, expressions and costumes of one person.

    Colours are RGB uint8 triples. `hair_detail` in [0, 1] moves the hair parting and hairline
    (a continuous style detail the pair jitter perturbs). `face_width` scales the face horizontally.
    """

    gender: str
    face_shape: str
    face_width: float
    skin: Color
    hair_style: str
    hair_colour: Color
    hair_detail: float
    eye_colour: Color
    glasses: str
    beard: str
    clothes_style: str
    clothes_colour: Color
    background_top: Color
    background_bottom: Color

    def to_dict(self) -> dict:
        """JSON-serialisable dict (colours as lists); inverse of `Identity.from_dict`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Identity:
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"identity dict needs exactly the keys {sorted(names)}, got {sorted(data)}")
        return cls(**{k: tuple(int(c) for c in v) if isinstance(v, list) else v for k, v in data.items()})


def _pick(rng: np.random.Generator, options: tuple):
    return options[int(rng.integers(len(options)))]


def _shift(colour: Color, rng: np.random.Generator, amount: float) -> Color:
    """A colour moved by a uniform offset in [-amount, amount] (same offset on all channels + a bit
    of hue), so neighbouring identities never share an exact colour."""
    base = rng.uniform(-amount, amount)
    return tuple(int(np.clip(round(c + base + rng.uniform(-amount, amount) / 3), 0, 255)) for c in colour)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity. Consumes a fixed number of draws, so streams stay aligned across calls."""
    gender = _pick(rng, GENDERS)
    styles = HAIR_STYLE_PROBS[gender]
    hair_style = str(rng.choice(list(styles), p=list(styles.values())))
    beard_draw = rng.uniform()
    beard = "none" if gender == "woman" or beard_draw < 0.55 else ("goatee" if beard_draw < 0.75 else "full")
    top = _shift(_pick(rng, BACKGROUNDS), rng, 10)
    darken = rng.uniform(0.7, 1.0)  # 1.0 = flat background, lower = stronger vertical gradient
    return Identity(
        gender=gender,
        face_shape=_pick(rng, FACE_SHAPES),
        face_width=float(round(rng.uniform(0.93, 1.07), 4)),
        skin=_shift(_pick(rng, SKIN_TONES), rng, 8),
        hair_style=hair_style,
        hair_colour=_shift(_pick(rng, HAIR_COLOURS), rng, 8),
        hair_detail=float(round(rng.uniform(0.0, 1.0), 4)),
        eye_colour=_pick(rng, EYE_COLOURS),
        glasses=str(rng.choice(GLASSES, p=[0.6, 0.2, 0.2])),
        beard=beard,
        clothes_style=_pick(rng, CLOTHES_STYLES),
        clothes_colour=_shift(_pick(rng, CLOTHES_COLOURS), rng, 10),
        background_top=top,
        background_bottom=tuple(int(round(c * darken)) for c in top),
    )


def identity_from_seed(seed: int) -> Identity:
    """The identity with integer id `seed` (>= 0); pair seed s shows identity s."""
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"identity seed must be an integer >= 0, got {seed!r}")
    return sample_identity(np.random.default_rng([int(seed), 0]))
