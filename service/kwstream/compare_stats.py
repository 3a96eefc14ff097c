"""Confidence intervals for ``kwstream compare``: rates of one model and differences of two.

- A proportion (recall, precision, accuracy) gets the Wilson score interval.
- A count per unit of exposure (false accepts per hour) gets the Poisson score interval.
- A difference between two models measured on the same audio gets a paired bootstrap
  percentile interval. Each resample draws the same units (clips, or stretches of a
  stream) for both models, so what both models get right or wrong together cancels out.

Every function returns None where its denominator is zero, never 0.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

DEFAULT_CONFIDENCE = 0.95


def z_score(confidence: float) -> float:
    """Return the two-sided standard normal quantile, 1.96 for a confidence of 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(
    successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float] | None:
    """Return the Wilson score interval of the proportion ``successes / trials``.

    With p = successes / trials and z the normal quantile of ``confidence``:

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    Unlike the normal approximation p +- z sqrt(p (1 - p) / n), it stays inside [0, 1] and
    does not shrink to a point when p is 0 or 1. Returns None when ``trials`` is 0.
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return None
    z = z_score(confidence)
    p = successes / trials
    z2_n = z * z / trials
    centre = (p + z2_n / 2.0) / (1.0 + z2_n)
    half = z / (1.0 + z2_n) * math.sqrt(p * (1.0 - p) / trials + z2_n / (4.0 * trials))
    # The bounds are exactly 0 at p = 0 and 1 at p = 1; rounding would leave 1e-17 there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def poisson_rate_interval(
    count: int, exposure: float, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float] | None:
    """Return the score interval of a Poisson rate ``count / exposure``.

    It contains the rates r whose expected count m = r * exposure passes the score test
    (count - m)^2 / m <= z^2, that is m = count + z^2 / 2 -+ z sqrt(count + z^2 / 4).
    Zero events give [0, z^2 / exposure]. Returns None when ``exposure`` is 0.
    """
    if count < 0 or exposure < 0:
        raise ValueError(f"need count >= 0 and exposure >= 0, got {count} and {exposure}")
    if exposure == 0:
        return None
    z = z_score(confidence)
    centre = count + z * z / 2.0
    half = z * math.sqrt(count + z * z / 4.0)
    return max(0.0, centre - half) / exposure, (centre + half) / exposure


def resample_weights(units: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Return bootstrap weights (resamples, units): how often each unit is drawn per resample.

    Every row sums to ``units``; a weighted sum over the units with one row is the sum over
    one bootstrap resample drawn with replacement.
    """
    if units == 0:
        return np.zeros((resamples, 0), dtype=np.float64)
    return rng.multinomial(units, np.full(units, 1.0 / units), size=resamples).astype(np.float64)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Divide elementwise; NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def percentile_interval(
    samples: np.ndarray, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float] | None:
    """Return the central ``confidence`` interval of bootstrap samples, NaNs ignored.

    Returns None when fewer than half of the resamples define the statistic, because the
    interval of the rest would describe a different population.
    """
    values = np.asarray(samples, dtype=np.float64)
    defined = values[~np.isnan(values)]
    if defined.size == 0 or defined.size < values.size / 2:
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return float(low), float(high)
