"""A replay paced in real time publishes every event to a real broker, across a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from kwstream.modelcard import default_model_path
from tests.support import decode_allison, silence, write_wav
from tests.test_mqtt import Subscriber

pytestmark = pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")

DEVICE = "replay-test"
DETECTION_TOPIC = f"kws/{DEVICE}/detection"
STATUS_TOPIC = f"kws/{DEVICE}/status"


def test_broker_restart_during_realtime_replay_loses_no_event(mosquitto, tmp_path):
    parts = [silence(0.5)]
    for digit in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0):
        parts += [decode_allison(f"digits/{digit}.g722", tmp_path), silence(0.7)]
    audio = np.concatenate(parts)
    wav = write_wav(tmp_path / "digits.wav", audio)
    duration_s = audio.size / 16000

    with Subscriber(mosquitto, [DETECTION_TOPIC, STATUS_TOPIC], client_id="replay-restart",
                    clean_session=False) as subscriber:
        process = subprocess.Popen(
            [sys.executable, "-m", "kwstream", "--log-level", "INFO", "replay", str(wav),
             "--speed", "realtime", "--mqtt", f"mqtt://{mosquitto.host}:{mosquitto.port}",
             "--device-id", DEVICE],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            time.sleep(duration_s * 0.4)
            mosquitto.restart(downtime_s=1.5)
            stdout, stderr = process.communicate(timeout=duration_s + 30)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, stderr.decode()
        printed = [json.loads(line) for line in stdout.decode().splitlines()]
        assert len(printed) >= 5

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            received = [json.loads(p) for p in subscriber.payloads(DETECTION_TOPIC)]
            if len({json.dumps(e, sort_keys=True) for e in received}) >= len(printed):
                break
            time.sleep(0.1)

    # At-least-once: duplicates may arrive, but every printed event arrives, in order.
    unique = []
    for event in received:
        if event not in unique:
            unique.append(event)
    assert unique == printed
    assert subscriber.payloads(STATUS_TOPIC)[-1] == b"offline"
