"""What a DUT's benchmark firmware knows about each model: input size, output vector, and
how the reference port prints its results (docs/protocols.md#dut-results-lines).

The benchmark catalogue (datasets, modes, scripts, targets) builds on these facts; the
protocol layer and the simulators need only this much.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ResultFormat = Literal["kws", "ic", "vww", "ad", "sww"]

#: Energy-mode firmware talks to the interface board at this baud for every model but sww01,
#: whose firmware runs at 115200 in every mode (docs/protocols.md#bench-topology).
ENERGY_BAUD = 9600


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One MLPerf Tiny model as its firmware sees it."""

    id: str
    input_bytes: int
    """Bytes one inference's input occupies on the wire (ad01: one 2,560-byte window)."""
    max_db_input: int
    """The firmware's ``MAX_DB_INPUT_SIZE``; ``db load`` beyond it is refused
    (docs/protocols.md#dut-errors)."""
    element_bytes: int
    """Size of one input element: the ``Input db has K elemented`` message counts elements."""
    outputs: int
    """Length of the result vector printed by ``m-results-[...]``."""
    result_format: ResultFormat
    default_baud: int
    """Reference DUT baud in performance and accuracy mode (energy mode: ``energy_baud``)."""
    reference_latency_s: float
    """Per-inference time on the reference board (NUCLEO-L4R5ZI): the compute budget a host
    assumes for a board it has not measured yet (the official N values are sized from it).
    sww01: the processing time of one 32 ms audio frame."""
    energy_baud: int = ENERGY_BAUD
    """DUT baud of the energy build (the interface board's DUT link)."""

    @property
    def input_elements(self) -> int:
        """Elements one inference consumes (what the firmware expects in ``th_load_tensor``)."""
        return self.input_bytes // self.element_bytes


MODELS: dict[str, ModelSpec] = {
    m.id: m
    for m in (
        ModelSpec("kws01", 490, 490, 1, 12, "kws", 115200, 0.181),
        ModelSpec("vww01", 27648, 27648, 1, 2, "vww", 115200, 0.603),
        ModelSpec("ic01", 3072, 3072, 1, 10, "ic", 115200, 0.704),
        # ic02 (v1.4) takes the same 32x32x3 input and dataset as ic01 with a larger model;
        # the reference figure is ic01's until a measured one exists.
        ModelSpec("ic02", 3072, 3072, 1, 10, "ic", 115200, 0.704),
        ModelSpec("ad01", 2560, 5120, 4, 1, "ad", 921600, 0.0104),
        # sww01 streams audio: its "input" is one I2S frame (512 stereo int16 samples, 32 ms)
        # and its output the wakeword activation (int8) of each frame; its firmware talks at
        # 115200 in every mode. The reference board's duty cycle, 0.56 of a 32 ms frame, gives
        # its per-frame processing time.
        ModelSpec("sww01", 2048, 2048, 2, 1, "sww", 115200, 0.0179, energy_baud=115200),
    )
}


def get_model(model_id: str) -> ModelSpec:
    """Look a model up by id; an unknown id raises a ``KeyError`` that lists the known ones."""
    try:
        return MODELS[model_id]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise KeyError(f"unknown model {model_id!r} (known: {known})") from None


#: One printed value of ``m-results-[...]`` per result format: a lost or corrupted digit
#: still parses as a float, so the client checks the exact shape the port prints.
RESULT_FIELD = {
    "kws": re.compile(r"0\.\d{3,4}"),
    "ic": re.compile(r"-?\d+\.\d{3}"),
    "vww": re.compile(r"-?\d+\.\d{3}"),
    "ad": re.compile(r"-?\d+\.\d{3}"),
    "sww": re.compile(r"-?\d+"),
}


def results_well_formed(fmt: ResultFormat, body: str, outputs: int) -> bool:
    """True if ``body`` (the text inside ``m-results-[...]``) is exactly what the reference
    port prints for ``outputs`` values: right count, right digits (empty fields ignored)."""
    fields = [f for f in body.split(",") if f]
    return len(fields) == outputs and all(RESULT_FIELD[fmt].fullmatch(f) for f in fields)


def format_results(fmt: ResultFormat, values: Sequence[float]) -> str:
    """The text inside ``m-results-[...]`` exactly as the reference port prints it.

    kws builds ``0.ddd`` from integer math (truncated, so 1.0 prints ``0.1000``); ic prints
    ``%0.3f`` values; vww prints ``%0.3f,`` per value (the trailing comma is a loop bug the
    host must tolerate); ad prints one ``%0.3f`` reconstruction error.
    """
    if fmt == "kws":
        return ",".join(f"0.{int(v * 1000):03d}" for v in values)
    if fmt == "vww":
        return "".join(f"{v:0.3f}," for v in values)
    return ",".join(f"{v:0.3f}" for v in values)
