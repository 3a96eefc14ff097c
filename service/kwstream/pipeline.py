"""The streaming pipeline: blocks in, keyword events out, metrics updated on the way.

For each block, the VAD classifies the 20 ms frames that the block completes, and each model's
streaming frontend computes the feature rows that it completes. Every ``inference_stride``-th
row whose window the VAD gate passes goes through the model, all such windows of a block in
one invoke. The posteriors then go through the smoother and detector. With a label file, a live scorer judges
each detection and each reference that stream time has passed.

Decisions depend only on sample positions: the same audio gives the same events whatever the
block sizes and whether it is replayed at full speed or in real time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kwstream.errors import ConfigError, ModelCardError
from kwstream.frontend import StreamingFrontend
from kwstream.inference import KeywordModel
from kwstream.metrics import Metrics
from kwstream.smoother import PosteriorSmoother
from kwstream.sources import SAMPLE_RATE, AudioBlock
from kwstream.vad import VadGate

log = logging.getLogger(__name__)

HOP_MS = 20


@dataclass(frozen=True)
class VadSettings:
    enabled: bool = True
    mode: int = 1
    """webrtcvad aggressiveness, 0 (least) to 3 (most)."""
    hangover_ms: int = 1000
    """The gate stays open this long after the last speech frame (one window covers 1 s)."""


@dataclass
class ScoreTrace:
    """Smoothed keyword scores of every inference, kept for a threshold sweep."""

    times_ms: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    trusted: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        width = self.scores[0].shape[1] if self.scores else 0
        if not self.times_ms:
            return np.zeros(0), np.zeros((0, width)), np.zeros(0, dtype=bool)
        return (np.concatenate(self.times_ms), np.concatenate(self.scores),
                np.concatenate(self.trusted))


class ModelChannel:
    """One model with its own frontend, smoother and optional live scorer."""

    def __init__(
        self,
        model: KeywordModel,
        shadow: bool,
        metrics: Metrics,
        inference_stride: int | None = None,
        scorer: Any | None = None,
        keep_trace: bool = False,
    ) -> None:
        card = model.card
        if card.frontend.hop_ms != HOP_MS:
            raise ModelCardError(
                f"{model.path}: the card's hop_ms is {card.frontend.hop_ms}, but the "
                f"pipeline runs on {HOP_MS} ms hops"
            )
        self.model = model
        self.shadow = shadow
        self.metrics = metrics
        settings = card.smoother
        if inference_stride is not None:
            settings = replace(settings, inference_stride=inference_stride)
        self.settings = settings
        self.frontend = StreamingFrontend(card.frontend)
        self.smoother = PosteriorSmoother(card.labels, settings, card.thresholds)
        self.scorer = scorer
        self.trace = ScoreTrace() if keep_trace else None
        self.inference_ms: list[np.ndarray] = []
        self.inferences = 0
        self.invokes = 0
        self.last_row_end_sample = 0
        self._label = model.id
        self._inference_histogram = metrics.inference_seconds.labels(model=self._label)
        self._latency_histogram = metrics.pipeline_latency_seconds.labels(model=self._label)

    @property
    def label(self) -> str:
        return self._label

    def reset(self) -> None:
        """Start a new frontend after lost audio; smoothing history ages out by stream time."""
        self.frontend = StreamingFrontend(self.model.card.frontend)

    def due_rows(self, first_row: int, end_row: int) -> np.ndarray:
        """Rows in ``[first_row, end_row)`` that complete a window and fall on the stride."""
        window_rows = self.model.card.frontend.window_rows
        stride = self.settings.inference_stride
        start = max(first_row, window_rows - 1)
        start += (-start) % stride
        return np.arange(start, end_row, stride, dtype=np.int64)


class Pipeline:
    """Turn audio blocks into events for a primary model and an optional shadow model."""

    def __init__(
        self,
        primary: KeywordModel,
        metrics: Metrics,
        vad: VadSettings | None = None,
        shadow: KeywordModel | None = None,
        inference_stride: int | None = None,
        scorers: dict[str, Any] | None = None,
        keep_trace: bool = False,
    ) -> None:
        if inference_stride is not None and inference_stride < 1:
            raise ConfigError(f"inference stride must be >= 1, got {inference_stride}")
        self.metrics = metrics
        self.vad_settings = vad or VadSettings()
        scorers = scorers or {}
        self.channels = [
            ModelChannel(primary, False, metrics, inference_stride, scorers.get(primary.id),
                         keep_trace)
        ]
        if shadow is not None:
            if shadow.id == primary.id:
                raise ConfigError(
                    f"the shadow model has the same id as the primary model ({shadow.id}); "
                    "give one of them another id in its card"
                )
            self.channels.append(
                ModelChannel(shadow, True, metrics, inference_stride, scorers.get(shadow.id),
                             keep_trace)
            )
        for channel in self.channels:
            card = channel.model.card
            # Create every per-keyword series at 0, so that rate() and increase() see the
            # first detection of a keyword as an increase rather than as a new series.
            for keyword in card.keywords:
                metrics.detections.labels(model=channel.label, keyword=keyword)
                if channel.scorer is not None:
                    for counter in (metrics.scored_true_positives, metrics.scored_false_positives,
                                    metrics.scored_false_negatives):
                        counter.labels(model=channel.label, keyword=keyword)
            metrics.model_info.labels(model=channel.label).info(
                {"id": card.id, "version": card.version, "sha256": card.sha256,
                 "role": "shadow" if channel.shadow else "primary"}
            )
        self.vad = self._new_vad()
        self.origin_sample = 0
        self.next_sample = 0
        self.samples_total = 0
        self.discontinuities = 0

    def _new_vad(self) -> VadGate:
        s = self.vad_settings
        return VadGate(enabled=s.enabled, mode=s.mode, hangover_ms=s.hangover_ms,
                       sample_rate=SAMPLE_RATE, frame_ms=HOP_MS)

    def process(self, block: AudioBlock) -> list[dict[str, Any]]:
        """Run one block through every model; return the events, primary model first."""
        if block.start_sample != self.next_sample:
            self._restart_at(block.start_sample)
        samples = block.samples
        self.next_sample = block.start_sample + samples.size
        self.samples_total += samples.size
        self.metrics.audio_seconds.inc(samples.size / SAMPLE_RATE)

        pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
        speech_frames = self.vad.process(pcm)
        if self.vad.enabled:
            self.metrics.vad_speech_seconds.inc(speech_frames * HOP_MS / 1000)
        else:
            self.metrics.vad_speech_seconds.inc(samples.size / SAMPLE_RATE)

        events: list[dict[str, Any]] = []
        gate_rows: list[np.ndarray] = []
        row_ranges = []
        for channel in self.channels:
            first_row = channel.frontend.rows_total
            channel.frontend.process(samples)
            row_ranges.append((first_row, channel.frontend.rows_total))
            gate_rows.append(channel.due_rows(first_row, channel.frontend.rows_total))

        for channel, rows in zip(self.channels, gate_rows, strict=True):
            open_rows = rows[self.vad.open_for_rows(rows)] if rows.size else rows
            events.extend(self._infer(channel, open_rows, block.arrival))
        next_needed = min(end for _, end in row_ranges)
        self.vad.forget_before(next_needed - 1)

        for channel, (_, end_row) in zip(self.channels, row_ranges, strict=True):
            if end_row:
                channel.last_row_end_sample = self.origin_sample + channel.frontend.row_end_sample(
                    end_row - 1
                )
            if channel.scorer is not None:
                self._record_misses(channel, channel.scorer.advance(
                    channel.last_row_end_sample * 1000 / SAMPLE_RATE))
        return events

    def _restart_at(self, start_sample: int) -> None:
        lost = start_sample - self.next_sample
        log.warning("audio gap of %.3f s at stream sample %d: restarting the frontend",
                    lost / SAMPLE_RATE, self.next_sample)
        self.discontinuities += 1
        self.origin_sample = start_sample
        self.vad = self._new_vad()
        for channel in self.channels:
            channel.reset()

    def _infer(self, channel: ModelChannel, rows: np.ndarray, arrival: float) -> list[dict[str, Any]]:
        if rows.size == 0:
            return []
        windows = channel.frontend.take_windows(rows)
        started = time.perf_counter()
        posteriors = channel.model.predict(windows)
        elapsed_s = time.perf_counter() - started
        per_window_s = elapsed_s / rows.size
        for _ in range(rows.size):
            channel._inference_histogram.observe(per_window_s)
        channel.inference_ms.append(np.full(rows.size, per_window_s * 1000.0))
        channel.inferences += rows.size
        channel.invokes += 1
        self.metrics.inferences.labels(model=channel.label).inc(rows.size)

        frontend = channel.frontend.params
        end_samples = self.origin_sample + rows * frontend.hop_samples + frontend.window_samples
        times_ms = end_samples * 1000.0 / SAMPLE_RATE
        scores, trusted, detections = channel.smoother.process(times_ms, posteriors)
        if channel.trace is not None:
            channel.trace.times_ms.append(times_ms)
            channel.trace.scores.append(scores)
            channel.trace.trusted.append(trusted)
        channel._latency_histogram.observe(time.perf_counter() - arrival)

        events = []
        for detection in detections:
            event = {
                "keyword": detection.keyword,
                "score": round(detection.score, 4),
                "time_ms": detection.time_ms,
                "model": channel.label,
                "shadow": channel.shadow,
            }
            events.append(event)
            self.metrics.detections.labels(model=channel.label, keyword=detection.keyword).inc()
            log.debug("detection %s score %.3f at %.0f ms (model %s)", detection.keyword,
                      detection.score, detection.time_ms, channel.label)
            if channel.scorer is not None:
                outcome = channel.scorer.on_detection(detection.keyword, detection.time_ms)
                self._record_outcome(channel, detection.keyword, outcome)
        return events

    def _record_outcome(self, channel: ModelChannel, keyword: str, outcome: Any) -> None:
        counter = (self.metrics.scored_true_positives if _is_true_positive(outcome)
                   else self.metrics.scored_false_positives)
        counter.labels(model=channel.label, keyword=keyword).inc()
        self._update_gauges(channel)

    def _record_misses(self, channel: ModelChannel, missed: list[Any]) -> None:
        for reference in missed:
            self.metrics.scored_false_negatives.labels(
                model=channel.label, keyword=reference.label).inc()
        if missed:
            self._update_gauges(channel)

    def _update_gauges(self, channel: ModelChannel) -> None:
        if channel.scorer is None:
            return
        report = channel.scorer.report()
        precision, recall = report.precision, report.recall
        if precision is not None:
            self.metrics.streaming_precision.labels(model=channel.label).set(precision)
        if recall is not None:
            self.metrics.streaming_recall.labels(model=channel.label).set(recall)

    @property
    def stream_time_ms(self) -> float:
        return self.next_sample * 1000.0 / SAMPLE_RATE


def _is_true_positive(outcome: Any) -> bool:
    return bool(outcome.true_positive)
