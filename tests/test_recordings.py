"""Recorded speech as _unknown_ data: the [[recordings]] recipe table and its clips."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from kwstream.errors import RecipeError
from kwstream.training import augment
from kwstream.training.dataset import KIND_CLIP, KIND_EXCERPT, collect_items, recording_items
from kwstream.training.recipe import load_recipe

TINY_RECIPE = Path(__file__).parent / "data" / "tiny.toml"
ROOT = Path(__file__).resolve().parent.parent


def _speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Return a voiced-sounding signal: 140 Hz and 700 Hz tones, modulated at 3 Hz, in faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * augment.SAMPLE_RATE)) / augment.SAMPLE_RATE
    tone = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 700 * t)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * tone * envelope + rng.normal(0, 0.01, t.size)).astype(np.float32)


def _write(path: Path, audio: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, augment.SAMPLE_RATE)
    return path


def _recipe(tmp_path: Path, tables: str, allison_dir: str = "") -> Path:
    text = TINY_RECIPE.read_text().replace('allison_dir = ""', f'allison_dir = "{allison_dir}"')
    path = tmp_path / "recorded.toml"
    path.write_text(text + "\n" + tables)
    return path


def _table(name: str, files: list[str], extra: str = "") -> str:
    quoted = ", ".join(f'"{f}"' for f in files)
    return f'[[recordings]]\nname = "{name}"\nfiles = [{quoted}]\n{extra}\n'


def test_recordings_parsed_with_patterns_and_exclusions(tmp_path: Path) -> None:
    speaker = tmp_path / "speaker"
    for name in ("a.wav", "b.wav", "9_p.wav"):
        _write(speaker / name, _speech_like(0.5))
    _write(tmp_path / "other" / "a.wav", _speech_like(0.5))
    recipe = load_recipe(_recipe(tmp_path, _table(
        "june", [f"{speaker}/*.wav"], 'exclude = ["9_p.wav"]\ncopies = 3')
        + _table("carlo", [f"{tmp_path}/**/a.wav"], 'exclude = ["*/speaker/*"]\n'
                 'split = "validation"')))
    june, carlo = recipe.recordings
    assert june.key == "recording:june"
    assert june.files == (str(speaker / "a.wav"), str(speaker / "b.wav"))
    assert (june.split, june.copies) == ("train", 3)
    assert (carlo.split, carlo.copies) == ("validation", None)
    assert carlo.files == (str(tmp_path / "other" / "a.wav"),)


@pytest.mark.parametrize(("table", "message"), [
    (_table("x", ["/nonexistent/*.wav"]), r"recordings\[0\]\.files pattern /nonexistent/\*\.wav "
                                           r"matches no file"),
    (_table("x", []), r"recordings\[0\]\.files is empty"),
    (_table("x", ["{wav}"], 'exclude = ["*.wav"]'), r"recordings\[0\]\.exclude leaves none"),
    (_table("x", ["{wav}"], 'split = "holdout"'), r"recordings\[0\]\.split must be one of"),
    (_table("a b", ["{wav}"]), r"recordings\[0\]\.name must be ASCII letters"),
    ('[[recordings]]\nname = "june\\n"\nfiles = ["{wav}"]\n', r"recordings\[0\]\.name must be"),
    ('[[recordings]]\nfiles = ["{wav}"]\n', r"recordings\[0\]\.name is missing"),
    ('[[recordings]]\nname = "x"\nfile = ["{wav}"]\n', r"unknown key\(s\) recordings\[0\]\.file"),
    (_table("x", ["{dir}"]), r"recordings\[0\]\.files pattern .* matches no file; .* is a folder"),
    (_table("x", ["{wav}"], 'split = "test"\ncopies = 2'), r"recordings\[0\]\.copies applies to "
                                                           r"training clips only"),
    (_table("x", ["{wav}"], "copies = 0"), r"recordings\[0\]\.copies must be in \[1, 100\]"),
    (_table("x", ["{wav}"]) + _table("y", ["{dir}/*.wav"]), r"recordings\[1\]\.files includes "
                                                         r".*word\.wav, which recording 'x'"),
    (_table("x", ["{wav}"]) + _table("x", ["{wav}"]), r"recordings\[1\]\.name 'x' is listed"),
    (_table("x", ["{wav}"], "speaker = 1"), r"unknown key\(s\) recordings\[0\]\.speaker"),
    (_table("x", ["{wav}"], "copies = -2"), r"recordings\[0\]\.copies must be in"),
    ('recordings = "x"\n', r"recordings must be a list of tables"),
])
def test_bad_recordings_are_named(tmp_path: Path, table: str, message: str) -> None:
    wav = _write(tmp_path / "word.wav", _speech_like(0.5))
    # TOML wants the top-level key before the first table; append after the recipe's tables
    # only what is a table.
    text = table.replace("{wav}", str(wav)).replace("{dir}", str(tmp_path))
    if text.startswith("recordings ="):
        path = tmp_path / "recorded.toml"
        path.write_text(text + TINY_RECIPE.read_text())
    else:
        path = _recipe(tmp_path, text)
    with pytest.raises(RecipeError, match=rf"recorded\.toml: {message}"):
        load_recipe(path)


def test_recordings_need_the_unknown_label(tmp_path: Path) -> None:
    wav = _write(tmp_path / "word.wav", _speech_like(0.5))
    path = _recipe(tmp_path, _table("x", [str(wav)]))
    path.write_text(path.read_text().replace('"_silence_", "_unknown_", ', '"_silence_", '))
    with pytest.raises(RecipeError, match="recordings.*_unknown_"):
        load_recipe(path)


def test_evaluation_speaker_is_refused(tmp_path: Path) -> None:
    sounds = tmp_path / "sounds"
    _write(sounds / "en_US_f_Allison" / "hello.wav", _speech_like(0.5))
    _write(sounds / "es_MX_f_Allison" / "digits" / "hola.wav", _speech_like(0.5))
    _write(sounds / "fr_CA_f_June" / "bonjour.wav", _speech_like(0.5))
    (sounds / "en").symlink_to(sounds / "en_US_f_Allison")
    allison = str(sounds / "en")
    for folder in ("en", "en_US_f_Allison", "es_MX_f_Allison/digits"):
        path = _recipe(tmp_path, _table("x", [f"{sounds / folder}/*.wav"]), allison)
        with pytest.raises(RecipeError, match=r"recordings\[0\]\.files includes .*spoken by "
                                              r"the speaker of the evaluation prompts"):
            load_recipe(path)
    recipe = load_recipe(_recipe(tmp_path, _table("june", [f"{sounds}/fr_CA_f_June/*.wav"]),
                                 allison))
    assert [r.name for r in recipe.recordings] == ["june"]
    # The error names the recipe's own evaluation folder.
    path = _recipe(tmp_path, _table("x", [f"{sounds}/en/*.wav"]), allison)
    with pytest.raises(RecipeError, match=rf"evaluation prompts \({re.escape(allison)}\)"):
        load_recipe(path)


@pytest.mark.skipif(not Path("/usr/share/asterisk/sounds/en/digits/1.g722").is_file(),
                    reason="needs asterisk-core-sounds-en-g722")
def test_default_evaluation_prompts_always_refused(tmp_path: Path) -> None:
    # The reference stream and the comparison suite use these prompts whatever the recipe's
    # allison_dir sets, so a recipe without its own evaluation cannot train on them either.
    path = _recipe(tmp_path, _table("x", ["/usr/share/asterisk/sounds/en/digits/1.g722"]))
    with pytest.raises(RecipeError, match=r"includes .*1\.g722, spoken by the speaker"):
        load_recipe(path)


def test_recording_items_are_words_and_excerpts(tmp_path: Path) -> None:
    short = _write(tmp_path / "short.wav", _speech_like(0.5))
    long = _write(tmp_path / "long.wav", _speech_like(2.2, seed=1))
    almost = _write(tmp_path / "almost.wav", _speech_like(0.97, seed=2))
    silent = _write(tmp_path / "silent.wav", np.zeros(8000, np.float32))
    recipe = load_recipe(_recipe(tmp_path, _table(
        "x", [str(short), str(long), str(almost), str(silent)], 'split = "test"')))
    items = recording_items(recipe.recordings[0], label=1, processes=1)
    kinds = [item.kind for item in items]
    # Sorted files: almost (one padded excerpt), long (excerpts every 0.5 s), short (a word);
    # the silent file gives nothing.
    long_excerpts = (35200 - augment.CLIP_SAMPLES) // 8000 + 1
    assert kinds == [KIND_EXCERPT] * (1 + long_excerpts) + [KIND_CLIP]
    assert all(item.audio.size == augment.CLIP_SAMPLES for item in items[:-1])
    assert all(item.voice == "recording:x" and item.label == 1 for item in items)
    # The recordings join the split they name, after any synthesized speech.
    grouped = collect_items(recipe, [])
    assert [item.voice for item in grouped["test"]][:len(items)] == ["recording:x"] * len(items)
    assert not any(item.voice == "recording:x" for item in grouped["train"])


def test_all_silent_recordings_are_an_error(tmp_path: Path) -> None:
    from kwstream.training.dataset import load_recordings

    for name in ("a.wav", "b.wav"):
        _write(tmp_path / "quiet" / name, np.zeros(8000, np.float32))
    recipe = load_recipe(_recipe(tmp_path, _table("quiet", [f"{tmp_path}/quiet/*.wav"])))
    with pytest.raises(RecipeError, match=r"recorded\.toml: recordings\[0\] \(quiet\): all 2 "
                                          r"recordings of 'quiet' are empty or silent"):
        load_recordings(recipe, processes=1)


def test_near_silent_recordings_are_left_out(tmp_path: Path) -> None:
    hiss = np.random.default_rng(0).normal(0, 10 ** (-75 / 20), 16000).astype(np.float32)
    _write(tmp_path / "hiss.wav", hiss)
    _write(tmp_path / "word.wav", _speech_like(0.5))
    _write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    recipe = load_recipe(_recipe(tmp_path, _table("x", [f"{tmp_path}/*.wav"])))
    items = recording_items(recipe.recordings[0], label=1, processes=1)
    assert [item.kind for item in items] == [KIND_CLIP]


def test_model_cache_key_covers_recorded_files(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kwstream.training.pipeline import _recording_digests

    wav = _write(tmp_path / "word.wav", _speech_like(0.5))
    recipe = load_recipe(_recipe(tmp_path, _table("x", [str(wav)])))
    before = _recording_digests(recipe)
    # The recipe's path typed relative to the working directory gives the same key.
    monkeypatch.chdir(tmp_path.parent)
    relative = load_recipe(_recipe(tmp_path, _table("x", ["word.wav"])).relative_to(
        tmp_path.parent))
    assert _recording_digests(relative) == before
    _write(wav, _speech_like(0.5, seed=9))
    assert _recording_digests(recipe) != before
    assert len(before) == 1


def test_corrupt_recording_is_named(tmp_path: Path) -> None:
    corrupt = tmp_path / "prompt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    recipe = load_recipe(_recipe(tmp_path, _table("x", [str(corrupt)])))
    with pytest.raises(RecipeError, match=r"recording .*prompt\.wav cannot be read"):
        recording_items(recipe.recordings[0], label=1, processes=1)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_undecodable_g722_recording_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "prompt.g722"
    broken.write_bytes(b"")
    recipe = load_recipe(_recipe(tmp_path, _table("x", [str(broken)])))
    with pytest.raises(RecipeError, match=r"all 1 recordings of 'x' are empty or silent"):
        recording_items(recipe.recordings[0], label=1, processes=1)


# The Debian package of each folder that a committed recipe records from.
RECORDING_PACKAGES = {"/usr/share/asterisk/sounds/fr_CA_f_June/": "asterisk-core-sounds-fr-g722",
                      "/usr/share/asterisk/sounds/it_IT_m_Carlo/": "asterisk-core-sounds-it-g722",
                      "/usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU/": "asterisk-core-sounds-ru-g722",
                      "/usr/share/asterisk/sounds/fr/": "asterisk-prompt-fr-armelle",
                      "/usr/share/klettres/": "klettres-data",
                      "/usr/share/ktuberling/": "ktuberling-data"}


@pytest.mark.parametrize("recipe_path", sorted((ROOT / "models" / "recipes").glob("*.toml")),
                         ids=lambda path: path.name)
def test_bootstrap_installs_recipe_recordings(recipe_path: Path) -> None:
    import tomllib

    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    tables = tomllib.loads(recipe_path.read_text()).get("recordings", [])
    packages = set()
    for pattern in (pattern for table in tables for pattern in table["files"]):
        owners = [package for folder, package in RECORDING_PACKAGES.items()
                  if pattern.startswith(folder)]
        assert owners, (f"{recipe_path.name}: add the Debian package that holds {pattern} "
                        "to RECORDING_PACKAGES")
        packages.update(owners)
    missing = packages - set(script.split())
    assert not missing, f"bootstrap.sh lacks {sorted(missing)}"


def test_file_name_with_glob_characters(tmp_path: Path) -> None:
    take = _write(tmp_path / "take[1].wav", _speech_like(0.5))
    recipe = load_recipe(_recipe(tmp_path, _table("x", [str(take)])))
    assert recipe.recordings[0].files == (str(take),)


def test_relative_exclude_starts_at_recipe_folder(tmp_path: Path) -> None:
    for name in ("a.wav", "b.wav"):
        _write(tmp_path / "speech" / name, _speech_like(0.5))
    recipe = load_recipe(_recipe(tmp_path, _table("x", ["speech/*.wav"],
                                                  'exclude = ["speech/a.wav"]')))
    assert recipe.recordings[0].files == (str(tmp_path / "speech" / "b.wav"),)


@pytest.mark.parametrize("recipe_path", sorted((ROOT / "models" / "recipes").glob("*.toml")),
                         ids=lambda path: path.name)
def test_committed_recipes_load(recipe_path: Path) -> None:
    recipe = load_recipe(recipe_path)
    assert recipe.voices


def test_relative_patterns_start_at_recipe_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "speech" / "a.wav", _speech_like(0.5))
    path = _recipe(tmp_path, _table("x", ["speech/*.wav"]))
    monkeypatch.chdir("/")
    recipe = load_recipe(path)
    assert recipe.recordings[0].files == (str(tmp_path / "speech" / "a.wav"),)


def test_model_card_page_names_recorded_speech(tmp_path: Path) -> None:
    import dataclasses

    from kwstream.modelcard import load_card
    from kwstream.training.report import write_markdown

    shipped = load_card(ROOT / "models" / "kws20.tflite")
    write_markdown(shipped, tmp_path / "synthetic.md")
    assert "no recording of a person is used" in (tmp_path / "synthetic.md").read_text()
    data = {**shipped.data, "recordings": {"recording:june": 452}}
    write_markdown(dataclasses.replace(shipped, data=data), tmp_path / "recorded.md")
    page = (tmp_path / "recorded.md").read_text()
    assert "no recording of a person" not in page
    assert "recorded speech of real speakers" in page
    assert "recording:june, 452 files" in page
    assert "Keywords trained on synthetic voices only" in page
    metrics = {key: value for key, value in shipped.metrics.items() if key != "allison"}
    write_markdown(dataclasses.replace(shipped, metrics=metrics), tmp_path / "unchecked.md")
    unchecked = (tmp_path / "unchecked.md").read_text()
    assert "not checked on real speech" in unchecked
    assert "The only real-speech check" not in unchecked
