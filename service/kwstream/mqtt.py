"""MQTT event sink: publishes keyword events to a broker without ever blocking the pipeline.

Topics, for a device id ``DEVICE`` and the prefix ``kws``:

- ``kws/DEVICE/detection``: one message per event, QoS 1, not retained. The payload is the
  event object as compact JSON, the same object as the stdout line.
- ``kws/DEVICE/status``: retained ``online`` after each connect; retained ``offline`` on
  ``close()``, and the same as the last will when the connection dies uncleanly.

Events wait in a bounded queue while the broker is away. When the queue is full, the oldest
event is dropped and counted in ``kws_mqtt_dropped_total``. Delivery is at least once and in
order: one event is in flight at a time, and an event whose PUBACK never came is put back at
the front of the queue and published again after the reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import random
import re
import secrets
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from kwstream.errors import ConfigError
from kwstream.metrics import Metrics

log = logging.getLogger(__name__)
# aiomqtt passes this logger to paho-mqtt, which logs every packet at DEBUG.
_client_log = logging.getLogger(__name__ + ".client")

MQTT_PORT = 1883
MQTTS_PORT = 8883
PASSWORD_ENV = "KWSTREAM_MQTT_PASSWORD"
DEFAULT_TOPIC_PREFIX = "kws"
# About 2 MB of JSON at about 170 bytes an event: more than a day of detections at 5 a minute.
DEFAULT_QUEUE_SIZE = 10_000
# Upper bound on each of the two shutdown steps: the retained offline status and DISCONNECT.
SHUTDOWN_STEP_TIMEOUT_S = 1.0
# At most one "queue full" warning in this interval; the counter has every drop.
DROP_WARNING_INTERVAL_S = 10.0
_TOPIC_WILDCARDS = ("+", "#")


@dataclasses.dataclass
class MqttSettings:
    """Connection and queueing settings of the MQTT sink; invalid values raise ConfigError.

    The values are checked on construction and again by MqttSink, so fields changed in
    between are checked too.
    """

    host: str
    port: int | None = None
    """TCP port of the broker; None selects 1883, or 8883 with TLS."""
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    """Never logged and left out of repr()."""
    tls: bool = False
    ca_file: str | None = None
    """PEM file of the CA that signed the broker's certificate; None uses the system CAs."""
    client_id: str | None = None
    """MQTT client identifier; None selects ``kwstream-DEVICE-`` and 8 random hex digits."""
    keepalive_s: int = 60
    """MQTT keepalive: a dead connection is noticed within about 1.5 times this."""
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    queue_size: int = DEFAULT_QUEUE_SIZE
    """Events held while the broker is away, besides the one in flight."""
    reconnect_min_s: float = 0.5
    """First reconnect delay; it doubles after each failed attempt, with jitter."""
    reconnect_max_s: float = 30.0
    timeout_s: float = 10.0
    """Wait for CONNACK or PUBACK before the connection counts as lost."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and its value."""
        if not self.host:
            raise ConfigError("invalid MQTT settings: the broker host is empty")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ConfigError(f"invalid MQTT port {self.port}: expected 1 to 65535")
        if self.password is not None and not self.username:
            raise ConfigError(
                "invalid MQTT settings: a password is given but no user name; "
                "put the user name in the URL, as in mqtt://USER@HOST")
        if self.ca_file is not None:
            if not self.tls:
                raise ConfigError(
                    f"invalid MQTT settings: a CA file ({self.ca_file}) is given but TLS is off; "
                    "use an mqtts:// URL")
            if not Path(self.ca_file).is_file():
                raise ConfigError(f"MQTT CA file not found: {self.ca_file}")
        if not 0 <= self.keepalive_s <= 65535:
            raise ConfigError(f"invalid MQTT keepalive {self.keepalive_s} s: expected 0 to 65535")
        _check_topic_level("topic prefix", self.topic_prefix, allow_slash=True)
        if self.queue_size < 1:
            raise ConfigError(f"invalid MQTT queue size {self.queue_size}: expected at least 1")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError(
                f"invalid MQTT reconnect delays: min {self.reconnect_min_s} s, "
                f"max {self.reconnect_max_s} s; expected 0 < min <= max")
        if self.timeout_s <= 0:
            raise ConfigError(f"invalid MQTT timeout {self.timeout_s} s: expected more than 0")

    @property
    def effective_port(self) -> int:
        """The configured port, or the scheme's default (1883, 8883 with TLS)."""
        if self.port is not None:
            return self.port
        return MQTTS_PORT if self.tls else MQTT_PORT

    @property
    def address(self) -> str:
        """The broker as ``mqtt[s]://[user@]host:port`` for log lines, without the password."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.effective_port}"

    @classmethod
    def from_url(
        cls,
        url: str,
        password_file: str | os.PathLike[str] | None = None,
        *,
        ca_file: str | None = None,
        client_id: str | None = None,
        topic_prefix: str = DEFAULT_TOPIC_PREFIX,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        environ: Mapping[str, str] | None = None,
    ) -> MqttSettings:
        """Parse ``mqtt://[user@]host[:port]`` or ``mqtts://...`` (TLS) into settings.

        The password comes from the first line of ``password_file`` or, without a file, from
        the environment variable ``KWSTREAM_MQTT_PASSWORD`` (read from ``environ``, by default
        ``os.environ``). A password inside the URL is rejected, because command lines and
        config files end up in process lists and logs. Other fields keep their defaults.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            parts.hostname  # noqa: B018 - parsing the host raises ValueError for bad brackets
        except ValueError as error:
            raise ConfigError(f"invalid MQTT URL {url!r}: {error}") from None
        if parts.password is not None:
            raise ConfigError(
                f"invalid MQTT URL {_redact_password(url)}: it contains a password; give the "
                f"password in a password file or in the environment variable {PASSWORD_ENV}")
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(
                f"invalid MQTT URL {url!r}: the scheme must be mqtt:// or mqtts:// (TLS)")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(
                f"invalid MQTT URL {url!r}: the port must be a number from 1 to 65535") from None
        if port == 0:
            raise ConfigError(f"invalid MQTT URL {url!r}: the port must be from 1 to 65535")
        if not parts.hostname:
            raise ConfigError(f"invalid MQTT URL {url!r}: the broker host is missing")
        if not _HOST_PATTERN.fullmatch(parts.hostname):
            raise ConfigError(
                f"invalid MQTT URL {url!r}: {parts.hostname!r} is not a host name or IP address")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(
                f"invalid MQTT URL {url!r}: expected mqtt://[user@]host[:port] with no path, "
                "query or fragment")

        username = urllib.parse.unquote(parts.username) if parts.username else None
        password = _read_password(password_file, os.environ if environ is None else environ)
        return cls(
            host=parts.hostname,
            port=port,
            username=username,
            password=password,
            tls=parts.scheme == "mqtts",
            ca_file=ca_file,
            client_id=client_id,
            topic_prefix=topic_prefix,
            queue_size=queue_size,
        )


# A DNS name, an IPv4 address, or an IPv6 address (urlsplit has removed its brackets).
_HOST_PATTERN = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?")


def _read_password(
    password_file: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> str | None:
    """Read the password from the file's first line, or else from the environment."""
    if password_file is None:
        return environ.get(PASSWORD_ENV) or None
    try:
        text = Path(password_file).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"failed to read the MQTT password file {os.fspath(password_file)}: "
            f"{error.strerror or error}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(
            f"invalid MQTT password file {os.fspath(password_file)}: the first line is empty")
    return lines[0]


def _redact_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_topic_level(what: str, value: str, *, allow_slash: bool) -> None:
    """Reject empty topic parts and MQTT wildcards, which are invalid in a publish topic."""
    if not value:
        raise ConfigError(f"invalid MQTT {what}: it is empty")
    if any(wildcard in value for wildcard in _TOPIC_WILDCARDS):
        raise ConfigError(f"invalid MQTT {what} {value!r}: '+' and '#' are MQTT wildcards")
    if "/" in value and not allow_slash:
        raise ConfigError(f"invalid MQTT {what} {value!r}: '/' separates topic levels")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ConfigError(f"invalid MQTT {what} {value!r}: it has an empty topic level")


def _describe_error(error: BaseException) -> str:
    """Format an aiomqtt error with its cause, which contains the socket or protocol error."""
    text = str(error) or type(error).__name__
    cause = error.__cause__
    if cause is not None:
        text = f"{text}: {str(cause) or type(cause).__name__}"
    return text


class MqttSink:
    """Publishes events to ``{prefix}/{device}/detection`` from a background task.

    ``submit()`` never blocks and never waits for the broker. The background task connects,
    reconnects with exponential backoff while the broker is away, and publishes queued events
    in order with QoS 1. The metrics ``kws_mqtt_connected``, ``kws_mqtt_queue_depth``,
    ``kws_mqtt_published_total`` and ``kws_mqtt_dropped_total`` follow its state; without
    ``metrics`` they go to a private registry.
    """

    def __init__(self, settings: MqttSettings, device: str, metrics: Metrics | None = None) -> None:
        settings.validate()
        _check_topic_level("device id", device, allow_slash=False)
        self.settings = settings
        self.device = device
        self.detection_topic = f"{settings.topic_prefix}/{device}/detection"
        self.status_topic = f"{settings.topic_prefix}/{device}/status"
        self._metrics = metrics if metrics is not None else Metrics()
        # One identifier for every reconnect; the random part keeps two sinks on one device
        # from disconnecting each other.
        self.client_id = settings.client_id or f"kwstream-{device}-{secrets.token_hex(4)}"

        # JSON payloads, oldest first; at most settings.queue_size of them.
        self._queue: collections.deque[bytes] = collections.deque()
        # The payload published but not yet acknowledged with PUBACK.
        self._in_flight: bytes | None = None
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._connected = False

        self._drops_since_warning = 0
        self._last_drop_warning_s: float | None = None
        self._random = random.Random()

    def __repr__(self) -> str:
        return (
            f"MqttSink(broker={self.settings.address!r}, device={self.device!r}, "
            f"pending={self.pending})")

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by the broker: the queue plus the one in flight."""
        return len(self._queue) + (self._in_flight is not None)

    async def start(self) -> None:
        """Launch the background task and return at once, without waiting for the broker."""
        if self._closed:
            raise RuntimeError("MqttSink.start() called after close()")
        if self._task is not None:
            raise RuntimeError("MqttSink.start() called twice")
        self._task = asyncio.create_task(self._run(), name=f"kwstream-mqtt-{self.device}")
        self._task.add_done_callback(self._log_task_failure)
        log.info(
            "MQTT sink started: broker %s, topic %s", self.settings.address, self.detection_topic)

    def submit(self, event: Mapping[str, Any]) -> None:
        """Queue one event for publishing; when the queue is full, drop the oldest event.

        Call it from the event loop's thread; it never blocks and never waits for the broker.

        The event is serialized here, so a value that JSON cannot encode raises TypeError in
        the caller, and later changes to the dict do not change the payload.
        """
        if self._closed:
            raise RuntimeError("MqttSink.submit() called after close()")
        payload = json.dumps(event, separators=(",", ":")).encode("utf-8")
        if len(self._queue) >= self.settings.queue_size:
            self._queue.popleft()
            self._count_drop()
        self._queue.append(payload)
        self._drained.clear()
        self._wakeup.set()
        self._update_queue_depth()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush queued events, publish the retained ``offline`` status and disconnect.

        The flush waits at most ``timeout_s``. The offline status and DISCONNECT take at most
        another ``SHUTDOWN_STEP_TIMEOUT_S`` each; events still unpublished after that are
        logged and discarded. Calling close() again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        task = self._task
        if task is None:
            self._discard_pending("the sink was never started")
            return

        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            log.warning(
                "MQTT flush timed out after %.1f s with %d events unpublished; broker %s",
                timeout_s, self.pending, self.settings.address)
        self._stop.set()

        try:
            # Two shutdown steps plus slack. A connect still waiting for CONNACK is cancelled.
            done, _ = await asyncio.wait({task}, timeout=3 * SHUTDOWN_STEP_TIMEOUT_S)
            if not done:
                log.warning("MQTT sink did not stop in time; cancelling it")
                task.cancel()
                await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._task = None
            self._set_connected(False)
        self._discard_pending("the sink was closed")
        log.info("MQTT sink closed")

    # Background task

    async def _run(self) -> None:
        """Connect, publish and reconnect with backoff until close() requests a stop."""
        backoff_s = self.settings.reconnect_min_s
        while not self._stop.is_set():
            client = self._make_client()
            try:
                async with client:
                    self._set_connected(True)
                    backoff_s = self.settings.reconnect_min_s
                    log.info(
                        "Connected to MQTT broker %s as client %s",
                        self.settings.address, self.client_id)
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    try:
                        await self._serve_connection(client)
                    except asyncio.CancelledError:
                        # The graceful DISCONNECT in __aexit__ makes the broker discard the
                        # last will, so the offline status is published here too.
                        await self._publish_offline(client)
                        raise
                    await self._publish_offline(client)
                self._set_connected(False)
                log.info("Disconnected from MQTT broker %s", self.settings.address)
                return
            except aiomqtt.MqttError as error:
                was_connected = self._connected
                self._set_connected(False)
                delay_s = backoff_s * self._random.uniform(0.5, 1.0)
                backoff_s = min(2 * backoff_s, self.settings.reconnect_max_s)
                self._log_connection_error(error, was_connected, delay_s)
            except BaseException:
                self._set_connected(False)
                raise

            try:
                await asyncio.wait_for(self._stop.wait(), delay_s)
            except TimeoutError:
                pass

    def _make_client(self) -> aiomqtt.Client:
        settings = self.settings
        tls_params = aiomqtt.TLSParameters(ca_certs=settings.ca_file) if settings.tls else None
        return aiomqtt.Client(
            hostname=settings.host,
            port=settings.effective_port,
            username=settings.username,
            password=settings.password,
            identifier=self.client_id,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            tls_params=tls_params,
            keepalive=settings.keepalive_s,
            timeout=settings.timeout_s,
            logger=_client_log,
        )

    async def _serve_connection(self, client: aiomqtt.Client) -> None:
        """Publish queued events until a stop is requested; raise MqttError if the link drops.

        The publisher waits for PUBACK, which aiomqtt does not abort when the connection
        drops, so a watcher task ends the wait as soon as aiomqtt reports the disconnection.
        """
        publisher = asyncio.create_task(self._publish_queued(client), name="kwstream-mqtt-publish")
        watcher = asyncio.create_task(_wait_for_disconnect(client), name="kwstream-mqtt-watch")
        stopper = asyncio.create_task(self._stop.wait(), name="kwstream-mqtt-stop")
        tasks = (publisher, watcher, stopper)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # The watcher's error names the cause of the disconnection, so it goes first.
        for task in (watcher, publisher):
            if task in done:
                task.result()

    async def _publish_queued(self, client: aiomqtt.Client) -> None:
        """Publish events one at a time, oldest first, each after the previous PUBACK."""
        while True:
            if not self._queue:
                if self._in_flight is None:
                    self._drained.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue

            payload = self._queue.popleft()
            self._in_flight = payload
            try:
                await client.publish(self.detection_topic, payload, qos=1)
            except BaseException:
                # No PUBACK: the broker may or may not have the event, so it is sent again.
                self._in_flight = None
                self._requeue(payload)
                raise
            self._in_flight = None
            self._metrics.mqtt_published.inc()
            self._update_queue_depth()
            log.debug("Published to %s: %s", self.detection_topic, payload)

    async def _publish_offline(self, client: aiomqtt.Client) -> None:
        # Bound the offline status and the DISCONNECT that follows in __aexit__.
        client.timeout = SHUTDOWN_STEP_TIMEOUT_S
        try:
            await client.publish(self.status_topic, b"offline", qos=1, retain=True)
        except aiomqtt.MqttError as error:
            log.warning(
                "Failed to publish the offline status to MQTT broker %s: %s",
                self.settings.address, _describe_error(error))

    # Queue and metrics bookkeeping

    def _requeue(self, payload: bytes) -> None:
        """Put an unacknowledged event back at the front, unless the queue is full.

        In a full queue the returned event is the oldest, so it is the one dropped.
        """
        if len(self._queue) >= self.settings.queue_size:
            self._count_drop()
        else:
            self._queue.appendleft(payload)
        self._update_queue_depth()

    def _count_drop(self) -> None:
        self._metrics.mqtt_dropped.inc()
        self._drops_since_warning += 1
        now_s = time.monotonic()
        last_s = self._last_drop_warning_s
        if last_s is None or now_s - last_s >= DROP_WARNING_INTERVAL_S:
            log.warning(
                "MQTT queue is full (%d events), dropping the oldest: %d dropped since the "
                "previous warning (at most one every %.0f s); broker %s",
                self.settings.queue_size, self._drops_since_warning, DROP_WARNING_INTERVAL_S,
                self.settings.address)
            self._drops_since_warning = 0
            self._last_drop_warning_s = now_s

    def _discard_pending(self, reason: str) -> None:
        if self._queue:
            log.warning(
                "Discarding %d unpublished MQTT events because %s", len(self._queue), reason)
        self._queue.clear()
        self._update_queue_depth()

    def _update_queue_depth(self) -> None:
        self._metrics.mqtt_queue_depth.set(self.pending)

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        self._metrics.mqtt_connected.set(1 if connected else 0)

    def _log_connection_error(
        self, error: aiomqtt.MqttError, was_connected: bool, delay_s: float
    ) -> None:
        detail = _describe_error(error)
        if was_connected:
            log.warning(
                "Lost connection to MQTT broker %s: %s; %d events pending, reconnecting in "
                "%.2f s", self.settings.address, detail, self.pending, delay_s)
        elif isinstance(error, MqttConnectError):
            # The broker rejected CONNECT (credentials, client id or ACL). Retrying keeps the
            # sink alive until the broker's configuration is fixed.
            log.error(
                "MQTT broker %s rejected the connection: %s; retrying in %.2f s",
                self.settings.address, detail, delay_s)
        else:
            log.warning(
                "Failed to connect to MQTT broker %s: %s; retrying in %.2f s",
                self.settings.address, detail, delay_s)

    def _log_task_failure(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("MQTT sink stopped by an unexpected error", exc_info=error)


async def _wait_for_disconnect(client: aiomqtt.Client) -> None:
    """Return only by raising aiomqtt's MqttError once the connection is gone.

    The sink subscribes to nothing, so the message iterator yields nothing and raises when
    aiomqtt detects the disconnection.
    """
    async for _message in client.messages:
        pass
    raise aiomqtt.MqttError("the MQTT message iterator ended")
