"""JupyterLab's look for our HTML: its theme variables (with fallbacks) and small coloured state badges.

Every colour is a ``var(--jp-...)`` with a fallback, so the panel, the progress line and the sweep grid follow
JupyterLab's light and dark themes and Notebook 7 (same variables), and still read in nbconvert's HTML and
anywhere the variables are missing: neutral tints are translucent grey and text inherits its colour, which works
on a light and a dark page alike. Badges carry inline styles (a sanitizer that drops ``<style>`` keeps them
readable); tables get one scoped ``<style>`` block, since their cells must stay plain ``<td>``.
"""

from __future__ import annotations

import html

FONT = "var(--jp-ui-font-family, system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif)"
TEXT = "var(--jp-ui-font-color1, inherit)"
MUTED = "var(--jp-ui-font-color2, inherit)"
SURFACE = "var(--jp-layout-color1, transparent)"
RAISED = "var(--jp-layout-color2, rgba(127, 127, 127, 0.08))"
BORDER = "var(--jp-border-color2, rgba(127, 127, 127, 0.3))"
BRAND = "var(--jp-brand-color1, #1976d2)"

#: tone -> (background, text colour). The coloured tones put white text on a saturated colour, readable in both
#: themes; ``neutral`` is a translucent grey under the page's own text colour.
TONES: dict[str, tuple[str, str]] = {
    "neutral": ("rgba(127, 127, 127, 0.2)", "inherit"),
    "info": ("var(--jp-info-color1, #0097a7)", "#fff"),
    "busy": (BRAND, "#fff"),
    "ok": ("var(--jp-success-color1, #388e3c)", "#fff"),
    "warn": ("var(--jp-warn-color1, #f57c00)", "#fff"),
    "error": ("var(--jp-error-color1, #d32f2f)", "#fff"),
}

#: A task's status -> its badge tone.
STATE_TONES = {
    "pending": "neutral",
    "waiting": "neutral",
    "queued": "info",
    "running": "busy",
    "success": "ok",
    "error": "error",
    "interrupted": "warn",
    "cancelled": "warn",
}

_BADGE = (
    "display:inline-block;padding:0 7px;border-radius:9px;font-size:0.85em;line-height:1.6;font-weight:600;"
    "white-space:nowrap;vertical-align:baseline"
)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def badge_style(tone: str) -> str:
    background, color = TONES.get(tone, TONES["neutral"])
    return f"{_BADGE};background:{background};color:{color}"


def badge(text: str, tone: str, css: str = "", *, title: str = "") -> str:
    """``text`` (escaped) as a small coloured pill with the classes ``comfy-badge`` and ``css``."""
    tip = f' title="{esc(title)}"' if title else ""
    klass = f"comfy-badge {css}".strip()
    return f'<span class="{esc(klass)}"{tip} style="{badge_style(tone)}">{esc(text)}</span>'


def wrap_badge(inner_html: str, tone: str, *, title: str = "") -> str:
    """A badge around markup that is already escaped (keeps the inner element's own classes and text)."""
    tip = f' title="{esc(title)}"' if title else ""
    return f'<span class="comfy-badge"{tip} style="{badge_style(tone)}">{inner_html}</span>'


def state_tone(status: str) -> str:
    return STATE_TONES.get(status, "neutral")


def muted(inner_html: str, css: str = "") -> str:
    """Secondary facts: the theme's second text colour (or the inherited one at reduced opacity)."""
    klass = f' class="{esc(css)}"' if css else ""
    return f'<span{klass} style="color:{MUTED};opacity:0.9">{inner_html}</span>'


def box_style(*, padding: str = "4px 0") -> str:
    """The outer element of each rendering: the theme's font and text colour."""
    return f"font-family:{FONT};font-size:var(--jp-ui-font-size1, 13px);color:{TEXT};padding:{padding}"


def table_css(table_class: str) -> str:
    """A ``<style>`` block for one of our tables (scoped by its class): theme borders, a raised header, compact
    cells, the locked server marked, a green or red dot before a server's health (its row's ``comfy-server-down``
    class). Cells stay plain ``<td>`` text; without this block (a sanitizer removed it) the front end's table
    style applies."""
    t = f"table.{table_class}.{table_class}"  # outranks JupyterLab's ``:not(...).jp-RenderedHTMLCommon td``
    return (
        "<style>"
        f"{t}{{border-collapse:collapse;margin:4px 0;font-size:var(--jp-ui-font-size1, 13px);color:{TEXT}}}"
        f"{t} th{{background:{RAISED};color:{MUTED};font-weight:600;text-align:left;padding:3px 8px;"
        f"border-bottom:1px solid {BORDER}}}"
        f"{t} td{{padding:3px 8px;border-bottom:1px solid {BORDER};text-align:left;white-space:nowrap}}"
        f"{t} td,{t} th{{line-height:1.5;vertical-align:top}}"
        f"{t} tr.comfy-server-locked td:first-child{{box-shadow:inset 3px 0 0 {BRAND};font-weight:600}}"
        f"{t} tr.comfy-server-row td:nth-child(2)::before{{content:'\\25CF\\00a0';color:{TONES['ok'][0]}}}"
        f"{t} tr.comfy-server-down td:nth-child(2){{color:{TONES['error'][0]};font-weight:600}}"
        f"{t} tr.comfy-server-down td:nth-child(2)::before{{color:{TONES['error'][0]}}}"
        "</style>"
    )
