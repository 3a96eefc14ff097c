"""The microphone path, through a fake stream at the sounddevice boundary.

No microphone exists on a test machine, so a stand-in ``sounddevice`` module delivers a real
recording through the same callback signature, from its own thread, as PortAudio would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import types

import numpy as np
import pytest

from kwstream.errors import AudioError
from kwstream.inference import KeywordModel
from kwstream.metrics import Metrics
from kwstream.modelcard import default_model_path
from kwstream.pipeline import Pipeline
from kwstream.runner import run_pipeline
from kwstream.sources import AudioBlock, BlockBuffer, MicrophoneSource
from tests.support import decode_allison, silence

needs_model = pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")


class FakePortAudioError(Exception):
    pass


class FakeStatus:
    def __init__(self, overflow: bool) -> None:
        self.input_overflow = overflow


class FakeInputStream:
    """Calls ``callback`` from a thread with consecutive blocks of ``FakeDevice.audio``."""

    def __init__(self, device, channels, samplerate, dtype, blocksize, callback) -> None:
        self.device = FakeDevice
        if samplerate != FakeDevice.rate:
            raise FakePortAudioError("Invalid sample rate")
        self._blocksize = blocksize
        self._callback = callback
        self._thread = threading.Thread(target=self._deliver, daemon=True)
        self._stop = threading.Event()
        self.active = False
        FakeDevice.opened += 1

    def start(self) -> None:
        self.active = True
        self._thread.start()

    def _deliver(self) -> None:
        while not self._stop.is_set():
            if FakeDevice.unplugged.is_set():
                time.sleep(0.01)
                continue
            start = FakeDevice.position
            block = FakeDevice.audio[start : start + self._blocksize]
            if block.size < self._blocksize:
                block = np.concatenate([block, np.zeros(self._blocksize - block.size, np.float32)])
            FakeDevice.position += self._blocksize
            overflow = FakeDevice.position // self._blocksize == 5
            self._callback(block.reshape(-1, 1), self._blocksize, None, FakeStatus(overflow))
            time.sleep(self._blocksize / FakeDevice.rate / FakeDevice.speedup)

    def abort(self) -> None:
        self._stop.set()
        self.active = False

    def close(self) -> None:
        self._stop.set()


class FakeDevice:
    rate = 16000
    audio = np.zeros(0, np.float32)
    position = 0
    opened = 0
    speedup = 4.0
    unplugged = threading.Event()


def _query_devices(device, kind):
    if device not in (None, "Fake USB Mic", 3):
        raise ValueError(f"No input device matching {device!r}")
    return {"name": "Fake USB Mic", "default_samplerate": float(FakeDevice.rate)}


@pytest.fixture
def fake_sounddevice(monkeypatch):
    module = types.ModuleType("sounddevice")
    module.InputStream = FakeInputStream
    module.PortAudioError = FakePortAudioError
    module.query_devices = _query_devices
    monkeypatch.setitem(sys.modules, "sounddevice", module)
    FakeDevice.position = 0
    FakeDevice.opened = 0
    FakeDevice.unplugged.clear()
    return module


def test_missing_device_is_named(fake_sounddevice):
    with pytest.raises(AudioError, match="not-there"):
        MicrophoneSource("not-there")


@needs_model
def test_microphone_blocks_reach_the_detector(fake_sounddevice, tmp_path):
    word = decode_allison("digits/6.g722", tmp_path)
    FakeDevice.audio = np.concatenate([silence(1.0), word, silence(1.5)]).astype(np.float32)
    metrics = Metrics()
    pipeline = Pipeline(KeywordModel(default_model_path()), metrics)
    source = MicrophoneSource("Fake USB Mic", block_ms=40, metrics=metrics)
    events: list[dict] = []

    class ListSink:
        def emit(self, event):
            events.append(event)

        async def close(self):
            pass

    async def scenario():
        task = asyncio.create_task(run_pipeline(source, pipeline, [ListSink()], metrics))
        await asyncio.sleep(FakeDevice.audio.size / 16000 / FakeDevice.speedup + 0.5)
        source_up = metrics.registry.get_sample_value("kws_source_up")
        # SIGINT stops the source; the buffered audio is still processed, then run returns.
        os.kill(os.getpid(), signal.SIGINT)
        return source_up, await asyncio.wait_for(task, 10)

    source_up, stats = asyncio.run(scenario())
    assert source_up == 1.0
    assert [e["keyword"] for e in events] == ["six"]
    assert stats.error is None
    assert stats.audio_seconds > 3.0
    assert metrics.registry.get_sample_value("kws_audio_overflows_total") == 1.0
    assert metrics.registry.get_sample_value("kws_source_up") == 0.0


def test_device_that_stalls_is_reopened(fake_sounddevice):
    FakeDevice.audio = np.zeros(16000 * 30, np.float32)
    metrics = Metrics()
    source = MicrophoneSource(None, block_ms=20, metrics=metrics, stall_timeout_s=0.3,
                              reopen_max_s=0.5)

    async def scenario():
        buffer = BlockBuffer(16000 * 60, metrics)
        task = asyncio.create_task(source.run(buffer))
        await asyncio.sleep(0.3)
        FakeDevice.unplugged.set()
        await asyncio.sleep(1.0)
        down = metrics.registry.get_sample_value("kws_source_up")
        FakeDevice.unplugged.clear()
        await asyncio.sleep(1.5)
        up = metrics.registry.get_sample_value("kws_source_up")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return down, up

    down, up = asyncio.run(scenario())
    assert down == 0.0
    assert up == 1.0
    assert FakeDevice.opened >= 2


def test_full_buffer_drops_oldest_block_and_counts_it():
    metrics = Metrics()

    async def scenario():
        buffer = BlockBuffer(16000, metrics)
        for index in range(5):
            buffer.push_nowait(AudioBlock(np.full(8000, index, np.float32), index * 8000))
        buffer.close()
        starts = []
        while (block := await buffer.get()) is not None:
            starts.append(block.start_sample)
        return starts

    assert asyncio.run(scenario()) == [24000, 32000]
    assert metrics.registry.get_sample_value("kws_audio_overflows_total") == 3.0
    assert metrics.registry.get_sample_value("kws_dropped_audio_seconds_total") == 1.5


def test_gap_in_stream_restarts_frontend_without_error(tmp_path):
    if not default_model_path().exists():
        pytest.skip("no shipped model yet")
    metrics = Metrics()
    pipeline = Pipeline(KeywordModel(default_model_path()), metrics)
    pipeline.process(AudioBlock(np.zeros(32000, np.float32), 0))
    pipeline.process(AudioBlock(np.zeros(32000, np.float32), 48000))
    assert pipeline.discontinuities == 1
    assert pipeline.next_sample == 80000


def test_stdin_pcm_is_replayed(tmp_path):
    import subprocess

    if not default_model_path().exists():
        pytest.skip("no shipped model yet")
    word = decode_allison("digits/9.g722", tmp_path)
    audio = np.concatenate([silence(1.0), word, silence(1.5)])
    pcm = (audio * 32767).astype("<i2").tobytes()
    result = subprocess.run([sys.executable, "-m", "kwstream", "--log-level", "ERROR", "replay", "-"],
                            input=pcm, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert b'"keyword":"nine"' in result.stdout
