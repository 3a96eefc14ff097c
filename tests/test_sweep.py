from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from kwstream.labels import Label
from kwstream.modelcard import SmootherSettings
from kwstream.smoother import PosteriorSmoother
from kwstream.sweep import OVERALL, det_curve, detect, lowest_thresholds, sweep_thresholds

KEYWORDS = ["yes", "no"]
TIMES_MS = np.arange(100, 10_001, 100, dtype=np.float64)
LABELS = [Label("yes", 1000, 1400), Label("no", 4600, 4900)]


def hand_scores() -> np.ndarray:
    """yes at 0.9 from 1400 to 1600 ms, no at 0.6 at 5000 ms, a stray yes of 0.4 at 8000 ms."""
    scores = np.zeros((TIMES_MS.size, 2))
    for time_ms in (1400, 1500, 1600):
        scores[TIMES_MS == time_ms, 0] = 0.9
    scores[TIMES_MS == 5000, 1] = 0.6
    scores[TIMES_MS == 8000, 0] = 0.4
    return scores


def point(points, threshold, keyword):  # type: ignore[no-untyped-def]
    return next(p for p in points if p.threshold == threshold and p.keyword == keyword)


def test_detect_applies_suppression() -> None:
    detections = detect(TIMES_MS, hand_scores(), KEYWORDS, 0.3, suppression_ms=1000)

    assert detections == [("yes", 1400.0), ("no", 5000.0), ("yes", 8000.0)]


def test_detect_skips_untrusted_rows() -> None:
    trusted = TIMES_MS != 1400

    detections = detect(TIMES_MS, hand_scores(), KEYWORDS, 0.5, 1000, trusted)

    assert detections == [("yes", 1500.0), ("no", 5000.0)]


def test_detect_matches_posterior_smoother() -> None:
    rng = np.random.default_rng(5)
    labels = ["_silence_", "_unknown_", "yes", "no", "up"]
    posteriors = rng.dirichlet(np.full(len(labels), 0.3), size=3000)
    times_ms = np.arange(1, 3001) * 40.0
    # An averaging window shorter than the stride leaves each posterior alone, so the
    # smoothed scores equal the posteriors.
    settings = SmootherSettings(average_window_ms=10, suppression_ms=700, minimum_count=1,
                                inference_stride=2)
    smoother = PosteriorSmoother(labels, settings, dict.fromkeys(["yes", "no", "up"], 0.6))

    expected = []
    for block in range(0, 3000, 250):
        _, _, found = smoother.process(times_ms[block:block + 250],
                                       posteriors[block:block + 250])
        expected += [(d.keyword, d.time_ms) for d in found]
    detections = detect(times_ms, posteriors[:, 2:], ["yes", "no", "up"], 0.6, 700)

    assert len(expected) > 20
    assert detections == expected


def test_det_curve_hand_case() -> None:
    points = det_curve(TIMES_MS, hand_scores(), KEYWORDS, LABELS, [0.3, 0.5, 0.7],
                       suppression_ms=1000, tolerance_ms=1000, audio_seconds=10.0)

    low = point(points, 0.3, OVERALL)
    high = point(points, 0.7, OVERALL)
    assert (low.tp, low.fp, low.fn) == (2, 1, 0)
    assert low.miss_rate == 0.0
    assert low.false_accepts_per_hour == pytest.approx(360.0)
    assert point(points, 0.3, "yes").false_accepts_per_hour == pytest.approx(360.0)
    assert point(points, 0.3, "no").false_accepts_per_hour == 0.0
    assert point(points, 0.5, OVERALL).fp == 0
    assert high.miss_rate == 0.5
    assert point(points, 0.7, "no").miss_rate == 1.0


def test_lowest_thresholds_meeting_target() -> None:
    points = det_curve(TIMES_MS, hand_scores(), KEYWORDS, LABELS, [0.3, 0.5, 0.7], 1000, 1000,
                       audio_seconds=10.0)

    lowest = lowest_thresholds(points, target_false_accepts_per_hour=1.0)

    assert lowest == {OVERALL: 0.5, "yes": 0.5, "no": 0.3}


def test_lowest_thresholds_need_duration() -> None:
    points = det_curve(TIMES_MS, hand_scores(), KEYWORDS, LABELS, [0.3, 0.5], 1000, 1000,
                       audio_seconds=None)

    assert lowest_thresholds(points, 1.0) == {OVERALL: None, "yes": None, "no": None}


def test_sweep_writes_csv_and_png(tmp_path: Path) -> None:
    summary = sweep_thresholds(
        times_ms=TIMES_MS, scores=hand_scores(), keywords=KEYWORDS, labels=LABELS,
        suppression_ms=1000, tolerance_ms=1000, audio_seconds=10.0, out_dir=tmp_path / "det",
        thresholds=[0.3, 0.5, 0.7],
    )

    with open(summary["csv"], newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 9
    assert rows[0] == {"threshold": "0.3", "keyword": OVERALL, "tp": "2", "fp": "1", "fn": "0",
                       "miss_rate": "0.0", "false_accepts_per_hour": "360.0"}
    assert Path(summary["png"]).read_bytes().startswith(b"\x89PNG")
    assert summary["lowest_thresholds"]["yes"] == 0.5
