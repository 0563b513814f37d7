"""Labelled image grids that a person can read: tiles upscaled to a readable size, the
prompt on every row or column, a label per row."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def upscaled(image: Image.Image, min_side: int) -> Image.Image:
    """``image`` enlarged by an integer factor to at least ``min_side`` pixels (nearest
    neighbour, so a 32-px ToyWorld image keeps its pixels sharp); larger images unchanged."""
    factor = max(1, -(-min_side // min(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    *,
    column_labels: Sequence[str] = (),
    min_tile: int = 128,
    label_width: int = 220,
    font_size: int = 14,
) -> Image.Image:
    """A grid with one row per ``rows[i]`` (its label, wrapped, on the left) and optional
    column headers; tiles are upscaled to at least ``min_tile`` pixels."""
    if not rows or not rows[0]:
        raise ValueError("a grid needs at least one image")
    if len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} labels for {len(rows)} rows")
    tiles = [[upscaled(image.convert("RGB"), min_tile) for image in row] for row in rows]
    tile_w = max(t.width for row in tiles for t in row)
    tile_h = max(t.height for row in tiles for t in row)
    columns = max(len(row) for row in tiles)
    font = _font(font_size)
    line = font_size + 4
    chars = max(8, label_width // max(1, font_size // 2 + 1))
    wrapped_rows = [textwrap.wrap(label, chars) or [""] for label in row_labels]
    header_chars = max(8, tile_w // max(1, font_size // 2 + 1))
    wrapped_columns = [textwrap.wrap(label, header_chars) for label in column_labels]
    header = (max((len(w) for w in wrapped_columns), default=0) * line + 8) if column_labels else 0
    pad = 6
    width = label_width + columns * (tile_w + pad) + pad
    height = header + len(tiles) * (tile_h + pad) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for j, lines in enumerate(wrapped_columns):
        x = label_width + pad + j * (tile_w + pad)
        for k, text in enumerate(lines):
            draw.text((x, 4 + k * line), text, fill=INK, font=font)
    for i, row in enumerate(tiles):
        y = header + pad + i * (tile_h + pad)
        lines = wrapped_rows[i]
        top = y + max(0, (tile_h - len(lines) * line) // 2)
        for k, text in enumerate(lines):
            draw.text((pad, top + k * line), text, fill=INK, font=font)
        for j, tile in enumerate(row):
            canvas.paste(tile, (label_width + pad + j * (tile_w + pad), y))
    return canvas
