"""Image grids with row labels and per-tile captions (PIL only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def make_grid(rows: Sequence[Sequence[np.ndarray]], *, row_labels: Sequence[str] | None = None,
              captions: Sequence[Sequence[str]] | None = None, scale: int = 2, gap: int = 4,
              title: str | None = None, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Lays out uint8 (H, W, 3) tiles in rows; every tile is upscaled `scale` times (nearest neighbour).

    Args:
        rows: Tiles, row by row; rows may differ in length. Tiles of one grid should share a size.
        row_labels: A label left of each row.
        captions: A caption under each tile.
        scale: Upscaling factor of every tile.
        gap: Pixels between tiles.
        title: A line above the grid.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("make_grid needs at least one tile")
    tile_h = max(np.asarray(t).shape[0] for r in rows for t in r) * scale
    tile_w = max(np.asarray(t).shape[1] for r in rows for t in r) * scale
    font_size = max(10, min(16, tile_w // 8))
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(s: str) -> int:
        box = measure.textbbox((0, 0), s, font=font)
        return box[2] - box[0]

    label_w = (max(text_w(s) for s in row_labels) + 2 * gap) if row_labels else 0
    caption_h = (font_size + gap) if captions else 0
    title_h = (font_size + 2 * gap) if title else 0
    columns = max(len(r) for r in rows)
    width = label_w + columns * (tile_w + gap) + gap
    height = title_h + len(rows) * (tile_h + caption_h + gap) + gap
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), title, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = title_h + gap + i * (tile_h + caption_h + gap)
        if row_labels:
            draw.text((gap, y + tile_h // 2 - font_size // 2), row_labels[i], fill=(0, 0, 0), font=font)
        for j, tile in enumerate(row):
            x = label_w + gap + j * (tile_w + gap)
            pil = Image.fromarray(np.asarray(tile, dtype=np.uint8))
            if scale != 1:
                pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
            canvas.paste(pil, (x, y))
            if captions and j < len(captions[i]):
                text = captions[i][j]
                draw.text((x + max(0, (tile_w - text_w(text)) // 2), y + tile_h + 1), text, fill=(40, 40, 40),
                          font=font)
    return canvas
