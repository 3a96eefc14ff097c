"""The streaming frontend must produce exactly the rows of the batch function."""

from __future__ import annotations

import numpy as np
import pytest

from kwstream.errors import ModelCardError
from kwstream.frontend import (
    FrontendParams,
    StreamingFrontend,
    feature_windows,
    log_mel_rows,
    normalize_window,
)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def test_row_count_follows_hop_and_window():
    params = FrontendParams()
    assert log_mel_rows(np.zeros(479, np.float32), params).shape == (0, 40)
    assert log_mel_rows(np.zeros(480, np.float32), params).shape == (1, 40)
    assert log_mel_rows(np.zeros(16000, np.float32), params).shape == (49, 40)
    assert params.span_samples == 15840


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streaming_rows_equal_batch_rows(seed):
    params = FrontendParams()
    audio = _noise(3.0)
    batch = log_mel_rows(audio, params)
    frontend = StreamingFrontend(params)
    rng = np.random.default_rng(seed)
    parts, position = [], 0
    while position < audio.size:
        size = int(rng.integers(1, 2500))
        parts.append(frontend.process(audio[position : position + size]))
        position += size
    streamed = np.concatenate(parts)
    assert streamed.shape == batch.shape
    assert np.array_equal(streamed, batch)
    assert frontend.rows_total == batch.shape[0]


def test_int16_and_float_input_agree():
    params = FrontendParams()
    pcm = (_noise(1.0) * 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768.0
    assert np.array_equal(log_mel_rows(pcm, params), log_mel_rows(as_float, params))


def test_take_windows_equals_batch_windows():
    params = FrontendParams()
    audio = _noise(2.0)
    expected = feature_windows(audio, params, stride_rows=1)
    frontend = StreamingFrontend(params)
    frontend.process(audio)
    rows = np.arange(params.window_rows - 1, frontend.rows_total)
    windows = frontend.take_windows(rows)
    assert np.array_equal(windows, expected)


def test_take_windows_rejects_rows_already_trimmed():
    params = FrontendParams()
    frontend = StreamingFrontend(params)
    frontend.process(_noise(2.0))
    frontend.take_windows(np.array([60]))
    with pytest.raises(ValueError, match="outside the rows kept"):
        frontend.take_windows(np.array([55]))


def test_window_mean_normalization_centres_the_window():
    params = FrontendParams(normalization="window_mean")
    window = np.arange(49 * 40, dtype=np.float32).reshape(49, 40)
    assert abs(float(normalize_window(window, params).mean())) < 1e-3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sample_rate": 8000}, "sample_rate must be 16000"),
        ({"hop_ms": 40}, "hop_ms <= window_ms"),
        ({"upper_hz": 9000.0}, "band edges"),
        ({"normalization": "zscore"}, "normalization must be one of"),
        ({"fft_size": 256}, "shorter than the window"),
    ],
)
def test_invalid_parameters_are_rejected(changes, message):
    with pytest.raises(ModelCardError, match=message):
        FrontendParams(**changes)


def test_unknown_parameter_named():
    with pytest.raises(ModelCardError, match="num_mels"):
        FrontendParams.from_dict({"num_mels": 40})
