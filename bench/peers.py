"""Replay one WAV file through a peer keyword spotter and print its cost as one JSON line.

Runs in the separate environment made by ``bench/setup-peers.sh`` (the peers pin versions
that would conflict with kwstream's own). Measured from the first block to the last one,
model loading excluded, the same way ``kwstream replay`` measures itself:

    .venv-peers/bin/python bench/peers.py micro okay_nabu stream.wav
    .venv-peers/bin/python bench/peers.py oww hey_jarvis_v0.1 stream.wav
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import soundfile


def read_pcm(path: str) -> np.ndarray:
    audio, rate = soundfile.read(path, dtype="int16")
    if rate != 16000 or audio.ndim != 1:
        raise SystemExit(f"{path}: expected 16 kHz mono, got {rate} Hz shape {audio.shape}")
    return audio


def run_micro(model_name: str, pcm: np.ndarray) -> dict:
    """pymicro-wakeword: its own streaming features (10 ms steps) and detector, fed 1 s blocks."""
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

    model = MicroWakeWord.from_builtin(Model(model_name))
    features = MicroWakeWordFeatures()
    data = pcm.tobytes()
    chunk_bytes = 160 * 2 * 100  # 1 s blocks, the same block size as kwstream's max-speed replay
    detections = []
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    for offset in range(0, len(data), chunk_bytes):
        for feature in features.process_streaming(data[offset : offset + chunk_bytes]):
            if model.process_streaming(feature):
                detections.append(offset / 32)
    return _result(started_wall, started_cpu, pcm.size, detections)


def run_oww(model_name: str, pcm: np.ndarray) -> dict:
    """openWakeWord 0.4.0 with its ONNX models, fed 80 ms frames as it expects."""
    import openwakeword
    from openwakeword.model import Model

    paths = [p for p in openwakeword.get_pretrained_model_paths() if model_name in p]
    if not paths:
        raise SystemExit(f"openWakeWord has no model named {model_name}")
    model = Model(wakeword_model_paths=paths)
    frame = 1280
    detections = []
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    for offset in range(0, pcm.size - frame + 1, frame):
        scores = model.predict(pcm[offset : offset + frame])
        if max(scores.values()) >= 0.5:
            detections.append(offset / 16)
    return _result(started_wall, started_cpu, pcm.size, detections)


def _result(started_wall: float, started_cpu: float, samples: int, detections: list) -> dict:
    wall = time.perf_counter() - started_wall
    cpu = time.process_time() - started_cpu
    audio_s = samples / 16000
    return {
        "audio_seconds": audio_s,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "realtime_factor": audio_s / wall,
        "cpu_seconds_per_audio_hour": cpu / audio_s * 3600,
        "detections": len(detections),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["micro", "oww"])
    parser.add_argument("model")
    parser.add_argument("wav")
    args = parser.parse_args()
    pcm = read_pcm(args.wav)
    runner = run_micro if args.kind == "micro" else run_oww
    print(json.dumps({"peer": args.kind, "model": args.model, **runner(args.model, pcm)}))


if __name__ == "__main__":
    main()
