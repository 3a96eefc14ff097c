"""MQTT sink against a real mosquitto on 127.0.0.1 (fixtures in conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import paho.mqtt.client as paho
import pytest
from prometheus_client import CollectorRegistry

from kwstream.errors import ConfigError
from kwstream.metrics import Metrics
from kwstream.mqtt import PASSWORD_ENV, MqttSettings, MqttSink

if TYPE_CHECKING:
    from conftest import MosquittoBroker, PasswordBroker, TlsBroker

DEVICE = "test-pi"
DETECTION_TOPIC = f"kws/{DEVICE}/detection"
STATUS_TOPIC = f"kws/{DEVICE}/status"
TEST_TIMEOUT_S = 20.0
WAIT_TIMEOUT_S = 5.0

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T], timeout_s: float = TEST_TIMEOUT_S) -> T:
    """Run an async test body in a fresh event loop; a hang fails it after ``timeout_s``."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))


def make_event(index: int) -> dict[str, Any]:
    """Build an event with the daemon's schema; ``time_ms`` identifies it in these tests."""
    return {
        "keyword": "yes" if index % 2 else "no",
        "score": 0.9,
        "time_ms": 1000 + 20 * index,
        "model": "kws-test-1",
        "shadow": False,
        "wall_time": "2026-12-04T21:00:00.000+00:00",
        "device": DEVICE,
    }


def event_index(payload: bytes) -> int:
    return (int(json.loads(payload)["time_ms"]) - 1000) // 20


def fast_settings(broker: MosquittoBroker, **changes: Any) -> MqttSettings:
    """Settings for the test broker with short reconnect delays and timeouts."""
    settings = MqttSettings(
        host=broker.host, port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.2,
        timeout_s=2.0)
    return dataclasses.replace(settings, **changes)


def sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` every 10 ms; fail the test with ``what`` after WAIT_TIMEOUT_S."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_TIMEOUT_S} s waiting for {what}")
        await asyncio.sleep(0.01)


class Subscriber:
    """paho-mqtt client on its own thread that records every message on its topics.

    paho reconnects on its own, so with a fixed ``client_id`` and ``clean_session=False`` the
    broker keeps queueing QoS 1 messages for it across a broker restart.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: Sequence[str],
        *,
        client_id: str = "",
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._broker = broker
        self._topics = list(topics)
        self._lock = threading.Lock()
        self._messages: list[paho.MQTTMessage] = []
        self._subscribed = threading.Event()
        self._client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def __enter__(self) -> Subscriber:
        self._client.connect(self._broker.host, self._broker.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(WAIT_TIMEOUT_S):
            self.__exit__()
            raise AssertionError(f"subscription to {self._topics} not acknowledged")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(message)

    def messages(self, topic: str) -> list[paho.MQTTMessage]:
        with self._lock:
            return [message for message in self._messages if message.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [bytes(message.payload) for message in self.messages(topic)]


def retained_status(broker: MosquittoBroker, **credentials: Any) -> tuple[bytes, bool]:
    """Subscribe afresh and return the retained status payload and its retain flag."""
    with Subscriber(broker, [STATUS_TOPIC], **credentials) as subscriber:
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while not subscriber.messages(STATUS_TOPIC):
            if time.monotonic() > deadline:
                raise AssertionError(f"no retained message on {STATUS_TOPIC}")
            time.sleep(0.01)
        message = subscriber.messages(STATUS_TOPIC)[0]
        return bytes(message.payload), bool(message.retain)


# Settings


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "username"),
    [
        ("mqtt://broker.local", "broker.local", 1883, False, None),
        ("mqtts://broker.local", "broker.local", 8883, True, None),
        ("mqtt://pi@192.168.1.5:1884", "192.168.1.5", 1884, False, "pi"),
        ("mqtts://home%40assistant@[::1]:8884/", "::1", 8884, True, "home@assistant"),
    ],
)
def test_from_url_valid(
    url: str, host: str, port: int, tls: bool, username: str | None
) -> None:
    settings = MqttSettings.from_url(url, environ={})
    assert settings.host == host
    assert settings.effective_port == port
    assert settings.tls is tls
    assert settings.username == username
    assert settings.password is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker.local", "'http://broker.local': the scheme must be mqtt://"),
        ("broker.local:1883", "the scheme must be mqtt://"),
        ("mqtt://broker.local:0", "'mqtt://broker.local:0': the port must be"),
        ("mqtt://broker.local:70000", "'mqtt://broker.local:70000': the port must be"),
        ("mqtt://broker.local:abc", "'mqtt://broker.local:abc': the port must be"),
        ("mqtt://:1883", "the broker host is missing"),
        ("mqtt://broker.local/kws", "no path, query or fragment"),
    ],
)
def test_from_url_invalid(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MqttSettings.from_url(url, environ={})


def test_from_url_rejects_password() -> None:
    with pytest.raises(ConfigError) as caught:
        MqttSettings.from_url("mqtt://pi:hunter2@broker.local", environ={})
    assert "hunter2" not in str(caught.value)
    assert "mqtt://pi:***@broker.local" in str(caught.value)
    assert PASSWORD_ENV in str(caught.value)
    assert "password file" in str(caught.value)


def test_from_url_password_file(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("from-file\nsecond line\n", encoding="utf-8")
    settings = MqttSettings.from_url(
        "mqtt://pi@broker.local", password_file, environ={PASSWORD_ENV: "from-env"})
    assert settings.password == "from-file"


def test_from_url_password_env() -> None:
    settings = MqttSettings.from_url("mqtt://pi@broker.local", environ={PASSWORD_ENV: "from-env"})
    assert settings.password == "from-env"


def test_from_url_password_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"failed to read the MQTT password file {missing}"):
        MqttSettings.from_url("mqtt://pi@broker.local", missing, environ={})

    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the first line is empty"):
        MqttSettings.from_url("mqtt://pi@broker.local", empty, environ={})

    with pytest.raises(ConfigError, match="no user name"):
        MqttSettings.from_url("mqtt://broker.local", environ={PASSWORD_ENV: "from-env"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 65536}, "invalid MQTT port 65536"),
        ({"queue_size": 0}, "invalid MQTT queue size 0"),
        ({"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, "min 5.0 s, max 1.0 s"),
        ({"topic_prefix": "kws/#"}, "invalid MQTT topic prefix 'kws/#'"),
        ({"topic_prefix": "kws/"}, "empty topic level"),
        ({"ca_file": "/etc/hostname"}, "TLS is off"),
        ({"tls": True, "ca_file": "/nonexistent/ca.pem"}, "CA file not found"),
    ],
)
def test_settings_invalid(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MqttSettings(host="broker.local", **changes)


def test_sink_checks_changed_settings() -> None:
    settings = MqttSettings(host="broker.local")
    settings.queue_size = 0
    with pytest.raises(ConfigError, match="invalid MQTT queue size 0"):
        MqttSink(settings, device=DEVICE)


def test_sink_rejects_device_with_wildcard() -> None:
    with pytest.raises(ConfigError, match="invalid MQTT device id 'pi/#'"):
        MqttSink(MqttSettings(host="broker.local"), device="pi/#")


def test_repr_hides_password() -> None:
    settings = MqttSettings(host="broker.local", username="pi", password="hunter2")
    sink = MqttSink(settings, device=DEVICE)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(sink)
    assert "hunter2" not in settings.address


# Publishing


@pytest.mark.broker
def test_events_arrive_in_order(mosquitto: MosquittoBroker) -> None:
    registry = CollectorRegistry()
    events = [make_event(index) for index in range(20)]

    async def scenario() -> None:
        sink = MqttSink(fast_settings(mosquitto), DEVICE, Metrics(registry))
        with Subscriber(mosquitto, [DETECTION_TOPIC]) as subscriber:
            await sink.start()
            for event in events:
                sink.submit(event)
            await sink.close()
            await wait_until(
                lambda: len(subscriber.payloads(DETECTION_TOPIC)) >= len(events),
                "all events")
            messages = subscriber.messages(DETECTION_TOPIC)

        assert [message.payload for message in messages] == [
            json.dumps(event, separators=(",", ":")).encode() for event in events]
        assert [json.loads(message.payload) for message in messages] == events
        assert {message.qos for message in messages} == {1}
        assert not any(message.retain for message in messages)

    run(scenario())
    assert sample(registry, "kws_mqtt_published_total") == len(events)
    assert sample(registry, "kws_mqtt_dropped_total") == 0
    assert sample(registry, "kws_mqtt_queue_depth") == 0
    assert sample(registry, "kws_mqtt_connected") == 0


@pytest.mark.broker
def test_status_online_then_offline(mosquitto: MosquittoBroker) -> None:
    registry = CollectorRegistry()

    async def scenario() -> None:
        sink = MqttSink(fast_settings(mosquitto), DEVICE, Metrics(registry))
        await sink.start()
        await wait_until(lambda: sample(registry, "kws_mqtt_connected") == 1, "connection")
        status = await asyncio.to_thread(retained_status, mosquitto)
        assert status == (b"online", True)
        await sink.close()

    run(scenario())
    assert sample(registry, "kws_mqtt_connected") == 0
    assert retained_status(mosquitto) == (b"offline", True)


SINK_SCRIPT = """
import asyncio, sys
from kwstream.mqtt import MqttSettings, MqttSink

async def main():
    sink = MqttSink(MqttSettings(host=sys.argv[1], port=int(sys.argv[2])), device=sys.argv[3])
    await sink.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.broker
def test_last_will_on_killed_process(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    script = tmp_path / "sink.py"
    script.write_text(SINK_SCRIPT, encoding="utf-8")

    async def scenario() -> None:
        with Subscriber(mosquitto, [STATUS_TOPIC]) as subscriber:
            process = subprocess.Popen(
                [sys.executable, str(script), mosquitto.host, str(mosquitto.port), DEVICE],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                await wait_until(
                    lambda: subscriber.payloads(STATUS_TOPIC) == [b"online"], "online status")
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait()
            await wait_until(
                lambda: subscriber.payloads(STATUS_TOPIC) == [b"online", b"offline"],
                "the last will")

    run(scenario())
    assert retained_status(mosquitto) == (b"offline", True)


@pytest.mark.broker
def test_broker_restart_loses_no_event(mosquitto: MosquittoBroker) -> None:
    """Events submitted every 20 ms for 3 s while the broker is down for 1 s all arrive."""
    registry = CollectorRegistry()
    event_count = 150
    interval_s = 0.02

    async def outage() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(mosquitto.start)

    async def scenario() -> list[int]:
        sink = MqttSink(fast_settings(mosquitto), DEVICE, Metrics(registry))
        subscriber = Subscriber(
            mosquitto, [DETECTION_TOPIC], client_id="kwstream-test-restart", clean_session=False)
        with subscriber:
            await sink.start()
            outage_task = asyncio.create_task(outage())
            start_s = time.monotonic()
            for index in range(event_count):
                # Sleep to a fixed schedule, so a slow loop does not stretch the stream.
                await asyncio.sleep(max(0.0, start_s + index * interval_s - time.monotonic()))
                sink.submit(make_event(index))
            await outage_task
            await sink.close()
            await wait_until(
                lambda: len(set(subscriber.payloads(DETECTION_TOPIC))) >= event_count,
                "every event after the restart")
            return [event_index(payload) for payload in subscriber.payloads(DETECTION_TOPIC)]

    received = run(scenario())
    # At least once: duplicates may appear, but first arrivals are complete and in order.
    assert list(dict.fromkeys(received)) == list(range(event_count))
    published = sample(registry, "kws_mqtt_published_total")
    assert published is not None and published >= event_count
    assert sample(registry, "kws_mqtt_dropped_total") == 0


@pytest.mark.broker
def test_unacknowledged_event_is_resent(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """An event whose PUBACK never came is published again, before the events after it."""
    registry = CollectorRegistry()
    caplog.set_level(logging.INFO, logger="kwstream.mqtt")

    async def scenario() -> list[int]:
        sink = MqttSink(fast_settings(mosquitto, timeout_s=0.3), DEVICE, Metrics(registry))
        with Subscriber(mosquitto, [DETECTION_TOPIC]) as subscriber:
            await sink.start()
            await wait_until(lambda: sample(registry, "kws_mqtt_connected") == 1, "connection")
            # A stopped broker keeps the TCP connection but sends no PUBACK.
            mosquitto.pause()
            try:
                sink.submit(make_event(0))
                sink.submit(make_event(1))
                await wait_until(lambda: "Lost connection" in caplog.text, "the PUBACK timeout")
            finally:
                mosquitto.resume()
            await wait_until(
                lambda: sample(registry, "kws_mqtt_published_total") == 2, "both events")
            await sink.close()
            await wait_until(
                lambda: len(subscriber.payloads(DETECTION_TOPIC)) >= 3, "the resent event")
            return [event_index(payload) for payload in subscriber.payloads(DETECTION_TOPIC)]

    # The stopped broker still delivers the first copy of event 0 once it resumes.
    assert run(scenario()) == [0, 0, 1]
    assert "Operation timed out; 2 events pending" in caplog.text


@pytest.mark.broker
def test_queue_overflow_drops_oldest(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    caplog.set_level(logging.WARNING, logger="kwstream.mqtt")

    async def scenario() -> list[bytes]:
        sink = MqttSink(fast_settings(mosquitto, queue_size=3), DEVICE, Metrics(registry))
        subscriber = Subscriber(
            mosquitto, [DETECTION_TOPIC], client_id="kwstream-test-overflow",
            clean_session=False)
        with subscriber:
            await asyncio.to_thread(mosquitto.stop)

            start_s = time.monotonic()
            await sink.start()
            assert time.monotonic() - start_s < 0.5, "start() waited for the broker"
            for index in range(5):
                sink.submit(make_event(index))
            assert sample(registry, "kws_mqtt_dropped_total") == 2
            assert sample(registry, "kws_mqtt_queue_depth") == 3
            assert sample(registry, "kws_mqtt_connected") == 0

            await asyncio.to_thread(mosquitto.start)
            await wait_until(
                lambda: len(subscriber.payloads(DETECTION_TOPIC)) >= 3, "the queued events")
            await sink.close()
            return subscriber.payloads(DETECTION_TOPIC)

    payloads = run(scenario())
    assert [event_index(payload) for payload in payloads] == [2, 3, 4]
    assert sample(registry, "kws_mqtt_dropped_total") == 2
    queue_full_warnings = [
        record for record in caplog.records if "MQTT queue is full" in record.getMessage()]
    assert len(queue_full_warnings) == 1, "the queue-full warning is not rate-limited"
    assert queue_full_warnings[0].levelno == logging.WARNING


@pytest.mark.broker
def test_close_with_broker_down(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    mosquitto.stop()

    async def scenario() -> float:
        sink = MqttSink(fast_settings(mosquitto), DEVICE, Metrics(registry))
        await sink.start()
        sink.submit(make_event(0))
        await asyncio.sleep(0.2)
        start_s = time.monotonic()
        await sink.close(timeout_s=0.3)
        return time.monotonic() - start_s

    close_s = run(scenario())
    assert close_s < 1.0
    assert "MQTT flush timed out after 0.3 s with 1 events unpublished" in caplog.text
    assert "Failed to connect to MQTT broker" in caplog.text
    assert f"127.0.0.1:{mosquitto.port}" in caplog.text
    assert sample(registry, "kws_mqtt_connected") == 0
    assert sample(registry, "kws_mqtt_queue_depth") == 0


# Credentials and TLS


@pytest.mark.broker
def test_password_connects(
    mosquitto_with_password: PasswordBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_with_password
    caplog.set_level(logging.DEBUG)
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(broker.password + "\n", encoding="utf-8")
    url = f"mqtt://{broker.username}@{broker.host}:{broker.port}"
    settings = MqttSettings.from_url(url, password_file, environ={})
    registry = CollectorRegistry()

    async def scenario() -> list[bytes]:
        sink = MqttSink(settings, DEVICE, Metrics(registry))
        subscriber = Subscriber(
            broker, [DETECTION_TOPIC], username=broker.username, password=broker.password)
        with subscriber:
            await sink.start()
            sink.submit(make_event(0))
            await wait_until(lambda: bool(subscriber.payloads(DETECTION_TOPIC)), "the event")
            assert sample(registry, "kws_mqtt_connected") == 1
            await sink.close()
            return subscriber.payloads(DETECTION_TOPIC)

    assert [event_index(payload) for payload in run(scenario())] == [0]
    assert broker.password not in caplog.text
    assert broker.password not in repr(settings)


@pytest.mark.broker
def test_wrong_password_retries(
    mosquitto_with_password: PasswordBroker, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_with_password
    caplog.set_level(logging.DEBUG)
    wrong_password = "wrong-Pa55word"
    settings = fast_settings(broker, username=broker.username, password=wrong_password)
    registry = CollectorRegistry()

    def rejections() -> list[logging.LogRecord]:
        return [
            record for record in caplog.records
            if record.levelno == logging.ERROR and "rejected the connection" in record.message]

    async def scenario() -> None:
        sink = MqttSink(settings, DEVICE, Metrics(registry))
        await sink.start()
        sink.submit(make_event(0))
        await wait_until(lambda: len(rejections()) >= 3, "three rejected connection attempts")
        assert sample(registry, "kws_mqtt_connected") == 0
        assert sample(registry, "kws_mqtt_queue_depth") == 1
        assert wrong_password not in repr(sink)
        await sink.close(timeout_s=0.1)

    run(scenario())
    assert f"{broker.username}@127.0.0.1:{broker.port}" in rejections()[0].message
    assert "not authori" in rejections()[0].message.lower()
    assert wrong_password not in caplog.text
    assert sample(registry, "kws_mqtt_published_total") == 0


@pytest.mark.broker
def test_tls_connects(mosquitto_tls: TlsBroker) -> None:
    broker = mosquitto_tls
    settings = MqttSettings.from_url(
        f"mqtts://{broker.host}:{broker.port}", ca_file=str(broker.ca_file), environ={})
    registry = CollectorRegistry()

    async def scenario() -> None:
        sink = MqttSink(
            dataclasses.replace(settings, reconnect_min_s=0.05, reconnect_max_s=0.2),
            DEVICE, Metrics(registry))
        await sink.start()
        sink.submit(make_event(0))
        await wait_until(
            lambda: sample(registry, "kws_mqtt_published_total") == 1, "the TLS publish")
        await sink.close()

    run(scenario())
    assert sample(registry, "kws_mqtt_connected") == 0


def test_submit_after_close_raises() -> None:
    async def scenario() -> None:
        sink = MqttSink(MqttSettings(host="127.0.0.1"), DEVICE)
        await sink.close()
        with pytest.raises(RuntimeError, match="after close"):
            sink.submit(make_event(0))

    run(scenario())


def test_unserializable_event_raises() -> None:
    sink = MqttSink(MqttSettings(host="127.0.0.1"), DEVICE)
    with pytest.raises(TypeError):
        sink.submit({"keyword": "yes", "score": object()})
    assert sink.pending == 0


def test_from_url_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-os-env")
    assert MqttSettings.from_url("mqtt://pi@broker.local").password == "from-os-env"
