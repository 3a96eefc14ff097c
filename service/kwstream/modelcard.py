"""Model cards: the JSON file beside each ``NAME.tflite`` that describes how to run it.

A card carries the labels, the frontend parameters, the smoother defaults and per-keyword
thresholds, and what training measured. The runtime refuses a model whose card is missing,
whose sha256 differs from the file, or whose frontend the runtime cannot reproduce.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kwstream.errors import ModelCardError
from kwstream.frontend import FrontendParams

SILENCE_LABEL = "_silence_"
UNKNOWN_LABEL = "_unknown_"
NON_KEYWORD_LABELS = (SILENCE_LABEL, UNKNOWN_LABEL)
CARD_SCHEMA_VERSION = 1
DEFAULT_MODEL_NAME = "kws20"


@dataclass(frozen=True)
class SmootherSettings:
    """Posterior smoother and detector settings."""

    average_window_ms: int = 300
    """Smoothed score = mean of the posteriors of the inferences within this span."""
    suppression_ms: int = 1000
    """After a detection, no event for any keyword for this long."""
    minimum_count: int = 2
    """Posteriors that must be in the averaging span before a score is trusted."""
    inference_stride: int = 2
    """Hops between two inferences (1 = every 20 ms)."""

    def __post_init__(self) -> None:
        for name in ("average_window_ms", "suppression_ms"):
            if getattr(self, name) < 0:
                raise ModelCardError(f"smoother {name} must be >= 0, got {getattr(self, name)}")
        if self.minimum_count < 1:
            raise ModelCardError(f"smoother minimum_count must be >= 1, got {self.minimum_count}")
        if self.inference_stride < 1:
            raise ModelCardError(
                f"smoother inference_stride must be >= 1, got {self.inference_stride}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmootherSettings:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelCardError(f"unknown smoother setting(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass
class ModelCard:
    """Everything the runtime needs to know about one model file, and what training measured."""

    id: str
    version: str
    labels: list[str]
    frontend: FrontendParams
    smoother: SmootherSettings
    thresholds: dict[str, float]
    sha256: str
    size_bytes: int
    arena_bytes: int | None = None
    quantization: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = CARD_SCHEMA_VERSION

    @property
    def keywords(self) -> list[str]:
        """Labels that are keywords, in model output order."""
        return [label for label in self.labels if label not in NON_KEYWORD_LABELS]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["frontend"] = self.frontend.to_dict()
        data["smoother"] = asdict(self.smoother)
        return data

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> ModelCard:
        required = ("id", "version", "labels", "frontend", "smoother", "thresholds", "sha256",
                    "size_bytes")
        missing = [key for key in required if key not in data]
        if missing:
            raise ModelCardError(f"{source}: missing key(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelCardError(f"{source}: unknown key(s) {', '.join(unknown)}")
        if data.get("schema_version", CARD_SCHEMA_VERSION) != CARD_SCHEMA_VERSION:
            raise ModelCardError(
                f"{source}: schema_version {data['schema_version']} is not supported "
                f"(expected {CARD_SCHEMA_VERSION})"
            )
        labels = data["labels"]
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ModelCardError(f"{source}: labels must be a non-empty list of strings")
        if len(set(labels)) != len(labels):
            raise ModelCardError(f"{source}: labels contain duplicates: {labels}")
        try:
            frontend = FrontendParams.from_dict(dict(data["frontend"]))
            smoother = SmootherSettings.from_dict(dict(data["smoother"]))
        except (TypeError, ValueError) as error:
            raise ModelCardError(f"{source}: {error}") from error
        except ModelCardError as error:
            raise ModelCardError(f"{source}: {error}") from error
        thresholds = {str(k): float(v) for k, v in dict(data["thresholds"]).items()}
        keywords = [label for label in labels if label not in NON_KEYWORD_LABELS]
        missing_thresholds = [k for k in keywords if k not in thresholds]
        if missing_thresholds:
            raise ModelCardError(
                f"{source}: no threshold for keyword(s) {', '.join(missing_thresholds)}"
            )
        for keyword, value in thresholds.items():
            if keyword not in keywords:
                raise ModelCardError(f"{source}: threshold for unknown keyword {keyword!r}")
            if not 0.0 < value <= 1.0:
                raise ModelCardError(
                    f"{source}: threshold for {keyword!r} must be in (0, 1], got {value}"
                )
        fields = dict(data)
        fields.update(frontend=frontend, smoother=smoother, thresholds=thresholds)
        return cls(**fields)


def card_path_for(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_card(model_path: Path) -> ModelCard:
    """Load and check the card beside ``model_path``; raise ModelCardError naming the file."""
    card_path = card_path_for(model_path)
    if model_path.is_dir():
        raise ModelCardError(f"{model_path} is a folder; name the model's .tflite file")
    if not model_path.is_file():
        raise ModelCardError(f"model file not found: {model_path}")
    if not card_path.is_file():
        raise ModelCardError(f"model card not found: {card_path} (expected beside {model_path})")
    try:
        data = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelCardError(f"{card_path}: not a readable JSON model card: {error}") from error
    if not isinstance(data, dict):
        raise ModelCardError(f"{card_path}: a model card must be a JSON object")
    card = ModelCard.from_dict(data, source=str(card_path))
    actual = file_sha256(model_path)
    if actual != card.sha256:
        raise ModelCardError(
            f"{card_path}: sha256 {card.sha256} does not match {model_path} ({actual})"
        )
    return card


def default_model_path() -> Path:
    """Path of the model shipped inside the package."""
    return Path(str(resources.files("kwstream.models").joinpath(f"{DEFAULT_MODEL_NAME}.tflite")))
