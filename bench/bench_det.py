"""Draw kwstream's DET curve beside pocketsphinx's on one labeled stream, scored the same way.

kwstream's curve comes from one ``kwstream replay --sweep`` pass. pocketsphinx's curve comes
from one run of ``bench/pocketsphinx_peer.py`` (in ``.venv-peers``) per threshold, at most two
at a time.
Every point is scored by ``kwstream.scoring.score_events``, the code behind
``kwstream score``. Points count only the keywords that the label file contains (the digits
of an Allison stream): detections of the other keywords are dropped, because the stream
cannot tell their misses. Their false accepts are reported beside, as ``fa_per_hour_all``.

    .venv/bin/python bench/bench_det.py ~/.cache/kwstream/bench/allison-10min.wav \\
        --labels ~/.cache/kwstream/bench/allison-10min.csv --out-dir /tmp/det-10min \\
        --png docs/img/det-allison-10min.png

Writes ``results.json`` (every point and the cost of every run) to ``--out-dir`` and prints
Markdown tables of the operating points and the cost on stdout. ``--no-peer`` measures
kwstream alone, such as on a long stream where only its own accuracy is wanted.
pocketsphinx does not depend on kwstream's model, so ``--peer-from RESULTS`` takes its points
and costs from an earlier ``results.json`` of the same stream instead of running it again
(the one-hour stream costs about half an hour of peer runs); the stream's duration and
keyword count must match.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kwstream.events import Event, read_events
from kwstream.labels import Label, read_labels
from kwstream.scoring import score_events
from kwstream.sweep import OVERALL

REPO = Path(__file__).resolve().parent.parent
PEER_PYTHON = REPO / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = REPO / "bench" / "pocketsphinx_peer.py"
PEER_THRESHOLDS = (1e-30, 1e-20, 1e-10, 1e-5, 1.0, 1e3, 1e5, 1e7, 1e10, 1e15, 1e20)
SEGMENTATIONS = ("continuous", "endpointer")
PARALLEL_PEER_RUNS = 2
TARGET_RECALL = 0.9
TARGET_FALSE_ACCEPTS_PER_HOUR = 1.0


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates of one system at one threshold, over the stream's keywords."""

    system: str
    threshold: float
    tp: int
    fp: int
    fn: int
    miss_rate: float | None
    fa_per_hour: float
    fa_per_hour_all: float
    """False accepts per hour counting detections of every keyword, present or not."""

    @property
    def recall(self) -> float | None:
        return None if self.miss_rate is None else 1.0 - self.miss_rate

    def meets_target(self) -> bool:
        return (self.recall is not None and self.recall >= TARGET_RECALL
                and self.fa_per_hour <= TARGET_FALSE_ACCEPTS_PER_HOUR)


def check_peer_environment() -> None:
    """Exit with the fix when ``.venv-peers`` or its pocketsphinx is missing."""
    fix = ("Run bench/setup-peers.sh, which installs pocketsphinx there, or pass --no-peer "
           "to measure kwstream alone.")
    if not PEER_PYTHON.exists():
        raise SystemExit(f"bench_det: {PEER_PYTHON} not found. {fix}")
    probe = subprocess.run([str(PEER_PYTHON), "-c", "import pocketsphinx"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {probe.returncode}"
        raise SystemExit(f"bench_det: pocketsphinx is missing in {PEER_PYTHON.parent.parent} "
                         f"(import pocketsphinx failed: {reason}). {fix}")


def run_kwstream(audio: Path, labels: Path, model: Path | None, out_dir: Path) -> dict[str, Any]:
    """Replay the stream once with a sweep and return the replay report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "kwstream", "replay", str(audio), "--labels", str(labels),
               "--report", str(out_dir / "report.json"), "--sweep", str(out_dir / "sweep"),
               "--events", str(out_dir / "events.jsonl")]
    if model is not None:
        command += ["--model", str(model)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report: dict[str, Any] = json.loads((out_dir / "report.json").read_text())
    return report


def run_peer(audio: Path, threshold: float, segmentation: str, out_dir: Path) -> dict[str, Any]:
    """Run pocketsphinx at one threshold and return its cost line and the event file's path."""
    events_path = out_dir / f"pocketsphinx-{segmentation}-{threshold:g}.jsonl"
    result = subprocess.run(
        [str(PEER_PYTHON), str(PEER_SCRIPT), str(audio), "--events", str(events_path),
         "--threshold", f"{threshold:g}", "--segmentation", segmentation],
        check=True, capture_output=True, text=True,
    )
    cost: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    cost["events_path"] = str(events_path)
    return cost


def score_peer(system: str, threshold: float, events: list[Event], labels: list[Label],
               keywords: list[str], audio_seconds: float) -> OperatingPoint:
    present = [event for event in events if event.keyword in keywords]
    report = score_events(present, labels, keywords, duration_s=audio_seconds)
    every_keyword = score_events(events, labels, None, duration_s=audio_seconds)
    return OperatingPoint(system, threshold, report.tp, report.fp, report.fn, report.miss_rate,
                          report.fp * 3600 / audio_seconds,
                          every_keyword.fp * 3600 / audio_seconds)


def load_peer(path: Path, audio_seconds: float, labels: list[Label],
              keywords: list[str]) -> tuple[dict[str, list[OperatingPoint]], dict[str, Any]]:
    """Read pocketsphinx's curves and costs from an earlier results.json of the same stream."""
    try:
        earlier = json.loads(path.read_text())
        points = [OperatingPoint(**point) for point in earlier["points"]
                  if point["system"].startswith("pocketsphinx")]
        costs = {system: cost for system, cost in earlier["costs"].items()
                 if system.startswith("pocketsphinx")}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"bench_det: cannot read pocketsphinx's points from {path}: "
                         f"{error}") from error
    references = sum(1 for label in labels if label.label in keywords)
    mismatch = []
    if abs(float(earlier["audio_seconds"]) - audio_seconds) > 0.5:
        mismatch.append(f"{earlier['audio_seconds']} s of audio, this stream has "
                        f"{audio_seconds} s")
    if earlier["keywords"] != keywords:
        mismatch.append(f"keywords {earlier['keywords']}, this stream has {keywords}")
    if points and points[0].tp + points[0].fn != references:
        mismatch.append(f"{points[0].tp + points[0].fn} keyword references, this stream has "
                        f"{references}")
    if mismatch or not points:
        raise SystemExit(f"bench_det: {path} is not from this stream: "
                         f"{'; '.join(mismatch) or 'it has no pocketsphinx points'}")
    curves: dict[str, list[OperatingPoint]] = {}
    for point in points:
        curves.setdefault(point.system, []).append(point)
    for cost in costs.values():
        cost["from"] = str(path)
    return curves, costs


def kwstream_points(det_csv: Path, keywords: list[str], audio_seconds: float,
                    system: str = "kwstream") -> list[OperatingPoint]:
    """Sum the sweep's per-keyword rows over the stream's keywords, one point per threshold."""
    totals: dict[float, dict[str, int]] = {}
    with det_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            threshold = float(row["threshold"])
            total = totals.setdefault(threshold, {"tp": 0, "fp": 0, "fn": 0, "fp_all": 0})
            if row["keyword"] == OVERALL:
                total["fp_all"] = int(row["fp"])
            elif row["keyword"] in keywords:
                for name in ("tp", "fp", "fn"):
                    total[name] += int(row[name])
    return [_point(system, threshold, total, audio_seconds)
            for threshold, total in sorted(totals.items())]


def default_point(report: dict[str, Any], keywords: list[str]) -> OperatingPoint:
    """Return kwstream's point at the model card's thresholds, from the replay report."""
    total = {"tp": 0, "fp": 0, "fn": 0, "fp_all": int(report["fp"])}
    for keyword in keywords:
        counts = report["per_keyword"][keyword]
        for name in ("tp", "fp", "fn"):
            total[name] += counts[name]
    # NaN marks "the card's thresholds", which may differ per keyword.
    return _point("kwstream (card thresholds)", float("nan"), total, report["audio_seconds"])


def _point(system: str, threshold: float, total: dict[str, int],
           audio_seconds: float) -> OperatingPoint:
    references = total["tp"] + total["fn"]
    return OperatingPoint(system, threshold, total["tp"], total["fp"], total["fn"],
                          total["fn"] / references if references else None,
                          total["fp"] * 3600 / audio_seconds,
                          total["fp_all"] * 3600 / audio_seconds)


def best_point(points: list[OperatingPoint]) -> OperatingPoint | None:
    """Return the lowest-miss-rate point among those within the target false accept rate."""
    eligible = [p for p in points if p.miss_rate is not None
                and p.fa_per_hour <= TARGET_FALSE_ACCEPTS_PER_HOUR]
    return min(eligible, key=lambda p: (p.miss_rate, p.fa_per_hour), default=None)


def plot(curves: dict[str, list[OperatingPoint]], default: OperatingPoint, path: Path,
         title: str) -> None:
    """Draw two panels: false accepts of the stream's keywords, and of every keyword."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(figure)
    styles = {"kwstream": ("black", "-", "o"),
              "pocketsphinx continuous": ("tab:blue", "-", "s"),
              "pocketsphinx endpointer": ("tab:orange", "--", "^")}
    panels = [("fa_per_hour", "false accepts per hour, stream's keywords"),
              ("fa_per_hour_all", "false accepts per hour, all 20 keywords")]
    for index, (field, xlabel) in enumerate(panels):
        axes = figure.add_subplot(1, 2, index + 1)
        for system, points in curves.items():
            color, line, marker = styles.get(system, ("grey", "-", "o"))
            rates, misses = [], []
            for point in points:
                if point.miss_rate is not None:
                    rates.append(getattr(point, field))
                    misses.append(point.miss_rate)
            axes.plot(rates, misses, color=color, linestyle=line, marker=marker, markersize=4,
                      label=system)
        if default.miss_rate is not None:
            axes.plot([getattr(default, field)], [default.miss_rate], marker="*", markersize=14,
                      color="red", linestyle="none", label="kwstream at the card's thresholds")
        axes.axvline(TARGET_FALSE_ACCEPTS_PER_HOUR, color="grey", linestyle=":", linewidth=1)
        axes.axhline(1 - TARGET_RECALL, color="grey", linestyle=":", linewidth=1)
        # symlog: logarithmic above 1 false accept per hour, linear below, so 0 stays visible.
        axes.set_xscale("symlog", linthresh=1.0)
        axes.set_xlim(left=0)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"{xlabel} (log above 1)")
        axes.set_ylabel("miss rate")
        axes.grid(True, which="both", alpha=0.3)
        if index == 0:
            axes.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(str(path))


def markdown_points(points: list[OperatingPoint]) -> str:
    lines = ["| system | threshold | tp | fp | fn | miss rate | FA/h | FA/h, all keywords |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        threshold = "card" if p.threshold != p.threshold else f"{p.threshold:g}"
        miss = "n/a" if p.miss_rate is None else f"{p.miss_rate:.3f}"
        lines.append(f"| {p.system} | {threshold} | {p.tp} | {p.fp} | {p.fn} | {miss} | "
                     f"{p.fa_per_hour:.1f} | {p.fa_per_hour_all:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path, help="16 kHz mono WAV stream")
    parser.add_argument("--labels", type=Path, required=True, metavar="CSV")
    parser.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                        help="event files, sweep, reports and results.json go here")
    parser.add_argument("--png", type=Path, metavar="PNG", help="write the DET plot here")
    parser.add_argument("--model", type=Path, metavar="PATH",
                        help="kwstream model (default: the shipped model)")
    parser.add_argument("--no-peer", action="store_true", help="measure kwstream alone")
    parser.add_argument("--peer-from", type=Path, metavar="RESULTS",
                        help="take pocketsphinx's points from this earlier results.json of the "
                             "same stream instead of running it")
    args = parser.parse_args()
    if not args.no_peer and args.peer_from is None:
        check_peer_environment()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    labels = read_labels(args.labels)
    keywords = sorted({label.label for label in labels if label.is_keyword})
    report = run_kwstream(args.audio, args.labels, args.model, args.out_dir / "kwstream")
    audio_seconds = float(report["audio_seconds"])
    curves = {"kwstream": kwstream_points(args.out_dir / "kwstream" / "sweep" / "det.csv",
                                          keywords, audio_seconds)}
    default = default_point(report, keywords)
    costs: dict[str, Any] = {"kwstream": {
        "cpu_seconds": report["cpu_seconds"], "wall_seconds": report["wall_seconds"],
        "cpu_seconds_per_audio_hour": report["cpu_seconds"] / audio_seconds * 3600,
    }}

    if args.peer_from is not None and not args.no_peer:
        peer_curves, peer_costs = load_peer(args.peer_from, audio_seconds, labels, keywords)
        curves.update(peer_curves)
        costs.update(peer_costs)
    elif not args.no_peer:
        jobs = [(threshold, segmentation) for segmentation in SEGMENTATIONS
                for threshold in PEER_THRESHOLDS]
        with ThreadPoolExecutor(max_workers=PARALLEL_PEER_RUNS) as pool:
            results = list(pool.map(
                lambda job: run_peer(args.audio, job[0], job[1], args.out_dir), jobs))
        for segmentation in SEGMENTATIONS:
            system = f"pocketsphinx {segmentation}"
            runs = [r for r in results if r["segmentation"] == segmentation]
            curves[system] = [
                score_peer(system, run["threshold"], read_events(run["events_path"]), labels,
                           keywords, audio_seconds)
                for run in runs
            ]
            per_hour = [run["cpu_seconds_per_audio_hour"] for run in runs]
            costs[system] = {"runs": runs,
                             "cpu_seconds_per_audio_hour_median": statistics.median(per_hour),
                             "cpu_seconds_per_audio_hour_range": [min(per_hour), max(per_hour)]}

    if args.png is not None:
        plot(curves, default, args.png,
             f"DET curves on {args.audio.name} ({audio_seconds / 60:.0f} min), "
             f"{len(keywords)} keywords spoken in it")
    all_points = [default, *(p for points in curves.values() for p in points)]
    best = {system: best_point(points) for system, points in curves.items()}
    results_json = {
        "audio": str(args.audio), "labels": str(args.labels), "audio_seconds": audio_seconds,
        "keywords": keywords, "model_sha256": report["model_sha256"],
        "target": {"recall": TARGET_RECALL, "fa_per_hour": TARGET_FALSE_ACCEPTS_PER_HOUR},
        "default": asdict(default), "default_meets_target": default.meets_target(),
        "points": [asdict(p) for p in all_points],
        "best_at_target_fa": {s: None if p is None else asdict(p) for s, p in best.items()},
        "costs": costs,
    }
    (args.out_dir / "results.json").write_text(
        json.dumps(results_json, indent=2, default=str) + "\n")

    print(markdown_points(all_points))
    print()
    for system, point in best.items():
        verdict = "none" if point is None else (
            f"threshold {point.threshold:g}: recall {point.recall:.3f}, "
            f"{point.fa_per_hour:.1f} FA/h, target met: {point.meets_target()}")
        print(f"best point of {system} at <= {TARGET_FALSE_ACCEPTS_PER_HOUR:g} FA/h: {verdict}")
    print(f"kwstream at the card's thresholds: recall {default.recall:.3f}, "
          f"{default.fa_per_hour:.1f} FA/h, target met: {default.meets_target()}")
    for system, cost in costs.items():
        per_hour = cost.get("cpu_seconds_per_audio_hour",
                            cost.get("cpu_seconds_per_audio_hour_median"))
        print(f"CPU seconds per audio hour, {system}: {per_hour:.1f}")
    print(f"model sha256: {report['model_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
