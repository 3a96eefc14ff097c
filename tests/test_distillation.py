"""Knowledge distillation: teacher checks, their mean posterior, and soft training targets."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from kwstream.errors import RecipeError
from kwstream.frontend import feature_windows
from kwstream.modelcard import load_card
from kwstream.training import export, teachers
from kwstream.training.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = Path(__file__).parent / "data" / "tiny.toml"
SHIPPED_MODEL = ROOT / "models" / "kws20.tflite"
BAND_MEAN_RECIPE = ROOT / "models" / "recipes" / "kws20-band-mean18.toml"


def _with_train_lines(source: Path, target: Path, lines: str) -> Path:
    target.write_text(source.read_text().replace("[train]\n", "[train]\n" + lines, 1))
    return target


def test_teacher_paths_relative_to_recipe(tmp_path: Path) -> None:
    recipe = load_recipe(ROOT / "models" / "recipes" / "kws20-distilled.toml")
    assert recipe.train.distillation == 0.5
    assert len(recipe.train.teachers) == 8
    for teacher in recipe.train.teachers:
        assert teacher.is_file(), teacher
        assert teacher.parent == ROOT / "models" / "candidates"
    assert load_recipe(TINY_RECIPE).train.teachers == ()
    assert load_recipe(TINY_RECIPE).train.distillation == 0.0


@pytest.mark.parametrize(("lines", "message"), [
    ('teachers = ["a.tflite"]\n', r"train\.teachers is set but train\.distillation is 0"),
    ("distillation = 0.5\n", r"train\.distillation is 0\.5 but train\.teachers lists no model"),
    ('teachers = ["a.tflite"]\ndistillation = 1.5\n', r"train\.distillation must be in "
                                                       r"\[0\.0, 1\.0\], got 1\.5"),
    ("teachers = [3]\ndistillation = 0.5\n", r"train\.teachers must be a list of strings"),
    ('teachers = "a.tflite"\ndistillation = 0.5\n', r"train\.teachers must be a list, got"),
    ('teachers = ["a.tflite"]\ndistillation = "0.5"\n', r"train\.distillation must be a "
                                                         r"number, got '0\.5'"),
])
def test_recipe_rejects_bad_distillation(tmp_path: Path, lines: str, message: str) -> None:
    recipe = _with_train_lines(TINY_RECIPE, tmp_path / "bad.toml", lines)
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


@pytest.mark.parametrize(("base", "teacher", "message"), [
    (TINY_RECIPE, "gone.tflite",
     r"bad\.toml: train\.teachers\[0\] \(.*gone\.tflite\): model file not found"),
    (TINY_RECIPE, "teacher",
     r"train\.teachers\[0\] .*teacher\): .*teacher is a folder; name "),
    (TINY_RECIPE, str(SHIPPED_MODEL),
     r"train\.teachers\[0\] .*kws20\.tflite\): its labels \[.*'nine'\] differ from "
     r"model\.labels"),
    # The shipped model subtracts each window's mean, and the band-mean recipe each band's.
    (BAND_MEAN_RECIPE, str(SHIPPED_MODEL),
     r"its frontend differs from the recipe's \[frontend\]: normalization = 'window_mean' "
     r"\(recipe: 'band_mean'\)$"),
])
def test_bad_teacher_is_named(tmp_path: Path, base: Path, teacher: str, message: str) -> None:
    (tmp_path / "teacher").mkdir()
    recipe = load_recipe(_with_train_lines(
        base, tmp_path / "bad.toml", f'teachers = ["{teacher}"]\ndistillation = 0.5\n'))
    with pytest.raises(RecipeError, match=message):
        teachers.check_teachers(recipe)


def test_teacher_that_litert_cannot_load(tmp_path: Path) -> None:
    """A truncated model whose card matches its bytes fails the check, before synthesis."""
    card = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(SHIPPED_MODEL.read_bytes()[:100])
    card["sha256"] = hashlib.sha256(broken.read_bytes()).hexdigest()
    card["size_bytes"] = 100
    broken.with_suffix(".json").write_text(json.dumps(card))
    recipe = load_recipe(_with_train_lines(
        ROOT / "models" / "recipes" / "kws20.toml", tmp_path / "broken.toml",
        'teachers = ["broken.tflite"]\ndistillation = 0.5\n'))
    with pytest.raises(RecipeError, match=r"train\.teachers\[0\] .*broken\.tflite\): LiteRT "
                                          r"cannot load it"):
        teachers.check_teachers(recipe)


def test_mean_posterior_of_teachers(tmp_path: Path) -> None:
    shipped = ROOT / "models" / "recipes" / "kws20.toml"
    other = ROOT / "models" / "candidates" / "kws20-warp.tflite"
    recipe = load_recipe(_with_train_lines(
        shipped, tmp_path / "two.toml",
        f'teachers = ["{SHIPPED_MODEL}", "{other}"]\ndistillation = 0.5\n'))
    found = teachers.check_teachers(recipe)
    assert [row["sha256"] for row in found] == [load_card(SHIPPED_MODEL).sha256,
                                                load_card(other).sha256]
    # Card paths are relative to the recipe's folder, whatever the working directory.
    assert found[0]["path"] == os.path.relpath(SHIPPED_MODEL, tmp_path)
    rng = np.random.default_rng(4)
    windows = feature_windows(rng.normal(0, 0.05, 32000).astype(np.float32),
                              load_card(SHIPPED_MODEL).frontend, stride_rows=7)
    labels = np.zeros(len(windows), dtype=np.int64)
    mean = teachers.mean_posteriors(recipe, windows, labels)
    expected = (export.run_litert(SHIPPED_MODEL, windows) + export.run_litert(other, windows)) / 2
    expected /= expected.sum(axis=1, keepdims=True)
    assert mean.shape == (len(windows), 22)
    np.testing.assert_allclose(mean, expected, atol=1e-6)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, atol=1e-5)


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _tensorflow_available(), reason="needs the train extra (TensorFlow)")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_soft_targets_steer_training() -> None:
    """With distillation 1, the model learns the teachers' classes, not the labels."""
    from kwstream.training.model import build_model, train_model
    from kwstream.training.recipe import ArchitectureSpec, TrainSpec

    rng = np.random.default_rng(0)
    signal = rng.integers(0, 4, 1600)
    windows = rng.normal(size=(1600, 49, 40)).astype(np.float32)
    windows[np.arange(1600), signal * 10, :] += 4.0
    wrong_labels = (signal + 1) % 4
    soft = np.eye(4, dtype=np.float32)[signal]
    architecture = ArchitectureSpec(first_filters=8, blocks=((8, 1), (16, 2)))
    predicted = {}
    for weight in (0.0, 1.0):
        spec = TrainSpec(epochs=10, batch_size=50, label_smoothing=0.0, distillation=weight,
                         teachers=(Path("teacher.tflite"),) if weight else ())
        # Training keeps its best epoch on the validation windows, so they carry the classes
        # the training targets point at.
        target = signal if weight else wrong_labels
        model = build_model(49, 40, 4, architecture, seed=3)
        train_model(model, windows[:1200], wrong_labels[:1200], windows[1200:], target[1200:],
                    4, spec, seed=5, soft_targets=soft[:1200])
        predicted[weight] = model.predict(windows[1200:, ..., None], verbose=0).argmax(axis=1)
    # Four classes: a model that learned neither would agree with either a quarter of the time.
    assert np.mean(predicted[1.0] == signal[1200:]) > 0.6
    assert np.mean(predicted[1.0] == wrong_labels[1200:]) < 0.2
    assert np.mean(predicted[0.0] == wrong_labels[1200:]) > 0.6
    assert np.mean(predicted[0.0] == signal[1200:]) < 0.2
