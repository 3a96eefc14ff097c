"""``kwstream run``: the daemon. Microphone (or file, or stdin) in, events out, metrics served."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import socket
from pathlib import Path
from typing import Any

from kwstream.commands._pipeline import (
    Service,
    add_pipeline_options,
    apply_pipeline_options,
    build_service,
    scorer_factory,
)
from kwstream.config import ServiceConfig, load_config
from kwstream.metrics import Metrics
from kwstream.runner import run_pipeline
from kwstream.sources import FileSource, MicrophoneSource, StdinSource

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the daemon: microphone in, events out, /metrics served",
        description="Listen to a microphone (or a file paced in real time, or raw PCM on "
                    "stdin), print keyword events as JSON lines on stdout, send them to MQTT "
                    "and serve Prometheus metrics. Flags override the configuration file.",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    source = parser.add_argument_group("source")
    choice = source.add_mutually_exclusive_group()
    choice.add_argument("--input-device", metavar="NAME|INDEX",
                        help="microphone by name (substring) or PortAudio index")
    choice.add_argument("--file", type=Path, metavar="AUDIO",
                        help="replay this file in real time instead of a microphone")
    choice.add_argument("--stdin", action="store_true",
                        help="read raw s16le PCM from stdin (arecord, ffmpeg pipes)")
    source.add_argument("--block-ms", type=int, metavar="MS",
                        help="block length in milliseconds (default 100)")
    parser.add_argument("--labels", type=Path, metavar="CSV",
                        help="reference labels of the audio: score the stream live")
    add_pipeline_options(parser)
    parser.set_defaults(handler=handle)


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    config = load_config(args.config)
    apply_pipeline_options(config, args)
    if args.input_device is not None:
        config.source.kind = "microphone"
        config.source.device = int(args.input_device) if args.input_device.isdigit() \
            else args.input_device
    if args.file is not None:
        config.source.kind = "file"
        config.source.path = str(args.file)
    if args.stdin:
        config.source.kind = "stdin"
    if args.block_ms is not None:
        config.source.block_ms = args.block_ms
    if args.labels is not None:
        config.scoring.labels = str(args.labels)
    config.check(str(args.config) if args.config else "command line")
    return config


def make_source(config: ServiceConfig, metrics: Metrics) -> Any:
    source = config.source
    if source.kind == "file":
        assert source.path is not None
        return FileSource(Path(source.path), speed="realtime", block_ms=source.block_ms)
    if source.kind == "stdin":
        return StdinSource(source.sample_rate, source.channels, block_ms=source.block_ms)
    return MicrophoneSource(source.device, block_ms=source.block_ms, metrics=metrics)


def handle(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    scorers_for = None
    if config.scoring.labels:
        _, scorers_for = scorer_factory(Path(config.scoring.labels), config.scoring.tolerance_ms)

    service = build_service(config, scorers_for=scorers_for)
    try:
        source = make_source(config, service.metrics)
        primary = service.pipeline.channels[0].model
        log.info(
            "kwstream started: model %s %s (sha256 %s..., %s, %d threads), source %s, "
            "device id %s, VAD %s, MQTT %s, metrics %s",
            primary.id, primary.card.version, primary.card.sha256[:12], primary.runtime,
            config.model.threads, source.description, config.device_id,
            f"mode {config.vad.mode}" if config.vad.enabled else "off",
            _redacted(config.mqtt.url), _endpoint(config),
        )
        stats = asyncio.run(_serve(service, source))
    finally:
        service.close_endpoint()
    log.info("kwstream stopped: %.1f s of audio, %d events", stats.audio_seconds, stats.events)
    for channel in service.pipeline.channels:
        if channel.scorer is not None:
            channel.scorer.advance(stats.audio_seconds * 1000.0)
            score = channel.scorer.report(stats.audio_seconds)
            log.info("live score of model %s so far: precision %s, recall %s, "
                     "false accepts per hour %s", channel.label, _fmt(score.precision),
                     _fmt(score.recall), _fmt(score.false_accepts_per_hour))
    if stats.error is not None:
        raise stats.error
    return 0


async def _serve(service: Service, source: Any) -> Any:
    device = service.config.device_id

    def decorate(event: dict[str, Any]) -> dict[str, Any]:
        event["wall_time"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        event["device"] = device
        return event

    await service.start_mqtt()
    watchdog = asyncio.create_task(_systemd_watchdog(), name="kwstream-watchdog")
    try:
        return await run_pipeline(source, service.pipeline, service.sinks, service.metrics,
                                  buffer_seconds=service.config.source.buffer_seconds,
                                  decorate=decorate)
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        _sd_notify("STOPPING=1")


def _sd_notify(message: str) -> None:
    """Send a state line to systemd when it started us with a notify socket."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as error:
            log.warning("cannot notify systemd at %s: %s", address, error)


async def _systemd_watchdog() -> None:
    """Report readiness, then pet systemd's watchdog at half its interval while the loop runs."""
    _sd_notify("READY=1")
    interval_us = os.environ.get("WATCHDOG_USEC")
    if not interval_us:
        return
    period_s = int(interval_us) / 2e6
    while True:
        _sd_notify("WATCHDOG=1")
        await asyncio.sleep(period_s)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _redacted(url: str | None) -> str:
    return "off" if not url else url.split("://", 1)[-1].split("@")[-1]


def _endpoint(config: ServiceConfig) -> str:
    if config.metrics.port is None:
        return "off"
    return f"http://{config.metrics.address}:{config.metrics.port}/metrics"

