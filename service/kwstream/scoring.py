"""Streaming scorer: matches detections with the references of a label file.

The rule, applied one detection at a time in stream-time order:

- A detection matches a reference of the same keyword when
  ``start_ms <= time_ms <= end_ms + tolerance_ms`` and no earlier detection matched that
  reference. When several references qualify, the one that starts first is matched.
- Every other detection is a false positive. A false positive inside the span
  ``[start_ms, end_ms]`` of a reference of another keyword is also counted as a confusion,
  and one inside the span of an ``_unknown_`` reference is counted as a false positive on
  non-keyword speech.
- A reference that no detection matched is a false negative. ``_unknown_`` references are
  never scored as keywords.

Every reference that a detection at ``time_ms`` can match has started by ``time_ms``, so a
detection is decided as soon as it arrives. A reference becomes a false negative once stream
time passes ``end_ms + tolerance_ms``. The live pipeline drives :class:`StreamingScorer`
block by block; :func:`score_events` feeds the same class with saved events, so live and
offline numbers are equal by construction.

Metrics whose denominator is zero are ``None`` (``null`` in JSON), never 0.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kwstream.labels import Label
from kwstream.modelcard import UNKNOWN_LABEL

DEFAULT_TOLERANCE_MS = 1000
TF_DEFAULT_TOLERANCE_MS = 750
"""Default of TensorFlow's test_streaming_accuracy.cc; its Python version defaults to 1500."""
TF_WINDOW_MS = 1000
"""TensorFlow's streaming test stamps a detection with the start of its 1-second window."""


class Detection(Protocol):
    """Anything with a keyword and a stream time, such as :class:`kwstream.events.Event`."""

    @property
    def keyword(self) -> str: ...

    @property
    def time_ms(self) -> float: ...


@dataclass(frozen=True)
class DetectionOutcome:
    """Decision of the scorer on one detection."""

    keyword: str
    time_ms: float
    reference: Label | None
    """The reference this detection matched, or None for a false positive."""
    confused_with: Label | None = None
    """For a false positive, a reference of another keyword whose span contains ``time_ms``."""
    on_unknown: bool = False
    """For a false positive, whether ``time_ms`` is inside the span of an ``_unknown_`` word."""

    @property
    def true_positive(self) -> bool:
        return self.reference is not None

    @property
    def latency_ms(self) -> float | None:
        """Detection time minus the end of the matched word; negative when it fired early."""
        if self.reference is None:
            return None
        return self.time_ms - self.reference.end_ms


@dataclass
class KeywordCounts:
    """True positives, false positives and false negatives of one keyword."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def miss_rate(self) -> float | None:
        return _ratio(self.fn, self.tp + self.fn)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "miss_rate": self.miss_rate,
        }


@dataclass
class TfCompatStats:
    """Counts of TensorFlow's ``StreamingAccuracyStats`` (speech_commands/accuracy_utils.py).

    TensorFlow stamps a detection with the start of the window that fired, here
    ``time_ms - 1000``. It compares the detection with the earliest ground-truth row whose
    rounded start lies within ``tolerance_ms`` either side. The detection is correct when the
    labels agree and no earlier detection took a row with the same start time. Otherwise it is
    wrong, and it takes the row all the same. A detection with no row within the tolerance is
    a false positive. Every row counts as ground truth, ``_unknown_`` rows included, and all
    four percentages are relative to the number of rows. "Matched" is correct plus wrong, so
    it can exceed 100 % when several detections take the same row.
    """

    tolerance_ms: float = TF_DEFAULT_TOLERANCE_MS
    ground_truths: int = 0
    correct: int = 0
    wrong: int = 0
    false_positives: int = 0

    @property
    def matched(self) -> int:
        return self.correct + self.wrong

    def percentage(self, count: int) -> float | None:
        ratio = _ratio(count, self.ground_truths)
        return None if ratio is None else 100.0 * ratio

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance_ms": self.tolerance_ms,
            "ground_truths": self.ground_truths,
            "matched": self.matched,
            "correct": self.correct,
            "wrong": self.wrong,
            "false_positives": self.false_positives,
            "matched_pct": self.percentage(self.matched),
            "correct_pct": self.percentage(self.correct),
            "wrong_pct": self.percentage(self.wrong),
            "false_positive_pct": self.percentage(self.false_positives),
        }


@dataclass
class ScoreReport:
    """Totals, per-keyword counts, confusions and latency of one scored stream."""

    tolerance_ms: float
    audio_seconds: float | None
    references: int
    """Keyword references (``_unknown_`` rows excluded)."""
    unknown_references: int
    detections: int
    tp: int
    fp: int
    fn: int
    false_positives_on_unknown: int
    confusions: dict[str, dict[str, int]]
    """Reference keyword -> detected keyword -> number of false positives in its span."""
    per_keyword: dict[str, KeywordCounts]
    latencies_ms: list[float] = field(default_factory=list)
    """Detection time minus word end of each true positive, in detection order."""
    tf_compat: TfCompatStats | None = None

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def miss_rate(self) -> float | None:
        return _ratio(self.fn, self.tp + self.fn)

    @property
    def false_accepts_per_hour(self) -> float | None:
        if self.audio_seconds is None:
            return None
        return _ratio(self.fp, self.audio_seconds / 3600.0)

    def latency_summary(self) -> dict[str, float | int | None]:
        """Median and 90th percentile (linear interpolation) of true-positive latency."""
        if not self.latencies_ms:
            return {"count": 0, "median": None, "p90": None}
        values = np.asarray(self.latencies_ms, dtype=np.float64)
        return {
            "count": len(values),
            "median": float(np.median(values)),
            "p90": float(np.percentile(values, 90)),
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the report under the field names of the replay report JSON."""
        data: dict[str, Any] = {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_accepts_per_hour": self.false_accepts_per_hour,
            "miss_rate": self.miss_rate,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "references": self.references,
            "unknown_references": self.unknown_references,
            "detections": self.detections,
            "false_positives_on_unknown": self.false_positives_on_unknown,
            "confusions": self.confusions,
            "per_keyword": {
                keyword: counts.to_dict() for keyword, counts in self.per_keyword.items()
            },
            "latency_ms": self.latency_summary(),
            "tolerance_ms": self.tolerance_ms,
            "audio_seconds": self.audio_seconds,
        }
        if self.tf_compat is not None:
            data["tf_compat"] = self.tf_compat.to_dict()
        return data


class StreamingScorer:
    """Score detections against reference labels as stream time advances.

    Call :meth:`on_detection` for each detection and :meth:`advance` with the current stream
    time, both in non-decreasing time order, then :meth:`finish` once at the end.
    ``keywords`` names the keywords that get a ``per_keyword`` entry even without any
    reference or detection; ``None`` uses the labels seen. Pass ``tf_compat=True`` to also
    compute TensorFlow's streaming accuracy percentages (:class:`TfCompatStats`).
    """

    def __init__(
        self,
        labels: Iterable[Label],
        keywords: Iterable[str] | None = None,
        tolerance_ms: float = DEFAULT_TOLERANCE_MS,
        *,
        tf_compat: bool = False,
        tf_tolerance_ms: float = TF_DEFAULT_TOLERANCE_MS,
    ) -> None:
        if tolerance_ms < 0:
            raise ValueError(f"tolerance_ms must be >= 0, got {tolerance_ms}")
        if tf_tolerance_ms < 0:
            raise ValueError(f"tf_tolerance_ms must be >= 0, got {tf_tolerance_ms}")
        self.tolerance_ms = tolerance_ms
        self._labels = sorted(labels, key=lambda label: (label.start_ms, label.end_ms))
        self._matched = [False] * len(self._labels)

        self._per_keyword: dict[str, KeywordCounts] = {}
        for keyword in keywords or ():
            self._per_keyword.setdefault(keyword, KeywordCounts())
        # Per keyword: reference indices in start order, how many of them have started,
        # and the started ones that may still be matched.
        self._indices_by_keyword: dict[str, list[int]] = {}
        for index, label in enumerate(self._labels):
            if label.is_keyword:
                self._indices_by_keyword.setdefault(label.label, []).append(index)
                self._per_keyword.setdefault(label.label, KeywordCounts())
        self._started_count = dict.fromkeys(self._indices_by_keyword, 0)
        self._candidates: dict[str, list[int]] = {k: [] for k in self._indices_by_keyword}

        # References of any label whose span may contain the next detection, for confusions.
        self._span_started = 0
        self._open_spans: list[int] = []

        # Min-heap of (end_ms + tolerance_ms, index): when each keyword reference expires.
        self._deadlines = [
            (label.end_ms + tolerance_ms, index)
            for index, label in enumerate(self._labels)
            if label.is_keyword
        ]
        heapq.heapify(self._deadlines)

        self._last_detection_ms = float("-inf")
        self._advanced_to_ms = float("-inf")
        self._finished = False
        self._detections = 0
        self._false_positives_on_unknown = 0
        self._confusions: dict[str, dict[str, int]] = {}
        self._latencies_ms: list[float] = []
        self._tf = _TfCompatMatcher(self._labels, tf_tolerance_ms) if tf_compat else None

    def on_detection(self, keyword: str, time_ms: float) -> DetectionOutcome:
        """Decide one detection at once: a true positive or a false positive.

        Raises ValueError when ``time_ms`` is earlier than the previous detection or than the
        stream time already passed to :meth:`advance`.
        """
        self._check_open()
        if time_ms < self._last_detection_ms:
            raise ValueError(
                f"detection of {keyword!r} at {time_ms} ms is earlier than the previous "
                f"detection at {self._last_detection_ms} ms; feed detections in time order"
            )
        if time_ms < self._advanced_to_ms:
            raise ValueError(
                f"detection of {keyword!r} at {time_ms} ms is earlier than the stream time "
                f"{self._advanced_to_ms} ms already passed to advance()"
            )
        self._last_detection_ms = time_ms
        self._detections += 1
        if self._tf is not None:
            self._tf.on_detection(keyword, time_ms)

        counts = self._per_keyword.setdefault(keyword, KeywordCounts())
        reference_index = self._match(keyword, time_ms)
        if reference_index is not None:
            self._matched[reference_index] = True
            counts.tp += 1
            outcome = DetectionOutcome(keyword, time_ms, self._labels[reference_index])
            self._latencies_ms.append(time_ms - self._labels[reference_index].end_ms)
            return outcome

        counts.fp += 1
        confused_with, on_unknown = self._spans_containing(keyword, time_ms)
        if confused_with is not None:
            by_detected = self._confusions.setdefault(confused_with.label, {})
            by_detected[keyword] = by_detected.get(keyword, 0) + 1
        if on_unknown:
            self._false_positives_on_unknown += 1
        return DetectionOutcome(keyword, time_ms, None, confused_with, on_unknown)

    def advance(self, time_ms: float) -> list[Label]:
        """Move stream time to ``time_ms``; return the references that just became misses.

        A reference is a false negative once ``time_ms > end_ms + tolerance_ms`` and no
        detection matched it. Raises ValueError when ``time_ms`` goes backwards.
        """
        self._check_open()
        if time_ms < self._advanced_to_ms:
            raise ValueError(
                f"stream time {time_ms} ms is earlier than {self._advanced_to_ms} ms passed "
                "to advance() before"
            )
        self._advanced_to_ms = time_ms
        return self._expire(lambda deadline_ms: deadline_ms < time_ms)

    def finish(self, duration_s: float | None = None) -> ScoreReport:
        """End the stream: every unmatched reference becomes a miss. Return the report.

        ``duration_s`` is the audio duration, needed for false accepts per hour.
        """
        self._check_open()
        self._expire(lambda deadline_ms: True)
        self._finished = True
        return self.report(duration_s)

    def precision(self) -> float | None:
        """Return the precision of the detections decided so far (None before any)."""
        counts = self._per_keyword.values()
        tp = sum(c.tp for c in counts)
        return _ratio(tp, tp + sum(c.fp for c in counts))

    def recall(self) -> float | None:
        """Return the recall of the references decided so far: matched or missed."""
        counts = self._per_keyword.values()
        tp = sum(c.tp for c in counts)
        return _ratio(tp, tp + sum(c.fn for c in counts))

    def report(self, duration_s: float | None = None) -> ScoreReport:
        """Return the counts decided so far; references still open are not counted."""
        if duration_s is not None and duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {duration_s}")
        counts = self._per_keyword.values()
        tf_stats = None
        if self._tf is not None:
            tf_stats = TfCompatStats(**vars(self._tf.stats))
        return ScoreReport(
            tolerance_ms=self.tolerance_ms,
            audio_seconds=duration_s,
            references=sum(len(indices) for indices in self._indices_by_keyword.values()),
            unknown_references=sum(1 for label in self._labels if not label.is_keyword),
            detections=self._detections,
            tp=sum(c.tp for c in counts),
            fp=sum(c.fp for c in counts),
            fn=sum(c.fn for c in counts),
            false_positives_on_unknown=self._false_positives_on_unknown,
            confusions={
                reference: dict(sorted(detected.items()))
                for reference, detected in sorted(self._confusions.items())
            },
            per_keyword={
                keyword: KeywordCounts(c.tp, c.fp, c.fn)
                for keyword, c in sorted(self._per_keyword.items())
            },
            latencies_ms=list(self._latencies_ms),
            tf_compat=tf_stats,
        )

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the scorer is finished; create a new StreamingScorer")

    def _match(self, keyword: str, time_ms: float) -> int | None:
        indices = self._indices_by_keyword.get(keyword)
        if indices is None:
            return None
        started = self._started_count[keyword]
        candidates = self._candidates[keyword]
        while started < len(indices) and self._labels[indices[started]].start_ms <= time_ms:
            candidates.append(indices[started])
            started += 1
        self._started_count[keyword] = started

        # Drop matched references and those whose tolerance ended; the rest stay in start order.
        latest_end_ms = time_ms - self.tolerance_ms
        if candidates:
            candidates[:] = [
                index for index in candidates
                if not self._matched[index] and self._labels[index].end_ms >= latest_end_ms
            ]
        return candidates[0] if candidates else None

    def _spans_containing(self, keyword: str, time_ms: float) -> tuple[Label | None, bool]:
        labels = self._labels
        while self._span_started < len(labels) and labels[self._span_started].start_ms <= time_ms:
            self._open_spans.append(self._span_started)
            self._span_started += 1
        self._open_spans = [i for i in self._open_spans if labels[i].end_ms >= time_ms]

        confused_with = None
        on_unknown = False
        for index in self._open_spans:
            label = labels[index]
            if label.label == UNKNOWN_LABEL:
                on_unknown = True
            elif label.label != keyword and confused_with is None:
                confused_with = label
        return confused_with, on_unknown

    def _expire(self, is_due: Callable[[float], bool]) -> list[Label]:
        missed = []
        while self._deadlines and is_due(self._deadlines[0][0]):
            _, index = heapq.heappop(self._deadlines)
            if not self._matched[index]:
                label = self._labels[index]
                self._per_keyword[label.label].fn += 1
                missed.append(label)
        return missed


class _TfCompatMatcher:
    """Incremental form of TensorFlow's ``StreamingAccuracyStats.calculate_accuracy_stats``.

    TensorFlow recomputes the counts from all detections so far at each detection. Only its
    final call, which has no upper time limit, is reproduced here. That call decides each
    detection from the detection and the ground-truth times taken before it, so one pass in
    detection order gives the same counts.
    """

    def __init__(self, labels: Sequence[Label], tolerance_ms: float) -> None:
        # TensorFlow rounds each start with Python's round() and sorts rows by it (stably).
        rows = sorted(((round(label.start_ms), label.label) for label in labels),
                      key=lambda row: row[0])
        self._times = [time for time, _ in rows]
        self._labels = [label for _, label in rows]
        self._taken_times: set[int] = set()
        self.stats = TfCompatStats(tolerance_ms=tolerance_ms, ground_truths=len(rows))

    def on_detection(self, keyword: str, time_ms: float) -> None:
        window_start_ms = time_ms - TF_WINDOW_MS
        tolerance_ms = self.stats.tolerance_ms
        index = bisect.bisect_left(self._times, window_start_ms - tolerance_ms)
        if index == len(self._times) or self._times[index] > window_start_ms + tolerance_ms:
            self.stats.false_positives += 1
            return
        time = self._times[index]
        if self._labels[index] == keyword and time not in self._taken_times:
            self.stats.correct += 1
        else:
            self.stats.wrong += 1
        self._taken_times.add(time)


def score_events(
    events: Iterable[Detection],
    labels: Iterable[Label],
    keywords: Iterable[str] | None = None,
    tolerance_ms: float = DEFAULT_TOLERANCE_MS,
    duration_s: float | None = None,
    *,
    tf_compat: bool = False,
    tf_tolerance_ms: float = TF_DEFAULT_TOLERANCE_MS,
) -> ScoreReport:
    """Score saved detections: feed a :class:`StreamingScorer` in time order and finish it.

    Detections with equal times keep their given order.
    """
    scorer = StreamingScorer(
        labels, keywords, tolerance_ms, tf_compat=tf_compat, tf_tolerance_ms=tf_tolerance_ms
    )
    for event in sorted(events, key=lambda event: event.time_ms):
        scorer.on_detection(event.keyword, event.time_ms)
    return scorer.finish(duration_s)


def _ratio(numerator: float, denominator: float) -> float | None:
    if denominator == 0:
        return None
    return numerator / denominator
