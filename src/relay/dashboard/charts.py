"""Charts drawn on the server as inline SVG: no chart library to vendor, nothing to run in the browser, and a page
that reads the same with scripts off. Each function is pure: numbers in, escaped markup out."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

NONE = "\u2013"  # an en dash: "no figure"

__all__ = ["SERIES_COLOURS", "share_bars", "stacked_columns"]

# Outcome -> colour class (relay.css): the same meaning on every chart.
SERIES_COLOURS = {"sent": "ok", "retry": "warn", "quota": "warn", "auth": "bad", "permanent": "bad"}


def stacked_columns(
    columns: Sequence[tuple[str, dict[str, int]]], series: Sequence[str], *, title: str, height: int = 120
) -> Markup:
    """One column per (label, {series: value}), stacked in `series` order; a `<title>` on each column gives its
    figures on hover."""
    width = max(len(columns), 1) * 10
    peak = max((sum(v.get(s, 0) for s in series) for _, v in columns), default=0) or 1
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(title)}">'
    ]
    for index, (label, values) in enumerate(columns):
        y = float(height)
        figures = ", ".join(f"{s} {values.get(s, 0)}" for s in series if values.get(s, 0))
        parts.append(f"<g><title>{escape(label)}: {escape(figures or 'none')}</title>")
        parts.append(f'<rect class="hit" x="{index * 10}" y="0" width="10" height="{height}"/>')
        for name in series:
            value = values.get(name, 0)
            if value <= 0:
                continue
            size = value / peak * (height - 4)
            y -= size
            colour = SERIES_COLOURS.get(name, "info")
            parts.append(f'<rect class="{colour}" x="{index * 10 + 1}" y="{y:.2f}" width="8" height="{size:.2f}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every interpolated text is escaped above)


def share_bars(rows: Sequence[tuple[str, float | None, float | None]]) -> Markup:
    """Expected against actual share per member: (label, expected 0..1 or None, actual 0..1 or None)."""
    parts = ['<div class="shares">']
    for label, expected, actual in rows:
        parts.append(f'<div class="share"><span class="share-label">{escape(label)}</span><span class="share-bars">')
        for kind, value in (("expected", expected), ("actual", actual)):
            text = NONE if value is None else f"{value * 100:.1f} %"
            parts.append(
                f'<span class="share-bar {kind}" title="{kind} {text}">'
                f'<span style="width:{(value or 0) * 100:.1f}%"></span><em>{kind} {text}</em></span>'
            )
        parts.append("</span></div>")
    parts.append("</div>")
    return Markup("".join(parts))  # noqa: S704 (every interpolated text is escaped above)
