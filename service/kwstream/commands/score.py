"""``kwstream score``: score a saved event file against a label file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from kwstream.errors import ConfigError
from kwstream.events import Event, read_events
from kwstream.labels import read_labels
from kwstream.scoring import (
    DEFAULT_TOLERANCE_MS,
    TF_DEFAULT_TOLERANCE_MS,
    ScoreReport,
    score_events,
)

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score saved events against a label file",
        description="Score a JSON-lines event file against a reference label file with the "
        "streaming scoring rule. Prints a summary on stderr and writes the JSON report.",
    )
    parser.add_argument("--events", type=Path, required=True, metavar="JSONL",
                        help="event file, one JSON object a line")
    parser.add_argument("--labels", type=Path, required=True, metavar="CSV",
                        help="label file (label,start_ms,end_ms, or TensorFlow's two columns)")

    parser.add_argument("--duration-s", type=float, metavar="S",
                        help="audio duration in seconds; without it false accepts per hour "
                        "is null")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="write the JSON report to this file")

    parser.add_argument("--tolerance-ms", type=float, default=DEFAULT_TOLERANCE_MS, metavar="T",
                        help="a detection may follow the end of its word by this many "
                        f"milliseconds (default {DEFAULT_TOLERANCE_MS})")
    parser.add_argument("--keywords", metavar="A,B,C",
                        help="comma-separated keywords; other labels than these and _unknown_ "
                        "are rejected (default: accept any label)")

    parser.add_argument("--model", metavar="ID",
                        help="score only the events of this model id (needed when the file "
                        "contains events of several non-shadow models)")
    parser.add_argument("--shadow", action="store_true",
                        help="score the shadow model's events instead of the primary model's")

    parser.add_argument("--tf-compat", action="store_true",
                        help="also report TensorFlow's streaming accuracy percentages")
    parser.add_argument("--tf-tolerance-ms", type=float, default=TF_DEFAULT_TOLERANCE_MS,
                        metavar="T", help="time tolerance of --tf-compat, in milliseconds "
                        f"(default {TF_DEFAULT_TOLERANCE_MS})")
    parser.set_defaults(handler=run_score)


def run_score(args: argparse.Namespace) -> int:
    if args.duration_s is not None and args.duration_s < 0:
        raise ConfigError(f"--duration-s must be >= 0, got {args.duration_s}")
    if args.tolerance_ms < 0 or args.tf_tolerance_ms < 0:
        raise ConfigError("--tolerance-ms and --tf-tolerance-ms must be >= 0")
    keywords = _parse_keywords(args.keywords)

    labels = read_labels(args.labels, keywords)
    events = _select_events(read_events(args.events), args.events, args.model, args.shadow)
    report = score_events(
        events, labels, keywords, args.tolerance_ms, args.duration_s,
        tf_compat=args.tf_compat, tf_tolerance_ms=args.tf_tolerance_ms,
    )

    text = json.dumps(report.to_dict(), indent=2) + "\n"
    if args.report is not None:
        try:
            args.report.write_text(text)
        except OSError as error:
            raise ConfigError(f"cannot write report {args.report}: {error}") from error
    print(format_summary(report), file=sys.stderr)
    return 0


def format_summary(report: ScoreReport) -> str:
    """Return a few lines of totals and per-keyword counts for a terminal."""
    lines = [
        f"references {report.references} (+{report.unknown_references} _unknown_), "
        f"detections {report.detections}: tp {report.tp}, fp {report.fp}, fn {report.fn}",
        f"precision {_percent(report.precision)}, recall {_percent(report.recall)}, "
        f"F1 {_percent(report.f1)}, false accepts/hour {_number(report.false_accepts_per_hour)}",
    ]
    latency = report.latency_summary()
    if latency["count"]:
        lines.append(f"latency after word end: median {_number(latency['median'])} ms, "
                     f"p90 {_number(latency['p90'])} ms")
    for keyword, counts in report.per_keyword.items():
        lines.append(f"  {keyword:<12} tp {counts.tp:>4}  fp {counts.fp:>4}  fn {counts.fn:>4}  "
                     f"precision {_percent(counts.precision):>6}  "
                     f"recall {_percent(counts.recall):>6}")
    if report.tf_compat is not None:
        tf = report.tf_compat
        lines.append(
            f"TensorFlow streaming accuracy: {_percent_value(tf.percentage(tf.matched))} matched, "
            f"{_percent_value(tf.percentage(tf.correct))} correct, "
            f"{_percent_value(tf.percentage(tf.wrong))} wrong, "
            f"{_percent_value(tf.percentage(tf.false_positives))} false positive"
        )
    return "\n".join(lines)


def _parse_keywords(value: str | None) -> list[str] | None:
    if value is None:
        return None
    keywords = [keyword.strip() for keyword in value.split(",") if keyword.strip()]
    if not keywords:
        raise ConfigError(f"--keywords lists no keyword: {value!r}")
    return keywords


def _select_events(
    events: list[Event], path: Path, model: str | None, shadow: bool
) -> list[Event]:
    selected = [event for event in events if event.shadow == shadow]
    if model is not None:
        selected = [event for event in selected if event.model == model]
        if not selected:
            found = sorted({event.model for event in events})
            raise ConfigError(
                f"{path}: no {'shadow' if shadow else 'primary'} events of model {model!r} "
                f"(models in the file: {', '.join(found) or 'none'})"
            )
    models = sorted({event.model for event in selected})
    if len(models) > 1:
        raise ConfigError(
            f"{path}: events of several models ({', '.join(models)}); choose one with --model"
        )
    log.debug("scoring %d of %d events from %s", len(selected), len(events), path)
    return selected


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _percent_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
