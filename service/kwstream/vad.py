"""Voice activity gate: the model runs only on windows that contain speech.

webrtcvad classifies each 20 ms frame of the hop grid (frame ``f`` covers samples
``[f * hop, (f + 1) * hop)``). The gate is open for the window that ends at feature row ``k``
when a speech frame lies within ``hangover_ms`` before frame ``k``, the last frame wholly
inside that window. The decision depends only on sample positions, never on block sizes.
"""

from __future__ import annotations

import numpy as np
import webrtcvad

from kwstream.errors import ConfigError

VAD_MODES = (0, 1, 2, 3)


class VadGate:
    """Per-frame webrtcvad decisions and the per-window gate built on them."""

    def __init__(
        self,
        enabled: bool = True,
        mode: int = 1,
        hangover_ms: int = 1000,
        sample_rate: int = 16000,
        frame_ms: int = 20,
    ) -> None:
        if mode not in VAD_MODES:
            raise ConfigError(f"VAD mode must be one of 0, 1, 2, 3, got {mode}")
        if hangover_ms < 0:
            raise ConfigError(f"VAD hangover_ms must be >= 0, got {hangover_ms}")
        if frame_ms not in (10, 20, 30):
            raise ConfigError(f"webrtcvad frames are 10, 20 or 30 ms, got {frame_ms}")
        self.enabled = enabled
        self.mode = mode
        self.hangover_ms = hangover_ms
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.hangover_frames = hangover_ms // frame_ms
        self._vad = webrtcvad.Vad(mode)
        self._pending = np.zeros(0, dtype=np.int16)
        self._frames_total = 0
        self._last_speech_frame = -(10**9)
        # Speech flags of recent frames, starting at frame number ``_flags_first``.
        self._flags = np.zeros(0, dtype=bool)
        self._flags_first = 0

    @property
    def frames_total(self) -> int:
        return self._frames_total

    def process(self, samples: np.ndarray) -> int:
        """Classify the frames that ``samples`` (int16) completes; return how many were speech."""
        audio = np.concatenate([self._pending, samples]) if self._pending.size else samples
        count = audio.size // self.frame_samples
        self._pending = audio[count * self.frame_samples :].copy()
        if count == 0:
            return 0
        if self.enabled:
            data = audio[: count * self.frame_samples].tobytes()
            step = 2 * self.frame_samples
            flags = np.fromiter(
                (self._vad.is_speech(data[i * step : (i + 1) * step], self.sample_rate)
                 for i in range(count)),
                dtype=bool, count=count,
            )
        else:
            flags = np.ones(count, dtype=bool)
        self._flags = np.concatenate([self._flags, flags])
        self._frames_total += count
        return int(flags.sum())

    def open_for_rows(self, rows: np.ndarray) -> np.ndarray:
        """Return, for each feature row index, whether the window ending there may run.

        Rows must be in increasing order, their frames already processed and not forgotten.
        """
        if not self.enabled:
            return np.ones(len(rows), dtype=bool)
        if len(rows) == 0:
            return np.zeros(0, dtype=bool)
        # Index of the latest speech frame at or before each kept frame.
        kept = np.arange(self._flags_first, self._flags_first + self._flags.size)
        latest = np.where(self._flags, kept, -(10**9))
        latest = np.maximum.accumulate(np.concatenate([[self._last_speech_frame], latest]))[1:]
        offsets = np.asarray(rows, dtype=np.int64) - self._flags_first
        if offsets[0] < 0 or offsets[-1] >= latest.size:
            raise ValueError(
                f"rows {rows[0]}..{rows[-1]} are outside the VAD frames kept "
                f"({self._flags_first}..{self._flags_first + latest.size - 1})"
            )
        return latest[offsets] >= np.asarray(rows) - self.hangover_frames

    def forget_before(self, frame: int) -> None:
        """Drop the flags of frames before ``frame``, keeping what later rows need."""
        drop = min(max(0, frame - self._flags_first), self._flags.size)
        if drop == 0:
            return
        speech = np.flatnonzero(self._flags[:drop])
        if speech.size:
            self._last_speech_frame = self._flags_first + int(speech[-1])
        self._flags = self._flags[drop:]
        self._flags_first += drop
