"""The synthetic-input scheme shared by the stand-in dataset generator and the simulated DUT.

A stand-in dataset must make a simulated board reach an accuracy (classifiers) or AUC
(anomaly detection) chosen in that *board's* config, so the same dataset shows different
boards with different quality. Each synthetic input therefore carries, in a small header,
its true label and a "difficulty" ``u`` in [0, 1); the generator spreads ``u`` evenly over
the files (a shuffled ``(i + 0.5) / n``), and the simulated DUT:

- classifiers: answers the true label iff ``u < accuracy``, else a wrong class; over ``n``
  files with u = (i + 0.5) / n exactly ``ceil(accuracy * n - 0.5)`` are right (accuracy × n
  to the nearest integer, a half rounding down);
- anomaly detection: scores a normal file ``u`` and an anomalous one
  ``(2A - 1) + u * (2 - 2A)`` (for A >= 0.5; mirrored below), so that the probability an
  anomaly outranks a normal file, which is the ROC AUC, is ``A`` up to the discreteness of
  ``n`` files.

The AD header sits in a 512-byte block (the stride) that fills the whole file, so every
2,560-byte window the runner cuts from it starts with the same header and yields the same
score. Inputs without the header (a real dataset) still give a deterministic output: a
pseudo-random vector derived from a hash of the bytes.
"""

from __future__ import annotations

import hashlib
import random
import struct

from farm.models import ModelSpec

MAGIC = b"TFSY"
_HEADER = struct.Struct(">4sBBI")  # magic, version, label, u * 2**32
VERSION = 1
#: AD inputs repeat a block of this size (the official stride), so every window is alike.
AD_BLOCK = 512


def encode_input(model: ModelSpec, label: int, u: float, *, file_bytes: int, seed: int) -> bytes:
    """A synthetic input of ``file_bytes`` bytes carrying ``label`` and difficulty ``u``.

    The filler after the header is pseudo-random (seeded), so files differ byte-wise even with
    equal headers.
    """
    if not 0.0 <= u < 1.0:
        raise ValueError(f"difficulty must be in [0, 1), got {u}")
    header = _HEADER.pack(MAGIC, VERSION, label, int(u * 2**32))
    block = AD_BLOCK if model.result_format == "ad" else file_bytes
    rng = random.Random(seed)
    body = header + rng.randbytes(block - len(header))
    return (body * (file_bytes // block + 1))[:file_bytes]


def decode_input(data: bytes) -> tuple[int, float] | None:
    """The ``(label, u)`` a synthetic input carries, or ``None`` for any other input."""
    if len(data) < _HEADER.size:
        return None
    magic, version, label, u = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        return None
    return label, u / 2**32


def ad_score(label: int, u: float, auc: float) -> float:
    """The reconstruction error a simulated AD board reports (see the module docstring)."""
    if label == 0:
        return u
    if auc >= 0.5:
        return (2 * auc - 1) + u * (2 - 2 * auc)
    return u * 2 * auc


def simulated_output(model: ModelSpec, tensor: bytes, quality: float) -> list[float]:
    """The output vector a simulated board with ``quality`` (top-1 accuracy for classifiers,
    AUC for anomaly detection, both in [0, 1]) prints for ``tensor``."""
    decoded = decode_input(tensor)
    if decoded is None:
        # Not ours: a deterministic pseudo-random answer, stable across runs and boards.
        rng = random.Random(hashlib.blake2b(tensor, digest_size=8).digest())
        label, u = rng.randrange(max(model.outputs, 2)), rng.random()
    else:
        label, u = decoded
    if model.result_format == "ad":
        return [ad_score(label % 2, u, quality)]
    classes = model.outputs
    label %= classes
    predicted = label if u < quality else (label + 1 + int(u * 1e6) % (classes - 1)) % classes
    # A confident but varied top score: always the unique maximum (> 0.5 > the rest).
    top = 0.55 + 0.4 * ((u * 7919) % 1.0)
    rest = (1.0 - top) / (classes - 1)
    return [top if i == predicted else rest for i in range(classes)]
