"""``kwstream compare``: decide whether a candidate model may replace the baseline.

Exit status: 0 promote, 1 reject, 2 error (a missing file, an invalid suite or policy).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[3]
DEFAULT_SUITE = REPOSITORY / "bench" / "compare" / "suite.toml"
DEFAULT_POLICY = REPOSITORY / "bench" / "compare" / "policy.toml"
EXIT_PROMOTE = 0
EXIT_REJECT = 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "compare",
        help="compare a candidate model with the baseline; exit 0 promote, 1 reject, 2 error",
        description="Run a baseline and a candidate model on the same evaluation suite "
                    "(streams replayed through the pipeline, and 1-second clips), measure both "
                    "per keyword and per scenario with confidence intervals, and apply a "
                    "promotion policy. Exit status: 0 promote, 1 reject, 2 error.",
    )
    parser.add_argument("--baseline", type=Path, required=True, metavar="A.tflite",
                        help="the deployed model (its card A.json beside it)")
    parser.add_argument("--candidate", type=Path, required=True, metavar="B.tflite",
                        help="the model that may replace it (its card B.json beside it)")
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE, metavar="FILE",
                        help="evaluation suite (default: bench/compare/suite.toml)")
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY, metavar="FILE",
                        help="promotion policy (default: bench/compare/policy.toml)")
    parser.add_argument("--target-keyword", metavar="K",
                        help="the keyword the candidate was made to improve (default: the "
                             "policy's target_keyword; without one, target rules use all "
                             "keywords)")
    parser.add_argument("--report", type=Path, required=True, metavar="OUT.json",
                        help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, metavar="OUT.md",
                        help="also write a Markdown report and OUT-recall.png beside it")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="folder for the streams and clips the suite builds (default "
                             "~/.cache/kwstream/compare)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from kwstream.compare import compare_models, label_sets, load_models
    from kwstream.compare_policy import check_policy, decide, load_policy
    from kwstream.compare_suite import build_clip_sets, build_streams, default_cache_dir, load_suite
    from kwstream.errors import ConfigError

    started = time.monotonic()
    if args.markdown is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise ConfigError("--markdown needs matplotlib for its chart: install "
                              "kwstream[plots] or omit --markdown") from error
    suite = load_suite(args.suite)
    policy = load_policy(args.policy)
    models = load_models(args.baseline, args.candidate)
    sets = label_sets(models["baseline"], models["candidate"])
    target = args.target_keyword or policy.target_keyword
    check_policy(policy, suite, sets.common_keywords, target)
    del models

    cache_dir = args.cache or default_cache_dir()
    build_started = time.monotonic()
    streams = build_streams(suite, cache_dir)
    clip_sets = build_clip_sets(suite, streams, cache_dir)
    build_seconds = time.monotonic() - build_started

    results = compare_models(args.baseline, args.candidate, suite, streams, clip_sets)
    outcome = decide(results, policy, target)
    results["timings"]["build_seconds"] = round(build_seconds, 2)
    results["timings"]["total_seconds"] = round(time.monotonic() - started, 2)
    report = assemble_report(outcome, results, suite, policy, target, streams, clip_sets)

    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown is not None:
        from kwstream.compare_report import write_markdown

        chart = write_markdown(report, args.markdown)
        log.info("wrote %s and %s", args.markdown, chart)
    print_summary(report)
    return EXIT_PROMOTE if report["decision"] == "promote" else EXIT_REJECT


def assemble_report(outcome: dict[str, Any], results: dict[str, Any], suite: Any, policy: Any,
                    target: str | None, streams: dict[str, Any],
                    clip_sets: dict[str, Any]) -> dict[str, Any]:
    return {
        "decision": outcome["decision"],
        "target_keyword": target,
        "rules": outcome["rules"],
        "models": results["models"],
        "labels": results["labels"],
        "confidence": suite.confidence,
        "suite": {
            "path": str(suite.path),
            "description": suite.description,
            "tolerance_ms": suite.tolerance_ms,
            "bootstrap_resamples": suite.bootstrap_resamples,
            "segment_s": suite.segment_s,
            "streams": [{"name": name, "kind": stream.spec.kind, "audio": str(stream.audio),
                         "labels": str(stream.labels_path),
                         "audio_seconds": round(stream.audio_seconds, 3)}
                        for name, stream in streams.items()],
            "clip_sets": [{"name": name, "mode": clip_set.spec.mode,
                           "streams": list(clip_set.spec.streams),
                           "clips": len(clip_set.clips)}
                          for name, clip_set in clip_sets.items()],
        },
        "policy": {"path": str(policy.path), "description": policy.description},
        "latency_ms": results["latency_ms"],
        "streaming": results["streaming"],
        "clips": results["clips"],
        "timings": results["timings"],
    }


def print_summary(report: dict[str, Any]) -> None:
    failed = [rule["name"] for rule in report["rules"] if rule["verdict"] == "fail"]
    models = report["models"]
    line = (f"{report['decision']}: candidate {models['candidate']['id']} against baseline "
            f"{models['baseline']['id']}")
    if failed:
        line += f"; failed rules: {'; '.join(failed)}"
    print(line, file=sys.stderr)
