"""Posterior smoother and detector, on hand-computed posteriors."""

from __future__ import annotations

import numpy as np
import pytest

from kwstream.modelcard import SmootherSettings
from kwstream.smoother import PosteriorSmoother

LABELS = ["_silence_", "_unknown_", "yes", "no"]


def _posteriors(rows: list[tuple[float, float]]) -> np.ndarray:
    """Posteriors with the given (yes, no) probabilities and the rest on _silence_."""
    out = np.zeros((len(rows), len(LABELS)))
    for i, (yes, no) in enumerate(rows):
        out[i] = [1 - yes - no, 0, yes, no]
    return out


def _smoother(**settings) -> PosteriorSmoother:
    base = {"average_window_ms": 100, "suppression_ms": 500, "minimum_count": 2,
            "inference_stride": 2}
    base.update(settings)
    return PosteriorSmoother(LABELS, SmootherSettings(**base), {"yes": 0.7, "no": 0.7})


def test_average_over_window_and_threshold():
    smoother = _smoother()
    times = np.array([40.0, 80.0, 120.0, 160.0])
    scores, trusted, detections = smoother.process(times, _posteriors(
        [(0.2, 0.0), (0.9, 0.0), (0.9, 0.0), (0.9, 0.0)]))
    # Span (t - 100, t]: at 120 ms it contains 40, 80 and 120 ms, so (0.2 + 0.9 + 0.9) / 3.
    assert scores[:, 0] == pytest.approx([0.2, 0.55, 2.0 / 3.0, 0.9])
    assert trusted.tolist() == [False, True, True, True]
    assert [(d.keyword, d.time_ms) for d in detections] == [("yes", 160.0)]


def test_warm_up_emits_nothing():
    smoother = _smoother(minimum_count=3)
    _, trusted, detections = smoother.process(np.array([40.0, 80.0]), _posteriors(
        [(1.0, 0.0), (1.0, 0.0)]))
    assert not trusted.any()
    assert detections == []


def test_suppression_blocks_repeats_across_calls():
    smoother = _smoother()
    times = np.arange(1, 31) * 40.0
    posteriors = _posteriors([(0.95, 0.0)] * 30)
    first = smoother.process(times[:10], posteriors[:10])[2]
    second = smoother.process(times[10:], posteriors[10:])[2]
    detected = [d.time_ms for d in first + second]
    assert detected == [80.0, 600.0, 1120.0]


def test_batch_split_does_not_change_detections():
    rng = np.random.default_rng(4)
    times = np.arange(1, 201) * 40.0
    raw = rng.random((200, 2)) * 0.5
    raw[50:60] = [0.9, 0.05]
    raw[120:130] = [0.05, 0.9]
    posteriors = _posteriors([tuple(r) for r in raw])
    whole = _smoother().process(times, posteriors)[2]
    split_smoother = _smoother()
    pieces = []
    for start in range(0, 200, 7):
        pieces += split_smoother.process(times[start : start + 7], posteriors[start : start + 7])[2]
    assert whole == pieces
    assert [d.keyword for d in whole] == ["yes", "no"]


def test_best_keyword_over_threshold_wins():
    smoother = _smoother(minimum_count=1, average_window_ms=0)
    detections = smoother.process(np.array([40.0]), _posteriors([(0.2, 0.75)]))[2]
    assert [d.keyword for d in detections] == ["no"]


def test_out_of_order_time_rejected():
    smoother = _smoother()
    smoother.process(np.array([80.0]), _posteriors([(0.1, 0.1)]))
    with pytest.raises(ValueError, match="80.0 ms"):
        smoother.process(np.array([40.0]), _posteriors([(0.1, 0.1)]))
