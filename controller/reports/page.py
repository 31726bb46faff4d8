"""``index.html``: one self-contained page (CSS inline, every image a ``data:`` URI, no
script and nothing fetched), built from sections of text, tables and plots.

Every table cell carries its column's key (``data-col``) and every verdict cell the class
``v-<verdict>``, so the page can be read back by a program as well as by a person.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from controller.render import Listing

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
nav a { margin-right: 1rem; }
.summary { font-size: 1.05rem; }
.regressed { color: #c0392b; font-weight: bold; }
.clean { color: #1e8449; font-weight: bold; }
.why { background: #fdf2e9; border-left: 4px solid #e67e22; padding: .5rem 1rem; }
table { border-collapse: collapse; margin: .5rem 0 .3rem; font-size: .85rem; }
caption { text-align: left; font-weight: bold; padding: .3rem 0; }
th, td { border: 1px solid #ddd; padding: .2rem .45rem; vertical-align: top; }
td { max-width: 24rem; overflow-wrap: anywhere; }
th { background: #f4f6f8; }
td.right { text-align: right; font-variant-numeric: tabular-nums; }
td.v-worse { background: #fadbd8; font-weight: bold; }
td.v-better { background: #d5f5e3; }
td.v-missing, td.v-new { background: #fef9e7; }
.note { font-size: .8rem; color: #555; margin: .1rem 0; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .8rem; color: #555; }
.scroll { overflow-x: auto; }
"""


@dataclass(frozen=True, slots=True)
class Plot:
    """One image of the page: its PNG bytes and what it shows."""

    caption: str
    png: bytes


@dataclass(slots=True)
class Section:
    """A part of the page: a heading (and anchor), paragraphs, tables, plots."""

    anchor: str
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Listing] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def data_uri(png: bytes) -> str:
    """The PNG as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def table_html(listing: Listing, anchor: str) -> str:
    """The listing as an HTML table (every column, cells as ``Column.show`` prints them),
    its notes below."""
    head = "".join(f"<th>{escape(c.heading)}</th>" for c in listing.columns)
    body = []
    for row in listing.rows:
        cells = []
        for c in listing.columns:
            value = row.get(c.key)
            classes = ["right"] if c.justify == "right" else []
            if c.key == "verdict" and value:
                classes.append(f"v-{value}")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f'<td data-col="{escape(c.key)}"{attr}>{escape(c.show(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in listing.notes)
    return (
        f'<div class="scroll"><table id="table-{escape(anchor)}">'
        f"<caption>{escape(listing.title)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>{notes}"
    )


def _section(section: Section) -> str:
    parts = [f'<section id="{escape(section.anchor)}"><h2>{escape(section.heading)}</h2>']
    parts += [f"<p>{escape(p)}</p>" for p in section.paragraphs]
    parts += [table_html(t, f"{section.anchor}-{i}") for i, t in enumerate(section.tables)]
    for plot in section.plots:
        parts.append(
            f'<figure><img src="{data_uri(plot.png)}" alt="{escape(plot.caption)}">'
            f"<figcaption>{escape(plot.caption)}</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def page(
    title: str,
    summary: str,
    *,
    regressed: bool | None,
    why: str | None,
    sections: Sequence[Section],
    files: Sequence[str],
) -> str:
    """The whole page: the title, a one-line summary (red when something regressed, green
    when nothing did, plain without verdicts), why there are no verdicts, a table of
    contents, the sections and links to the same tables as files beside it."""
    mood = {True: "regressed", False: "clean", None: ""}[regressed]
    nav = "".join(f'<a href="#{escape(s.anchor)}">{escape(s.heading)}</a>' for s in sections)
    links = ", ".join(f'<a href="{escape(f)}">{escape(f)}</a>' for f in files)
    why_html = "" if why is None else f'<p class="why" id="no-verdicts">{escape(why)}</p>'
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        # An empty icon of its own, or a browser would fetch /favicon.ico beside the page.
        '<link rel="icon" href="data:,">'
        f"<style>{STYLE}</style></head><body>\n"
        f"<h1>{escape(title)}</h1>\n"
        f'<p class="summary {mood}" id="summary">{escape(summary)}</p>\n{why_html}\n'
        f"<nav>{nav}</nav>\n"
        + "\n".join(_section(s) for s in sections)
        + f'\n<p class="note">The same tables beside this page: {links}.</p>\n'
        "</body></html>\n"
    )
