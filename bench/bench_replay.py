"""Replay benchmark: kwstream's pipeline settings and its peers, on one stream, in one run.

For each kwstream setting (inference stride, VAD on or off) the stream is replayed at full
speed ``--repeats`` times with ``--threads 1``; the table gives the median real-time factor,
CPU seconds per audio hour, per-inference latency, and what the setting costs in accuracy
(recall, false accepts per hour, detection delay after the word ends). The peers
(pymicro-wakeword, openWakeWord 0.4.0) run on the same file from ``.venv-peers``
(``bench/setup-peers.sh``). A real-time replay measures the daemon's CPU share and peak
resident memory.

    .venv/bin/python bench/bench_replay.py --audio STREAM.wav --labels STREAM.csv \
        --out bench/results/replay.json --markdown docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"

# (name, extra replay flags): the settings whose cost and accuracy the page compares.
SETTINGS = [
    ("stride 1, VAD off", ["--stride", "1", "--no-vad"]),
    ("stride 2, VAD off", ["--stride", "2", "--no-vad"]),
    ("stride 2, VAD on", ["--stride", "2"]),
    ("stride 2, VAD mode 3", ["--stride", "2", "--vad-mode", "3"]),
    ("stride 3, VAD on", ["--stride", "3"]),
    ("stride 4, VAD on", ["--stride", "4"]),
    ("default (card)", []),
]
PEERS = [("micro", "okay_nabu"), ("oww", "hey_jarvis_v0.1")]


def replay(audio: Path, labels: Path, flags: list[str], speed: str = "max") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "kwstream", "--log-level", "WARNING", "replay",
                   str(audio), "--labels", str(labels), "--report", str(report),
                   "--threads", "1", "--speed", speed, *flags]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(report.read_text())


def _process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_daemon(audio: Path, seconds: float, warmup_s: float = 10.0) -> dict:
    """Replay the first ``seconds`` of the stream in real time with 100 ms blocks, the daemon's default.

    CPU is read from /proc between ``warmup_s`` and the end, so interpreter start-up and model
    loading are left out; the peak resident memory covers the whole run.
    """
    import soundfile

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.wav"
        data, rate = soundfile.read(audio, dtype="int16", frames=int(seconds * 16000))
        soundfile.write(clip, data, rate)
        process = subprocess.Popen(
            [sys.executable, "-m", "kwstream", "--log-level", "WARNING", "replay", str(clip),
             "--speed", "realtime", "--threads", "1", "--block-ms", "100"],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(warmup_s)
            cpu_start, wall_start = _process_cpu_seconds(process.pid), time.perf_counter()
            time.sleep(max(1.0, seconds - warmup_s - 2.0))
            cpu_end, wall_end = _process_cpu_seconds(process.pid), time.perf_counter()
            peak_rss = _peak_rss_mb(process.pid)
            process.wait(timeout=seconds + 30)
        finally:
            if process.poll() is None:
                process.kill()
    cpu = cpu_end - cpu_start
    wall = wall_end - wall_start
    return {
        "audio_seconds": seconds,
        "measured_wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_percent_of_one_core": round(100 * cpu / wall, 2),
        "peak_rss_mb": round(peak_rss, 1),
        "note": f"CPU from {warmup_s:.0f} s after start to 2 s before the end; "
                "start-up and model loading excluded",
    }


def run_peer(kind: str, model: str, audio: Path) -> dict | None:
    if not PEERS_PYTHON.exists():
        print(f"skipping peer {kind}: {PEERS_PYTHON} missing (run bench/setup-peers.sh)",
              file=sys.stderr)
        return None
    output = subprocess.run([str(PEERS_PYTHON), str(ROOT / "bench" / "peers.py"), kind, model,
                             str(audio)], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def median_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(name: str, runs: list[dict]) -> dict:
    last = runs[-1]
    hours = last["audio_seconds"] / 3600
    latency = last.get("latency_ms") or {}
    return {
        "setting": name,
        "realtime_factor": median_of(runs, "realtime_factor"),
        "cpu_seconds_per_audio_hour": round(median_of(runs, "cpu_seconds") / hours, 2),
        "inference_ms_p50": last["inference_ms"]["p50"],
        "inference_ms_p95": last["inference_ms"]["p95"],
        "inference_ms_p99": last["inference_ms"]["p99"],
        "inferences": last["inferences"],
        "recall": last.get("recall"),
        "precision": last.get("precision"),
        "false_accepts_per_hour": last.get("false_accepts_per_hour"),
        "detection_delay_ms_median": latency.get("median"),
        "runs": len(runs),
    }


def markdown(result: dict) -> str:
    def fmt(value: object, digits: int = 3) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    lines = [
        "| setting | real-time factor (median) | CPU s per audio hour | inference p50 / p95 / p99 ms "
        "| inferences | recall | precision | false accepts/h | delay after word end, median ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["kwstream"]:
        lines.append(
            f"| {row['setting']} | {fmt(row['realtime_factor'], 0)}x | "
            f"{fmt(row['cpu_seconds_per_audio_hour'], 1)} | {fmt(row['inference_ms_p50'])} / "
            f"{fmt(row['inference_ms_p95'])} / {fmt(row['inference_ms_p99'])} | "
            f"{row['inferences']} | {fmt(row['recall'])} | {fmt(row['precision'])} | "
            f"{fmt(row['false_accepts_per_hour'], 1)} | {fmt(row['detection_delay_ms_median'], 0)} |"
        )
    lines += ["", "| peer | model | real-time factor | CPU s per audio hour |", "|---|---|---|---|"]
    for peer in result["peers"]:
        lines.append(f"| {peer['peer']} | {peer['model']} | {fmt(peer['realtime_factor'], 0)}x | "
                     f"{fmt(peer['cpu_seconds_per_audio_hour'], 1)} |")
    daemon = result.get("daemon")
    if daemon:
        lines += ["", f"Daemon pipeline replaying {daemon['audio_seconds']:.0f} s in real time "
                      f"(100 ms blocks): {daemon['cpu_percent_of_one_core']}% of one core, peak "
                      f"resident memory {daemon['peak_rss_mb']} MB ({daemon['note']})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, required=True, help="16 kHz mono WAV stream")
    parser.add_argument("--labels", type=Path, required=True, help="its label file")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--daemon-seconds", type=float, default=60.0,
                        help="audio replayed in real time for the CPU and memory figures")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the results table as Markdown")
    args = parser.parse_args()

    from kwstream.modelcard import default_model_path, load_card

    card = load_card(default_model_path())
    result: dict = {
        "audio": str(args.audio),
        "model": f"{card.id} version {card.version}, sha256 {card.sha256[:12]}",
        "machine": f"{platform.machine()}, {_cpu_name()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}, load average "
                   f"{os.getloadavg()[0]:.1f} at start",
        "date": time.strftime("%Y-%m-%d"),
        "kwstream": [],
        "peers": [],
    }
    for name, flags in SETTINGS:
        runs = [replay(args.audio, args.labels, flags) for _ in range(args.repeats)]
        row = summarize(name, runs)
        result["kwstream"].append(row)
        print(json.dumps(row), file=sys.stderr)
    for kind, model in PEERS:
        runs = [r for r in (run_peer(kind, model, args.audio) for _ in range(args.repeats)) if r]
        if runs:
            peer = dict(runs[-1])
            peer["realtime_factor"] = median_of(runs, "realtime_factor")
            peer["cpu_seconds_per_audio_hour"] = median_of(runs, "cpu_seconds_per_audio_hour")
            result["peers"].append(peer)
            print(json.dumps(peer), file=sys.stderr)
    if args.daemon_seconds > 0:
        result["daemon"] = measure_daemon(args.audio, args.daemon_seconds)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    if args.markdown:
        replace_section(args.markdown, "replay", table, result)
    print(table)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def replace_section(page: Path, name: str, table: str, result: dict) -> None:
    """Put the table between the page's ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    header = (f"Measured {result['date']} on {result['machine']}; model {result['model']}; "
              f"stream `{result['audio']}`; `--threads 1`; median of "
              f"{result['kwstream'][0]['runs']} runs per setting.\n\n")
    block = f"{begin}\n{header}{table}{end}"
    text = page.read_text() if page.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    before, rest = text.split(begin, 1)
    after = rest.split(end, 1)[1]
    page.write_text(before + block + after)


if __name__ == "__main__":
    main()
