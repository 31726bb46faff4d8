"""How every listing command prints: ``--format table|csv|json|markdown``.

A :class:`Listing` holds typed rows (numbers stay numbers) and its columns; :func:`emit`
prints it in one of the formats. ``table`` fits the terminal (80 columns when stdout is not
one): columns are dropped, least important first, until every column is at least as wide as
its longest word, so rich wraps whole words and never splits one into slivers. ``json``
prints the command's own document (real types: numbers, objects), ``csv`` one line per row.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

FORMATS = ("table", "csv", "json", "markdown")
#: Width of a table when stdout is not a terminal (a file, a pipe, CI's log).
PLAIN_WIDTH = 80


@dataclass(frozen=True, slots=True)
class Column:
    """One column: the row key, its heading, how a value prints, and its rank (0 is kept
    longest; higher ranks are dropped first when the table is too wide)."""

    key: str
    heading: str
    show: Callable[[Any], str] = lambda v: "-" if v is None or v == "" else str(v)
    rank: int = 0
    justify: str = "left"


@dataclass(slots=True)
class Listing:
    """Rows (dicts keyed by column key, typed values) under a title, with notes printed
    below a table (a legend)."""

    title: str
    columns: Sequence[Column]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def number(fmt: str) -> Callable[[Any], str]:
    """A cell printer for numbers: ``format(value, fmt)``, ``-`` for none."""
    return lambda v: "-" if v is None else format(v, fmt)


def width() -> int:
    """The console's width on a terminal, :data:`PLAIN_WIDTH` elsewhere."""
    return Console().width if sys.stdout.isatty() else PLAIN_WIDTH


def fit(listing: Listing, total: int) -> list[tuple[Column, int]]:
    """The columns that fit ``total`` characters with none narrower than its longest word
    (borders and padding counted), dropping the highest rank first, the rightmost first;
    each with that least width."""
    columns = list(listing.columns)

    def need(c: Column) -> int:
        words = [w for row in listing.rows for w in c.show(row.get(c.key)).split()]
        return max([len(w) for w in words] + [max(len(w) for w in c.heading.split())])

    while len(columns) > 1 and sum(need(c) + 3 for c in columns) + 1 > total:
        top = max(c.rank for c in columns)
        drop = [i for i, c in enumerate(columns) if c.rank == top][-1]
        del columns[drop]
    return [(c, need(c)) for c in columns]


def table(listing: Listing, total: int | None = None) -> Table:
    """A rich table of the columns that fit ``total`` (default :func:`width`)."""
    total = total or width()
    fitted = fit(listing, total)
    columns = [c for c, _ in fitted]
    widths = _spread(listing, fitted, total)
    view = Table(title=escape(listing.title))
    for (c, _), size in zip(fitted, widths, strict=True):
        view.add_column(
            escape(c.heading),
            justify=c.justify,  # type: ignore[arg-type]
            overflow="fold",
            width=size,
        )
    for row in listing.rows:
        view.add_row(*(escape(c.show(row.get(c.key))) for c in columns))
    dropped = [c.heading for c in listing.columns if c not in columns]
    if dropped:
        view.caption = f"(too narrow for: {', '.join(dropped)}; --format csv has every column)"
    return view


def _spread(listing: Listing, fitted: list[tuple[Column, int]], total: int) -> list[int]:
    """Column widths: each its least, then the room left handed out a character at a time to
    the columns whose cells are longer (rich alone would squeeze words into slivers)."""
    sizes = [least for _, least in fitted]
    natural = [
        max([len(c.heading)] + [len(c.show(row.get(c.key))) for row in listing.rows])
        for c, _ in fitted
    ]
    room = total - (sum(sizes) + 3 * len(sizes) + 1)
    while room > 0 and any(s < n for s, n in zip(sizes, natural, strict=True)):
        for i, (size, want) in enumerate(zip(sizes, natural, strict=True)):
            if room > 0 and size < want:
                sizes[i] += 1
                room -= 1
    return sizes


def to_csv(listing: Listing) -> str:
    """CSV: a header of the column keys, then one line per row (raw values, empty for none;
    lists joined with "; ")."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in listing.columns])
    for row in listing.rows:
        writer.writerow([_raw(row.get(c.key)) for c in listing.columns])
    return out.getvalue()


def _raw(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    return value


def to_markdown(listing: Listing) -> str:
    """A GitHub-flavoured Markdown table of every column, then the notes."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"**{cell(listing.title)}**", ""] if listing.title else []
    lines.append("| " + " | ".join(cell(c.heading) for c in listing.columns) + " |")
    lines.append("|" + "|".join("---" for _ in listing.columns) + "|")
    for row in listing.rows:
        lines.append(
            "| " + " | ".join(cell(c.show(row.get(c.key))) for c in listing.columns) + " |"
        )
    lines += ["", *listing.notes] if listing.notes else []
    return "\n".join(lines) + "\n"


def emit(
    fmt: str,
    listings: Sequence[Listing],
    document: Any,
    console: Console,
) -> None:
    """Print ``listings`` in ``fmt`` (``json``: ``document`` instead, as it is)."""
    if fmt == "json":
        print(json.dumps(document))
        return
    for i, listing in enumerate(listings):
        if fmt == "csv":
            sys.stdout.write(to_csv(listing))
        elif fmt == "markdown":
            sys.stdout.write(("\n" if i else "") + to_markdown(listing))
        else:
            size = console.width if console.is_terminal else PLAIN_WIDTH
            console.print(table(listing, size), width=size)
            for note in listing.notes:
                console.print(escape(note), highlight=False, width=size)


def check_format(fmt: str, json_flag: bool) -> str:
    """The format asked for (``--json`` stands for ``--format json``); raises ``ValueError``
    for an unknown one."""
    if json_flag:
        return "json"
    if fmt not in FORMATS:
        raise ValueError(f"--format takes {', '.join(FORMATS)}, not {fmt!r}")
    return fmt
