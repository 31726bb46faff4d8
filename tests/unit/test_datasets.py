"""The dataset reader: official layout, row shapes, AD windows, mode inputs, and a clear
``DatasetError`` for every problem before anything is sent to a board."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from farm.catalog import DATASETS, get_benchmark
from farm.dataset_synth import synth_dataset, synthesize
from farm.datasets import (
    Dataset,
    DatasetError,
    load_dataset,
    official_index,
    official_rows,
    parse_index,
    windows,
)

#: A copy of the official MLPerf Tiny datasets (``<root>/<id>/y_labels.csv``), to compare the
#: shipped index files with; the comparison is skipped when it is not set.
REFERENCE_ENV = "FARM_REFERENCE_DATASETS"

# docs/measurement.md#datasets: the files of the five performance/energy windows.
FIRST_FIVE = {
    "kws01": [f"tst_00000{i}_" for i in range(5)],
    "vww01": [
        "000000343218.bin",
        "000000332570.bin",
        "000000352684.bin",
        "000000003934.bin",
        "000000272566.bin",
    ],
    "ic01": [
        "emu_s_002009.bin",
        "taxi_s_001241.bin",
        "accentor_s_001031.bin",
        "mongrel_s_000686.bin",
        "stealth_bomber_s_002204.bin",
    ],
    "ad01": [f"normal_id_01_000000{k}3_hist_librosa.bin" for k in range(5)],
}


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole stand-in dataset (57 MB, well under a second to write)."""
    root = tmp_path_factory.mktemp("full")
    synthesize(root, alt=True)
    return root


def small(tmp_path: Path, dataset: str = "kws01", limit: int = 6) -> Path:
    synth_dataset(tmp_path, dataset, limit=limit)
    return tmp_path


def load_error(root: Path, name: str) -> DatasetError:
    """The error loading dataset ``name`` below ``root`` raises (the test fails if none)."""
    with pytest.raises(DatasetError) as info:
        load_dataset(root, name)
    return info.value


# -- the shipped index files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "alt"),
    [("kws01", False), ("vww01", False), ("ic01", False), ("ad01", False), ("ad01", True)],
)
def test_shipped_index_is_the_official_one(dataset: str, alt: bool) -> None:
    name = "y_labels_alt.csv" if alt else "y_labels.csv"
    root = os.environ.get(REFERENCE_ENV)
    if not root:
        pytest.skip(f"set {REFERENCE_ENV} to a copy of the official datasets to compare")
    reference = Path(root) / dataset / name
    if not reference.is_file():
        pytest.skip(f"{reference} not present (from {REFERENCE_ENV})")
    assert official_index(dataset, alt=alt) == reference.read_text()


def test_full_counts(full: Path) -> None:
    expected = {
        "kws01": DATASETS["kws01"].class_counts,
        "vww01": (500, 500),
        "ic01": (20,) * 10,
        "ad01": (140, 108),
    }
    for dataset, counts in expected.items():
        ds = load_dataset(full, dataset)
        per_class = Counter(r.label for r in ds.rows)
        assert tuple(per_class[k] for k in range(len(counts))) == counts
        assert len(ds.rows) == sum(counts) == len(official_rows(dataset))
        assert [r.index for r in ds.rows] == list(range(len(ds.rows)))
    assert DATASETS["kws01"].class_counts == (92, 92, 81, 89, 70, 84, 75, 78, 84, 89, 80, 86)
    alt = load_dataset(full, "ad", alt=True)
    assert Counter(r.label for r in alt.rows) == {0: 36, 1: 36}
    assert set(r.file for r in alt.rows) <= set(r.file for r in load_dataset(full, "ad").rows)


def test_full_ad_windows(full: Path) -> None:
    ds = load_dataset(full, "ad01")
    assert ds.windows_per_file == 196 == windows(102400, 2560, 512)
    acc = ds.inputs("accuracy")
    assert len(acc) == ds.count("accuracy") == 248 * 196 == 48608
    assert len(load_dataset(full, "ad01", alt=True).inputs("accuracy")) == 72 * 196
    first = acc[:196]
    assert {i.index for i in first} == {0}
    assert [i.segment for i in first] == list(range(196))
    assert [i.offset for i in first] == [512 * k for k in range(196)]
    assert {i.length for i in acc} == {2560}
    assert (acc[196].index, acc[196].segment, acc[196].offset) == (1, 0, 0)
    last = acc[-1]
    assert (last.index, last.segment, last.offset + last.length) == (247, 195, 102400)
    data = (ds.folder / last.file).read_bytes()
    assert last.read() == data[last.offset : last.offset + 2560]


@pytest.mark.parametrize("bench", ["kws01", "vww01", "ic01", "ic02", "ad01"])
@pytest.mark.parametrize("mode", ["performance", "energy"])
def test_performance_and_energy_use_rows_one_to_five(full: Path, bench: str, mode: str) -> None:
    ds = load_dataset(full, bench)
    inputs = ds.inputs(mode)
    assert len(inputs) == ds.count(mode) == 5
    prefixes = FIRST_FIVE[ds.benchmark.dataset_id]
    assert all(i.file.startswith(p) for i, p in zip(inputs, prefixes, strict=True))
    assert [i.index for i in inputs] == [0, 1, 2, 3, 4]
    assert {i.offset for i in inputs} == {0}
    assert {i.length for i in inputs} == {ds.benchmark.input_bytes}
    is_ad = bench == "ad01"
    assert {i.segment for i in inputs} == ({0} if is_ad else {None})
    assert all(len(i.read()) == ds.benchmark.input_bytes for i in inputs)


def test_accuracy_uses_every_row(full: Path) -> None:
    ds = load_dataset(full, "vww")
    inputs = ds.inputs("accuracy")
    assert len(inputs) == ds.count("accuracy") == 1000
    assert [(i.index, i.label, i.segment) for i in inputs[:2]] == [(0, 1, None), (1, 1, None)]
    assert inputs[0].path == full / "vww01" / "000000343218.bin"
    assert len(inputs[0].read()) == 27648
    assert ds.inputs("accuracy", limit=3) == inputs[:3]


# -- row shapes ----------------------------------------------------------------------------


def test_comma_space_separators_are_tolerated(tmp_path: Path) -> None:
    root = small(tmp_path)
    index = root / "kws01" / "y_labels.csv"
    index.write_text(index.read_text().replace(",", ", "))
    ds = load_dataset(root, "kws")
    assert [(r.file, r.classes, r.label) for r in ds.rows[:2]] == [
        ("tst_000000_Stop_7.bin", 12, 7),
        ("tst_000001_Left_2.bin", 12, 2),
    ]
    # results.json keeps the raw values, leading space included, as the official runner does
    assert ds.rows[0].truth() == {
        "file": "tst_000000_Stop_7.bin",
        "classes": " 12",
        "class": " 7",
        "bytes_to_send": None,
        "stride": None,
    }


def test_five_column_rows() -> None:
    rows = parse_index("a.bin,2,0,2560,512\r\n\nb.bin, 2, 1, 2560, 512\n", "idx.csv")
    assert [(r.index, r.file, r.label, r.bytes_to_send, r.stride, r.line) for r in rows] == [
        (0, "a.bin", 0, 2560, 512, 1),
        (1, "b.bin", 1, 2560, 512, 3),
    ]
    assert rows[1].truth()["stride"] == " 512"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("x.bin,12", "expected 3 or 5 comma-separated fields, got 2"),
        ("x.bin,12,7,1", "expected 3 or 5 comma-separated fields, got 4"),
        ("x.bin,12,7,", "expected 3 or 5 comma-separated fields, got 4"),
        ("x.bin,twelve,7", "classes 'twelve' is not an integer"),
        ("x.bin,12,7.0", "label '7.0' is not an integer"),
        (",12,7", "empty file name"),
    ],
)
def test_malformed_row_gives_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    root = small(tmp_path)
    index = root / "kws01" / "y_labels.csv"
    lines = index.read_text().splitlines()
    lines[3] = line
    index.write_text("\n".join(lines) + "\n")
    error = load_error(root, "kws01")
    assert str(error) == f"{index}:4: {message}"


def test_every_malformed_row_is_listed(tmp_path: Path) -> None:
    root = small(tmp_path)
    index = root / "kws01" / "y_labels.csv"
    index.write_text("a,1\nb,12,3\nc\n")
    error = load_error(root, "kws01")
    assert error.problems == (
        f"{index}:1: expected 3 or 5 comma-separated fields, got 2",
        f"{index}:3: expected 3 or 5 comma-separated fields, got 1",
    )
    assert str(error) == "\n".join(error.problems)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("tst_000003_Right_6.bin,12,12", "label 12 out of range for kws01 (0..11)"),
        ("tst_000003_Right_6.bin,12,-1", "label -1 out of range for kws01 (0..11)"),
        ("tst_000003_Right_6.bin,10,6", "classes is 10, kws01 has 12"),
        ("tst_000003_Right_6.bin,12,6,2560,512", "kws01 rows have 3 fields, got 5"),
        ("tst_000001_Left_2.bin,12,2", "tst_000001_Left_2.bin is listed again (first on line 2)"),
        (
            "../tst_000003_Right_6.bin,12,6",
            "file name '../tst_000003_Right_6.bin' is not a plain file name",
        ),
    ],
)
def test_rows_that_do_not_fit_the_benchmark(tmp_path: Path, line: str, message: str) -> None:
    root = small(tmp_path)
    index = root / "kws01" / "y_labels.csv"
    lines = index.read_text().splitlines()
    lines[3] = line
    index.write_text("\n".join(lines) + "\n")
    error = load_error(root, "kws01")
    assert str(error).startswith(f"{index} does not fit kws01:\n")
    assert f"{index}:4: {message}" in str(error)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("f.bin,2,0,2560", "expected 3 or 5 comma-separated fields, got 4"),
        ("f.bin,2,0", "ad01 rows have 5 fields, got 3"),
        ("f.bin,2,2,2560,512", "label 2 out of range for ad01 (0..1)"),
        ("f.bin,2,0,5120,512", "bytes_to_send is 5120, the ad01 model takes 2560-byte windows"),
        ("f.bin,2,0,2560,0", "stride must be positive, got 0"),
    ],
)
def test_ad_rows(tmp_path: Path, row: str, message: str) -> None:
    folder = tmp_path / "ad01"
    folder.mkdir()
    (folder / "y_labels.csv").write_text(row + "\n")
    (folder / "f.bin").write_bytes(bytes(102400))
    error = load_error(tmp_path, "ad01")
    assert f"{folder / 'y_labels.csv'}:1: {message}" in str(error)


# -- folders and files ---------------------------------------------------------------------


def test_root_missing(tmp_path: Path) -> None:
    error = load_error(tmp_path / "nowhere", "kws")
    assert str(error) == f"dataset folder {tmp_path / 'nowhere'} does not exist"


def test_benchmark_folder_missing(tmp_path: Path) -> None:
    root = small(tmp_path)
    error = load_error(root, "vww")
    assert str(error) == (
        f"no vww01 folder in {root} (expected {root}/vww01/y_labels.csv and the files it names)"
    )
    # a dataset folder passed instead of the root: say so
    with pytest.raises(DatasetError, match="looks like a dataset folder itself: pass its parent"):
        load_dataset(root / "kws01", "kws")


def test_index_missing(tmp_path: Path) -> None:
    root = small(tmp_path)
    (root / "kws01" / "y_labels.csv").unlink()
    error = load_error(root, "kws")
    assert str(error) == f"{root}/kws01/y_labels.csv is missing"


def test_empty_index(tmp_path: Path) -> None:
    root = small(tmp_path)
    (root / "kws01" / "y_labels.csv").write_text("\n")
    with pytest.raises(DatasetError, match=r"y_labels\.csv: no rows"):
        load_dataset(root, "kws")


def test_alt_index_missing_or_not_applicable(tmp_path: Path) -> None:
    root = small(tmp_path, "ad01", limit=2)
    with pytest.raises(DatasetError, match=r"ad01/y_labels_alt\.csv is missing"):
        load_dataset(root, "ad", alt=True)
    with pytest.raises(DatasetError, match="kws01 has no alternative index"):
        load_dataset(root, "kws", alt=True)


def test_named_files_missing(tmp_path: Path) -> None:
    root = small(tmp_path)
    folder = root / "kws01"
    (folder / "tst_000001_Left_2.bin").unlink()
    (folder / "tst_000004_On_5.bin").unlink()
    error = load_error(root, "kws")
    assert str(error) == (
        f"2 of the 6 files named in {folder}/y_labels.csv are missing from {folder}:\n"
        "  tst_000001_Left_2.bin (line 2)\n"
        "  tst_000004_On_5.bin (line 5)"
    )


def test_many_missing_files_are_summarised(tmp_path: Path) -> None:
    root = small(tmp_path, limit=15)
    for f in (root / "kws01").glob("*.bin"):
        f.unlink()
    error = load_error(root, "kws")
    lines = str(error).splitlines()
    assert lines[0].startswith("15 of the 15 files named")
    assert len(lines) == 12 and lines[-1] == "  ... and 5 more"
    assert len(error.problems) == 15


@pytest.mark.parametrize(("dataset", "size"), [("kws01", 490), ("vww01", 27648), ("ic01", 3072)])
def test_file_of_the_wrong_size(tmp_path: Path, dataset: str, size: int) -> None:
    root = small(tmp_path, dataset, limit=3)
    folder = root / dataset
    victim = official_rows(dataset)[1].file
    (folder / victim).write_bytes(bytes(size - 1))
    error = load_error(root, dataset)
    model = get_benchmark(dataset).model.id
    assert str(error) == (
        f"1 files in {folder} are not {size} B, the {model} input size:\n"
        f"  {victim} is {size - 1} B (line 2)"
    )


def test_ad_file_smaller_than_a_window(tmp_path: Path) -> None:
    root = small(tmp_path, "ad01", limit=3)
    victim = root / "ad01" / "normal_id_01_00000013_hist_librosa.bin"
    victim.write_bytes(bytes(2559))
    error = load_error(root, "ad01")
    assert str(error) == (
        f"1 files in {root / 'ad01'} are smaller than one 2560-byte window:\n"
        f"  {victim.name} is 2559 B (line 2)"
    )


def test_ragged_ad_files_are_flagged(tmp_path: Path) -> None:
    root = small(tmp_path, "ad01", limit=3)
    victim = root / "ad01" / "normal_id_01_00000023_hist_librosa.bin"
    victim.write_bytes(victim.read_bytes()[: 102400 - 3 * 512])
    error = load_error(root, "ad01")
    message = str(error)
    assert message.startswith(f"ragged ad01 files in {root / 'ad01'}: 1 files differ")
    assert "normal_id_01_00000003_hist_librosa.bin, which has 196 windows (102400 B)" in message
    assert "(see docs/measurement.md#datasets)" in message
    assert message.endswith(f"  {victim.name} has 193 windows (100864 B, line 3)")


def test_ad_files_of_another_equal_length_are_fine(tmp_path: Path) -> None:
    # Real files need not be 102,400 B; a partial last window is dropped, as the runner does.
    root = small(tmp_path, "ad01", limit=2)
    for f in (root / "ad01").glob("*.bin"):
        f.write_bytes(f.read_bytes()[: 10 * 512 + 100])
    ds = load_dataset(root, "ad01")
    assert ds.windows_per_file == 6
    assert [i.offset for i in ds.inputs("accuracy")] == [0, 512, 1024, 1536, 2048, 2560] * 2


def test_performance_needs_five_rows_unless_limited(tmp_path: Path) -> None:
    root = small(tmp_path, limit=3)
    ds = load_dataset(root, "kws")
    with pytest.raises(DatasetError, match="performance mode loops over the first 5 rows"):
        ds.inputs("performance")
    assert len(ds.inputs("performance", limit=3)) == 3
    assert len(ds.inputs("performance", limit=2)) == 2
    with pytest.raises(DatasetError, match="unknown mode 'latency'"):
        ds.inputs("latency")


def test_read_notices_a_file_changed_after_the_check(tmp_path: Path) -> None:
    root = small(tmp_path, limit=1)
    ds: Dataset = load_dataset(root, "kws")
    (inp,) = ds.inputs("accuracy")
    inp.path.write_bytes(bytes(10))
    with pytest.raises(DatasetError, match="expected 490 bytes at offset 0, got 10"):
        inp.read()
