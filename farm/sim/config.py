"""Configuration of simulated boards (``farm sim --config FILE``), validated with pydantic.

Errors name the file, the line and the field, e.g.
``boards.yaml:7: boards[1].latency.median_s: Input should be greater than 0``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from farm.models import MODELS
from farm.protocol import interface, lpm01a
from farm.protocol.sww import FRAME_S
from farm.sim.faults import FaultSpec
from farm.sww_truth import OFFICIAL_TRUTH, TruthFile, load_truth, official_truth
from farm.yaml_config import ConfigError, load_yaml_model

#: Default median inference time per model: a fast Cortex-M7-class board, so that simulated
#: runs take seconds (the reference L4R5ZI is 10-70x slower; set ``latency`` to mimic it).
#: sww01's is the processing time of one 32 ms audio frame (a duty cycle of 0.5).
DEFAULT_MEDIAN_S = {
    "kws01": 0.005,
    "vww01": 0.030,
    "ic01": 0.040,
    "ic02": 0.060,
    "ad01": 0.001,
    "sww01": 0.016,
}
#: Default quality: top-1 accuracy for classifiers, AUC for ad01 (above the closed targets);
#: sww01's detections come from its ``sww`` detector settings instead.
DEFAULT_QUALITY = {
    "kws01": 0.91,
    "vww01": 0.82,
    "ic01": 0.87,
    "ic02": 0.92,
    "ad01": 0.87,
    "sww01": 1.0,
}

INTERFACE_BAUD = interface.HOST_BAUD
MONITOR_BAUD = lpm01a.HOST_BAUD


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyConfig(_Strict):
    """Inference-time distribution (see :class:`farm.sim.latency.LatencyModel`)."""

    median_s: float | None = Field(None, gt=0)
    spread: float = Field(0.02, ge=0)
    tail_probability: float = Field(0.0, ge=0, le=1)
    tail_factor: float = Field(3.0, ge=1)


class PowerConfig(_Strict):
    """DUT power draw while idle and while computing, in watts."""

    idle_w: float = Field(0.005, ge=0)
    active_w: float = Field(0.030, ge=0)


class SwwConfig(_Strict):
    """The streaming-wakeword side of a board: the wav files on its interface board's SD card
    and what the sww01 DUT's model detects in them (:class:`farm.sim.audio.Detector`)."""

    truth: list[str] = Field(default_factory=lambda: list(OFFICIAL_TRUTH))
    """Truth files whose wavs are on the SD card: official names or paths to JSON files."""
    miss: list[int] = Field(default_factory=list)
    """Wakewords (0-based, in the order a stream plays them) the DUT does not detect."""
    false_at_s: list[float] = Field(default_factory=list)
    """Times (seconds into the wav) at which the DUT detects a wakeword that is not there."""
    delay_s: float = Field(0.2, ge=2 * FRAME_S, le=2.0)
    """From a wakeword's onset to its first detecting frame."""
    frames: int = Field(2, ge=1, le=30)
    """Consecutive frames that detect each wakeword."""

    @field_validator("miss")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if any(i < 0 for i in value):
            raise ValueError("wakeword numbers start at 0")
        return value

    @field_validator("false_at_s")
    @classmethod
    def _times(cls, value: list[float]) -> list[float]:
        if any(not t >= 0 for t in value):
            raise ValueError("false detection times must be >= 0 s")
        return value

    @model_validator(mode="after")
    def _readable_truth(self) -> SwwConfig:
        wavs: dict[str, str] = {}
        for truth in self.truth_files():
            for entry in truth.entries:
                if entry.wav_file in wavs and wavs[entry.wav_file] != truth.name:
                    raise ValueError(
                        f"{entry.wav_file} is in both {wavs[entry.wav_file]} and {truth.name}"
                    )
                wavs[entry.wav_file] = truth.name
        return self

    def truth_files(self) -> list[TruthFile]:
        """The truth files, read (an official name is the shipped file; anything else a path,
        relative to the working directory)."""
        return [official_truth(t) if t in OFFICIAL_TRUTH else load_truth(t) for t in self.truth]


class BoardConfig(_Strict):
    """One simulated board: a DUT, and with ``energy`` an interface board and an LPM01A."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    model: str
    firmware: Literal["performance", "energy"] = "performance"
    energy: bool = False
    """Wire an interface board and an LPM01A energy monitor to this board."""
    baud: int | None = Field(None, gt=0)
    """DUT baud of the performance build (default: the model's reference baud)."""
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    quality: float | None = Field(None, ge=0, le=1)
    """Top-1 accuracy (classifiers) or AUC (ad01) on synthetic inputs."""
    power: PowerConfig = Field(default_factory=PowerConfig)
    clock_start_us: int = Field(0, ge=0, lt=2**32)
    """The µs counter's value at boot (set near 2**32 to test the wrap)."""
    boot_s: float = Field(0.05, ge=0)
    rx_fifo: int = Field(1, ge=0)
    pulse_hold_s: float = Field(0.001, gt=0)
    vendor: str = "unspecified"
    usb_serial: str | None = None
    faults: list[FaultSpec] = Field(default_factory=list)
    seed: int | None = None
    sww: SwwConfig = Field(default_factory=SwwConfig)
    """Streaming wakeword: the SD card's wavs and the sww01 DUT's detector."""

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(sorted(MODELS))}")
        return value

    @model_validator(mode="after")
    def _energy_needs_hardware(self) -> BoardConfig:
        if self.firmware == "energy" and not self.energy:
            raise ValueError(
                "firmware 'energy' talks only through an interface board: set energy: true"
            )
        if self.firmware == "energy" and any(
            f.kind == "disconnect" and f.target == "dut" for f in self.faults
        ):
            raise ValueError(
                "a 'disconnect' fault unplugs the DUT's USB port, which the energy firmware "
                "does not talk on (it talks through the interface board)"
            )
        if self.model == "sww01" and not self.median_s < FRAME_S:
            raise ValueError(
                f"latency.median_s {self.median_s} s: an sww01 DUT must process a frame in "
                f"less than the {FRAME_S * 1000:g} ms it lasts"
            )
        return self

    @property
    def dut_baud(self) -> int:
        """Baud of the DUT's UART in use (energy builds run at their model's energy baud:
        9600, sww01 115200)."""
        if self.firmware == "energy":
            return MODELS[self.model].energy_baud
        return self.baud or MODELS[self.model].default_baud

    @property
    def median_s(self) -> float:
        """Median inference time."""
        return self.latency.median_s or DEFAULT_MEDIAN_S[self.model]

    @property
    def target_quality(self) -> float:
        """The accuracy or AUC this board reaches."""
        return self.quality if self.quality is not None else DEFAULT_QUALITY[self.model]

    def serial_number(self, kind: str) -> str:
        """A stable USB serial number per board and device kind (like a real ST-LINK's)."""
        if kind == "dut" and self.usb_serial:
            return self.usb_serial
        return hashlib.sha1(f"{self.id}/{kind}".encode()).hexdigest()[:24].upper()


class SimConfig(_Strict):
    """A set of simulated boards."""

    seed: int = 0
    boards: list[BoardConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> SimConfig:
        seen: set[str] = set()
        for board in self.boards:
            if board.id in seen:
                raise ValueError(f"board id {board.id!r} is used twice")
            seen.add(board.id)
        return self


def generated_config(
    count: int | None, models: list[str] | None, energy: int, seed: int
) -> SimConfig:
    """Boards for ``farm sim --boards N [--models ...]``: one board per listed model, or N
    boards cycling the four models; the last ``energy`` boards get an interface board and
    a monitor."""
    order = ["kws01", "vww01", "ic01", "ad01"]
    if models:
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise ConfigError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(order)}")
        chosen = models if count is None else [models[i % len(models)] for i in range(count)]
    else:
        chosen = [order[i % len(order)] for i in range(count or len(order))]
    boards = []
    for i, model in enumerate(chosen):
        wired = i >= len(chosen) - energy
        boards.append(
            BoardConfig(
                id=f"sim-{i + 1:02d}-{model}",
                model=model,
                energy=wired,
                firmware="energy" if wired else "performance",
            )
        )
    return SimConfig(seed=seed, boards=boards)


def load_config(path: str | Path) -> SimConfig:
    """Read and validate a YAML config; raise :class:`ConfigError` naming file and line."""
    return load_yaml_model(path, SimConfig)
