"""Audio sources and the bounded buffer between a source and the pipeline.

Every source delivers :class:`AudioBlock` objects of 16 kHz mono float32 samples, each with the
stream sample index of its first sample. A file replays as fast as the CPU allows or paced in
real time; stdin carries raw 16-bit PCM; a microphone is read through sounddevice, whose
callback runs on PortAudio's thread and only copies the block and hands it to the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile
import soxr

from kwstream.errors import AudioError, ConfigError
from kwstream.metrics import Metrics

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


@dataclass
class AudioBlock:
    """A run of consecutive samples as a source delivered it."""

    samples: np.ndarray
    """Mono float32 samples at 16 kHz, in [-1, 1]."""
    start_sample: int
    """Stream sample index of the first sample; a gap to the previous block means lost audio."""
    arrival: float = field(default_factory=time.perf_counter)
    """``time.perf_counter()`` when the block reached the event loop."""


class RateLimitedWarning:
    """Log a warning at most once per ``interval_s``, with the count of repeats in between."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last = -float("inf")
        self._suppressed = 0

    def warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d more since the last warning)"
            args = (*args, self._suppressed)
        self._logger.warning(message, *args)
        self._last = now
        self._suppressed = 0


class BlockBuffer:
    """Bounded FIFO of audio blocks between a source and the pipeline, used on the loop thread.

    A real-time source calls :meth:`push_nowait`, which drops the oldest blocks when the buffer
    holds more than ``capacity_samples``; a file source awaits :meth:`put`, which waits for
    room instead, so a replay never loses audio.
    """

    def __init__(self, capacity_samples: int, metrics: Metrics | None = None) -> None:
        if capacity_samples <= 0:
            raise ConfigError(f"buffer capacity must be positive, got {capacity_samples} samples")
        self.capacity_samples = capacity_samples
        self._blocks: collections.deque[AudioBlock] = collections.deque()
        self._samples = 0
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._metrics = metrics
        self._warning = RateLimitedWarning(log)
        self.dropped_blocks = 0

    def push_nowait(self, block: AudioBlock) -> None:
        self._append(block)
        while self._samples > self.capacity_samples and len(self._blocks) > 1:
            dropped = self._blocks.popleft()
            self._samples -= dropped.samples.size
            self.dropped_blocks += 1
            if self._metrics is not None:
                self._metrics.audio_overflows.inc()
                self._metrics.dropped_audio_seconds.inc(dropped.samples.size / SAMPLE_RATE)
            self._warning.warn(
                "audio buffer full (%.2f s): dropped the oldest block of %.3f s",
                self.capacity_samples / SAMPLE_RATE, dropped.samples.size / SAMPLE_RATE,
            )

    async def put(self, block: AudioBlock) -> None:
        while self._samples >= self.capacity_samples and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        self._append(block)

    def _append(self, block: AudioBlock) -> None:
        if self._closed:
            return
        self._blocks.append(block)
        self._samples += block.samples.size
        self._readable.set()

    def close(self) -> None:
        """Mark the end of the stream; :meth:`get` returns None once the buffer is drained."""
        self._closed = True
        self._readable.set()
        self._writable.set()

    async def get(self) -> AudioBlock | None:
        while not self._blocks:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        block = self._blocks.popleft()
        self._samples -= block.samples.size
        self._writable.set()
        return block


class Source(Protocol):
    description: str

    async def run(self, buffer: BlockBuffer) -> None:
        """Deliver blocks into ``buffer`` until the stream ends, then close it."""


def _to_mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data.astype(np.float32)


class FileSource:
    """Decode an audio file (WAV, FLAC, OGG, anything libsndfile reads) to 16 kHz mono.

    ``speed`` is ``"max"`` (as fast as the pipeline takes blocks) or ``"realtime"`` (each block
    is delivered when its last sample would have been recorded).
    """

    def __init__(self, path: Path, speed: str = "max", block_ms: int = 1000) -> None:
        if speed not in ("max", "realtime"):
            raise ConfigError(f"speed must be 'max' or 'realtime', got {speed!r}")
        if block_ms <= 0:
            raise ConfigError(f"block_ms must be positive, got {block_ms}")
        self.path = Path(path)
        self.speed = speed
        self.block_ms = block_ms
        if not self.path.exists():
            raise AudioError(f"audio file not found: {self.path}")
        if not self.path.is_file():
            raise AudioError(f"{self.path}: not a regular file")
        try:
            info = soundfile.info(str(self.path))
        except FileNotFoundError as error:
            raise AudioError(f"audio file not found: {self.path}") from error
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
            raise AudioError(f"{self.path}: not a readable audio file: {error}") from error
        if info.frames == 0:
            raise AudioError(f"{self.path}: contains no audio samples")
        self.source_rate = int(info.samplerate)
        self.channels = int(info.channels)
        self.declared_frames = int(info.frames)
        self.description = (
            f"file {self.path} ({info.format}, {self.source_rate} Hz, {self.channels} ch, "
            f"{info.duration:.1f} s)"
        )
        self.samples_delivered = 0
        self.truncation = _declared_versus_actual(info.extra_info)

    async def run(self, buffer: BlockBuffer) -> None:
        try:
            await self._deliver(buffer)
        finally:
            buffer.close()
        if self.truncation is not None:
            declared, actual = self.truncation
            raise AudioError(
                f"{self.path}: truncated: the header declares {declared} bytes of audio data but "
                f"the file holds {actual}; the audio before the cut was processed"
            )

    async def _deliver(self, buffer: BlockBuffer) -> None:
        resampler = None
        if self.source_rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(self.source_rate, SAMPLE_RATE, 1, dtype="float32")
        frames_per_read = max(1, self.source_rate * self.block_ms // 1000)
        frames_read = 0
        started = time.perf_counter()
        try:
            with soundfile.SoundFile(str(self.path)) as handle:
                while True:
                    data = handle.read(frames_per_read, dtype="float32", always_2d=True)
                    last = data.shape[0] < frames_per_read
                    frames_read += data.shape[0]
                    mono = _to_mono(data)
                    if resampler is not None:
                        mono = resampler.resample_chunk(mono, last=last)
                    if mono.size:
                        if self.speed == "realtime":
                            due = started + (self.samples_delivered + mono.size) / SAMPLE_RATE
                            await asyncio.sleep(max(0.0, due - time.perf_counter()))
                        await buffer.put(AudioBlock(mono, self.samples_delivered))
                        self.samples_delivered += mono.size
                    if last:
                        break
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise AudioError(
                f"{self.path}: decoding failed after {frames_read} frames: {error}"
            ) from error
        if frames_read < self.declared_frames:
            raise AudioError(
                f"{self.path}: truncated: the header declares {self.declared_frames} frames "
                f"but only {frames_read} could be read"
            )


def _declared_versus_actual(sndfile_log: str) -> tuple[int, int] | None:
    """Find libsndfile's note that a WAV data chunk is shorter than its header declares.

    libsndfile reads a truncated WAV without an error and logs ``data : 128000 (should be
    63978)`` instead; soundfile exposes that log as ``info.extra_info``.
    """
    match = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", sndfile_log, re.MULTILINE)
    if match is None:
        return None
    declared, actual = int(match.group(1)), int(match.group(2))
    return (declared, actual) if actual < declared else None


class StdinSource:
    """Raw little-endian 16-bit PCM from standard input (``arecord -f S16_LE``, ``ffmpeg -f s16le``)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, channels: int = 1, block_ms: int = 100,
                 fd: int | None = None) -> None:
        if block_ms <= 0:
            raise ConfigError(f"block_ms must be positive, got {block_ms}")
        if sample_rate <= 0 or channels <= 0:
            raise ConfigError(
                f"stdin sample rate and channels must be positive, got {sample_rate} and {channels}"
            )
        self.sample_rate = sample_rate
        self.channels = channels
        self.block_bytes = max(1, sample_rate * block_ms // 1000) * 2 * channels
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.description = f"stdin (s16le, {sample_rate} Hz, {channels} ch)"

    def _read_block(self) -> bytes:
        chunks = []
        remaining = self.block_bytes
        while remaining:
            chunk = os.read(self.fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    async def run(self, buffer: BlockBuffer) -> None:
        loop = asyncio.get_running_loop()
        resampler = None
        if self.sample_rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32")
        delivered = 0
        leftover = b""
        frame_bytes = 2 * self.channels
        try:
            while True:
                data = leftover + await loop.run_in_executor(None, self._read_block)
                last = len(data) < self.block_bytes
                usable = len(data) // frame_bytes * frame_bytes
                leftover = data[usable:]
                pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, self.channels)
                mono = _to_mono(pcm.astype(np.float32) / 32768.0)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                if mono.size:
                    await buffer.put(AudioBlock(mono, delivered))
                    delivered += mono.size
                if last:
                    break
        finally:
            buffer.close()
        if leftover:
            log.warning("stdin ended inside a sample frame: ignored the last %d bytes", len(leftover))


class MicrophoneSource:
    """A sounddevice input stream, reopened when the device disappears and comes back.

    The PortAudio callback copies each block and hands it to the event loop with
    ``call_soon_threadsafe``; it never blocks or logs. When no block arrives for
    ``stall_timeout_s``, the stream is closed, ``kws_source_up`` drops to 0 and the device is
    opened again with a growing delay.
    """

    def __init__(self, device: str | int | None = None, block_ms: int = 100,
                 metrics: Metrics | None = None, stall_timeout_s: float = 2.0,
                 reopen_max_s: float = 10.0) -> None:
        if block_ms <= 0:
            raise ConfigError(f"block_ms must be positive, got {block_ms}")
        try:
            import sounddevice
        except (ImportError, OSError) as error:
            raise AudioError(
                f"microphone input needs sounddevice and PortAudio: {error} "
                "(pip install 'kwstream[mic]'; apt install libportaudio2)"
            ) from error
        self._sd = sounddevice
        self.device = device
        self.block_ms = block_ms
        self.metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self.reopen_max_s = reopen_max_s
        self._check_device()
        self.description = f"microphone {self._device_name()}"
        self._warning = RateLimitedWarning(log)
        self.samples_delivered = 0

    def _check_device(self) -> dict[str, Any]:
        try:
            return dict(self._sd.query_devices(self.device, "input"))
        except (ValueError, self._sd.PortAudioError) as error:
            if self.device is None:
                raise AudioError(
                    f"no default input device ({error}); name one with --input-device, or read "
                    "a file with --file or raw PCM with --stdin"
                ) from error
            raise AudioError(f"input device not found: {self.device!r} ({error})") from error

    def _device_name(self) -> str:
        return str(self._check_device().get("name", self.device))

    def _open(self, loop: asyncio.AbstractEventLoop, on_block: Any) -> tuple[Any, Any]:
        """Open an input stream at 16 kHz, or at the device's rate with a resampler."""
        info = self._check_device()

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            block = indata[:, 0].copy() if indata.shape[1] == 1 else indata.mean(axis=1)
            loop.call_soon_threadsafe(on_block, block, bool(status.input_overflow))

        for rate in (SAMPLE_RATE, int(info["default_samplerate"])):
            try:
                stream = self._sd.InputStream(
                    device=self.device, channels=1, samplerate=rate, dtype="float32",
                    blocksize=rate * self.block_ms // 1000, callback=callback,
                )
            except self._sd.PortAudioError as error:
                last_error = error
                continue
            resampler = None
            if rate != SAMPLE_RATE:
                resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            return stream, resampler
        raise AudioError(f"cannot open input device {self.device!r}: {last_error}")

    async def run(self, buffer: BlockBuffer) -> None:
        loop = asyncio.get_running_loop()
        delay_s = 0.5
        try:
            while True:
                try:
                    await self._run_stream(loop, buffer)
                    delay_s = 0.5
                except AudioError as error:
                    self._warning.warn("microphone unavailable: %s; retrying in %.1f s",
                                       error, delay_s)
                if self.metrics is not None:
                    self.metrics.source_up.set(0)
                await asyncio.sleep(delay_s)
                delay_s = min(self.reopen_max_s, delay_s * 2)
        finally:
            buffer.close()

    async def _run_stream(self, loop: asyncio.AbstractEventLoop, buffer: BlockBuffer) -> None:
        last_arrival = time.monotonic()
        resampler_box: list[Any] = [None]

        def on_block(block: np.ndarray, overflowed: bool) -> None:
            nonlocal last_arrival
            last_arrival = time.monotonic()
            if overflowed and self.metrics is not None:
                self.metrics.audio_overflows.inc()
            if resampler_box[0] is not None:
                block = resampler_box[0].resample_chunk(block)
            if block.size:
                buffer.push_nowait(AudioBlock(block.astype(np.float32), self.samples_delivered))
                self.samples_delivered += block.size
            if self.metrics is not None:
                self.metrics.source_up.set(1)

        stream, resampler_box[0] = self._open(loop, on_block)
        log.info("microphone opened: %s", self._device_name())
        try:
            stream.start()
            while True:
                await asyncio.sleep(min(0.5, self.stall_timeout_s))
                if time.monotonic() - last_arrival > self.stall_timeout_s or not stream.active:
                    raise AudioError(
                        f"no audio from {self.device!r} for {self.stall_timeout_s:.1f} s"
                    )
        finally:
            try:
                stream.abort()
                stream.close()
            except self._sd.PortAudioError:
                pass
