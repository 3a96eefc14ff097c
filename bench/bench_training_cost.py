"""Measure what a training run costs here: synthesis per engine and training throughput.

For each recipe, the script plans its synthesis jobs, draws utterances of every engine at
random, speaks them with one process (each voice's draw in one call, as a synthesis job does)
and reports seconds of one core per utterance. It then trains the recipe's architecture for
one epoch on random windows, after a warm-up epoch, and reports training windows per second
with every core. From these it estimates the recipe's synthesis from an empty cache and, when
the model card of an earlier run of the recipe gives the number of training windows, its
training step.

    .venv/bin/python bench/bench_training_cost.py --recipe models/recipes/kws20.toml \\
        --card models/kws20.json --out bench/results/training-cost.json \\
        --markdown docs/benchmarks.md

The neural voices need the ``voices`` extra. Run it on an idle machine: every measurement is
of compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from kwstream.errors import RecipeError
from kwstream.training.corpus import plan_jobs
from kwstream.training.engines import synthesize
from kwstream.training.recipe import load_recipe

BEGIN, END = "<!-- training-cost:begin -->", "<!-- training-cost:end -->"


def synthesis_costs(jobs: list, samples: int, seed: int) -> dict[str, dict]:
    """Return, per engine, the utterance count of ``jobs`` and measured core seconds each."""
    by_engine: dict[str, list] = defaultdict(list)
    for job in jobs:
        by_engine[job.voice.engine].extend((job.voice, u) for u in job.utterances)
    generator = random.Random(seed)
    costs = {}
    for engine, pairs in sorted(by_engine.items()):
        draw = generator.sample(pairs, min(samples, len(pairs)))
        by_voice: dict = defaultdict(list)
        for voice, utterance in draw:
            by_voice[voice].append(utterance)
        # One call first, so a neural engine's model load is not counted.
        first_voice, first = draw[0]
        synthesize(engine, first_voice.name, [first], first_voice.options)
        started = time.perf_counter()
        for voice, utterances in by_voice.items():
            synthesize(engine, voice.name, utterances, voice.options)
        seconds = (time.perf_counter() - started) / len(draw)
        costs[engine] = {"utterances": len(pairs), "sampled": len(draw),
                         "core_seconds_per_utterance": seconds,
                         "core_minutes": seconds * len(pairs) / 60.0}
        print(f"{engine}: {seconds:.3f} s per utterance, {len(pairs)} utterances, "
              f"{costs[engine]['core_minutes']:.1f} core-minutes", flush=True)
    return costs


def training_rate(recipe, windows: int) -> float:
    """Return training windows per second for the recipe's model and training settings."""
    from kwstream.training.model import band_centres_mel, build_model, train_model

    frontend = recipe.frontend
    rows, bands, classes = 49, frontend.num_bands, len(recipe.labels)
    generator = np.random.default_rng(0)
    x = generator.standard_normal((windows, rows, bands), dtype=np.float32)
    y = generator.integers(0, classes, windows)
    centres = band_centres_mel(frontend.lower_hz, frontend.upper_hz, bands)
    spec = dataclasses.replace(recipe.train, epochs=1)
    model = build_model(rows, bands, classes, recipe.architecture, recipe.seed)
    train_model(model, x[:2048], y[:2048], x[:256], y[:256], classes, spec, 1,
                centres_mel=centres)
    started = time.perf_counter()
    train_model(model, x, y, x[:256], y[:256], classes, spec, 1, centres_mel=centres)
    return windows / (time.perf_counter() - started)


def training_windows(card_path: Path) -> int:
    """Return the training window count that a model card records, or raise ValueError."""
    try:
        card = json.loads(card_path.read_text())
        counts = card["data"]["clips_per_class"]["train"]
        return int(sum(counts.values()))
    except OSError as error:
        raise ValueError(f"{card_path}: cannot read the model card ({error.strerror})") from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{card_path}: not a model card (no data.clips_per_class.train)") \
            from error


def render(results: list[dict], machine: str) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine}; one process per synthesis "
             f"measurement, every core for training.", ""]
    engines = sorted({engine for result in results for engine in result["synthesis"]})
    lines += ["| recipe | " + " | ".join(engines) + " | synthesis, one core | "
              f"synthesis, {results[0]['cores']} cores | training windows/s | training "
              "windows | training estimate |",
              "|---" * (len(engines) + 6) + "|"]
    for result in results:
        cells = []
        for engine in engines:
            cost = result["synthesis"].get(engine)
            cells.append("-" if cost is None else
                         f"{cost['utterances']} x {cost['core_seconds_per_utterance']:.3f} s")
        total = result["synthesis_core_minutes"]
        training = "-"
        if result["training_estimate_minutes"] is not None:
            training = (f"{result['training_estimate_minutes']:.1f} min "
                        f"({result['epochs']} epochs)")
        windows = "-" if result["training_windows"] is None else str(result["training_windows"])
        lines.append(f"| `{result['recipe']}` | " + " | ".join(cells) +
                     f" | {total:.1f} min | {total / result['cores']:.1f} min | "
                     f"{result['training_windows_per_second']:.0f} | {windows} | {training} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, action="append", required=True,
                        help="training recipe (repeat for several)")
    parser.add_argument("--card", type=Path, action="append", default=[],
                        help="model card of an earlier run of each recipe, in the same order, "
                             "for its training window count")
    parser.add_argument("--samples", type=int, default=60,
                        help="utterances drawn per engine (default 60)")
    parser.add_argument("--training-windows", type=int, default=20000,
                        help="random windows in the timed training epoch (default 20000)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path,
                        help="replace the training-cost section of this Markdown file")
    args = parser.parse_args()
    if args.card and len(args.card) != len(args.recipe):
        parser.error(f"{len(args.card)} --card for {len(args.recipe)} --recipe; give one "
                     "card per recipe or none")

    # Every input is checked before the minutes of measurement start.
    try:
        recipes = [load_recipe(path) for path in args.recipe]
        windows_per_recipe = [training_windows(path) for path in args.card] or \
            [None] * len(recipes)
    except (RecipeError, ValueError) as error:
        print(f"bench_training_cost: {error}", file=sys.stderr)
        return 2
    if args.markdown:
        if not args.markdown.is_file():
            print(f"bench_training_cost: {args.markdown} not found", file=sys.stderr)
            return 2
        existing = args.markdown.read_text()
        if BEGIN not in existing or END not in existing:
            print(f"bench_training_cost: {args.markdown}: no {BEGIN} ... {END} section to "
                  "replace", file=sys.stderr)
            return 2

    cores = os.cpu_count() or 1
    machine = f"{platform.machine()}, {cores} cores, Python {platform.python_version()}"

    results = []
    for recipe_path, recipe, windows in zip(args.recipe, recipes, windows_per_recipe, strict=True):
        print(f"{recipe_path}:", flush=True)
        costs = synthesis_costs(plan_jobs(recipe), args.samples, recipe.seed)
        rate = training_rate(recipe, args.training_windows)
        estimate = None if windows is None else windows * recipe.train.epochs / rate / 60.0
        print(f"training: {rate:.0f} windows/s" + (
            "" if estimate is None else f", {windows} windows x {recipe.train.epochs} epochs "
                                        f"= {estimate:.1f} min"), flush=True)
        results.append({
            "recipe": str(recipe_path), "cores": cores, "synthesis": costs,
            "synthesis_core_minutes": sum(c["core_minutes"] for c in costs.values()),
            "training_windows_per_second": rate, "training_windows": windows,
            "epochs": recipe.train.epochs, "training_estimate_minutes": estimate,
        })

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")

    if args.markdown:
        text = args.markdown.read_text()
        section = f"{BEGIN}\n{render(results, machine)}\n{END}"
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text,
                      flags=re.S)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
