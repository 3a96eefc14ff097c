"""Posterior smoother and detector.

The smoothed score of a class at inference time ``t`` is the mean of that class's posteriors
over the inferences in ``(t - average_window_ms, t]``. A keyword is detected when its smoothed
score reaches its threshold, at least ``minimum_count`` posteriors were averaged, and no
detection happened in the last ``suppression_ms``. Times are stream times in milliseconds, so
the same audio gives the same detections whatever the block size or the replay speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kwstream.modelcard import NON_KEYWORD_LABELS, SmootherSettings


@dataclass(frozen=True)
class Detection:
    keyword: str
    score: float
    time_ms: float
    """Stream time of the end of the window whose smoothed score crossed the threshold."""


class PosteriorSmoother:
    """Average posteriors over time and turn them into detections."""

    def __init__(
        self,
        labels: list[str],
        settings: SmootherSettings,
        thresholds: dict[str, float],
    ) -> None:
        self.labels = list(labels)
        self.settings = settings
        self.keyword_indices = np.array(
            [i for i, label in enumerate(self.labels) if label not in NON_KEYWORD_LABELS],
            dtype=np.int64,
        )
        self.keywords = [self.labels[i] for i in self.keyword_indices]
        missing = [k for k in self.keywords if k not in thresholds]
        if missing:
            raise ValueError(f"no threshold for keyword(s) {', '.join(missing)}")
        self.thresholds = np.array([thresholds[k] for k in self.keywords], dtype=np.float64)
        self._times = np.zeros(0, dtype=np.float64)
        self._posteriors = np.zeros((0, len(self.labels)), dtype=np.float64)
        self._last_detection_ms = -np.inf

    def process(
        self, times_ms: np.ndarray, posteriors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[Detection]]:
        """Smooth new posteriors (in time order) and return the detections they trigger.

        Returns the smoothed keyword scores (n, keywords), a mask of the rows whose score is
        trusted (enough posteriors averaged), and the detections.
        """
        times = np.asarray(times_ms, dtype=np.float64)
        if times.size == 0:
            return np.zeros((0, len(self.keywords))), np.zeros(0, dtype=bool), []
        if self._times.size and times[0] <= self._times[-1]:
            raise ValueError(
                f"posterior at {times[0]} ms is not after the previous one at "
                f"{self._times[-1]} ms"
            )
        all_times = np.concatenate([self._times, times])
        all_posteriors = np.concatenate([self._posteriors, posteriors.astype(np.float64)])
        history = self._times.size
        ends = np.arange(history, all_times.size) + 1
        starts = np.searchsorted(all_times, times - self.settings.average_window_ms, side="right")
        starts = np.minimum(starts, ends - 1)  # the current posterior always counts
        counts = ends - starts
        # Sum each span oldest first, padded with zeros to a fixed width, so a score does not
        # depend on how the posteriors were split into batches (cumulative sums would).
        width = int(counts.max())
        offsets = starts[:, np.newaxis] + np.arange(width)
        valid = offsets < ends[:, np.newaxis]
        gathered = all_posteriors[np.minimum(offsets, all_times.size - 1)]
        gathered[~valid] = 0.0
        smoothed = np.zeros((times.size, all_posteriors.shape[1]))
        for column in range(width):
            smoothed += gathered[:, column]
        smoothed /= counts[:, np.newaxis]
        keyword_scores = smoothed[:, self.keyword_indices]
        trusted = counts >= self.settings.minimum_count

        detections: list[Detection] = []
        passing = trusted & (keyword_scores >= self.thresholds).any(axis=1)
        for row in np.flatnonzero(passing):
            time_ms = float(times[row])
            if time_ms - self._last_detection_ms < self.settings.suppression_ms:
                continue
            over = keyword_scores[row] >= self.thresholds
            candidates = np.where(over, keyword_scores[row], -np.inf)
            best = int(np.argmax(candidates))
            detections.append(Detection(self.keywords[best], float(keyword_scores[row, best]), time_ms))
            self._last_detection_ms = time_ms

        keep_from = np.searchsorted(all_times, times[-1] - self.settings.average_window_ms, "right")
        self._times = all_times[keep_from:]
        self._posteriors = all_posteriors[keep_from:]
        return keyword_scores, trusted, detections
