"""Shadow mode: a second model sees the same audio; only the primary model's events go to MQTT."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from kwstream.inference import KeywordModel
from kwstream.metrics import Metrics
from kwstream.modelcard import default_model_path, load_card
from kwstream.pipeline import Pipeline
from kwstream.sources import AudioBlock
from tests.support import decode_allison, silence, write_wav
from tests.test_mqtt import Subscriber

pytestmark = pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")

SHADOW_ID = "kws20-shadow"


@pytest.fixture
def shadow_model(tmp_path):
    """The shipped model under another id, as a candidate would be."""
    source = default_model_path()
    target = tmp_path / "shadow.tflite"
    shutil.copy(source, target)
    card = json.loads(source.with_suffix(".json").read_text())
    card["id"] = SHADOW_ID
    target.with_suffix(".json").write_text(json.dumps(card))
    return target


def _stream(tmp_path):
    word = decode_allison("digits/6.g722", tmp_path)
    return np.concatenate([silence(1.0), word, silence(1.5)])


def test_shadow_events_are_marked_and_metrics_labelled(shadow_model, tmp_path):
    metrics = Metrics()
    pipeline = Pipeline(KeywordModel(default_model_path()), metrics,
                        shadow=KeywordModel(shadow_model))
    events = pipeline.process(AudioBlock(_stream(tmp_path), 0))
    card = load_card(default_model_path())
    primary_id = card.id
    primary = [e for e in events if not e["shadow"]]
    shadow = [e for e in events if e["shadow"]]
    assert [e["keyword"] for e in primary] == ["six"]
    assert [e["model"] for e in shadow] == [SHADOW_ID]
    # The same weights on the same audio give the same decision at the same time.
    assert shadow[0]["time_ms"] == primary[0]["time_ms"]
    for model in (primary_id, SHADOW_ID):
        assert metrics.registry.get_sample_value(
            "kws_detections_total", {"model": model, "keyword": "six"}) == 1.0
        assert metrics.registry.get_sample_value(
            "kws_inference_seconds_count", {"model": model}) > 0
        assert metrics.registry.get_sample_value(
            "kws_model_info", {"model": model, "id": model, "version": card.version,
                               "sha256": card.sha256,
                               "role": "primary" if model == primary_id else "shadow"}) == 1.0


def test_shadow_with_the_primary_id_is_rejected(tmp_path):
    from kwstream.errors import ConfigError

    model = KeywordModel(default_model_path())
    with pytest.raises(ConfigError, match="same id"):
        Pipeline(model, Metrics(), shadow=KeywordModel(default_model_path()))


def test_only_primary_events_reach_mqtt(mosquitto, shadow_model, tmp_path):
    wav = write_wav(tmp_path / "six.wav", _stream(tmp_path))
    topic = "kws/shadow-test/detection"
    with Subscriber(mosquitto, [topic]) as subscriber:
        result = subprocess.run(
            [sys.executable, "-m", "kwstream", "--log-level", "ERROR", "replay", str(wav),
             "--shadow-model", str(shadow_model), "--device-id", "shadow-test",
             "--mqtt", f"mqtt://{mosquitto.host}:{mosquitto.port}"],
            capture_output=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr.decode()
        time.sleep(0.5)
        received = [json.loads(p) for p in subscriber.payloads(topic)]
    printed = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert sorted(e["shadow"] for e in printed) == [False, True]
    assert received == [e for e in printed if not e["shadow"]]
