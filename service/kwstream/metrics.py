"""Prometheus metrics of the pipeline, created in an injected registry.

Names follow Prometheus conventions: prefix ``kws_``, base units (seconds), counters ending
in ``_total``, and the label ``model`` wherever a primary and a shadow model can both run.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# From 0.1 ms to 1 s: an int8 keyword model runs in a fraction of a millisecond on a desktop
# core and in a few milliseconds on a Raspberry Pi, and tenths of a millisecond must resolve.
INFERENCE_BUCKETS_S = (
    0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
)
# Block arrival to decision includes waiting for the next inference stride and queueing.
PIPELINE_BUCKETS_S = (
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)


class Metrics:
    """All kwstream metrics, registered in one registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None, mqtt: bool = True) -> None:
        """Create the metrics in ``registry``, or in a new one if None.

        ``mqtt=False`` leaves out the MQTT metrics, so a daemon without MQTT exports no
        connection gauge that always reads 0."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.inference_seconds = Histogram(
            "kws_inference_seconds", "Wall time of one model invocation per window.",
            ["model"], buckets=INFERENCE_BUCKETS_S, registry=r)
        self.pipeline_latency_seconds = Histogram(
            "kws_pipeline_latency_seconds",
            "Wall time from a block's arrival to the decision on its last window.",
            ["model"], buckets=PIPELINE_BUCKETS_S, registry=r)
        self.inferences = Counter(
            "kws_inferences_total", "Windows the model was run on.", ["model"], registry=r)
        self.detections = Counter(
            "kws_detections_total", "Keyword events emitted.", ["model", "keyword"], registry=r)
        self.audio_seconds = Counter(
            "kws_audio_seconds_total", "Audio processed, in seconds of stream time.", registry=r)
        self.vad_speech_seconds = Counter(
            "kws_vad_speech_seconds_total", "Audio the VAD gate passed to the model.", registry=r)
        self.audio_overflows = Counter(
            "kws_audio_overflows_total", "Audio blocks dropped because a buffer was full.",
            registry=r)
        self.dropped_audio_seconds = Counter(
            "kws_dropped_audio_seconds_total", "Audio dropped because a buffer was full.",
            registry=r)
        self.source_up = Gauge(
            "kws_source_up", "1 while audio arrives from the source, else 0.", registry=r)
        self.realtime_factor = Gauge(
            "kws_realtime_factor", "Audio seconds processed per wall-clock second.", registry=r)
        self.model_info = Info(
            "kws_model", "Model identity: id, version and sha256 of the file.", ["model"],
            registry=r)
        self.scored_true_positives = Counter(
            "kws_scored_true_positives_total", "Detections that matched a reference label.",
            ["model", "keyword"], registry=r)
        self.scored_false_positives = Counter(
            "kws_scored_false_positives_total", "Detections that matched no reference label.",
            ["model", "keyword"], registry=r)
        self.scored_false_negatives = Counter(
            "kws_scored_false_negatives_total", "Reference labels that no detection matched.",
            ["model", "keyword"], registry=r)
        self.streaming_precision = Gauge(
            "kws_streaming_precision", "Precision so far against the reference labels.",
            ["model"], registry=r)
        self.streaming_recall = Gauge(
            "kws_streaming_recall", "Recall so far against the reference labels.",
            ["model"], registry=r)
        if mqtt:
            self._create_mqtt_metrics()

    def _create_mqtt_metrics(self) -> None:
        r = self.registry
        self.mqtt_connected = Gauge(
            "kws_mqtt_connected", "1 while connected to the MQTT broker.", registry=r)
        self.mqtt_queue_depth = Gauge(
            "kws_mqtt_queue_depth", "Events waiting to be published to MQTT.", registry=r)
        self.mqtt_published = Counter(
            "kws_mqtt_published_total", "Events the MQTT broker acknowledged.", registry=r)
        self.mqtt_dropped = Counter(
            "kws_mqtt_dropped_total", "Events dropped because the MQTT queue was full.",
            registry=r)
