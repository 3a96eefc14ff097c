"""Feature data sets: synthesized speech turned into augmented 1-s clips and log-mel windows.

Features come from :func:`kwstream.frontend.feature_windows`, the function the runtime uses,
so the model is trained on exactly the numbers it will see.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kwstream.errors import RecipeError
from kwstream.frontend import FrontendParams, feature_windows
from kwstream.modelcard import SILENCE_LABEL, UNKNOWN_LABEL
from kwstream.training import augment
from kwstream.training.corpus import KIND_KEYWORD, KIND_SENTENCE, SpeechSet, stable_seed
from kwstream.training.recipe import AugmentSpec, Recipe, RecordingSpec

log = logging.getLogger(__name__)

KIND_CLIP = "clip"
"""A trimmed word that is placed into a 1-s clip."""
KIND_EXCERPT = "excerpt"
"""A 1-s excerpt of running speech, used as it is."""
KIND_SILENCE = "silence"

SENTENCE_HOP_SAMPLES = 8000
"""Step between two 1-s excerpts of a synthesized sentence (0.5 s)."""
AMBIENT_MAX_SECONDS = 120
"""Only the first two minutes of an ambient recording are kept, to bound memory."""
MAX_WORD_SAMPLES = 15200
"""Words longer than 0.95 s after trimming are dropped: they would not fit a window."""
SILENT_PEAK_DBFS = -50.0
"""A recording whose peak stays below this level is silence, not speech."""


@dataclass
class Item:
    label: int
    kind: str
    audio: np.ndarray
    voice: str


@dataclass
class SplitData:
    """Feature windows of one split, with the label and the voice of each window."""

    features: np.ndarray
    labels: np.ndarray
    voices: list[str]
    kinds: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def load_ambient(files: tuple[str, ...]) -> list[np.ndarray]:
    """Read ambient noise recordings as 16 kHz mono float32, at most AMBIENT_MAX_SECONDS each.

    Files are decoded by :func:`read_audio`. A file that cannot be decoded, is shorter than
    0.1 s or is silent raises RecipeError naming it.
    """
    recordings = []
    for name in files:
        mono = read_audio(name, "noise file")[: AMBIENT_MAX_SECONDS * augment.SAMPLE_RATE]
        if mono.size < augment.SAMPLE_RATE // 10 or augment.rms(mono) <= 0:
            raise RecipeError(f"noise file {name} is shorter than 0.1 s or silent")
        recordings.append(mono)
    return recordings


_SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg")


def read_audio(name: str, kind: str = "recording") -> np.ndarray:
    """Read an audio file as 16 kHz mono float32: WAV, FLAC and Ogg with soundfile, the rest
    (G.722, GSM) with ffmpeg. A file that cannot be decoded raises RecipeError naming it as
    ``kind``; a file without samples gives an empty array."""
    import soundfile
    import soxr

    from kwstream.training.evaluate import decode_g722

    if not name.lower().endswith(_SOUNDFILE_SUFFIXES):
        mono = decode_g722(Path(name))
    else:
        try:
            audio, rate = soundfile.read(name, dtype="float32", always_2d=True)
        except (RuntimeError, OSError, soundfile.LibsndfileError) as error:
            raise RecipeError(f"{kind} {name} cannot be read: {error}") from error
        mono = audio.mean(axis=1)
        if rate != augment.SAMPLE_RATE and mono.size:
            mono = soxr.resample(mono, rate, augment.SAMPLE_RATE).astype(np.float32)
    return mono


def recording_items(spec: RecordingSpec, label: int,
                    processes: int | None = None) -> list[Item]:
    """Decode one speaker's recordings into items: short ones as words, long ones as excerpts."""
    from concurrent.futures import ThreadPoolExecutor

    # ffmpeg runs in its own process, so threads decode in parallel.
    with ThreadPoolExecutor(processes or os.cpu_count() or 1) as pool:
        decoded = list(pool.map(read_audio, spec.files))
    items: list[Item] = []
    silent: list[str] = []
    for name, audio in zip(spec.files, decoded, strict=True):
        trimmed = augment.trim_silence(audio)
        if trimmed.size == 0 or np.abs(trimmed).max() < 10 ** (SILENT_PEAK_DBFS / 20):
            silent.append(name)
        elif trimmed.size <= MAX_WORD_SAMPLES:
            items.append(Item(label, KIND_CLIP, trimmed, spec.key))
        else:
            if trimmed.size < augment.CLIP_SAMPLES:
                trimmed = np.pad(trimmed, (0, augment.CLIP_SAMPLES - trimmed.size))
            for start in range(0, trimmed.size - augment.CLIP_SAMPLES + 1, SENTENCE_HOP_SAMPLES):
                items.append(Item(label, KIND_EXCERPT,
                                  trimmed[start:start + augment.CLIP_SAMPLES], spec.key))
    if not items:
        raise RecipeError(f"all {len(spec.files)} recordings of {spec.name!r} are empty or "
                          f"silent (peak below {SILENT_PEAK_DBFS:g} dBFS)")
    if silent:
        log.warning("%s: %d empty or silent recording(s) left out: %s%s", spec.key, len(silent),
                    ", ".join(silent[:3]), ", ..." if len(silent) > 3 else "")
    log.info("%s: %d recordings, %d clips and excerpts", spec.key, len(spec.files), len(items))
    return items


def load_recordings(recipe: Recipe, processes: int | None = None) -> list[Item]:
    """Decode every [[recordings]] table of the recipe into ``_unknown_`` items.

    Errors name the recipe, the table and the file, so a bad recording stops the run before
    synthesis.
    """
    label = recipe.labels.index(UNKNOWN_LABEL) if recipe.recordings else -1
    items: list[Item] = []
    for index, spec in enumerate(recipe.recordings):
        try:
            items += recording_items(spec, label, processes)
        except RecipeError as error:
            raise RecipeError(f"{recipe.path}: recordings[{index}] ({spec.name}): "
                              f"{error}") from error
    return items


def collect_items(recipe: Recipe, speech: list[SpeechSet],
                  recorded: list[Item] | None = None) -> dict[str, list[Item]]:
    """Group trimmed words, sentence excerpts, recordings and silence placeholders by split.

    ``recorded`` is the output of :func:`load_recordings`; when None, the recordings are
    decoded here.
    """
    label_index = {label: i for i, label in enumerate(recipe.labels)}
    items: dict[str, list[Item]] = {"train": [], "validation": [], "test": []}
    dropped = 0
    unspoken: dict[tuple[str, str], int] = {}
    for speech_set in speech:
        job = speech_set.job
        split = job.voice.split
        index = label_index[job.label]
        for clip in speech_set.clips:
            audio = clip.astype(np.float32) / 32768.0
            if audio.size == 0:
                kind = {KIND_KEYWORD: f"{job.label!r}", KIND_SENTENCE: "sentence"}.get(
                    job.kind, "non-keyword word")
                unspoken[(job.voice.key, kind)] = unspoken.get((job.voice.key, kind), 0) + 1
                continue
            if job.kind == KIND_SENTENCE:
                trimmed = augment.trim_silence(audio)
                for start in range(0, max(trimmed.size - augment.CLIP_SAMPLES, 0) + 1,
                                   SENTENCE_HOP_SAMPLES):
                    excerpt = trimmed[start:start + augment.CLIP_SAMPLES]
                    if excerpt.size == augment.CLIP_SAMPLES:
                        items[split].append(Item(index, KIND_EXCERPT, excerpt, job.voice.key))
                continue
            word = augment.trim_silence(audio)
            if word.size == 0 or word.size > MAX_WORD_SAMPLES:
                dropped += 1
                continue
            kind = KIND_CLIP if job.kind == KIND_KEYWORD or job.kind.startswith("word") else None
            if kind is None:
                raise RuntimeError(f"unexpected job kind {job.kind!r}")
            items[split].append(Item(index, KIND_CLIP, word, job.voice.key))
    for (voice, kind), count in sorted(unspoken.items()):
        log.warning("%s returned no audio for %d %s utterance(s) (a missing diphone); left out",
                    voice, count, kind)
    if dropped:
        log.info("dropped %d synthesized words longer than %.2f s or empty", dropped,
                 MAX_WORD_SAMPLES / augment.SAMPLE_RATE)
    # After the synthesized speech, so the context speech of build_split stays synthesized.
    splits = {spec.key: spec.split for spec in recipe.recordings}
    for item in load_recordings(recipe) if recorded is None else recorded:
        items[splits[item.voice]].append(item)
    if SILENCE_LABEL in label_index:
        for split, count in recipe.silence_clips.items():
            for _ in range(count):
                items[split].append(Item(label_index[SILENCE_LABEL], KIND_SILENCE,
                                         np.zeros(0, np.float32), "noise"))
    return items


def _sentence_audio(items: list[Item]) -> list[np.ndarray]:
    return [item.audio for item in items if item.kind == KIND_EXCERPT]


_WORKER: dict[str, object] = {}


def _init_worker(spec: AugmentSpec, recordings: list[np.ndarray], params: FrontendParams,
                 speech: list[np.ndarray], non_keywords: set[int]) -> None:
    _WORKER.update(spec=spec, recordings=recordings, params=params, speech=speech,
                   non_keywords=non_keywords)


def _featurize(arguments: tuple[list[Item], list[list[int]], bool]) -> np.ndarray:
    """Augment items and compute one feature window per augmented clip."""
    items, seeds, full = arguments
    spec: AugmentSpec = _WORKER["spec"]  # type: ignore[assignment]
    recordings: list[np.ndarray] = _WORKER["recordings"]  # type: ignore[assignment]
    params: FrontendParams = _WORKER["params"]  # type: ignore[assignment]
    speech: list[np.ndarray] = _WORKER["speech"]  # type: ignore[assignment]
    non_keywords: set[int] = _WORKER["non_keywords"]  # type: ignore[assignment]
    output = np.empty((len(items), params.window_rows, params.num_bands), dtype=np.float32)
    for slot, (item, seed) in enumerate(zip(items, seeds, strict=True)):
        rng = np.random.default_rng(seed)
        if item.kind == KIND_CLIP:
            clip = augment.augment_word(rng, item.audio, spec, recordings, speech, full,
                                        keyword=item.label not in non_keywords)
        elif item.kind == KIND_EXCERPT:
            clip = augment.augment_window(rng, item.audio, spec, recordings, full)
        else:
            clip = augment.silence_clip(rng, spec, recordings)
        windows = feature_windows(clip, params)
        output[slot] = windows[0]
    return output


def build_split(recipe: Recipe, split: str, items: list[Item], recordings: list[np.ndarray],
                copies: int, full: bool, processes: int | None = None,
                voice_copies: dict[str, int] | None = None) -> SplitData:
    """Augment every item ``copies`` times and return the feature windows, in parallel.

    ``voice_copies`` maps a voice key to its own number of copies, which replaces ``copies``
    for that voice's items (silence clips have the voice "noise").
    """
    from tqdm import tqdm

    voice_copies = voice_copies or {}
    expanded: list[Item] = []
    seeds: list[list[int]] = []
    for copy in range(max([copies, *voice_copies.values()])):
        for index, item in enumerate(items):
            if copy >= voice_copies.get(item.voice, copies):
                continue
            expanded.append(item)
            seeds.append(stable_seed(recipe.seed, split, index, copy, full))
    speech = _sentence_audio(items)
    chunk = 256
    tasks = [(expanded[i:i + chunk], seeds[i:i + chunk], full)
             for i in range(0, len(expanded), chunk)]
    workers = processes or os.cpu_count() or 1
    parts: list[np.ndarray] = []
    initargs = (recipe.augment, recordings, recipe.frontend, speech[:400],
                unknown_or_silence(recipe))
    with tqdm(total=len(expanded), unit="clip", desc=f"features {split}",
              dynamic_ncols=True) as progress:
        if workers == 1:
            _init_worker(*initargs)
            for task in tasks:
                parts.append(_featurize(task))
                progress.update(len(task[0]))
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
                for task, part in zip(tasks, pool.imap(_featurize, tasks), strict=True):
                    parts.append(part)
                    progress.update(len(task[0]))
    features = (np.concatenate(parts) if parts else
                np.zeros((0, recipe.frontend.window_rows, recipe.frontend.num_bands), np.float32))
    labels = np.array([item.label for item in expanded], dtype=np.int32)
    counts = {label: int(np.sum(labels == i)) for i, label in enumerate(recipe.labels)}
    return SplitData(features, labels, [item.voice for item in expanded],
                     [item.kind for item in expanded], counts)


def ensure_labels_present(recipe: Recipe, data: dict[str, SplitData]) -> None:
    for split in ("train", "validation"):
        missing = [label for label, count in data[split].counts.items() if count == 0]
        if missing:
            raise RecipeError(f"{recipe.path}: the {split} split has no clip of "
                              f"{', '.join(missing)}; add voices, words or silence clips")


def unknown_or_silence(recipe: Recipe) -> set[int]:
    return {i for i, label in enumerate(recipe.labels) if label in (SILENCE_LABEL, UNKNOWN_LABEL)}


def default_cache_dir() -> Path:
    configured = os.environ.get("KWSTREAM_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "kwstream"
