"""Clip metrics, threshold selection on validation voices, and the real-speech evaluation.

The real-speech set is Allison's prompts from Debian's ``asterisk-core-sounds-en`` (one female
speaker, G.722 at 16 kHz). It is evaluation data only: nothing here trains on it or tunes a
threshold with it.
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kwstream.errors import RecipeError
from kwstream.frontend import FrontendParams, feature_windows
from kwstream.modelcard import NON_KEYWORD_LABELS
from kwstream.training import augment

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
CONTEXTS_PER_DIGIT = 3
# Ways of saying zero that are not the word itself.
SPOKEN_ZERO = ("o", "oh")


def clip_metrics(posteriors: np.ndarray, labels: np.ndarray,
                 names: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, per-class recall and the confusion matrix of argmax decisions."""
    predicted = posteriors.argmax(axis=1) if len(posteriors) else np.zeros(0, int)
    recall: dict[str, float | None] = {}
    for index, name in enumerate(names):
        mask = labels == index
        recall[name] = float(np.mean(predicted[mask] == index)) if mask.any() else None
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    keyword_recalls = [v for k, v in recall.items() if k not in NON_KEYWORD_LABELS and v is not None]
    return {
        "clips": int(len(labels)),
        "accuracy": float(np.mean(predicted == labels)) if len(labels) else None,
        "recall": recall,
        "min_keyword_recall": min(keyword_recalls) if keyword_recalls else None,
        "confusion": confusion.tolist(),
    }


def per_voice(posteriors: np.ndarray, labels: np.ndarray, voices: list[str],
              names: tuple[str, ...], weakest: int = 3) -> dict[str, Any]:
    """Clip accuracy of each voice, with its ``weakest`` keywords by recall.

    A synthetic voice speaks each word one way, so a keyword's recall tends to be all or nothing
    per voice. The table shows which voice a low recall comes from.
    """
    predicted = posteriors.argmax(axis=1) if len(posteriors) else np.zeros(0, int)
    voice_of = np.array(voices)
    result: dict[str, Any] = {}
    for voice in sorted(set(voices)):
        mask = voice_of == voice
        recalls = {}
        for index, name in enumerate(names):
            keyword = mask & (labels == index)
            if name not in NON_KEYWORD_LABELS and keyword.any():
                recalls[name] = float(np.mean(predicted[keyword] == index))
        lowest = sorted(recalls.items(), key=lambda item: item[1])[:weakest]
        result[voice] = {"clips": int(mask.sum()),
                         "accuracy": float(np.mean(predicted[mask] == labels[mask])),
                         "weakest_keywords": dict(lowest)}
    return result


def select_thresholds(posteriors: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
                      max_false_accept: float, minimum: float,
                      maximum: float) -> dict[str, float]:
    """Pick, per keyword, the lowest threshold whose false-accept share is small enough.

    The false-accept share of keyword k at threshold t is the share of clips of every other
    class whose posterior for k is at least t. The threshold is clamped to [minimum, maximum].
    """
    thresholds = {}
    for index, name in enumerate(names):
        if name in NON_KEYWORD_LABELS:
            continue
        negatives = np.sort(posteriors[labels != index, index])
        if negatives.size == 0:
            thresholds[name] = minimum
            continue
        allowed = int(np.floor(max_false_accept * negatives.size))
        # The threshold must lie above the (allowed + 1)-th largest negative score.
        boundary = negatives[-(allowed + 1)] if allowed < negatives.size else 0.0
        value = float(np.clip(np.nextafter(np.float32(boundary), np.float32(2.0)),
                              minimum, maximum))
        thresholds[name] = round(value, 4)
    return thresholds


def detection_rates(posteriors: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
                    thresholds: dict[str, float]) -> dict[str, Any]:
    """Per-keyword detection rate and false-accept share at the chosen thresholds."""
    rates = {}
    for index, name in enumerate(names):
        if name not in thresholds:
            continue
        scores = posteriors[:, index] >= thresholds[name]
        positive = labels == index
        rates[name] = {
            "detected": float(np.mean(scores[positive])) if positive.any() else None,
            "false_accept": float(np.mean(scores[~positive])) if (~positive).any() else None,
        }
    return rates


@dataclass
class AllisonSet:
    """Real-speech clips: digits (silence- and context-padded) and non-keyword prompt clips."""

    silence_padded: np.ndarray
    silence_labels: np.ndarray
    context_padded: np.ndarray
    context_labels: np.ndarray
    prompt_clips: np.ndarray
    prompt_of_clip: np.ndarray
    prompt_names: list[str]
    excluded: int


def decode_g722(path: Path) -> np.ndarray:
    """Decode a G.722 file with ffmpeg to 16 kHz mono float32."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise RecipeError("ffmpeg not found; it decodes the G.722 evaluation prompts")
    result = subprocess.run(
        [binary, "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True, check=False,
    )
    if result.returncode != 0:
        raise RecipeError(f"ffmpeg cannot decode {path}: "
                          f"{result.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(result.stdout, dtype="<i2").astype(np.float32) / 32768.0


def read_transcripts() -> dict[str, str]:
    if not TRANSCRIPTS.is_file():
        return {}
    transcripts = {}
    for line in gzip.open(TRANSCRIPTS, "rt", errors="replace"):
        if ":" in line and not line.startswith(";"):
            name, text = line.split(":", 1)
            transcripts[name.strip()] = text.strip()
    return transcripts


def _holds_keyword(name: str, transcript: str | None, keywords: set[str], homophones: set[str],
                   extra_excludes: tuple[str, ...]) -> bool:
    """Return True when a prompt may contain a keyword, judged by its file name and transcript.

    In a file name a keyword also counts inside a longer word ("anyone"). A homophone ("for")
    counts only as a whole word, because its letters occur inside unrelated words ("ate" in
    "date"). Transcripts are matched by whole words only.
    """
    if name.startswith("digits/") or "number" in name or name in extra_excludes:
        return True
    if re.search(r"\d", Path(name).name):
        return True
    tokens = [t for t in re.split(r"[^a-z]+", Path(name).name.lower()) if t]
    if homophones & set(tokens):
        return True
    for token in tokens:
        if token in keywords or any(len(k) > 2 and k in token for k in keywords):
            return True
        # Compound names such as "nogo" or "onlyone" hide short keywords.
        if any(token.startswith(k) and token[len(k):] in keywords for k in keywords):
            return True
    if transcript is None:
        return False
    if re.search(r"\d", transcript):
        return True
    words = set(re.findall(r"[a-z]+", transcript.lower()))
    return bool(words & (keywords | homophones))


def load_allison(directory: Path, frontend: FrontendParams, labels: tuple[str, ...],
                 excluded_words: tuple[str, ...], extra_excludes: tuple[str, ...],
                 seed: int) -> AllisonSet | None:
    """Build the real-speech evaluation windows; None when the prompts are not installed.

    A non-keyword prompt contains no keyword, no number, none of ``excluded_words`` (the
    recipe's homophones, such as "for") and no spoken zero ("o", "oh").
    """
    if not (directory / "digits" / "0.g722").is_file():
        log.warning("no Allison prompts in %s; install asterisk-core-sounds-en-g722", directory)
        return None
    keywords = {label for label in labels if label not in NON_KEYWORD_LABELS}
    homophones = {word.lower() for word in (*excluded_words, *SPOKEN_ZERO)}
    transcripts = read_transcripts()
    prompts: dict[str, np.ndarray] = {}
    excluded = 0
    for path in sorted(directory.rglob("*.g722")):
        name = str(path.relative_to(directory).with_suffix(""))
        if _holds_keyword(name, transcripts.get(name), keywords, homophones, extra_excludes):
            excluded += 1
            continue
        prompts[name] = decode_g722(path)
    rng = np.random.default_rng(seed)
    names = sorted(prompts)
    index = {label: i for i, label in enumerate(labels)}
    silence_padded, silence_labels, context_padded, context_labels = [], [], [], []
    for digit, word in enumerate(DIGIT_WORDS):
        if word not in index:
            continue
        audio = decode_g722(directory / "digits" / f"{digit}.g722")
        trimmed = augment.trim_silence(audio)
        clip, _ = augment.place(rng, trimmed, 0)
        silence_padded.append(clip)
        silence_labels.append(index[word])
        for _ in range(CONTEXTS_PER_DIGIT):
            context_padded.append(_context_clip(rng, audio, prompts, names))
            context_labels.append(index[word])
    prompt_clips, prompt_of_clip = [], []
    for number, name in enumerate(names):
        audio = prompts[name]
        for start in range(0, max(audio.size - augment.CLIP_SAMPLES, 0) + 1,
                           augment.CLIP_SAMPLES):
            piece = audio[start:start + augment.CLIP_SAMPLES]
            if piece.size < augment.CLIP_SAMPLES:
                piece = np.pad(piece, (0, augment.CLIP_SAMPLES - piece.size))
            prompt_clips.append(piece)
            prompt_of_clip.append(number)

    def windows(clips: list[np.ndarray]) -> np.ndarray:
        if not clips:
            return np.zeros((0, frontend.window_rows, frontend.num_bands), np.float32)
        return np.concatenate([feature_windows(c, frontend) for c in clips])

    return AllisonSet(
        silence_padded=windows(silence_padded), silence_labels=np.array(silence_labels),
        context_padded=windows(context_padded), context_labels=np.array(context_labels),
        prompt_clips=windows(prompt_clips), prompt_of_clip=np.array(prompt_of_clip),
        prompt_names=names, excluded=excluded,
    )


def _context_clip(rng: np.random.Generator, digit: np.ndarray, prompts: dict[str, np.ndarray],
                  names: list[str]) -> np.ndarray:
    """Centre the untrimmed digit recording in a 1-s clip between two other prompts.

    The end of one non-keyword prompt comes before the digit and the start of another after
    it, as if the words followed each other in one recording.
    """
    length = augment.CLIP_SAMPLES
    if digit.size >= length:
        start = (digit.size - length) // 2
        return digit[start:start + length].copy()
    before = (length - digit.size) // 2
    after = length - digit.size - before
    first = prompts[names[int(rng.integers(len(names)))]]
    second = prompts[names[int(rng.integers(len(names)))]]
    head = first[-before:] if before else first[:0]
    head = np.pad(head, (before - head.size, 0))
    tail = np.pad(second[:after], (0, after - min(after, second.size)))
    return np.concatenate([head, digit, tail]).astype(np.float32)


def allison_metrics(model_path: Path, allison: AllisonSet, labels: tuple[str, ...],
                    thresholds: dict[str, float]) -> dict[str, Any]:
    from kwstream.training.export import run_litert

    result: dict[str, Any] = {}
    for name, windows, targets in (
        ("digits_silence_padded", allison.silence_padded, allison.silence_labels),
        ("digits_context_padded", allison.context_padded, allison.context_labels),
    ):
        posteriors = run_litert(model_path, windows)
        predicted = posteriors.argmax(axis=1)
        result[name] = {
            "clips": int(len(targets)),
            "accuracy": float(np.mean(predicted == targets)) if len(targets) else None,
            "predicted": [labels[int(p)] for p in predicted],
        }
    posteriors = run_litert(model_path, allison.prompt_clips)
    top = posteriors.argmax(axis=1)
    accepted = np.array([
        labels[int(t)] in thresholds and posteriors[i, t] >= thresholds[labels[int(t)]]
        for i, t in enumerate(top)
    ], dtype=bool)
    prompts_accepted = sorted({allison.prompt_names[int(p)]
                               for p in allison.prompt_of_clip[accepted]})
    result["non_keyword_prompts"] = {
        "prompts": len(allison.prompt_names),
        "excluded_prompts": allison.excluded,
        "clips": int(len(top)),
        "clip_false_accept_share": float(np.mean(accepted)) if len(top) else None,
        "prompt_false_accept_share": (len(prompts_accepted) / len(allison.prompt_names)
                                      if allison.prompt_names else None),
        "prompts_with_false_accept": prompts_accepted[:50],
    }
    return result
