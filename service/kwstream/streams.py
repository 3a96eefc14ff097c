"""Labeled reference streams: long recordings with keywords at known times, and clips cut from them.

:func:`make_stream` mixes recordings into background noise in the manner of TensorFlow's
``generate_streaming_test_wav.py``: words at random gaps, a chosen share of them non-keyword
speech labeled ``_unknown_``, noise at a chosen SNR. Everything is drawn from one seed, so the
same recipe, options and seed give the same bytes. The stream is rendered and written in chunks
of a few seconds, so an hour of audio needs no more memory than its recordings.

A recipe (TOML) names the recordings; see ``bench/streams/allison.toml``:

- ``root``: folder that relative paths resolve against (default: the recipe's folder).
- ``[keywords]``: either ``LABEL = ["path or glob", ...]``, or ``directory = "DIR"`` for a folder
  of WAV files named by label (``DIR/LABEL/*.wav`` or ``DIR/LABEL.wav``, ``DIR/LABEL_*.wav``).
- ``[unknown]``: non-keyword speech, either ``directory = "DIR"`` (every WAV file below it) or
  ``include`` globs (``Path.glob`` syntax, relative to ``root``) filtered by the prompt rule
  of :class:`UnknownRule`.
- ``[mix]``: defaults of the mixing options, which the command line can override.

Each recording is trimmed to the spoken word by frame energy (:func:`word_span`), so a label
spans the word and not the recording's leading and trailing silence.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from kwstream.errors import AudioError, RecipeError
from kwstream.labels import Label, write_labels
from kwstream.modelcard import UNKNOWN_LABEL

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
"""Exponent of the noise power spectral density, 1/f**exponent."""
FRAME_MS = 10
"""Frame length of the energy trim."""
TRIM_THRESHOLD_DB = -35.0
"""A frame is part of the word when its RMS is within this many dB of the loudest frame."""
MARGIN_MS = 40
"""Audio kept before and after the trimmed word, faded in and out, so that no onset is cut."""
FADE_MS = 10
RENDER_CHUNK_SAMPLES = 10 * SAMPLE_RATE
NOISE_SEGMENT_SAMPLES = 1 << 16
"""Noise is shaped in overlapping segments of 4.1 s; lower frequencies than 1/4.1 s are lost."""


@dataclass(frozen=True)
class MixOptions:
    """Options of mixing recordings into a stream; a recipe's ``[mix]`` table sets the defaults."""

    unknown_share: float = 0.3
    """Share of the placed words that are non-keyword speech, in [0, 1]."""
    snr_db: float = 20.0
    """Speech level over noise level (RMS of the words against RMS of the noise), in dB."""
    noise: str = "pink"
    """Noise color: white, pink, brown, or none for digital silence."""
    speech_dbfs: float = -20.0
    """RMS level of a word, before the jitter, in dB relative to full scale."""
    level_jitter_db: float = 3.0
    """Each word's level is drawn uniformly within +-this many dB of ``speech_dbfs``."""
    min_gap_ms: float = 1000.0
    """Minimum pause between the end of one word and the start of the next."""
    max_gap_ms: float = 3000.0
    """Maximum pause between two words; pauses are drawn uniformly between the two bounds."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.unknown_share <= 1.0:
            raise RecipeError(f"unknown_share must be in [0, 1], got {self.unknown_share}")
        if self.noise not in (*NOISE_COLORS, "none"):
            raise RecipeError(
                f"noise must be one of {', '.join([*NOISE_COLORS, 'none'])}, got {self.noise!r}"
            )
        if not 0 <= self.min_gap_ms <= self.max_gap_ms:
            raise RecipeError(
                f"gaps need 0 <= min_gap_ms <= max_gap_ms, got {self.min_gap_ms} and "
                f"{self.max_gap_ms}"
            )
        if self.level_jitter_db < 0:
            raise RecipeError(f"level_jitter_db must be >= 0, got {self.level_jitter_db}")
        if self.speech_dbfs + self.level_jitter_db > -3.0:
            raise RecipeError(
                f"speech_dbfs + level_jitter_db must stay below -3 dBFS to leave headroom, got "
                f"{self.speech_dbfs} + {self.level_jitter_db}"
            )

    def with_overrides(self, **overrides: Any) -> MixOptions:
        """Return a copy with the options that are not None replaced."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class UnknownRule:
    """Rule that chooses the prompts that may serve as non-keyword speech.

    A prompt is used only when all of these hold: its path matches no ``exclude`` pattern
    (``fnmatch`` on the path relative to ``root``, where ``*`` also matches ``/``). When a
    transcript file is given, the prompt has a transcript, without digits or a bracketed note
    such as ``[beep tone]``. No word of its transcript or of its file name is one of
    ``exclude_words``, contains an excluded word of three letters or more (``someone``
    contains ``one``), or starts or ends with an excluded two-letter word (``nogo``,
    ``nobody``, ``setup``). The trimmed word is at most ``max_word_ms`` long. The rule errs
    on the side of excluding a prompt.
    """

    exclude_words: frozenset[str] = frozenset()
    exclude: tuple[str, ...] = ()
    transcripts: dict[str, str] | None = None
    max_word_ms: float = 4000.0

    def reason_to_exclude(self, relative_path: str) -> str | None:
        """Return why a prompt (path relative to the root, with suffix) is excluded, or None."""
        for pattern in self.exclude:
            if fnmatch.fnmatch(relative_path, pattern):
                return f"matches {pattern!r}"
        stem = relative_path.rsplit(".", 1)[0]
        word = self._excluded_word(stem)
        if word is not None:
            return f"name contains {word!r}"
        if self.transcripts is not None:
            transcript = self.transcripts.get(stem)
            if transcript is None:
                return "no transcript"
            if re.search(r"[0-9\[\]]", transcript) or "..." in transcript:
                return f"transcript {transcript!r} has digits, a note or an ellipsis"
            word = self._excluded_word(transcript)
            if word is not None:
                return f"transcript contains {word!r}"
        return None

    def _excluded_word(self, text: str) -> str | None:
        for token in re.split(r"[^a-z']+", text.lower()):
            token = token.strip("'")
            if not token:
                continue
            for word in self.exclude_words:
                if token == word:
                    return word
                if len(word) >= 3 and word in token:
                    return word
                # Short words hide at the edges of longer ones ("nogo", "nobody", "setup").
                if len(word) == 2 and (token.startswith(word) or token.endswith(word)):
                    return word
        return None


@dataclass
class Recipe:
    """Sources of speech for a stream, and the default mixing options."""

    keyword_files: dict[str, list[Path]]
    unknown_files: list[Path]
    mix: MixOptions = field(default_factory=MixOptions)
    unknown_rule: UnknownRule | None = None
    root: Path | None = None
    source: str = "recipe"

    @property
    def keywords(self) -> list[str]:
        return sorted(self.keyword_files)


@dataclass
class Recording:
    """One decoded recording, trimmed: ``samples[start:end]`` is the spoken word."""

    label: str
    path: Path
    samples: np.ndarray
    """float32 samples at 16 kHz, with up to ``MARGIN_MS`` kept around the word."""
    word_start: int
    word_end: int

    @property
    def word_rms(self) -> float:
        word = self.samples[self.word_start:self.word_end].astype(np.float64)
        return float(np.sqrt(np.mean(word * word))) if word.size else 0.0


@dataclass(frozen=True)
class Placement:
    """Position and gain of one recording in the stream."""

    recording: Recording
    start_sample: int
    """Stream sample where ``recording.samples`` starts (the margin, not the word)."""
    gain: float

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.recording.samples.size

    def label(self) -> Label:
        start = self.start_sample + self.recording.word_start
        end = self.start_sample + self.recording.word_end
        return Label(self.recording.label, _ms(start), _ms(end))


@dataclass(frozen=True)
class StreamSummary:
    duration_s: float
    keywords: int
    unknown: int
    clipped_samples: int
    labels: list[Label]


# Recipes.


def load_recipe(path: Path | str) -> Recipe:
    """Read a stream recipe; raise RecipeError naming the file and the invalid entry."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"{path}: cannot read recipe: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: invalid TOML: {error}") from error
    return parse_recipe(data, source=str(path), base=path.parent)


def parse_recipe(data: dict[str, Any], source: str, base: Path) -> Recipe:
    unknown_keys = sorted(set(data) - {"root", "keywords", "unknown", "mix", "description"})
    if unknown_keys:
        raise RecipeError(f"{source}: unknown key(s) {', '.join(unknown_keys)}")
    root = base / data["root"] if "root" in data else base
    if not root.is_dir():
        raise RecipeError(f"{source}: root folder not found: {root}")

    keywords_table = data.get("keywords")
    if not isinstance(keywords_table, dict) or not keywords_table:
        raise RecipeError(f"{source}: a [keywords] table is required")
    if "directory" in keywords_table:
        keyword_files = _labeled_wav_files(_resolve(root, keywords_table["directory"], source))
    else:
        keyword_files = {}
        for label, patterns in keywords_table.items():
            if label in (UNKNOWN_LABEL, "_silence_"):
                raise RecipeError(f"{source}: {label} is not a keyword; use [unknown]")
            keyword_files[label] = _expand(root, patterns, f"{source}: keywords.{label}")
    for label, files in keyword_files.items():
        if not files:
            raise RecipeError(f"{source}: no recording found for keyword {label!r}")

    unknown_table = data.get("unknown", {})
    rule = None
    if "directory" in unknown_table:
        unknown_files = sorted(_resolve(root, unknown_table["directory"], source).rglob("*.wav"))
    elif unknown_table:
        rule = _parse_unknown_rule(unknown_table, source, root)
        unknown_files = _expand(root, unknown_table.get("include", []), f"{source}: unknown")
        used_by_keywords = {path for files in keyword_files.values() for path in files}
        unknown_files = [p for p in unknown_files if p not in used_by_keywords]
    else:
        unknown_files = []

    mix_table = data.get("mix", {})
    names = {f.name for f in fields(MixOptions)}
    unknown_mix = sorted(set(mix_table) - names)
    if unknown_mix:
        raise RecipeError(f"{source}: unknown [mix] key(s) {', '.join(unknown_mix)}")
    try:
        mix = MixOptions(**mix_table)
    except RecipeError as error:
        raise RecipeError(f"{source}: [mix] {error}") from error
    return Recipe(keyword_files, unknown_files, mix, rule, root, source)


def _parse_unknown_rule(table: dict[str, Any], source: str, root: Path) -> UnknownRule:
    known = {"include", "exclude", "exclude_words", "transcripts", "max_word_ms"}
    unknown_keys = sorted(set(table) - known)
    if unknown_keys:
        raise RecipeError(f"{source}: unknown [unknown] key(s) {', '.join(unknown_keys)}")
    transcripts = None
    if "transcripts" in table:
        transcripts = read_transcripts(_resolve(root, table["transcripts"], source, file=True))
    return UnknownRule(
        exclude_words=frozenset(word.lower() for word in table.get("exclude_words", [])),
        exclude=tuple(table.get("exclude", [])),
        transcripts=transcripts,
        max_word_ms=float(table.get("max_word_ms", 4000.0)),
    )


def read_transcripts(path: Path) -> dict[str, str]:
    """Read ``name: text`` lines (asterisk's ``core-sounds-en.txt``, plain or gzipped)."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    transcripts = {}
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith(";") or ":" not in line:
                    continue
                name, text = line.split(":", 1)
                transcripts[name.strip()] = text.strip()
    except OSError as error:
        raise RecipeError(f"cannot read transcripts {path}: {error}") from error
    return transcripts


def _resolve(root: Path, value: Any, source: str, file: bool = False) -> Path:
    if not isinstance(value, str):
        raise RecipeError(f"{source}: expected a path string, got {value!r}")
    path = root / os.path.expanduser(value)
    if not (path.is_file() if file else path.is_dir()):
        raise RecipeError(f"{source}: {'file' if file else 'folder'} not found: {path}")
    return path


def _expand(root: Path, patterns: Any, where: str) -> list[Path]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise RecipeError(f"{where}: expected a list of paths or globs, got {patterns!r}")
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(p for p in root.glob(pattern) if p.is_file())
        if not matches:
            raise RecipeError(f"{where}: {pattern!r} matches no file under {root}")
        found.extend(p for p in matches if p not in found)
    return found


def _labeled_wav_files(directory: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            wavs = sorted(path.glob("*.wav"))
            if wavs:
                files.setdefault(path.name, []).extend(wavs)
        elif path.suffix.lower() == ".wav":
            label = re.split(r"[_.]", path.stem, maxsplit=1)[0]
            files.setdefault(label, []).append(path)
    if not files:
        raise RecipeError(f"no WAV files named by label in {directory}")
    return files


# Decoding and trimming.


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "kwstream" / "decoded"


def decode_audio(path: Path, cache_dir: Path | None = None) -> np.ndarray:
    """Decode a recording to 16 kHz mono float32.

    soundfile reads WAV, FLAC and the other libsndfile formats, and soxr resamples them. G.722
    files (``.g722``) are decoded with ffmpeg because libsndfile cannot read them. Their PCM is
    cached in ``cache_dir`` under a hash of the path, size and modification time.
    """
    if path.suffix.lower() != ".g722":
        try:
            samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(f"cannot read {path}: {error}") from error
        mono = samples.mean(axis=1)
        if rate != SAMPLE_RATE:
            import soxr

            mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
        return np.ascontiguousarray(mono, dtype=np.float32)

    cached = None
    if cache_dir is not None:
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        cached = cache_dir / f"{key.hexdigest()[:24]}.s16"
        if cached.is_file():
            return np.fromfile(cached, dtype="<i2").astype(np.float32) / 32768.0
    pcm = _ffmpeg_decode(path)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(pcm)
        temporary.replace(cached)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def _ffmpeg_decode(path: Path) -> bytes:
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise AudioError(f"ffmpeg not found; it is needed to decode {path} (apt install ffmpeg)")
    command = [binary, "-nostdin", "-v", "error", "-i", str(path),
               "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode(errors="replace").strip() or "no audio decoded"
        raise AudioError(f"ffmpeg cannot decode {path}: {message}")
    return result.stdout


def word_span(samples: np.ndarray, threshold_db: float = TRIM_THRESHOLD_DB) -> tuple[int, int]:
    """Return the sample range ``[start, end)`` of the spoken word, found by frame energy.

    A frame of ``FRAME_MS`` counts as speech when its RMS is within ``threshold_db`` of the
    loudest frame. The span runs from the first to the last such frame. A recording without
    any energy gives an empty span at 0.
    """
    frame = SAMPLE_RATE * FRAME_MS // 1000
    count = samples.size // frame
    if count == 0:
        return 0, 0
    frames = samples[:count * frame].astype(np.float64).reshape(count, frame)
    energy = np.mean(frames * frames, axis=1)
    peak = float(energy.max())
    if peak <= 0:
        return 0, 0
    active = np.flatnonzero(energy >= peak * 10 ** (threshold_db / 10))
    return int(active[0] * frame), int((active[-1] + 1) * frame)


def load_recording(label: str, path: Path, cache_dir: Path | None) -> Recording:
    """Decode and trim one recording, keeping ``MARGIN_MS`` around the word, faded."""
    samples = decode_audio(path, cache_dir)
    start, end = word_span(samples)
    if end <= start:
        raise AudioError(f"{path}: no speech found (silent recording)")
    margin = SAMPLE_RATE * MARGIN_MS // 1000
    first = max(0, start - margin)
    last = min(samples.size, end + margin)
    trimmed = samples[first:last].copy()
    fade = min(SAMPLE_RATE * FADE_MS // 1000, trimmed.size // 2)
    if fade:
        ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))).astype(np.float32)
        trimmed[:fade] *= ramp
        trimmed[-fade:] *= ramp[::-1]
    return Recording(label, path, trimmed, start - first, end - first)


def load_recordings(
    recipe: Recipe, cache_dir: Path | None
) -> tuple[list[Recording], list[Recording], dict[str, str]]:
    """Load the keyword and unknown recordings; also return why each prompt was excluded."""
    keywords = [
        load_recording(label, path, cache_dir)
        for label in recipe.keywords
        for path in recipe.keyword_files[label]
    ]
    unknown = []
    excluded: dict[str, str] = {}
    for path in recipe.unknown_files:
        name = path.name
        if recipe.root is not None and path.is_relative_to(recipe.root):
            name = path.relative_to(recipe.root).as_posix()
        rule = recipe.unknown_rule
        reason = rule.reason_to_exclude(Path(name).as_posix()) if rule else None
        if reason is None:
            recording = load_recording(UNKNOWN_LABEL, path, cache_dir)
            word_ms = (recording.word_end - recording.word_start) * 1000 / SAMPLE_RATE
            if rule is not None and word_ms > rule.max_word_ms:
                reason = f"word lasts {word_ms:.0f} ms > max_word_ms {rule.max_word_ms:.0f}"
            else:
                unknown.append(recording)
        if reason is not None:
            excluded[name] = reason
    log.info("%d keyword recordings, %d non-keyword prompts, %d prompts excluded",
             len(keywords), len(unknown), len(excluded))
    return keywords, unknown, excluded


# Mixing.


def plan_placements(
    rng: np.random.Generator,
    keywords: list[Recording],
    unknown: list[Recording],
    mix: MixOptions,
    total_samples: int,
) -> list[Placement]:
    """Draw the words of a stream: which recording, where, and at which gain.

    Words follow each other with gaps drawn uniformly in ``[min_gap_ms, max_gap_ms]``
    (between words, not recordings), until the next word would not fit before the end.
    Keywords are drawn uniformly by label, then by recording.
    """
    by_label: dict[str, list[Recording]] = {}
    for recording in keywords:
        by_label.setdefault(recording.label, []).append(recording)
    labels = sorted(by_label)
    if not labels:
        raise RecipeError("the recipe gives no keyword recording")
    if mix.unknown_share > 0 and not unknown:
        raise RecipeError("unknown_share > 0 but the recipe gives no non-keyword speech")

    placements = []
    previous_word_end = 0
    while True:
        gap = int(rng.uniform(mix.min_gap_ms, mix.max_gap_ms) * SAMPLE_RATE / 1000)
        if rng.random() < mix.unknown_share:
            recording = unknown[int(rng.integers(len(unknown)))]
        else:
            choices = by_label[labels[int(rng.integers(len(labels)))]]
            recording = choices[int(rng.integers(len(choices)))]
        level_db = mix.speech_dbfs + rng.uniform(-mix.level_jitter_db, mix.level_jitter_db)
        # Only the first word can start inside its own leading margin; clamp it to 0.
        start = max(0, previous_word_end + gap - recording.word_start)
        if start + recording.samples.size > total_samples:
            break
        gain = 10 ** (level_db / 20) / max(recording.word_rms, 1e-6)
        placements.append(Placement(recording, start, gain))
        previous_word_end = start + recording.word_end
    return placements


def noise_chunks(
    rng: np.random.Generator, color: str, total_samples: int, chunk_samples: int
) -> Iterator[np.ndarray]:
    """Yield unit-RMS colored noise in chunks that together span ``total_samples``.

    Noise is shaped in the frequency domain segment by segment. Segments overlap by half and
    are joined with sine windows, whose squares sum to 1, so the noise power stays constant.
    """
    exponent = NOISE_COLORS[color]
    size = NOISE_SEGMENT_SAMPLES
    hop = size // 2
    window = np.sin(np.pi * (np.arange(size) + 0.5) / size)
    frequencies = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
    shape = np.maximum(frequencies, 20.0) ** (-exponent / 2.0)
    shape[0] = 0.0
    # Unit RMS: white noise through this filter has power mean(|shape|^2) per sample.
    shape /= np.sqrt(np.mean(np.concatenate([shape, shape[1:-1]]) ** 2))

    pending = np.zeros(0)
    tail = np.zeros(hop)
    produced = 0
    while produced < total_samples:
        while pending.size < chunk_samples:
            spectrum = np.fft.rfft(rng.standard_normal(size)) * shape
            segment = np.fft.irfft(spectrum, n=size) * window
            pending = np.concatenate([pending, tail + segment[:hop]])
            tail = segment[hop:]
        count = min(chunk_samples, total_samples - produced)
        yield pending[:count].astype(np.float32)
        pending = pending[count:]
        produced += count


def make_stream(
    recipe: Recipe,
    out: Path,
    labels_out: Path,
    duration_s: float,
    seed: int,
    mix: MixOptions | None = None,
    cache_dir: Path | None = None,
) -> StreamSummary:
    """Render a labeled stream of ``duration_s`` to ``out`` and its labels to ``labels_out``.

    The format follows the suffix of ``out`` (WAV or FLAC), 16 kHz mono 16-bit.
    """
    mix = mix or recipe.mix
    if duration_s <= 0:
        raise RecipeError(f"duration must be positive, got {duration_s} s")
    if out.suffix.lower() not in (".wav", ".flac"):
        raise RecipeError(f"{out}: the stream must be written as .wav or .flac, got {out.suffix!r}")
    total_samples = int(round(duration_s * SAMPLE_RATE))
    keywords, unknown, _ = load_recordings(recipe, cache_dir)
    plan_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    placements = plan_placements(np.random.default_rng(plan_seed), keywords, unknown, mix,
                                 total_samples)

    noise_rms = 10 ** ((mix.speech_dbfs - mix.snr_db) / 20)
    noise = None
    if mix.noise != "none":
        noise = noise_chunks(np.random.default_rng(noise_seed), mix.noise, total_samples,
                             RENDER_CHUNK_SAMPLES)
    clipped = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sf.SoundFile(str(out), "w", SAMPLE_RATE, 1, "PCM_16") as file:
            next_placement = 0
            active: list[Placement] = []
            for chunk_start in range(0, total_samples, RENDER_CHUNK_SAMPLES):
                chunk_end = min(chunk_start + RENDER_CHUNK_SAMPLES, total_samples)
                if noise is not None:
                    chunk = next(noise).astype(np.float64) * noise_rms
                else:
                    chunk = np.zeros(chunk_end - chunk_start)
                while (next_placement < len(placements)
                       and placements[next_placement].start_sample < chunk_end):
                    active.append(placements[next_placement])
                    next_placement += 1
                for placement in active:
                    _mix_into(chunk, chunk_start, placement)
                active = [p for p in active if p.end_sample > chunk_end]
                pcm = np.round(chunk * 32767.0)
                clipped += int(np.count_nonzero(np.abs(pcm) > 32767))
                file.write(np.clip(pcm, -32768, 32767).astype(np.int16))
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"cannot write {out}: {error}") from error
    if clipped:
        log.warning("%d samples clipped in %s; lower speech_dbfs", clipped, out)

    labels = [placement.label() for placement in placements]
    write_labels(labels_out, labels)
    unknown_count = sum(1 for label in labels if label.label == UNKNOWN_LABEL)
    return StreamSummary(total_samples / SAMPLE_RATE, len(labels) - unknown_count,
                         unknown_count, clipped, labels)


def _mix_into(chunk: np.ndarray, chunk_start: int, placement: Placement) -> None:
    samples = placement.recording.samples
    first = max(placement.start_sample, chunk_start)
    last = min(placement.end_sample, chunk_start + chunk.size)
    if last <= first:
        return
    offset = first - placement.start_sample
    chunk[first - chunk_start:last - chunk_start] += (
        samples[offset:offset + last - first].astype(np.float64) * placement.gain
    )


# Clips.

CLIP_SAMPLES = SAMPLE_RATE
EXTRACT_MODES = ("silence", "context")


def extract_clips(
    audio: Path,
    labels: list[Label],
    out_dir: Path,
    mode: str,
    include_unknown: bool = False,
) -> Path:
    """Cut a 1-second clip around each labeled word into ``out_dir/LABEL/``; return the index.

    ``silence`` mode keeps only the word (its centre second when it is longer) and pads it
    with zeros, centred. ``context`` mode takes the second centred on the word's centre,
    neighbouring audio included, zero-padded only beyond the ends of the stream. The index
    CSV lists ``path,label,start_ms,end_ms,clip_start_ms``; ``clip_start_ms`` is the stream
    time of the clip's first sample (in silence mode, of the first word sample kept).
    """
    if mode not in EXTRACT_MODES:
        raise ValueError(f"mode must be one of {', '.join(EXTRACT_MODES)}, got {mode!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "index.csv"
    rows = ["path,label,start_ms,end_ms,clip_start_ms"]
    try:
        source = sf.SoundFile(str(audio))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"cannot read {audio}: {error}") from error
    with source:
        if source.samplerate != SAMPLE_RATE or source.channels != 1:
            raise AudioError(
                f"{audio}: expected 16000 Hz mono, got {source.samplerate} Hz with "
                f"{source.channels} channels"
            )
        total = source.frames
        for number, label in enumerate(labels):
            if label.label == UNKNOWN_LABEL and not include_unknown:
                continue
            start = int(round(label.start_ms * SAMPLE_RATE / 1000))
            end = max(start, int(round(label.end_ms * SAMPLE_RATE / 1000)))
            if mode == "silence":
                if end - start > CLIP_SAMPLES:
                    start += (end - start - CLIP_SAMPLES) // 2
                    end = start + CLIP_SAMPLES
                word = _read_range(source, start, end, total)
                clip = np.zeros(CLIP_SAMPLES, dtype=np.int16)
                offset = (CLIP_SAMPLES - word.size) // 2
                clip[offset:offset + word.size] = word
                clip_start = start
            else:
                clip_start = (start + end) // 2 - CLIP_SAMPLES // 2
                clip = _read_range(source, clip_start, clip_start + CLIP_SAMPLES, total)
            directory = out_dir / label.label
            directory.mkdir(exist_ok=True)
            clip_path = directory / f"{audio.stem}_{number:05d}.wav"
            sf.write(str(clip_path), clip, SAMPLE_RATE, subtype="PCM_16")
            rows.append(
                f"{clip_path.relative_to(out_dir).as_posix()},{label.label},"
                f"{_format(label.start_ms)},{_format(label.end_ms)},{_format(_ms(clip_start))}"
            )
    index_path.write_text("\n".join(rows) + "\n")
    return index_path


def _read_range(source: sf.SoundFile, start: int, end: int, total: int) -> np.ndarray:
    """Read samples ``[start, end)`` as int16, with zeros where the range leaves the file."""
    result = np.zeros(end - start, dtype=np.int16)
    first, last = max(start, 0), min(end, total)
    if last > first:
        source.seek(first)
        result[first - start:last - start] = source.read(last - first, dtype="int16")
    return result


def _ms(sample: int) -> float:
    value = sample * 1000 / SAMPLE_RATE
    return int(value) if float(value).is_integer() else value


def _format(value: float) -> str:
    from kwstream.labels import format_ms

    return format_ms(value)
