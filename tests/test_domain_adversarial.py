"""Domain-adversarial training: the domain targets, the gradient reversal and its effect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kwstream.errors import RecipeError
from kwstream.training.model import domain_targets
from kwstream.training.recipe import load_recipe

TINY_RECIPE = Path(__file__).parent / "data" / "tiny.toml"


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


needs_tensorflow = pytest.mark.skipif(not _tensorflow_available(),
                                      reason="needs the train extra (TensorFlow)")


def test_domain_targets_balance_domains() -> None:
    real = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    unknown = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    targets, weights = domain_targets(real, unknown)
    assert targets[:, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    # Six windows take part: two recorded share half of the weight, four synthesized the other.
    np.testing.assert_allclose(weights, [1.5, 1.5, 0.75, 0.75, 0.75, 0.75, 0.0, 0.0])
    assert weights[real].sum() == pytest.approx(weights[~real & unknown].sum())
    # Keyword windows never take part, even a recorded one.
    targets, weights = domain_targets(np.array([1, 0], dtype=bool), np.array([0, 1], dtype=bool))
    assert targets[:, 0].tolist() == [0, 0]
    assert weights[0] == 0.0


@pytest.mark.parametrize(("tables", "value", "message"), [
    ("", "1.0", r"train\.domain_adversarial is 1\.0 but no \[\[recordings\]\] table is in the "
                r"train split"),
    ('[[recordings]]\nname = "r"\nfiles = ["{wav}"]\nsplit = "test"\n', "0.5",
     r"train\.domain_adversarial is 0\.5 but no \[\[recordings\]\] table is in the train split"),
    ("", "11", r"train\.domain_adversarial must be in \[0\.0, 10\.0\], got 11"),
    ("", "-1", r"train\.domain_adversarial must be in \[0\.0, 10\.0\], got -1"),
    ("", '"1"', r"train\.domain_adversarial must be a number, got '1'"),
    ('[[recordings]]\nname = "r"\nfiles = ["{wav}"]\n', "1.0",
     r"train\.domain_adversarial is 1\.0 but train\.epochs is 1; the reversal scale is 0 in "
     r"the first epoch"),
])
def test_recipe_rejects_bad_domain_adversarial(tmp_path: Path, tables: str, value: str,
                                               message: str) -> None:
    import soundfile

    wav = tmp_path / "word.wav"
    soundfile.write(wav, np.sin(np.arange(8000) * 0.1).astype(np.float32) * 0.3, 16000)
    # The tiny recipe trains one epoch, so every case but the epochs case gives the head two.
    epochs = 1 if "epochs" in message else 2
    text = TINY_RECIPE.read_text().replace(
        "[train]\nepochs = 1\n", f"[train]\nepochs = {epochs}\ndomain_adversarial = {value}\n", 1)
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n" + tables.format(wav=wav))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_domain_adversarial_defaults_to_off() -> None:
    assert load_recipe(TINY_RECIPE).train.domain_adversarial == 0.0


@needs_tensorflow
def test_gradient_reversal_scales_gradient() -> None:
    import tensorflow as tf

    from kwstream.training.model import gradient_reversal_layer

    layer = gradient_reversal_layer()
    values = tf.constant([[1.0, -2.0, 3.0]])
    for scale in (0.0, 0.25, 1.0):
        layer.scale.assign(scale)
        with tf.GradientTape() as tape:
            tape.watch(values)
            output = layer(values)
            loss = tf.reduce_sum(output * tf.constant([[1.0, 2.0, 3.0]]))
        np.testing.assert_allclose(output.numpy(), values.numpy())
        np.testing.assert_allclose(tape.gradient(loss, values).numpy(),
                                   [[-scale, -2.0 * scale, -3.0 * scale]])


@needs_tensorflow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_needs_recorded_windows() -> None:
    from kwstream.training.model import build_model, train_model
    from kwstream.training.recipe import ArchitectureSpec, TrainSpec

    windows = np.zeros((8, 49, 40), dtype=np.float32)
    labels = np.zeros(8, dtype=np.int64)
    model = build_model(49, 40, 2, ArchitectureSpec(first_filters=4, blocks=((4, 1),)), seed=1)
    spec = TrainSpec(epochs=1, domain_adversarial=1.0)
    with pytest.raises(ValueError, match="needs recorded training windows"):
        train_model(model, windows, labels, windows, labels, 2, spec, seed=1)
    none_real = domain_targets(np.zeros(8, dtype=bool), np.ones(8, dtype=bool))
    with pytest.raises(ValueError, match="needs recorded training windows"):
        train_model(model, windows, labels, windows, labels, 2, spec, seed=1, domain=none_real)


@needs_tensorflow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_domain_head_removes_voice_cue() -> None:
    """Recorded windows are all class 0 and carry a cue that no synthesized window has.

    Without the domain head the model learns that the cue means class 0, so keywords that
    carry it (real keywords, weaker than the synthesized ones) are heard as class 0. With the
    head the cue no longer decides, and those keywords are recognised.
    """
    from kwstream.training.model import build_model, train_model
    from kwstream.training.recipe import ArchitectureSpec, TrainSpec

    rng = np.random.default_rng(0)
    count = 2400
    labels = rng.integers(0, 4, count)
    windows = rng.normal(size=(count, 49, 40)).astype(np.float32)
    windows[np.arange(count), labels * 10 + 5, :] += 3.0
    real = (labels == 0) & (rng.random(count) < 0.5)
    windows[real, :, 34:] += 2.0
    held_out = rng.normal(size=(400, 49, 40)).astype(np.float32)
    held_out_labels = rng.integers(1, 4, 400)
    held_out[np.arange(400), held_out_labels * 10 + 5, :] += 1.0
    held_out[:, :, 34:] += 2.0
    architecture = ArchitectureSpec(first_filters=8, blocks=((8, 1), (16, 2)))
    domain = domain_targets(real[:2000], labels[:2000] == 0)
    results = {}
    for scale in (0.0, 1.0):
        spec = TrainSpec(epochs=8, batch_size=50, label_smoothing=0.0, domain_adversarial=scale)
        model = build_model(49, 40, 4, architecture, seed=3)
        fit = train_model(model, windows[:2000], labels[:2000], windows[2000:], labels[2000:], 4,
                          spec, seed=5, domain=domain)
        predicted = model.predict(held_out[..., None], verbose=0).argmax(axis=1)
        results[scale] = (np.mean(predicted == 0), np.mean(predicted == held_out_labels), fit)
    assert results[0.0][0] > 0.5
    assert results[1.0][0] < 0.2
    assert results[1.0][1] > results[0.0][1] + 0.2
    assert "domain_loss" not in results[0.0][2]["history"]
    losses = results[1.0][2]["history"]["domain_loss"]
    assert len(losses) == 8
    assert len(results[1.0][2]["history"]["val_accuracy"]) == 8
    # The exported model is the classifier alone: the domain head adds no weight to it.
    assert [w.shape for w in model.get_weights()] == \
        [w.shape for w in build_model(49, 40, 4, architecture, seed=3).get_weights()]
