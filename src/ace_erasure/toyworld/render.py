"""Deterministic renderer of ToyWorld scenes (numpy + PIL).

A :class:`Scene` is the ground truth of one image: an object (shape, colour, optional style), a
character's face emblem, the hazard mark, a shapeless blob (a negative for the judge) or an empty
background. :func:`render` draws it at 4x the output size and downsamples with Lanczos, so edges
are anti-aliased; all randomness (position, size, rotation, colour jitter) comes from the
``numpy.random.Generator`` it is given, so the same seed gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from ace_erasure.toyworld.vocab import CharacterLook, Vocabulary, vocabulary

SceneKind = Literal["object", "character", "hazard", "blob", "blank"]
SUPERSAMPLE = 4
HAZARD_YELLOW = (245, 200, 20)
INK = (20, 20, 20)


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image. Unused fields are None.

    ``style`` is an artist name from the vocabulary (None = plain rendering); it applies to
    objects and blobs.
    """

    kind: SceneKind
    shape: str | None = None
    colour: str | None = None
    style: str | None = None
    character: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "object" and (self.shape is None or self.colour is None):
            raise ValueError("an object scene needs a shape and a colour")
        if self.kind == "blob" and self.colour is None:
            raise ValueError("a blob scene needs a colour")
        if self.kind == "character" and self.character is None:
            raise ValueError("a character scene needs a character")


def _regular_polygon(
    cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None
) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon (or an n-pointed star when ``inner`` is the inner radius)."""
    count = 2 * n if inner else n
    points = []
    for i in range(count):
        radius = r * (inner if inner and i % 2 else 1.0)
        angle = rot + 2 * math.pi * i / count - math.pi / 2
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _rotate(
    points: list[tuple[float, float]], cx: float, cy: float, rot: float
) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def shape_mask(shape: str, canvas: int, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    """An 'L' mask (255 inside) of a shape of radius ``r`` centred at (cx, cy), rotated by rot."""
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        draw.polygon(_regular_polygon(cx, cy, r * 1.1, 4, rot + math.pi / 4), fill=255)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy + r * 0.15, r * 1.15, 3, rot), fill=255)
    elif shape == "star":
        draw.polygon(_regular_polygon(cx, cy, r * 1.15, 5, rot, inner=0.45), fill=255)
    elif shape == "cross":
        w = r * 0.36
        arms = [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
        draw.polygon(_rotate(arms, cx, cy, rot), fill=255)
    elif shape == "heart":
        lobe = r * 0.52
        top = cy - r * 0.75
        draw.ellipse([cx - 2 * lobe, top, cx, top + 2 * lobe], fill=255)
        draw.ellipse([cx, top, cx + 2 * lobe, top + 2 * lobe], fill=255)
        tip = [
            (cx - 1.95 * lobe, top + lobe * 1.25),
            (cx + 1.95 * lobe, top + lobe * 1.25),
            (cx, cy + r),
        ]
        draw.polygon(tip, fill=255)
    elif shape == "diamond":
        rhombus = [(cx, cy - r * 1.1), (cx + r * 0.62, cy), (cx, cy + r * 1.1), (cx - r * 0.62, cy)]
        draw.polygon(_rotate(rhombus, cx, cy, rot), fill=255)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r * 1.05, 6, rot + math.pi / 6), fill=255)
    elif shape == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + r * 0.5 * math.cos(rot), cy - r * 0.2 + r * 0.5 * math.sin(rot)
        bite = r * 0.85
        draw.ellipse([ox - bite, oy - bite, ox + bite, oy + bite], fill=0)
    elif shape == "arrow":
        shaft, head_len, head_w = r * 0.22, r * 0.8, r * 0.75
        outline = [
            (cx - r, cy - shaft),
            (cx + r - head_len, cy - shaft),
            (cx + r - head_len, cy - head_w),
            (cx + r, cy),
            (cx + r - head_len, cy + head_w),
            (cx + r - head_len, cy + shaft),
            (cx - r, cy + shaft),
        ]
        draw.polygon(_rotate(outline, cx, cy, rot), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def blob_mask(canvas: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> Image.Image:
    """A random smooth irregular blob: no shape of the vocabulary (the judge's "none")."""
    amplitudes = rng.uniform(0.0, 0.22, size=4)
    amplitudes *= max(1.0, 0.35 / amplitudes.sum())  # never close to a circle
    phases = rng.uniform(0, 2 * math.pi, size=4)
    points = []
    for i in range(72):
        theta = 2 * math.pi * i / 72
        wobble = sum(
            a * math.cos((k + 2) * theta + p) for k, (a, p) in enumerate(zip(amplitudes, phases))
        )
        radius = r * (1 + wobble)
        points.append((cx + radius * math.cos(theta), cy + radius * math.sin(theta)))
    mask = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return mask


def _jittered(
    rgb: tuple[int, int, int], rng: np.random.Generator, sigma: float = 12.0
) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.normal(0, sigma), 0, 255)) for c in rgb)
    return (r, g, b)


def _background(canvas: int, rendering: str | None, rng: np.random.Generator) -> Image.Image:
    if rendering == "checkered":
        cell = canvas // 4
        offset = int(rng.integers(0, cell))
        light, dark = int(rng.integers(232, 250)), int(rng.integers(170, 190))
        yy, xx = np.mgrid[0:canvas, 0:canvas]
        board = (((xx + offset) // cell + (yy + offset) // cell) % 2).astype(bool)
        pixels = np.where(board, dark, light).astype(np.uint8)
        return Image.fromarray(np.stack([pixels] * 3, axis=-1), "RGB")
    base = tuple(int(255 - rng.random() * 25) for _ in range(3))
    return Image.new("RGB", (canvas, canvas), base)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary-ish erosion by a (2r+1) square: separable running minimum (fast on small canvases)."""
    out = mask
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        length = out.shape[axis]
        out = np.min(
            np.stack(
                [np.take(padded, range(k, k + length), axis=axis) for k in range(2 * radius + 1)]
            ),
            axis=0,
        )
    return out


def _tint(colour: tuple[int, int, int], amount: float) -> np.ndarray:
    """``colour`` moved ``amount`` of the way towards white."""
    return np.array(colour) + amount * (248 - np.array(colour))


def _fill(
    canvas: int,
    mask: Image.Image,
    colour: tuple[int, int, int],
    rendering: str | None,
    rng: np.random.Generator,
) -> tuple[Image.Image, Image.Image]:
    """The layer to paste for a filled region and the mask to paste it through."""
    if rendering == "outline":
        m = np.asarray(mask)
        ring = m.astype(np.int16) - _erode(m, int(canvas * 0.085)).astype(np.int16)
        through = Image.fromarray(np.clip(ring, 0, 255).astype(np.uint8), "L")
        return Image.new("RGB", (canvas, canvas), colour), through
    if rendering in ("stripes", "dotted"):
        # Pattern in a light tint of the colour (not white), so the silhouette stays legible.
        yy, xx = np.mgrid[0:canvas, 0:canvas]
        if rendering == "stripes":
            half = canvas // 10
            on = ((xx + yy + int(rng.integers(0, 2 * half))) // half) % 2 == 0
        else:
            spacing = canvas // 5
            ox, oy = (int(v) for v in rng.integers(0, spacing, size=2))
            dx = (xx + ox) % spacing - spacing / 2
            dy = (yy + oy) % spacing - spacing / 2
            on = dx**2 + dy**2 > (canvas * 0.05) ** 2
        pixels = np.where(on[..., None], np.array(colour), _tint(colour, 0.75))
        return Image.fromarray(pixels.astype(np.uint8), "RGB"), mask
    return Image.new("RGB", (canvas, canvas), colour), mask


def _draw_region(
    image: Image.Image,
    mask: Image.Image,
    colour: tuple[int, int, int],
    rendering: str | None,
    rng: np.random.Generator,
) -> None:
    canvas = image.size[0]
    if rendering == "shadow":
        shift = int(canvas * 0.09)
        shadow = Image.new("L", (canvas, canvas), 0)
        shadow.paste(mask, (shift, shift))
        image.paste((95, 95, 100), (0, 0), shadow)
    layer, through = _fill(canvas, mask, colour, rendering, rng)
    image.paste(layer, (0, 0), through)
    if rendering == "framed":
        width = int(canvas * 0.09)
        ImageDraw.Draw(image).rectangle(
            [0, 0, canvas - 1, canvas - 1], outline=(30, 30, 30), width=width
        )


def _draw_character(image: Image.Image, look: CharacterLook, rng: np.random.Generator) -> None:
    canvas = image.size[0]
    draw = ImageDraw.Draw(image)
    r = canvas * (0.27 + 0.05 * rng.random())
    cx = canvas / 2 + (rng.random() - 0.5) * canvas * 0.12
    cy = canvas * 0.56 + (rng.random() - 0.5) * canvas * 0.08
    head, acc = _jittered(look.head_rgb, rng, 8), _jittered(look.accessory_rgb, rng, 8)
    line = max(2, int(r * 0.09))

    if look.accessory == "ears":
        for side in (-1, 1):
            ex, ey, er = cx + side * 0.78 * r, cy - 0.78 * r, 0.32 * r
            draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=acc)
    if look.accessory == "horns":
        for side in (-1, 1):
            base = cx + side * 0.55 * r
            draw.polygon(
                [
                    (base - 0.2 * r, cy - 0.7 * r),
                    (base + 0.2 * r, cy - 0.7 * r),
                    (base + side * 0.3 * r, cy - 1.35 * r),
                ],
                fill=acc,
            )

    rx, ry = {"tall_oval": (0.75 * r, r), "wide_oval": (r, 0.78 * r)}.get(look.head_shape, (r, r))
    if look.head_shape == "square":
        draw.rounded_rectangle(
            [cx - 0.92 * r, cy - 0.92 * r, cx + 0.92 * r, cy + 0.92 * r], radius=0.18 * r, fill=head
        )
    else:
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=head)

    if look.accessory == "beard":
        draw.chord([cx - rx, cy - ry * 0.4, cx + rx, cy + ry * 1.05], 0, 180, fill=acc)

    eye_y, eye_dx = cy - 0.18 * ry, 0.4 * rx
    for side in (-1, 1):
        ex = cx + side * eye_dx
        if look.eyes == "dots":
            er = 0.12 * r
            draw.ellipse([ex - er, eye_y - er, ex + er, eye_y + er], fill=INK)
        elif look.eyes == "lines":
            draw.line([ex - 0.18 * r, eye_y, ex + 0.18 * r, eye_y], fill=INK, width=line)
        elif look.eyes == "glasses":
            er = 0.22 * r
            draw.ellipse([ex - er, eye_y - er, ex + er, eye_y + er], outline=INK, width=line)
        elif look.eyes == "big":
            er, pr = 0.22 * r, 0.11 * r
            draw.ellipse([ex - er, eye_y - er, ex + er, eye_y + er], fill=(250, 250, 250))
            draw.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=INK)
    if look.eyes == "glasses":
        draw.line(
            [cx - eye_dx + 0.22 * r, eye_y, cx + eye_dx - 0.22 * r, eye_y], fill=INK, width=line
        )

    my, mw = cy + 0.42 * ry, 0.38 * rx
    if look.mouth == "smile":
        draw.arc([cx - mw, my - 0.35 * r, cx + mw, my + 0.12 * r], 20, 160, fill=INK, width=line)
    elif look.mouth == "frown":
        draw.arc([cx - mw, my - 0.05 * r, cx + mw, my + 0.4 * r], 200, 340, fill=INK, width=line)
    elif look.mouth == "flat":
        draw.line([cx - mw, my, cx + mw, my], fill=INK, width=line)
    elif look.mouth == "open":
        draw.ellipse([cx - 0.17 * r, my - 0.14 * r, cx + 0.17 * r, my + 0.14 * r], fill=INK)

    top = cy - ry
    if look.accessory == "beret":
        draw.ellipse([cx - 0.95 * r, top - 0.3 * r, cx + 0.6 * r, top + 0.25 * r], fill=acc)
    elif look.accessory == "bowtie":
        by = cy + ry + 0.12 * r
        draw.polygon(
            [(cx, by), (cx - 0.5 * r, by - 0.25 * r), (cx - 0.5 * r, by + 0.25 * r)], fill=acc
        )
        draw.polygon(
            [(cx, by), (cx + 0.5 * r, by - 0.25 * r), (cx + 0.5 * r, by + 0.25 * r)], fill=acc
        )
    elif look.accessory == "crown":
        base, height, half = top + 0.15 * r, 0.5 * r, 0.65 * r
        points = [(cx - half, base)]
        for i in range(5):
            x = cx - half + i * half / 2
            points.append((x, base - height if i % 2 == 0 else base - 0.45 * height))
        points.append((cx + half, base))
        draw.polygon(points, fill=acc)
    elif look.accessory == "antenna":
        draw.line([cx, top, cx, top - 0.5 * r], fill=acc, width=line)
        br = 0.17 * r
        draw.ellipse([cx - br, top - 0.5 * r - br, cx + br, top - 0.5 * r + br], fill=acc)
    elif look.accessory == "halo":
        hy = top - 0.22 * r
        draw.ellipse(
            [cx - 0.6 * r, hy - 0.17 * r, cx + 0.6 * r, hy + 0.17 * r], outline=acc, width=line
        )
    elif look.accessory == "top_hat":
        draw.rectangle([cx - 0.75 * r, top - 0.02 * r, cx + 0.75 * r, top + 0.12 * r], fill=acc)
        draw.rectangle([cx - 0.45 * r, top - 0.7 * r, cx + 0.45 * r, top + 0.05 * r], fill=acc)
    elif look.accessory == "mohawk":
        spikes = [(cx - 0.35 * r, top + 0.15 * r)]
        for i in range(4):
            x = cx - 0.35 * r + (i + 0.5) * 0.175 * r
            spikes += [(x, top - 0.45 * r), (x + 0.0875 * r, top + 0.05 * r)]
        spikes.append((cx + 0.35 * r, top + 0.15 * r))
        draw.polygon(spikes, fill=acc)


def _draw_hazard(image: Image.Image, rng: np.random.Generator) -> None:
    canvas = image.size[0]
    draw = ImageDraw.Draw(image)
    r = canvas * (0.3 + 0.08 * rng.random())
    cx = canvas / 2 + (rng.random() - 0.5) * (canvas - 2 * r) * 0.8
    cy = canvas / 2 + (rng.random() - 0.5) * (canvas - 2 * r) * 0.8
    rot = math.degrees((rng.random() - 0.5) * 0.6)
    yellow = _jittered(HAZARD_YELLOW, rng, 8)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=yellow)
    blade = 0.88 * r
    for k in range(3):
        start = rot - 90 - 30 + 120 * k
        draw.pieslice([cx - blade, cy - blade, cx + blade, cy + blade], start, start + 60, fill=INK)
    hub = 0.3 * r
    draw.ellipse([cx - hub, cy - hub, cx + hub, cy + hub], fill=yellow)
    dot = 0.17 * r
    draw.ellipse([cx - dot, cy - dot, cx + dot, cy + dot], fill=INK)


def render(
    scene: Scene, rng: np.random.Generator, size: int = 32, vocab: Vocabulary | None = None
) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image; randomness comes only from ``rng``."""
    vocab = vocab or vocabulary()
    canvas = size * SUPERSAMPLE
    rendering = vocab.styles[scene.style] if scene.style else None
    image = _background(canvas, rendering, rng)
    if scene.kind in ("object", "blob"):
        assert scene.colour is not None
        r = canvas * (0.24 + 0.12 * rng.random())
        cx = canvas / 2 + (rng.random() - 0.5) * (canvas - 2 * r) * 0.7
        cy = canvas / 2 + (rng.random() - 0.5) * (canvas - 2 * r) * 0.7
        rot = (rng.random() - 0.5) * 0.5  # +-14 degrees
        if scene.kind == "object":
            assert scene.shape is not None
            mask = shape_mask(scene.shape, canvas, cx, cy, r, rot)
        else:
            mask = blob_mask(canvas, cx, cy, r, rng)
        _draw_region(image, mask, _jittered(vocab.colours[scene.colour], rng), rendering, rng)
    elif scene.kind == "character":
        assert scene.character is not None
        _draw_character(image, vocab.characters[scene.character], rng)
    elif scene.kind == "hazard":
        _draw_hazard(image, rng)
    elif rendering == "framed":
        _draw_region(image, Image.new("L", (canvas, canvas), 0), (0, 0, 0), rendering, rng)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def render_batch(scenes: list[Scene], seed: int, size: int = 32) -> list[Image.Image]:
    """Render scenes with one generator seeded by ``seed`` (same seed, same pixels)."""
    rng = np.random.default_rng(seed)
    return [render(scene, rng, size) for scene in scenes]
