"""Measure how long the streaming scorer takes for 24 hours of labels and events.

The synthetic day has one word every 3 s on average (28 800 rows, a fifth of them
``_unknown_``), a detection for 90 % of the keywords and one false accept a minute. The script
prints the median of several runs of ``score_events`` on in-memory lists, and of reading both
files and scoring them.

    .venv/bin/python bench/bench_scoring.py [--runs 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kwstream.events import Event, read_events, write_events
from kwstream.labels import Label, read_labels, write_labels
from kwstream.scoring import score_events

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DAY_MS = 24 * 3600 * 1000


def synthesize_day(seed: int) -> tuple[list[Label], list[Event]]:
    generator = random.Random(seed)
    labels = []
    events = []
    for slot_start_ms in range(0, DAY_MS, 3000):
        start_ms = slot_start_ms + generator.randint(0, 1500)
        end_ms = start_ms + generator.randint(300, 800)
        name = "_unknown_" if generator.random() < 0.2 else generator.choice(KEYWORDS)
        labels.append(Label(name, start_ms, end_ms))
        if name != "_unknown_" and generator.random() < 0.9:
            events.append(Event(name, 0.9, end_ms + generator.randint(0, 600), "bench"))
    for _ in range(24 * 60):
        time_ms = generator.randint(0, DAY_MS)
        events.append(Event(generator.choice(KEYWORDS), 0.8, time_ms, "bench"))
    events.sort(key=lambda event: event.time_ms)
    return labels, events


def median_seconds(function: Callable[[], object], runs: int) -> float:
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (default 7)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    labels, events = synthesize_day(args.seed)
    report = score_events(events, labels, KEYWORDS, duration_s=DAY_MS / 1000)
    print(f"24 h: {len(labels)} label rows, {len(events)} events; "
          f"precision {report.precision:.3f}, recall {report.recall:.3f}", file=sys.stderr)

    scoring_s = median_seconds(
        lambda: score_events(events, labels, KEYWORDS, duration_s=DAY_MS / 1000), args.runs
    )
    with tempfile.TemporaryDirectory() as directory:
        labels_path = Path(directory) / "labels.csv"
        events_path = Path(directory) / "events.jsonl"
        write_labels(labels_path, labels)
        write_events(events_path, events)
        files_s = median_seconds(
            lambda: score_events(read_events(events_path), read_labels(labels_path, KEYWORDS),
                                 KEYWORDS, duration_s=DAY_MS / 1000),
            args.runs,
        )
    print(f"score_events, in memory:    median {scoring_s * 1000:.0f} ms of {args.runs} runs")
    print(f"read files + score_events:  median {files_s * 1000:.0f} ms of {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
