"""The audio path of a simulated streaming-wakeword (sww01) bench: the wav files on the
interface board's SD card, the I2S link to the DUT, and the DUT's detector.

* :class:`SyntheticWav`: a wav built from a truth entry (the real recordings are not
  public): 16-bit stereo silence, with a 1 kHz tone wherever the entry says the wakeword is
  spoken. Frames are made on demand, so a 20-minute file costs nothing until it is played.
* :class:`I2sBus`: the I2S link. The board clocks the file out at its sample rate; the DUT's
  DMA completes a frame (512 stereo samples, 32 ms at 16 kHz) when its last sample has
  arrived, so :meth:`I2sBus.send` hands each frame over with the time it completed.
* :class:`Detector`: what the DUT's model makes of each frame, configurable per board: it
  hears a wakeword where the frame holds the tone, detects it ``delay_s`` after its onset on
  ``frames`` consecutive frames, except the occurrences it is told to miss, and adds false
  detections at given times of the wav. Its output is the frame's int8 activation: above the
  firmware's threshold exactly on the detecting frames.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from farm.protocol.sww import CHANNELS, FRAME_SAMPLES
from farm.sww_truth import TruthEntry

#: The synthetic wakeword: a 1 kHz tone at about a quarter of full scale.
TONE_HZ = 1000.0
TONE_AMPLITUDE = 8000
#: A frame whose mean absolute sample exceeds this holds (part of) a wakeword.
VOICE_LEVEL = 500
#: Activation of a detecting frame, and the highest one a frame without a detection gets.
DETECTED = 127
QUIET_MAX = 100

FrameListener = Callable[[float, bytes], None]


@dataclass(frozen=True, slots=True)
class SyntheticWav:
    """The wav of one truth entry, as the board plays it."""

    entry: TruthEntry

    @property
    def name(self) -> str:
        """Its file name on the SD card."""
        return self.entry.wav_file

    @property
    def seconds(self) -> float:
        """How long ``play`` takes."""
        return self.entry.length_s

    @property
    def frame_s(self) -> float:
        """One DMA frame's duration at the file's sample rate."""
        return FRAME_SAMPLES / self.entry.sample_rate

    @property
    def frames(self) -> int:
        """Whole frames in the file (a trailing partial frame never completes a DMA)."""
        return round(self.entry.length_s * self.entry.sample_rate) // FRAME_SAMPLES

    def frame(self, k: int) -> bytes:
        """Frame ``k``: 512 stereo int16 samples, little-endian, both channels alike."""
        rate = self.entry.sample_rate
        first = k * FRAME_SAMPLES
        silence = bytes(FRAME_SAMPLES * CHANNELS * 2)
        t0, t1 = first / rate, (first + FRAME_SAMPLES - 1) / rate
        spans = [(a, b) for a, b in self.entry.windows if a <= t1 and b >= t0]
        if not spans:
            return silence  # most frames: nothing to compute
        samples = array("h", silence)
        for n in range(FRAME_SAMPLES):
            t = (first + n) / rate
            if any(a <= t <= b for a, b in spans):
                v = round(TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * t))
                samples[2 * n] = samples[2 * n + 1] = v
        return samples.tobytes()


@dataclass
class I2sBus:
    """The I2S link from the interface board to the DUT. Listeners get ``(time, frame)``
    for every frame, at the time its last sample arrived."""

    _listeners: list[FrameListener] = field(default_factory=list)
    frames_sent: int = 0

    def subscribe(self, listener: FrameListener) -> None:
        """Call ``listener(time, frame)`` for every future frame."""
        self._listeners.append(listener)

    def send(self, t: float, frame: bytes) -> None:
        """A frame completed at time ``t``."""
        self.frames_sent += 1
        for listener in self._listeners:
            listener(t, frame)


def voice_level(frame: bytes) -> float:
    """Mean absolute sample of the left channel."""
    samples = array("h", frame)
    left = samples[::CHANNELS]
    return sum(abs(v) for v in left) / max(len(left), 1)


@dataclass
class Detector:
    """The simulated model of one sww DUT (see the module docstring).

    ``miss``: wakeword occurrences (0-based, in the order the stream plays them) it does not
    detect; ``false_at_s``: times (seconds from the start of the stream) at which it detects
    a wakeword that is not there; ``delay_s``: from a word's onset to its first detecting
    frame; ``frames``: consecutive frames that detect each word. Reset at every ``start``.
    """

    frame_s: float
    miss: frozenset[int] = frozenset()
    false_at_s: tuple[float, ...] = ()
    delay_s: float = 0.2
    frames: int = 2
    occurrences: int = 0
    """Wakewords heard since the stream started (detected or missed)."""
    _k: int = 0
    _in_word: bool = False
    _fire: set[int] = field(default_factory=set)
    _delay_frames: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        self._delay_frames = max(1, round(self.delay_s / self.frame_s))
        self.reset()

    def reset(self) -> None:
        """A new stream starts: frame 0 is the next one."""
        self.occurrences = self._k = 0
        self._in_word = False
        self._fire = {int(t / self.frame_s) for t in self.false_at_s}

    def activation(self, frame: bytes) -> int:
        """The int8 activation the model gives the next frame of the stream."""
        k = self._k
        self._k += 1
        level = voice_level(frame)
        voiced = level > VOICE_LEVEL
        if voiced and not self._in_word:
            if self.occurrences not in self.miss:
                first = k + self._delay_frames
                self._fire.update(range(first, first + self.frames))
            self.occurrences += 1
        self._in_word = voiced
        if k in self._fire:
            self._fire.discard(k)
            return DETECTED
        # Below the threshold, rising with the sound: a plausible activation trace.
        return min(QUIET_MAX, int(level * QUIET_MAX / TONE_AMPLITUDE))


def frame_times(start: float, frame_s: float, frames: int) -> Iterable[tuple[int, float]]:
    """``(k, time)`` at which each frame of a stream started at ``start`` completes."""
    for k in range(frames):
        yield k, start + (k + 1) * frame_s
