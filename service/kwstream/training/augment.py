"""Audio augmentation on float32 16 kHz arrays: placement, level, noise, reverberation, band limits.

Every function takes an explicit ``numpy.random.Generator``, so a clip's augmentation depends
only on the seed it was given and never on the order in which workers run.
"""

from __future__ import annotations

import numpy as np

from kwstream.training.recipe import AugmentSpec

SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE
"""A training clip is 1 s; the frontend turns 16000 samples into exactly 49 rows."""


def trim_silence(audio: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing parts whose 10 ms energy is ``threshold_db`` below the peak."""
    if audio.size == 0:
        return audio
    frame = 160
    count = audio.size // frame
    if count == 0:
        return audio
    energy = (audio[: count * frame].reshape(count, frame) ** 2).mean(axis=1)
    peak = energy.max()
    if peak <= 0:
        return audio[:0]
    active = np.flatnonzero(energy >= peak * 10 ** (threshold_db / 10))
    return audio[active[0] * frame:(active[-1] + 1) * frame]


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def colored_noise(rng: np.random.Generator, length: int, exponent: float) -> np.ndarray:
    """Noise with power spectral density 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = rng.standard_normal(length // 2 + 1) + 1j * rng.standard_normal(length // 2 + 1)
    freqs = np.fft.rfftfreq(length, 1.0 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    spectrum *= freqs ** (-exponent / 2.0)
    noise = np.fft.irfft(spectrum, n=length).astype(np.float32)
    level = rms(noise)
    return noise / level if level > 0 else noise


def ambient_excerpt(rng: np.random.Generator, recordings: list[np.ndarray],
                    length: int) -> np.ndarray:
    """Cut a random excerpt of one ambient recording, looping it when it is short; unit RMS."""
    source = recordings[int(rng.integers(len(recordings)))]
    if source.size < length:
        source = np.tile(source, length // max(source.size, 1) + 1)
    start = int(rng.integers(0, source.size - length + 1))
    excerpt = source[start:start + length].astype(np.float32)
    level = rms(excerpt)
    return excerpt / level if level > 0 else excerpt


def noise(rng: np.random.Generator, length: int, spec: AugmentSpec,
          recordings: list[np.ndarray]) -> np.ndarray:
    if recordings and rng.random() < spec.ambient_probability:
        return ambient_excerpt(rng, recordings, length)
    return colored_noise(rng, length, float(rng.uniform(0.0, 2.0)))


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``audio`` ``factor`` times faster; pitch moves with it, as a tape would."""
    import soxr

    if abs(factor - 1.0) < 1e-3 or audio.size < 2:
        return audio
    return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def reverberate(rng: np.random.Generator, audio: np.ndarray, rt60_s: float) -> np.ndarray:
    """Convolve with a synthetic room response: exponentially decaying noise after a direct path."""
    length = max(int(rt60_s * SAMPLE_RATE), 16)
    times = np.arange(length) / SAMPLE_RATE
    response = rng.standard_normal(length) * np.exp(-6.9 * times / rt60_s)
    response[0] = 0.0
    response *= float(rng.uniform(0.2, 0.7)) / (np.sqrt(np.sum(response**2)) + 1e-9)
    response[0] = 1.0
    size = audio.size + length - 1
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(response, size), size)
    return wet[: audio.size].astype(np.float32)


def band_limit(audio: np.ndarray, low_hz: float, high_hz: float, order: int = 4) -> np.ndarray:
    """Apply a Butterworth-shaped band-pass magnitude response in the frequency domain."""
    freqs = np.fft.rfftfreq(audio.size, 1.0 / SAMPLE_RATE)
    freqs[0] = 1e-3
    high_pass = 1.0 / np.sqrt(1.0 + (low_hz / freqs) ** (2 * order))
    low_pass = 1.0 / np.sqrt(1.0 + (freqs / high_hz) ** (2 * order))
    return np.fft.irfft(np.fft.rfft(audio) * high_pass * low_pass, audio.size).astype(np.float32)


def telephone(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
    """Narrow-band telephone channel: 300-3400 Hz and coarse 8-bit mu-law quantization."""
    limited = band_limit(audio, float(rng.uniform(250, 350)), float(rng.uniform(3200, 3500)))
    peak = float(np.max(np.abs(limited))) or 1.0
    scaled = np.clip(limited / peak, -1.0, 1.0)
    mu = 255.0
    companded = np.sign(scaled) * np.log1p(mu * np.abs(scaled)) / np.log1p(mu)
    quantized = np.round(companded * 127.0) / 127.0
    expanded = np.sign(quantized) * np.expm1(np.abs(quantized) * np.log1p(mu)) / mu
    return (expanded * peak).astype(np.float32)


def cheap_microphone(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
    """Imitate a small USB microphone: weak bass, a roll-off between 4 and 7.5 kHz, a tilt."""
    limited = band_limit(audio, float(rng.uniform(80, 300)), float(rng.uniform(4000, 7500)),
                         order=2)
    freqs = np.fft.rfftfreq(limited.size, 1.0 / SAMPLE_RATE)
    tilt_db_per_octave = float(rng.uniform(-3.0, 3.0))
    gain = (np.maximum(freqs, 100.0) / 1000.0) ** (tilt_db_per_octave / 6.02)
    return np.fft.irfft(np.fft.rfft(limited) * gain, limited.size).astype(np.float32)


def place(rng: np.random.Generator, word: np.ndarray, shift_ms: int,
          length: int = CLIP_SAMPLES) -> tuple[np.ndarray, int]:
    """Put ``word`` into a clip of ``length`` samples, near the centre, and return its start."""
    if word.size >= length:
        start = (word.size - length) // 2
        return word[start:start + length].copy(), 0
    centre = (length - word.size) // 2
    shift = int(rng.integers(-shift_ms, shift_ms + 1)) * SAMPLE_RATE // 1000
    start = int(np.clip(centre + shift, 0, length - word.size))
    clip = np.zeros(length, dtype=np.float32)
    clip[start:start + word.size] = word
    return clip, start


CUT_MIN_VISIBLE = 3200
"""Minimum number of samples of a cut word that stay in the clip (0.2 s)."""
CUT_MIN_HIDDEN = 1600
"""Minimum number of samples of a cut word that the clip edge hides (0.1 s)."""


def place_cut(rng: np.random.Generator, word: np.ndarray,
              length: int = CLIP_SAMPLES) -> tuple[np.ndarray, int, int]:
    """Put part of ``word`` against one edge of a clip, as if the window had cut the word.

    Half of the clips show the word's start at the right edge (a word still being spoken),
    half its end at the left edge. Returns the clip and the start and length of the visible
    part. The word must be at least CUT_MIN_VISIBLE + CUT_MIN_HIDDEN samples long.
    """
    visible = int(rng.integers(CUT_MIN_VISIBLE, min(word.size - CUT_MIN_HIDDEN, length) + 1))
    clip = np.zeros(length, dtype=np.float32)
    if rng.random() < 0.5:
        clip[length - visible:] = word[:visible]
        return clip, length - visible, visible
    clip[:visible] = word[word.size - visible:]
    return clip, 0, visible


def add_context(rng: np.random.Generator, clip: np.ndarray, start: int, size: int,
                speech: list[np.ndarray]) -> np.ndarray:
    """Fill the parts of ``clip`` before and after the word with other running speech.

    A gap of 40 to 200 ms stays silent on each side, so the word itself is never masked.
    """
    if not speech:
        return clip
    level = rms(clip[start:start + size])
    output = clip.copy()
    before_end = start - int(rng.integers(640, 3200))
    after_start = start + size + int(rng.integers(640, 3200))
    for first, last in ((0, before_end), (after_start, clip.size)):
        if last - first < 800 or rng.random() < 0.3:
            continue
        source = speech[int(rng.integers(len(speech)))]
        span = last - first
        if source.size < span:
            continue
        offset = int(rng.integers(0, source.size - span + 1))
        fragment = source[offset:offset + span]
        fragment_level = rms(fragment)
        if fragment_level <= 0:
            continue
        gain = level * 10 ** (float(rng.uniform(-10.0, 3.0)) / 20) / fragment_level
        ramp = np.minimum(1.0, np.minimum(np.arange(span) + 1, span - np.arange(span)) / 160.0)
        output[first:last] += (fragment * gain * ramp).astype(np.float32)
    return output


def set_level(rng: np.random.Generator, audio: np.ndarray,
              level_dbfs: tuple[float, float]) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 0:
        return audio
    target = 10 ** (float(rng.uniform(*level_dbfs)) / 20)
    return (audio * (target / peak)).astype(np.float32)


def add_noise(rng: np.random.Generator, clip: np.ndarray, speech_rms: float,
              snr_db: tuple[float, float], spec: AugmentSpec,
              recordings: list[np.ndarray]) -> np.ndarray:
    if speech_rms <= 0:
        return clip
    snr = float(rng.uniform(*snr_db))
    scale = speech_rms / 10 ** (snr / 20)
    return (clip + noise(rng, clip.size, spec, recordings) * scale).astype(np.float32)


def add_noise_floor(rng: np.random.Generator, clip: np.ndarray,
                    floor_dbfs: tuple[float, float]) -> np.ndarray:
    level = 10 ** (float(rng.uniform(*floor_dbfs)) / 20)
    return (clip + colored_noise(rng, clip.size, float(rng.uniform(0.0, 1.5))) * level).astype(
        np.float32)


def augment_word(rng: np.random.Generator, word: np.ndarray, spec: AugmentSpec,
                 recordings: list[np.ndarray], speech: list[np.ndarray],
                 full: bool, keyword: bool = True) -> np.ndarray:
    """Turn one trimmed word into an augmented 1-s clip.

    ``full`` applies every training augmentation; otherwise (validation and test) only the
    placement, the level, the noise floor and noise at ``spec.eval_snr_db`` half of the time.
    A non-keyword word (``keyword`` false) in training is cut by a clip edge with
    ``spec.cut_probability``.
    """
    if full and rng.random() < spec.speed_probability:
        word = change_speed(word, float(rng.uniform(*spec.speed_range)))
    word = set_level(rng, word, spec.level_dbfs)
    if (full and not keyword and spec.cut_probability > 0
            and word.size >= CUT_MIN_VISIBLE + CUT_MIN_HIDDEN
            and rng.random() < spec.cut_probability):
        clip, start, size = place_cut(rng, word)
    else:
        clip, start = place(rng, word, spec.shift_ms)
        size = min(word.size, clip.size)
    speech_rms = rms(clip[start:start + size])
    if full and rng.random() < spec.context_probability:
        clip = add_context(rng, clip, start, size, speech)
    return finish_clip(rng, clip, speech_rms, spec, recordings, full)


def finish_clip(rng: np.random.Generator, clip: np.ndarray, speech_rms: float,
                spec: AugmentSpec, recordings: list[np.ndarray], full: bool) -> np.ndarray:
    """Apply the room, the channel and the noise to a 1-s clip of speech."""
    if full:
        if rng.random() < spec.reverb_probability:
            clip = reverberate(rng, clip, float(rng.uniform(*spec.rt60_range_s)))
        draw = rng.random()
        if draw < spec.telephone_probability:
            clip = telephone(rng, clip)
        elif draw < spec.telephone_probability + spec.microphone_probability:
            clip = cheap_microphone(rng, clip)
        if rng.random() < spec.noise_probability:
            clip = add_noise(rng, clip, speech_rms, spec.snr_db, spec, recordings)
    elif rng.random() < 0.5:
        clip = add_noise(rng, clip, speech_rms, spec.eval_snr_db, spec, recordings)
    if rng.random() < spec.noise_floor_probability:
        clip = add_noise_floor(rng, clip, spec.noise_floor_dbfs)
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def augment_window(rng: np.random.Generator, window: np.ndarray, spec: AugmentSpec,
                   recordings: list[np.ndarray], full: bool) -> np.ndarray:
    """Augment a 1-s excerpt of running speech (no placement: it fills the clip already)."""
    clip = set_level(rng, window, spec.level_dbfs)
    return finish_clip(rng, clip, rms(clip), spec, recordings, full)


def silence_clip(rng: np.random.Generator, spec: AugmentSpec,
                 recordings: list[np.ndarray]) -> np.ndarray:
    """Make a 1-s clip with no speech: digital silence, a faint floor, coloured noise or ambience."""
    draw = rng.random()
    if draw < 0.05:
        return np.zeros(CLIP_SAMPLES, dtype=np.float32)
    level = 10 ** (float(rng.uniform(-80.0, -15.0)) / 20)
    clip = noise(rng, CLIP_SAMPLES, spec, recordings) * level
    if rng.random() < 0.2:
        # Mains hum with a few harmonics, a common artefact of cheap microphones.
        times = np.arange(CLIP_SAMPLES) / SAMPLE_RATE
        base = float(rng.choice([50.0, 60.0]))
        hum = sum(np.sin(2 * np.pi * base * k * times + rng.uniform(0, 6.28)) / k
                  for k in range(1, 5))
        clip = clip + hum * level * float(rng.uniform(0.3, 2.0))
    if rng.random() < 0.2:
        clip = cheap_microphone(rng, clip.astype(np.float32))
    return np.clip(clip, -1.0, 1.0).astype(np.float32)
