"""Spot keywords in a WAV file with pocketsphinx's keyphrase search and write kwstream events.

Runs in the separate environment made by ``bench/setup-peers.sh`` (pocketsphinx 5.x, which
ships an English acoustic model and the CMU dictionary). The file is fed to the decoder in
blocks, as a live stream would be. Every detection becomes one JSON line in kwstream's event
schema, so ``kwstream score`` scores it with the same rule as kwstream's own events:

    .venv-peers/bin/python bench/pocketsphinx_peer.py stream.wav --events ps.jsonl \\
        --threshold 1e-20
    .venv/bin/kwstream score --events ps.jsonl --labels stream.csv --duration-s 600

``--threshold`` applies one detection threshold to every keyword; ``--keyphrase-file`` takes
pocketsphinx's own list format, one ``phrase /threshold/`` a line, for a threshold per
keyword. A lower threshold (1e-40) accepts more detections than a higher one (1e-5).

The cost (wall and CPU seconds from the first block to the last, decoder loading excluded,
as ``kwstream replay`` measures itself) is printed on stdout as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

SAMPLE_RATE = 16000
FRAME_MS = 10
"""pocketsphinx's feature frame shift: segment frame indices count 10 ms steps."""
MODEL_ID = "pocketsphinx"
KEYWORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KEYPHRASE_LINE = re.compile(r"^\s*(?P<phrase>[^/]+?)\s*/(?P<threshold>[^/]+)/\s*$")


def read_pcm(path: Path) -> np.ndarray:
    audio, rate = soundfile.read(str(path), dtype="int16")
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise SystemExit(f"{path}: expected {SAMPLE_RATE} Hz mono audio, got {rate} Hz with "
                         f"shape {audio.shape}; convert it with sox or ffmpeg first")
    return audio


def keyphrase_lines(keywords: list[str], threshold: float) -> str:
    if not (threshold > 0 and math.isfinite(threshold)):
        raise SystemExit(f"--threshold must be a positive number such as 1e-20, got {threshold}")
    return "".join(f"{keyword} /{threshold:g}/\n" for keyword in keywords)


def check_keyphrase_file(path: Path) -> list[str]:
    """Return the phrases of a keyphrase list; exit naming the line of an invalid row.

    pocketsphinx 5.1.1 gives a row without a threshold its default ``kws_threshold`` (1e-30)
    without a warning, which would hide a typing error in a threshold sweep.
    """
    phrases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = KEYPHRASE_LINE.match(line)
        if match is None:
            raise SystemExit(f"{path}:{number}: expected 'phrase /threshold/', got {line!r}")
        try:
            value = float(match["threshold"])
        except ValueError:
            raise SystemExit(f"{path}:{number}: invalid threshold {match['threshold']!r}") from None
        if not value > 0:
            raise SystemExit(f"{path}:{number}: threshold must be positive, got {value}")
        phrases.append(match["phrase"])
    if not phrases:
        raise SystemExit(f"{path}: no keyphrases")
    return phrases


class Spotter:
    """A pocketsphinx keyphrase search that turns its detections into kwstream events.

    The search lists every detection of the current utterance, in detection order, on each
    ``seg()`` call, so :meth:`collect` emits only the entries after the ones it already
    emitted. Segment frame indices restart with each utterance; ``utterance_start_ms`` is
    the stream time of frame 0.
    """

    def __init__(self, keyphrase_path: Path) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(kws=str(keyphrase_path), loglevel="FATAL")
        self.events: list[dict] = []
        self.utterances = 0
        self.utterance_start_ms = 0.0
        self._emitted = 0

    def start(self, start_ms: float) -> None:
        self.decoder.start_utt()
        self.utterance_start_ms = start_ms
        self.utterances += 1
        self._emitted = 0

    def end(self) -> None:
        self.decoder.end_utt()
        self.collect()

    def collect(self) -> int:
        """Emit the detections found since the last call; return how many the utterance has."""
        # seg() returns None, not an empty iterator, before the first word of an utterance.
        segments = list(self.decoder.seg() or ())
        for segment in segments[self._emitted :]:
            # end_frame is inclusive, so the keyword ends one frame shift after its start.
            time_ms = self.utterance_start_ms + (segment.end_frame + 1) * FRAME_MS
            self.events.append({"keyword": segment.word.strip(), "score": round(segment.prob, 4),
                                "time_ms": round(time_ms, 1), "model": MODEL_ID,
                                "shadow": False})
        self._emitted = len(segments)
        return len(segments)


def spot_endpointed(spotter: Spotter, pcm: np.ndarray) -> None:
    """Search only the speech regions that pocketsphinx's Endpointer finds, one utterance each.

    The Endpointer runs pocketsphinx's voice activity detector over a 0.3 s window. Silence
    between regions is never searched, which makes this mode cheaper than the continuous one.
    """
    from pocketsphinx import Endpointer

    endpointer = Endpointer()
    data = pcm.tobytes()
    frame_bytes = endpointer.frame_bytes
    # NOTE: the last partial frame (under 30 ms) is not searched, because Endpointer takes
    # whole frames only.
    for offset in range(0, len(data) - frame_bytes + 1, frame_bytes):
        was_in_speech = endpointer.in_speech
        speech = endpointer.process(data[offset : offset + frame_bytes])
        if speech is None:
            continue
        if not was_in_speech:
            spotter.start(endpointer.speech_start * 1000)
        spotter.decoder.process_raw(speech)
        if not endpointer.in_speech:
            spotter.end()
    if endpointer.in_speech:
        spotter.end()


def spot_continuous(spotter: Spotter, pcm: np.ndarray, block_ms: int,
                    max_detections: int) -> None:
    """Search the whole stream as few long utterances, fed in blocks of ``block_ms``.

    An utterance ends after a block that brings its list of detections to ``max_detections``,
    because every ``seg()`` call walks the whole list. A keyword spoken across that block
    boundary can be missed; at thresholds low enough to reach the limit often, false accepts
    far outnumber such misses.
    """
    block_samples = SAMPLE_RATE * block_ms // 1000
    spotter.start(0.0)
    for offset in range(0, pcm.size, block_samples):
        spotter.decoder.process_raw(pcm[offset : offset + block_samples].tobytes())
        if spotter.collect() >= max_detections:
            spotter.end()
            spotter.start((offset + block_samples) / (SAMPLE_RATE / 1000))
    spotter.end()


def spot(pcm: np.ndarray, keyphrase_path: Path, segmentation: str, block_ms: int,
         max_detections: int) -> tuple[list[dict], dict]:
    """Run the keyphrase search over the samples; return the events and the cost."""
    spotter = Spotter(keyphrase_path)
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    if segmentation == "endpointer":
        spot_endpointed(spotter, pcm)
    else:
        spot_continuous(spotter, pcm, block_ms, max_detections)
    wall_s = time.perf_counter() - started_wall
    cpu_s = time.process_time() - started_cpu

    events = sorted(spotter.events, key=lambda event: event["time_ms"])
    audio_s = pcm.size / SAMPLE_RATE
    cost = {
        "utterances": spotter.utterances,
        "audio_seconds": audio_s,
        "wall_seconds": round(wall_s, 3),
        "cpu_seconds": round(cpu_s, 3),
        "realtime_factor": round(audio_s / wall_s, 1),
        "cpu_seconds_per_audio_hour": round(cpu_s / audio_s * 3600, 1),
    }
    return events, cost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", type=Path, help="16 kHz mono WAV or FLAC file")
    parser.add_argument("--events", type=Path, required=True, metavar="JSONL",
                        help="write the detections here, one kwstream event a line")
    thresholds = parser.add_mutually_exclusive_group(required=True)
    thresholds.add_argument("--threshold", type=float, metavar="P",
                            help="detection threshold of every keyword, such as 1e-20")
    thresholds.add_argument("--keyphrase-file", type=Path, metavar="FILE",
                            help="pocketsphinx keyphrase list, one 'phrase /threshold/' a line")
    parser.add_argument("--keywords", default=",".join(KEYWORDS), metavar="A,B,C",
                        help="keywords searched with --threshold (default: the 20 keywords "
                             "of kwstream's shipped model)")
    parser.add_argument("--segmentation", choices=["endpointer", "continuous"],
                        default="continuous",
                        help="endpointer: one utterance per speech region that pocketsphinx's "
                             "Endpointer finds; continuous: search all the audio (default)")
    parser.add_argument("--block-ms", type=int, default=1000, metavar="MS",
                        help="continuous: audio fed to the decoder at once, in milliseconds "
                             "(default 1000)")
    parser.add_argument("--max-detections", type=int, default=500, metavar="N",
                        help="continuous: start a new utterance once one has N detections "
                             "(default 500)")
    args = parser.parse_args()
    if args.block_ms <= 0:
        parser.error(f"--block-ms must be positive, got {args.block_ms}")
    if args.max_detections <= 0:
        parser.error(f"--max-detections must be positive, got {args.max_detections}")

    pcm = read_pcm(args.wav)
    with tempfile.TemporaryDirectory() as directory:
        if args.keyphrase_file is not None:
            keyphrase_path = args.keyphrase_file
            phrases = check_keyphrase_file(keyphrase_path)
        else:
            phrases = [word for word in args.keywords.split(",") if word]
            keyphrase_path = Path(directory) / "keyphrases.list"
            keyphrase_path.write_text(keyphrase_lines(phrases, args.threshold), encoding="utf-8")
        events, cost = spot(pcm, keyphrase_path, args.segmentation, args.block_ms,
                            args.max_detections)

    args.events.parent.mkdir(parents=True, exist_ok=True)
    with args.events.open("w", encoding="utf-8") as file:
        for event in events:
            file.write(json.dumps(event, separators=(",", ":")) + "\n")
    print(json.dumps({"peer": MODEL_ID, "threshold": args.threshold, "keyphrases": len(phrases),
                      "segmentation": args.segmentation, "events": len(events), **cost}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
