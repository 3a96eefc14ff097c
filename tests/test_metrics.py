"""Prometheus metrics: names of the design, served on loopback while a replay runs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kwstream.metrics import Metrics
from kwstream.modelcard import default_model_path
from tests.support import decode_allison, silence, write_wav

needs_model = pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")

DESIGN_METRICS = {
    "kws_inference_seconds": "histogram",
    "kws_pipeline_latency_seconds": "histogram",
    "kws_detections": "counter",
    "kws_audio_seconds": "counter",
    "kws_vad_speech_seconds": "counter",
    "kws_audio_overflows": "counter",
    "kws_source_up": "gauge",
    "kws_realtime_factor": "gauge",
    "kws_model": "info",
    "kws_scored_true_positives": "counter",
    "kws_scored_false_positives": "counter",
    "kws_scored_false_negatives": "counter",
    "kws_streaming_precision": "gauge",
    "kws_streaming_recall": "gauge",
    "kws_mqtt_connected": "gauge",
    "kws_mqtt_queue_depth": "gauge",
    "kws_mqtt_published": "counter",
}


def test_registry_has_every_design_metric():
    families = {m.name: m.type for m in Metrics().registry.collect()}
    for name, kind in DESIGN_METRICS.items():
        assert families.get(name) == kind, name


def test_inference_buckets_resolve_a_tenth_of_a_millisecond():
    metrics = Metrics()
    metrics.inference_seconds.labels(model="m").observe(0.00015)
    value = metrics.registry.get_sample_value(
        "kws_inference_seconds_bucket", {"model": "m", "le": "0.0001"})
    assert value == 0.0
    assert metrics.registry.get_sample_value(
        "kws_inference_seconds_bucket", {"model": "m", "le": "0.0002"}) == 1.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@needs_model
def test_endpoint_serves_live_metrics_during_replay(tmp_path):
    word = decode_allison("digits/6.g722", tmp_path)
    audio = np.concatenate([silence(1.0), word, silence(2.0), word, silence(3.0)])
    wav = write_wav(tmp_path / "sixes.wav", audio)
    labels = tmp_path / "sixes.csv"
    first_end = (16000 + word.size) / 16
    second_start = (16000 + word.size + 32000) / 16
    labels.write_text(f"label,start_ms,end_ms\nsix,1000,{first_end}\n"
                      f"six,{second_start},{second_start + word.size / 16}\n")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kwstream", "--log-level", "ERROR", "replay", str(wav),
         "--labels", str(labels), "--speed", "realtime", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    model = _model_id()
    try:
        # Scrape until the replay ends; the stream ends with 3 s of silence, so the last
        # scrape comes after the last detection.
        samples: dict = {}
        deadline = time.monotonic() + audio.size / 16000 + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                samples = _scrape(port)
            except OSError:
                pass
            time.sleep(0.2)
    finally:
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    printed = [line for line in stdout.decode().splitlines() if line]
    assert printed

    assert _value(samples, "kws_audio_seconds_total") > 0
    assert _value(samples, "kws_inference_seconds_count", model=model) > 0
    assert _value(samples, "kws_realtime_factor") == pytest.approx(1.0, abs=0.3)
    detections = sum(
        value for (name, labels_), value in samples.items()
        if name == "kws_detections_total" and dict(labels_).get("model") == model
    )
    assert detections == len(printed)
    true_positives = _value(samples, "kws_scored_true_positives_total", model=model,
                            keyword="six") or 0.0
    false_positives = sum(
        value for (name, labels_), value in samples.items()
        if name == "kws_scored_false_positives_total" and dict(labels_).get("model") == model
    )
    assert true_positives + false_positives == detections
    assert true_positives >= 1
    assert _value(samples, "kws_streaming_precision", model=model) == pytest.approx(
        true_positives / detections)


def _model_id() -> str:
    from kwstream.modelcard import load_card

    return load_card(default_model_path()).id
