"""Threshold sweep: a DET curve (miss rate against false accepts per hour) from one replay.

The replay keeps the smoothed keyword score of every inference. For each threshold of the
sweep, :func:`detect` applies the detector's rule to those scores with that threshold for
every keyword. The rule fires on a trusted score at or above its threshold, takes the
highest-scoring keyword, and allows no event for ``suppression_ms`` afterwards. The
detections are then scored with :class:`kwstream.scoring.StreamingScorer`, so each point of
the curve is what a replay at that threshold would report.

A keyword's false accepts depend a little on the other keywords' thresholds, because one
suppression period follows a detection of any keyword. The sweep moves all thresholds
together.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kwstream.labels import Label
from kwstream.scoring import ScoreReport, StreamingScorer

DEFAULT_THRESHOLDS = (*(round(0.05 * step, 2) for step in range(1, 20)), 0.97, 0.99)
OVERALL = "_overall_"
"""Keyword column value of the points that count every keyword together."""
DEFAULT_TARGET_FALSE_ACCEPTS_PER_HOUR = 1.0


@dataclass(frozen=True)
class DetPoint:
    """Counts and rates of one keyword (or of all, ``OVERALL``) at one threshold."""

    threshold: float
    keyword: str
    tp: int
    fp: int
    fn: int
    miss_rate: float | None
    false_accepts_per_hour: float | None


def detect(
    times_ms: np.ndarray,
    scores: np.ndarray,
    keywords: Sequence[str],
    thresholds: float | Sequence[float] | np.ndarray,
    suppression_ms: float,
    trusted: np.ndarray | None = None,
) -> list[tuple[str, float]]:
    """Return the detections ``(keyword, time_ms)`` that the detector makes on these scores.

    ``scores`` is (inferences, keywords) of smoothed scores at ``times_ms`` (increasing);
    ``trusted`` marks the rows with enough posteriors averaged (default: all). The rule is
    the one of :class:`kwstream.smoother.PosteriorSmoother`.
    """
    times = np.asarray(times_ms, dtype=np.float64)
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 2 or values.shape != (times.size, len(keywords)):
        raise ValueError(
            f"scores must have shape ({times.size}, {len(keywords)}), got {values.shape}"
        )
    limits = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(keywords),))
    over = values >= limits
    passing = over.any(axis=1)
    if trusted is not None:
        passing &= np.asarray(trusted, dtype=bool)
    rows = np.flatnonzero(passing)
    row_times = times[rows]

    detections = []
    position = 0
    while position < rows.size:
        row = rows[position]
        candidates = np.where(over[row], values[row], -np.inf)
        detections.append((keywords[int(np.argmax(candidates))], float(times[row])))
        # The next detection needs time_ms - this time >= suppression_ms.
        next_time = times[row] + suppression_ms
        position = max(position + 1, int(np.searchsorted(row_times, next_time, side="left")))
    return detections


def det_curve(
    times_ms: np.ndarray,
    scores: np.ndarray,
    keywords: Sequence[str],
    labels: Iterable[Label],
    thresholds: Sequence[float],
    suppression_ms: float,
    tolerance_ms: float,
    audio_seconds: float | None,
    trusted: np.ndarray | None = None,
) -> list[DetPoint]:
    """Score the detections at each threshold; return per-keyword and ``OVERALL`` points."""
    labels = list(labels)
    points = []
    for threshold in sorted(thresholds):
        scorer = StreamingScorer(labels, keywords, tolerance_ms)
        for keyword, time_ms in detect(times_ms, scores, keywords, threshold, suppression_ms,
                                       trusted):
            scorer.on_detection(keyword, time_ms)
        report = scorer.finish(audio_seconds)
        points.extend(_points(threshold, report))
    return points


def _points(threshold: float, report: ScoreReport) -> list[DetPoint]:
    hours = None if not report.audio_seconds else report.audio_seconds / 3600.0
    points = [DetPoint(threshold, OVERALL, report.tp, report.fp, report.fn, report.miss_rate,
                       report.false_accepts_per_hour)]
    for keyword, counts in report.per_keyword.items():
        rate = None if hours is None else counts.fp / hours
        points.append(DetPoint(threshold, keyword, counts.tp, counts.fp, counts.fn,
                               counts.miss_rate, rate))
    return points


def lowest_thresholds(
    points: Iterable[DetPoint], target_false_accepts_per_hour: float
) -> dict[str, float | None]:
    """Return, per keyword, the lowest threshold from which the target is met.

    "From which" means that this threshold and every higher one of the sweep have at most
    ``target_false_accepts_per_hour``, since suppression can make the rate rise again at a
    higher threshold. None when no threshold qualifies or the rate is unknown (no duration).
    """
    by_keyword: dict[str, list[DetPoint]] = {}
    for point in points:
        by_keyword.setdefault(point.keyword, []).append(point)
    result: dict[str, float | None] = {}
    for keyword, keyword_points in by_keyword.items():
        lowest = None
        for point in sorted(keyword_points, key=lambda p: p.threshold, reverse=True):
            rate = point.false_accepts_per_hour
            if rate is None or rate > target_false_accepts_per_hour:
                break
            lowest = point.threshold
        result[keyword] = lowest
    return result


def write_det_csv(points: Iterable[DetPoint], path: Path) -> None:
    """Write one row per point: threshold, keyword, tp, fp, fn, miss_rate, false accepts/h."""
    names = [name for name in DetPoint.__dataclass_fields__]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for point in points:
            row = asdict(point)
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def plot_det(points: Sequence[DetPoint], path: Path, target_false_accepts_per_hour: float) -> None:
    """Draw miss rate against false accepts per hour, one line per keyword, into a PNG."""
    # Imported here: matplotlib is an optional dependency (the "plots" extra).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    keywords = sorted({point.keyword for point in points} - {OVERALL})
    for keyword in [*keywords, OVERALL]:
        curve = [
            (p.false_accepts_per_hour, p.miss_rate)
            for p in sorted(points, key=lambda p: p.threshold)
            if p.keyword == keyword
            and p.miss_rate is not None and p.false_accepts_per_hour is not None
        ]
        if not curve:
            continue
        overall = keyword == OVERALL
        axes.plot(
            [rate for rate, _ in curve], [miss for _, miss in curve],
            color="black" if overall else None, linewidth=2.5 if overall else 1.0,
            marker="o" if overall else None, markersize=3,
            label="all keywords" if overall else keyword,
        )
    axes.axvline(target_false_accepts_per_hour, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xscale("symlog", linthresh=1.0)
    axes.set_xlabel("false accepts per hour")
    axes.set_ylabel("miss rate")
    axes.set_xlim(left=0)
    axes.set_ylim(0, 1)
    axes.set_title("DET curve of the threshold sweep")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(str(path))


def sweep_thresholds(
    *,
    times_ms: np.ndarray,
    scores: np.ndarray,
    keywords: Sequence[str],
    labels: Iterable[Label],
    suppression_ms: float,
    tolerance_ms: float,
    audio_seconds: float | None,
    out_dir: Path,
    trusted: np.ndarray | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    target_false_accepts_per_hour: float = DEFAULT_TARGET_FALSE_ACCEPTS_PER_HOUR,
    plot: bool = True,
) -> dict[str, Any]:
    """Compute the DET curve, write ``det.csv`` (and ``det.png``) to ``out_dir``.

    Returns a JSON-ready summary: file paths, the target and, per keyword, the lowest
    threshold meeting it (see :func:`lowest_thresholds`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    points = det_curve(times_ms, scores, keywords, labels, thresholds, suppression_ms,
                       tolerance_ms, audio_seconds, trusted)
    csv_path = out_dir / "det.csv"
    write_det_csv(points, csv_path)
    summary: dict[str, Any] = {"csv": str(csv_path)}
    if plot:
        png_path = out_dir / "det.png"
        plot_det(points, png_path, target_false_accepts_per_hour)
        summary["png"] = str(png_path)
    summary["thresholds"] = sorted(thresholds)
    summary["target_false_accepts_per_hour"] = target_false_accepts_per_hour
    summary["lowest_thresholds"] = lowest_thresholds(points, target_false_accepts_per_hour)
    return summary
