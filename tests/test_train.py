"""End-to-end training of a tiny model: synthesis, features, training, int8 export, card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kwstream.cli import main
from kwstream.errors import RecipeError
from kwstream.modelcard import load_card
from kwstream.training import evaluate
from kwstream.training.recipe import load_recipe

TINY_RECIPE = Path(__file__).parent / "data" / "tiny.toml"

needs_voices = pytest.mark.skipif(
    any(shutil.which(name) is None for name in ("espeak-ng", "flite", "pico2wave")),
    reason="needs the espeak-ng, flite and pico2wave binaries",
)


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@needs_voices
@pytest.mark.skipif(not _tensorflow_available(), reason="needs the train extra (TensorFlow)")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_train_tiny_model_end_to_end(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    status = main(["train", "--recipe", str(TINY_RECIPE), "--cache", str(tmp_path / "cache"),
                   "--out", str(out_dir)])
    assert status == 0

    model_path = out_dir / "tiny.tflite"
    card = load_card(model_path)
    assert card.labels == ["_silence_", "_unknown_", "yes", "no", "up"]
    assert set(card.thresholds) == {"yes", "no", "up"}
    assert card.size_bytes == model_path.stat().st_size
    assert card.quantization["input_dtype"] == "int8"
    assert card.quantization["output_dtype"] == "int8"
    assert card.quantization["input_shape"][0] == -1
    assert card.data["voices"]["test"] == ["flite:rms"]

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    ops = {detail["op_name"] for detail in interpreter._get_ops_details()}
    assert "QUANTIZE" not in ops
    assert "DEQUANTIZE" not in ops
    for detail in interpreter.get_tensor_details():
        if detail["name"] and detail["dtype"] == np.float32:
            pytest.fail(f"float32 tensor {detail['name']} in an int8 model")

    # Every voice spoke the letters, and the training voices spoke them and the confusable
    # words once more.
    speech = tmp_path / "cache" / "speech"
    letters = [path.name for path in speech.rglob("_unknown_-word-letters-*.npz")]
    assert len([name for name in letters if "-again-" not in name]) == 5
    assert len([name for name in letters if "-again-" in name]) == 3
    assert len(list(speech.rglob("_unknown_-word-confusable0-*.npz"))) == 3

    metrics = json.loads(model_path.with_suffix(".json").read_text())["metrics"]
    assert metrics["test_voices"]["clips"] > 0
    assert 0.0 <= metrics["test_voices"]["accuracy"] <= 1.0
    per_voice = metrics["test_voices"]["per_voice"]
    assert set(per_voice) == {"flite:rms", "noise"}
    assert per_voice["flite:rms"]["clips"] + per_voice["noise"]["clips"] == \
        metrics["test_voices"]["clips"]
    assert set(per_voice["flite:rms"]["weakest_keywords"]) <= {"yes", "no", "up"}
    assert "flite:rms" in model_path.with_suffix(".md").read_text()
    # The card's thresholds come from the validation stream; the clip rule only seeded them.
    chosen = metrics["validation_stream"]["thresholds"]["per_keyword"]
    assert {name: row["threshold"] for name, row in chosen.items()} == card.thresholds
    assert set(metrics["clip_thresholds"]) == {"yes", "no", "up"}
    assert "false accepts per hour" in metrics["threshold_rule"]
    # The cache was empty, so every synthesis job ran and its time is in the card.
    assert metrics["synthesis_jobs"]["cached"] == 0
    assert metrics["synthesis_jobs"]["total"] > 0
    assert metrics["training"]["reused_model"] is False
    assert metrics["training"]["train_seconds"] > 0

    # A second run of the same recipe finds its speech and its Keras model in the cache, and
    # its card records the reuse.
    second_dir = tmp_path / "second"
    assert main(["train", "--recipe", str(TINY_RECIPE), "--cache", str(tmp_path / "cache"),
                 "--out", str(second_dir)]) == 0
    second = json.loads((second_dir / "tiny.json").read_text())["metrics"]
    assert second["synthesis_jobs"]["cached"] == second["synthesis_jobs"]["total"]
    assert second["training"]["reused_model"] is True
    assert second["training"]["train_seconds"] == metrics["training"]["train_seconds"]
    assert "Keras model came from the cache" in (second_dir / "tiny.md").read_text()
    assert (second_dir / "tiny.tflite").read_bytes() == model_path.read_bytes()

    # From another empty cache the recipe synthesizes, trains and exports the same model.
    third_dir = tmp_path / "third"
    assert main(["train", "--recipe", str(TINY_RECIPE), "--cache", str(tmp_path / "cache2"),
                 "--out", str(third_dir)]) == 0
    assert (third_dir / "tiny.tflite").read_bytes() == model_path.read_bytes()

    # The first model teaches a student of the same recipe: its sha256 keys the student's
    # training, so the cached Keras model of the first run is not reused.
    student_recipe = tmp_path / "student.toml"
    student_recipe.write_text(TINY_RECIPE.read_text().replace(
        "[train]\n", f'[train]\nteachers = ["{model_path}"]\ndistillation = 0.5\n', 1))
    student_dir = tmp_path / "student"
    assert main(["train", "--recipe", str(student_recipe), "--cache", str(tmp_path / "cache"),
                 "--out", str(student_dir)]) == 0
    student = json.loads((student_dir / "tiny.json").read_text())["metrics"]["training"]
    assert student["reused_model"] is False
    assert student["distillation"] == 0.5
    assert [row["sha256"] for row in student["teachers"]] == [card.sha256]

    # Recorded speech with a domain head: the head trains beside the classifier and stays out
    # of the exported model, whose tensors match the plain model's.
    import soundfile

    rng = np.random.default_rng(2)
    (tmp_path / "recorded").mkdir()
    for index, seconds in enumerate((0.5, 0.8, 1.6, 2.4)):
        times = np.arange(int(seconds * 16000)) / 16000
        voiced = np.sin(2 * np.pi * (120 + 20 * index) * times) * (0.6 + 0.4 * np.sin(6 * times))
        soundfile.write(tmp_path / "recorded" / f"prompt{index}.wav",
                        (0.3 * voiced + rng.normal(0, 0.01, times.size)).astype(np.float32), 16000)
    adversarial_recipe = tmp_path / "adversarial.toml"
    adversarial_recipe.write_text(TINY_RECIPE.read_text().replace(
        "[train]\nepochs = 1\n", "[train]\nepochs = 2\ndomain_adversarial = 1.0\n", 1)
        + f'\n[[recordings]]\nname = "prompts"\nfiles = ["{tmp_path}/recorded/*.wav"]\n')
    adversarial_dir = tmp_path / "adversarial"
    assert main(["train", "--recipe", str(adversarial_recipe), "--cache", str(tmp_path / "cache"),
                 "--out", str(adversarial_dir)]) == 0
    adversarial = json.loads((adversarial_dir / "tiny.json").read_text())["metrics"]["training"]
    assert adversarial["domain_adversarial"]["scale"] == 1.0
    assert adversarial["domain_adversarial"]["recorded_windows"] > 0
    domain = adversarial["domain_adversarial"]
    assert len(domain["domain_loss_per_epoch"]) == 2
    # DANN's schedule reaches 2 / (1 + exp(-10)) - 1 = 0.99991 of the scale in the last epoch.
    assert domain["scale_per_epoch"] == [0.0, 0.9999]
    assert domain["kept_epoch_scale"] == domain["scale_per_epoch"][adversarial["best_epoch"] - 1]
    assert 0.0 < domain["domain_loss_at_chance"] < np.log(2.0)
    assert "Trained with a domain head" in (adversarial_dir / "tiny.md").read_text()
    plain = Interpreter(model_path=str(model_path)).get_tensor_details()
    with_head = Interpreter(model_path=str(adversarial_dir / "tiny.tflite")).get_tensor_details()
    assert [tuple(d["shape"]) for d in with_head] == [tuple(d["shape"]) for d in plain]
    assert "domain" not in " ".join(detail["name"] for detail in with_head)


def test_recipe_rejects_unknown_engine(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace('engine = "flite"\nname = "rms"',
                                                      'engine = "sapi"\nname = "rms"'))
    with pytest.raises(RecipeError, match="sapi"):
        load_recipe(recipe)


def test_recipe_rejects_empty_labels(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace(
        'labels = ["_silence_", "_unknown_", "yes", "no", "up"]', "labels = []"))
    with pytest.raises(RecipeError, match="labels"):
        load_recipe(recipe)


def test_recipe_rejects_misspelled_key(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace("copies = 1", "copys = 1"))
    with pytest.raises(RecipeError, match="augment.copys"):
        load_recipe(recipe)


def test_recipe_rejects_missing_noise_file(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace(
        "copies = 1", f'copies = 1\nambient_files = ["{tmp_path / "absent.wav"}"]'))
    with pytest.raises(RecipeError, match="absent.wav"):
        load_recipe(recipe)


def _recipe_with_words(tmp_path: Path, name: str, lines: str) -> Path:
    """Write the tiny recipe without letters or repeated confusable words, plus ``lines``."""
    text = "\n".join(line for line in TINY_RECIPE.read_text().splitlines()
                     if not line.startswith(("letters =", "confusable_renditions =")))
    path = tmp_path / name
    path.write_text(text.replace('confusable = ["yet", "now", "cup"]',
                                 f'confusable = ["yet", "now", "cup"]\n{lines}'))
    return path


def test_letters_are_a_job_of_their_own(tmp_path: Path) -> None:
    from kwstream.training.corpus import KIND_LETTERS, plan_jobs

    plain = _recipe_with_words(tmp_path, "plain.toml", "")
    with_letters = _recipe_with_words(tmp_path, "letters.toml", 'letters = ["c", "o", "Q"]')
    with_letters.write_text(with_letters.read_text().replace('"know"]', '"know", "o"]'))
    before = plan_jobs(load_recipe(plain))
    after = plan_jobs(load_recipe(with_letters))

    added = [job for job in after if job.kind == KIND_LETTERS]
    # Every voice that speaks non-keyword words speaks the letters. "o" is an excluded word.
    assert len(added) == 5
    assert {tuple(u.text for u in job.utterances) for job in added} == {("c.", "q.")}
    assert {job.label for job in added} == {"_unknown_"}
    # Adding letters leaves every other job, and so its cached audio, unchanged.
    assert [job.cache_key() for job in after if job.kind != KIND_LETTERS] == \
        [job.cache_key() for job in before]


def test_training_voices_repeat_confusable_words(tmp_path: Path) -> None:
    from kwstream.training.corpus import KIND_CONFUSABLE, plan_jobs

    plain = _recipe_with_words(tmp_path, "plain.toml", "")
    repeated = _recipe_with_words(tmp_path, "repeated.toml", "confusable_renditions = 3")
    before = plan_jobs(load_recipe(plain))
    after = plan_jobs(load_recipe(repeated))

    added = [job for job in after if job.kind.startswith(KIND_CONFUSABLE)]
    # The three training voices speak each word twice more, validation and test voices once.
    assert sorted(job.voice.key for job in added) == ["espeak-ng:en-us", "flite:slt",
                                                     "pico:en-US"]
    for job in added:
        assert sorted(u.text for u in job.utterances) == sorted(["yet.", "now.", "cup."] * 2)
        assert len({(u.speed, u.pitch) for u in job.utterances}) == 6
    assert [job.cache_key() for job in after if not job.kind.startswith(KIND_CONFUSABLE)] == \
        [job.cache_key() for job in before]

    # Letter names are repeated the same way, in a job of their own.
    both = _recipe_with_words(tmp_path, "both.toml",
                              'confusable_renditions = 3\nletters = ["c", "q"]')
    again = [job for job in plan_jobs(load_recipe(both)) if job.kind == "word-letters-again"]
    assert len(again) == 3
    assert sorted(u.text for u in again[0].utterances) == ["c.", "c.", "q.", "q."]


def test_recipe_confusable_renditions_per_engine_and_voice(tmp_path: Path) -> None:
    from kwstream.training.corpus import KIND_CONFUSABLE, plan_jobs

    recipe = _recipe_with_words(tmp_path, "engine.toml", "confusable_renditions = 3")
    # flite's voices speak the words once more, and pico's training voice does not repeat them.
    text = recipe.read_text().replace("[engines.flite]", "[engines.flite]\nconfusable_renditions = 2")
    pico = 'name = "en-US"\nsplit = "train"'
    recipe.write_text(text.replace(pico, pico + "\nconfusable_renditions = 1"))
    loaded = load_recipe(recipe)
    assert {v.key: v.confusable_renditions for v in loaded.voices if v.split == "train"} == {
        "espeak-ng:en-us": None, "flite:slt": 2, "pico:en-US": 1}
    repeated = {job.voice.key: sorted(u.text for u in job.utterances)
                for job in plan_jobs(loaded) if job.kind.startswith(KIND_CONFUSABLE)}
    assert repeated == {"espeak-ng:en-us": sorted(["yet.", "now.", "cup."] * 2),
                        "flite:slt": ["cup.", "now.", "yet."]}

    # Only training voices repeat the words, so a validation voice's own setting is an error.
    validation = 'split = "validation"'
    assert validation in text
    recipe.write_text(text.replace(validation, validation + "\nconfusable_renditions = 2", 1))
    with pytest.raises(RecipeError, match=r"voices\[\d+\]\.confusable_renditions: .* is a "
                                          r"validation voice"):
        load_recipe(recipe)


def test_recipe_rejects_a_letter_that_is_a_word(tmp_path: Path) -> None:
    recipe = _recipe_with_words(tmp_path, "bad.toml", 'letters = ["c", "see"]')
    with pytest.raises(RecipeError, match=r"words\.letters: 'see' is not a single letter"):
        load_recipe(recipe)


def test_voice_copies_weigh_one_voice_more(tmp_path: Path) -> None:
    from kwstream.training.dataset import KIND_CLIP, Item, build_split

    recipe = tmp_path / "copies.toml"
    pico = 'name = "en-US"\nsplit = "train"'
    recipe.write_text(TINY_RECIPE.read_text().replace(pico, pico + "\ncopies = 3"))
    loaded = load_recipe(recipe)
    assert [v.copies for v in loaded.voices if v.engine == "pico"] == [3]
    assert all(v.copies is None for v in loaded.voices if v.engine != "pico")
    word = np.random.default_rng(0).normal(0, 0.1, 6000).astype(np.float32)
    items = [Item(2, KIND_CLIP, word, "pico:en-US"), Item(3, KIND_CLIP, word, "flite:slt")]
    data = build_split(loaded, "train", items, [], 1, True, processes=1,
                       voice_copies={"pico:en-US": 3})
    assert sorted(data.voices) == ["flite:slt"] + ["pico:en-US"] * 3
    # Each copy draws its own augmentation.
    copies = data.features[[i for i, v in enumerate(data.voices) if v == "pico:en-US"]]
    assert not np.array_equal(copies[0], copies[1])
    bad = tmp_path / "bad.toml"
    bad.write_text(recipe.read_text().replace("copies = 3", "copies = -1"))
    with pytest.raises(RecipeError, match=r"voices\[2\]\.copies"):
        load_recipe(bad)


def test_cut_word_touches_a_clip_edge() -> None:
    from kwstream.training import augment
    from kwstream.training.recipe import AugmentSpec

    rng = np.random.default_rng(3)
    word = np.linspace(0.1, 0.5, 8000, dtype=np.float32)
    sides = set()
    for _ in range(40):
        clip, start, size = augment.place_cut(rng, word)
        assert augment.CUT_MIN_VISIBLE <= size <= word.size - augment.CUT_MIN_HIDDEN
        assert np.count_nonzero(clip) == size
        if start == 0:
            # The window starts inside the word: the clip begins with the word's end.
            assert np.array_equal(clip[:size], word[-size:])
            sides.add("end")
        else:
            # The window ends inside the word: the clip ends with the word's start.
            assert start + size == clip.size
            assert np.array_equal(clip[start:], word[:size])
            sides.add("start")
    assert sides == {"start", "end"}

    spec = AugmentSpec(cut_probability=1.0, noise_probability=0, noise_floor_probability=0,
                       reverb_probability=0, telephone_probability=0, microphone_probability=0,
                       context_probability=0, speed_probability=0)
    cut = augment.augment_word(rng, word, spec, [], [], True, keyword=False)
    assert cut[0] != 0 or cut[-1] != 0
    # Keywords, and every word outside training, stay whole inside the clip.
    for keyword, full in ((True, True), (False, False)):
        whole = augment.augment_word(rng, word, spec, [], [], full, keyword=keyword)
        assert np.count_nonzero(whole) == word.size


def test_corrupt_noise_file_is_named(tmp_path: Path) -> None:
    from kwstream.training.dataset import load_ambient

    corrupt = tmp_path / "hum.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    with pytest.raises(RecipeError, match="hum.wav"):
        load_ambient((str(corrupt),))


@needs_voices
def test_unknown_voice_is_named(tmp_path: Path) -> None:
    from kwstream.training.pipeline import check_voices

    recipe = tmp_path / "bad.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace('name = "rms"', 'name = "hal9000"'))
    with pytest.raises(RecipeError, match=r"bad\.toml: voices\[\d+\]: .*hal9000"):
        check_voices(load_recipe(recipe))


@pytest.mark.parametrize(("options", "message"), [
    ("{ base_f0 = 140 }", r"voices\[\d+\]\.options\.base_f0 is unknown for flite "
                          r"\(known: base_f0_hz\)"),
    ("{ base_f0_hz = -5 }", r"voices\[\d+\]\.options\.base_f0_hz must be a number of Hz "
                            r"in \[40, 400\], got -5"),
])
def test_recipe_rejects_bad_voice_options(tmp_path: Path, options: str, message: str) -> None:
    recipe = tmp_path / "options.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace(
        'name = "rms"\n', f'name = "rms"\noptions = {options}\n'))
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_missing_tts_binary_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from kwstream.training.pipeline import check_voices

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RecipeError, match="espeak-ng"):
        check_voices(load_recipe(TINY_RECIPE))


def test_cli_reports_recipe_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text("[model]\nid = \"x\"\nlabels = []\n")
    status = main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "out")])
    assert status == 2
    error = capsys.readouterr().err
    assert "labels" in error
    assert len(error.strip().splitlines()) == 1


@pytest.mark.skipif(not Path("/usr/share/festival/voices/english/rab_diphone").is_dir(),
                    reason="needs festvox-rablpc16k (Debian contrib; scripts/bootstrap.sh)")
def test_cli_reports_synthesis_failure(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "crash.toml"
    recipe.write_text(TINY_RECIPE.read_text() + '\n[[voices]]\nengine = "festival"\n'
                      'name = "rab_diphone"\nsplit = "train"\npitch_range = [0.7, 0.75]\n'
                      'renditions = 2\nunknown_words = 2\nsentences = 0\n')
    status = main(["train", "--recipe", str(recipe), "--cache", str(tmp_path / "cache"),
                   "--out", str(tmp_path / "out")])
    assert status == 2
    # The progress bar writes to stderr too; the error is one line, without a traceback.
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    error = [line for line in stderr.splitlines() if line.startswith("kwstream train: error:")]
    assert len(error) == 1
    assert "crash.toml: synthesis failed: festival voice rab_diphone cannot speak" in error[0]
    # The jobs of the other voices finished and stay cached for the next run.
    assert list((tmp_path / "cache" / "speech").rglob("*.npz"))


def _with_class_weight_factors(tmp_path: Path, table: str) -> Path:
    recipe = tmp_path / "weighted.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace(
        "representative_windows = 50\n",
        f"representative_windows = 50\nclass_weight_factors = {table}\n"))
    return recipe


def test_class_weight_factors_parsed(tmp_path: Path) -> None:
    recipe = load_recipe(_with_class_weight_factors(tmp_path, "{ yes = 2.0, up = 0.5 }"))
    assert recipe.train.class_weight_factors == {"yes": 2.0, "up": 0.5}
    assert load_recipe(TINY_RECIPE).train.class_weight_factors == {}


@pytest.mark.parametrize(("table", "message"), [
    ("{ maybe = 2.0 }", "names 'maybe', which is not in model.labels"),
    ("{ yes = 0.0 }", r"must be in \[0.1, 10.0\], got yes = 0.0"),
    ('{ yes = "2" }', "must map labels to numbers, got yes = '2'"),
    ("2.0", "must be a table, got 2.0"),
])
def test_class_weight_factors_rejected(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(RecipeError, match=f"train.class_weight_factors {message}"):
        load_recipe(_with_class_weight_factors(tmp_path, table))


@pytest.mark.skipif(not _tensorflow_available(), reason="needs the train extra (TensorFlow)")
def test_frequency_warp_moves_a_band_peak() -> None:
    import tensorflow as tf

    from kwstream.training.model import band_centres_mel, warp_bands

    centres = band_centres_mel(20.0, 7600.0, 40)
    batch = np.zeros((1, 49, 40, 1), dtype=np.float32)
    batch[0, :, 20, 0] = 1.0
    same = warp_bands(tf.constant(batch), (1.0, 1.0), centres).numpy()
    assert np.allclose(same, batch)
    # A factor of 1.2 moves the peak of band 20 up to the band nearest 1.2 times its centre
    # frequency, and the result stays a weighted mix of neighbouring bands.
    up = warp_bands(tf.constant(batch), (1.2, 1.2), centres).numpy()[0, 0, :, 0]
    hz = 700.0 * np.expm1(centres / 1127.0)
    expected = int(np.argmin(np.abs(hz - 1.2 * hz[20])))
    assert abs(int(np.argmax(up)) - expected) <= 1
    assert int(np.argmax(up)) > 20
    assert up.min() >= 0.0
    assert up.max() <= 1.0


@pytest.mark.skipif(not _tensorflow_available(), reason="needs the train extra (TensorFlow)")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_twice_gives_same_weights() -> None:
    from kwstream.training.model import band_centres_mel, build_model, train_model
    from kwstream.training.recipe import ArchitectureSpec, TrainSpec

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 1200)
    windows = rng.normal(size=(1200, 49, 40)).astype(np.float32)
    windows[np.arange(1200), labels * 10, :] += 2.0
    architecture = ArchitectureSpec(first_filters=8, blocks=((8, 1), (16, 2)))
    # Every random part of training is on: dropout, shuffling, frequency warp, masks.
    spec = TrainSpec(epochs=2, batch_size=100, label_smoothing=0.0, mask_bands=4, mask_rows=4,
                     warp_range=(0.9, 1.1))
    centres = band_centres_mel(20.0, 7600.0, 40)
    runs = []
    for _ in range(2):
        model = build_model(49, 40, 4, architecture, seed=3)
        train_model(model, windows, labels, windows[:200], labels[:200], 4, spec, seed=5,
                    centres_mel=centres)
        runs.append(model.get_weights())
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first, second)


def test_recipe_rejects_bad_warp_range(tmp_path: Path) -> None:
    recipe = tmp_path / "warp.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace(
        "representative_windows = 50\n", "representative_windows = 50\nwarp_range = [0.9, 3.0]\n"))
    with pytest.raises(RecipeError, match=r"warp_range.*0\.5, 2\.0"):
        load_recipe(recipe)


def test_recipe_train_seed(tmp_path: Path) -> None:
    assert load_recipe(TINY_RECIPE).train.seed is None
    recipe = tmp_path / "seed.toml"
    recipe.write_text(TINY_RECIPE.read_text().replace(
        "representative_windows = 50\n", "representative_windows = 50\nseed = 11\n"))
    assert load_recipe(recipe).train.seed == 11
    assert load_recipe(recipe).seed == load_recipe(TINY_RECIPE).seed
    recipe.write_text(TINY_RECIPE.read_text().replace(
        "representative_windows = 50\n", "representative_windows = 50\nseed = -1\n"))
    with pytest.raises(RecipeError, match=r"seed\.toml: train\.seed must be in \[0, 4294967295\], "
                                          r"got -1"):
        load_recipe(recipe)


def test_class_weights_balance_then_factor() -> None:
    from kwstream.training.model import class_weights

    # Counts 10, 30 and 20: the mean is 20, so the balanced weights are 2, 2/3 and 1.
    labels = np.array([0] * 10 + [1] * 30 + [2] * 20)
    assert class_weights(labels, 3) == pytest.approx({0: 2.0, 1: 2.0 / 3.0, 2: 1.0})

    weighted = class_weights(labels, 3, {2: 2.5})
    assert weighted[2] == pytest.approx(2.5)
    assert weighted[0] == pytest.approx(2.0)
    assert weighted[1] == pytest.approx(2.0 / 3.0)


def test_class_weights_factor_applies_after_cap() -> None:
    from kwstream.training.model import class_weights

    # Counts 1 and 99: the balanced weight of class 0 would be 50, and the cap makes it 4.
    labels = np.array([0] + [1] * 99)
    assert class_weights(labels, 2)[0] == pytest.approx(4.0)
    assert class_weights(labels, 2, {0: 2.0})[0] == pytest.approx(8.0)


needs_diphone_voices = pytest.mark.skipif(
    shutil.which("pico2wave") is None or not Path("/usr/share/mbrola/us1/us1").is_file(),
    reason="needs pico2wave and mbrola-us1 (Debian contrib and non-free; scripts/bootstrap.sh)",
)


@needs_diphone_voices
@pytest.mark.parametrize(("engine", "voice"), [("pico", "en-US"), ("pico", "en-GB"),
                                               ("espeak-ng", "mb-us1")])
def test_diphone_voices_follow_speed(engine: str, voice: str) -> None:
    from kwstream.training.engines import Utterance, check_voice, synthesize

    check_voice(engine, voice, ("",))
    slow, fast = synthesize(engine, voice, [Utterance("seven.", speed=0.7),
                                            Utterance("seven.", speed=1.3)], {})
    for audio in (slow, fast):
        assert audio.dtype == np.float32
        assert 0.05 < float(np.abs(audio).max()) <= 1.0
    # 16 kHz output: "seven" lasts well under 2 s at any of these rates.
    assert 0.2 * 16000 < fast.size < slow.size < 2.0 * 16000


@pytest.mark.skipif(not Path("/usr/share/mbrola/us3/us3").is_file(),
                    reason="needs mbrola-us3 (Debian non-free; scripts/bootstrap.sh)")
def test_mbrola_missing_diphone_gives_empty_clip() -> None:
    from kwstream.training.engines import Utterance, synthesis_revision, synthesize

    # us3 has no diphone for the vowel espeak-ng gives "on"; mbrola would put silence there.
    on, seven = synthesize("espeak-ng", "mb-us3", [Utterance("on"), Utterance("seven")], {})
    assert on.size == 0
    assert seven.size > 0.2 * 16000
    # Cached mbrola speech is synthesized again, and other voices' cached speech is kept.
    assert synthesis_revision("espeak-ng", "mb-us3") == 2
    assert synthesis_revision("espeak-ng", "en-us") == 1


@needs_diphone_voices
def test_pico_reads_markup_as_text() -> None:
    from kwstream.training.engines import Utterance, synthesize

    (plain,) = synthesize("pico", "en-US", [Utterance("speed level='20' stop.")], {})
    (marked,) = synthesize("pico", "en-US", [Utterance("<speed level='20'>stop.")], {})
    # Markup inside the text must not reach pico: it is read out as words, like the plain text.
    # Obeyed, a rate of 20 % would make the short "stop." about 5 times longer instead.
    assert abs(marked.size - plain.size) < 0.2 * plain.size


def test_mbrola_voice_without_database_is_named(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    from kwstream.training import engines

    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    monkeypatch.setattr(engines, "MBROLA_ROOT", tmp_path)
    with pytest.raises(RecipeError, match=r"mbrola-us1.*contrib and non-free"):
        engines.check_voice("espeak-ng", "mb-us1", ())
    with pytest.raises(RecipeError, match="no mbrola voice 'mb-zz9'"):
        engines.check_voice("espeak-ng", "mb-zz9", ())


@needs_diphone_voices
def test_mbrola_voice_rejects_variants() -> None:
    from kwstream.training.engines import check_voice

    with pytest.raises(RecipeError, match=r"mb-us1.*takes no variants"):
        check_voice("espeak-ng", "mb-us1", ("", "m3"))


def test_pico_voice_and_binary_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from kwstream.training.engines import check_voice

    if shutil.which("pico2wave") is not None:
        with pytest.raises(RecipeError, match="pico voice 'de-DE'"):
            check_voice("pico", "de-DE", ())
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RecipeError, match=r"pico2wave.*libttspico-utils"):
        check_voice("pico", "en-US", ())


def test_per_voice_names_weakest_keywords() -> None:
    from kwstream.training.evaluate import per_voice

    names = ("_silence_", "_unknown_", "yes", "no")
    labels = np.array([2, 2, 3, 3, 2, 3, 1])
    predicted = np.array([2, 3, 3, 3, 2, 2, 1])
    voices = ["a", "a", "a", "a", "b", "b", "b"]
    result = per_voice(np.eye(len(names))[predicted], labels, voices, names, weakest=1)

    assert result["a"]["clips"] == 4
    assert result["a"]["accuracy"] == 0.75
    assert result["a"]["weakest_keywords"] == {"yes": 0.5}
    assert result["b"]["accuracy"] == 2 / 3
    # _unknown_ is not a keyword, so b's weakest is "no", never right.
    assert result["b"]["weakest_keywords"] == {"no": 0.0}


# The Debian package of each festival voice that a recipe names.
FESTIVAL_PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
                     "rab_diphone": "festvox-rablpc16k", "don_diphone": "festvox-don",
                     "cmu_us_slt_arctic_hts": "festvox-us-slt-hts", "us1_mbrola": "festvox-us1",
                     "us2_mbrola": "festvox-us2", "en1_mbrola": "festvox-en1"}


@pytest.mark.parametrize("recipe_path", sorted(
    (Path(__file__).resolve().parent.parent / "models" / "recipes").glob("*.toml")),
    ids=lambda path: path.name)
def test_bootstrap_installs_recipe_voices(recipe_path: Path) -> None:
    import re
    import tomllib

    script = (Path(__file__).resolve().parent.parent / "scripts" / "bootstrap.sh").read_text()
    recipe = tomllib.loads(recipe_path.read_text())
    installed = set(re.findall(r"mbrola-(\w+)", script))
    needed = {voice["name"].split("-")[1] for voice in recipe["voices"]
              if voice["name"].startswith("mb-")}
    assert needed <= installed, f"bootstrap.sh lacks mbrola-{sorted(needed - installed)}"
    festival = {voice["name"] for voice in recipe["voices"] if voice["engine"] == "festival"}
    unknown = festival - FESTIVAL_PACKAGES.keys()
    assert not unknown, f"add the Debian package of {sorted(unknown)} to FESTIVAL_PACKAGES"
    missing = {FESTIVAL_PACKAGES[name] for name in festival} - set(script.split())
    assert not missing, f"bootstrap.sh lacks {sorted(missing)}"


@pytest.mark.skipif(not Path("/usr/share/festival/voices/english/rab_diphone").is_dir(),
                    reason="needs festvox-rablpc16k (Debian contrib; scripts/bootstrap.sh)")
def test_festival_names_the_utterance_it_cannot_speak() -> None:
    from kwstream.training.engines import Utterance, synthesize

    # festival's rab diphone voice crashes on "off" with a pitch target near 80 Hz; the
    # utterances around it are fine.
    good = [Utterance("one.", pitch=1.0), Utterance("two.", pitch=1.1)]
    assert len(synthesize("festival", "rab_diphone", good, {})) == 2
    crashing = Utterance("off.", speed=1.03, pitch=0.76)
    with pytest.raises(RuntimeError, match=r"rab_diphone cannot speak 'off\.' at speed 1\.03 "
                                           r"and pitch 0\.76 \(target 80 Hz"):
        synthesize("festival", "rab_diphone", [good[0], crashing, good[1]], {})


@pytest.mark.parametrize(("name", "transcript", "has_keyword"), [
    ("vm-for", "for", True),                              # a homophone of "four"
    ("to-extension", "To extension.", True),              # a homophone of "two", in a sentence
    ("letters/o", "o", True),                             # a spoken zero
    ("vm-anyone", "Is anybody there?", True),             # a keyword inside a name
    ("date-time", "Today is the date.", False),           # "ate" only inside words
    ("vm-goodbye-x", "Good bye.", False),
])
def test_allison_prompt_keyword_rule(name: str, transcript: str, has_keyword: bool) -> None:
    keywords = {"four", "two", "zero", "one", "go"}
    homophones = {"for", "to", "ate", *evaluate.SPOKEN_ZERO}
    assert evaluate._holds_keyword(name, transcript, keywords, homophones, ()) is has_keyword
