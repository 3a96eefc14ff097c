"""The shipped model under TFLite Micro gives exactly the outputs of LiteRT's reference kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kwstream.frontend import feature_windows
from kwstream.modelcard import load_card

tflite_micro = pytest.importorskip("tflite_micro", reason="needs the tflite-micro package")
tflm_runtime = tflite_micro.runtime

MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "kws20.tflite"
WINDOWS = 120


def _test_windows(card_frontend, count: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Feature windows of synthetic audio: chirps, tone bursts and noise at several levels."""
    rng = np.random.default_rng(1234)
    sample_rate = card_frontend.sample_rate
    times = np.arange(sample_rate * 4) / sample_rate
    chirp = np.sin(2 * np.pi * (200 + 900 * times) * times)
    bursts = np.sin(2 * np.pi * 440 * times) * (np.sin(2 * np.pi * 3 * times) > 0.3)
    noise = rng.standard_normal(times.size)
    signal = np.concatenate([0.3 * chirp, 0.1 * bursts, 0.01 * noise, 0.5 * chirp * noise])
    windows = feature_windows(signal.astype(np.float32), card_frontend, stride_rows=3)
    picks = rng.choice(len(windows), size=min(count, len(windows)), replace=False)
    return windows[np.sort(picks)]


def _quantize(windows: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(windows / scale) + zero_point, -128, 127).astype(np.int8)


@pytest.fixture(scope="module")
def quantized_inputs() -> np.ndarray:
    card = load_card(MODEL_PATH)
    windows = _test_windows(card.frontend, WINDOWS)
    inputs = _quantize(windows, card.quantization["input_scale"],
                       card.quantization["input_zero_point"])
    rank = len(card.quantization["input_shape"])
    return inputs[..., None] if rank == 4 else inputs


def _litert_outputs(inputs: np.ndarray, reference: bool) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    interpreter = Interpreter(model_path=str(MODEL_PATH),
                              experimental_op_resolver_type=resolver)
    detail_in = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail_in["index"], list(inputs.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail_in["index"], inputs)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def _tflm_outputs(inputs: np.ndarray, arena_bytes: int) -> np.ndarray:
    interpreter = tflm_runtime.Interpreter.from_file(str(MODEL_PATH), arena_size=arena_bytes)
    outputs = []
    for window in inputs:
        interpreter.set_input(window[None], 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0)[0].copy())
    return np.stack(outputs)


@pytest.mark.parametrize("model_path", sorted(MODEL_PATH.parent.rglob("*.tflite")),
                         ids=lambda path: path.name)
def test_card_limits_hold(model_path: Path) -> None:
    card = load_card(model_path)
    assert card.size_bytes == model_path.stat().st_size
    assert card.size_bytes <= 64 * 1024
    # TFLite Micro must allocate the model in the arena size that its card states.
    assert card.arena_bytes is not None
    assert card.arena_bytes <= 48 * 1024
    tflm_runtime.Interpreter.from_file(str(model_path), arena_size=card.arena_bytes)


def test_tflm_equals_reference_kernels(quantized_inputs: np.ndarray) -> None:
    card = load_card(MODEL_PATH)
    assert card.arena_bytes is not None
    assert len(quantized_inputs) >= 100
    reference = _litert_outputs(quantized_inputs, reference=True)
    micro = _tflm_outputs(quantized_inputs, card.arena_bytes)
    assert micro.dtype == np.int8
    differing = np.flatnonzero(np.any(micro != reference, axis=1))
    assert differing.size == 0, f"windows {differing[:10].tolist()} differ"


def test_default_kernels_mostly_agree(quantized_inputs: np.ndarray) -> None:
    reference = _litert_outputs(quantized_inputs, reference=True)
    default = _litert_outputs(quantized_inputs, reference=False)
    agreement = float(np.mean(reference.argmax(axis=1) == default.argmax(axis=1)))
    # Optimized kernels round differently; the card records the measured agreement.
    assert agreement >= 0.9, f"default kernels agree on the top class for only {agreement:.1%}"
