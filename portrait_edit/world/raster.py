"""Supersampled, layer-aware rasteriser of the portrait world.

A picture is an ordered list of opaque `Layer`s (shape + paint in a local `Frame`). Each layer is
evaluated as an inside/outside test on a k x k supersampled grid (sub-sample centres), painted over the
layers below it (painter's algorithm), and the k x k blocks are box-averaged and rounded with integer
arithmetic. Because every step is a pure function of the layer list, the same layers give the same bytes.

The rasteriser also returns, per sub-sample, the index of the topmost layer covering it. `edit_region`
uses that to find the pixels whose visible layers differ between two layer lists: a pixel outside that
region has, in every sub-sample, the same topmost layer with the same paint in both pictures, hence the
same colour: it is bit-identical by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Color = tuple[int, int, int]
Bounds = tuple[float, float, float, float]  # u0, v0, u1, v1 in local units


@dataclass(frozen=True)
class Frame:
    """Local -> pixel transform: p = (cx, cy) + scale * R(tilt) @ (u, v); tilt in degrees, y down."""

    cx: float
    cy: float
    scale: float
    tilt: float = 0.0

    def to_pixel(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple:
        c, s = math.cos(math.radians(self.tilt)), math.sin(math.radians(self.tilt))
        return self.cx + self.scale * (c * u - s * v), self.cy + self.scale * (s * u + c * v)

    def to_local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = (x - self.cx) / self.scale, (y - self.cy) / self.scale
        if self.tilt == 0.0:  # keep (1, w) / (h, 1) shapes: paints that depend on v alone stay cheap
            return dx, dy
        c, s = math.cos(math.radians(self.tilt)), math.sin(math.radians(self.tilt))
        return c * dx + s * dy, -s * dx + c * dy


# ---- shapes: inside tests in local coordinates ------------------------------------------------------


class Shape(Protocol):
    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Broadcast (u, v) local coordinates -> bool, True strictly inside."""

    def bounds(self) -> Bounds:
        """Conservative local bounding box."""


@dataclass(frozen=True)
class Ellipse:
    """Super-ellipse |u'/rx(v)|^p + |v'/ry|^p < 1, rotated by `angle` degrees.

    `taper` narrows the lower half (rx(v) = rx * (1 - taper * v'/ry) for v' > 0): a chin or a drop.
    """

    cx: float
    cy: float
    rx: float
    ry: float
    power: float = 2.0
    taper: float = 0.0
    angle: float = 0.0

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du, dv = u - self.cx, v - self.cy
        if self.angle:
            c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
            du, dv = c * du + s * dv, -s * du + c * dv
        rx = self.rx * (1.0 - self.taper * np.clip(dv / self.ry, 0.0, 1.0)) if self.taper else self.rx
        if self.power == 2.0:
            return (du / rx) ** 2 + (dv / self.ry) ** 2 < 1.0
        return np.abs(du / rx) ** self.power + np.abs(dv / self.ry) ** self.power < 1.0

    def bounds(self) -> Bounds:
        rx = self.rx * max(1.0, 1.0 - self.taper)  # a negative taper widens the lower half
        ry = self.ry
        if self.angle:
            rx = ry = max(rx, ry)
        return self.cx - rx, self.cy - ry, self.cx + rx, self.cy + ry


@dataclass(frozen=True)
class Box:
    """Axis-aligned box of half sizes (hw, hh) with corner radius `radius` (local units)."""

    cx: float
    cy: float
    hw: float
    hh: float
    radius: float = 0.0

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        r = min(self.radius, self.hw, self.hh)
        qx = np.abs(u - self.cx) - (self.hw - r)
        qy = np.abs(v - self.cy) - (self.hh - r)
        if r == 0.0:
            return (qx < 0) & (qy < 0)
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        return outside + np.minimum(np.maximum(qx, qy), 0.0) < r

    def bounds(self) -> Bounds:
        return self.cx - self.hw, self.cy - self.hh, self.cx + self.hw, self.cy + self.hh


@dataclass(frozen=True)
class Stroke:
    """Polyline of half-width `width` with round caps (a chain of capsules)."""

    points: tuple[tuple[float, float], ...]
    width: float

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        best = np.full(np.broadcast(u, v).shape, np.inf)
        for (ax, ay), (bx, by) in zip(self.points[:-1], self.points[1:]):
            ex, ey = bx - ax, by - ay
            t = np.clip(((u - ax) * ex + (v - ay) * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
            best = np.minimum(best, (u - ax - t * ex) ** 2 + (v - ay - t * ey) ** 2)
        return best < self.width**2

    def bounds(self) -> Bounds:
        us, vs = zip(*self.points)
        w = self.width
        return min(us) - w, min(vs) - w, max(us) + w, max(vs) + w


@dataclass(frozen=True)
class Polygon:
    """Simple polygon (even-odd rule), vertices in order."""

    points: tuple[tuple[float, float], ...]

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        result = np.zeros(np.broadcast(u, v).shape, dtype=bool)
        pts = self.points
        for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1]):
            if ay == by:
                continue
            crosses = (ay > v) != (by > v)
            x_at = ax + (v - ay) * (bx - ax) / (by - ay)
            result ^= crosses & (u < x_at)
        return result

    def bounds(self) -> Bounds:
        us, vs = zip(*self.points)
        return min(us), min(vs), max(us), max(vs)


@dataclass(frozen=True)
class Union:
    parts: tuple[Shape, ...]

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = self.parts[0].inside(u, v)
        for part in self.parts[1:]:
            out = out | part.inside(u, v)
        return out

    def bounds(self) -> Bounds:
        b = np.array([p.bounds() for p in self.parts])
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


@dataclass(frozen=True)
class Difference:
    """Inside `keep` and not inside `cut`."""

    keep: Shape
    cut: Shape

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.keep.inside(u, v) & ~self.cut.inside(u, v)

    def bounds(self) -> Bounds:
        return self.keep.bounds()


@dataclass(frozen=True)
class Intersection:
    a: Shape
    b: Shape

    def inside(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.a.inside(u, v) & self.b.inside(u, v)

    def bounds(self) -> Bounds:
        a, b = self.a.bounds(), self.b.bounds()
        return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


# ---- paints -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gradient:
    """Vertical colour ramp from `top` at local v0 to `bottom` at local v1 (clamped outside)."""

    top: Color
    bottom: Color
    v0: float
    v1: float

    def colors(self, v: np.ndarray) -> np.ndarray:
        """v (...) local -> (..., 3) uint8, rounded half up so the result is exact and repeatable."""
        t = np.clip((v - self.v0) / (self.v1 - self.v0), 0.0, 1.0)[..., None]
        mixed = np.asarray(self.top, np.float64) * (1.0 - t) + np.asarray(self.bottom, np.float64) * t
        return np.floor(mixed + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Layer:
    """One opaque layer; two layers are the same layer iff all fields are equal (dataclass eq)."""

    name: str
    z: float
    frame: Frame
    shape: Shape
    paint: Color | Gradient


def _pixel_box(layer: Layer, height: int, width: int) -> tuple[int, int, int, int] | None:
    """Conservative integer pixel bounds (y0, y1, x0, x1) of a layer, clipped to the image."""
    u0, v0, u1, v1 = layer.shape.bounds()
    xs, ys = layer.frame.to_pixel(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
    x0, x1 = max(int(math.floor(xs.min())), 0), min(int(math.ceil(xs.max())) + 1, width)
    y0, y1 = max(int(math.floor(ys.min())), 0), min(int(math.ceil(ys.max())) + 1, height)
    return (y0, y1, x0, x1) if x0 < x1 and y0 < y1 else None


def rasterize(layers: list[Layer], height: int, width: int, ss: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Paint `layers` in list order (later = on top) with ss x ss supersampling.

    Returns:
        image: uint8 (height, width, 3), each pixel the rounded mean of its ss*ss sub-sample colours.
        top: int16 (height*ss, width*ss), index into `layers` of the topmost layer covering each
            sub-sample (-1 where none does).
    """
    colors = np.zeros((height * ss, width * ss, 3), np.uint8)
    top = np.full((height * ss, width * ss), -1, np.int16)
    offsets = (np.arange(ss) + 0.5) / ss
    for index, layer in enumerate(layers):
        box = _pixel_box(layer, height, width)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        xs = (np.arange(x0, x1)[:, None] + offsets).reshape(1, -1)
        ys = (np.arange(y0, y1)[:, None] + offsets).reshape(-1, 1)
        u, v = layer.frame.to_local(xs, ys)
        hit = layer.shape.inside(u, v)
        if not hit.any():
            continue
        window = (slice(y0 * ss, y1 * ss), slice(x0 * ss, x1 * ss))
        hit = np.broadcast_to(hit, (u + v).shape)
        paint = layer.paint
        if isinstance(paint, Gradient):
            paint = np.broadcast_to(paint.colors(v), hit.shape + (3,))
        if hit.all():  # full windows (the background) skip the slower masked assignment
            colors[window] = paint
            top[window] = index
            continue
        colors[window][hit] = paint[hit] if isinstance(paint, np.ndarray) else paint
        top[window][hit] = index
    blocks = colors.reshape(height, ss, width, ss, 3).sum(axis=(1, 3), dtype=np.uint32)
    n = ss * ss
    return ((blocks + n // 2) // n).astype(np.uint8), top


def edit_region(
    src: list[Layer], tgt: list[Layer], height: int, width: int, ss: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render two layer lists and the region where they differ.

    A layer is *differing* when no equal layer exists in the other list (removed, added or changed).
    A pixel is in the region when any of its sub-samples shows (is topmost-covered by) a differing
    layer in `src` or in `tgt`. Outside the region each sub-sample shows the same shared layer in both
    pictures, so pixels there are bit-identical. Inside, a pixel can still be equal when its differing
    sub-samples are few enough to vanish in the rounding (anti-aliased borders) or when the new layer
    has the colour of what it replaces.

    Returns:
        src_image, tgt_image: uint8 (height, width, 3); region: bool (height, width).
    """
    shared = set(src) & set(tgt)
    order_src = [layer for layer in src if layer in shared]
    order_tgt = [layer for layer in tgt if layer in shared]
    # Shared layers must stack in the same order, else an unchanged pixel could change.
    assert order_src == order_tgt, "shared layers are stacked differently"
    src_image, src_top = rasterize(src, height, width, ss)
    tgt_image, tgt_top = rasterize(tgt, height, width, ss)
    # Index -1 (nothing drawn) maps to the last entry: False, a shared empty background.
    src_diff = np.array([layer not in shared for layer in src] + [False])
    tgt_diff = np.array([layer not in shared for layer in tgt] + [False])
    touched = src_diff[src_top] | tgt_diff[tgt_top]
    region = touched.reshape(height, ss, width, ss).any(axis=(1, 3))
    return src_image, tgt_image, region
