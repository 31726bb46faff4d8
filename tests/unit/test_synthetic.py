"""The synthetic-input scheme: a stand-in dataset yields the accuracy or AUC a board chooses."""

from __future__ import annotations

import random

import pytest

from farm.models import MODELS
from farm.synthetic import decode_input, encode_input, simulated_output


def stratified(n: int, seed: int) -> list[float]:
    us = [(i + 0.5) / n for i in range(n)]
    random.Random(seed).shuffle(us)
    return us


@pytest.mark.parametrize(("model", "quality"), [("kws01", 0.913), ("ic01", 0.87), ("vww01", 0.8)])
def test_classifier_top1_is_exactly_the_chosen_accuracy(model: str, quality: float) -> None:
    spec = MODELS[model]
    n = 1000
    correct = 0
    for i, u in enumerate(stratified(n, 1)):
        label = i % spec.outputs
        data = encode_input(spec, label, u, file_bytes=spec.input_bytes, seed=i)
        assert len(data) == spec.input_bytes
        out = simulated_output(spec, data, quality)
        assert len(out) == spec.outputs and sum(out) == pytest.approx(1.0)
        correct += max(range(len(out)), key=out.__getitem__) == label
    assert correct == round(quality * n)


def test_ad_auc_is_close_to_the_chosen_value() -> None:
    spec = MODELS["ad01"]
    files = [(label, u) for label in (0, 1) for u in stratified(124, label)]
    scores = []
    for i, (label, u) in enumerate(files):
        data = encode_input(spec, label, u, file_bytes=102400, seed=i)
        # every 2,560-byte window at a 512-byte stride carries the same header
        windows = {bytes(data[o : o + 2560])[:10] for o in range(0, 102400 - 2560 + 1, 512)}
        assert len(windows) == 1
        scores.append((label, simulated_output(spec, data[:2560], 0.87)[0]))
    pos = [s for label, s in scores if label == 1]
    neg = [s for label, s in scores if label == 0]
    auc = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert auc == pytest.approx(0.87, abs=0.01)


def test_foreign_inputs_get_a_stable_answer() -> None:
    spec = MODELS["ic01"]
    data = bytes(range(256)) * 12
    assert decode_input(data) is None
    assert simulated_output(spec, data, 0.9) == simulated_output(spec, data, 0.9)
    assert simulated_output(spec, data, 0.9) != simulated_output(spec, data[::-1], 0.9)
