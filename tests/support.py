"""Audio helpers shared by the tests: Allison's recordings decoded with ffmpeg, WAV writers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

ALLISON_DIR = Path("/usr/share/asterisk/sounds/en")
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def decode_allison(relative: str, cache_dir: Path) -> np.ndarray:
    """Decode one G.722 recording of asterisk-core-sounds-en to 16 kHz mono float32."""
    source = ALLISON_DIR / relative
    if not source.is_file() or shutil.which("ffmpeg") is None:
        pytest.skip(f"needs ffmpeg and asterisk-core-sounds-en-g722 ({source})")
    target = cache_dir / (relative.replace("/", "_") + ".wav")
    if not target.exists():
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), "-ac", "1", "-ar", "16000",
             str(target)],
            check=True,
        )
    audio, rate = soundfile.read(target, dtype="float32")
    assert rate == 16000
    return audio


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    soundfile.write(path, audio, rate, subtype="PCM_16")
    return path


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), dtype=np.float32)


def pink_noise(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    """Pink noise with the given RMS level (1/f spectrum shaped in the frequency domain)."""
    rng = np.random.default_rng(seed)
    count = int(16000 * seconds)
    spectrum = np.fft.rfft(rng.standard_normal(count))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    noise = np.fft.irfft(spectrum, n=count)
    return (noise / np.sqrt(np.mean(noise**2)) * level).astype(np.float32)
