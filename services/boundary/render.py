"""Pictures of the disentanglement study: labelled heatmaps as PNG (PIL), no matplotlib."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NEGATIVE, ZERO, POSITIVE = np.array([49, 54, 149]), np.array([247, 247, 247]), np.array([165, 0, 38])


def colour(value: float, vmin: float = -1.0, vmax: float = 1.0) -> tuple[int, int, int]:
    """Diverging blue-white-red colour of a value; white at 0 (NaN is grey)."""
    if not np.isfinite(value):
        return (200, 200, 200)
    if value >= 0:
        t = min(1.0, value / vmax) if vmax > 0 else 0.0
        rgb = ZERO + t * (POSITIVE - ZERO)
    else:
        t = min(1.0, value / vmin) if vmin < 0 else 0.0
        rgb = ZERO + t * (NEGATIVE - ZERO)
    return tuple(int(round(c)) for c in rgb)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def heatmap_png(matrix: np.ndarray, row_labels: list[str], col_labels: list[str], *, title: str = "",
                vmin: float = -1.0, vmax: float = 1.0, cell: int = 56, fmt: str = "{:+.2f}",
                colour_matrix: np.ndarray | None = None) -> bytes:
    """A labelled heatmap with the value printed in each cell.

    Args:
        matrix: (R, C) values printed in the cells.
        colour_matrix: values that pick the colours (default: matrix), e.g. a column-normalised copy.
    """
    matrix = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    colours = matrix if colour_matrix is None else np.atleast_2d(colour_matrix)
    rows, cols = matrix.shape
    font, small = _font(14), _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width_of = lambda text, f: probe.textbbox((0, 0), text, font=f)[2]  # noqa: E731
    left = 12 + max([width_of(r, font) for r in row_labels] + [0])
    top_label = 12 + max([width_of(c, font) for c in col_labels] + [0])
    top = top_label + (28 if title else 8)
    width = max(left + cols * cell + 12, (width_of(title, font) + 16) if title else 0)
    img = Image.new("RGB", (width, top + rows * cell + 12), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((8, 6), title, fill="black", font=font)
    for j, label in enumerate(col_labels):
        # Column labels are drawn rotated so long attribute names fit over narrow cells.
        w = width_of(label, font)
        text = Image.new("RGBA", (w + 4, 20), (255, 255, 255, 0))
        ImageDraw.Draw(text).text((2, 2), label, fill="black", font=font)
        text = text.rotate(90, expand=True)
        img.paste(text, (left + j * cell + cell // 2 - 10, top - 4 - text.height), text)
    for i, label in enumerate(row_labels):
        y = top + i * cell + cell // 2 - 8
        draw.text((left - 6 - width_of(label, font), y), label, fill="black", font=font)
        for j in range(cols):
            x0, y0 = left + j * cell, top + i * cell
            fill = colour(colours[i, j], vmin, vmax)
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=fill, outline=(255, 255, 255))
            value = fmt.format(matrix[i, j]) if np.isfinite(matrix[i, j]) else "n/a"
            ink = "white" if sum(fill) < 300 else "black"
            draw.text((x0 + (cell - width_of(value, small)) // 2, y0 + cell // 2 - 7), value, fill=ink, font=small)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def label_of(attribute: str, space_key: str, version: int) -> str:
    """Short label of a boundary for pictures: attribute[/space] v<n>."""
    return f"{attribute}{'' if space_key == 'z' else '/' + space_key} v{version}"
