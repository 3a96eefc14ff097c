"""The daemon (`kwstream run`) on a file paced in real time: SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kwstream.modelcard import default_model_path
from tests.support import decode_allison, silence, write_wav
from tests.test_mqtt import Subscriber

pytestmark = pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")

DEVICE = "daemon-test"


def test_sigterm_flushes_events_and_sets_status_offline(mosquitto, tmp_path):
    word = decode_allison("digits/6.g722", tmp_path)
    audio = np.concatenate([silence(0.5), word, silence(1.0), silence(30.0)])
    wav = write_wav(tmp_path / "six.wav", audio)
    events_file = tmp_path / "events.jsonl"
    config = tmp_path / "kwstream.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\n[source]\nkind = "file"\npath = "{wav}"\n'
        f'[mqtt]\nurl = "mqtt://{mosquitto.host}:{mosquitto.port}"\n'
        f'[events]\nfile = "{events_file}"\n'
    )
    topics = [f"kws/{DEVICE}/detection", f"kws/{DEVICE}/status"]
    with Subscriber(mosquitto, topics) as subscriber:
        process = subprocess.Popen([sys.executable, "-m", "kwstream", "run", "--config", str(config)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not subscriber.payloads(topics[0]):
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
        time.sleep(0.5)
        statuses = subscriber.payloads(topics[1])

    assert process.returncode == 0, stderr.decode()
    printed = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [event["keyword"] for event in printed] == ["six"]
    assert printed[0]["device"] == DEVICE
    assert printed[0]["wall_time"].endswith("+00:00")
    assert [json.loads(line) for line in events_file.read_text().splitlines()] == printed
    assert statuses[0] == b"online"
    assert statuses[-1] == b"offline"
    log = stderr.decode()
    assert "kwstream started" in log
    assert "received SIGTERM" in log
