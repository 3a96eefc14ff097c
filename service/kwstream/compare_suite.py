"""The evaluation suite of ``kwstream compare``: which streams and clip sets, and how to build them.

A suite (TOML, see ``bench/compare/suite.toml``) lists reference streams and clip sets:

- ``[[stream]]`` with ``kind = "file"``: an existing audio file and its label file.
- ``kind = "mix"``: a stream mixed by :func:`kwstream.streams.make_stream` from a stream recipe
  with a fixed ``seed`` and ``duration_s``. The entry may override the recipe's ``[mix]``
  options ``snr_db``, ``noise``, ``unknown_share``, ``speech_dbfs``, ``level_jitter_db``,
  ``min_gap_ms`` and ``max_gap_ms``.
- ``kind = "synthetic"``: the same mixing, from keywords and non-keyword words that the
  voices of one split of a training recipe speak (by default the test voices, which neither
  training nor threshold tuning ever heard).
- ``[[clips]]``: 1-second clips cut around the labeled words of some of the streams, in
  ``silence`` or ``context`` mode (:func:`kwstream.streams.extract_clips`).

Built data lives in a cache folder under a hash of everything that shapes it, so a second
run reuses it and a changed recipe, seed or option builds new files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from kwstream.errors import ConfigError, KwstreamError
from kwstream.labels import Label, read_labels
from kwstream.streams import EXTRACT_MODES, MixOptions, extract_clips, load_recipe, make_stream

log = logging.getLogger(__name__)

STREAM_KINDS = ("file", "mix", "synthetic")
MIX_KEYS = ("snr_db", "noise", "unknown_share", "speech_dbfs", "level_jitter_db", "min_gap_ms",
            "max_gap_ms")
CACHE_FORMAT = 2
"""Bumped whenever a change here changes the data built for an unchanged suite."""
SAMPLE_RATE = 16000


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "kwstream" / "compare"


@dataclass(frozen=True)
class StreamSpec:
    """One reference stream of the suite."""

    name: str
    kind: str
    audio: Path | None = None
    labels: Path | None = None
    recipe: Path | None = None
    """Stream recipe (``mix``) or training recipe (``synthetic``)."""
    duration_s: float = 0.0
    seed: int = 0
    mix: dict[str, Any] = field(default_factory=dict)
    split: str = "test"
    """Voice split of the training recipe that speaks a ``synthetic`` stream."""
    renditions: int = 3
    """Renditions of each keyword per voice in a ``synthetic`` stream."""
    unknown_words: int = 12
    """Non-keyword words per voice in a ``synthetic`` stream."""


@dataclass(frozen=True)
class ClipSetSpec:
    """1-second clips cut from some streams of the suite."""

    name: str
    mode: str
    streams: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    path: Path
    description: str
    streams: tuple[StreamSpec, ...]
    clip_sets: tuple[ClipSetSpec, ...]
    tolerance_ms: float = 1000.0
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    segment_s: float = 30.0
    """Length of the stretches of a stream that the bootstrap resamples."""
    seed: int = 0
    """Seed of the bootstrap."""


@dataclass
class BuiltStream:
    """A stream ready to replay: audio, labels and their duration."""

    spec: StreamSpec
    audio: Path
    labels_path: Path
    labels: list[Label]
    audio_seconds: float


@dataclass
class Clip:
    path: Path
    label: str
    stream: str


@dataclass
class BuiltClipSet:
    spec: ClipSetSpec
    clips: list[Clip]


# Reading a suite.


def load_suite(path: Path) -> Suite:
    """Read and check a suite file; every error names the file and the entry."""
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read suite: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from error

    known = {"description", "stream", "clips", "tolerance_ms", "confidence",
             "bootstrap_resamples", "segment_s", "seed"}
    _reject_unknown(data, known, f"{path}")
    base = path.parent
    streams = tuple(_parse_stream(entry, index, base, path)
                    for index, entry in enumerate(_table_list(data, "stream", path)))
    if not streams:
        raise ConfigError(f"{path}: the suite lists no [[stream]]")
    names = [stream.name for stream in streams]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{path}: stream name(s) used twice: {', '.join(duplicates)}")

    clip_sets = []
    for index, entry in enumerate(_table_list(data, "clips", path)):
        where = f"{path}: clips[{index}]"
        _reject_unknown(entry, {"name", "mode", "streams"}, where)
        name = _string(entry, "name", where)
        mode = _string(entry, "mode", where)
        if mode not in EXTRACT_MODES:
            raise ConfigError(f"{where}: mode must be one of {', '.join(EXTRACT_MODES)}, "
                              f"got {mode!r}")
        sources = entry.get("streams")
        if not isinstance(sources, list) or not sources or not all(
                isinstance(s, str) for s in sources):
            raise ConfigError(f"{where}: streams must be a non-empty list of stream names")
        missing = [s for s in sources if s not in names]
        if missing:
            raise ConfigError(f"{where}: unknown stream(s) {', '.join(missing)} "
                              f"(streams: {', '.join(names)})")
        clip_sets.append(ClipSetSpec(name, mode, tuple(sources)))

    confidence = _number(data, "confidence", 0.95, str(path))
    if not 0.5 <= confidence < 1.0:
        raise ConfigError(f"{path}: confidence must be in [0.5, 1), got {confidence}")
    resamples = int(_number(data, "bootstrap_resamples", 2000, str(path)))
    if resamples < 100:
        raise ConfigError(f"{path}: bootstrap_resamples must be >= 100, got {resamples}")
    segment_s = _number(data, "segment_s", 30.0, str(path))
    if segment_s <= 0:
        raise ConfigError(f"{path}: segment_s must be positive, got {segment_s}")
    tolerance_ms = _number(data, "tolerance_ms", 1000.0, str(path))
    if tolerance_ms < 0:
        raise ConfigError(f"{path}: tolerance_ms must be >= 0, got {tolerance_ms}")
    return Suite(
        path=path, description=str(data.get("description", "")), streams=streams,
        clip_sets=tuple(clip_sets), tolerance_ms=tolerance_ms, confidence=confidence,
        bootstrap_resamples=resamples, segment_s=segment_s,
        seed=int(_number(data, "seed", 0, str(path))),
    )


def _parse_stream(entry: Any, index: int, base: Path, path: Path) -> StreamSpec:
    where = f"{path}: stream[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    kind = _string(entry, "kind", where)
    if kind not in STREAM_KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(STREAM_KINDS)}, "
                          f"got {kind!r}")
    name = _string(entry, "name", where)
    where = f"{path}: stream {name!r}"
    if kind == "file":
        _reject_unknown(entry, {"name", "kind", "audio", "labels"}, where)
        audio = _existing_file(base, _string(entry, "audio", where), where, "audio")
        labels = _existing_file(base, _string(entry, "labels", where), where, "labels")
        return StreamSpec(name, kind, audio=audio, labels=labels)

    common = {"name", "kind", "recipe", "duration_s", "seed", *MIX_KEYS}
    extra = {"split", "renditions", "unknown_words"} if kind == "synthetic" else set()
    _reject_unknown(entry, common | extra, where)
    recipe = _existing_file(base, _string(entry, "recipe", where), where, "recipe")
    duration_s = _number(entry, "duration_s", None, where)
    if duration_s <= 0:
        raise ConfigError(f"{where}: duration_s must be positive, got {duration_s}")
    seed = entry.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{where}: seed must be an integer, got {seed!r}")
    mix = {key: entry[key] for key in MIX_KEYS if key in entry}
    try:
        MixOptions().with_overrides(**mix)
    except (KwstreamError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from error
    if kind == "mix":
        return StreamSpec(name, kind, recipe=recipe, duration_s=duration_s, seed=seed, mix=mix)
    split = str(entry.get("split", "test"))
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"{where}: split must be train, validation or test, got {split!r}")
    renditions = int(_number(entry, "renditions", 3, where))
    unknown_words = int(_number(entry, "unknown_words", 12, where))
    if renditions < 1 or unknown_words < 0:
        raise ConfigError(f"{where}: need renditions >= 1 and unknown_words >= 0")
    return StreamSpec(name, kind, recipe=recipe, duration_s=duration_s, seed=seed, mix=mix,
                      split=split, renditions=renditions, unknown_words=unknown_words)


def _table_list(data: dict[str, Any], key: str, path: Path) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {key} must be an array of tables ([[{key}]])")
    return value


def _reject_unknown(entry: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")


def _string(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _number(entry: dict[str, Any], key: str, default: float | None, where: str) -> float:
    value = entry.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: {key} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _existing_file(base: Path, value: str, where: str, key: str) -> Path:
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}: {key} file not found: {path}")
    return path


# Building the data.


def build_streams(suite: Suite, cache_dir: Path) -> dict[str, BuiltStream]:
    """Build (or reuse from the cache) every stream of the suite, in suite order."""
    built = {}
    for spec in suite.streams:
        if spec.kind == "file":
            assert spec.audio is not None and spec.labels is not None
            audio, labels_path = spec.audio, spec.labels
        else:
            audio, labels_path = _build_mixed(spec, cache_dir)
        info = sf.info(str(audio))
        built[spec.name] = BuiltStream(spec, audio, labels_path, read_labels(labels_path),
                                       info.frames / info.samplerate)
    return built


def _build_mixed(spec: StreamSpec, cache_dir: Path) -> tuple[Path, Path]:
    assert spec.recipe is not None
    description = {
        "format": CACHE_FORMAT, "kind": spec.kind, "recipe": spec.recipe.read_text(),
        "duration_s": spec.duration_s, "seed": spec.seed, "mix": spec.mix,
        "split": spec.split, "renditions": spec.renditions, "unknown_words": spec.unknown_words,
    }
    key = _digest(description)
    folder = cache_dir / "streams"
    audio = folder / f"{spec.name}-{key}.flac"
    labels = folder / f"{spec.name}-{key}.csv"
    if audio.is_file() and labels.is_file():
        log.info("stream %s: cached %s", spec.name, audio)
        return audio, labels

    if spec.kind == "mix":
        recipe_path = spec.recipe
    else:
        recipe_path = _synthesize_voices(spec, cache_dir / "voices" / f"{spec.name}-{key}")
    recipe = load_recipe(recipe_path)
    mix = recipe.mix.with_overrides(**spec.mix)
    folder.mkdir(parents=True, exist_ok=True)
    partial_audio = audio.with_name(f".{audio.name}.partial.flac")
    partial_labels = labels.with_name(f".{labels.name}.partial")
    log.info("stream %s: mixing %.0f s from %s (seed %d)", spec.name, spec.duration_s,
             recipe_path, spec.seed)
    make_stream(recipe, partial_audio, partial_labels, spec.duration_s, spec.seed, mix,
                cache_dir / "decoded")
    partial_labels.replace(labels)
    partial_audio.replace(audio)
    return audio, labels


def _synthesize_voices(spec: StreamSpec, folder: Path) -> Path:
    """Speak the training recipe's keywords and some non-keyword words with one split's voices.

    Writes ``keywords/LABEL/*.wav``, ``unknown/*.wav`` and a stream recipe that names them,
    and returns the recipe's path. Raises ConfigError when the split has no voice.
    """
    assert spec.recipe is not None
    from kwstream.training.engines import Utterance, check_voice, synthesize
    from kwstream.training.recipe import load_recipe as load_training_recipe

    training = load_training_recipe(spec.recipe)
    voices = training.voices_in(spec.split)
    if not voices:
        raise ConfigError(f"stream {spec.name!r}: {spec.recipe} has no voice in the "
                          f"{spec.split} split")
    recipe_path = folder / "recipe.toml"
    if recipe_path.is_file():
        return recipe_path
    banned = {w.lower() for w in (*training.keywords, *training.excluded_words)}
    words = [w for w in training.confusable_words if w.lower() not in banned]
    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.default_rng(spec.seed)
    for voice in voices:
        check_voice(voice.engine, voice.name, voice.variants)
        texts = [(keyword, f"{keyword}.") for keyword in training.keywords
                 for _ in range(spec.renditions)]
        count = min(spec.unknown_words, len(words))
        picks = [int(i) for i in rng.choice(len(words), count, replace=False)] if count else []
        texts += [("_unknown_", f"{words[i]}.") for i in picks]
        utterances = []
        for _, text in texts:
            variant = str(rng.choice(voice.variants)) if voice.variants else ""
            utterances.append(Utterance(text, variant, float(rng.uniform(*voice.speed_range)),
                                        float(rng.uniform(*voice.pitch_range))))
        log.info("stream %s: synthesizing %d utterances with %s", spec.name, len(utterances),
                 voice.key)
        audio = synthesize(voice.engine, voice.name, utterances, voice.options)
        safe_voice = voice.key.replace(":", "_").replace("/", "_")
        for number, ((label, text), samples) in enumerate(zip(texts, audio, strict=True)):
            if samples.size == 0:
                # The engine returned no audio: an mbrola database lacks a diphone of this text.
                log.warning("stream %s: %s returned no audio for %r (a missing diphone); "
                            "left out", spec.name, voice.key, text)
                continue
            if label == "_unknown_":
                target = folder / "unknown" / f"{safe_voice}_{text.rstrip('.')}_{number}.wav"
            else:
                target = folder / "keywords" / label / f"{safe_voice}_{number}.wav"
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(target), samples, SAMPLE_RATE, subtype="PCM_16")
    lines = [
        f"# Voices of the {spec.split} split of {spec.recipe}.",
        'description = "synthesized test voices"',
        "[keywords]",
        'directory = "keywords"',
    ]
    if (folder / "unknown").is_dir():
        lines += ["[unknown]", 'directory = "unknown"']
    recipe_path.write_text("\n".join(lines) + "\n")
    return recipe_path


def build_clip_sets(
    suite: Suite, streams: dict[str, BuiltStream], cache_dir: Path
) -> dict[str, BuiltClipSet]:
    """Cut (or reuse) the clips of every clip set, ``_unknown_`` words included."""
    built = {}
    for spec in suite.clip_sets:
        clips = []
        for name in spec.streams:
            stream = streams[name]
            key = _digest({"format": CACHE_FORMAT, "mode": spec.mode,
                           "audio": _file_digest(stream.audio),
                           "labels": stream.labels_path.read_text()})
            folder = cache_dir / "clips" / f"{name}-{spec.mode}-{key}"
            index = folder / "index.csv"
            if not index.is_file():
                partial = folder.with_name(folder.name + ".partial")
                if partial.exists():
                    shutil.rmtree(partial)
                extract_clips(stream.audio, stream.labels, partial, spec.mode,
                              include_unknown=True)
                if folder.exists():
                    shutil.rmtree(folder)
                partial.replace(folder)
            clips.extend(_read_clip_index(index, name))
        built[spec.name] = BuiltClipSet(spec, clips)
    return built


def _read_clip_index(index: Path, stream: str) -> list[Clip]:
    lines = index.read_text().splitlines()[1:]
    clips = []
    for line in lines:
        relative, label = line.split(",")[:2]
        clips.append(Clip(index.parent / relative, label, stream))
    return clips


def _digest(description: dict[str, Any]) -> str:
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
