"""``farm dataset ...``: dataset commands (registered in ``farm.cli`` as the ``dataset`` group)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from farm.catalog import BenchmarkError
from farm.cli_common import console, err, fail
from farm.dataset_synth import DEFAULT_DATASETS, synthesize

dataset_app = typer.Typer(
    help="Evaluation datasets in the official layout (<root>/<id>/y_labels.csv + files).",
    no_args_is_help=True,
    add_completion=False,
)


SYNTH_HELP = "\n\n".join(
    (
        "Write a stand-in dataset: the official index files and synthetic inputs.",
        "Every file the official y_labels.csv names is written with its exact size "
        "(kws 490 B, vww 27,648 B, ic 3,072 B, ad 102,400 B = 196 windows of 2,560 B). "
        "sww01 gets the official truth files (OUT/sww01/sww_*_test.json): its wav files are "
        "on the interface board's SD card; --limit does not cut them.",
        "There is no accuracy option: each input carries its label and an evenly spread "
        "difficulty, and the simulated board's configured quality decides how many it gets "
        "right, so one dataset gives every board exactly its own top-1 (about its own AUC for "
        "ad01). Real boards give arbitrary answers on these inputs.",
    )
)


@dataset_app.command(help=SYNTH_HELP)
def synth(
    out: Annotated[
        Path, typer.Option(help="Dataset root to write: OUT/<id>/y_labels.csv and its files")
    ],
    models: Annotated[
        str,
        typer.Option(help="Comma-separated benchmarks or datasets (ic02 uses the ic01 folder)"),
    ] = ",".join(DEFAULT_DATASETS),
    alt: Annotated[
        bool,
        typer.Option(help="Also write ad01/y_labels_alt.csv (72 of the 248 files, v1.2+)"),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Only the first N rows of each index (a test subset)"),
    ] = None,
) -> None:
    """Write a stand-in dataset under ``out`` (see ``SYNTH_HELP``)."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise fail("--models is empty")
    started = time.perf_counter()
    try:
        results = synthesize(out, names, alt=alt, limit=limit)
    except BenchmarkError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}") from None
    elapsed = time.perf_counter() - started

    table = Table(title=f"stand-in dataset in {out} ({elapsed:.1f} s)")
    for column in ("dataset", "rows", "alt rows", "files", "MB", "folder"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(
            r.dataset,
            str(r.rows),
            "-" if r.alt_rows is None else str(r.alt_rows),
            str(r.files),
            f"{r.bytes / 1e6:.1f}",
            str(r.folder),
        )
    console.print(table)
    if limit is not None:
        err.print(f"--limit {limit}: a subset, not the official evaluation set", highlight=False)
