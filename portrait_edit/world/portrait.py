"""The layers of a neutral portrait in normal clothes: background, hair, body, face and features.

Layers are keyed by name; `z` fixes the stacking, so edits can replace or add layers and every layer
they leave alone keeps its place (the precondition of `raster.edit_region`). Head layers use the
tilted head frame (unit ~ face half-height, origin at the face centre); body layers the upright body
frame (origin at the neck keypoint); the background the image frame (unit = image size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from portrait_edit.world.identity import Identity
from portrait_edit.world.pose import HEAD_POINTS, Pose, body_frame, head_frame
from portrait_edit.world.raster import (
    Box,
    Color,
    Difference,
    Ellipse,
    Frame,
    Gradient,
    Intersection,
    Layer,
    Polygon,
    Shape,
    Stroke,
    Union,
)

Z = {
    "background": 0, "hair_back": 10, "neck": 20, "clothes": 30, "collar": 31, "neckline": 32,
    "clothes_detail": 33, "ears": 40, "face": 50, "nose": 55, "beard": 58, "mouth": 60,
    "eye_whites": 62, "irises": 63, "pupils": 64, "lids": 65, "hair_front": 70, "brows": 72,
    "glasses": 80,
}  # fmt: skip

# (rx, ry, power, taper) of each face shape, before gender and `face_width` adjustments.
FACE_SHAPES = {
    "round": (0.88, 0.98, 2.0, 0.06),
    "oval": (0.8, 1.04, 2.0, 0.2),
    "square": (0.84, 0.98, 3.2, 0.1),
    "long": (0.74, 1.1, 2.4, 0.14),
}
EYE_WHITE = (246, 246, 242)
DARK_LINE = (34, 26, 28)


def scale_colour(colour: Color, factor: float) -> Color:
    return tuple(int(min(255, round(c * factor))) for c in colour)


def mix(a: Color, b: Color, t: float) -> Color:
    """(1 - t) * a + t * b, rounded."""
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


@dataclass(frozen=True)
class Geometry:
    """Frames and derived measures that the base portrait and the edits share."""

    head: Frame
    body: Frame
    image: Frame
    face: Ellipse
    skin: Color
    brow_colour: Color
    hair_top: float  # v of the top of the hair (head frame); where hats and crowns sit
    eyes: tuple[tuple[float, float], tuple[float, float]]  # right, left eye centres (head frame)
    body_shape: Box  # the clothes silhouette (body frame)


def geometry(identity: Identity, pose: Pose, size: int) -> Geometry:
    rx, ry, power, taper = FACE_SHAPES[identity.face_shape]
    if identity.gender == "man":  # wider, squarer jaw
        rx, power, taper = rx * 1.04, power + 0.5, max(taper - 0.06, 0.0)
    else:  # narrower chin
        taper += 0.06
    rx *= identity.face_width
    face = Ellipse(0.0, 0.02, float(round(rx, 6)), ry, power, taper)
    hair_top = {"bald": -ry + 0.02, "buzz": -ry - 0.05, "bun": -ry - 0.5, "curly": -ry - 0.3}
    brow = identity.hair_colour if identity.hair_style not in ("bald", "buzz") else (60, 44, 34)
    return Geometry(
        head=head_frame(pose, size),
        body=body_frame(pose, size),
        image=Frame(0.0, 0.0, float(size)),
        face=face,
        skin=identity.skin,
        brow_colour=scale_colour(brow, 0.8),
        hair_top=hair_top.get(identity.hair_style, -ry - 0.14),
        eyes=(HEAD_POINTS["r_eye"], HEAD_POINTS["l_eye"]),
        # Men: broader shoulders. Both silhouettes contain the shoulder keypoints (+-1.7, 0.5) with margin.
        body_shape=Box(0.0, 2.2, 2.3, 2.0, 0.9) if identity.gender == "man" else Box(0.0, 2.2, 2.1, 2.0, 0.8),
    )


def ring_of_circles(cx: float, cy: float, rx: float, ry: float, radius: float, a0: float, a1: float, n: int):
    """n circles of `radius` on the ellipse (cx, cy, rx, ry) from angle a0 to a1 degrees (0 = +u,
    90 = +v, i.e. downwards): bumpy outlines for curls, wool and wreaths."""
    parts = []
    for i in range(n):
        a = math.radians(a0 + (a1 - a0) * i / max(n - 1, 1))
        parts.append(
            Ellipse(round(cx + rx * math.cos(a), 6), round(cy + ry * math.sin(a), 6), radius, radius)
        )
    return tuple(parts)


def _hair_layers(identity: Identity, g: Geometry) -> dict[str, Layer]:
    style, colour = identity.hair_style, identity.hair_colour
    rx, ry = g.face.rx, g.face.ry
    part = (identity.hair_detail - 0.5) * 0.3  # parting offset
    line = -0.5 - 0.12 * (identity.hair_detail - 0.5)  # hairline height
    cap = Ellipse(0.0, -0.1, rx + 0.12, ry + 0.06)
    window = Ellipse(part, 0.25, rx * 0.92, 0.25 - line)
    if style == "buzz":
        colour = mix(colour, g.skin, 0.35)
        cap = Ellipse(0.0, -0.05, rx + 0.05, ry + 0.02)
        window = Ellipse(0.0, 0.25, rx * 0.92, 0.85)
    back: Shape = cap
    if style == "long":
        back = Union((Ellipse(0.0, -0.1, rx + 0.16, ry + 0.1), Box(0.0, 0.85, rx + 0.24, 1.2, 0.35)))
    elif style == "bob":
        back = Union((Ellipse(0.0, -0.1, rx + 0.16, ry + 0.08), Box(0.0, 0.3, rx + 0.2, 0.62, 0.2)))
        window = Box(part * 0.5, 0.55, rx * 0.96, 0.95 + line * 0.1, 0.3)
    elif style == "bun":
        back = Union((cap, Ellipse(0.0, -ry - 0.28, 0.36, 0.3)))
        window = Ellipse(0.0, 0.25, rx * 0.92, 0.8)
    elif style == "curly":
        bottom = 100.0 if identity.gender == "woman" else 10.0
        back = Union(
            (cap, *ring_of_circles(0.0, -0.1, rx + 0.08, ry + 0.04, 0.28, bottom, 180 - bottom + 360, 13))
        )
    front = Intersection(Difference(back, window), Box(0.0, -1.0, 2.0, 1.3))
    if style == "bald":  # hair only at the temples
        ring = Difference(Ellipse(0.0, -0.05, rx + 0.06, ry + 0.03), Ellipse(0.0, 0.1, rx * 0.9, 1.0))
        return {
            "hair_front": Layer(
                "hair_front", Z["hair_front"], g.head, Intersection(ring, Box(0, -0.05, 2, 0.3)), colour
            )
        }
    return {
        "hair_back": Layer("hair_back", Z["hair_back"], g.head, back, scale_colour(colour, 0.85)),
        "hair_front": Layer("hair_front", Z["hair_front"], g.head, front, colour),
    }


def clothes_layers(identity: Identity, g: Geometry) -> dict[str, Layer]:
    """The source clothes: silhouette in the clothes colour plus a style-specific neck detail."""
    colour, style, b = identity.clothes_colour, identity.clothes_style, g.body
    dark, neck_skin = scale_colour(colour, 0.75), scale_colour(g.skin, 0.9)
    layers = {"clothes": Layer("clothes", Z["clothes"], b, g.body_shape, colour)}
    if style == "tshirt":
        layers["collar"] = Layer(
            "collar", Z["collar"], b, Intersection(Ellipse(0, 0.12, 0.56, 0.42), g.body_shape), dark
        )
        crew = Intersection(Ellipse(0, 0.1, 0.42, 0.3), g.body_shape)
        layers["neckline"] = Layer("neckline", Z["neckline"], b, crew, neck_skin)
    elif style == "shirt":
        vee = Polygon(((-0.4, 0.0), (0.4, 0.0), (0.0, 0.95)))
        layers["neckline"] = Layer("neckline", Z["neckline"], b, Intersection(vee, g.body_shape), neck_skin)
        wings = Union(
            (
                Polygon(((-0.46, 0.12), (-0.05, 0.7), (-0.6, 0.62))),
                Polygon(((0.46, 0.12), (0.05, 0.7), (0.6, 0.62))),
            )
        )
        layers["clothes_detail"] = Layer(
            "clothes_detail", Z["clothes_detail"], b, wings, mix(colour, (255, 255, 255), 0.35)
        )
    elif style == "hoodie":
        hood = Intersection(
            Difference(Ellipse(0, 0.15, 0.95, 0.5), Ellipse(0, 0.05, 0.42, 0.38)), g.body_shape
        )
        layers["collar"] = Layer("collar", Z["collar"], b, hood, dark)
        strings = Union((Stroke(((-0.2, 0.4), (-0.24, 1.3)), 0.05), Stroke(((0.2, 0.4), (0.24, 1.3)), 0.05)))
        layers["clothes_detail"] = Layer(
            "clothes_detail", Z["clothes_detail"], b, strings, mix(colour, (255, 255, 255), 0.45)
        )
    else:  # sweater: turtle neck
        layers["clothes_detail"] = Layer(
            "clothes_detail", Z["clothes_detail"], b, Box(0.0, 0.05, 0.4, 0.32, 0.12), dark
        )
    return layers


def eye_layers(
    identity: Identity, g: Geometry, half_w: float = 0.17, half_h: float = 0.1, iris: float = 0.085
) -> dict[str, Layer]:
    """Open eyes: whites, irises (clipped to the whites) and pupils; women also get an upper lid line."""
    (xr, yr), (xl, yl) = g.eyes
    whites = Union((Ellipse(xr, yr, half_w, half_h), Ellipse(xl, yl, half_w, half_h)))
    irises = Union((Ellipse(xr, yr, iris, iris), Ellipse(xl, yl, iris, iris)))
    if iris > half_h:  # clip only when needed: an unclipped iris stays the same layer when the whites change
        irises = Intersection(irises, whites)
    pupils = Union((Ellipse(xr, yr, iris * 0.45, iris * 0.45), Ellipse(xl, yl, iris * 0.45, iris * 0.45)))
    layers = {
        "eye_whites": Layer("eye_whites", Z["eye_whites"], g.head, whites, EYE_WHITE),
        "irises": Layer("irises", Z["irises"], g.head, irises, identity.eye_colour),
        "pupils": Layer("pupils", Z["pupils"], g.head, pupils, (14, 12, 16)),
    }
    if identity.gender == "woman":
        lids = Union(tuple(
            Stroke(((x - s * half_w, y), (x - s * 0.05, y - half_h), (x + s * half_w * 1.1, y - half_h * 0.8), (x + s * (half_w + 0.07), y - half_h * 1.5)), 0.035)
            for (x, y), s in (((xr, yr), -1.0), ((xl, yl), 1.0))
        ))  # fmt: skip
        layers["lids"] = Layer("lids", Z["lids"], g.head, lids, DARK_LINE)
    return layers


def brows(
    g: Geometry, inner: tuple[float, float], middle: float, outer: float, width: float, colour: Color
) -> Layer:
    """Both eyebrows from (inner u, inner v) through v=`middle` to v=`outer`, mirrored."""
    (xr, _), (xl, _) = g.eyes
    iu, iv = inner
    parts = tuple(
        Stroke(((x + s * iu, iv), (x + s * 0.02, middle), (x - s * 0.18, outer)), width)
        for x, s in ((xr, 1.0), (xl, -1.0))
    )  # fmt: skip
    return Layer("brows", Z["brows"], g.head, Union(parts), colour)


def portrait_layers(identity: Identity, pose: Pose, size: int) -> dict[str, Layer]:
    """Name -> layer of the neutral portrait in normal clothes."""
    g = geometry(identity, pose, size)
    skin = g.skin
    background = Gradient(identity.background_top, identity.background_bottom, 0.0, 1.0)
    layers = {
        "background": Layer("background", Z["background"], g.image, Box(0.5, 0.5, 0.5, 0.5), background),
        "neck": Layer("neck", Z["neck"], g.body, Box(0.0, -0.6, 0.36 if identity.gender == "man" else 0.3, 0.8), scale_colour(skin, 0.9)),
        "ears": Layer("ears", Z["ears"], g.head, Union((Ellipse(-0.92, 0.05, 0.14, 0.22), Ellipse(0.92, 0.05, 0.14, 0.22))), scale_colour(skin, 0.93)),
        "face": Layer("face", Z["face"], g.head, g.face, skin),
        "nose": Layer("nose", Z["nose"], g.head, Stroke(((0.02, 0.08), (0.06, 0.3), (-0.04, 0.33)), 0.035), scale_colour(skin, 0.78)),
    }  # fmt: skip
    layers.update(_hair_layers(identity, g))
    layers.update(clothes_layers(identity, g))
    layers.update(eye_layers(identity, g))
    layers["brows"] = brows(
        g, (0.17, -0.27), -0.33, -0.31, 0.055 if identity.gender == "woman" else 0.07, g.brow_colour
    )
    if identity.gender == "woman":
        mouth = Ellipse(0.0, 0.6, 0.19, 0.075)
        layers["mouth"] = Layer("mouth", Z["mouth"], g.head, mouth, mix(skin, (200, 40, 70), 0.6))
    else:
        mouth = Stroke(((-0.2, 0.57), (0.0, 0.61), (0.2, 0.57)), 0.04)
        layers["mouth"] = Layer("mouth", Z["mouth"], g.head, mouth, mix(skin, (90, 30, 30), 0.65))
    if identity.beard != "none":
        lower = Intersection(
            Ellipse(0.0, 0.02, g.face.rx + 0.02, g.face.ry + 0.04, g.face.power, g.face.taper),
            Box(0, 0.9, 1.2, 0.45),
        )
        goatee = Union(
            (Ellipse(0.0, 0.86, 0.24, 0.2), Stroke(((-0.22, 0.5), (0.0, 0.46), (0.22, 0.5)), 0.06))
        )
        shape = Union((lower, goatee)) if identity.beard == "full" else goatee
        layers["beard"] = Layer("beard", Z["beard"], g.head, shape, scale_colour(identity.hair_colour, 0.9))
    if identity.glasses != "none":
        layers["glasses"] = Layer(
            "glasses", Z["glasses"], g.head, _glasses(identity.glasses, g), (30, 28, 32)
        )
    return layers


def _glasses(kind: str, g: Geometry):
    (xr, yr), (xl, yl) = g.eyes
    parts: list = []
    for x, y in ((xr, yr), (xl, yl)):
        if kind == "round":
            parts.append(Difference(Ellipse(x, y, 0.23, 0.21), Ellipse(x, y, 0.185, 0.17)))
        else:
            parts.append(Difference(Box(x, y, 0.24, 0.17, 0.04), Box(x, y, 0.2, 0.13, 0.02)))
    parts.append(Stroke(((xr + 0.2, yr - 0.03), (xl - 0.2, yl - 0.03)), 0.03))
    parts.append(Stroke(((xr - 0.22, yr - 0.02), (-0.9, 0.0)), 0.03))
    parts.append(Stroke(((xl + 0.22, yl - 0.02), (0.9, 0.0)), 0.03))
    return Union(tuple(parts))
