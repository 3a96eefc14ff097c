"""Text-to-speech engines that synthesize training speech offline, each returning 16 kHz audio.

Every engine takes a list of :class:`Utterance` for one voice and returns one float32 array in
[-1, 1] per utterance. Engines run as subprocesses (espeak-ng, flite, festival, pico2wave), so
a worker process can call them without sharing state. espeak-ng also speaks through mbrola's
diphone voices (``mb-us1`` ...), which Debian ships in its contrib and non-free components.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from kwstream.errors import RecipeError

SAMPLE_RATE = 16000
ESPEAK_DEFAULT_WPM = 175
ESPEAK_DEFAULT_PITCH = 50
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# Mean F0 in Hz that flite's voices use by default, the base that pitch factors scale.
FLITE_BASE_F0_HZ = {"kal": 105.0, "kal16": 105.0, "awb": 110.0, "rms": 100.0, "slt": 170.0}
FESTIVAL_BASE_F0_HZ = {"kal_diphone": 105.0}
PICO_VOICES = ("en-US", "en-GB")
MBROLA_ROOT = Path("/usr/share/mbrola")
MBROLA_MISSING_DIPHONE = b"unknown, replaced with"
"""mbrola's warning when its database lacks a diphone (us3 has none for the vowel of "on")."""
SYNTHESIS_REVISION = {"mbrola": 2}
"""Output revision per engine, part of the speech cache key. A bump synthesizes it again."""
NONFREE_HINT = "Debian's contrib and non-free components (scripts/bootstrap.sh enables them)"


@dataclass(frozen=True)
class Utterance:
    """One text to speak, with the rendition's variant, speed and pitch factors."""

    text: str
    variant: str = ""
    speed: float = 1.0
    pitch: float = 1.0


def _to_float(audio: np.ndarray, rate: int) -> np.ndarray:
    """Convert int16 or float audio at ``rate`` to float32 at 16 kHz."""
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


def _parse_streamed_wav(data: bytes, source: str) -> tuple[np.ndarray, int]:
    """Read a PCM16 WAV written to a pipe, whose header sizes are placeholders."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError(f"{source} did not write a WAV file ({len(data)} bytes)")
    position = 12
    rate = 0
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8],
                                                                 "little")
        if chunk == b"fmt ":
            rate = int.from_bytes(data[position + 12:position + 16], "little")
        elif chunk == b"data":
            payload = data[position + 8:]
            payload = payload[: len(payload) // 2 * 2]
            return np.frombuffer(payload, dtype="<i2").copy(), rate
        position += 8 + size
    raise RuntimeError(f"{source} wrote a WAV file without a data chunk")


def synthesis_revision(engine: str, name: str) -> int:
    """Return the revision of an engine's output, part of the speech cache key."""
    if engine == "espeak-ng" and name.startswith("mb-"):
        return SYNTHESIS_REVISION["mbrola"]
    return 1


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = {"text2wave": "festival", "pico2wave": "libttspico-utils"}.get(name, name)
        hint = f", from {NONFREE_HINT}" if package == "libttspico-utils" else ""
        raise RecipeError(f"TTS binary {name!r} not found on PATH (install the Debian package "
                          f"{package}{hint})")
    return path


def espeak_voices() -> set[str]:
    """Return the espeak-ng voice names (languages such as ``en-gb-scotland``)."""
    binary = require_binary("espeak-ng")
    output = subprocess.run([binary, "--voices"], capture_output=True, text=True,
                            check=True).stdout
    names = set()
    for line in output.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            names.add(fields[1])
    return names


def mbrola_voices() -> dict[str, bool]:
    """Map espeak-ng's mbrola voice names (``mb-us1``) to whether mbrola's data is installed."""
    binary = require_binary("espeak-ng")
    output = subprocess.run([binary, "--voices=mb"], capture_output=True, text=True,
                            check=True).stdout
    voices = {}
    for line in output.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("mb/"):
            name = fields[4][3:]
            database = name.split("-")[1]
            voices[name] = (MBROLA_ROOT / database / database).is_file()
    return voices


def espeak_variants() -> set[str]:
    """Return the espeak-ng variant file names (``m1``, ``klatt``, ``f3`` ...)."""
    binary = require_binary("espeak-ng")
    output = subprocess.run([binary, "--voices=variant"], capture_output=True, text=True,
                            check=True).stdout
    names = set()
    for line in output.splitlines()[1:]:
        fields = line.split()
        for field_value in fields:
            if field_value.startswith("!v/"):
                names.add(field_value[3:])
    return names


def flite_voices() -> set[str]:
    binary = require_binary("flite")
    output = subprocess.run([binary, "-lv"], capture_output=True, text=True, check=True).stdout
    return set(output.split(":", 1)[-1].split())


def festival_voices() -> set[str]:
    require_binary("text2wave")
    roots = [Path("/usr/share/festival/voices")]
    names = set()
    for root in roots:
        if root.is_dir():
            names.update(p.name for p in root.glob("*/*") if p.is_dir())
    return names


def check_voice(engine: str, name: str, variants: tuple[str, ...]) -> None:
    """Raise RecipeError when the engine binary, the voice or a variant is not installed."""
    if engine == "espeak-ng" and name.startswith("mb-"):
        installed = mbrola_voices()
        if name not in installed:
            raise RecipeError(f"espeak-ng has no mbrola voice {name!r} "
                              f"(see `espeak-ng --voices=mb`)")
        if not installed[name]:
            raise RecipeError(f"mbrola voice {name!r} needs the Debian packages mbrola and "
                              f"mbrola-{name[3:]}, from {NONFREE_HINT}")
        if any(variants):
            raise RecipeError(f"espeak-ng voice {name!r} is an mbrola voice and takes no "
                              f"variants; set variants = [\"\"] for it")
    elif engine == "espeak-ng":
        if name not in espeak_voices():
            raise RecipeError(f"espeak-ng voice {name!r} is not installed "
                              f"(see `espeak-ng --voices=en`)")
        known = espeak_variants()
        missing = [v for v in variants if v and v not in known]
        if missing:
            raise RecipeError(f"espeak-ng variant(s) {', '.join(missing)} of voice {name!r} "
                              f"are not installed (see `espeak-ng --voices=variant`)")
    elif engine == "flite":
        if name not in flite_voices():
            raise RecipeError(f"flite voice {name!r} is not installed (see `flite -lv`)")
    elif engine == "festival":
        if name not in festival_voices():
            raise RecipeError(f"festival voice {name!r} is not installed under "
                              f"/usr/share/festival/voices")
    elif engine == "pico":
        require_binary("pico2wave")
        if name not in PICO_VOICES:
            raise RecipeError(f"pico voice {name!r} is not an English pico voice "
                              f"(known: {', '.join(PICO_VOICES)})")
    elif engine in ("piper", "kokoro"):
        from kwstream.training import neural

        neural.check_voice(engine, name)
    else:
        raise RecipeError(f"unknown engine {engine!r}")


def synthesize(engine: str, name: str, utterances: list[Utterance],
               options: dict[str, object]) -> list[np.ndarray]:
    """Speak each utterance with one voice and return float32 arrays at 16 kHz."""
    if engine == "espeak-ng":
        return [_espeak(name, u) for u in utterances]
    if engine == "flite":
        with tempfile.TemporaryDirectory(prefix="kwstream-flite-") as folder:
            return [_flite(name, u, options, Path(folder)) for u in utterances]
    if engine == "festival":
        return _festival(name, utterances, options)
    if engine == "pico":
        with tempfile.TemporaryDirectory(prefix="kwstream-pico-") as folder:
            return [_pico(name, u, Path(folder)) for u in utterances]
    if engine in ("piper", "kokoro"):
        from kwstream.training import neural

        return neural.synthesize(engine, name, utterances, options)
    raise RecipeError(f"unknown engine {engine!r}")


def _espeak(name: str, utterance: Utterance) -> np.ndarray:
    voice = f"{name}+{utterance.variant}" if utterance.variant else name
    wpm = int(round(ESPEAK_DEFAULT_WPM * utterance.speed))
    pitch = int(np.clip(round(ESPEAK_DEFAULT_PITCH * utterance.pitch), 0, 99))
    result = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "--stdout", utterance.text],
        capture_output=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng -v {voice} failed on {utterance.text!r}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    if name.startswith("mb-") and MBROLA_MISSING_DIPHONE in result.stderr:
        # mbrola replaced a missing diphone with silence, so the audio does not say the text.
        # The empty clip is left out of the corpus.
        return np.zeros(0, dtype=np.float32)
    audio, rate = _parse_streamed_wav(result.stdout, f"espeak-ng -v {voice}")
    return _to_float(audio, rate)


def _flite(name: str, utterance: Utterance, options: dict[str, object],
           folder: Path) -> np.ndarray:
    base_f0 = float(options.get("base_f0_hz", FLITE_BASE_F0_HZ.get(name, 110.0)))  # type: ignore[arg-type]
    target = folder / "out.wav"
    text = utterance.text if utterance.text.endswith(".") else utterance.text + "."
    result = subprocess.run(
        ["flite", "-voice", name,
         "--setf", f"duration_stretch={1.0 / utterance.speed:.3f}",
         "--setf", f"int_f0_target_mean={base_f0 * utterance.pitch:.1f}",
         "-t", text, "-o", str(target)],
        capture_output=True, check=False,
    )
    if result.returncode != 0 or not target.is_file():
        raise RuntimeError(f"flite -voice {name} failed on {text!r}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    audio, rate = soundfile.read(target, dtype="int16")
    return _to_float(audio, rate)


def _pico(name: str, utterance: Utterance, folder: Path) -> np.ndarray:
    """Speak with pico2wave; its markup sets the rate and pitch in percent of the default."""
    target = folder / "out.wav"
    text = utterance.text.replace("<", " ").replace(">", " ")
    markup = (f"<speed level='{round(100 * utterance.speed)}'>"
              f"<pitch level='{round(100 * utterance.pitch)}'>{text}</pitch></speed>")
    result = subprocess.run(["pico2wave", "-l", name, "-w", str(target), markup],
                            capture_output=True, check=False)
    if result.returncode != 0 or not target.is_file():
        raise RuntimeError(f"pico2wave -l {name} failed on {text!r}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    audio, rate = soundfile.read(target, dtype="int16")
    target.unlink()
    return _to_float(audio, rate)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival_script(name: str, utterances: list[Utterance], paths: list[Path],
                     base_f0: float) -> str:
    lines = [f"(voice_{name})"]
    for utterance, path in zip(utterances, paths, strict=True):
        text = utterance.text if utterance.text.endswith(".") else utterance.text + "."
        lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / utterance.speed:.3f})")
        lines.append(
            f"(set! int_lr_params (list '(target_f0_mean {base_f0 * utterance.pitch:.1f}) "
            f"'(target_f0_std {base_f0 * 0.15:.1f}) '(model_f0_mean 170) "
            f"'(model_f0_std 34)))"
        )
        lines.append(f"(set! utt (utt.synth (Utterance Text {_scheme_string(text)})))")
        lines.append(f"(utt.save.wave utt {_scheme_string(str(path))} 'riff)")
    return "\n".join(lines) + "\n"


def _festival(name: str, utterances: list[Utterance],
              options: dict[str, object]) -> list[np.ndarray]:
    """Run one festival process for all utterances; festival starts slowly (about 0.5 s).

    When that process fails, each utterance it did not write runs in a process of its own, so
    the error names the utterance that festival cannot speak (some diphone voices crash on
    pitch targets below their recorded range).
    """
    binary = require_binary("festival")
    base_f0 = float(options.get("base_f0_hz", FESTIVAL_BASE_F0_HZ.get(name, 105.0)))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="kwstream-festival-") as folder:
        paths = [Path(folder) / f"{index}.wav" for index in range(len(utterances))]
        script = Path(folder) / "script.scm"
        script.write_text(_festival_script(name, utterances, paths, base_f0))
        result = subprocess.run([binary, "--batch", str(script)], capture_output=True,
                                check=False)
        if result.returncode != 0 or not all(p.is_file() for p in paths):
            for utterance, path in zip(utterances, paths, strict=True):
                if path.is_file():
                    continue
                script.write_text(_festival_script(name, [utterance], [path], base_f0))
                single = subprocess.run([binary, "--batch", str(script)], capture_output=True,
                                        check=False)
                if single.returncode != 0 or not path.is_file():
                    raise RuntimeError(
                        f"festival voice {name} cannot speak {utterance.text!r} at speed "
                        f"{utterance.speed:.2f} and pitch {utterance.pitch:.2f} (target "
                        f"{base_f0 * utterance.pitch:.0f} Hz; narrow the voice's pitch_range "
                        f"or set options.base_f0_hz): "
                        f"{single.stderr.decode(errors='replace')[-300:]}")
        output = []
        for path in paths:
            audio, rate = soundfile.read(path, dtype="int16")
            output.append(_to_float(audio, rate))
        return output
