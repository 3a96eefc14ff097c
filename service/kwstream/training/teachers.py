"""Teacher models for knowledge distillation: their mean posterior on each training window.

A teacher is any trained kwstream model whose card has the recipe's labels and frontend. The
mean posterior of several models is softer than any one model's, and on held-out voices it is
usually right more often. A student trained towards it learns which windows are ambiguous.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from kwstream.errors import ModelCardError, RecipeError
from kwstream.modelcard import load_card
from kwstream.training import export
from kwstream.training.recipe import Recipe

log = logging.getLogger(__name__)


def display_path(recipe: Recipe, teacher: Path) -> str:
    """Return a teacher's path relative to the recipe's folder, as recipes write it."""
    return os.path.relpath(teacher, recipe.path.parent)


def check_teachers(recipe: Recipe) -> list[dict[str, Any]]:
    """Check every teacher of the recipe and return its path and sha256.

    A teacher must load with its card and run under LiteRT, and the card must list the
    recipe's labels in the recipe's order and the recipe's frontend, since the teacher reads
    the student's windows. Paths in the result are relative to the recipe's folder.
    """
    from ai_edge_litert.interpreter import Interpreter

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
            theirs, ours = card.frontend.to_dict(), recipe.frontend.to_dict()
            differences = ", ".join(f"{key} = {theirs[key]!r} (recipe: {ours[key]!r})"
                                    for key in ours if theirs.get(key) != ours[key])
            raise RecipeError(f"{where}: its frontend differs from the recipe's [frontend]: "
                              f"{differences}")
        try:
            Interpreter(model_path=str(teacher)).allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise RecipeError(f"{where}: LiteRT cannot load it: {error}") from error
        found.append({"path": display_path(recipe, teacher), "sha256": card.sha256})
    return found


def mean_posteriors(recipe: Recipe, windows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the teachers' mean int8 posterior (n, classes) on float windows (n, rows, bands)."""
    started = time.monotonic()
    total = np.zeros((len(windows), len(recipe.labels)), dtype=np.float64)
    for teacher in recipe.train.teachers:
        posteriors = export.run_litert(teacher, windows)
        agreement = float(np.mean(posteriors.argmax(axis=1) == labels))
        log.info("teacher %s: top class is the label on %.1f%% of %d training windows",
                 display_path(recipe, teacher), 100.0 * agreement, len(windows))
        total += posteriors
    mean = total / len(recipe.train.teachers)
    # Dequantized int8 outputs sum to 1 only within a few quantization steps, so the mean is
    # scaled to sum to 1 as a training target must.
    mean /= np.maximum(mean.sum(axis=1, keepdims=True), 1e-9)
    log.info("teachers' mean: top class is the label on %.1f%% of training windows (%.0f s)",
             100.0 * np.mean(mean.argmax(axis=1) == labels), time.monotonic() - started)
    return mean.astype(np.float32)
