"""Log-mel frontend: one feature row per hop, the same numerics in training and at run time.

Row ``k`` covers samples ``[k * hop_samples, k * hop_samples + window_samples)``. The batch
function :func:`log_mel_rows` computes every row of a signal; :class:`StreamingFrontend` feeds
blocks of any size and returns only the rows that became complete, by calling the batch function
on the unconsumed tail plus the new block. Each row depends only on its own samples, so the
streaming rows equal the batch rows.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kwstream.errors import ModelCardError

NORMALIZATIONS = ("none", "window_mean", "band_mean")


@dataclass(frozen=True)
class FrontendParams:
    """Parameters of the log-mel frontend, stored in each model card."""

    sample_rate: int = 16000
    """Samples per second of the mono input."""
    window_ms: int = 30
    """Analysis window of one row, in milliseconds."""
    hop_ms: int = 20
    """Step between two rows, in milliseconds."""
    fft_size: int = 512
    """FFT length in samples; the window is zero-padded to it."""
    num_bands: int = 40
    """Number of mel bands, the width of a feature row."""
    lower_hz: float = 20.0
    """Lower edge of the first mel band."""
    upper_hz: float = 7600.0
    """Upper edge of the last mel band."""
    log_floor: float = 1e-6
    """Added to each band's energy before the natural log, so silence stays finite."""
    window_rows: int = 49
    """Rows in one model input window (49 rows of 20 ms cover 1 s)."""
    normalization: str = "window_mean"
    """Window normalisation before quantization: ``none``, ``window_mean`` (the mean of all
    values of the window is subtracted) or ``band_mean`` (each band's mean is subtracted)."""

    def __post_init__(self) -> None:
        if self.sample_rate != 16000:
            raise ModelCardError(f"frontend sample_rate must be 16000, got {self.sample_rate}")
        if self.hop_ms <= 0 or self.window_ms < self.hop_ms:
            raise ModelCardError(
                f"frontend needs 0 < hop_ms <= window_ms, got hop_ms={self.hop_ms} "
                f"window_ms={self.window_ms}"
            )
        if self.fft_size < self.window_samples:
            raise ModelCardError(
                f"frontend fft_size {self.fft_size} is shorter than the window "
                f"({self.window_samples} samples)"
            )
        if not 0 <= self.lower_hz < self.upper_hz <= self.sample_rate / 2:
            raise ModelCardError(
                f"frontend band edges must satisfy 0 <= lower_hz < upper_hz <= "
                f"{self.sample_rate / 2}, got {self.lower_hz} and {self.upper_hz}"
            )
        if self.num_bands < 1 or self.window_rows < 1:
            raise ModelCardError(
                f"frontend num_bands and window_rows must be positive, got "
                f"{self.num_bands} and {self.window_rows}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ModelCardError(
                f"frontend normalization must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {self.normalization!r}"
            )

    @property
    def hop_samples(self) -> int:
        return self.sample_rate * self.hop_ms // 1000

    @property
    def window_samples(self) -> int:
        return self.sample_rate * self.window_ms // 1000

    @property
    def span_samples(self) -> int:
        """Samples covered by one model input window (15840 for 49 rows of 20 ms)."""
        return (self.window_rows - 1) * self.hop_samples + self.window_samples

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontendParams:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"unknown frontend parameter(s): {', '.join(unknown)}")
        return cls(**data)


def _hz_to_mel(hz: np.ndarray | np.float64) -> np.ndarray:
    return 1127.0 * np.log1p(hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * np.expm1(mel / 1127.0)


@functools.lru_cache(maxsize=8)
def _analysis_constants(params: FrontendParams) -> tuple[np.ndarray, np.ndarray]:
    """Return the Hann window and the (fft_size // 2 + 1, num_bands) mel filterbank."""
    window = np.hanning(params.window_samples + 2)[1:-1].astype(np.float32)
    bin_hz = np.arange(params.fft_size // 2 + 1) * params.sample_rate / params.fft_size
    edges_mel = np.linspace(
        _hz_to_mel(np.float64(params.lower_hz)),
        _hz_to_mel(np.float64(params.upper_hz)),
        params.num_bands + 2,
    )
    edges_hz = _mel_to_hz(edges_mel)
    bank = np.zeros((bin_hz.size, params.num_bands), dtype=np.float64)
    for band in range(params.num_bands):
        left, centre, right = edges_hz[band : band + 3]
        rising = (bin_hz - left) / (centre - left)
        falling = (right - bin_hz) / (right - centre)
        bank[:, band] = np.clip(np.minimum(rising, falling), 0.0, None)
    return window, bank.astype(np.float32)


def log_mel_rows(samples: np.ndarray, params: FrontendParams) -> np.ndarray:
    """Compute every complete log-mel row of ``samples``.

    ``samples`` is mono audio at ``params.sample_rate``, int16 or float in [-1, 1]. Returns a
    float32 array of shape (rows, num_bands), rows = 1 + (len - window) // hop, or zero rows
    when the signal is shorter than one window.
    """
    audio = np.asarray(samples)
    if audio.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got shape {audio.shape}")
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    else:
        audio = audio.astype(np.float32, copy=False)

    hop, width = params.hop_samples, params.window_samples
    num_rows = 0 if audio.size < width else 1 + (audio.size - width) // hop
    if num_rows == 0:
        return np.zeros((0, params.num_bands), dtype=np.float32)

    window, bank = _analysis_constants(params)
    frames = np.lib.stride_tricks.sliding_window_view(audio, width)[::hop][:num_rows]
    spectrum = np.fft.rfft(frames * window, n=params.fft_size, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    # One row at a time keeps each row's dot products independent of how many rows are
    # computed together, so streaming and batch rows stay bit-identical.
    energies = np.einsum("rf,fb->rb", power, bank, optimize=False)
    return np.log(energies + np.float32(params.log_floor)).astype(np.float32)


def normalize_window(window: np.ndarray, params: FrontendParams) -> np.ndarray:
    """Normalise windows of shape (..., window_rows, num_bands) as ``params.normalization`` selects."""
    if params.normalization == "window_mean":
        return window - window.mean(axis=(-2, -1), keepdims=True)
    if params.normalization == "band_mean":
        return window - window.mean(axis=-2, keepdims=True)
    return window


def feature_windows(samples: np.ndarray, params: FrontendParams, stride_rows: int = 1) -> np.ndarray:
    """Return normalised windows (n, window_rows, num_bands) of a signal, one every stride_rows."""
    rows = log_mel_rows(samples, params)
    if rows.shape[0] < params.window_rows:
        return np.zeros((0, params.window_rows, params.num_bands), dtype=np.float32)
    views = np.lib.stride_tricks.sliding_window_view(rows, params.window_rows, axis=0)
    windows = np.ascontiguousarray(views[::stride_rows].transpose(0, 2, 1))
    return normalize_window(windows, params).astype(np.float32)


class StreamingFrontend:
    """Turn blocks of samples into feature rows, keeping the last ``window_rows`` rows.

    ``rows_total`` counts every row produced since the start; row ``k`` ends at stream sample
    ``k * hop_samples + window_samples``. Nothing is recomputed: each call computes only the
    rows that the new block completes.
    """

    def __init__(self, params: FrontendParams) -> None:
        self.params = params
        self._tail = np.zeros(0, dtype=np.float32)
        self._history = np.zeros((0, params.num_bands), dtype=np.float32)
        self.rows_total = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        """Feed one block of float32 samples and return the new rows (n, num_bands)."""
        block = np.asarray(block, dtype=np.float32)
        audio = np.concatenate([self._tail, block]) if self._tail.size else block
        rows = log_mel_rows(audio, self.params)
        consumed = rows.shape[0] * self.params.hop_samples
        self._tail = audio[consumed:].copy()
        if rows.shape[0]:
            self._history = np.concatenate([self._history, rows])
            self.rows_total += rows.shape[0]
        return rows

    def take_windows(self, row_indices: np.ndarray) -> np.ndarray:
        """Return normalised windows (n, window_rows, num_bands) ending at the given rows.

        Only rows produced since the previous call, plus one window of history, are kept. After
        the call the history is trimmed to the last ``window_rows - 1`` rows.
        """
        keep = self.params.window_rows
        first_kept = self.rows_total - self._history.shape[0]
        windows = np.empty((len(row_indices), keep, self.params.num_bands), dtype=np.float32)
        for slot, row in enumerate(row_indices):
            end = int(row) - first_kept + 1
            if end < keep or end > self._history.shape[0]:
                raise ValueError(
                    f"row {row} is outside the rows kept ({first_kept}..{self.rows_total - 1}) "
                    f"or has fewer than {keep} rows before it"
                )
            windows[slot] = self._history[end - keep : end]
        self._history = self._history[-(keep - 1) :].copy() if keep > 1 else self._history[:0]
        return normalize_window(windows, self.params)

    def row_end_sample(self, row_index: int) -> int:
        """Stream sample index just past the end of row ``row_index``."""
        return row_index * self.params.hop_samples + self.params.window_samples
