"""Speech corpus synthesis: which texts each voice speaks, run in parallel and cached on disk.

The corpus is a list of :class:`SynthesisJob`, one per voice and label (keyword words) or per
voice and kind (non-keyword words, sentences). Each job is drawn deterministically from the
recipe's seed, so the same recipe always produces the same texts and renditions. A job's audio
is cached as one ``.npz`` file named by the hash of everything that shapes it. The file is
written under a temporary name and renamed, so a crashed run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kwstream.modelcard import UNKNOWN_LABEL
from kwstream.training.engines import Utterance, synthesis_revision, synthesize
from kwstream.training.recipe import Recipe, VoiceSpec

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped whenever a change in synthesis changes the audio of an unchanged job."""

KIND_KEYWORD = "keyword"
KIND_WORD = "word"
KIND_SENTENCE = "sentence"
# Starts with KIND_WORD: letter names are single-word clips like the other words.
KIND_LETTERS = "word-letters"
KIND_CONFUSABLE = "word-confusable"


@dataclass(frozen=True)
class SynthesisJob:
    """All utterances of one voice for one label (keywords) or one kind of non-keyword speech."""

    voice: VoiceSpec
    label: str
    kind: str
    utterances: tuple[Utterance, ...]

    def cache_key(self) -> str:
        description = {
            "format": CACHE_FORMAT,
            "engine": self.voice.engine,
            "voice": self.voice.name,
            "options": self.voice.options,
            **({"revision": revision} if (revision := synthesis_revision(
                self.voice.engine, self.voice.name)) > 1 else {}),
            "utterances": [[u.text, u.variant, round(u.speed, 4), round(u.pitch, 4)]
                           for u in self.utterances],
        }
        text = json.dumps(description, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def cache_path(self, cache_dir: Path) -> Path:
        safe_voice = re.sub(r"[^A-Za-z0-9_.-]", "_", self.voice.key)
        safe_label = re.sub(r"[^A-Za-z0-9_.-]", "_", self.label)
        name = f"{safe_label}-{self.kind}-{self.cache_key()}.npz"
        return cache_dir / "speech" / safe_voice / name


@dataclass
class SpeechSet:
    """Synthesized audio of one job, as int16 clips at 16 kHz."""

    job: SynthesisJob
    clips: list[np.ndarray]


def stable_seed(*parts: object) -> list[int]:
    """Return an RNG seed that depends only on the given values, not on Python's hash salt."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


_WORD_PATTERN = re.compile(r"^[a-z]{2,12}$")


def non_keyword_words(recipe: Recipe) -> list[str]:
    """Draw the pool of non-keyword words: the confusable list plus words from the word list.

    Keywords and their listed homophones are removed, so an ``_unknown_`` clip never says a
    keyword.
    """
    banned = _banned_words(recipe)
    confusable = [w.lower() for w in recipe.confusable_words if w.lower() not in banned]
    words: list[str] = []
    if recipe.unknown_word_pool:
        text = Path(recipe.unknown_words_file).read_text(errors="replace")
        candidates = sorted({w for w in text.split() if _WORD_PATTERN.match(w)} - banned
                            - set(confusable))
        rng = np.random.default_rng(stable_seed(recipe.seed, "word-pool"))
        count = min(recipe.unknown_word_pool, len(candidates))
        words = [candidates[i] for i in sorted(rng.choice(len(candidates), count, replace=False))]
    return confusable + words


def _rendition(voice: VoiceSpec, rng: np.random.Generator) -> tuple[str, float, float]:
    variant = str(rng.choice(voice.variants)) if voice.variants else ""
    speed = float(rng.uniform(*voice.speed_range))
    pitch = float(rng.uniform(*voice.pitch_range))
    return variant, speed, pitch


def plan_jobs(recipe: Recipe) -> list[SynthesisJob]:
    """List every synthesis job of the recipe, in a fixed order."""
    jobs: list[SynthesisJob] = []
    pool = non_keyword_words(recipe) if UNKNOWN_LABEL in recipe.labels else []
    confusable_count = len([w for w in recipe.confusable_words if w.lower() in set(pool)])
    letters = letters_to_say(recipe) if UNKNOWN_LABEL in recipe.labels else []
    for voice in recipe.voices:
        for keyword in recipe.keywords:
            rng = np.random.default_rng(stable_seed(recipe.seed, voice.key, keyword))
            utterances = []
            for _ in range(voice.renditions):
                variant, speed, pitch = _rendition(voice, rng)
                utterances.append(Utterance(f"{keyword}.", variant, speed, pitch))
            jobs.append(SynthesisJob(voice, keyword, KIND_KEYWORD, tuple(utterances)))
        if not pool:
            continue
        rng = np.random.default_rng(stable_seed(recipe.seed, voice.key, "unknown-words"))
        if voice.unknown_words:
            # Every voice says the confusable words; the rest of its share is drawn at random.
            chosen = list(pool[:confusable_count])
            rest = pool[confusable_count:]
            extra = max(0, voice.unknown_words - len(chosen))
            if rest and extra:
                picks = rng.choice(len(rest), min(extra, len(rest)), replace=False)
                chosen += [rest[i] for i in sorted(picks)]
            utterances = []
            for word in chosen:
                variant, speed, pitch = _rendition(voice, rng)
                utterances.append(Utterance(f"{word}.", variant, speed, pitch))
            # Chunks of 200 keep each job short, so the progress bar moves and both cores work.
            for start in range(0, len(utterances), 200):
                jobs.append(SynthesisJob(voice, UNKNOWN_LABEL, f"{KIND_WORD}{start // 200}",
                                         tuple(utterances[start:start + 200])))
        if voice.sentences:
            utterances = []
            for _ in range(voice.sentences):
                length = int(rng.integers(6, 13))
                words = [pool[i] for i in rng.choice(len(pool), length, replace=False)]
                variant, speed, pitch = _rendition(voice, rng)
                utterances.append(Utterance(" ".join(words) + ".", variant, speed, pitch))
            jobs.append(SynthesisJob(voice, UNKNOWN_LABEL, KIND_SENTENCE, tuple(utterances)))
        if letters and voice.unknown_words:
            # A job with its own random stream, so adding letters leaves every other job, and
            # its cached audio, as it was.
            utterances = _utterances(voice, recipe.seed, "letters", letters)
            jobs.append(SynthesisJob(voice, UNKNOWN_LABEL, KIND_LETTERS, utterances))
        repeats = (voice.confusable_renditions or recipe.confusable_renditions) - 1
        if repeats and confusable_count and voice.unknown_words and voice.split == "train":
            # Training voices speak the confusable words and letters again, in renditions of
            # their own. Validation and test voices speak each once, so their sets stay
            # comparable.
            utterances = _utterances(voice, recipe.seed, "confusable",
                                     pool[:confusable_count] * repeats)
            for start in range(0, len(utterances), 200):
                jobs.append(SynthesisJob(voice, UNKNOWN_LABEL,
                                         f"{KIND_CONFUSABLE}{start // 200}",
                                         utterances[start:start + 200]))
            if letters:
                # Letter names are confusable words too ("q" and "two", "c" and "three").
                utterances = _utterances(voice, recipe.seed, "letters-again", letters * repeats)
                jobs.append(SynthesisJob(voice, UNKNOWN_LABEL, f"{KIND_LETTERS}-again",
                                         utterances))
    return jobs


def _banned_words(recipe: Recipe) -> set[str]:
    """Return the keywords and their listed homophones, in lower case."""
    return {k.lower() for k in recipe.keywords} | {w.lower() for w in recipe.excluded_words}


def _utterances(voice: VoiceSpec, seed: int, stream: str,
                words: list[str]) -> tuple[Utterance, ...]:
    """Render each word once, with a full stop, from the voice's random stream ``stream``."""
    rng = np.random.default_rng(stable_seed(seed, voice.key, stream))
    utterances = []
    for word in words:
        variant, speed, pitch = _rendition(voice, rng)
        utterances.append(Utterance(f"{word}.", variant, speed, pitch))
    return tuple(utterances)


def letters_to_say(recipe: Recipe) -> list[str]:
    """Return the recipe's letters less any that sound like a keyword ("o" is a spoken zero)."""
    banned = _banned_words(recipe)
    return [letter.lower() for letter in recipe.letter_names if letter.lower() not in banned]


def _run_job(arguments: tuple[SynthesisJob, str]) -> tuple[str, int]:
    job, cache_dir = arguments
    path = job.cache_path(Path(cache_dir))
    if path.is_file():
        return str(path), 0
    audio = synthesize(job.voice.engine, job.voice.name, list(job.utterances), job.voice.options)
    clips = [np.clip(np.round(a * 32767.0), -32768, 32767).astype(np.int16) for a in audio]
    lengths = np.array([c.size for c in clips], dtype=np.int64)
    joined = np.concatenate(clips) if clips else np.zeros(0, dtype=np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, audio=joined, lengths=lengths)
    os.replace(temporary, path)
    return str(path), len(clips)


def _read_cached(job: SynthesisJob, cache_dir: Path) -> SpeechSet:
    with np.load(job.cache_path(cache_dir)) as data:
        audio, lengths = data["audio"], data["lengths"]
    if len(lengths) != len(job.utterances):
        raise RuntimeError(f"cache file {job.cache_path(cache_dir)} contains {len(lengths)} clips, "
                           f"expected {len(job.utterances)}; delete it and run again")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    clips = [audio[bounds[i]:bounds[i + 1]] for i in range(len(lengths))]
    return SpeechSet(job, clips)


def synthesize_corpus(jobs: Iterable[SynthesisJob], cache_dir: Path,
                      processes: int | None = None) -> list[SpeechSet]:
    """Synthesize every job not yet cached, using all cores, and return all jobs' audio."""
    from tqdm import tqdm

    jobs = list(jobs)
    missing = [job for job in jobs if not job.cache_path(cache_dir).is_file()]
    log.info("speech corpus: %d jobs, %d cached, %d to synthesize in %s",
             len(jobs), len(jobs) - len(missing), len(missing), cache_dir)
    if missing:
        workers = processes or os.cpu_count() or 1
        # Longest jobs first, so the last minutes do not run on one core.
        missing.sort(key=lambda j: -sum(len(u.text) for u in j.utterances))
        arguments = [(job, str(cache_dir)) for job in missing]
        total = sum(len(job.utterances) for job in missing)
        with tqdm(total=total, unit="clip", desc="synthesis", dynamic_ncols=True) as progress:
            if workers == 1:
                for argument in arguments:
                    progress.update(_run_job(argument)[1])
            else:
                context = multiprocessing.get_context("spawn")
                with context.Pool(workers) as pool:
                    for _, count in pool.imap_unordered(_run_job, arguments):
                        progress.update(count)
    return [_read_cached(job, cache_dir) for job in jobs]
