"""The training pipeline behind ``kwstream train``: synthesis to model card, step by step.

Steps: check the voices, synthesize the speech corpus (cached), augment it into feature
windows, train the Keras DS-CNN and export a full-integer int8 .tflite. Then pick the smoother
defaults and the thresholds on the validation voices, evaluate on the test voices and on real
speech, measure the TFLite Micro arena, and write the model card.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kwstream.errors import RecipeError, SynthesisError
from kwstream.modelcard import UNKNOWN_LABEL, ModelCard, SmootherSettings, file_sha256
from kwstream.training import corpus, dataset, evaluate, export, report, smoothing, teachers
from kwstream.training.engines import check_voice
from kwstream.training.recipe import RECORDING_PREFIX, SPLITS, Recipe

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 64 * 1024
MAX_ARENA_BYTES = 48 * 1024
# Modules of this package whose code changes the trained weights.
TRAINING_CODE = ("augment", "corpus", "dataset", "engines", "model", "neural", "recipe",
                 "teachers")


@contextlib.contextmanager
def step(name: str, timings: dict[str, float]) -> Iterator[None]:
    log.info("%s: started", name)
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    timings[name] = round(elapsed, 1)
    log.info("%s: done in %.1f s", name, elapsed)


def check_voices(recipe: Recipe) -> None:
    for index, voice in enumerate(recipe.voices):
        try:
            check_voice(voice.engine, voice.name, voice.variants)
        except RecipeError as error:
            raise RecipeError(f"{recipe.path}: voices[{index}]: {error}") from error


def _training_seed(recipe: Recipe) -> int:
    """Return the seed of the initial weights and training order: [train] seed or the recipe's."""
    return recipe.seed if recipe.train.seed is None else recipe.train.seed


def _split_summary(recipe: Recipe, data: dict[str, dataset.SplitData]) -> dict[str, Any]:
    return {
        "voices": {split: [v.key for v in recipe.voices_in(split)]
                   + [r.key for r in recipe.recordings if r.split == split] for split in SPLITS},
        **({"recordings": {r.key: len(r.files) for r in recipe.recordings}}
           if recipe.recordings else {}),
        "clips_per_class": {split: data[split].counts for split in SPLITS if split in data},
        "train_copies": recipe.augment.copies,
        "augmentation": "training clips: speed, level, shift, context speech, reverberation, "
                        "telephone and microphone band limits, noise; validation and test "
                        "clips: shift, level, noise floor and noise at eval_snr_db half of "
                        "the time",
    }


def run(recipe: Recipe, cache_dir: Path, out_dir: Path, processes: int | None = None) -> Path:
    """Run every step and return the path of the written .tflite (its card lies beside it)."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)

    with step("check voices", timings):
        check_voices(recipe)
        teacher_files = teachers.check_teachers(recipe)
        ambient = dataset.load_ambient(recipe.augment.ambient_files)
        recorded = dataset.load_recordings(recipe, processes)

    with step("synthesis", timings):
        jobs = corpus.plan_jobs(recipe)
        cached_jobs = sum(job.cache_path(cache_dir).is_file() for job in jobs)
        try:
            speech = corpus.synthesize_corpus(jobs, cache_dir, processes)
        except RuntimeError as error:
            # An engine that fails on an utterance; the jobs that finished stay cached.
            raise SynthesisError(f"{recipe.path}: synthesis failed: {error}") from error

    with step("features", timings):
        items = dataset.collect_items(recipe, speech, recorded)
        data = {
            "train": dataset.build_split(
                recipe, "train", items["train"], ambient, recipe.augment.copies, True,
                processes, {**{voice.key: voice.copies for voice in recipe.voices if voice.copies},
                            **{spec.key: spec.copies for spec in recipe.recordings
                               if spec.copies}}),
            "validation": dataset.build_split(recipe, "validation", items["validation"],
                                              ambient, 1, False, processes),
            "test": dataset.build_split(recipe, "test", items["test"], ambient, 1, False,
                                        processes),
        }
        validation_words = stream_pieces(items["validation"])
        del speech, items, recorded
        dataset.ensure_labels_present(recipe, data)
        for split, split_data in data.items():
            log.info("%s: %d windows", split, len(split_data.labels))

    with step("training", timings):
        keras_model, fit = _train_or_reuse(recipe, data, cache_dir, teacher_files)

    model_path = out_dir / f"{recipe.id}.tflite"
    with step("int8 export", timings):
        rng = np.random.default_rng(corpus.stable_seed(recipe.seed, "representative"))
        train_x = data["train"].features
        picks = rng.choice(len(train_x), min(recipe.train.representative_windows, len(train_x)),
                           replace=False)
        export.export_int8(keras_model, train_x[picks], model_path)
        quantization = export.quantization_of(model_path)
        ops = export.op_types(model_path)

    with step("evaluation", timings):
        metrics, smoother = evaluate_model(recipe, model_path, keras_model, data, fit,
                                           validation_words)
        metrics["ops"] = ops

    with step("arena", timings):
        arena = export.measure_arena(model_path)

    size = model_path.stat().st_size
    if size > MAX_MODEL_BYTES:
        log.warning("%s is %d bytes, above the %d-byte target", model_path, size,
                    MAX_MODEL_BYTES)
    if arena is not None and arena > MAX_ARENA_BYTES:
        log.warning("%s needs a %d-byte arena, above the %d-byte target", model_path, arena,
                    MAX_ARENA_BYTES)
    timings["total"] = round(time.monotonic() - started, 1)
    metrics["wall_seconds"] = timings
    # A run that found its speech in the cache did not measure the synthesis time.
    metrics["synthesis_jobs"] = {"total": len(jobs), "cached": cached_jobs}
    metrics["machine"] = f"{os.cpu_count()} CPU cores"
    thresholds = metrics.pop("thresholds")

    card = ModelCard(
        id=recipe.id,
        version=recipe.version,
        labels=list(recipe.labels),
        frontend=recipe.frontend,
        smoother=smoother,
        thresholds=thresholds,
        sha256=file_sha256(model_path),
        size_bytes=size,
        arena_bytes=arena,
        quantization=quantization,
        recipe={"path": _display_path(recipe.path), "content": recipe.content,
                "seed": recipe.seed,
                "train_seed": _training_seed(recipe)},
        data=_split_summary(recipe, data),
        metrics=metrics,
    )
    card.write(model_path.with_suffix(".json"))
    report.write_markdown(card, model_path.with_suffix(".md"))
    log.info("wrote %s (%d bytes, arena %s bytes) and its card", model_path, size, arena)
    return model_path


def _recording_digests(recipe: Recipe) -> list[str]:
    """Return one line per recorded file: its recording, split, path and sha256."""
    # Absolute paths, so that the key does not depend on how the recipe's path was typed.
    return [f"{spec.name} {spec.split} {os.path.abspath(name)} {file_sha256(Path(name))}"
            for spec in recipe.recordings for name in spec.files]


def _train_or_reuse(recipe: Recipe, data: dict[str, dataset.SplitData], cache_dir: Path,
                    teacher_files: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """Train the Keras model, or load the one an earlier run of the same recipe saved.

    The trained model is saved before export, so a failure in a later step does not cost
    the training time again.
    """
    import json

    import keras

    from kwstream.training import model as model_module

    # The key covers the recipe and the code that shapes the training data and the model: a
    # change to either retrains. Export, evaluation and thresholds run again on every call,
    # so the recipe's threshold, smoother and evaluation tables stay out of the key.
    sources = sorted(Path(model_module.__file__).parent / f"{name}.py" for name in TRAINING_CODE)
    training_part = {key: value for key, value in tomllib.loads(recipe.content).items()
                     if key not in ("thresholds", "smoother", "evaluation")}
    # The teachers' sha256 values, checked against their cards, are part of the key, so a
    # changed teacher trains anew, and so are the recorded files with their contents.
    digest = corpus.stable_seed(json.dumps(training_part, sort_keys=True),
                                *(p.read_text() for p in sources),
                                *(teacher["sha256"] for teacher in teacher_files),
                                *_recording_digests(recipe))
    folder = cache_dir / "models"
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / f"{recipe.id}-{digest[0]:08x}{digest[1]:08x}.keras"
    history = saved.with_suffix(".json")
    if saved.is_file() and history.is_file():
        log.info("reusing the model trained from the same recipe: %s", saved)
        fit = json.loads(history.read_text())
        fit["reused"] = True
        return keras.models.load_model(saved), fit
    started = time.monotonic()
    classes = len(recipe.labels)
    training_seed = _training_seed(recipe)
    keras_model = model_module.build_model(recipe.frontend.window_rows,
                                           recipe.frontend.num_bands, classes,
                                           recipe.architecture, training_seed)
    class_factors = {recipe.labels.index(label): factor
                     for label, factor in recipe.train.class_weight_factors.items()}
    if class_factors:
        log.info("class weight factors: %s", ", ".join(
            f"{label} x{factor}" for label, factor in recipe.train.class_weight_factors.items()))
    soft_targets = None
    if recipe.train.teachers:
        soft_targets = teachers.mean_posteriors(recipe, data["train"].features,
                                                data["train"].labels)
    domain = None
    if recipe.train.domain_adversarial > 0.0:
        train = data["train"]
        real = np.array([voice.startswith(RECORDING_PREFIX) for voice in train.voices])
        domain = model_module.domain_targets(real,
                                             train.labels == recipe.labels.index(UNKNOWN_LABEL))
        log.info("domain-adversarial training: %d recorded and %d synthesized _unknown_ "
                 "windows, reversal scale up to %g", int(domain[0].sum()),
                 int(np.count_nonzero(domain[1]) - domain[0].sum()),
                 recipe.train.domain_adversarial)
    fit = model_module.train_model(keras_model, data["train"].features, data["train"].labels,
                                   data["validation"].features, data["validation"].labels,
                                   classes, recipe.train, training_seed, class_factors,
                                   model_module.band_centres_mel(recipe.frontend.lower_hz,
                                                                 recipe.frontend.upper_hz,
                                                                 recipe.frontend.num_bands),
                                   soft_targets, domain)
    if teacher_files:
        fit["teachers"] = teacher_files
        fit["distillation"] = recipe.train.distillation
    if domain is not None:
        fit["domain_adversarial"] = {
            "scale": recipe.train.domain_adversarial,
            "recorded_windows": int(domain[0].sum()),
            # Keras averages the weighted loss over every window of a batch, and only the
            # _unknown_ windows take part, so a head that cannot tell the domains apart
            # scores ln 2 times their share.
            "domain_loss_at_chance": round(
                float(np.log(2.0) * np.count_nonzero(domain[1]) / len(domain[1])), 4),
            "domain_loss_per_epoch": [round(v, 4) for v in fit["history"].get("domain_loss", [])],
            "scale_per_epoch": [round(v, 4) for v in fit["history"].get("domain_scale", [])],
        }
        scales = fit["domain_adversarial"]["scale_per_epoch"]
        if scales and fit["best_epoch"] >= 1:
            fit["domain_adversarial"]["kept_epoch_scale"] = scales[fit["best_epoch"] - 1]
            if scales[fit["best_epoch"] - 1] == 0.0:
                log.warning("the kept epoch %d ran at reversal scale 0, so the domain head had "
                            "no effect on the exported model", fit["best_epoch"])
    fit["train_seconds"] = round(time.monotonic() - started, 1)
    temporary = saved.with_name(f".{saved.stem}.tmp.keras")
    keras_model.save(temporary)
    temporary.replace(saved)
    history.write_text(json.dumps(fit))
    return keras_model, fit


def stream_pieces(items: list[dataset.Item]) -> list[tuple[int, np.ndarray]]:
    """Return the words and running speech that the validation stream strings together.

    Sentence excerpts overlap by half their length, so every second one is kept: running
    speech without keywords is where a streaming detector meets most false accepts.
    """
    words = [(item.label, item.audio) for item in items if item.kind == dataset.KIND_CLIP]
    excerpts = [(item.label, item.audio) for item in items if item.kind == dataset.KIND_EXCERPT]
    return words + excerpts[::2]


def _display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def evaluate_model(recipe: Recipe, model_path: Path, keras_model: Any,
                   data: dict[str, dataset.SplitData], fit: dict[str, Any],
                   validation_words: list[tuple[int, np.ndarray]],
                   ) -> tuple[dict[str, Any], SmootherSettings]:
    """Measure the int8 model with LiteRT's default kernels.

    The smoother defaults and the thresholds come from the validation voices: clip thresholds
    seed the smoother tuning on a stream of validation words, and, when the recipe sets
    ``stream_false_accepts_per_hour``, the same stream then sets the card's thresholds.
    """
    labels = recipe.labels
    spec = recipe.thresholds
    posteriors = {split: export.run_litert(model_path, data[split].features)
                  for split in ("validation", "test")}
    clip_thresholds = evaluate.select_thresholds(
        posteriors["validation"], data["validation"].labels, labels,
        spec.max_false_accept, spec.minimum, spec.maximum)
    clip_rule = (f"lowest threshold in [{spec.minimum}, {spec.maximum}] with at most "
                 f"{spec.max_false_accept:.2%} of other validation clips at or above it")
    metrics: dict[str, Any] = {
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runtime": "ai_edge_litert Interpreter, default kernels, int8 model",
        "training": {"best_epoch": fit["best_epoch"],
                     "float_validation_accuracy": round(fit["best_validation_accuracy"], 4),
                     "epochs": recipe.train.epochs,
                     "reused_model": bool(fit.get("reused", False)),
                     "train_seconds": fit.get("train_seconds")},
    }
    if "teachers" in fit:
        metrics["training"]["teachers"] = fit["teachers"]
        metrics["training"]["distillation"] = fit["distillation"]
    if "domain_adversarial" in fit:
        metrics["training"]["domain_adversarial"] = fit["domain_adversarial"]

    stream = smoothing.validation_stream(model_path, recipe.frontend, validation_words,
                                         recipe.seed, spec.stream_words)
    smoother, metrics["validation_stream"] = smoothing.tune(stream, labels, clip_thresholds)
    if recipe.smoother is not None:
        smoother = recipe.smoother
        metrics["validation_stream"]["note"] = "smoother fixed by the recipe"
    if spec.stream_false_accepts_per_hour is None:
        thresholds = clip_thresholds
        metrics["threshold_rule"] = clip_rule
    else:
        keyword_ids = np.array([i for i, label in enumerate(labels) if label in clip_thresholds])
        thresholds, metrics["validation_stream"]["thresholds"] = smoothing.stream_thresholds(
            stream.posteriors, stream.end_ms, stream.references, labels, keyword_ids, smoother,
            spec.stream_false_accepts_per_hour, spec.minimum, spec.maximum)
        metrics["clip_thresholds"] = clip_thresholds
        metrics["threshold_rule"] = (
            f"lowest threshold in [{spec.minimum}, {spec.maximum}] (steps of 0.01) with at most "
            f"{spec.stream_false_accepts_per_hour:g} false accepts per hour of that keyword on a "
            f"{stream.seconds / 3600:.2f}-hour stream of validation words, with the card's "
            f"smoother; the smoother was tuned with the clip thresholds ({clip_rule})")
    metrics["thresholds"] = thresholds

    for split in ("validation", "test"):
        summary = evaluate.clip_metrics(posteriors[split], data[split].labels, labels)
        summary["at_thresholds"] = evaluate.detection_rates(posteriors[split],
                                                            data[split].labels, labels,
                                                            thresholds)
        summary["per_voice"] = evaluate.per_voice(posteriors[split], data[split].labels,
                                                  data[split].voices, labels)
        metrics[f"{split}_voices"] = summary
    metrics["test_voices"]["note"] = (
        "held out: no test voice is in the training or validation split")
    test_x = data["test"].features
    float_predicted = keras_model.predict(test_x[..., None], batch_size=512, verbose=0)
    metrics["test_voices"]["float_accuracy"] = float(
        np.mean(float_predicted.argmax(axis=1) == data["test"].labels)) if len(test_x) else None

    sample = test_x[:1000]
    default_top = posteriors["test"][:len(sample)].argmax(axis=1)
    reference_top = export.run_litert(model_path, sample, reference_kernels=True).argmax(axis=1)
    metrics["kernel_agreement"] = {
        "windows": int(len(sample)),
        "default_vs_reference_top_class": float(np.mean(default_top == reference_top))
        if len(sample) else None,
    }

    allison = None
    if recipe.evaluation.allison_dir:
        allison = evaluate.load_allison(Path(recipe.evaluation.allison_dir), recipe.frontend,
                                        labels, recipe.excluded_words,
                                        recipe.evaluation.keyword_excludes, recipe.seed)
    if allison is not None:
        metrics["allison"] = evaluate.allison_metrics(model_path, allison, labels, thresholds)
        metrics["allison"]["note"] = (
            "real human speech (one female speaker, asterisk-core-sounds-en-g722), never "
            "used for training, thresholds or model selection")
    return metrics, smoother


def validate_output_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RecipeError(f"output path {path} exists and is not a folder")
