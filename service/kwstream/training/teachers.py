"""Teacher models for knowledge distillation: their mean posterior on each training window.

A teacher is any trained kwstream model whose card has the recipe's labels and frontend. The
mean posterior of several models is softer than any one model's, and on held-out voices it is
usually right more often. A student trained towards it learns which windows are ambiguous.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from kwstream.errors import ModelCardError, RecipeError
from kwstream.modelcard import file_sha256, load_card
from kwstream.training import export
from kwstream.training.recipe import Recipe

log = logging.getLogger(__name__)


def check_teachers(recipe: Recipe) -> list[dict[str, Any]]:
    """Check every teacher of the recipe and return its path and sha256.

    A teacher must load with its card, and the card must list the recipe's labels in the
    recipe's order and the recipe's frontend, since the teacher reads the student's windows.
    """
    found = []
    for index, teacher in enumerate(recipe.train.teachers):
        where = f"{recipe.path}: train.teachers[{index}] ({teacher})"
        try:
            card = load_card(teacher)
        except ModelCardError as error:
            raise RecipeError(f"{where}: {error}") from error
        if tuple(card.labels) != tuple(recipe.labels):
            raise RecipeError(f"{where}: its labels {list(card.labels)} differ from "
                              f"model.labels {list(recipe.labels)}")
        if card.frontend != recipe.frontend:
            raise RecipeError(f"{where}: its frontend {card.frontend.to_dict()} differs from "
                              f"the recipe's {recipe.frontend.to_dict()}")
        found.append({"path": str(teacher), "sha256": file_sha256(teacher)})
    return found


def mean_posteriors(recipe: Recipe, windows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the teachers' mean int8 posterior (n, classes) on float windows (n, rows, bands)."""
    started = time.monotonic()
    total = np.zeros((len(windows), len(recipe.labels)), dtype=np.float64)
    for teacher in recipe.train.teachers:
        posteriors = export.run_litert(teacher, windows)
        log.info("teacher %s: top class is the label on %.1f%% of %d training windows",
                 teacher.name, 100.0 * np.mean(posteriors.argmax(axis=1) == labels),
                 len(windows))
        total += posteriors
    mean = total / len(recipe.train.teachers)
    # Dequantized int8 outputs sum to 1 only within a few quantization steps, so the mean is
    # scaled to sum to 1 as a training target must.
    mean /= np.maximum(mean.sum(axis=1, keepdims=True), 1e-9)
    log.info("teachers' mean: top class is the label on %.1f%% of training windows (%.0f s)",
             100.0 * np.mean(mean.argmax(axis=1) == labels), time.monotonic() - started)
    return mean.astype(np.float32)


def digest_parts(recipe: Recipe) -> list[str]:
    """Return the teachers' sha256 values, so a changed teacher file trains anew."""
    return [file_sha256(Path(teacher)) for teacher in recipe.train.teachers]
