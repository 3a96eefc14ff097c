from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kwstream.cli import main
from kwstream.errors import RecipeError
from kwstream.labels import read_labels
from kwstream.streams import (
    MARGIN_MS,
    SAMPLE_RATE,
    UnknownRule,
    extract_clips,
    load_recipe,
    make_stream,
    noise_chunks,
    word_span,
)

ALLISON = Path("/usr/share/asterisk/sounds/en")


def tone_word(frequency_hz: float, word_ms: int, silence_ms: int = 200) -> np.ndarray:
    """A synthetic 'word': a tone burst between two stretches of silence."""
    t = np.arange(SAMPLE_RATE * word_ms // 1000) / SAMPLE_RATE
    word = 0.3 * np.sin(2 * np.pi * frequency_hz * t)
    silence = np.zeros(SAMPLE_RATE * silence_ms // 1000)
    return np.concatenate([silence, word, silence]).astype(np.float32)


@pytest.fixture
def wav_recipe(tmp_path: Path) -> Path:
    clips = tmp_path / "clips"
    for label, frequency_hz in (("yes", 440.0), ("no", 660.0)):
        (clips / label).mkdir(parents=True)
        sf.write(str(clips / label / "a.wav"), tone_word(frequency_hz, 400), SAMPLE_RATE)
    # A file named by label at the top level, at another sample rate.
    sf.write(str(clips / "no_b.wav"), tone_word(700.0, 300)[::2], SAMPLE_RATE // 2)
    other = tmp_path / "other"
    other.mkdir()
    sf.write(str(other / "babble.wav"), tone_word(300.0, 700), SAMPLE_RATE)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[keywords]\ndirectory = "clips"\n\n[unknown]\ndirectory = "other"\n\n'
        "[mix]\nunknown_share = 0.3\nmin_gap_ms = 300\nmax_gap_ms = 900\n"
    )
    return recipe


def make(recipe: Path, directory: Path, seed: int = 3, **options: object) -> tuple[Path, Path]:
    audio = directory / "stream.wav"
    labels = directory / "stream.csv"
    directory.mkdir(parents=True, exist_ok=True)
    loaded = load_recipe(recipe)
    mix = loaded.mix.with_overrides(**options)
    make_stream(loaded, audio, labels, 20.0, seed, mix, cache_dir=None)
    return audio, labels


def test_wav_recipe_reads_labels_from_names(wav_recipe: Path) -> None:
    recipe = load_recipe(wav_recipe)

    assert recipe.keywords == ["no", "yes"]
    assert [path.name for path in recipe.keyword_files["no"]] == ["a.wav", "no_b.wav"]
    assert [path.name for path in recipe.unknown_files] == ["babble.wav"]


def test_same_seed_gives_same_bytes(wav_recipe: Path, tmp_path: Path) -> None:
    first_audio, first_labels = make(wav_recipe, tmp_path / "a")
    second_audio, second_labels = make(wav_recipe, tmp_path / "b")
    other_audio, _ = make(wav_recipe, tmp_path / "c", seed=4)

    assert first_audio.read_bytes() == second_audio.read_bytes()
    assert first_labels.read_text() == second_labels.read_text()
    assert first_audio.read_bytes() != other_audio.read_bytes()


def test_stream_format_and_contents(wav_recipe: Path, tmp_path: Path) -> None:
    audio, labels_path = make(wav_recipe, tmp_path)

    info = sf.info(str(audio))
    labels = read_labels(labels_path, ["yes", "no"])
    names = {label.label for label in labels}
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.frames == 20 * SAMPLE_RATE
    assert len(labels) >= 10
    assert names <= {"yes", "no", "_unknown_"}
    assert "_unknown_" in names
    assert all(b.start_ms >= a.end_ms for a, b in zip(labels, labels[1:], strict=False))


def test_labels_span_the_words(wav_recipe: Path, tmp_path: Path) -> None:
    audio, labels_path = make(wav_recipe, tmp_path, noise="none", level_jitter_db=0.0)

    samples, _ = sf.read(str(audio), dtype="int16")
    outside = np.ones(samples.size, dtype=bool)
    margin = SAMPLE_RATE * MARGIN_MS // 1000
    for label in read_labels(labels_path):
        start = round(label.start_ms * SAMPLE_RATE / 1000)
        end = round(label.end_ms * SAMPLE_RATE / 1000)
        word = samples[start:end].astype(np.float64)
        # Tone words at -20 dBFS RMS: every 10 ms frame of the span is loud.
        frames = word[: word.size // 160 * 160].reshape(-1, 160)
        assert np.sqrt(np.mean(frames**2, axis=1)).min() > 0.05 * 32768 * 10 ** (-23 / 20)
        outside[max(0, start - margin):end + margin] = False
    assert not samples[outside].any()


def test_noise_level_follows_snr(wav_recipe: Path, tmp_path: Path) -> None:
    audio, labels_path = make(wav_recipe, tmp_path, snr_db=10.0, speech_dbfs=-20.0)

    samples, _ = sf.read(str(audio), dtype="float64")
    quiet = np.ones(samples.size, dtype=bool)
    for label in read_labels(labels_path):
        quiet[int(label.start_ms * 16) - 800:int(label.end_ms * 16) + 800] = False
    noise_dbfs = 20 * np.log10(np.sqrt(np.mean(samples[quiet] ** 2)))
    assert noise_dbfs == pytest.approx(-30.0, abs=1.0)


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
def test_noise_chunks_have_unit_rms(color: str) -> None:
    rng = np.random.default_rng(0)

    chunks = list(noise_chunks(rng, color, 5 * SAMPLE_RATE + 7, SAMPLE_RATE))

    noise = np.concatenate(chunks)
    assert noise.size == 5 * SAMPLE_RATE + 7
    assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=0.15)


def test_word_span_trims_silence() -> None:
    samples = tone_word(500.0, 300, silence_ms=200)

    start, end = word_span(samples)

    assert (start, end) == (3200, 8000)


def test_extract_silence_mode(wav_recipe: Path, tmp_path: Path) -> None:
    audio, labels_path = make(wav_recipe, tmp_path)
    labels = read_labels(labels_path)

    index = extract_clips(audio, labels, tmp_path / "clips", "silence")

    rows = index.read_text().splitlines()
    keywords = [label for label in labels if label.label != "_unknown_"]
    assert rows[0] == "path,label,start_ms,end_ms,clip_start_ms"
    assert len(rows) == 1 + len(keywords)
    first_path, first_label = rows[1].split(",")[:2]
    clip, rate = sf.read(str(tmp_path / "clips" / first_path), dtype="int16")
    word_samples = round((keywords[0].end_ms - keywords[0].start_ms) * 16)
    padding = (SAMPLE_RATE - word_samples) // 2
    assert first_label == keywords[0].label
    assert (rate, clip.size) == (SAMPLE_RATE, SAMPLE_RATE)
    assert not clip[:padding - 1].any()
    assert not clip[padding + word_samples + 1:].any()
    assert not (tmp_path / "clips" / "_unknown_").exists()


def test_extract_context_mode(wav_recipe: Path, tmp_path: Path) -> None:
    audio, labels_path = make(wav_recipe, tmp_path)
    labels = read_labels(labels_path)
    stream, _ = sf.read(str(audio), dtype="int16")

    index = extract_clips(audio, labels, tmp_path / "clips", "context", include_unknown=True)

    rows = [row.split(",") for row in index.read_text().splitlines()[1:]]
    assert len(rows) == len(labels)
    for path, label, start_ms, end_ms, clip_start_ms in rows:
        assert path.startswith(f"{label}/")
        clip, _ = sf.read(str(tmp_path / "clips" / path), dtype="int16")
        first = round(float(clip_start_ms) * 16)
        centre_ms = (float(start_ms) + float(end_ms)) / 2
        assert clip.size == SAMPLE_RATE
        assert abs(float(clip_start_ms) + 500 - centre_ms) <= 1
        if 0 <= first and first + SAMPLE_RATE <= stream.size:
            assert np.array_equal(clip, stream[first:first + SAMPLE_RATE]), path


def test_unknown_rule_excludes_keyword_names() -> None:
    rule = UnknownRule(
        exclude_words=frozenset({"no", "go", "one", "to", "on", "up"}),
        exclude=("digits/*",),
    )

    for name in ("conf-onlyone.g722", "demo-nogo.g722", "vm-no.g722", "digits/10.g722",
                 "digits/day-0.g722", "vm-nobodyavail.g722", "vm-tocallback.g722"):
        assert rule.reason_to_exclude(name) is not None, name
    for name in ("hello.g722", "activated.g722", "letters/a.g722"):
        assert rule.reason_to_exclude(name) is None, name


def test_unknown_rule_reads_transcripts() -> None:
    rule = UnknownRule(
        exclude_words=frozenset({"one", "to", "for"}),
        transcripts={"hello": "Hello.", "press": "Press 1 for sales.", "wait": "Please hold",
                     "beep": "[a beep tone]", "later": "Try to call later"},
    )

    assert rule.reason_to_exclude("hello.g722") is None
    assert rule.reason_to_exclude("wait.g722") is None
    assert "digits" in str(rule.reason_to_exclude("press.g722"))
    assert "note" in str(rule.reason_to_exclude("beep.g722"))
    assert "'to'" in str(rule.reason_to_exclude("later.g722"))
    assert rule.reason_to_exclude("absent.g722") == "no transcript"


def test_recipe_errors_name_the_entry(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[keywords]\nyes = ["missing/*.wav"]\n')

    with pytest.raises(RecipeError, match="keywords.yes: 'missing/\\*.wav' matches no file"):
        load_recipe(recipe)

    recipe.write_text('[keywords]\ndirectory = "."\n[mix]\nunknown_share = 2\n')
    (tmp_path / "yes.wav").write_bytes(b"")
    with pytest.raises(RecipeError, match="unknown_share must be in"):
        load_recipe(recipe)


@pytest.mark.skipif(
    not (ALLISON / "digits" / "0.g722").is_file() or shutil.which("ffmpeg") is None,
    reason="needs asterisk-core-sounds-en-g722 and ffmpeg",
)
def test_allison_recipe_through_command(tmp_path: Path) -> None:
    recipe = tmp_path / "allison.toml"
    recipe.write_text(
        f'root = "{ALLISON}"\n[keywords]\nzero = ["digits/0.g722"]\none = ["digits/1.g722"]\n'
        '[unknown]\ninclude = ["hello.g722", "activated.g722", "conf-onlyone.g722"]\n'
        'exclude_words = ["one", "zero"]\n'
    )
    out = tmp_path / "stream.flac"
    labels_out = tmp_path / "stream.csv"

    status = main(["streams", "make", "--recipe", str(recipe), "--out", str(out),
                   "--labels-out", str(labels_out), "--duration-s", "15", "--seed", "1",
                   "--cache-dir", str(tmp_path / "cache")])

    labels = read_labels(labels_out, ["zero", "one"])
    assert status == 0
    assert sf.info(str(out)).frames == 15 * SAMPLE_RATE
    assert labels
    # The G.722 decodes are cached for the next run.
    assert len(list((tmp_path / "cache").glob("*.s16"))) == 4
    assert main(["streams", "extract", "--mode", "silence", "--audio", str(out),
                 "--labels", str(labels_out), "--out", str(tmp_path / "clips")]) == 0
