"""VAD gate decisions depend on sample positions, not on block sizes."""

from __future__ import annotations

import numpy as np
import pytest

from kwstream.errors import ConfigError
from kwstream.vad import VadGate


def _speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced-sounding audio: a 150 Hz pulse train with harmonics, amplitude modulated."""
    t = np.arange(int(16000 * seconds)) / 16000
    tone = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (tone * envelope * 4000).astype(np.int16)


def _stream() -> np.ndarray:
    silence = np.zeros(16000 * 2, dtype=np.int16)
    return np.concatenate([silence, _speech_like(1.0), silence, silence])


def _gate_for_all_rows(gate: VadGate, audio: np.ndarray, block: int) -> np.ndarray:
    decisions = []
    row = 0
    for start in range(0, audio.size, block):
        gate.process(audio[start : start + block])
        complete = gate.frames_total
        rows = np.arange(row, complete)
        if rows.size:
            decisions.append(gate.open_for_rows(rows))
            gate.forget_before(complete)
            row = complete
    return np.concatenate(decisions)


def test_gate_opens_on_speech_and_closes_after_hangover():
    gate = VadGate(mode=1, hangover_ms=400)
    open_rows = _gate_for_all_rows(gate, _stream(), 320)
    frames = np.flatnonzero(open_rows)
    assert frames.size > 0
    # Speech spans frames 100..149. webrtcvad keeps deciding "speech" for a few frames after
    # it ends, and the gate adds 20 frames of hangover on top.
    assert frames.min() >= 95
    assert 149 + 20 <= frames.max() <= 149 + 20 + 10
    assert not open_rows[:90].any()


def test_gate_independent_of_block_size():
    audio = _stream()
    reference = _gate_for_all_rows(VadGate(hangover_ms=300), audio, 320)
    for block in (160, 777, 4000):
        assert np.array_equal(_gate_for_all_rows(VadGate(hangover_ms=300), audio, block), reference)


def test_disabled_gate_is_always_open():
    gate = VadGate(enabled=False)
    assert _gate_for_all_rows(gate, np.zeros(16000, np.int16), 320).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": 4}, "VAD mode"), ({"hangover_ms": -1}, "hangover_ms"), ({"frame_ms": 25}, "10, 20 or 30"),
])
def test_invalid_settings_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        VadGate(**kwargs)
