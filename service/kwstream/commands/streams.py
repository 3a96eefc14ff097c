"""``kwstream streams``: build labeled reference streams and cut 1-second clips from them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from kwstream.errors import ConfigError
from kwstream.labels import read_labels
from kwstream.streams import (
    EXTRACT_MODES,
    NOISE_COLORS,
    default_cache_dir,
    extract_clips,
    load_recipe,
    make_stream,
)

log = logging.getLogger(__name__)

# NOTE: the default recipe exists only in a source checkout; the wheel does not carry bench/.
DEFAULT_RECIPE = Path(__file__).resolve().parents[3] / "bench" / "streams" / "allison.toml"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "streams", help="build labeled reference streams; cut 1-second clips",
        description="Build long labeled reference streams from recordings, and cut 1-second "
        "clips around their labeled words.",
    )
    actions = parser.add_subparsers(dest="streams_command", metavar="ACTION", required=True)

    make = actions.add_parser(
        "make", help="mix a labeled stream from a recipe",
        description="Mix keyword recordings and non-keyword speech into background noise at "
        "random gaps; write 16 kHz mono 16-bit audio (WAV or FLAC, by suffix) and a label file. "
        "The same recipe, options and seed give the same bytes.",
    )
    make.add_argument("--out", type=Path, required=True, metavar="STREAM.wav",
                      help="audio file to write (.wav or .flac)")
    make.add_argument("--labels-out", type=Path, required=True, metavar="STREAM.csv",
                      help="label file to write (label,start_ms,end_ms)")
    make.add_argument("--duration-s", type=float, required=True, metavar="S",
                      help="stream duration in seconds")
    make.add_argument("--seed", type=int, required=True, metavar="N",
                      help="seed of every random choice")
    make.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, metavar="FILE",
                      help=f"stream recipe (default {DEFAULT_RECIPE.name}: Allison's digits)")
    make.add_argument("--snr-db", type=float, metavar="X",
                      help="speech RMS over noise RMS in dB (default: the recipe's)")
    make.add_argument("--unknown-share", type=float, metavar="F",
                      help="share of the words that are non-keyword speech, 0 to 1")
    make.add_argument("--noise", choices=[*NOISE_COLORS, "none"],
                      help="background noise color, or none")
    make.add_argument("--speech-dbfs", type=float, metavar="DB",
                      help="RMS level of a word in dB relative to full scale")
    make.add_argument("--level-jitter-db", type=float, metavar="DB",
                      help="each word's level varies uniformly within +-DB")
    make.add_argument("--min-gap-ms", type=float, metavar="MS",
                      help="minimum pause between two words, in milliseconds")
    make.add_argument("--max-gap-ms", type=float, metavar="MS",
                      help="maximum pause between two words, in milliseconds")
    make.add_argument("--cache-dir", type=Path, default=default_cache_dir(), metavar="DIR",
                      help="cache of decoded G.722 recordings (default %(default)s)")
    make.set_defaults(handler=run_make)

    extract = actions.add_parser(
        "extract", help="cut 1-second clips around the labeled words",
        description="Cut a 1-second clip around each labeled keyword into OUT/LABEL/ and "
        "write OUT/index.csv. silence: the word alone, centred and padded with zeros. "
        "context: the second centred on the word, neighbouring audio included.",
    )
    extract.add_argument("--mode", choices=EXTRACT_MODES, required=True)
    extract.add_argument("--audio", type=Path, required=True, metavar="STREAM.wav",
                         help="16 kHz mono stream")
    extract.add_argument("--labels", type=Path, required=True, metavar="STREAM.csv",
                         help="its label file")
    extract.add_argument("--out", type=Path, required=True, metavar="DIR",
                         help="output folder")
    extract.add_argument("--with-unknown", action="store_true",
                         help="also cut the _unknown_ words, into OUT/_unknown_/")
    extract.set_defaults(handler=run_extract)


def run_make(args: argparse.Namespace) -> int:
    if args.duration_s <= 0:
        raise ConfigError(f"--duration-s must be positive, got {args.duration_s}")
    recipe = load_recipe(args.recipe)
    mix = recipe.mix.with_overrides(
        snr_db=args.snr_db, unknown_share=args.unknown_share, noise=args.noise,
        speech_dbfs=args.speech_dbfs, level_jitter_db=args.level_jitter_db,
        min_gap_ms=args.min_gap_ms, max_gap_ms=args.max_gap_ms,
    )
    summary = make_stream(recipe, args.out, args.labels_out, args.duration_s, args.seed, mix,
                          args.cache_dir)
    print(f"wrote {args.out} ({summary.duration_s:.1f} s, {summary.keywords} keywords, "
          f"{summary.unknown} _unknown_, noise {mix.noise} at {mix.snr_db:g} dB SNR) and "
          f"{args.labels_out}", file=sys.stderr)
    return 0


def run_extract(args: argparse.Namespace) -> int:
    labels = read_labels(args.labels)
    index = extract_clips(args.audio, labels, args.out, args.mode, args.with_unknown)
    count = len(index.read_text().splitlines()) - 1
    print(f"wrote {count} clips ({args.mode} mode) and {index}", file=sys.stderr)
    return 0
