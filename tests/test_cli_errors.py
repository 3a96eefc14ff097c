"""Bad input gives one clear error line naming the culprit and exit status 2, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kwstream.modelcard import default_model_path
from tests.support import write_wav

KWSTREAM = [sys.executable, "-m", "kwstream"]
needs_model = pytest.mark.skipif(not default_model_path().exists(), reason="no shipped model yet")


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KWSTREAM, "--log-level", "ERROR", *args], capture_output=True,
                          input=stdin, timeout=120)


def _assert_one_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    assert result.stdout == b""


def _copy_model(tmp_path: Path) -> Path:
    model = default_model_path()
    target = tmp_path / model.name
    shutil.copy(model, target)
    shutil.copy(model.with_suffix(".json"), target.with_suffix(".json"))
    return target


@needs_model
def test_missing_audio_file(tmp_path):
    _assert_one_error(_run("replay", str(tmp_path / "nothing.wav")), "not found", "nothing.wav")


@needs_model
def test_empty_audio_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    _assert_one_error(_run("replay", str(empty)), "empty.wav")


@needs_model
def test_wav_with_no_samples(tmp_path):
    path = write_wav(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32))
    _assert_one_error(_run("replay", str(path)), "zero.wav", "no audio samples")


@needs_model
def test_unsupported_format(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not audio\n" * 100)
    _assert_one_error(_run("replay", str(text)), "notes.txt", "not a readable audio file")


@needs_model
def test_corrupt_audio_file(tmp_path):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 40)
    _assert_one_error(_run("replay", str(corrupt)), "corrupt.flac")


@needs_model
def test_truncated_wav_keeps_processed_events(tmp_path):
    path = write_wav(tmp_path / "long.wav", np.zeros(16000 * 4, dtype=np.float32))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_one_error(_run("replay", str(truncated)), "truncated.wav", "truncated")


@needs_model
def test_model_that_is_not_tflite(tmp_path):
    model = _copy_model(tmp_path)
    model.write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 10)
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    result = _run("replay", str(audio), "--model", str(model))
    _assert_one_error(result, str(model.with_suffix(".json")), "sha256")


@needs_model
def test_model_with_a_card_of_wrong_checksum(tmp_path):
    model = _copy_model(tmp_path)
    card = model.with_suffix(".json")
    card.write_text(card.read_text().replace('"sha256": "', '"sha256": "0'))
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    _assert_one_error(_run("replay", str(audio), "--model", str(model)), "sha256")


@needs_model
def test_model_whose_card_does_not_match_the_frontend(tmp_path):
    model = _copy_model(tmp_path)
    card = model.with_suffix(".json")
    text = card.read_text()
    import json

    data = json.loads(text)
    data["frontend"]["num_bands"] = data["frontend"]["num_bands"] + 8
    card.write_text(json.dumps(data))
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    _assert_one_error(_run("replay", str(audio), "--model", str(model)), "does not match")


@needs_model
def test_model_without_card(tmp_path):
    model = _copy_model(tmp_path)
    model.with_suffix(".json").unlink()
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    _assert_one_error(_run("replay", str(audio), "--model", str(model)), "model card not found")


def test_model_path_is_a_folder(tmp_path):
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    _assert_one_error(_run("replay", str(audio), "--model", str(tmp_path)), "model.path",
                      "is a folder; name a file")


@needs_model
def test_garbage_model_with_matching_card(tmp_path):
    import hashlib
    import json

    model = _copy_model(tmp_path)
    model.write_bytes(b"\x00" * 64)
    card = model.with_suffix(".json")
    data = json.loads(card.read_text())
    data["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    card.write_text(json.dumps(data))
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    _assert_one_error(_run("replay", str(audio), "--model", str(model)), "not a TFLite")


def test_unknown_config_key(tmp_path):
    config = tmp_path / "kwstream.toml"
    config.write_text('[source]\nkind = "file"\npath = "x.wav"\nblocksize = 3\n')
    _assert_one_error(_run("run", "--config", str(config)), "source.blocksize", str(config))


def test_config_value_of_wrong_type(tmp_path):
    config = tmp_path / "kwstream.toml"
    config.write_text('[vad]\nmode = "aggressive"\n')
    _assert_one_error(_run("run", "--config", str(config)), "vad.mode", "int")


def test_config_with_missing_model_path(tmp_path):
    config = tmp_path / "kwstream.toml"
    config.write_text(f'[model]\npath = "{tmp_path}/missing.tflite"\n')
    _assert_one_error(_run("run", "--config", str(config)), "model.path", "file not found")


def test_invalid_toml(tmp_path):
    config = tmp_path / "kwstream.toml"
    config.write_text("[source\n")
    _assert_one_error(_run("run", "--config", str(config)), "invalid TOML", str(config))


@needs_model
def test_missing_input_device():
    _assert_one_error(_run("run", "--input-device", "no-such-microphone-xyz"),
                      "no-such-microphone-xyz")


@needs_model
@pytest.mark.parametrize("url", ["mqtt://[fd00::5", "mqtt://a b", "http://127.0.0.1"])
def test_invalid_mqtt_url(tmp_path, url):
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    _assert_one_error(_run("replay", str(audio), "--mqtt", url), "invalid MQTT URL")


@needs_model
def test_report_path_through_a_file_rejected_before_replay(tmp_path):
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    blocker = tmp_path / "file"
    blocker.write_text("")
    _assert_one_error(_run("replay", str(audio), "--report", str(blocker / "r.json")), "--report")


@needs_model
def test_zero_block_length_rejected(tmp_path):
    audio = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32))
    _assert_one_error(_run("replay", str(audio), "--block-ms", "0"), "block_ms must be positive")


@needs_model
def test_empty_stdin_is_an_error():
    _assert_one_error(_run("replay", "-", stdin=b""), "no audio samples")


def test_streams_error_names_the_action(tmp_path: Path) -> None:
    result = _run("streams", "make", "--out", str(tmp_path / "s.wav"), "--labels-out",
                  str(tmp_path / "s.csv"), "--duration-s", "-5", "--seed", "1")
    _assert_one_error(result, "kwstream streams make: error:", "--duration-s", "-5")

    result = _run("streams", "extract", "--mode", "silence", "--audio", str(tmp_path / "s.wav"),
                  "--labels", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "clips"))
    _assert_one_error(result, "kwstream streams extract: error:", "missing.csv")
