"""The demo's HTML report: one self-contained index.html next to its PNG grids (no JavaScript, no CDN)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Sequence

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
main { max-width: 1340px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 20px; margin: 34px 0 8px; border-bottom: 1px solid #d8dce3; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.lead { color: #4a5263; margin: 0 0 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 14px 0; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 10px 14px; min-width: 150px; }
.card b { display: block; font-size: 20px; } .card span { color: #5b6475; font-size: 13px; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 14px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #dde1e8; padding: 5px 10px; text-align: right; } th { background: #eef1f5; }
td.l, th.l { text-align: left; }
figure { margin: 10px 0 18px; background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 10px; display: inline-block; }
figcaption { color: #4a5263; font-size: 13px; margin-top: 6px; max-width: 1080px; }
.side { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.side > figure { flex: 0 1 auto; }
img { max-width: 100%; image-rendering: pixelated; }
.good { color: #11743b; font-weight: 600; } .bad { color: #b42318; font-weight: 600; }
.note { color: #5b6475; font-size: 13px; }
code { background: #eef1f5; padding: 1px 4px; border-radius: 3px; }
"""


def esc(value) -> str:
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence], *, left: int = 1) -> str:
    """An HTML table; the first `left` columns are left-aligned."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def heat_table(matrix, row_labels: Sequence[str], col_labels: Sequence[str], *, fmt: str = "{:+.2f}",
               scale: float | None = None, colour=None) -> str:
    """A table whose cells are coloured by value: blue negative, red positive, white zero.

    Args:
        scale: Value of full colour; the largest absolute value when None.
        colour: Another matrix, in [-1, 1], to colour by instead of the values (e.g. scaled per column).
    """
    values = [[float(v) for v in row] for row in matrix]
    tints = [[float(v) for v in row] for row in (colour if colour is not None else values)]
    top = 1.0 if colour is not None else (
        scale or max((abs(v) for row in values for v in row if math.isfinite(v)), default=1.0) or 1.0)
    rows = []
    for label, row, tint in zip(row_labels, values, tints):
        cells = []
        for v, c in zip(row, tint):
            t = max(-1.0, min(1.0, c / top)) if math.isfinite(c) else 0.0
            r, g, b = (255, int(255 * (1 - t * 0.75)), int(255 * (1 - t * 0.75))) if t >= 0 else \
                (int(255 * (1 + t * 0.75)), int(255 * (1 + t * 0.55)), 255)
            cells.append(f'<td style="background: rgb({r},{g},{b})">{esc(fmt.format(v))}</td>')
        rows.append(f'<tr><th class="l">{esc(label)}</th>{"".join(cells)}</tr>')
    head = "".join(f"<th>{esc(c)}</th>" for c in col_labels)
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def line_chart(xs: Sequence[float], series: dict[str, Sequence[float]], *, title: str, ylabel: str,
               width: int = 520, height: int = 260) -> str:
    """An inline SVG line chart of several series over the same x values."""
    colours = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]
    ys = [y for s in series.values() for y in s if y is not None and math.isfinite(y)]
    if not ys:
        return ""
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
    left, right, top, bottom = 56, 12, 28, 36
    pw, ph = width - left - right, height - top - bottom

    def px(x):
        return left + (x - xs[0]) / ((xs[-1] - xs[0]) or 1) * pw

    def py(y):
        return top + (hi - y) / (hi - lo) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="system-ui, sans-serif" font-size="12">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccd"/>',
             f'<text x="{left}" y="16" font-weight="600">{esc(title)}</text>']
    for k in range(5):
        y = lo + (hi - lo) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:+.1f}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">edit distance</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
                 f'text-anchor="middle">{esc(ylabel)}</text>')
    for i, (name, s) in enumerate(series.items()):
        c = colours[i % len(colours)]
        points = [(px(x), py(y)) for x, y in zip(xs, s) if y is not None and math.isfinite(y)]
        parts.append('<polyline fill="none" stroke="{}" stroke-width="2.2" points="{}"/>'.format(
            c, " ".join(f"{a:.1f},{b:.1f}" for a, b in points)))
        parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{c}"/>' for a, b in points]
        parts.append(f'<text x="{left + 10}" y="{top + 16 + 15 * i}" fill="{c}" font-weight="600">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title><style>{CSS}</style></head>'
            f"<body><main>{body}</main></body></html>")


def figure(src: str, caption: str, alt: str = "") -> str:
    return f'<figure><img src="{esc(src)}" alt="{esc(alt or caption)}"><figcaption>{caption}</figcaption></figure>'


def write(path: Path, title: str, body: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page(title, body), encoding="utf-8")
    tmp.replace(path)
