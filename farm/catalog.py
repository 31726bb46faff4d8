"""The MLPerf Tiny benchmark catalogue: what a run of each benchmark needs to know.

Per benchmark: its dataset (folder, class names, counts, file sizes), the firmware model facts
(``farm.models``), the metric and closed-division quality target per MLPerf Tiny version
(docs/measurement.md#accuracy-targets), the official runner's script per mode
(docs/measurement.md#benchmarks), reference baud rates,
supply voltage and the submission checker's directory name. sww01 (streaming wakeword) has a
single script, in energy mode: one ``stream`` of its truth file's wav gives its accuracy,
throughput and power (docs/measurement.md#streaming-wakeword). Where the farm deliberately does
something else than the shipped runner (ic02's performance loop count), the benchmark lists
the deviation so every run can record it.

Everything here is static data: the scripts are read once, at import, from the package's
``data/scripts/tests_<mode>.yaml``, the official runner's files in its own grammar
(``farm.script_grammar``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Literal, get_args

import yaml

from farm.models import MODELS, ModelSpec
from farm.script_grammar import Script, parse_script_file
from farm.sww_truth import LONG_TRUTH

Mode = Literal["performance", "accuracy", "energy"]
MODES: tuple[Mode, ...] = get_args(Mode)
Metric = Literal["top1", "auc", "sww"]

#: MLPerf Tiny versions whose closed-division targets are known (checker MODEL_CONFIG).
VERSIONS: tuple[str, ...] = ("v1.0", "v1.1", "v1.2", "v1.3", "v1.4")
LATEST_VERSION = "v1.4"

#: DUT supply the power board sets for every benchmark but sww01, which runs at 3.3 V.
SUPPLY_VOLTAGE = 1.8
SWW_SUPPLY_VOLTAGE = 3.3


class BenchmarkError(LookupError):
    """An unknown or mis-versioned benchmark, or a mode it has no script for, was
    requested."""


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """An evaluation set in the official layout ``<root>/<id>/y_labels.csv`` + its files."""

    id: str
    classes: tuple[str, ...]
    """Class names in label order (label ``k`` is ``classes[k]``)."""
    class_counts: tuple[int, ...]
    """Rows per label in the official ``y_labels.csv``."""
    file_bytes: int | None
    """Exact size every file must have; ``None`` for ad01, whose files hold any whole number
    of windows (the same number in every file)."""
    synth_file_bytes: int
    """Size of the files ``farm dataset synth`` writes (ad01: 200 frames x 128 x 4 B, an
    assumption: the real binaries are not public, docs/measurement.md#datasets)."""
    window_bytes: int | None = None
    """ad01: bytes per window (the index's ``bytes_to_send``); ``None`` otherwise."""
    stride: int | None = None
    """ad01: bytes between window starts (the index's ``stride``); ``None`` otherwise."""
    alt_class_counts: tuple[int, ...] | None = None
    """Rows per label of ``y_labels_alt.csv`` where one exists (ad01, accepted since v1.2)."""
    index: str = "y_labels.csv"
    """The file in the dataset folder that says what to run: the index of the inputs, or
    sww01's truth file (its wav files are on the interface board's SD card)."""

    @property
    def streamed(self) -> bool:
        """True for sww01: a truth file of wav files to stream, not files to download."""
        return self.index != "y_labels.csv"

    @property
    def rows(self) -> int:
        """Rows of the official ``y_labels.csv``."""
        return sum(self.class_counts)

    @property
    def has_alt(self) -> bool:
        """Whether the official set ships an alternative index ``y_labels_alt.csv``."""
        return self.alt_class_counts is not None

    @property
    def synth_windows(self) -> int | None:
        """Windows per synthesized ad01 file (196); ``None`` for the classifiers."""
        if self.window_bytes is None or self.stride is None:
            return None
        return (self.synth_file_bytes - self.window_bytes) // self.stride + 1


@dataclass(frozen=True, slots=True)
class QualityTarget:
    """A closed-division quality target. (Whether a value meets it is the checker's rounding
    rule, which lives with the rest of the scoring: ``farm.scoring.check_accuracy_target``.)"""

    metric: Metric
    threshold: float
    """Top-1 in percent (e.g. 90.0), AUC in [0, 1] (e.g. 0.85), or sww01's largest number
    of false positives, and of false negatives (8)."""
    version: str

    def describe(self) -> str:
        """Human-readable form, e.g. ``top-1 >= 90.0 % (v1.4)``."""
        if self.metric == "top1":
            return f"top-1 >= {self.threshold:.1f} % ({self.version})"
        if self.metric == "sww":
            n = int(self.threshold)
            return f"false positives <= {n} and false negatives <= {n} ({self.version})"
        return f"AUC >= {self.threshold:.2f} ({self.version})"


@dataclass(frozen=True, slots=True)
class Benchmark:
    """One MLPerf Tiny benchmark as the farm runs it."""

    id: str
    name: str
    """The official runner's long name (``keyword_spotting``, ...)."""
    alias: str
    """Short name, which is also the submission checker's ``<model>`` directory."""
    model: ModelSpec
    dataset: DatasetSpec
    input_format: str
    metric: Metric
    targets: Mapping[str, float]
    """Closed-division threshold per MLPerf Tiny version where the benchmark exists."""
    scripts: Mapping[Mode, Script]
    """The scripts the farm runs (official ones, with ``deviations`` applied)."""
    deviations: tuple[str, ...] = ()
    """Where the farm's scripts differ from the shipped runner's, one record each."""
    firmware_models: tuple[str, ...] = ()
    """Model ids (``m-model-[...]``) a DUT may report for this benchmark."""
    supply_voltage: float = SUPPLY_VOLTAGE
    bauds: Mapping[Mode, int] = field(default_factory=dict)
    mode_note: str = ""
    """Why the benchmark has no script in the modes it lacks (sww01)."""

    @property
    def dataset_id(self) -> str:
        """The dataset folder under the dataset root (ic02 uses ``ic01``)."""
        return self.dataset.id

    @property
    def checker_dir(self) -> str:
        """The submission checker's ``<model>`` directory name (``ad``, ``ic``, ``ic2``, ...)."""
        return self.alias

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in label order."""
        return self.dataset.classes

    @property
    def input_bytes(self) -> int:
        """Bytes of one inference's input (ad01: one window)."""
        return self.model.input_bytes

    @property
    def versions(self) -> tuple[str, ...]:
        """MLPerf Tiny versions that include this benchmark."""
        return tuple(v for v in VERSIONS if v in self.targets)

    def target(self, version: str = LATEST_VERSION) -> QualityTarget:
        """The closed-division target in ``version`` (``v1.4`` or ``1.4``)."""
        v = _version(version)
        if v not in self.targets:
            raise BenchmarkError(
                f"{self.id} is not part of MLPerf Tiny {v} (it is in {', '.join(self.versions)})"
            )
        return QualityTarget(self.metric, self.targets[v], v)

    def script(self, mode: str) -> Script:
        """The script the farm runs in ``mode`` (performance, accuracy or energy)."""
        try:
            return self.scripts[mode]  # type: ignore[index]
        except KeyError:
            if mode in MODES:
                raise BenchmarkError(
                    f"{self.id} runs in {' and '.join(self.scripts)} mode only"
                    + (f": {self.mode_note}" if self.mode_note else "")
                ) from None
            raise BenchmarkError(
                f"unknown mode {mode!r} for {self.id} (known: {', '.join(MODES)})"
            ) from None

    @property
    def streamed(self) -> bool:
        """True for sww01, whose one script streams audio instead of downloading inputs."""
        return self.dataset.streamed

    def baud(self, mode: str) -> int:
        """Reference DUT baud in ``mode`` (energy: the interface board's DUT link)."""
        return self.bauds[self.script(mode).mode]

    def accepts_firmware(self, model_id: str) -> bool:
        """Whether a DUT reporting ``m-model-[model_id]`` runs this benchmark."""
        return model_id in self.firmware_models


def _version(version: str) -> str:
    v = version if version.startswith("v") else f"v{version}"
    if v not in VERSIONS:
        raise BenchmarkError(
            f"unknown MLPerf Tiny version {version!r} (known: {', '.join(VERSIONS)})"
        )
    return v


def _default_scripts() -> dict[str, dict[Mode, Script]]:
    """The farm's scripts per benchmark and mode, from the package's ``tests_<mode>.yaml``
    (the official runner's files, with the deviations the benchmarks record)."""
    out: dict[str, dict[Mode, Script]] = {}
    for mode in MODES:
        where = f"farm/data/scripts/tests_{mode}.yaml"
        text = resources.files("farm").joinpath(f"data/scripts/tests_{mode}.yaml").read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        assert node is not None, where
        entries = parse_script_file(
            yaml.safe_load(text),
            node,
            where,
            mode,
            sized=True,
            source=None,
        )
        for key, entry in entries.items():
            out.setdefault(key, {})[mode] = entry.script
    return out


_SCRIPTS = _default_scripts()


def _scripts(benchmark: str) -> Mapping[Mode, Script]:
    return MappingProxyType(_SCRIPTS[benchmark])


def _bauds(model: ModelSpec) -> Mapping[Mode, int]:
    return MappingProxyType(
        {
            "performance": model.default_baud,
            "accuracy": model.default_baud,
            "energy": model.energy_baud,
        }
    )


def _targets(threshold: float, since: str = "v1.0") -> Mapping[str, float]:
    return MappingProxyType({v: threshold for v in VERSIONS[VERSIONS.index(since) :]})


_CIFAR10 = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

DATASETS: dict[str, DatasetSpec] = {
    d.id: d
    for d in (
        DatasetSpec(
            "kws01",
            (
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
            ),
            (92, 92, 81, 89, 70, 84, 75, 78, 84, 89, 80, 86),
            490,
            490,
        ),
        DatasetSpec("vww01", ("non-person", "person"), (500, 500), 27648, 27648),
        DatasetSpec("ic01", _CIFAR10, (20,) * 10, 3072, 3072),
        DatasetSpec(
            "ad01",
            ("normal", "anomaly"),
            (140, 108),
            None,
            200 * 128 * 4,
            window_bytes=2560,
            stride=512,
            alt_class_counts=(36, 36),
        ),
        # sww01's "rows" are the wakewords of the official long truth file: 50 in 1200 s.
        DatasetSpec("sww01", ("marvin",), (50,), None, 0, index=LONG_TRUTH),
    )
}

# ic02 firmware shares ic01's input and output; farm.models may or may not list it yet.
_IC02_MODEL = MODELS.get("ic02") or dataclasses.replace(MODELS["ic01"], id="ic02")

_IC02_DEVIATION = (
    "ic02 performance: shipped script loops over all 200 files (ERROR 1); fixed to loop 5"
)

BENCHMARKS: dict[str, Benchmark] = {
    b.id: b
    for b in (
        Benchmark(
            id="kws01",
            name="keyword_spotting",
            alias="kws",
            model=MODELS["kws01"],
            dataset=DATASETS["kws01"],
            input_format="490 B = 49 frames x 10 MFCC features, int8",
            metric="top1",
            targets=_targets(90.0),
            scripts=_scripts("kws01"),
            firmware_models=("kws01",),
            bauds=_bauds(MODELS["kws01"]),
        ),
        Benchmark(
            id="vww01",
            name="person_detection",
            alias="vww",
            model=MODELS["vww01"],
            dataset=DATASETS["vww01"],
            input_format="27,648 B = 96x96x3 uint8 RGB, row-major, channels interleaved",
            metric="top1",
            targets=_targets(80.0),
            scripts=_scripts("vww01"),
            firmware_models=("vww01",),
            bauds=_bauds(MODELS["vww01"]),
        ),
        Benchmark(
            id="ic01",
            name="image_classification",
            alias="ic",
            model=MODELS["ic01"],
            dataset=DATASETS["ic01"],
            input_format="3,072 B = 32x32x3 uint8 RGB, channels interleaved (not CIFAR planar)",
            metric="top1",
            targets=_targets(85.0),
            scripts=_scripts("ic01"),
            firmware_models=("ic01",),
            bauds=_bauds(MODELS["ic01"]),
        ),
        Benchmark(
            id="ic02",
            name="image_classification",
            alias="ic2",
            model=_IC02_MODEL,
            dataset=DATASETS["ic01"],
            input_format="3,072 B = 32x32x3 uint8 RGB, channels interleaved (ic01's dataset)",
            metric="top1",
            targets=_targets(91.0, since="v1.4"),
            # The shipped performance script has no loop count; the farm's has `loop 5`,
            # the fix recorded in `deviations`.
            scripts=_scripts("ic02"),
            deviations=(_IC02_DEVIATION,),
            firmware_models=("ic02",),
            bauds=_bauds(_IC02_MODEL),
        ),
        Benchmark(
            id="ad01",
            name="anomaly_detection",
            alias="ad",
            model=MODELS["ad01"],
            dataset=DATASETS["ad01"],
            input_format=(
                "float32 LE log-mel spectrogram, 128 bins per frame, frame-major; "
                "windows of 2,560 B (5 frames) every 512 B (1 frame)"
            ),
            metric="auc",
            targets=_targets(0.85),
            scripts=_scripts("ad01"),
            firmware_models=("ad01",),
            bauds=_bauds(MODELS["ad01"]),
        ),
        Benchmark(
            id="sww01",
            name="streaming_wakeword",
            alias="sww",
            model=MODELS["sww01"],
            dataset=DATASETS["sww01"],
            input_format=(
                "wav files on the interface board's SD card, 16 kHz 16-bit stereo, played to "
                "the DUT over I2S and processed in 512-sample (32 ms) frames"
            ),
            metric="sww",
            targets=_targets(8, since="v1.3"),
            scripts=_scripts("sww01"),
            firmware_models=("sww01",),
            supply_voltage=SWW_SUPPLY_VOLTAGE,
            bauds=_bauds(MODELS["sww01"]),
            mode_note=(
                "one stream of the truth file's wav, measured by the energy monitor, gives "
                "its accuracy, throughput and power"
            ),
        ),
    )
}

_ALIASES: dict[str, str] = {
    **{b.alias: b.id for b in BENCHMARKS.values()},
    **{b.name: b.id for b in BENCHMARKS.values() if b.id != "ic02"},
}


def known_benchmarks() -> str:
    """The accepted names, for error and help messages: ``ad01 (ad), ic01 (ic), ...``."""
    return ", ".join(f"{b.id} ({b.alias})" for b in sorted(BENCHMARKS.values(), key=lambda b: b.id))


def get_benchmark(name: str) -> Benchmark:
    """Look a benchmark up by id (``kws01``), short alias (``kws``, which is also the checker
    directory) or official long name (``keyword_spotting``), case-insensitively.

    Raises ``BenchmarkError`` for anything else; the message lists the accepted names.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    raise BenchmarkError(f"unknown benchmark {name!r} (known: {known_benchmarks()})")


def get_dataset_spec(name: str) -> DatasetSpec:
    """The dataset of a benchmark, or a dataset by its folder id (``ic02`` -> ``ic01``)."""
    key = name.strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    return get_benchmark(name).dataset
