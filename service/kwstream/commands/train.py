"""``kwstream train``: synthesize a corpus, train, export an int8 model and write its card."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "train",
        help="train a keyword model from a recipe",
        description="Synthesize speech with offline TTS voices, train a DS-CNN, export a "
                    "full-integer int8 .tflite and write its model card beside it.",
    )
    parser.add_argument("--recipe", type=Path, required=True,
                        help="training recipe (TOML), such as models/recipes/kws20.toml")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for synthesized speech (default: $KWSTREAM_CACHE or "
                             "~/.cache/kwstream)")
    parser.add_argument("--out", type=Path, default=Path("out/models"),
                        help="folder that receives ID.tflite and ID.json (default: out/models, "
                             "so a run never overwrites a shipped model by accident)")
    parser.add_argument("--processes", type=int, default=None,
                        help="worker processes for synthesis and features (default: all cores)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from kwstream.errors import RecipeError
    from kwstream.training.dataset import default_cache_dir
    from kwstream.training.recipe import load_recipe

    if args.processes is not None and args.processes < 1:
        raise RecipeError(f"--processes must be at least 1, got {args.processes}")
    recipe = load_recipe(args.recipe)
    cache_dir = args.cache or default_cache_dir()
    if args.out.exists() and not args.out.is_dir():
        raise RecipeError(f"--out {args.out} exists and is not a folder")
    # TensorFlow is imported only here, so `kwstream --help` and the runtime never load it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kwstream.training import pipeline

    model_path = pipeline.run(recipe, cache_dir, args.out, args.processes)
    log.info("model written to %s", model_path)
    return 0
