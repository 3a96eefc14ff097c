"""``kwstream replay``: run an audio file through the daemon's pipeline, and score it."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kwstream.commands._pipeline import (
    Service,
    add_pipeline_options,
    apply_pipeline_options,
    build_service,
    scorer_factory,
)
from kwstream.config import ServiceConfig
from kwstream.errors import AudioError, ConfigError, KwstreamError
from kwstream.pipeline import ModelChannel
from kwstream.runner import RunStats, run_pipeline
from kwstream.sources import FileSource, StdinSource

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay an audio file through the pipeline; with labels, score it",
        description="Replay an audio file (or raw s16le PCM on stdin with AUDIO '-') through "
                    "exactly the daemon's pipeline. Events go to stdout as JSON lines; the "
                    "summary goes to stderr and to the report file.",
    )
    parser.add_argument("audio", metavar="AUDIO", help="WAV, FLAC or OGG file, or '-' for stdin")
    parser.add_argument("--labels", type=Path, metavar="CSV",
                        help="reference label file: score the stream, live and at the end")
    parser.add_argument("--report", type=Path, metavar="JSON", help="write the report here")
    parser.add_argument("--markdown", type=Path, metavar="PAGE",
                        help="also write the report as a Markdown page (with the DET plot "
                             "when --sweep is given)")
    parser.add_argument("--speed", choices=["max", "realtime"], default="max",
                        help="max: as fast as the CPU allows; realtime: paced like a microphone")
    parser.add_argument("--sweep", type=Path, metavar="DIR",
                        help="also write the DET curve of a threshold sweep to DIR "
                             "(needs --labels)")
    parser.add_argument("--tolerance-ms", type=float, default=1000.0, metavar="MS",
                        help="a detection may come this long after its word ends (default 1000)")
    parser.add_argument("--block-ms", type=int, metavar="MS",
                        help="block length read from the file (default 1000 at max speed, "
                             "100 in real time)")
    parser.add_argument("--stdin-rate", type=int, default=16000, metavar="HZ",
                        help="sample rate of raw PCM on stdin (default 16000)")
    parser.add_argument("--stdin-channels", type=int, default=1, metavar="N",
                        help="channels of raw PCM on stdin (default 1)")
    add_pipeline_options(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    config = ServiceConfig()
    apply_pipeline_options(config, args)
    config.check("command line")
    if args.sweep is not None and args.labels is None:
        raise ConfigError("--sweep needs --labels: a DET curve is measured against references")

    # Create the output folders before the replay, so a bad path fails before any work.
    folders = [("--sweep", args.sweep, args.sweep)]
    for option, path in (("--report", args.report), ("--markdown", args.markdown)):
        if path is not None:
            folders.append((option, path, path.parent))
    for option, path, folder in folders:
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(f"{option} {path}: cannot create {folder}: {error}") from error
    block_ms = args.block_ms if args.block_ms is not None else (
        1000 if args.speed == "max" else 100)
    if args.audio == "-":
        source: Any = StdinSource(args.stdin_rate, args.stdin_channels, block_ms=block_ms)
    else:
        source = FileSource(Path(args.audio), speed=args.speed, block_ms=block_ms)

    labels = None
    scorers_for = None
    if args.labels is not None:
        labels, scorers_for = scorer_factory(args.labels, args.tolerance_ms)

    service = build_service(config, scorers_for=scorers_for, keep_trace=args.sweep is not None)
    log.info("replay of %s with model %s (%s, sha256 %s...), %s", source.description,
             service.pipeline.channels[0].model.id, service.pipeline.channels[0].model.runtime,
             service.pipeline.channels[0].model.card.sha256[:12],
             "VAD on" if config.vad.enabled else "VAD off")
    try:
        stats = asyncio.run(_replay(service, source))
    finally:
        service.close_endpoint()
    # Audio processed before a decoding error keeps its events; the report names the error.
    failure = stats.error
    if failure is not None and not isinstance(failure, KwstreamError):
        raise failure
    if stats.audio_seconds == 0 and failure is None:
        raise AudioError(f"{args.audio}: no audio samples were read")

    report = build_report(service, stats, labels is not None)
    if failure is not None:
        report["error"] = str(failure)
    if args.sweep is not None:
        report["sweep"] = write_sweep(service, labels, args.sweep, args.tolerance_ms)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown is not None:
        from kwstream.report_page import write_markdown_report

        write_markdown_report(report, args.markdown, det_png=None)
    print_summary(report)
    if failure is not None:
        raise failure
    return 0


async def _replay(service: Service, source: Any) -> RunStats:
    await service.start_mqtt()
    return await run_pipeline(source, service.pipeline, service.sinks, service.metrics,
                              buffer_seconds=max(2.0, source_block_s(source) * 4))


def source_block_s(source: Any) -> float:
    return getattr(source, "block_ms", 100) / 1000


def percentiles_ms(values: list[np.ndarray]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    data = np.concatenate(values)
    if data.size == 0:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4)}


def channel_report(channel: ModelChannel, stats: RunStats, scored: bool) -> dict[str, Any]:
    report: dict[str, Any] = {
        "model": channel.label,
        "model_sha256": channel.model.card.sha256,
        "inference_stride": channel.settings.inference_stride,
        "inferences": channel.inferences,
        # Windows of one block run in one invoke; inference_ms is the invoke time per window.
        "windows_per_invoke": (round(channel.inferences / channel.invokes, 2)
                               if channel.invokes else None),
        "inference_ms": percentiles_ms(channel.inference_ms),
    }
    if scored and channel.scorer is not None:
        if stats.interrupted or stats.error is not None:
            # The stream stopped early: score only what the processed audio decided, so the
            # references after the cut are not counted as misses.
            audio_ms = stats.audio_seconds * 1000.0
            channel.scorer.advance(audio_ms)
            score = channel.scorer.report(stats.audio_seconds)
            report["partial"] = True
        else:
            score = channel.scorer.finish(stats.audio_seconds)
        report.update(score.to_dict())
    return report


def build_report(service: Service, stats: RunStats, scored: bool) -> dict[str, Any]:
    pipeline = service.pipeline
    primary = pipeline.channels[0]
    report: dict[str, Any] = {
        "audio_seconds": round(stats.audio_seconds, 3),
        "wall_seconds": round(stats.wall_seconds, 4),
        "cpu_seconds": round(stats.cpu_seconds, 4),
        "realtime_factor": (round(stats.realtime_factor, 1)
                            if stats.realtime_factor is not None else None),
        "events": stats.events,
        "vad": {"enabled": pipeline.vad_settings.enabled, "mode": pipeline.vad_settings.mode,
                "hangover_ms": pipeline.vad_settings.hangover_ms},
    }
    report.update(channel_report(primary, stats, scored))
    if len(pipeline.channels) > 1:
        report["shadow"] = channel_report(pipeline.channels[1], stats, scored)
    return report


def write_sweep(service: Service, labels: Any, directory: Path, tolerance_ms: float) -> Any:
    from kwstream.sweep import sweep_thresholds

    channel = service.pipeline.channels[0]
    assert channel.trace is not None
    times_ms, scores, trusted = channel.trace.arrays()
    return sweep_thresholds(
        times_ms=times_ms, scores=scores, trusted=trusted, keywords=channel.smoother.keywords,
        labels=labels, suppression_ms=channel.settings.suppression_ms,
        tolerance_ms=tolerance_ms, audio_seconds=service.pipeline.samples_total / 16000,
        out_dir=directory,
    )


def print_summary(report: dict[str, Any]) -> None:
    inference = report["inference_ms"]
    lines = [
        f"replayed {report['audio_seconds']:.1f} s of audio in {report['wall_seconds']:.2f} s "
        f"({report['realtime_factor']}x real time), {report['events']} events, "
        f"inference p50 {inference['p50']} ms p95 {inference['p95']} ms",
    ]
    if report.get("partial"):
        lines.append("stopped before the end of the stream: only the references the processed "
                     "audio decided are scored")
    if "precision" in report:
        lines.append(
            f"precision {_fmt(report['precision'])} recall {_fmt(report['recall'])} "
            f"f1 {_fmt(report['f1'])} false accepts/h {_fmt(report['false_accepts_per_hour'])}"
        )
    for line in lines:
        print(line, file=sys.stderr)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
