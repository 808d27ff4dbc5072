"""The 8 edit directions: costume edits swap the clothes and add head wear, expression edits swap
the face features. Each edit is a pure function (layers of the neutral portrait) -> (edited layers):
it removes or replaces named layers and adds new ones, and leaves every other layer equal, so the
edit region is exactly where the removed, replaced and added layers show."""

from __future__ import annotations

from portrait_edit.tasks import task_for_direction
from portrait_edit.world.identity import Identity
from portrait_edit.world.portrait import (
    DARK_LINE,
    EYE_WHITE,
    Geometry,
    brows,
    eye_layers,
    ring_of_circles,
)
from portrait_edit.world.raster import Box, Difference, Ellipse, Intersection, Layer, Polygon, Stroke, Union

CLOTHES_LAYERS = ("clothes", "collar", "neckline", "clothes_detail")
OPEN_EYE_LAYERS = ("eye_whites", "irises", "pupils", "lids")
# Stacking heights of added layers (portrait.Z holds the base ones): costume above the old clothes
# details, head wear above hair and glasses, the santa beard above the mouth, tears above the eyes.
ZC = {"costume": 34, "headwear": 84, "headwear_top": 86, "santa_beard": 76, "tears": 68}

WHITE, RED, GOLD = (246, 246, 242), (204, 28, 40), (226, 178, 44)


def _layer(name: str, z: float, frame, shape, paint) -> tuple[str, Layer]:
    return name, Layer(name, z, frame, shape, paint)


def _swap_clothes(layers: dict[str, Layer], g: Geometry, colour) -> dict[str, Layer]:
    """Remove every source clothes layer and add a high-necked costume body: no skin-coloured
    neckline, so every pixel of the old clothes changes colour."""
    out = {k: v for k, v in layers.items() if k not in CLOTHES_LAYERS}
    out["clothes"] = Layer("costume_body", ZC["costume"] - 4, g.body, g.body_shape, colour)
    return out


def _flower(layers: dict[str, Layer], g: Geometry) -> dict[str, Layer]:
    out = _swap_clothes(layers, g, (238, 140, 184))
    spots = ((-1.45, 1.0), (-0.75, 1.55), (0.15, 1.1), (0.95, 1.6), (1.55, 0.95), (-1.6, 2.1), (0.5, 2.2))
    petals = []
    for x, y in spots:
        petals += [
            Ellipse(x + dx, y + dy, 0.13, 0.13)
            for dx, dy in ((0, -0.14), (0.13, -0.04), (0.08, 0.12), (-0.08, 0.12), (-0.13, -0.04))
        ]
    out.update([
        _layer("petals", ZC["costume"], g.body, Union(tuple(petals)), (252, 246, 250)),
        _layer("petal_centres", ZC["costume"] + 1, g.body, Union(tuple(Ellipse(x, y, 0.08, 0.08) for x, y in spots)), (250, 200, 40)),
    ])  # fmt: skip
    # Wreath: leaves along the hairline arc, flowers of four colours on top of them.
    rx, top = g.face.rx + 0.06, g.hair_top + 0.16
    ry = -top + 0.05
    leaves = Union(
        tuple(
            Ellipse(c.cx, c.cy, 0.2, 0.11, angle=a)
            for c, a in zip(ring_of_circles(0, 0.05, rx, ry, 0.1, 195, 345, 9), range(-60, 60, 14))
        )
    )
    flowers = ring_of_circles(0, 0.05, rx, ry, 0.15, 200, 340, 8)
    colours = ((232, 52, 84), (250, 214, 50), (250, 250, 250), (176, 96, 228))
    out["wreath_leaves"] = Layer("wreath_leaves", ZC["headwear"], g.head, leaves, (52, 150, 62))
    for i, colour in enumerate(colours):
        name = f"wreath_flowers_{i}"
        out[name] = Layer(name, ZC["headwear_top"], g.head, Union(flowers[i::4]), colour)
    return out


def _sheep(layers: dict[str, Layer], g: Geometry) -> dict[str, Layer]:
    out = {k: v for k, v in layers.items() if k not in CLOTHES_LAYERS}
    wool_top = ring_of_circles(0, 0.6, 2.0, 0.45, 0.32, 180, 360, 9)
    out["clothes"] = Layer("fleece", ZC["costume"] - 4, g.body, Union((g.body_shape, *wool_top)), WHITE)
    curls = tuple(
        Stroke(((x - 0.12, y), (x, y - 0.1), (x + 0.12, y)), 0.035)
        for x, y in ((-1.4, 1.2), (-0.6, 1.7), (0.3, 1.2), (1.2, 1.6), (-1.1, 2.3), (0.8, 2.4))
    )
    out["fleece_curls"] = Layer("fleece_curls", ZC["costume"], g.body, Union(curls), (206, 206, 200))
    rx, ry = g.face.rx, g.face.ry
    outer = Union(
        (
            Ellipse(0, -0.12, rx + 0.28, ry + 0.22 - min(g.hair_top + ry + 0.14, 0.0) * 0.5),
            *ring_of_circles(0, -0.12, rx + 0.28, ry + 0.16, 0.24, 150, 390, 12),
        )
    )
    opening = Ellipse(0.0, 0.1, rx * 0.9, ry * 0.84, g.face.power, g.face.taper)
    out["hood"] = Layer("hood", ZC["headwear"], g.head, Difference(outer, opening), WHITE)
    ears = Union(
        (Ellipse(-rx - 0.42, -0.3, 0.3, 0.12, angle=-25), Ellipse(rx + 0.42, -0.3, 0.3, 0.12, angle=25))
    )
    out["sheep_ears"] = Layer("sheep_ears", ZC["headwear"] - 1, g.head, ears, (96, 84, 80))
    return out


def _santa(layers: dict[str, Layer], g: Geometry) -> dict[str, Layer]:
    out = _swap_clothes(layers, g, RED)
    trim = Intersection(
        Union((Box(0, 1.6, 0.24, 1.6), Difference(Ellipse(0, 0.15, 0.62, 0.48), Ellipse(0, 0.1, 0.4, 0.3)))),
        g.body_shape,
    )
    out["suit_trim"] = Layer("suit_trim", ZC["costume"], g.body, trim, WHITE)
    base = g.hair_top + 0.42
    rx = g.face.rx + 0.16
    hat = Polygon(
        (
            (-rx, base),
            (rx, base),
            (0.7, base - 0.55),
            (1.2, base - 0.5),
            (0.25, base - 0.95),
            (-0.4, base - 0.75),
        )
    )
    out.update([
        _layer("santa_hat", ZC["headwear"], g.head, hat, RED),
        _layer("hat_trim", ZC["headwear_top"], g.head, Stroke(((-rx, base), (rx, base)), 0.16), WHITE),
        _layer("pompom", ZC["headwear_top"], g.head, Ellipse(1.22, base - 0.5, 0.19, 0.19), WHITE),
    ])  # fmt: skip
    fr = g.face
    beard = Union((
        Intersection(Ellipse(0, 0.3, fr.rx + 0.04, 0.85), Box(0, 0.75, 1.2, 0.37)),
        *ring_of_circles(0, 0.55, fr.rx * 0.8, 0.6, 0.2, 20, 160, 7),
        Stroke(((-0.3, 0.5), (-0.1, 0.42), (0.1, 0.42), (0.3, 0.5)), 0.09),
    ))  # fmt: skip
    out["santa_beard"] = Layer("santa_beard", ZC["santa_beard"], g.head, beard, WHITE)
    return out


def _royal(layers: dict[str, Layer], g: Geometry) -> dict[str, Layer]:
    out = _swap_clothes(layers, g, (222, 170, 40))
    collar = Intersection(Difference(Ellipse(0, 0.2, 1.35, 0.85), Ellipse(0, 0.1, 0.48, 0.38)), g.body_shape)
    out["robe_collar"] = Layer("robe_collar", ZC["costume"], g.body, collar, (150, 24, 44))
    dots = Union(ring_of_circles(0, 0.2, 0.92, 0.6, 0.09, 15, 165, 7))
    out["robe_embroidery"] = Layer("robe_embroidery", ZC["costume"] + 1, g.body, dots, (250, 214, 80))
    base = g.hair_top + 0.12
    spikes = [(-0.66, base)]
    for i in range(5):
        x = -0.66 + 0.33 * i
        spikes += [(x + 0.165, base - 0.5 - 0.08 * (i == 2)), (x + 0.33, base - 0.16)]
    spikes[-1] = (0.66, base)
    crown = Union((Box(0, base + 0.02, 0.66, 0.15, 0.03), Polygon(tuple(spikes))))
    out["crown"] = Layer("crown", ZC["headwear"], g.head, crown, GOLD)
    out["crown_jewels"] = Layer(
        "crown_jewels",
        ZC["headwear_top"],
        g.head,
        Union(tuple(Ellipse(x, base + 0.02, 0.08, 0.08) for x in (-0.4, 0.4))),
        (200, 20, 50),
    )
    out["crown_gem"] = Layer(
        "crown_gem", ZC["headwear_top"], g.head, Ellipse(0, base + 0.02, 0.1, 0.1), (40, 90, 220)
    )
    return out


def _angry(layers: dict[str, Layer], g: Geometry, identity: Identity) -> dict[str, Layer]:
    out = dict(layers)
    out["brows"] = brows(g, (0.2, -0.14), -0.26, -0.4, 0.08, DARK_LINE)
    frown = Stroke(((-0.26, 0.7), (-0.13, 0.6), (0.0, 0.57), (0.13, 0.6), (0.26, 0.7)), 0.05)
    out["mouth"] = Layer("mouth", 60, g.head, frown, (92, 24, 30))
    return out


def _shocked(layers: dict[str, Layer], g: Geometry, identity: Identity) -> dict[str, Layer]:
    out = dict(layers)
    out.update(eye_layers(identity, g, half_w=0.2, half_h=0.17))
    out["brows"] = brows(g, (0.17, -0.42), -0.52, -0.44, 0.05, g.brow_colour)
    out["mouth"] = Layer("mouth", 60, g.head, Ellipse(0.0, 0.64, 0.13, 0.18), (64, 16, 24))
    return out


def _laughing(layers: dict[str, Layer], g: Geometry, identity: Identity) -> dict[str, Layer]:
    out = {k: v for k, v in layers.items() if k not in OPEN_EYE_LAYERS}
    (xr, yr), (xl, yl) = g.eyes
    arcs = Union(
        tuple(
            Stroke(((x - 0.17, y + 0.04), (x, y - 0.08), (x + 0.17, y + 0.04)), 0.045)
            for x, y in ((xr, yr), (xl, yl))
        )
    )
    out["closed_eyes"] = Layer("closed_eyes", 62, g.head, arcs, DARK_LINE)
    out["brows"] = brows(g, (0.17, -0.36), -0.43, -0.38, 0.05, g.brow_colour)
    grin = Intersection(Ellipse(0.0, 0.46, 0.34, 0.36), Box(0.0, 0.7, 0.4, 0.24))
    out["mouth"] = Layer("mouth", 60, g.head, grin, (110, 20, 34))
    out["teeth"] = Layer("teeth", 61, g.head, Intersection(grin, Box(0.0, 0.5, 0.4, 0.1)), EYE_WHITE)
    out["tongue"] = Layer(
        "tongue", 61, g.head, Intersection(grin, Ellipse(0.0, 0.8, 0.17, 0.08)), (232, 104, 120)
    )
    return out


def _crying(layers: dict[str, Layer], g: Geometry, identity: Identity) -> dict[str, Layer]:
    out = dict(layers)
    out["brows"] = brows(g, (0.17, -0.42), -0.34, -0.24, 0.055, g.brow_colour)
    sad = Intersection(Ellipse(0.0, 0.72, 0.2, 0.13), Box(0.0, 0.64, 0.3, 0.08))
    out["mouth"] = Layer("mouth", 60, g.head, sad, (80, 22, 30))
    (xr, yr), (xl, yl) = g.eyes
    tears = Union(tuple(
        Union((Stroke(((x + d * 0.04, y + 0.08), (x + d * 0.06, y + 0.4)), 0.045), Ellipse(x + d * 0.07, y + 0.5, 0.08, 0.1, taper=-0.6)))
        for x, y, d in ((xr, yr, 1.0), (xl, yl, -1.0))
    ))  # fmt: skip
    out["tears"] = Layer("tears", ZC["tears"], g.head, tears, (64, 150, 244))
    return out


def apply_edit(
    layers: dict[str, Layer], g: Geometry, identity: Identity, direction: str | None
) -> dict[str, Layer]:
    """Layers of the portrait edited towards `direction` (None: unchanged)."""
    if direction is None:
        return dict(layers)
    task = task_for_direction(direction)
    if task == "costume":
        return {"flower": _flower, "sheep": _sheep, "santa": _santa, "royal": _royal}[direction](layers, g)
    return {"angry": _angry, "shocked": _shocked, "laughing": _laughing, "crying": _crying}[direction](
        layers, g, identity
    )
