"""Full-integer int8 export, LiteRT inference over many windows, and the TFLite Micro arena size."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARENA_STEP_BYTES = 256


def export_int8(model: Any, representative: np.ndarray, path: Path) -> bytes:
    """Convert a Keras model to a .tflite whose input, output and every op are int8.

    The batch dimension stays resizable (-1 in the shape signature), so the runtime can run
    several windows in one invoke.
    """
    import tempfile

    import tensorflow as tf

    def samples() -> Any:
        for window in representative:
            yield [window[None, ..., None].astype(np.float32)]

    # A SavedModel freezes the variables; a concrete function of the live Keras model would
    # leave READ_VARIABLE ops that the calibrator cannot run.
    with tempfile.TemporaryDirectory(prefix="kwstream-export-") as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        flatbuffer = converter.convert()
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(flatbuffer)
    temporary.replace(path)
    return flatbuffer


def quantization_of(path: Path) -> dict[str, Any]:
    """Return the input and output tensors' scale, zero point, dtype and shape signature."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    detail_in = interpreter.get_input_details()[0]
    detail_out = interpreter.get_output_details()[0]
    return {
        "input_scale": float(detail_in["quantization"][0]),
        "input_zero_point": int(detail_in["quantization"][1]),
        "input_dtype": np.dtype(detail_in["dtype"]).name,
        "input_shape": [int(v) for v in detail_in["shape_signature"]],
        "output_scale": float(detail_out["quantization"][0]),
        "output_zero_point": int(detail_out["quantization"][1]),
        "output_dtype": np.dtype(detail_out["dtype"]).name,
        "output_shape": [int(v) for v in detail_out["shape_signature"]],
    }


def op_types(path: Path) -> list[str]:
    """Return the builtin op names of the model, as LiteRT's analyzer lists them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return sorted({detail["op_name"] for detail in interpreter._get_ops_details()})


def quantize_input(windows: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Quantize float windows (n, rows, bands) as the runtime does: round, add zero point, clip."""
    values = np.round(windows / scale) + zero_point
    return np.clip(values, -128, 127).astype(np.int8)


def run_litert(path: Path, windows: np.ndarray, batch: int = 256,
               reference_kernels: bool = False) -> np.ndarray:
    """Run the int8 model on float windows (n, rows, bands) and return dequantized posteriors."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if reference_kernels:
        interpreter = Interpreter(model_path=str(path),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    else:
        interpreter = Interpreter(model_path=str(path))
    detail_in = interpreter.get_input_details()[0]
    detail_out = interpreter.get_output_details()[0]
    in_scale, in_zero = detail_in["quantization"]
    out_scale, out_zero = detail_out["quantization"]
    rank = len(detail_in["shape"])
    outputs = []
    current = -1
    for start in range(0, len(windows), batch):
        chunk = quantize_input(windows[start:start + batch], in_scale, in_zero)
        if rank == 4:
            chunk = chunk[..., None]
        if chunk.shape[0] != current:
            interpreter.resize_tensor_input(detail_in["index"], list(chunk.shape))
            interpreter.allocate_tensors()
            current = chunk.shape[0]
        interpreter.set_tensor(detail_in["index"], chunk)
        interpreter.invoke()
        raw = interpreter.get_tensor(detail_out["index"]).astype(np.float32)
        outputs.append((raw - out_zero) * out_scale)
    if not outputs:
        return np.zeros((0, int(detail_out["shape"][-1])), dtype=np.float32)
    return np.concatenate(outputs)


def tflm_interpreter(path: Path, arena_size: int) -> Any:
    from tflite_micro import runtime

    return runtime.Interpreter.from_file(str(path), arena_size=arena_size)


def measure_arena(path: Path, low: int = 4096, high: int = 256 * 1024) -> int | None:
    """Find the smallest TFLite Micro arena (to ARENA_STEP_BYTES) that allocates and runs.

    Returns None when the ``tflite_micro`` package is missing. The search is a bisection:
    an arena that allocates stays large enough when it grows.
    """
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        log.warning("tflite_micro is not installed; the card gets no arena size")
        return None
    rows_input = None

    def fits(size: int) -> bool:
        nonlocal rows_input
        try:
            interpreter = tflm_interpreter(path, size)
            detail = interpreter.get_input_details(0)
            if rows_input is None:
                rows_input = np.zeros(detail["shape"], dtype=detail["dtype"])
            interpreter.set_input(rows_input, 0)
            interpreter.invoke()
            return True
        except (RuntimeError, ValueError):
            return False

    if not fits(high):
        raise RuntimeError(f"{path} does not run under TFLite Micro even with a "
                           f"{high}-byte arena")
    while high - low > ARENA_STEP_BYTES:
        middle = (low + high) // 2 // ARENA_STEP_BYTES * ARENA_STEP_BYTES
        if middle <= low:
            break
        if fits(middle):
            high = middle
        else:
            low = middle
    return high
