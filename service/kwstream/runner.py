"""The asyncio side of the service: a source task, the pipeline loop and the event sinks.

One event loop runs everything. The source fills a bounded :class:`BlockBuffer`; the pipeline
loop takes blocks from it, runs them through :class:`Pipeline` and hands each event to the
sinks. SIGINT and SIGTERM stop the source; blocks already buffered are still processed,
pending events are flushed and every sink is closed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from kwstream.errors import ConfigError
from kwstream.metrics import Metrics
from kwstream.pipeline import Pipeline
from kwstream.sources import SAMPLE_RATE, BlockBuffer, Source

log = logging.getLogger(__name__)

REALTIME_WINDOW_S = 10.0


class Sink(Protocol):
    def emit(self, event: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


def event_line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


class StreamSink:
    """JSON lines on a text stream (stdout by default), flushed after every event."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def emit(self, event: dict[str, Any]) -> None:
        self._stream.write(event_line(event) + "\n")
        self._stream.flush()

    async def close(self) -> None:
        self._stream.flush()


class FileSink:
    """JSON lines appended to a file, flushed after every event so a crash loses none."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._handle = self.path.open("a", encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot open events file {self.path}: {error}") from error

    def emit(self, event: dict[str, Any]) -> None:
        self._handle.write(event_line(event) + "\n")
        self._handle.flush()

    async def close(self) -> None:
        self._handle.close()


class MqttEventSink:
    """Forward primary-model events to an MQTT sink; shadow events stay local."""

    def __init__(self, mqtt_sink: Any) -> None:
        self._mqtt = mqtt_sink

    def emit(self, event: dict[str, Any]) -> None:
        if not event.get("shadow"):
            self._mqtt.submit(event)

    async def close(self) -> None:
        await self._mqtt.close()


@dataclass
class RunStats:
    """Audio processed by one run of the pipeline, and its cost."""

    audio_seconds: float
    wall_seconds: float
    cpu_seconds: float
    events: int
    dropped_blocks: int
    error: BaseException | None = None
    interrupted: bool = False
    """True when SIGINT or SIGTERM stopped the source before the stream ended."""
    """Error that stopped the source early (a decoding error, say), after its audio was processed."""

    @property
    def realtime_factor(self) -> float | None:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else None


async def run_pipeline(
    source: Source,
    pipeline: Pipeline,
    sinks: list[Sink],
    metrics: Metrics,
    buffer_seconds: float = 2.0,
    decorate: Any = None,
    install_signal_handlers: bool = True,
) -> RunStats:
    """Run ``source`` through ``pipeline`` until the source ends or a stop signal arrives.

    ``decorate`` may add fields (wall time, device) to each event before the sinks see it.
    An error of the source does not raise: it is returned in ``RunStats.error`` after every
    processed block's events have reached the sinks and the sinks are closed.
    """
    loop = asyncio.get_running_loop()
    buffer = BlockBuffer(int(buffer_seconds * SAMPLE_RATE), metrics)
    source_task = asyncio.create_task(source.run(buffer), name="kwstream-source")
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    installed = []
    stop_requests: list[int] = []
    if install_signal_handlers:
        for signum in stop_signals:
            try:
                loop.add_signal_handler(signum, _request_stop, source_task, signum, stop_requests)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):
                pass

    events = 0
    # (wall time, samples processed) of recent blocks: the real-time factor gauge covers the
    # last REALTIME_WINDOW_S of wall time, so a slowdown shows within seconds.
    recent: collections.deque[tuple[float, int]] = collections.deque()
    first_wall: float | None = None
    first_cpu = 0.0
    last_wall = last_cpu = 0.0
    audio_start = pipeline.samples_total
    try:
        while True:
            block = await buffer.get()
            if block is None:
                break
            if first_wall is None:
                first_wall, first_cpu = time.perf_counter(), time.process_time()
                metrics.source_up.set(1)
            for event in pipeline.process(block):
                if decorate is not None:
                    event = decorate(event)
                for sink in sinks:
                    sink.emit(event)
                events += 1
            last_wall, last_cpu = time.perf_counter(), time.process_time()
            recent.append((last_wall, pipeline.samples_total))
            while len(recent) > 2 and last_wall - recent[1][0] >= REALTIME_WINDOW_S:
                recent.popleft()
            oldest_wall, oldest_samples = recent[0]
            if len(recent) > 1 and last_wall > oldest_wall:
                audio_s = (pipeline.samples_total - oldest_samples) / SAMPLE_RATE
                metrics.realtime_factor.set(audio_s / (last_wall - oldest_wall))
            # Let other tasks (MQTT, the source) run between blocks, even at full speed.
            await asyncio.sleep(0)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        metrics.source_up.set(0)
        if not source_task.done():
            source_task.cancel()
        source_error = await _source_outcome(source_task)
        for sink in sinks:
            await sink.close()
    wall = (last_wall - first_wall) if first_wall is not None else 0.0
    cpu = (last_cpu - first_cpu) if first_wall is not None else 0.0
    return RunStats(
        audio_seconds=(pipeline.samples_total - audio_start) / SAMPLE_RATE,
        wall_seconds=wall, cpu_seconds=cpu, events=events, dropped_blocks=buffer.dropped_blocks,
        error=source_error,
        interrupted=bool(stop_requests),
    )


def _request_stop(task: asyncio.Task[Any], signum: int, requests: list[int]) -> None:
    log.info("received %s: stopping after the buffered audio", signal.Signals(signum).name)
    requests.append(signum)
    task.cancel()


async def _source_outcome(task: asyncio.Task[Any]) -> BaseException | None:
    try:
        await task
    except asyncio.CancelledError:
        return None
    except Exception as error:  # noqa: BLE001 - re-raised by the caller after cleanup
        return error
    return None
