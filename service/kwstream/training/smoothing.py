"""Choose the smoother defaults and the thresholds on a stream built from validation voices.

The stream strings validation words (keywords and non-keyword words) together with pauses,
runs the int8 model on every hop, and replays the posteriors through a smoother and detector
that follow the model card's definitions:

- the smoothed score of an inference is the mean of the posteriors of the inferences whose
  window ends within the last ``average_window_ms``, and exists once ``minimum_count`` of
  them are there;
- the keyword with the highest smoothed score is detected when that score reaches its
  threshold and the previous detection is at least ``suppression_ms`` earlier;
- a detection matches an unmatched reference of the same keyword when
  ``start_ms <= time_ms <= end_ms + tolerance_ms``; any other detection is a false positive.

The settings with the best F1 (then the fewest false positives) become the card's defaults.
With them, :func:`stream_thresholds` picks each keyword's threshold on the same stream: the
lowest one at which that keyword's false accepts stay within a rate per hour.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kwstream.frontend import FrontendParams, log_mel_rows, normalize_window
from kwstream.modelcard import SmootherSettings
from kwstream.training import augment
from kwstream.training.corpus import stable_seed

log = logging.getLogger(__name__)

TOLERANCE_MS = 1000
AVERAGE_WINDOWS_MS = (100, 200, 300, 500)
INFERENCE_STRIDES = (1, 2, 3)
MINIMUM_COUNTS = (1, 2, 3)
SUPPRESSIONS_MS = (750, 1000)


@dataclass
class Reference:
    label: int
    start_ms: float
    end_ms: float


def build_stream(words: list[tuple[int, np.ndarray]], seed: int,
                 count: int) -> tuple[np.ndarray, list[Reference]]:
    """Concatenate up to ``count`` random words with 0.4 to 1.5 s pauses and a noise floor."""
    rng = np.random.default_rng(stable_seed(seed, "validation-stream"))
    order = rng.permutation(len(words))[:count]
    pieces: list[np.ndarray] = []
    references: list[Reference] = []
    position = 0
    for index in order:
        label, word = words[int(index)]
        pause = np.zeros(int(rng.uniform(0.4, 1.5) * augment.SAMPLE_RATE), np.float32)
        word = augment.set_level(rng, word, (-30.0, -6.0))
        pieces += [pause, word]
        start = position + pause.size
        references.append(Reference(label, start * 1000 / augment.SAMPLE_RATE,
                                    (start + word.size) * 1000 / augment.SAMPLE_RATE))
        position = start + word.size
    pieces.append(np.zeros(augment.SAMPLE_RATE, np.float32))
    stream = np.concatenate(pieces)
    # The noise floor is shaped one minute at a time: the FFT of an hours-long signal at once
    # takes gigabytes.
    minute = 60 * augment.SAMPLE_RATE
    for start in range(0, stream.size, minute):
        stream[start:start + minute] = augment.add_noise_floor(
            rng, stream[start:start + minute], (-70.0, -55.0))
    return stream, references


def stream_posteriors(model_path: Path, stream: np.ndarray, frontend: FrontendParams,
                      chunk: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Run the int8 model on every hop of a stream and return posteriors and window end times.

    The windows equal :func:`kwstream.frontend.feature_windows` at stride 1, built ``chunk``
    at a time so that an hours-long stream does not hold all its windows in memory.
    """
    from kwstream.training.export import run_litert

    # Rows are computed a chunk of audio at a time too: the spectrum of a whole hour at once
    # takes gigabytes. Each row depends only on its own samples, so the rows are the same.
    hop, width = frontend.hop_samples, frontend.window_samples
    total_rows = 0 if stream.size < width else 1 + (stream.size - width) // hop
    rows = np.concatenate(
        [log_mel_rows(stream[first * hop:(min(first + chunk, total_rows) - 1) * hop + width],
                      frontend) for first in range(0, total_rows, chunk)]
        or [np.zeros((0, frontend.num_bands), dtype=np.float32)])
    count = max(rows.shape[0] - frontend.window_rows + 1, 0)
    parts = []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        views = np.lib.stride_tricks.sliding_window_view(
            rows[start:stop + frontend.window_rows - 1], frontend.window_rows, axis=0)
        windows = normalize_window(np.ascontiguousarray(views.transpose(0, 2, 1)), frontend)
        parts.append(run_litert(model_path, windows.astype(np.float32)))
    posteriors = (np.concatenate(parts) if parts
                  else np.zeros((0, 0), dtype=np.float32))
    end_ms = ((np.arange(count) + frontend.window_rows - 1) * frontend.hop_ms
              + frontend.window_ms).astype(np.float64)
    return posteriors, end_ms


def smooth(posteriors: np.ndarray, end_ms: np.ndarray,
           settings: SmootherSettings) -> tuple[np.ndarray, np.ndarray]:
    """Return the smoothed posteriors (n, classes) and how many inferences each one averages."""
    cumulative = np.concatenate([np.zeros((1, posteriors.shape[1])),
                                 np.cumsum(posteriors, axis=0)])
    first = np.searchsorted(end_ms, end_ms - settings.average_window_ms, side="right")
    counts = np.arange(1, len(end_ms) + 1) - first
    smoothed = (cumulative[1:] - cumulative[first]) / np.maximum(counts, 1)[:, None]
    return smoothed, counts


def _suppress(candidates: np.ndarray, end_ms: np.ndarray, suppression_ms: float) -> list[int]:
    """Return the candidate inferences that come at least ``suppression_ms`` after the last one fired."""
    fired = []
    last = -np.inf
    for i in candidates:
        if end_ms[i] - last >= suppression_ms:
            fired.append(int(i))
            last = end_ms[i]
    return fired


def detect(posteriors: np.ndarray, end_ms: np.ndarray, keyword_ids: np.ndarray,
           thresholds: np.ndarray, settings: SmootherSettings) -> list[tuple[int, float]]:
    """Run the smoother and detector over posteriors (n, classes) and return (label, time_ms) pairs."""
    smoothed, counts = smooth(posteriors, end_ms, settings)
    scores = smoothed[:, keyword_ids]
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(len(best)), best]
    candidates = np.flatnonzero((counts >= settings.minimum_count)
                                & (best_score >= thresholds[best]))
    return [(int(keyword_ids[best[i]]), float(end_ms[i]))
            for i in _suppress(candidates, end_ms, settings.suppression_ms)]


def _count_matches(times: np.ndarray, references: list[Reference]) -> tuple[int, int]:
    """Count true and false positives of one keyword's detection times against its references."""
    matched = np.zeros(len(references), dtype=bool)
    starts = np.array([r.start_ms for r in references])
    ends = np.array([r.end_ms for r in references]) + TOLERANCE_MS
    true_positives = 0
    for time_ms in times:
        hits = np.flatnonzero(~matched & (starts <= time_ms) & (time_ms <= ends))
        if hits.size:
            matched[hits[0]] = True
            true_positives += 1
    return true_positives, len(times) - true_positives


def stream_thresholds(posteriors: np.ndarray, end_ms: np.ndarray, references: list[Reference],
                      labels: tuple[str, ...], keyword_ids: np.ndarray,
                      settings: SmootherSettings, max_per_hour: float, minimum: float,
                      maximum: float) -> tuple[dict[str, float], dict[str, Any]]:
    """Pick each keyword's threshold on a labeled stream of validation words.

    For each keyword the detector runs alone (the other keywords can win the top score but
    never fire), and the threshold is the lowest of minimum, minimum + 0.01, ... maximum whose
    false accepts stay at or below ``max_per_hour`` times the stream's hours, rounded down.
    A keyword that never gets there keeps ``maximum``.
    """
    stride = settings.inference_stride
    posteriors, end_ms = posteriors[::stride], end_ms[::stride]
    hours = (end_ms[-1] / 3_600_000.0) if len(end_ms) else 0.0
    allowed = int(np.floor(max_per_hour * hours))
    smoothed, counts = smooth(posteriors, end_ms, settings)
    scores = smoothed[:, keyword_ids]
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(len(best)), best]
    ready = counts >= settings.minimum_count
    grid = np.round(np.arange(minimum, maximum + 1e-9, 0.01), 2)
    thresholds: dict[str, float] = {}
    per_keyword: dict[str, Any] = {}
    for column, label_id in enumerate(keyword_ids):
        name = labels[int(label_id)]
        own = [r for r in references if r.label == int(label_id)]
        frames = np.flatnonzero(ready & (best == column))
        chosen, counted = float(maximum), (0, 0)
        for threshold in grid:
            fired = _suppress(frames[best_score[frames] >= threshold], end_ms,
                              settings.suppression_ms)
            counted = _count_matches(end_ms[fired], own)
            if counted[1] <= allowed:
                chosen = float(threshold)
                break
        thresholds[name] = chosen
        per_keyword[name] = {"threshold": chosen, "references": len(own), "tp": counted[0],
                             "fp": counted[1],
                             "recall": counted[0] / len(own) if own else None}
    summary = {"stream_hours": round(hours, 3), "max_false_accepts_per_hour": max_per_hour,
               "allowed_false_accepts": allowed, "per_keyword": per_keyword}
    return thresholds, summary


def score(events: list[tuple[int, float]], references: list[Reference],
          keyword_ids: set[int]) -> dict[str, Any]:
    matched = [False] * len(references)
    true_positives = 0
    for label, time_ms in events:
        for number, reference in enumerate(references):
            if (not matched[number] and reference.label == label
                    and reference.start_ms <= time_ms <= reference.end_ms + TOLERANCE_MS):
                matched[number] = True
                true_positives += 1
                break
    positives = sum(1 for r in references if r.label in keyword_ids)
    false_positives = len(events) - true_positives
    precision = true_positives / len(events) if events else None
    recall = true_positives / positives if positives else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision and recall else None)
    return {"tp": true_positives, "fp": false_positives, "fn": positives - true_positives,
            "precision": precision, "recall": recall, "f1": f1}


@dataclass
class ValidationStream:
    """A stream of validation words, with the int8 model's posteriors on every hop."""

    references: list[Reference]
    posteriors: np.ndarray
    end_ms: np.ndarray
    seconds: float


def validation_stream(model_path: Path, frontend: FrontendParams,
                      words: list[tuple[int, np.ndarray]], seed: int,
                      count: int) -> ValidationStream:
    stream, references = build_stream(words, seed, count)
    posteriors, end_ms = stream_posteriors(model_path, stream, frontend)
    return ValidationStream(references, posteriors, end_ms, stream.size / augment.SAMPLE_RATE)


def tune(validation: ValidationStream, labels: tuple[str, ...],
         thresholds: dict[str, float]) -> tuple[SmootherSettings, dict[str, Any]]:
    """Pick the smoother settings with the best streaming F1 on validation words."""
    posteriors, end_ms, references = validation.posteriors, validation.end_ms, validation.references
    keyword_ids = np.array([i for i, label in enumerate(labels) if label in thresholds])
    threshold_values = np.array([thresholds[labels[i]] for i in keyword_ids])
    results = []
    for average, stride, minimum, suppression in itertools.product(
            AVERAGE_WINDOWS_MS, INFERENCE_STRIDES, MINIMUM_COUNTS, SUPPRESSIONS_MS):
        settings = SmootherSettings(average_window_ms=average, suppression_ms=suppression,
                                    minimum_count=minimum, inference_stride=stride)
        # The first inference runs on the first complete window; later ones every stride hops.
        events = detect(posteriors[::stride], end_ms[::stride], keyword_ids,
                        threshold_values, settings)
        results.append((settings, score(events, references, set(keyword_ids.tolist()))))
    best_settings, best = max(results, key=lambda item: ((item[1]["f1"] or 0.0),
                                                        -item[1]["fp"],
                                                        -item[0].inference_stride))
    duration_s = validation.seconds
    summary = {
        "stream_seconds": round(duration_s, 1),
        "words": len(references),
        "keywords": int(sum(1 for r in references if r.label in set(keyword_ids.tolist()))),
        "chosen": best,
        "false_accepts_per_hour": best["fp"] / (duration_s / 3600.0),
        "grid": {"average_window_ms": AVERAGE_WINDOWS_MS, "inference_stride": INFERENCE_STRIDES,
                 "minimum_count": MINIMUM_COUNTS, "suppression_ms": SUPPRESSIONS_MS},
    }
    log.info("smoother: average %d ms, stride %d, minimum %d, suppression %d ms: F1 %s on %d "
             "validation words", best_settings.average_window_ms, best_settings.inference_stride,
             best_settings.minimum_count, best_settings.suppression_ms, best["f1"],
             len(references))
    return best_settings, summary
