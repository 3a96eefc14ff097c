"""The Keras DS-CNN and its training loop. Import only from the training pipeline (TensorFlow)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from kwstream.training.recipe import ArchitectureSpec, TrainSpec

log = logging.getLogger(__name__)


def build_model(rows: int, bands: int, classes: int, spec: ArchitectureSpec,
                seed: int) -> Any:
    """Build a DS-CNN whose input is (batch, rows, bands, 1) and output a softmax over classes.

    ``seed`` seeds the initial weights, so one recipe starts its training from one point.

    Batch normalization follows every convolution, so the converter folds it into the
    convolution weights and the int8 model keeps only CONV_2D, DEPTHWISE_CONV_2D, MEAN and
    SOFTMAX.
    """
    import keras
    from keras import layers

    # Layer names come from global counters and end up in the .tflite, so a second model
    # built in one process would export to other bytes without a fresh session.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(rows, bands, 1), name="features")
    x = layers.Conv2D(spec.first_filters, spec.first_kernel, strides=spec.first_stride,
                      padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for filters, stride in spec.blocks:
        x = layers.DepthwiseConv2D((3, 3), strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(filters, (1, 1), use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    # The classifier is a 1x1 convolution before the average pooling, which equals a dense
    # layer after it. TFLite Micro's int8 FULLY_CONNECTED rounds some outputs one step
    # differently from LiteRT's reference kernel, while CONV_2D and MEAN match exactly.
    x = layers.Dropout(spec.dropout)(x)
    x = layers.Conv2D(classes, (1, 1))(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Softmax()(x)
    return keras.Model(inputs, outputs, name="ds_cnn")


def spec_augment(batch: Any, mask_bands: int, mask_rows: int, seed: int) -> Any:
    """Zero one random band range and one random row range of each window (SpecAugment).

    The ranges are at most ``mask_bands`` bands wide and ``mask_rows`` rows long. Zero is the
    window mean after window_mean normalization, so a mask looks like missing detail.
    """
    import tensorflow as tf

    shape = tf.shape(batch)
    size, rows, bands = shape[0], shape[1], shape[2]

    def band_mask(length: int, axis_size: Any) -> Any:
        width = tf.random.uniform([size, 1], 0, length + 1, dtype=tf.int32)
        room = tf.cast(tf.maximum(axis_size - width, 1), tf.float32)
        start = tf.cast(tf.random.uniform([size, 1]) * room, tf.int32)
        positions = tf.range(axis_size)[None, :]
        return tf.cast((positions >= start) & (positions < start + width), batch.dtype)

    del seed  # tf.random ops draw from the global seed that keras.utils.set_random_seed set
    keep = tf.ones_like(batch)
    if mask_bands:
        keep *= 1.0 - band_mask(mask_bands, bands)[:, None, :, None]
    if mask_rows:
        keep *= 1.0 - band_mask(mask_rows, rows)[:, :, None, None]
    return batch * keep


def warp_bands(batch: Any, warp_range: tuple[float, float], centres_mel: np.ndarray) -> Any:
    """Warp each window along frequency by a random factor (vocal tract length perturbation).

    Band ``b`` of the output takes the log energy at the frequency ``centre_hz[b] / factor``,
    interpolated between the two nearest bands, so a factor above 1 moves formants up. Bands
    whose source lies beyond the first or last band repeat that band.
    """
    import tensorflow as tf

    size = tf.shape(batch)[0]
    bands = len(centres_mel)
    factor = tf.random.uniform([size, 1], warp_range[0], warp_range[1])
    centres_hz = tf.constant(700.0 * np.expm1(centres_mel / 1127.0), tf.float32)[None, :]
    source_mel = 1127.0 * tf.math.log1p(centres_hz / factor / 700.0)
    step = float(centres_mel[1] - centres_mel[0])
    position = tf.clip_by_value((source_mel - float(centres_mel[0])) / step, 0.0, bands - 1.0)
    below = tf.cast(tf.floor(position), tf.int32)
    above = tf.minimum(below + 1, bands - 1)
    weight = (position - tf.cast(below, tf.float32))[:, None, :, None]
    low = tf.gather(batch, below, axis=2, batch_dims=1)
    high = tf.gather(batch, above, axis=2, batch_dims=1)
    return low + (high - low) * weight


def band_centres_mel(lower_hz: float, upper_hz: float, bands: int) -> np.ndarray:
    """Return the centres of the frontend's mel bands on its mel scale (1127 ln(1 + f/700))."""
    from kwstream.frontend import _hz_to_mel

    edges = np.linspace(_hz_to_mel(np.float64(lower_hz)), _hz_to_mel(np.float64(upper_hz)),
                        bands + 2)
    return edges[1:-1]


def gradient_reversal_layer() -> Any:
    """Return a layer that passes its input forward and multiplies the gradient by -scale.

    ``scale`` is a non-trainable weight, so a callback can raise it during training.
    """
    import keras
    import tensorflow as tf

    class GradientReversal(keras.layers.Layer):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.scale = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                         name="scale")

        def call(self, inputs: Any) -> Any:
            scale = tf.convert_to_tensor(self.scale)

            @tf.custom_gradient
            def reverse(values: Any) -> Any:
                return tf.identity(values), lambda upstream: -scale * upstream

            return reverse(inputs)

    return GradientReversal(name="gradient_reversal")


def domain_trainer(model: Any, hidden: int = 64) -> tuple[Any, Any]:
    """Wrap ``model`` in a training model whose second head marks windows recorded or synthesized.

    The head reads the features that feed the classifier through a gradient reversal layer:
    it learns to tell the two domains apart, while the reversed gradient teaches the layers
    below to make them alike (domain-adversarial training). ``model`` itself is unchanged,
    shares every weight with the trainer, and is what gets exported.

    Returns the trainer, whose outputs are ``{"class": ..., "domain": ...}``, and its
    gradient reversal layer.
    """
    import keras
    from keras import layers

    dropout = [layer for layer in model.layers if isinstance(layer, layers.Dropout)][-1]
    reversal = gradient_reversal_layer()
    x = reversal(dropout.input)
    x = layers.GlobalAveragePooling2D(name="domain_pool")(x)
    x = layers.Dense(hidden, activation="relu", name="domain_hidden")(x)
    domain = layers.Dense(1, activation="sigmoid", name="domain")(x)
    return keras.Model(model.input, {"class": model.output, "domain": domain},
                       name="domain_trainer"), reversal


def domain_targets(real: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the domain target and weight of each training window.

    Only ``_unknown_`` windows take part: recorded ones (``real``) have target 1, synthesized
    ones target 0, and each domain gets half of the total weight, whose mean is 1 over the
    windows that take part. Keywords are all synthesized, so a head that also saw them would learn to
    tell keywords from other speech, and the reversed gradient would erase that.
    """
    real = np.asarray(real, dtype=bool)
    unknown = np.asarray(unknown, dtype=bool)
    recorded = real & unknown
    synthesized = ~real & unknown
    weights = np.zeros(real.size, dtype=np.float32)
    taking_part = int(recorded.sum() + synthesized.sum())
    if recorded.any():
        weights[recorded] = taking_part / (2.0 * recorded.sum())
    if synthesized.any():
        weights[synthesized] = taking_part / (2.0 * synthesized.sum())
    return recorded.astype(np.float32)[:, None], weights


def class_weights(labels: np.ndarray, classes: int,
                  factors: dict[int, float] | None = None) -> dict[int, float]:
    """Compute weights that give each class the same total weight, capped at 4x.

    ``factors`` maps a class index to a factor applied after the cap, so a recipe can make
    one keyword count more than the balance gives it.
    """
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    mean = counts[counts > 0].mean()
    weights = {i: float(min(4.0, mean / c)) if c else 1.0 for i, c in enumerate(counts)}
    for index, factor in (factors or {}).items():
        weights[index] *= factor
    return weights


def train_model(model: Any, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                val_y: np.ndarray, classes: int, spec: TrainSpec, seed: int,
                class_factors: dict[int, float] | None = None,
                centres_mel: np.ndarray | None = None,
                soft_targets: np.ndarray | None = None,
                domain: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Train with Adam and a cosine learning-rate decay, keeping the best validation epoch.

    ``soft_targets`` (n, classes), the teachers' mean posterior of each training window, is
    mixed into that window's one-hot target with the weight ``spec.distillation``.

    ``domain`` holds each training window's domain target and weight (:func:`domain_targets`).
    With ``spec.domain_adversarial`` above 0, a domain head learns to tell recorded windows
    from synthesized ones through a gradient reversal layer whose scale rises from 0 to
    ``spec.domain_adversarial`` (see :func:`domain_trainer`).

    Training is deterministic on one machine and TensorFlow version: the same model, data and
    seed give the same weights.

    Returns the per-epoch history, the best epoch and its validation accuracy.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    # Without this, two runs with one seed end with different weights: TensorFlow's threads
    # and the random augmentation inside a parallel map do not keep one order.
    tf.config.experimental.enable_op_determinism()
    steps = int(np.ceil(len(train_x) / spec.batch_size)) * spec.epochs
    schedule = keras.optimizers.schedules.CosineDecay(spec.learning_rate, decay_steps=steps,
                                                      alpha=0.02)
    class_loss = keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing)
    weights = class_weights(train_y, classes, class_factors)
    sample_weight = np.array([weights[int(y)] for y in train_y], dtype=np.float32)
    adversarial = spec.domain_adversarial > 0.0
    if adversarial:
        if domain is None or not np.any(domain[0]):
            raise ValueError("train.domain_adversarial needs recorded training windows; add "
                             "a [[recordings]] table in the train split")
        domain_y, domain_weight = domain
        trainer, reversal = domain_trainer(model)
        trainer.compile(optimizer=keras.optimizers.Adam(schedule),
                        loss={"class": class_loss, "domain": keras.losses.BinaryCrossentropy()},
                        metrics={"class": ["accuracy"]})
    else:
        trainer, reversal = model, None
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=class_loss,
                      metrics=["accuracy"])

    targets = keras.utils.to_categorical(train_y, classes).astype(np.float32)
    if soft_targets is not None and spec.distillation > 0.0:
        if soft_targets.shape != targets.shape:
            raise ValueError(f"soft targets have shape {soft_targets.shape}, the training "
                             f"targets {targets.shape}")
        targets = (1.0 - spec.distillation) * targets + spec.distillation * soft_targets
    slices: tuple[Any, ...]
    if adversarial:
        slices = (train_x[..., None], {"class": targets, "domain": domain_y},
                  {"class": sample_weight, "domain": domain_weight})
    else:
        slices = (train_x[..., None], targets, sample_weight)
    train_set = (
        tf.data.Dataset.from_tensor_slices(slices)
        .shuffle(min(len(train_x), 50000), seed=seed, reshuffle_each_iteration=True)
        .batch(spec.batch_size)
    )
    if spec.warp_range != (1.0, 1.0):
        if centres_mel is None:
            raise ValueError("train.warp_range is set but the frontend's band centres are "
                             "missing")
        train_set = train_set.map(
            lambda x, y, w: (warp_bands(x, spec.warp_range, centres_mel), y, w),
            num_parallel_calls=tf.data.AUTOTUNE)
    if spec.mask_bands or spec.mask_rows:
        train_set = train_set.map(
            lambda x, y, w: (spec_augment(x, spec.mask_bands, spec.mask_rows, seed), y, w),
            num_parallel_calls=tf.data.AUTOTUNE)
    train_set = train_set.prefetch(2)
    val_set = tf.data.Dataset.from_tensor_slices(
        (val_x[..., None], keras.utils.to_categorical(val_y, classes))).batch(512)

    class _Domain(keras.callbacks.Callback):
        """Raise the reversal scale as DANN does and measure validation accuracy on ``model``.

        The trainer has two outputs, so validation runs on the classifier alone here and
        its accuracy goes into the logs under the name the other callbacks read.
        """

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            progress = epoch / max(spec.epochs - 1, 1)
            ramp = 2.0 / (1.0 + np.exp(-10.0 * progress)) - 1.0
            reversal.scale.assign(spec.domain_adversarial * ramp)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if logs is None:
                return
            predicted = model.predict(val_x[..., None], batch_size=512, verbose=0).argmax(axis=1)
            logs["val_accuracy"] = float(np.mean(predicted == val_y))
            logs["accuracy"] = logs.pop("class_accuracy", float("nan"))
            logs["domain_scale"] = float(reversal.scale.numpy())

    class _Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            # With the domain head, "loss" includes the head's loss, so the classifier's own
            # "class_loss" is logged. Keras averages it over batches without weighing a short
            # last batch less.
            domain = (f", domain loss {logs['domain_loss']:.4f} at reversal scale "
                      f"{logs['domain_scale']:.4f}" if "domain_loss" in logs else "")
            log.info("epoch %d/%d: loss %.4f, accuracy %.4f, validation accuracy %.4f%s "
                     "(%.0f s)", epoch + 1, spec.epochs,
                     logs.get("class_loss", logs.get("loss", float("nan"))),
                     logs.get("accuracy", float("nan")), logs.get("val_accuracy", float("nan")),
                     domain, time.monotonic() - self.started)

    class _KeepBest(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best_accuracy = -1.0
            self.best_weights: list[np.ndarray] | None = None
            self.best_epoch = -1

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            accuracy = float((logs or {}).get("val_accuracy", -1.0))
            if accuracy > self.best_accuracy:
                self.best_accuracy = accuracy
                self.best_weights = model.get_weights()
                self.best_epoch = epoch

    keep = _KeepBest()
    callbacks = [_Domain(), _Timer(), keep] if adversarial else [_Timer(), keep]
    history = trainer.fit(train_set, validation_data=None if adversarial else val_set,
                          epochs=spec.epochs, verbose=0, shuffle=False, callbacks=callbacks)
    if keep.best_weights is not None:
        model.set_weights(keep.best_weights)
    log.info("kept the weights of epoch %d (validation accuracy %.4f)", keep.best_epoch + 1,
             keep.best_accuracy)
    return {"history": {k: [float(v) for v in values] for k, values in history.history.items()},
            "best_epoch": keep.best_epoch + 1, "best_validation_accuracy": keep.best_accuracy}
