"""Write the small untrained int8 models that tests/test_compare.py compares.

The weights are random (seeded), so the models recognize nothing. The tests check the
comparison's plumbing and decisions, not accuracy. The output layer's weights are scaled
up so that the posteriors vary with the input and the models fire now and then. Run from
the repository root with the training extra installed (TensorFlow):

    .venv/bin/python tests/data/compare/make_models.py

The same TensorFlow version writes the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kwstream.frontend import FrontendParams
from kwstream.modelcard import ModelCard, SmootherSettings, file_sha256
from kwstream.training import export
from kwstream.training.model import build_model
from kwstream.training.recipe import ArchitectureSpec

HERE = Path(__file__).resolve().parent
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

MODELS = {
    # name: (labels, number of mel bands, weight seed)
    "digits-a": (["_silence_", "_unknown_", *DIGITS], 40, 1),
    "digits-b": (["_silence_", "_unknown_", *DIGITS], 40, 2),
    # Another label set and another frontend: 32 bands instead of 40.
    "mixed-32": (["_silence_", "_unknown_", "one", "two", "three", "yes"], 32, 3),
}
THRESHOLD = 0.5
OUTPUT_GAIN = 400.0


def write_model(name: str, labels: list[str], num_bands: int, seed: int) -> Path:
    import keras

    frontend = FrontendParams(num_bands=num_bands)
    spec = ArchitectureSpec(first_filters=8, blocks=((8, 1), (16, 2)))
    model = build_model(frontend.window_rows, num_bands, len(labels), spec, seed)
    # An untrained DS-CNN gives nearly uniform posteriors; larger output weights make its
    # posteriors vary with the input, so that it detects something.
    # The output layer is the last 1x1 convolution, before the average pooling.
    output = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D][-1]
    kernel, bias = output.get_weights()
    output.set_weights([kernel * OUTPUT_GAIN, bias])
    rng = np.random.default_rng(seed)
    representative = rng.normal(0.0, 2.0, (64, frontend.window_rows, num_bands)).astype(np.float32)
    path = HERE / f"{name}.tflite"
    export.export_int8(model, representative, path)
    keywords = [label for label in labels if not label.startswith("_")]
    card = ModelCard(
        id=name,
        version="test",
        labels=labels,
        frontend=frontend,
        smoother=SmootherSettings(),
        thresholds=dict.fromkeys(keywords, THRESHOLD),
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
        arena_bytes=export.measure_arena(path),
        quantization=export.quantization_of(path),
        recipe={"note": "untrained test model written by tests/data/compare/make_models.py"},
    )
    card.write(path.with_suffix(".json"))
    return path


def main() -> int:
    for name, (labels, num_bands, seed) in MODELS.items():
        path = write_model(name, labels, num_bands, seed)
        print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
