"""The benchmark catalogue matches docs/measurement.md#benchmarks (scripts, bauds, voltage),
docs/measurement.md#accuracy-targets (targets per version) and docs/measurement.md#datasets
(classes, sizes); lookups accept ids and aliases."""

from __future__ import annotations

import pytest

from farm.catalog import (
    BENCHMARKS,
    DATASETS,
    MODES,
    VERSIONS,
    BenchmarkError,
    get_benchmark,
    get_dataset_spec,
)
from farm.models import MODELS
from farm.scoring import check_accuracy_target


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("kws01", "kws01"),
        ("kws", "kws01"),
        ("vww", "vww01"),
        ("ic", "ic01"),
        ("ic2", "ic02"),
        ("ic02", "ic02"),
        ("ad", "ad01"),
        ("AD01", "ad01"),
        (" Kws ", "kws01"),
        ("keyword_spotting", "kws01"),
        ("anomaly_detection", "ad01"),
        ("sww", "sww01"),
        ("SWW01", "sww01"),
        ("streaming_wakeword", "sww01"),
    ],
)
def test_lookup_accepts_ids_and_aliases(name: str, expected: str) -> None:
    assert get_benchmark(name).id == expected


def test_unknown_benchmark_lists_the_known_ones() -> None:
    with pytest.raises(BenchmarkError) as info:
        get_benchmark("resnet")
    assert str(info.value) == (
        "unknown benchmark 'resnet' (known: ad01 (ad), ic01 (ic), ic02 (ic2), kws01 (kws), "
        "sww01 (sww), vww01 (vww))"
    )


def test_sww_runs_one_stream_in_energy_mode() -> None:
    # docs/measurement.md#streaming-wakeword: the official `stream` step on the long truth
    # file, in energy mode, at 115200 baud and 3.3 V; no other mode.
    sww = get_benchmark("sww")
    script = sww.script("energy")
    assert (script.loop, script.iterations, script.warmups) == (1, 1, 0)
    assert script.stream == "sww_long_test.json" and script.text() == "stream sww_long_test.json"
    assert sww.streamed and sww.dataset.index == "sww_long_test.json"
    assert (sww.baud("energy"), sww.supply_voltage, sww.checker_dir) == (115200, 3.3, "sww")
    for mode in ("performance", "accuracy"):
        with pytest.raises(BenchmarkError, match="sww01 runs in energy mode only: one stream"):
            sww.script(mode)
    assert sww.versions == ("v1.3", "v1.4")
    assert sww.target().describe() == "false positives <= 8 and false negatives <= 8 (v1.4)"
    assert sww.accepts_firmware("sww01") and not sww.accepts_firmware("kws01")


# docs/measurement.md#accuracy-targets: closed-division targets; ic02 only from v1.4.
TARGETS = {
    "kws01": ("top1", 90.0),
    "vww01": ("top1", 80.0),
    "ic01": ("top1", 85.0),
    "ad01": ("auc", 0.85),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("bench", sorted(TARGETS))
def test_targets_per_version(bench: str, version: str) -> None:
    target = get_benchmark(bench).target(version)
    assert (target.metric, target.threshold, target.version) == (*TARGETS[bench], version)


def test_ic02_exists_only_from_v1_4() -> None:
    ic02 = get_benchmark("ic2")
    assert ic02.versions == ("v1.4",)
    target = ic02.target("1.4")
    assert (target.metric, target.threshold) == ("top1", 91.0)
    with pytest.raises(BenchmarkError, match=r"ic02 is not part of MLPerf Tiny v1\.3"):
        ic02.target("v1.3")
    with pytest.raises(BenchmarkError, match="unknown MLPerf Tiny version"):
        ic02.target("v2.0")
    assert get_benchmark("kws").target().version == "v1.4"


def test_targets_compare_the_printed_rounded_value() -> None:
    # docs/measurement.md#accuracy-targets: 89.95 prints as "90.0" and passes kws; 0.8495
    # prints "0.850".
    kws = check_accuracy_target("kws01", 89.95)
    assert kws.printed == "90.0" and kws.passed
    assert not check_accuracy_target("kws01", 89.94).passed
    ad = check_accuracy_target("ad01", 0.8495)
    assert ad.printed == "0.850" and ad.passed
    assert not check_accuracy_target("ad01", 0.8494).passed
    kws_target, ad_target = get_benchmark("kws").target(), get_benchmark("ad").target()
    assert kws_target.describe() == "top-1 >= 90.0 % (v1.4)"
    assert ad_target.describe() == "AUC >= 0.85 (v1.4)"


# docs/measurement.md#benchmarks: (loop, N, W, reset) per mode; loop None = every row / window.
SCRIPTS = {
    "kws01": {"performance": (5, 70, 10), "accuracy": (None, 1, 0), "energy": (5, 70, 10)},
    "vww01": {"performance": (5, 20, 5), "accuracy": (None, 1, 0), "energy": (5, 20, 5)},
    "ic01": {"performance": (5, 20, 5), "accuracy": (None, 1, 0), "energy": (5, 20, 0)},
    "ic02": {"performance": (5, 20, 5), "accuracy": (None, 1, 0), "energy": (5, 20, 0)},
    "ad01": {"performance": (5, 1500, 10), "accuracy": (None, 1, 0), "energy": (5, 1500, 0)},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bench", sorted(SCRIPTS))
def test_scripts_per_mode(bench: str, mode: str) -> None:
    script = get_benchmark(bench).script(mode)
    assert (script.loop, script.iterations, script.warmups) == SCRIPTS[bench][mode]
    assert script.mode == mode
    expected_reset = 20 if (bench, mode) == ("ad01", "accuracy") else None
    assert script.reset_s == expected_reset


def test_script_text() -> None:
    assert get_benchmark("kws").script("performance").text() == "loop 5: download; infer 70 10"
    assert get_benchmark("ad").script("accuracy").text() == "loop: download; infer 1 0; reset 20"
    assert get_benchmark("ic").script("energy").infer == "infer 20 0"
    with pytest.raises(BenchmarkError, match="unknown mode 'latency'"):
        get_benchmark("ic").script("latency")


def test_ic02_deviation_is_recorded() -> None:
    ic02 = get_benchmark("ic02")
    assert ic02.deviations == (
        "ic02 performance: shipped script loops over all 200 files (ERROR 1); fixed to loop 5",
    )
    assert ic02.script("performance").loop == 5
    assert all(not b.deviations for b in BENCHMARKS.values() if b.id != "ic02")


def test_ic02_uses_ic01_dataset_and_model_facts() -> None:
    ic01, ic02 = get_benchmark("ic01"), get_benchmark("ic02")
    assert ic02.dataset is ic01.dataset and ic02.dataset_id == "ic01"
    assert ic02.model.id == "ic02"
    for fact in ("input_bytes", "max_db_input", "element_bytes", "outputs", "result_format"):
        assert getattr(ic02.model, fact) == getattr(ic01.model, fact)
    assert ic02.firmware_models == ("ic02",)
    assert ic02.accepts_firmware("ic02") and not ic02.accepts_firmware("ic01")
    assert ic01.accepts_firmware("ic01") and not ic01.accepts_firmware("ic02")
    assert get_dataset_spec("ic2").id == "ic01"


@pytest.mark.parametrize(
    ("bench", "checker", "perf_baud"),
    [
        ("kws01", "kws", 115200),
        ("vww01", "vww", 115200),
        ("ic01", "ic", 115200),
        ("ic02", "ic2", 115200),
        ("ad01", "ad", 921600),
    ],
)
def test_bauds_voltage_and_checker_dir(bench: str, checker: str, perf_baud: int) -> None:
    b = get_benchmark(bench)
    assert b.checker_dir == checker
    assert (b.baud("performance"), b.baud("accuracy"), b.baud("energy")) == (
        perf_baud,
        perf_baud,
        9600,
    )
    assert b.supply_voltage == 1.8


def test_datasets_match_measurement_section_4() -> None:
    kws = DATASETS["kws01"]
    assert kws.classes == (
        "down",
        "go",
        "left",
        "no",
        "off",
        "on",
        "right",
        "stop",
        "up",
        "yes",
        "silence",
        "unknown",
    )
    assert kws.class_counts == (92, 92, 81, 89, 70, 84, 75, 78, 84, 89, 80, 86)
    assert kws.rows == 1000
    assert DATASETS["vww01"].classes == ("non-person", "person")
    assert DATASETS["vww01"].class_counts == (500, 500)
    ic = DATASETS["ic01"]
    assert ic.classes[:3] == ("airplane", "automobile", "bird") and ic.classes[-1] == "truck"
    assert ic.class_counts == (20,) * 10
    ad = DATASETS["ad01"]
    assert ad.classes == ("normal", "anomaly")
    assert (ad.class_counts, ad.alt_class_counts) == ((140, 108), (36, 36))
    assert (ad.file_bytes, ad.synth_file_bytes, ad.window_bytes, ad.stride) == (
        None,
        102400,
        2560,
        512,
    )
    assert ad.synth_windows == 196 and kws.synth_windows is None
    assert [d.has_alt for d in DATASETS.values()] == [False, False, False, True, False]
    assert [d.streamed for d in DATASETS.values()] == [False, False, False, False, True]


@pytest.mark.parametrize("bench", sorted(set(BENCHMARKS) - {"sww01"}))
def test_model_facts_agree_with_the_dataset(bench: str) -> None:
    b = BENCHMARKS[bench]
    if b.id != "ic02":
        assert b.model is MODELS[b.id]
    assert len(b.classes) == (2 if b.model.result_format == "ad" else b.model.outputs)
    assert b.input_bytes == (b.dataset.window_bytes or b.dataset.file_bytes)
    assert b.input_format
