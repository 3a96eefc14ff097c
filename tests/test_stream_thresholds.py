"""Thresholds chosen on a stream of validation words, and the chunked stream posteriors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kwstream.errors import RecipeError
from kwstream.frontend import feature_windows
from kwstream.modelcard import SmootherSettings, load_card
from kwstream.training.export import run_litert
from kwstream.training.recipe import load_recipe
from kwstream.training.smoothing import Reference, stream_posteriors, stream_thresholds
from tests.support import decode_allison, pink_noise, silence

MODEL = Path(__file__).resolve().parent.parent / "models" / "kws20.tflite"
TINY_RECIPE = Path(__file__).parent / "data" / "tiny.toml"
LABELS = ("_silence_", "_unknown_", "yes", "no")
KEYWORD_IDS = np.array([2, 3])
# One inference every 20 ms; the average spans the last 5 inferences.
SETTINGS = SmootherSettings(average_window_ms=100, suppression_ms=750, minimum_count=1,
                            inference_stride=1)


def _two_hour_stream(bumps: list[tuple[float, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors of two hours at 20 ms steps: silence, plus (second, class, value) bumps.

    Each bump keeps its value for 10 inferences (200 ms), so the 100 ms average reaches it.
    """
    end_ms = np.arange(1, 2 * 3600 * 50 + 1) * 20.0
    posteriors = np.zeros((end_ms.size, len(LABELS)))
    posteriors[:, 0] = 1.0
    for second, label, value in bumps:
        start = int(second * 50)
        posteriors[start:start + 10, label] = value
        posteriors[start:start + 10, 0] = 1.0 - value
    return posteriors, end_ms


def test_lowest_threshold_within_allowed_false_accepts() -> None:
    # "yes" is spoken at 10 s; two false bumps of "yes" come at 100 s and 200 s.
    posteriors, end_ms = _two_hour_stream([(10.0, 2, 0.9), (100.0, 2, 0.655),
                                           (200.0, 2, 0.555)])
    references = [Reference(2, 9_900.0, 10_300.0)]

    # 0.5 per hour over 2 hours allows one false accept: the 0.555 bump must stay below.
    thresholds, summary = stream_thresholds(posteriors, end_ms, references, LABELS, KEYWORD_IDS,
                                            SETTINGS, 0.5, 0.5, 0.95)
    assert thresholds["yes"] == 0.56
    assert summary["allowed_false_accepts"] == 1
    assert summary["per_keyword"]["yes"]["tp"] == 1
    assert summary["per_keyword"]["yes"]["fp"] == 1
    assert summary["per_keyword"]["yes"]["recall"] == 1.0

    # 0.4 per hour allows none: both bumps must stay below.
    thresholds, summary = stream_thresholds(posteriors, end_ms, references, LABELS, KEYWORD_IDS,
                                            SETTINGS, 0.4, 0.5, 0.95)
    assert thresholds["yes"] == 0.66
    assert summary["per_keyword"]["yes"]["fp"] == 0


def test_keyword_without_references_or_false_accepts() -> None:
    posteriors, end_ms = _two_hour_stream([(10.0, 2, 0.9)])
    thresholds, summary = stream_thresholds(posteriors, end_ms, [Reference(2, 9_900.0, 10_300.0)],
                                            LABELS, KEYWORD_IDS, SETTINGS, 0.0, 0.5, 0.95)
    # "no" never scores: the lowest threshold holds, and its recall has no denominator.
    assert thresholds["no"] == 0.5
    assert summary["per_keyword"]["no"]["recall"] is None
    assert thresholds["yes"] == 0.5


def test_unreachable_rate_keeps_the_maximum() -> None:
    posteriors, end_ms = _two_hour_stream([(100.0, 3, 0.99)])
    thresholds, summary = stream_thresholds(posteriors, end_ms, [], LABELS, KEYWORD_IDS,
                                            SETTINGS, 0.0, 0.5, 0.95)
    assert thresholds["no"] == 0.95
    assert summary["per_keyword"]["no"]["fp"] == 1


def test_other_keyword_on_top_does_not_fire() -> None:
    # At 100 s "yes" scores 0.4 and "no" 0.6: the detector picks "no", so "yes" has no false
    # accept there even at a threshold of 0.3, and "no" has one.
    posteriors, end_ms = _two_hour_stream([(100.0, 3, 0.6)])
    start = 100 * 50
    posteriors[start:start + 10] = [0.0, 0.0, 0.4, 0.6]
    thresholds, summary = stream_thresholds(posteriors, end_ms, [], LABELS, KEYWORD_IDS,
                                            SETTINGS, 0.0, 0.3, 0.95)
    assert summary["per_keyword"]["yes"]["fp"] == 0
    assert thresholds["yes"] == 0.3
    assert thresholds["no"] == 0.61


def test_stride_skips_inferences() -> None:
    # With stride 3 the smoother gets every third inference; the bump still reaches 0.8.
    posteriors, end_ms = _two_hour_stream([(100.0, 2, 0.8)])
    settings = SmootherSettings(average_window_ms=100, suppression_ms=750, minimum_count=1,
                                inference_stride=3)
    thresholds, summary = stream_thresholds(posteriors, end_ms, [], LABELS, KEYWORD_IDS,
                                            settings, 0.0, 0.5, 0.95)
    assert summary["per_keyword"]["yes"]["fp"] == 0
    assert thresholds["yes"] == 0.81


def test_chunked_posteriors_equal_batch_windows(tmp_path: Path) -> None:
    card = load_card(MODEL)
    word = decode_allison("digits/6.g722", tmp_path)
    stream = np.concatenate([silence(0.3), word, silence(0.4), word * 0.5, silence(0.2)])
    stream = stream + pink_noise(stream.size / 16000, 0.002)
    expected = run_litert(MODEL, feature_windows(stream, card.frontend, stride_rows=1))

    # A chunk of 37 windows does not divide the stream, so the last chunk is short.
    posteriors, end_ms = stream_posteriors(MODEL, stream, card.frontend, chunk=37)
    assert posteriors.shape == expected.shape
    assert np.array_equal(posteriors, expected)
    assert end_ms[0] == (card.frontend.window_rows - 1) * card.frontend.hop_ms \
        + card.frontend.window_ms
    assert np.all(np.diff(end_ms) == card.frontend.hop_ms)


def test_recipe_reads_stream_rate(tmp_path: Path) -> None:
    text = TINY_RECIPE.read_text()
    assert "stream_false_accepts_per_hour = 2.0" in text
    spec = load_recipe(TINY_RECIPE).thresholds
    assert spec.stream_false_accepts_per_hour == 2.0
    assert spec.stream_words == 60

    recipe = tmp_path / "clips.toml"
    recipe.write_text(text.replace("stream_false_accepts_per_hour = 2.0", ""))
    assert load_recipe(recipe).thresholds.stream_false_accepts_per_hour is None

    recipe.write_text(text.replace("stream_false_accepts_per_hour = 2.0",
                                   "stream_false_accepts_per_hour = -1"))
    with pytest.raises(RecipeError, match="stream_false_accepts_per_hour"):
        load_recipe(recipe)
