"""Replay through the real pipeline with the shipped model, on real recordings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kwstream.cli import main
from kwstream.modelcard import default_model_path, load_card
from tests.support import DIGIT_WORDS, decode_allison, pink_noise, silence, write_wav

pytestmark = pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")


@pytest.fixture(scope="module")
def audio_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("allison")


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _digit_stream(audio_cache: Path, digits: list[int], gap_s: float = 1.5) -> tuple[np.ndarray, list]:
    """Digits separated by silence, with quiet pink noise under everything; returns labels too."""
    parts = [silence(1.0)]
    labels = []
    position = parts[0].size
    for digit in digits:
        word = decode_allison(f"digits/{digit}.g722", audio_cache)
        labels.append((DIGIT_WORDS[digit], position / 16, (position + word.size) / 16))
        parts += [word, silence(gap_s)]
        position += word.size + int(16000 * gap_s)
    audio = np.concatenate(parts)
    return audio + pink_noise(audio.size / 16000, 0.002), labels


def _write_labels(path: Path, labels: list) -> Path:
    lines = ["label,start_ms,end_ms"] + [f"{w},{s:.1f},{e:.1f}" for w, s, e in labels]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_allison_digit_gives_its_keyword(tmp_path, audio_cache, capsys):
    audio, _ = _digit_stream(audio_cache, [6])
    wav = write_wav(tmp_path / "six.wav", audio)
    assert main(["replay", str(wav)]) == 0
    keywords = [event["keyword"] for event in _events(capsys.readouterr().out)]
    assert keywords == ["six"]


def test_silence_and_noise_give_no_event(tmp_path, capsys):
    audio = np.concatenate([silence(3.0), pink_noise(5.0, 0.05, seed=3), silence(2.0)])
    wav = write_wav(tmp_path / "noise.wav", audio)
    assert main(["replay", str(wav)]) == 0
    assert _events(capsys.readouterr().out) == []


def test_event_schema_and_stdout_holds_events_only(tmp_path, audio_cache, capsys):
    audio, _ = _digit_stream(audio_cache, [9])
    wav = write_wav(tmp_path / "nine.wav", audio)
    assert main(["replay", str(wav)]) == 0
    out = capsys.readouterr().out
    events = _events(out)
    assert len(events) == len(out.splitlines()) == 1
    event = events[0]
    assert set(event) == {"keyword", "score", "time_ms", "model", "shadow"}
    assert event["model"] == load_card(default_model_path()).id
    assert event["shadow"] is False
    assert 0.0 < event["score"] <= 1.0


def test_realtime_and_max_speed_give_same_events(tmp_path, audio_cache, capsys):
    audio, _ = _digit_stream(audio_cache, [1, 9], gap_s=0.8)
    wav = write_wav(tmp_path / "pair.wav", audio)
    assert main(["replay", str(wav), "--speed", "max"]) == 0
    fast = _events(capsys.readouterr().out)
    assert main(["replay", str(wav), "--speed", "realtime", "--block-ms", "30"]) == 0
    paced = _events(capsys.readouterr().out)
    assert fast == paced
    assert len(fast) >= 1


def test_block_size_does_not_change_events(tmp_path, audio_cache, capsys):
    audio, _ = _digit_stream(audio_cache, [2, 4, 6, 8], gap_s=1.0)
    wav = write_wav(tmp_path / "even.wav", audio)
    results = []
    for block_ms in ("1000", "37", "250"):
        assert main(["replay", str(wav), "--block-ms", block_ms, "--stride", "1"]) == 0
        results.append(_events(capsys.readouterr().out))
    assert results[0] == results[1] == results[2]


def test_resampled_stereo_flac_is_read(tmp_path, audio_cache, capsys):
    import soundfile
    import soxr

    audio, _ = _digit_stream(audio_cache, [6])
    wav = write_wav(tmp_path / "six.wav", audio)
    assert main(["replay", str(wav)]) == 0
    expected = _events(capsys.readouterr().out)
    high = soxr.resample(audio, 16000, 44100)
    flac = tmp_path / "six.flac"
    soundfile.write(flac, np.stack([high, high], axis=1), 44100)
    assert main(["replay", str(flac)]) == 0
    events = _events(capsys.readouterr().out)
    assert [e["keyword"] for e in events] == ["six"]
    assert abs(events[0]["time_ms"] - expected[0]["time_ms"]) <= 40


def test_labels_give_report_equal_to_offline_score(tmp_path, audio_cache, capsys):
    audio, labels = _digit_stream(audio_cache, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    wav = write_wav(tmp_path / "digits.wav", audio)
    label_file = _write_labels(tmp_path / "digits.csv", labels)
    events_file = tmp_path / "events.jsonl"
    report_file = tmp_path / "report.json"
    page = tmp_path / "page" / "report.md"
    assert main(["replay", str(wav), "--labels", str(label_file), "--report", str(report_file),
                 "--events", str(events_file), "--markdown", str(page)]) == 0
    capsys.readouterr()
    report = json.loads(report_file.read_text())
    for key in ("audio_seconds", "wall_seconds", "cpu_seconds", "realtime_factor", "inference_ms",
                "precision", "recall", "f1", "false_accepts_per_hour", "miss_rate", "confusions",
                "per_keyword"):
        assert key in report, key
    assert set(report["inference_ms"]) == {"p50", "p95", "p99"}
    assert report["audio_seconds"] == pytest.approx(audio.size / 16000, abs=0.01)
    assert report["tp"] + report["fn"] == 10
    assert "## Per keyword" in page.read_text()
    assert report["tp"] >= 1

    offline_file = tmp_path / "offline.json"
    keywords = ",".join(load_card(default_model_path()).keywords)
    assert main(["score", "--events", str(events_file), "--labels", str(label_file),
                 "--duration-s", str(audio.size / 16000), "--report", str(offline_file),
                 "--keywords", keywords]) == 0
    offline = json.loads(offline_file.read_text())
    for key in ("precision", "recall", "f1", "false_accepts_per_hour", "per_keyword", "confusions"):
        assert offline[key] == report[key], key


def test_vad_off_runs_more_inferences(tmp_path, audio_cache, capsys):
    audio, _ = _digit_stream(audio_cache, [4], gap_s=4.0)
    wav = write_wav(tmp_path / "four.wav", audio)
    gated, ungated = tmp_path / "gated.json", tmp_path / "ungated.json"
    assert main(["replay", str(wav), "--report", str(gated)]) == 0
    assert main(["replay", str(wav), "--report", str(ungated), "--no-vad"]) == 0
    capsys.readouterr()
    assert json.loads(gated.read_text())["inferences"] < json.loads(ungated.read_text())["inferences"]


def test_interrupted_replay_scores_only_processed_audio(tmp_path, audio_cache):
    import signal
    import subprocess
    import sys
    import time

    audio, labels = _digit_stream(audio_cache, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    wav = write_wav(tmp_path / "digits.wav", audio)
    label_file = _write_labels(tmp_path / "digits.csv", labels)
    report_file = tmp_path / "report.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "kwstream", "--log-level", "ERROR", "replay", str(wav),
         "--labels", str(label_file), "--speed", "realtime", "--report", str(report_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(4.0)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    report = json.loads(report_file.read_text())
    assert report["partial"] is True
    assert report["audio_seconds"] < audio.size / 16000 / 2
    # A miss is decided once stream time passes the word's end plus the tolerance; a hit as soon
    # as it is detected. References after the cut are neither.
    audio_ms = report["audio_seconds"] * 1000
    decided_misses = [end for _, _, end in labels if end + 1000 <= audio_ms]
    started = [start for _, start, _ in labels if start <= audio_ms]
    assert report["fn"] <= len(decided_misses)
    assert report["tp"] + report["fn"] <= len(started)
    assert report["tp"] + report["fn"] < len(labels)
