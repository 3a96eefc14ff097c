"""``kwstream compare``: measure a baseline and a candidate model on the same evaluation suite.

Both models run on exactly the same audio:

- streaming: every stream of the suite is replayed through the daemon's pipeline (the code of
  ``kwstream replay``) and scored with :class:`~kwstream.scoring.StreamingScorer`;
- clips: every 1-second clip of the suite's clip sets is classified by its top class.

Each model computes its own features with its own card's frontend, so models whose
frontends differ never see each other's features. Models with different label sets are
compared on their common keywords: a reference of any other keyword counts as non-keyword
speech (``_unknown_``) in the streams, detections of keywords outside the common set are not
scored, and clips of a keyword that only one model has are left out.

Every per-keyword rate gets a confidence interval (:mod:`kwstream.compare_stats`), and every
difference between the models a paired bootstrap interval: over stretches of the streams
(``segment_s`` of the suite) and over clips. :mod:`kwstream.compare_policy` turns the numbers
into a decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from kwstream.commands._pipeline import build_service
from kwstream.commands.replay import build_report, source_block_s
from kwstream.compare_stats import (
    percentile_interval,
    poisson_rate_interval,
    ratio,
    resample_weights,
    wilson_interval,
)
from kwstream.compare_suite import BuiltClipSet, BuiltStream, Suite
from kwstream.config import ServiceConfig
from kwstream.errors import ConfigError
from kwstream.frontend import feature_windows
from kwstream.inference import KeywordModel
from kwstream.labels import Label
from kwstream.modelcard import NON_KEYWORD_LABELS, UNKNOWN_LABEL
from kwstream.runner import run_pipeline
from kwstream.scoring import StreamingScorer
from kwstream.sources import FileSource

log = logging.getLogger(__name__)

ROLES = ("baseline", "candidate")
ALL = "all"
"""Scenario name of the numbers pooled over every stream, or over every clip set."""
REPLAY_BLOCK_MS = 1000
"""Block length of the replays, the same as ``kwstream replay --speed max``."""


@dataclass(frozen=True)
class LabelSets:
    """The labels both models have, and those that only one of them has."""

    common: list[str]
    baseline_only: list[str]
    candidate_only: list[str]

    @property
    def common_keywords(self) -> list[str]:
        return [label for label in self.common if label not in NON_KEYWORD_LABELS]

    @property
    def one_sided_keywords(self) -> set[str]:
        return {label for label in (*self.baseline_only, *self.candidate_only)
                if label not in NON_KEYWORD_LABELS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "common": self.common,
            "common_keywords": self.common_keywords,
            "left_out": {"baseline_only": self.baseline_only,
                         "candidate_only": self.candidate_only},
        }


def label_sets(baseline: KeywordModel, candidate: KeywordModel) -> LabelSets:
    """Split the two models' labels into common ones (baseline order) and one-sided ones."""
    candidate_labels = set(candidate.labels)
    baseline_labels = set(baseline.labels)
    common = [label for label in baseline.labels if label in candidate_labels]
    if not [label for label in common if label not in NON_KEYWORD_LABELS]:
        raise ConfigError(
            f"models {baseline.id} ({', '.join(baseline.labels)}) and {candidate.id} "
            f"({', '.join(candidate.labels)}) have no keyword in common"
        )
    return LabelSets(
        common=common,
        baseline_only=[label for label in baseline.labels if label not in candidate_labels],
        candidate_only=[label for label in candidate.labels if label not in baseline_labels],
    )


# Streaming.


@dataclass
class StreamOutcome:
    """One model's replay of one stream: the replay report and every scoring decision."""

    report: dict[str, Any]
    reference_keywords: list[str]
    reference_start_ms: np.ndarray
    reference_matched: np.ndarray
    """Per keyword reference (common keywords only): whether a detection matched it."""
    false_positive_keywords: list[str]
    false_positive_ms: np.ndarray
    ignored_detections: int
    inference_ms: np.ndarray


class _Outcome:
    """A scorer outcome with the attribute name that :class:`kwstream.pipeline.Pipeline` reads."""

    def __init__(self, true_positive: bool) -> None:
        self.is_true_positive = true_positive
        self.true_positive = true_positive


class CommonKeywordScorer:
    """A :class:`StreamingScorer` that scores only the common keywords and records each decision.

    Detections of other keywords are counted in ``ignored`` and otherwise dropped, so a
    keyword that only one model has never counts for or against it.
    """

    def __init__(self, labels: list[Label], keywords: list[str], tolerance_ms: float) -> None:
        self.keywords = set(keywords)
        self.inner = StreamingScorer(labels, keywords, tolerance_ms)
        self.matched: set[Label] = set()
        self.false_positives: list[tuple[str, float]] = []
        self.ignored = 0

    def on_detection(self, keyword: str, time_ms: float) -> _Outcome:
        if keyword not in self.keywords:
            self.ignored += 1
            return _Outcome(False)
        outcome = self.inner.on_detection(keyword, time_ms)
        if outcome.reference is not None:
            self.matched.add(outcome.reference)
        else:
            self.false_positives.append((keyword, time_ms))
        return _Outcome(outcome.reference is not None)

    def advance(self, time_ms: float) -> list[Label]:
        return self.inner.advance(time_ms)

    def finish(self, duration_s: float | None = None) -> Any:
        return self.inner.finish(duration_s)

    def report(self, duration_s: float | None = None) -> Any:
        return self.inner.report(duration_s)


def common_labels(labels: list[Label], keywords: list[str]) -> list[Label]:
    """Relabel every reference that is not one of ``keywords`` as ``_unknown_`` speech."""
    keep = set(keywords)
    return [label if label.label in keep or label.label == UNKNOWN_LABEL
            else Label(UNKNOWN_LABEL, label.start_ms, label.end_ms) for label in labels]


def replay_stream(
    model_path: Path, stream: BuiltStream, keywords: list[str], tolerance_ms: float
) -> StreamOutcome:
    """Replay one stream at full speed through the daemon's pipeline and score it."""
    labels = common_labels(stream.labels, keywords)
    scorers: dict[str, CommonKeywordScorer] = {}

    def scorers_for(models: list[KeywordModel]) -> dict[str, Any]:
        for model in models:
            scorers[model.id] = CommonKeywordScorer(labels, keywords, tolerance_ms)
        return dict(scorers)

    config = ServiceConfig()
    config.model.path = str(model_path)
    service = build_service(config, scorers_for=scorers_for, events_to_stdout=False)
    source = FileSource(stream.audio, speed="max", block_ms=REPLAY_BLOCK_MS)
    stats = asyncio.run(run_pipeline(source, service.pipeline, service.sinks, service.metrics,
                                     buffer_seconds=max(2.0, source_block_s(source) * 4)))
    if stats.error is not None:
        raise stats.error
    report = build_report(service, stats, scored=True)
    channel = service.pipeline.channels[0]
    scorer = scorers[channel.model.id]
    references = [label for label in labels if label.is_keyword]
    return StreamOutcome(
        report=report,
        reference_keywords=[label.label for label in references],
        reference_start_ms=np.array([label.start_ms for label in references], dtype=np.float64),
        reference_matched=np.array([label in scorer.matched for label in references],
                                   dtype=bool),
        false_positive_keywords=[keyword for keyword, _ in scorer.false_positives],
        false_positive_ms=np.array([t for _, t in scorer.false_positives], dtype=np.float64),
        ignored_detections=scorer.ignored,
        inference_ms=(np.concatenate(channel.inference_ms) if channel.inference_ms
                      else np.zeros(0)),
    )


@dataclass
class SegmentCounts:
    """Per-keyword counts in each stretch of ``segment_s`` of every stream: (segments, keywords)."""

    tp: np.ndarray
    fn: np.ndarray
    fp: np.ndarray
    hours: np.ndarray
    """Audio hours of each segment."""


def segment_counts(
    outcomes: list[StreamOutcome], durations_s: list[float], keywords: list[str],
    segment_s: float,
) -> SegmentCounts:
    """Count true positives, misses and false positives per keyword in each stream segment.

    A reference belongs to the segment where it starts, a false positive to the segment of
    its detection time. Segments of all the given streams are stacked in order.
    """
    column = {keyword: index for index, keyword in enumerate(keywords)}
    blocks: dict[str, list[np.ndarray]] = {"tp": [], "fn": [], "fp": []}
    hours = []
    for outcome, duration_s in zip(outcomes, durations_s, strict=True):
        segments = max(1, int(np.ceil(duration_s / segment_s)))
        tp = np.zeros((segments, len(keywords)))
        fn = np.zeros((segments, len(keywords)))
        fp = np.zeros((segments, len(keywords)))
        for keyword, start_ms, matched in zip(outcome.reference_keywords,
                                              outcome.reference_start_ms,
                                              outcome.reference_matched, strict=True):
            row = min(segments - 1, int(start_ms / 1000.0 // segment_s))
            (tp if matched else fn)[row, column[keyword]] += 1
        for keyword, time_ms in zip(outcome.false_positive_keywords, outcome.false_positive_ms,
                                    strict=True):
            row = min(segments - 1, int(time_ms / 1000.0 // segment_s))
            fp[row, column[keyword]] += 1
        blocks["tp"].append(tp)
        blocks["fn"].append(fn)
        blocks["fp"].append(fp)
        lengths = np.full(segments, segment_s)
        lengths[-1] = duration_s - segment_s * (segments - 1)
        hours.append(lengths / 3600.0)
    return SegmentCounts(np.concatenate(blocks["tp"]), np.concatenate(blocks["fn"]),
                         np.concatenate(blocks["fp"]), np.concatenate(hours))


def streaming_rates(counts: SegmentCounts, weights: np.ndarray | None = None) -> dict[str, Any]:
    """Recall, precision, F1 and false accepts per hour, per keyword and over all keywords.

    Without ``weights`` the result is one measurement (arrays of shape (keywords,) and
    scalars); with bootstrap weights (resamples, segments) every value gains a first axis.
    """
    if weights is None:
        tp, fn, fp = counts.tp.sum(0), counts.fn.sum(0), counts.fp.sum(0)
        hours = counts.hours.sum()
    else:
        tp, fn, fp = weights @ counts.tp, weights @ counts.fn, weights @ counts.fp
        hours = weights @ counts.hours
    total_tp, total_fn, total_fp = tp.sum(-1), fn.sum(-1), fp.sum(-1)
    hours_per_keyword = np.expand_dims(hours, -1) if weights is not None else hours
    return {
        "recall": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "false_accepts_per_hour": ratio(fp, hours_per_keyword),
        "overall": {
            "recall": ratio(total_tp, total_tp + total_fn),
            "precision": ratio(total_tp, total_tp + total_fp),
            "f1": ratio(2 * total_tp, 2 * total_tp + total_fp + total_fn),
            "false_accepts_per_hour": ratio(total_fp, hours),
        },
    }


STREAM_METRICS = ("recall", "precision", "f1", "false_accepts_per_hour")


def summarize_streams(
    outcomes: dict[str, list[StreamOutcome]], durations_s: list[float], keywords: list[str],
    suite: Suite, rng: np.random.Generator,
) -> dict[str, Any]:
    """Per-model rates with intervals and the paired bootstrap interval of each difference."""
    counts = {role: segment_counts(outcomes[role], durations_s, keywords, suite.segment_s)
              for role in ROLES}
    weights = resample_weights(counts["baseline"].hours.size, suite.bootstrap_resamples, rng)
    point = {role: streaming_rates(counts[role]) for role in ROLES}
    resampled = {role: streaming_rates(counts[role], weights) for role in ROLES}

    summary: dict[str, Any] = {"audio_seconds": round(sum(durations_s), 3)}
    for role in ROLES:
        c = counts[role]
        tp, fn, fp, hours = c.tp.sum(0), c.fn.sum(0), c.fp.sum(0), float(c.hours.sum())
        per_keyword = {}
        for column, keyword in enumerate(keywords):
            k_tp, k_fn, k_fp = int(tp[column]), int(fn[column]), int(fp[column])
            per_keyword[keyword] = {
                "tp": k_tp, "fn": k_fn, "fp": k_fp,
                **{metric: _value(point[role][metric][column]) for metric in STREAM_METRICS},
                "recall_ci": _interval(wilson_interval(k_tp, k_tp + k_fn, suite.confidence)),
                "precision_ci": _interval(wilson_interval(k_tp, k_tp + k_fp, suite.confidence)),
                "false_accepts_per_hour_ci": _interval(
                    poisson_rate_interval(k_fp, hours, suite.confidence)),
            }
        total_tp, total_fn, total_fp = int(tp.sum()), int(fn.sum()), int(fp.sum())
        overall = {
            "tp": total_tp, "fn": total_fn, "fp": total_fp,
            **{metric: _value(point[role]["overall"][metric]) for metric in STREAM_METRICS},
            "recall_ci": _interval(wilson_interval(total_tp, total_tp + total_fn,
                                                   suite.confidence)),
            "precision_ci": _interval(wilson_interval(total_tp, total_tp + total_fp,
                                                      suite.confidence)),
            "false_accepts_per_hour_ci": _interval(
                poisson_rate_interval(total_fp, hours, suite.confidence)),
        }
        summary[role] = {"overall": overall, "per_keyword": per_keyword}

    difference: dict[str, Any] = {"overall": {}, "per_keyword": {k: {} for k in keywords}}
    for metric in STREAM_METRICS:
        delta = resampled["candidate"]["overall"][metric] - resampled["baseline"]["overall"][metric]
        difference["overall"][metric] = _difference(
            point["baseline"]["overall"][metric], point["candidate"]["overall"][metric], delta,
            suite.confidence)
        deltas = resampled["candidate"][metric] - resampled["baseline"][metric]
        for column, keyword in enumerate(keywords):
            difference["per_keyword"][keyword][metric] = _difference(
                point["baseline"][metric][column], point["candidate"][metric][column],
                deltas[:, column], suite.confidence)
    summary["difference"] = difference
    return summary


# Clips.


@dataclass
class ClipPredictions:
    truth: list[str]
    predicted: dict[str, list[str]] = field(default_factory=dict)
    """Top class of each clip, per role."""
    left_out: int = 0
    """Clips of a keyword that only one of the models has."""


def classify_clips(
    models: dict[str, KeywordModel], clip_sets: list[BuiltClipSet], sets: LabelSets
) -> ClipPredictions:
    """Classify every clip with each model, each on features from its own frontend."""
    truth: list[str] = []
    audio: list[np.ndarray] = []
    left_out = 0
    for clip_set in clip_sets:
        for clip in clip_set.clips:
            if clip.label in sets.one_sided_keywords:
                left_out += 1
                continue
            label = clip.label if clip.label in sets.common else UNKNOWN_LABEL
            if label not in sets.common:
                # Neither model has _unknown_, so a non-keyword clip has no correct label.
                left_out += 1
                continue
            samples, rate = sf.read(str(clip.path), dtype="float32")
            if rate != 16000:
                raise ConfigError(f"{clip.path}: expected 16000 Hz, got {rate} Hz")
            truth.append(label)
            audio.append(samples)
    predictions = ClipPredictions(truth, left_out=left_out)
    for role, model in models.items():
        labels = model.labels
        top = []
        for samples in audio:
            windows = feature_windows(samples, model.card.frontend)
            if windows.shape[0] == 0:
                raise ConfigError("a clip is shorter than one model window")
            posterior = model.predict(windows[-1:])[0]
            top.append(labels[int(np.argmax(posterior))])
        predictions.predicted[role] = top
    return predictions


def clip_rates(
    truth: np.ndarray, predicted: np.ndarray, keywords: list[str],
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, macro F1 and per-keyword precision, recall and F1 of top-class predictions.

    ``truth`` and ``predicted`` are label arrays; with bootstrap weights (resamples, clips)
    every value gains a first axis.
    """
    is_truth = np.stack([truth == k for k in keywords], axis=1).astype(np.float64)
    is_predicted = np.stack([predicted == k for k in keywords], axis=1).astype(np.float64)
    correct = (truth == predicted).astype(np.float64)
    if weights is None:
        weights = np.ones((1, truth.size))
        squeeze = True
    else:
        squeeze = False
    tp = weights @ (is_truth * is_predicted)
    fn = weights @ (is_truth * (1 - is_predicted))
    fp = weights @ ((1 - is_truth) * is_predicted)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    defined = ~np.isnan(f1)
    macro = ratio(np.where(defined, f1, 0).sum(1), defined.sum(1))
    rates = {
        "accuracy": ratio(weights @ correct, weights.sum(1)),
        "macro_f1": macro,
        "recall": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "f1": f1,
        "tp": tp, "fn": fn, "fp": fp,
    }
    if squeeze:
        rates = {key: value[0] for key, value in rates.items()}
    return rates


CLIP_KEYWORD_METRICS = ("recall", "precision", "f1")
CLIP_GLOBAL_METRICS = ("accuracy", "macro_f1")


def summarize_clips(
    predictions: ClipPredictions, keywords: list[str], suite: Suite, rng: np.random.Generator
) -> dict[str, Any]:
    truth = np.array(predictions.truth, dtype=object)
    summary: dict[str, Any] = {"clips": int(truth.size), "left_out_clips": predictions.left_out}
    if truth.size == 0:
        return summary
    weights = resample_weights(truth.size, suite.bootstrap_resamples, rng)
    point, resampled = {}, {}
    for role in ROLES:
        predicted = np.array(predictions.predicted[role], dtype=object)
        point[role] = clip_rates(truth, predicted, keywords)
        resampled[role] = clip_rates(truth, predicted, keywords, weights)
        correct = int(np.sum(truth == predicted))
        per_keyword = {}
        for column, keyword in enumerate(keywords):
            tp, fn, fp = (int(point[role][name][column]) for name in ("tp", "fn", "fp"))
            per_keyword[keyword] = {
                "clips": tp + fn, "tp": tp, "fn": fn, "fp": fp,
                **{metric: _value(point[role][metric][column])
                   for metric in CLIP_KEYWORD_METRICS},
                "recall_ci": _interval(wilson_interval(tp, tp + fn, suite.confidence)),
                "precision_ci": _interval(wilson_interval(tp, tp + fp, suite.confidence)),
            }
        summary[role] = {
            "accuracy": _value(point[role]["accuracy"]),
            "accuracy_ci": _interval(wilson_interval(correct, int(truth.size), suite.confidence)),
            "macro_f1": _value(point[role]["macro_f1"]),
            "per_keyword": per_keyword,
        }
    difference: dict[str, Any] = {"per_keyword": {k: {} for k in keywords}}
    for metric in CLIP_GLOBAL_METRICS:
        difference[metric] = _difference(
            point["baseline"][metric], point["candidate"][metric],
            resampled["candidate"][metric] - resampled["baseline"][metric], suite.confidence)
    for metric in CLIP_KEYWORD_METRICS:
        deltas = resampled["candidate"][metric] - resampled["baseline"][metric]
        for column, keyword in enumerate(keywords):
            difference["per_keyword"][keyword][metric] = _difference(
                point["baseline"][metric][column], point["candidate"][metric][column],
                deltas[:, column], suite.confidence)
    summary["difference"] = difference
    return summary


# The whole comparison.


def describe_model(path: Path, model: KeywordModel) -> dict[str, Any]:
    card = model.card
    return {
        "path": str(path), "id": card.id, "version": card.version, "sha256": card.sha256,
        "size_bytes": card.size_bytes, "arena_bytes": card.arena_bytes,
        "labels": card.labels, "frontend": card.frontend.to_dict(),
    }


def load_models(baseline: Path, candidate: Path) -> dict[str, KeywordModel]:
    """Load both models with their cards; a missing file raises an error naming it."""
    models = {}
    for role, path in zip(ROLES, (baseline, candidate), strict=True):
        if not path.is_file():
            raise ConfigError(f"{role} model file not found: {path}")
        models[role] = KeywordModel(path)
    return models


def compare_models(
    baseline: Path, candidate: Path, suite: Suite, streams: dict[str, BuiltStream],
    clip_sets: dict[str, BuiltClipSet],
) -> dict[str, Any]:
    """Measure both models on the built suite; return every number of the report."""
    models = load_models(baseline, candidate)
    sets = label_sets(models["baseline"], models["candidate"])
    keywords = sets.common_keywords
    paths = dict(zip(ROLES, (baseline, candidate), strict=True))
    rng = np.random.default_rng(suite.seed)
    timings: dict[str, float] = {}

    started = time.monotonic()
    outcomes: dict[str, dict[str, StreamOutcome]] = {role: {} for role in ROLES}
    for name, stream in streams.items():
        for role in ROLES:
            log.info("replaying %s (%.0f s) with the %s model", name, stream.audio_seconds, role)
            outcomes[role][name] = replay_stream(paths[role], stream, keywords,
                                                 suite.tolerance_ms)
    timings["replay_seconds"] = round(time.monotonic() - started, 2)

    streaming: dict[str, Any] = {"scenarios": {}}
    for name, stream in streams.items():
        scenario = summarize_streams({role: [outcomes[role][name]] for role in ROLES},
                                     [stream.audio_seconds], keywords, suite, rng)
        scenario["kind"] = stream.spec.kind
        scenario["references"] = sum(1 for label in stream.labels if label.is_keyword)
        scenario["ignored_detections"] = {role: outcomes[role][name].ignored_detections
                                          for role in ROLES}
        scenario["replay"] = {role: _replay_summary(outcomes[role][name].report)
                              for role in ROLES}
        streaming["scenarios"][name] = scenario
    streaming[ALL] = summarize_streams(
        {role: [outcomes[role][name] for name in streams] for role in ROLES},
        [stream.audio_seconds for stream in streams.values()], keywords, suite, rng)

    started = time.monotonic()
    clips: dict[str, Any] = {"sets": {}}
    for name, clip_set in clip_sets.items():
        predictions = classify_clips(models, [clip_set], sets)
        clips["sets"][name] = {"mode": clip_set.spec.mode,
                               **summarize_clips(predictions, keywords, suite, rng)}
    if clip_sets:
        clips[ALL] = summarize_clips(classify_clips(models, list(clip_sets.values()), sets),
                                     keywords, suite, rng)
    timings["clip_seconds"] = round(time.monotonic() - started, 2)

    latency = {}
    for role in ROLES:
        values = [outcomes[role][name].inference_ms for name in streams]
        data = np.concatenate(values) if values else np.zeros(0)
        latency[role] = _latency(data)

    return {
        "models": {role: describe_model(paths[role], models[role]) for role in ROLES},
        "labels": sets.to_dict(),
        "streaming": streaming,
        "clips": clips,
        "latency_ms": latency,
        "timings": timings,
    }


def _replay_summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("audio_seconds", "wall_seconds", "realtime_factor", "events", "inferences",
            "inference_ms", "precision", "recall", "f1", "false_accepts_per_hour")
    return {key: report.get(key) for key in keys}


def _latency(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"inferences": 0, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"inferences": int(values.size), "p50": round(float(p50), 4),
            "p95": round(float(p95), 4), "p99": round(float(p99), 4)}


def _value(value: Any) -> float | None:
    number = float(value)
    return None if np.isnan(number) else round(number, 6)


def _interval(bounds: tuple[float, float] | None) -> list[float] | None:
    return None if bounds is None else [round(bounds[0], 6), round(bounds[1], 6)]


def _difference(baseline: Any, candidate: Any, resampled: np.ndarray,
                confidence: float) -> dict[str, Any]:
    base, cand = _value(baseline), _value(candidate)
    delta = None if base is None or cand is None else round(cand - base, 6)
    return {"baseline": base, "candidate": cand, "delta": delta,
            "delta_ci": _interval(percentile_interval(resampled, confidence))}
