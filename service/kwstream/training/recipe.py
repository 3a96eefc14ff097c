"""Training recipes: the TOML file that fixes labels, voices, augmentation, model and training.

A recipe is read once, checked completely, and turned into frozen dataclasses. Every error
names the recipe file and the key, so a typo stops the run before any synthesis starts.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kwstream.errors import RecipeError
from kwstream.frontend import FrontendParams
from kwstream.modelcard import NON_KEYWORD_LABELS, SILENCE_LABEL, UNKNOWN_LABEL, SmootherSettings

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
ENGINES = ("espeak-ng", "flite", "festival", "pico", "piper", "kokoro")


@dataclass(frozen=True)
class VoiceSpec:
    """One voice: an engine and one speaker or accent of it, assigned to one split."""

    engine: str
    name: str
    split: str
    renditions: int
    """Renditions of each keyword (variant, speed and pitch drawn at random)."""
    unknown_words: int
    """Distinct non-keyword words this voice speaks."""
    sentences: int
    """Synthesized sentences of non-keyword words, cut into 1-s windows of running speech."""
    variants: tuple[str, ...] = ()
    """Engine variants (espeak-ng ``+m1``, ``+klatt``; a mix of speaker styles elsewhere)."""
    speed_range: tuple[float, float] = (0.85, 1.2)
    """Speaking rate relative to the engine's default (1.0)."""
    pitch_range: tuple[float, float] = (0.8, 1.25)
    """Pitch relative to the voice's default (1.0)."""
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Engine-specific settings, such as the base pitch of a flite voice."""
    copies: int | None = None
    """Augmented copies of this voice's training clips, or None for [augment] copies. More
    copies weigh a scarce voice (a slow neural engine's) more without synthesizing more."""
    confusable_renditions: int | None = None
    """Renditions of each confusable word and letter name by a training voice, or None for
    [words] confusable_renditions. A slow engine can speak them fewer times than the rest."""

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.name}"


RECORDING_PREFIX = "recording:"
"""Prefix of the voice key of every window cut from a [[recordings]] table."""


@dataclass(frozen=True)
class RecordingSpec:
    """Recorded speech of one speaker without any keyword: ``_unknown_`` clips of a real voice.

    A recording shorter than a window is placed in a window like a synthesized word. A longer
    one is cut into 1-s excerpts of running speech.
    """

    name: str
    split: str
    files: tuple[str, ...]
    """The files that the patterns match, less the excluded ones, sorted."""
    copies: int | None = None
    """Augmented copies of each training clip, or None for [augment] copies."""

    @property
    def key(self) -> str:
        return f"{RECORDING_PREFIX}{self.name}"


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation applied to every training clip; validation and test get the eval part."""

    copies: int = 2
    """Augmented copies of each training clip."""
    noise_probability: float = 0.8
    snr_db: tuple[float, float] = (0.0, 30.0)
    noise_floor_probability: float = 0.7
    """Share of clips that get a faint noise floor, so digital silence is not the only silence."""
    noise_floor_dbfs: tuple[float, float] = (-75.0, -50.0)
    ambient_probability: float = 0.3
    """Share of noisy clips whose noise is an ambient recording instead of coloured noise."""
    ambient_files: tuple[str, ...] = ()
    level_dbfs: tuple[float, float] = (-35.0, -3.0)
    """Peak level of the speech after gain."""
    shift_ms: int = 200
    """Largest random offset of the word from the window centre."""
    speed_probability: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    reverb_probability: float = 0.3
    rt60_range_s: tuple[float, float] = (0.1, 0.6)
    telephone_probability: float = 0.15
    microphone_probability: float = 0.25
    context_probability: float = 0.2
    """Share of keyword clips with fragments of other speech before and after the word."""
    eval_snr_db: tuple[float, float] = (10.0, 30.0)
    """SNR of the noisy validation and test clips."""
    cut_probability: float = 0.0
    """Share of non-keyword training words that a clip edge cuts, as a stream's window cuts a
    word still being spoken. The start of "eighteen" without its end must not read "eight"."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """DS-CNN: a first convolution, depthwise-separable blocks, average pooling, a dense layer."""

    first_filters: int = 32
    first_kernel: tuple[int, int] = (10, 4)
    first_stride: tuple[int, int] = (2, 2)
    blocks: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (64, 1), (64, 1))
    """(filters, stride) of each depthwise-separable block, 3x3 depthwise kernels."""
    dropout: float = 0.2


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 0.003
    label_smoothing: float = 0.05
    representative_windows: int = 500
    mask_bands: int = 0
    """Widest SpecAugment band mask (0: none)."""
    mask_rows: int = 0
    """Longest SpecAugment time mask in rows (0: none)."""
    warp_range: tuple[float, float] = (1.0, 1.0)
    """Range of each training window's random frequency warp (vocal tract length
    perturbation), drawn anew every epoch. (1, 1) warps nothing."""
    class_weight_factors: dict[str, float] = field(default_factory=dict, hash=False)
    """Factor on the balanced class weight of a label, such as ``{"yes": 2.0}``."""
    seed: int | None = None
    """Seed of the initial weights, the batch order and the training-time augmentation;
    None: the recipe's seed. Another value draws another model from the same corpus."""
    teachers: tuple[Path, ...] = ()
    """Trained .tflite models (each with its card) whose mean posterior on every training
    window is mixed into that window's target (knowledge distillation)."""
    distillation: float = 0.0
    """Weight of the teachers' mean posterior in each target; the one-hot label gets the rest."""
    domain_adversarial: float = 0.0
    """Largest scale of the reversed gradient from a head that separates recorded ``_unknown_``
    windows from synthesized ones (domain-adversarial training). With 0, no head is trained."""


@dataclass(frozen=True)
class ThresholdSpec:
    """Rule for the per-keyword thresholds, applied to the validation voices."""

    max_false_accept: float = 0.005
    """Largest share of validation non-keyword clips (and other keywords) above a threshold."""
    minimum: float = 0.5
    maximum: float = 0.95
    stream_false_accepts_per_hour: float | None = None
    """When set, each keyword's threshold is chosen on the validation stream instead: the
    lowest one whose false accepts stay within this rate. The clip rule above then only
    seeds the smoother tuning."""
    stream_words: int = 400
    """Validation words in the stream that tunes the smoother (and the thresholds)."""


@dataclass(frozen=True)
class EvaluationSpec:
    """Real-speech evaluation data; never used for training or tuning."""

    allison_dir: str = "/usr/share/asterisk/sounds/en"
    """Folder of Allison's G.722 prompts; an empty string skips the real-speech evaluation."""
    keyword_excludes: tuple[str, ...] = ()
    """Extra prompt names to leave out of the non-keyword set, because they say a keyword."""


@dataclass(frozen=True)
class Recipe:
    path: Path
    content: str
    id: str
    version: str
    labels: tuple[str, ...]
    seed: int
    frontend: FrontendParams
    smoother: SmootherSettings | None
    """Fixed smoother defaults; None lets training choose them on the validation voices."""
    voices: tuple[VoiceSpec, ...]
    unknown_words_file: str
    unknown_word_pool: int
    """Words drawn from the word list before they are shared among the voices."""
    confusable_words: tuple[str, ...]
    excluded_words: tuple[str, ...]
    """Homophones of keywords, never used as non-keyword words."""
    silence_clips: dict[str, int]
    augment: AugmentSpec
    architecture: ArchitectureSpec
    train: TrainSpec
    thresholds: ThresholdSpec
    evaluation: EvaluationSpec
    letter_names: tuple[str, ...] = ()
    """Letters of the alphabet whose names every voice speaks alone, as ``_unknown_`` clips."""
    confusable_renditions: int = 1
    """Number of times each training voice speaks each confusable word and letter name."""
    recordings: tuple[RecordingSpec, ...] = ()
    """Recorded non-keyword speech of real speakers, labelled ``_unknown_``."""

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if label not in NON_KEYWORD_LABELS)

    def voices_in(self, split: str) -> list[VoiceSpec]:
        return [voice for voice in self.voices if voice.split == split]


# Words for the TOML type that a key needs, in recipe errors.
_KIND_WORDS: dict[Any, str] = {int: "an integer", (int, float): "a number", float: "a number",
                               str: "a string", list: "a list", dict: "a table",
                               bool: "true or false"}


class _Section:
    """Typed access to one TOML table; every error names the file and the dotted key."""

    def __init__(self, source: Path, prefix: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: [{prefix}] must be a table, got {data!r}")
        self.source, self.prefix, self.data = source, prefix, dict(data)
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def _fail(self, key: str, message: str) -> RecipeError:
        return RecipeError(f"{self.source}: {self._name(key)} {message}")

    def get(self, key: str, default: Any, kind: type | tuple[type, ...]) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise self._fail(key, f"must be {_KIND_WORDS.get(kind, kind)}, got {value!r}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, default, (int, float))
        if not low <= value <= high:
            raise self._fail(key, f"must be in [{low}, {high}], got {value}")
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int = 10**9) -> int:
        value = self.get(key, default, int)
        if not low <= value <= high:
            raise self._fail(key, f"must be in [{low}, {high}], got {value}")
        return int(value)

    def pair(self, key: str, default: tuple[float, float],
             ordered: bool = True) -> tuple[float, float]:
        value = self.get(key, list(default), list)
        if len(value) != 2 or not all(isinstance(v, int | float) for v in value):
            raise self._fail(key, f"must be a list of two numbers [low, high], got {value!r}")
        low, high = float(value[0]), float(value[1])
        if ordered and low > high:
            raise self._fail(key, f"must have low <= high, got {value!r}")
        return low, high

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list(default), list)
        if not all(isinstance(v, str) for v in value):
            raise self._fail(key, f"must be a list of strings, got {value!r}")
        return tuple(value)

    def section(self, key: str) -> _Section:
        self.used.add(key)
        return _Section(self.source, self._name(key), self.data.get(key, {}))

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            names = ", ".join(self._name(k) for k in unknown)
            raise RecipeError(f"{self.source}: unknown key(s) {names}")


def _is_pitch_hz(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 40 <= value <= 400


# The options each engine reads: a description of the expected value, and its check.
_PITCH_OPTION = ("a number of Hz in [40, 400]", _is_pitch_hz)
ENGINE_OPTIONS: dict[str, dict[str, tuple[str, Any]]] = {
    "flite": {"base_f0_hz": _PITCH_OPTION},
    "festival": {"base_f0_hz": _PITCH_OPTION},
    "kokoro": {"lang": ("a language code such as \"en-us\"", lambda v: isinstance(v, str))},
}


def _check_options(voice: VoiceSpec, path: Path, index: int) -> None:
    known = ENGINE_OPTIONS.get(voice.engine, {})
    for key, value in voice.options.items():
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise RecipeError(f"{path}: voices[{index}].options.{key} is unknown for "
                              f"{voice.engine} (known: {names})")
        expected, valid = known[key]
        if not valid(value):
            raise RecipeError(f"{path}: voices[{index}].options.{key} must be {expected}, "
                              f"got {value!r}")


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe; raise RecipeError naming the file and the key on any problem."""
    try:
        content = path.read_text()
    except OSError as error:
        raise RecipeError(f"cannot read recipe {path}: {error}") from error
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: invalid TOML: {error}") from error
    return parse_recipe(data, path, content)


def parse_recipe(data: dict[str, Any], path: Path, content: str = "") -> Recipe:
    root = _Section(path, "", data)
    model = root.section("model")
    labels = model.strings("labels", ())
    if not labels:
        raise RecipeError(f"{path}: model.labels is empty; list the keywords to train")
    if len(set(labels)) != len(labels):
        raise RecipeError(f"{path}: model.labels contains duplicates: {list(labels)}")
    if not [label for label in labels if label not in NON_KEYWORD_LABELS]:
        raise RecipeError(f"{path}: model.labels has no keyword besides {SILENCE_LABEL} and "
                          f"{UNKNOWN_LABEL}")
    for label in labels:
        if not label or label != label.strip():
            raise RecipeError(f"{path}: model.labels contains an invalid label {label!r}")
    model_id = model.get("id", "", str)
    if not model_id:
        raise RecipeError(f"{path}: model.id is missing")
    version = model.get("version", "1", str)
    model.check_unknown()

    seed = root.integer("seed", 0, 0)

    frontend_section = root.section("frontend")
    try:
        frontend = FrontendParams.from_dict(frontend_section.data)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"{path}: [frontend]: {error}") from error
    except Exception as error:  # ModelCardError from FrontendParams checks
        raise RecipeError(f"{path}: [frontend]: {error}") from error

    smoother_section = root.section("smoother")
    smoother = None
    if smoother_section.data:
        try:
            smoother = SmootherSettings.from_dict(smoother_section.data)
        except Exception as error:
            raise RecipeError(f"{path}: [smoother]: {error}") from error

    voices = _parse_voices(root, path)

    words = root.section("words")
    unknown_words_file = words.get("word_list", "/usr/share/dict/words", str)
    unknown_word_pool = words.integer("pool", 4000, 0)
    confusable = words.strings("confusable", ())
    excluded = words.strings("excluded", ())
    letter_names = words.strings("letters", ())
    confusable_renditions = words.integer("confusable_renditions", 1, 1, 20)
    for letter in letter_names:
        if len(letter) != 1 or not letter.isalpha():
            raise RecipeError(f"{path}: words.letters: {letter!r} is not a single letter")
    words.check_unknown()
    if UNKNOWN_LABEL in labels and not Path(unknown_words_file).is_file():
        raise RecipeError(
            f"{path}: words.word_list {unknown_words_file} not found "
            f"(install Debian's wamerican or name another list of words)"
        )

    silence = root.section("silence")
    silence_clips = {split: silence.integer(split, 0, 0) for split in SPLITS}
    silence.check_unknown()

    augment = _parse_augment(root.section("augment"), path)
    architecture = _parse_architecture(root.section("architecture"))
    train_section = root.section("train")
    train = TrainSpec(
        epochs=train_section.integer("epochs", 20, 1),
        batch_size=train_section.integer("batch_size", 128, 1),
        learning_rate=train_section.number("learning_rate", 0.003, 1e-6, 1.0),
        label_smoothing=train_section.number("label_smoothing", 0.05, 0.0, 0.5),
        representative_windows=train_section.integer("representative_windows", 500, 1),
        mask_bands=train_section.integer("mask_bands", 0, 0, 64),
        mask_rows=train_section.integer("mask_rows", 0, 0, 49),
        warp_range=train_section.pair("warp_range", (1.0, 1.0)),
        class_weight_factors=_parse_class_weight_factors(train_section, labels),
        seed=(train_section.integer("seed", 0, 0, 2**32 - 1)
              if "seed" in train_section.data else None),
        # Relative teacher paths start at the recipe's folder, so the recipe runs from anywhere.
        teachers=tuple(Path(os.path.normpath(path.parent / teacher))
                       for teacher in train_section.strings("teachers", ())),
        distillation=train_section.number("distillation", 0.0, 0.0, 1.0),
        domain_adversarial=train_section.number("domain_adversarial", 0.0, 0.0, 10.0),
    )
    train_section.check_unknown()
    if train.teachers and train.distillation == 0.0:
        raise RecipeError(f"{path}: train.teachers is set but train.distillation is 0; set the "
                          f"weight of the teachers' posteriors in (0, 1]")
    if train.distillation > 0.0 and not train.teachers:
        raise RecipeError(f"{path}: train.distillation is {train.distillation} but "
                          f"train.teachers lists no model")
    if not 0.5 <= train.warp_range[0] <= train.warp_range[1] <= 2.0:
        raise RecipeError(f"{path}: train.warp_range must lie within [0.5, 2.0], "
                          f"got {list(train.warp_range)}")
    threshold_section = root.section("thresholds")
    thresholds = ThresholdSpec(
        max_false_accept=threshold_section.number("max_false_accept", 0.005, 0.0, 1.0),
        minimum=threshold_section.number("minimum", 0.5, 0.01, 1.0),
        maximum=threshold_section.number("maximum", 0.95, 0.01, 1.0),
        stream_false_accepts_per_hour=(
            threshold_section.number("stream_false_accepts_per_hour", 0.0, 0.0, 1000.0)
            if "stream_false_accepts_per_hour" in threshold_section.data else None),
        stream_words=threshold_section.integer("stream_words", 400, 10),
    )
    threshold_section.check_unknown()
    evaluation_section = root.section("evaluation")
    evaluation = EvaluationSpec(
        allison_dir=evaluation_section.get("allison_dir", EvaluationSpec.allison_dir, str),
        keyword_excludes=evaluation_section.strings("keyword_excludes", ()),
    )
    evaluation_section.check_unknown()
    recordings = _parse_recordings(root, path, labels, evaluation.allison_dir)
    root.check_unknown()
    if train.domain_adversarial > 0.0 and train.epochs < 2:
        raise RecipeError(f"{path}: train.domain_adversarial is {train.domain_adversarial} but "
                          f"train.epochs is {train.epochs}; the reversal scale is 0 in the "
                          f"first epoch, so the head needs at least 2 epochs to act")
    if train.domain_adversarial > 0.0 and not [r for r in recordings if r.split == "train"]:
        raise RecipeError(f"{path}: train.domain_adversarial is {train.domain_adversarial} but "
                          f"no [[recordings]] table is in the train split; the domain head "
                          f"needs recorded speech to tell from synthesized speech")

    for split in ("train", "validation"):
        if not [v for v in voices if v.split == split]:
            raise RecipeError(f"{path}: no voice in the {split} split")

    return Recipe(
        path=path, content=content, id=model_id, version=version, labels=tuple(labels),
        seed=seed, frontend=frontend, smoother=smoother, voices=tuple(voices),
        unknown_words_file=unknown_words_file, unknown_word_pool=unknown_word_pool,
        confusable_words=confusable, excluded_words=excluded, silence_clips=silence_clips,
        augment=augment, architecture=architecture, train=train, thresholds=thresholds,
        evaluation=evaluation, letter_names=letter_names,
        confusable_renditions=confusable_renditions, recordings=tuple(recordings),
    )


def _parse_class_weight_factors(section: _Section, labels: tuple[str, ...]) -> dict[str, float]:
    """Read train.class_weight_factors, a table of label = factor with factors in [0.1, 10]."""
    table = section.get("class_weight_factors", {}, dict)
    factors: dict[str, float] = {}
    for label, factor in table.items():
        if label not in labels:
            raise section._fail("class_weight_factors",
                                f"names {label!r}, which is not in model.labels")
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise section._fail("class_weight_factors",
                                f"must map labels to numbers, got {label} = {factor!r}")
        if not 0.1 <= factor <= 10.0:
            raise section._fail("class_weight_factors",
                                f"must be in [0.1, 10.0], got {label} = {factor}")
        factors[label] = float(factor)
    return factors


def _parse_voices(root: _Section, path: Path) -> list[VoiceSpec]:
    """Read [engines.NAME] defaults and the [[voices]] list."""
    engines = root.section("engines")
    defaults: dict[str, _Section] = {}
    for engine in list(engines.data):
        if engine not in ENGINES:
            raise RecipeError(f"{path}: unknown engine engines.{engine} "
                              f"(known: {', '.join(ENGINES)})")
        defaults[engine] = engines.section(engine)
    engines.check_unknown()

    root.used.add("voices")
    entries = root.data.get("voices", [])
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{path}: [[voices]] is missing; list at least one voice per split")
    voices: list[VoiceSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        section = _Section(path, f"voices[{index}]", entry)
        engine = section.get("engine", "", str)
        if engine not in ENGINES:
            raise RecipeError(f"{path}: voices[{index}].engine {engine!r} is unknown "
                              f"(known: {', '.join(ENGINES)})")
        base = defaults.get(engine) or _Section(path, f"engines.{engine}", {})
        name = section.get("name", "", str)
        if not name:
            raise RecipeError(f"{path}: voices[{index}].name is missing")
        split = section.get("split", "", str)
        if split not in SPLITS:
            raise RecipeError(f"{path}: voices[{index}].split must be one of "
                              f"{', '.join(SPLITS)}, got {split!r}")

        def pick(key: str, reader: str, *args: Any, entry: _Section = section,
                 fallback: _Section = base) -> Any:
            source = entry if key in entry.data else fallback
            return getattr(source, reader)(key, *args)

        voice = VoiceSpec(
            engine=engine, name=name, split=split,
            renditions=pick("renditions", "integer", 20, 1),
            unknown_words=pick("unknown_words", "integer", 100, 0),
            sentences=pick("sentences", "integer", 10, 0),
            variants=pick("variants", "strings", ()),
            speed_range=pick("speed_range", "pair", (0.85, 1.2)),
            pitch_range=pick("pitch_range", "pair", (0.8, 1.25)),
            options=dict(pick("options", "get", {}, dict)),
            copies=pick("copies", "integer", 0, 0, 100) or None,
            confusable_renditions=(pick("confusable_renditions", "integer", 1, 1, 20)
                                   if "confusable_renditions" in section.data
                                   or "confusable_renditions" in base.data else None),
        )
        section.check_unknown()
        _check_options(voice, path, index)
        if "confusable_renditions" in section.data and split != "train":
            raise RecipeError(f"{path}: voices[{index}].confusable_renditions: {voice.key} is a "
                              f"{split} voice; only training voices repeat confusable words")
        if voice.key in seen:
            raise RecipeError(f"{path}: voice {voice.key} is listed twice")
        seen.add(voice.key)
        voices.append(voice)
    for base in defaults.values():
        base.used.update({"renditions", "unknown_words", "sentences", "variants", "speed_range",
                          "pitch_range", "options", "copies", "confusable_renditions"})
        base.check_unknown()
    return voices


_RECORDING_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Asterisk's prompt folders are named language_REGION_gender_Speaker.
_SPEAKER_FOLDER = re.compile(r"[a-z]{2,3}_[A-Z]{2}_[fm]_(\w+)")
# The real-speech evaluation data: the bundled reference stream and the comparison suite read
# Allison's prompts from here, whatever a recipe's [evaluation] sets.
_EVALUATION_DIR = EvaluationSpec.allison_dir


def _speaker_of(folder: Path) -> str | None:
    match = _SPEAKER_FOLDER.fullmatch(folder.name)
    return match.group(1) if match else None


def _evaluation_speech(allison_dir: str) -> dict[Path, str]:
    """Map each evaluation folder, resolved, to its name as the recipe or the default gives it."""
    named: dict[Path, str] = {}
    for name in dict.fromkeys([allison_dir, _EVALUATION_DIR]):
        if name:
            named.setdefault(Path(name).resolve(), name)
    return named


def _evaluation_source(file: Path, named: dict[Path, str]) -> str | None:
    """Return the evaluation folder that ``file`` lies in or shares its speaker with."""
    speakers = {_speaker_of(folder): name for folder, name in named.items()}
    speakers.pop(None, None)
    for folder, name in named.items():
        if file.is_relative_to(folder):
            return name
    for folder in file.parents:
        speaker = _speaker_of(folder)
        if speaker in speakers:
            return f"{speakers[speaker]}, same speaker as {folder}"
    return None


def _parse_recordings(root: _Section, path: Path, labels: tuple[str, ...],
                      allison_dir: str) -> list[RecordingSpec]:
    """Read the [[recordings]] list: recorded speech without keywords, as ``_unknown_``.

    The evaluation speaker's own recordings are rejected: the folders of ``allison_dir`` and of
    the default evaluation prompts, and every Asterisk prompt folder of the same speaker in
    another language. A file may belong to one recording only, so no speaker crosses splits.
    """
    root.used.add("recordings")
    entries = root.data.get("recordings", [])
    if not isinstance(entries, list):
        raise RecipeError(f"{path}: recordings must be a list of tables ([[recordings]])")
    if entries and UNKNOWN_LABEL not in labels:
        raise RecipeError(f"{path}: [[recordings]] are {UNKNOWN_LABEL} speech, but model.labels "
                          f"has no {UNKNOWN_LABEL}")
    evaluation = _evaluation_speech(allison_dir)
    specs: list[RecordingSpec] = []
    owner: dict[str, str] = {}
    for index, entry in enumerate(entries):
        section = _Section(path, f"recordings[{index}]", entry)
        name = section.get("name", "", str)
        split = section.get("split", "train", str)
        patterns = section.strings("files", ())
        excluded = section.strings("exclude", ())
        copies = section.integer("copies", 1, 1, 100) if "copies" in section.data else None
        section.check_unknown()
        if not name:
            raise section._fail("name", "is missing")
        if not _RECORDING_NAME.fullmatch(name):
            raise section._fail("name", f"must be ASCII letters, digits, '_', '.' or '-', "
                                        f"got {name!r}")
        if name in {spec.name for spec in specs}:
            raise section._fail("name", f"{name!r} is listed twice")
        if split not in SPLITS:
            raise section._fail("split", f"must be one of {', '.join(SPLITS)}, got {split!r}")
        if copies is not None and split != "train":
            raise section._fail("copies", f"applies to training clips only; {name!r} is a "
                                          f"{split} recording")
        if not patterns:
            raise section._fail("files", "is empty; list the recordings' paths or patterns")
        files: set[str] = set()
        for pattern in patterns:
            # Relative patterns start at the recipe's folder, so the recipe runs from anywhere.
            full = os.path.join(path.parent, pattern)
            matches = [m for m in glob.glob(full, recursive=True) if Path(m).is_file()]
            if not matches and Path(full).is_file():
                # A file name with glob characters, such as "take[1].wav".
                matches = [full]
            if not matches:
                folder = pattern.rstrip("/")
                hint = (f"; {full} is a folder, name its files ({folder}/*.wav)"
                        if Path(full).is_dir() else "")
                raise section._fail("files", f"pattern {pattern} matches no file{hint}")
            files.update(os.path.normpath(m) for m in matches)
        for rule in excluded:
            # A warning, not an error: one exclude list often serves several speakers, and
            # not every speaker has every file.
            if not any(_excludes(rule, f, path.parent) for f in files):
                log.warning("%s: recordings[%d].exclude pattern %s matches none of the %d "
                            "files", path, index, rule, len(files))
        selected = sorted(f for f in files
                          if not any(_excludes(rule, f, path.parent) for rule in excluded))
        if not selected:
            raise section._fail("exclude", f"leaves none of the {len(files)} matched files")
        for file in selected:
            resolved = Path(file).resolve()
            source = _evaluation_source(resolved, evaluation)
            if source is not None:
                raise section._fail("files", f"includes {file}, spoken by the speaker of the "
                                             f"evaluation prompts ({source}); evaluation "
                                             f"speech never trains a model")
            if str(resolved) in owner:
                raise section._fail("files", f"includes {file}, which recording "
                                             f"{owner[str(resolved)]!r} already lists")
            owner[str(resolved)] = name
        specs.append(RecordingSpec(name=name, split=split, files=tuple(selected), copies=copies))
    return specs


def _excludes(rule: str, file: str, base: Path) -> bool:
    """Return whether an exclude pattern matches a file's whole path, its path from the
    recipe's folder ``base``, or its name."""
    return (fnmatch.fnmatch(file, rule) or fnmatch.fnmatch(os.path.basename(file), rule)
            or fnmatch.fnmatch(file, os.path.normpath(os.path.join(base, rule))))


def _parse_augment(section: _Section, path: Path) -> AugmentSpec:
    default = AugmentSpec()
    spec = AugmentSpec(
        copies=section.integer("copies", default.copies, 1, 100),
        noise_probability=section.number("noise_probability", default.noise_probability, 0, 1),
        snr_db=section.pair("snr_db", default.snr_db),
        noise_floor_probability=section.number(
            "noise_floor_probability", default.noise_floor_probability, 0, 1),
        noise_floor_dbfs=section.pair("noise_floor_dbfs", default.noise_floor_dbfs),
        ambient_probability=section.number(
            "ambient_probability", default.ambient_probability, 0, 1),
        ambient_files=section.strings("ambient_files", ()),
        level_dbfs=section.pair("level_dbfs", default.level_dbfs),
        shift_ms=section.integer("shift_ms", default.shift_ms, 0, 500),
        speed_probability=section.number("speed_probability", default.speed_probability, 0, 1),
        speed_range=section.pair("speed_range", default.speed_range),
        reverb_probability=section.number(
            "reverb_probability", default.reverb_probability, 0, 1),
        rt60_range_s=section.pair("rt60_range_s", default.rt60_range_s),
        telephone_probability=section.number(
            "telephone_probability", default.telephone_probability, 0, 1),
        microphone_probability=section.number(
            "microphone_probability", default.microphone_probability, 0, 1),
        context_probability=section.number(
            "context_probability", default.context_probability, 0, 1),
        eval_snr_db=section.pair("eval_snr_db", default.eval_snr_db),
        cut_probability=section.number("cut_probability", default.cut_probability, 0, 1),
    )
    section.check_unknown()
    for name in spec.ambient_files:
        if not Path(name).is_file():
            raise RecipeError(f"{path}: augment.ambient_files: noise file {name} not found")
    return spec


def _parse_architecture(section: _Section) -> ArchitectureSpec:
    default = ArchitectureSpec()
    kernel = section.pair("first_kernel", default.first_kernel, ordered=False)
    stride = section.pair("first_stride", default.first_stride, ordered=False)
    raw_blocks = section.get("blocks", [list(b) for b in default.blocks], list)
    blocks: list[tuple[int, int]] = []
    for block in raw_blocks:
        if (not isinstance(block, list) or len(block) != 2
                or not all(isinstance(v, int) and v > 0 for v in block)):
            raise RecipeError(f"{section.source}: architecture.blocks entries must be "
                              f"[filters, stride] with positive integers, got {block!r}")
        blocks.append((block[0], block[1]))
    spec = ArchitectureSpec(
        first_filters=section.integer("first_filters", default.first_filters, 1, 512),
        first_kernel=(int(kernel[0]), int(kernel[1])),
        first_stride=(int(stride[0]), int(stride[1])),
        blocks=tuple(blocks),
        dropout=section.number("dropout", default.dropout, 0.0, 0.9),
    )
    section.check_unknown()
    return spec
