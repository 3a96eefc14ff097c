"""Run an int8 keyword model through the TFLite interpreter.

The interpreter comes from ai-edge-litert; tflite-runtime and ``tensorflow.lite`` are
fallbacks. Every interpreter failure is turned into :class:`ModelError` by one helper, so the
caller sees which file failed and why, never a bare runtime exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kwstream.errors import ModelCardError, ModelError
from kwstream.modelcard import ModelCard, load_card

log = logging.getLogger(__name__)

TFLITE_MAGIC = b"TFL3"


def _interpreter_factory() -> tuple[str, Callable[..., Any]]:
    """Return the name and the Interpreter class of the first TFLite runtime installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return "ai-edge-litert", Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return "tflite-runtime", Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf  # type: ignore[import-not-found]

        return "tensorflow", tf.lite.Interpreter
    except ImportError as error:
        raise ModelError(
            "no TFLite runtime found: install ai-edge-litert (or tflite-runtime)"
        ) from error


@contextmanager
def _interpreter_errors(model_path: Path, action: str) -> Iterator[None]:
    """Translate the interpreter's exceptions into ModelError naming the file and the action."""
    try:
        yield
    except ModelError:
        raise
    except (RuntimeError, ValueError, TypeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ModelError(f"{model_path}: {action} failed: {message}") from error


@dataclass(frozen=True)
class TensorQuantization:
    scale: float
    zero_point: int


class KeywordModel:
    """One keyword model and its card, checked against each other before any audio is read.

    ``predict`` takes normalised feature windows and returns posteriors. Several windows can
    go through one ``invoke`` (the batch dimension is resized); each window's posterior is
    the same as when it runs alone.
    """

    def __init__(self, path: Path, threads: int = 1, card: ModelCard | None = None) -> None:
        self.path = Path(path)
        self.card = card if card is not None else load_card(self.path)
        if threads < 1:
            raise ModelError(f"TFLite threads must be >= 1, got {threads}")
        head = self.path.read_bytes()[:8]
        if len(head) < 8 or head[4:8] != TFLITE_MAGIC:
            raise ModelError(f"{self.path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
        self.runtime, interpreter_class = _interpreter_factory()
        with _interpreter_errors(self.path, "loading the model"):
            self._interpreter = interpreter_class(model_path=str(self.path), num_threads=threads)
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._check_against_card()
        self.input_quantization = TensorQuantization(*self._input["quantization"])
        self.output_quantization = TensorQuantization(*self._output["quantization"])
        self._batch = int(self._input["shape"][0])
        self._input_rank = len(self._input["shape"])

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    def _check_against_card(self) -> None:
        frontend = self.card.frontend
        shape = tuple(int(x) for x in self._input["shape"])
        expected = (frontend.window_rows, frontend.num_bands)
        if len(shape) not in (3, 4) or shape[1:3] != expected or (len(shape) == 4 and shape[3] != 1):
            raise ModelCardError(
                f"{self.path}: model input shape {list(shape)} does not match the card's frontend "
                f"({frontend.window_rows} rows x {frontend.num_bands} bands)"
            )
        if self._input["dtype"] != np.int8 or self._output["dtype"] != np.int8:
            raise ModelError(
                f"{self.path}: expected int8 input and output tensors, got "
                f"{np.dtype(self._input['dtype']).name} and {np.dtype(self._output['dtype']).name}"
            )
        classes = int(self._output["shape"][-1])
        if classes != len(self.card.labels):
            raise ModelCardError(
                f"{self.path}: model has {classes} outputs but the card lists "
                f"{len(self.card.labels)} labels"
            )

    def _resize(self, batch: int) -> None:
        shape = [batch, self.card.frontend.window_rows, self.card.frontend.num_bands]
        if self._input_rank == 4:
            shape.append(1)
        with _interpreter_errors(self.path, f"resizing the input to batch {batch}"):
            self._interpreter.resize_tensor_input(self._input["index"], shape)
            self._interpreter.allocate_tensors()
        self._batch = batch

    def quantize(self, windows: np.ndarray) -> np.ndarray:
        """Quantize float windows with the input tensor's scale and zero point."""
        q = self.input_quantization
        scaled = np.round(windows / q.scale) + q.zero_point
        return np.clip(scaled, -128, 127).astype(np.int8)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Return posteriors (n, labels) for normalised windows (n, rows, bands)."""
        count = windows.shape[0]
        if count == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        if count != self._batch:
            self._resize(count)
        data = self.quantize(windows)
        if self._input_rank == 4:
            data = data[..., np.newaxis]
        with _interpreter_errors(self.path, "inference"):
            self._interpreter.set_tensor(self._input["index"], data)
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output["index"])
        q = self.output_quantization
        return ((raw.astype(np.float32) - q.zero_point) * q.scale).reshape(count, -1)
