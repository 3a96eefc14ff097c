"""The human-readable model card (``NAME.md``), written from the JSON card after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kwstream.modelcard import ModelCard


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _summary(card: ModelCard) -> list[str]:
    metrics: dict[str, Any] = card.metrics
    return [
        f"# {card.id} (version {card.version})",
        "",
        f"An int8 keyword-spotting model for microcontrollers and the kwstream service. It "
        f"tells apart {len(card.keywords)} keywords ({', '.join(card.keywords)}), silence "
        f"(`_silence_`) and other speech (`_unknown_`) in 1-s windows of "
        f"{card.frontend.window_rows} log-mel rows x {card.frontend.num_bands} bands "
        f"({card.frontend.normalization} normalization).",
        "",
        "## Size",
        "",
        f"- file: {card.size_bytes} bytes; TFLite Micro arena: {card.arena_bytes} bytes "
        f"(smallest arena that allocates and runs, measured with the tflite-micro package)",
        f"- ops: {', '.join(metrics.get('ops', []))}; input and output int8",
    ]


def _training_data(card: ModelCard) -> list[str]:
    voices = card.data.get("voices", {})
    recorded = card.data.get("recordings", {})
    source = (
        "Keywords are synthesized offline. Besides synthesized speech, `_unknown_` has recorded "
        "speech of real speakers without keywords (the `recording:` voices: "
        + ", ".join(f"{name}, {count} files" for name, count in recorded.items()) + ")."
        if recorded else
        "All training speech is synthesized offline; no recording of a person is used for "
        "training.")
    lines = [
        "",
        "## Training data",
        "",
        f"{source} Voices are split by speaker (a voice with all its variants, speeds and "
        "pitches stays in one split):",
        "",
    ]
    for split in ("train", "validation", "test"):
        lines.append(f"- {split}: {', '.join(voices.get(split, [])) or 'none'}")
    lines += [
        "",
        f"Thresholds, smoother defaults and the choice of epoch use the validation voices "
        f"only. Threshold rule: {card.metrics.get('threshold_rule', 'n/a')}.",
    ]
    return lines


def _measurements(card: ModelCard) -> list[str]:
    metrics: dict[str, Any] = card.metrics
    test = metrics.get("test_voices", {})
    validation = metrics.get("validation_voices", {})
    allison = metrics.get("allison", {})
    lines = [
        "",
        "## Measured",
        "",
        f"Measured by `kwstream train` with {metrics.get('runtime', 'LiteRT')}, on "
        f"{metrics.get('machine', 'n/a')}.",
        "",
        "| set | clips | accuracy | lowest keyword recall |",
        "|---|---|---|---|",
        f"| test voices (held out) | {test.get('clips', 'n/a')} | "
        f"{_percent(test.get('accuracy'))} | {_percent(test.get('min_keyword_recall'))} |",
        f"| validation voices (used for thresholds) | {validation.get('clips', 'n/a')} | "
        f"{_percent(validation.get('accuracy'))} | "
        f"{_percent(validation.get('min_keyword_recall'))} |",
    ]
    for key, title in (("digits_silence_padded", "Allison digits, silence-padded"),
                       ("digits_context_padded", "Allison digits, context-padded")):
        if key in allison:
            entry = allison[key]
            lines.append(f"| {title} (real speech) | {entry['clips']} | "
                         f"{_percent(entry['accuracy'])} | |")

    voices = test.get("per_voice")
    if voices:
        lines += ["", "Test voices one by one (clips include `_silence_` windows under the voice "
                  "`noise`):", "", "| voice | clips | accuracy | weakest keywords (recall) |",
                  "|---|---|---|---|"]
        for voice, entry in voices.items():
            weakest = ", ".join(f"{k} {_percent(v)}" for k, v in entry["weakest_keywords"].items())
            lines.append(f"| {voice} | {entry['clips']} | {_percent(entry['accuracy'])} | "
                         f"{weakest or 'n/a'} |")

    prompts = allison.get("non_keyword_prompts")
    if prompts:
        lines += [
            "",
            f"Allison's non-keyword prompts ({prompts['prompts']} prompts, "
            f"{prompts['excluded_prompts']} others left out because their name or transcript "
            f"contains a keyword or a number): {_percent(prompts['clip_false_accept_share'])} "
            f"of {prompts['clips']} 1-s clips are classified as a keyword at or above its "
            f"threshold; {_percent(prompts['prompt_false_accept_share'])} of the prompts have "
            f"at least one such clip.",
        ]

    stream = metrics.get("validation_stream", {})
    if stream:
        chosen = stream["chosen"]
        lines += [
            "",
            f"Smoother defaults: chosen on a {stream['stream_seconds']} s stream of "
            f"{stream['words']} validation words and running-speech excerpts "
            f"({stream['keywords']} keywords), with the clip thresholds: precision "
            f"{_percent(chosen['precision'])}, recall {_percent(chosen['recall'])}, "
            f"{stream['false_accepts_per_hour']:.0f} false accepts per hour.",
        ]
        chosen_thresholds = stream.get("thresholds")
        if chosen_thresholds:
            lines += [
                "",
                f"Thresholds: chosen on the same stream "
                f"({chosen_thresholds['stream_hours']} hours) with the smoother defaults, at "
                f"most {chosen_thresholds['allowed_false_accepts']} false accepts per keyword; "
                f"a keyword with more even at the highest threshold keeps that one. Recall and "
                f"false accepts of each keyword on that stream:",
                "",
                "| keyword | threshold | references | recall | false accepts |",
                "|---|---|---|---|---|",
            ]
            for name, row in chosen_thresholds["per_keyword"].items():
                lines.append(f"| {name} | {row['threshold']:.2f} | {row['references']} | "
                             f"{_percent(row['recall'])} | {row['fp']} |")

    agreement = metrics.get("kernel_agreement", {})
    if agreement:
        lines += [
            "",
            f"LiteRT's default (XNNPACK) kernels and its reference kernels choose the same top "
            f"class on {_percent(agreement.get('default_vs_reference_top_class'))} of "
            f"{agreement.get('windows')} test windows; tests/test_model_tflm.py checks that "
            f"TFLite Micro gives exactly the reference kernels' outputs.",
        ]

    timings = metrics.get("wall_seconds", {})
    if timings:
        steps = ", ".join(f"{k} {v} s" for k, v in timings.items() if k != "total")
        lines += ["", f"Training wall time: {timings.get('total', 'n/a')} s in total ({steps})."]
        jobs = metrics.get("synthesis_jobs")
        if jobs and jobs.get("cached"):
            lines.append(f"{jobs['cached']} of the {jobs['total']} synthesis jobs came from the "
                         f"speech cache, so their synthesis time is not part of this run's time.")
        training = metrics.get("training", {})
        if training.get("reused_model"):
            trained = training.get("train_seconds")
            earlier = f" (trained there in {trained} s)" if trained is not None else ""
            lines.append(f"The Keras model came from the cache of an earlier run of the same "
                         f"recipe{earlier}, so its training time is not part of this run's time.")

    domain = metrics.get("training", {}).get("domain_adversarial")
    if domain:
        losses = domain.get("domain_loss_per_epoch") or ["n/a"]
        lines += ["", (
            f"Trained with a domain head (domain-adversarial training, largest reversal scale "
            f"{domain.get('scale')}) on {domain.get('recorded_windows')} recorded `_unknown_` "
            f"windows. The kept epoch ran at scale {domain.get('kept_epoch_scale', 'n/a')}. "
            f"The head's loss in the last epoch was {losses[-1]}, against "
            f"{domain.get('domain_loss_at_chance', 'n/a')} for a head that cannot tell recorded "
            f"from synthesized windows.")]
    return lines


def _limits(card: ModelCard) -> list[str]:
    allison = card.metrics.get("allison", {})
    silence_clips = allison.get("digits_silence_padded", {}).get("clips", 0)
    context_clips = allison.get("digits_context_padded", {}).get("clips", 0)
    trained_on = ("Keywords trained on synthetic voices only" if card.data.get("recordings")
                  else "Trained on synthetic voices only")
    if allison:
        real_speech = [
            f"- {trained_on}. The only real-speech check is one female US speaker (Allison, "
            "asterisk-core-sounds-en), and among the keywords only her digits.",
            f"- The Allison digit sets are small ({silence_clips} silence-padded clips, "
            f"{context_clips} context-padded), so one clip moves their accuracy by several "
            "points.",
        ]
    else:
        real_speech = [f"- {trained_on}, and not checked on real speech: the recipe's "
                       "`[evaluation] allison_dir` is empty."]
    return [
        "",
        "## Limits",
        "",
        *real_speech,
        "- Clip accuracy is not streaming accuracy: replay labeled streams with "
        "`kwstream replay` to measure precision and recall with the smoother.",
        "",
    ]


def render_markdown(card: ModelCard) -> str:
    """Render the card's facts and measurements as a short Markdown page."""
    sections = _summary(card) + _training_data(card) + _measurements(card) + _limits(card)
    return "\n".join(sections)


def write_markdown(card: ModelCard, path: Path) -> None:
    path.write_text(render_markdown(card))
