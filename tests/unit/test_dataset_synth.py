"""The stand-in dataset: official index bytes, exact file sizes, inputs that decode to their
row's label with evenly spread difficulties, so a simulated board reaches exactly its
configured top-1 (and about its AUC); and the ``farm dataset synth`` command."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from farm.catalog import DATASETS, get_benchmark
from farm.dataset_cli import dataset_app
from farm.dataset_synth import stratified, synth_dataset, synthesize
from farm.datasets import Dataset, load_dataset, official_index, official_rows, stratified_rows
from farm.synthetic import decode_input, simulated_output

SIZES = {"kws01": 490, "vww01": 27648, "ic01": 3072, "ad01": 102400}


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    results = synthesize(root, alt=True)
    assert [(r.dataset, r.rows, r.alt_rows, r.files) for r in results] == [
        ("kws01", 1000, None, 1000),
        ("vww01", 1000, None, 1000),
        ("ic01", 200, None, 200),
        ("ad01", 248, 72, 248),
        ("sww01", 1, None, 3),  # the official truth files (the wavs are on the SD card)
    ]
    assert results[1].bytes == 27_648_000 and results[3].bytes == 248 * 102_400
    return root


def us_of(ds: Dataset) -> dict[str, tuple[int, float]]:
    out = {}
    for row in ds.rows:
        decoded = decode_input((ds.folder / row.file).read_bytes())
        assert decoded is not None
        out[row.file] = decoded
    return out


def assert_even(us: list[float]) -> None:
    n = len(us)
    # u travels as int(u * 2**32): equal to (i + 0.5) / n within 2**-32
    assert sorted(us) == pytest.approx([(i + 0.5) / n for i in range(n)], abs=1e-9)


@pytest.mark.parametrize("dataset", sorted(SIZES))
def test_index_and_sizes(full: Path, dataset: str) -> None:
    folder = full / dataset
    assert (folder / "y_labels.csv").read_text() == official_index(dataset)
    ds = load_dataset(full, dataset)
    assert {(folder / r.file).stat().st_size for r in ds.rows} == {SIZES[dataset]}
    assert len(list(folder.glob("*.bin"))) == len(ds.rows)


@pytest.mark.parametrize("dataset", ["kws01", "vww01", "ic01"])
def test_classifier_inputs_decode_to_their_label_with_even_difficulty(
    full: Path, dataset: str
) -> None:
    ds = load_dataset(full, dataset)
    decoded = us_of(ds)
    assert all(decoded[r.file][0] == r.label for r in ds.rows)
    us = [u for _, u in decoded.values()]
    assert_even(us)
    # shuffled: the order of the rows says nothing about u
    assert us != sorted(us)


def test_ad_difficulty_is_even_per_class_in_both_indexes(full: Path) -> None:
    main, alt = load_dataset(full, "ad01"), load_dataset(full, "ad01", alt=True)
    decoded = us_of(main)
    assert all(decoded[r.file][0] == r.label for r in main.rows)
    alt_files = {r.file for r in alt.rows}
    for label in (0, 1):
        assert_even([decoded[r.file][1] for r in alt.rows if r.label == label])
        assert_even(
            [decoded[r.file][1] for r in main.rows if r.label == label and r.file not in alt_files]
        )
    # every window of a file carries the same header, so every window scores alike
    inputs = main.inputs("accuracy")
    assert {decode_input(i.read()) for i in inputs[:196]} == {decoded[inputs[0].file]}


def test_without_alt_ad_is_even_per_class(tmp_path: Path) -> None:
    synth_dataset(tmp_path, "ad", limit=30)
    assert not (tmp_path / "ad01" / "y_labels_alt.csv").exists()
    ds = load_dataset(tmp_path, "ad01")
    decoded = us_of(ds)
    assert_even([u for label, u in decoded.values() if label == 0])


@pytest.mark.parametrize(
    ("bench", "quality"),
    [("kws01", 0.913), ("kws01", 0.5), ("vww01", 0.82), ("ic01", 0.87), ("ic02", 0.925)],
)
def test_simulated_board_reaches_its_accuracy_exactly(
    full: Path, bench: str, quality: float
) -> None:
    ds = load_dataset(full, bench)
    model = get_benchmark(bench).model
    inputs = ds.inputs("accuracy")
    correct = 0
    for inp in inputs:
        out = simulated_output(model, inp.read(), quality)
        correct += max(range(len(out)), key=out.__getitem__) == inp.label
    assert correct == round(quality * len(inputs))


@pytest.mark.parametrize("alt", [False, True])
@pytest.mark.parametrize("auc", [0.87, 0.95, 0.7])
def test_simulated_ad_board_reaches_about_its_auc(full: Path, alt: bool, auc: float) -> None:
    ds = load_dataset(full, "ad01", alt=alt)
    model = get_benchmark("ad01").model
    # one window per file suffices: all windows of a synthetic file score the same
    scores = [
        (r.label, simulated_output(model, (ds.folder / r.file).read_bytes()[:2560], auc)[0])
        for r in ds.rows
    ]
    pos = [s for label, s in scores if label == 1]
    neg = [s for label, s in scores if label == 0]
    achieved = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert achieved == pytest.approx(auc, abs=0.005)


def test_limit_writes_a_stratified_subset_of_the_official_index(tmp_path: Path) -> None:
    result = synth_dataset(tmp_path, "vww", limit=4, stratify=True)
    assert (result.rows, result.alt_rows, result.files, result.bytes) == (4, None, 4, 4 * 27648)
    official = official_index("vww01").splitlines(keepends=True)
    text = (tmp_path / "vww01" / "y_labels.csv").read_text()
    # The official lines of the first two rows of each class, round-robin (vww01's first 500
    # rows are all class 1, so a prefix would hold one class).
    assert text == official[500] + official[0] + official[501] + official[1]
    ds = load_dataset(tmp_path, "vww")
    # Rows keep their official numbers: results name the row the controller scores.
    assert [(r.index, r.label) for r in ds.rows] == [(500, 0), (0, 1), (501, 0), (1, 1)]
    assert_even([u for _, u in us_of(ds).values()])


@pytest.mark.parametrize("dataset", sorted(SIZES))
@pytest.mark.parametrize("limit", [1, 2, 3, 12, 25])
def test_a_subset_holds_every_class_it_can(tmp_path: Path, dataset: str, limit: int) -> None:
    classes = len(DATASETS[dataset].classes)
    rows = stratified_rows(official_rows(dataset), limit)
    assert len(rows) == limit
    assert len({r.label for r in rows}) == min(limit, classes)
    # Any prefix of the subset is stratified too (a run's `limit` takes a prefix).
    per_class = Counter(r.label for r in rows)
    assert max(per_class.values()) - min(per_class.values()) <= 1


def test_small_ad01_subset_gives_a_defined_auc_near_the_boards(tmp_path: Path) -> None:
    synth_dataset(tmp_path, "ad01", limit=10, stratify=True, windows=4)
    ds = load_dataset(tmp_path, "ad01")
    assert ds.windows_per_file == 4
    model = get_benchmark("ad01").model
    scores: dict[str, list[float]] = {}
    labels = {}
    for inp in ds.inputs("accuracy"):
        scores.setdefault(inp.file, []).append(simulated_output(model, inp.read(), 0.87)[0])
        labels[inp.file] = inp.label
    means = {f: sum(v) / len(v) for f, v in scores.items()}
    pos = [means[f] for f in means if labels[f] == 1]
    neg = [means[f] for f in means if labels[f] == 0]
    assert len(pos) == len(neg) == 5
    auc = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert auc == pytest.approx(0.87, abs=0.02)


def test_limit_without_stratify_writes_a_prefix(tmp_path: Path) -> None:
    synth_dataset(tmp_path, "vww", limit=4)
    text = (tmp_path / "vww01" / "y_labels.csv").read_text()
    assert text == "".join(official_index("vww01").splitlines(keepends=True)[:4])


def test_output_is_reproducible(tmp_path: Path) -> None:
    synth_dataset(tmp_path / "a", "kws", limit=5)
    synth_dataset(tmp_path / "b", "kws", limit=5)
    for f in (tmp_path / "a" / "kws01").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / "kws01" / f.name).read_bytes()


def test_stratified() -> None:
    us = stratified(8, 3)
    assert sorted(us) == [(i + 0.5) / 8 for i in range(8)]
    assert us == stratified(8, 3) != stratified(8, 4)


# -- the command ---------------------------------------------------------------------------


def cli() -> typer.Typer:
    # farm.cli registers it the same way: app.add_typer(dataset_app, name="dataset")
    app = typer.Typer()
    app.callback()(lambda: None)
    app.add_typer(dataset_app, name="dataset")
    return app


def test_synth_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli(),
        [
            *("dataset", "synth", "--out", str(tmp_path)),
            *("--models", "kws,ic2,ic01,ad", "--limit", "3", "--alt"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad01", "ic01", "kws01"]
    assert (tmp_path / "ad01" / "y_labels_alt.csv").is_file()
    for dataset in ("kws01", "ic01", "ad01"):
        assert len(load_dataset(tmp_path, dataset).rows) == 3
    assert "not the official evaluation set" in result.output


def test_synth_command_defaults_to_all_four(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["dataset", "synth", "--out", str(tmp_path), "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DATASETS)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("kws,resnet", "unknown benchmark 'resnet'"),
        ("sww,ic3", "unknown benchmark 'ic3'"),
        (",", "empty"),
    ],
)
def test_synth_command_rejects_bad_models(tmp_path: Path, models: str, message: str) -> None:
    result = CliRunner().invoke(
        cli(), ["dataset", "synth", "--out", str(tmp_path / "x"), "--models", models]
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()  # nothing written


def test_synth_help_explains_why_there_is_no_accuracy_option() -> None:
    result = CliRunner().invoke(cli(), ["dataset", "synth", "--help"])
    assert result.exit_code == 0
    assert "There is no accuracy option" in " ".join(result.output.split())


def test_sim_dataset_limit_takes_one_n_or_one_per_dataset() -> None:
    from farm.sim_cli import _dataset_limits

    assert _dataset_limits("5") == {"kws01": 5, "vww01": 5, "ic01": 5, "ad01": 5}
    assert _dataset_limits("kws=20,ad01=8") == {"kws01": 20, "ad01": 8}
    for bad in ("kws01", "kws01=0", "nope=3"):
        with pytest.raises(ValueError):
            _dataset_limits(bad)


def test_sww_dataset_is_the_official_truth_files(full: Path) -> None:
    from farm.sww_truth import OFFICIAL_TRUTH, dataset_truth, official_text

    for name in OFFICIAL_TRUTH:
        assert (full / "sww01" / name).read_text() == official_text(name)
    long = dataset_truth(full)
    assert long.official and long.entries[0].wav_file == "long_wav.wav"
    assert len(long.entries[0].windows) == 50 and long.entries[0].length_s == 1200.0
