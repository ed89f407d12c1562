"""The metric grammar and the reading of metrics off a DVH, on DVHs whose answers are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isodose import dvh as dvh_module
from isodose.dvh import dvh_from_histogram, parse_metric
from isodose.errors import MetricError


def uniform_dvh(lo=10.0, hi=20.0, volume_cc=10.0, bin_width=0.5, n_bins=100, outside_cc=0.0):
    """A DVH whose volume is spread uniformly over [lo, hi] Gy."""
    edges = bin_width * np.arange(n_bins + 1)
    overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
    hist = 1000.0 * volume_cc * overlap / (hi - lo)
    mean_sum = 1000.0 * volume_cc * (lo + hi) / 2
    return dvh_from_histogram("u", hist, bin_width, 1000.0 * volume_cc, 1000.0 * outside_cc, mean_sum, lo, hi)


@pytest.mark.parametrize(
    "text, kind, value, statistic, dose_unit, volume_unit",
    [
        ("D95", "dose_at_volume", 95.0, "", "", "pct"),
        ("D95%", "dose_at_volume", 95.0, "", "", "pct"),
        ("d98", "dose_at_volume", 98.0, "", "", "pct"),
        ("D2cc", "dose_at_volume", 2.0, "", "", "cc"),
        ("D0.03cc", "dose_at_volume", 0.03, "", "", "cc"),
        ("D0.03CC", "dose_at_volume", 0.03, "", "", "cc"),
        ("V20Gy", "volume_at_dose", 20.0, "", "gy", "pct"),
        ("V20Gy_cc", "volume_at_dose", 20.0, "", "gy", "cc"),
        ("V47.5Gy", "volume_at_dose", 47.5, "", "gy", "pct"),
        ("V95%", "volume_at_dose", 95.0, "", "pct_rx", "pct"),
        ("V95%_cc", "volume_at_dose", 95.0, "", "pct_rx", "cc"),
        ("Dmean", "statistic", math.nan, "mean", "", ""),
        ("DMAX", "statistic", math.nan, "max", "", ""),
        ("Dmin", "statistic", math.nan, "min", "", ""),
        ("HI", "hi", math.nan, "", "", ""),
    ],
)
def test_grammar(text, kind, value, statistic, dose_unit, volume_unit):
    m = parse_metric(text)
    assert (m.text, m.kind, m.statistic, m.dose_unit, m.volume_unit) == (text, kind, statistic, dose_unit, volume_unit)
    assert m.value == value or (math.isnan(m.value) and math.isnan(value))


@pytest.mark.parametrize("text", ["D", "D95x", "V20", "V20cc", "Dmedian", "D101", "X95", "", "V-5Gy", "D95%%"])
def test_unknown_metrics_are_errors(text):
    with pytest.raises(MetricError):
        parse_metric(text)


def test_metrics_of_a_uniform_distribution():
    dvh = uniform_dvh()
    assert dvh.volume_cc == pytest.approx(10.0)
    assert (dvh.dmin_gy, dvh.dmean_gy, dvh.dmax_gy) == pytest.approx((10.0, 15.0, 20.0))
    values = dvh.metrics(
        ["D50", "D100", "D0", "D95", "D2cc", "D0.03cc", "V15Gy", "V15Gy_cc", "V95%", "V95%_cc", "HI", "Dmean"],
        prescription_gy=16.0,
    )
    assert values == pytest.approx(
        {
            "D50": 15.0,
            "D100": 10.0,
            "D0": 20.0,
            "D95": 10.5,
            "D2cc": 18.0,
            "D0.03cc": 19.97,
            "V15Gy": 50.0,
            "V15Gy_cc": 5.0,
            "V95%": 48.0,
            "V95%_cc": 4.8,
            "HI": (19.8 - 10.2) / 15.0,
            "Dmean": 15.0,
        }
    )
    assert math.isnan(dvh.metric("D11cc"))
    assert dvh.metric("V25Gy") == 0.0 and dvh.metric("V5Gy") == 100.0


def test_curve_is_not_read_from_the_nearest_bin():
    # Coarse 2 Gy bins, yet a metric between edges is interpolated exactly for a uniform distribution.
    dvh = uniform_dvh(lo=10.3, hi=19.7, bin_width=2.0, n_bins=12)
    assert dvh.metric("D50") == pytest.approx(15.0)
    assert dvh.metric("D90") == pytest.approx(10.3 + 0.1 * 9.4)
    assert dvh.metric("V11.1Gy") == pytest.approx(100 * (19.7 - 11.1) / 9.4)


def test_cumulative_and_differential_curves():
    dvh = uniform_dvh()
    doses = np.array([0.0, 10.0, 12.5, 20.0, 25.0])
    np.testing.assert_allclose(dvh.cumulative(doses), [10.0, 10.0, 7.5, 0.0, 0.0])
    np.testing.assert_allclose(dvh.cumulative(doses, relative=True), [100, 100, 75, 0, 0])
    np.testing.assert_allclose(dvh.differential(np.arange(0, 26, 5.0)), [0, 0, 5, 5, 0])


def test_relative_metrics_ignore_the_volume_outside_the_grid():
    dvh = uniform_dvh(outside_cc=5.0)
    assert dvh.volume_cc == pytest.approx(15.0)
    assert dvh.volume_outside_dose_cc == pytest.approx(5.0)
    assert dvh.dose_volume_cc == pytest.approx(10.0)
    assert dvh.metric("D50") == pytest.approx(15.0)
    assert dvh.metric("V15Gy") == pytest.approx(50.0)


def test_gaps_take_the_hottest_reading():
    """Two separate dose levels: D50 is the lowest dose of the hottest half, not the top of the cold half."""
    hist = np.zeros(40)
    hist[10] = hist[30] = 500.0  # 0.5 cc at [10, 11) Gy and 0.5 cc at [30, 31) Gy
    dvh = dvh_from_histogram("gap", hist, 1.0, 1000.0, 0.0, 500 * 10.5 + 500 * 30.5, 10.0, 31.0)
    assert dvh.metric("D50") == pytest.approx(30.0)
    assert dvh.metric("V20Gy") == pytest.approx(50.0)


def test_uniform_dose_and_tails_outside_dmin_dmax():
    hist = np.zeros(20)
    hist[5] = 1000.0
    flat = dvh_from_histogram("flat", hist, 1.0, 1000.0, 0.0, 5500.0, 5.5, 5.5)
    assert flat.metrics(["D1", "D50", "D99", "Dmean"]) == pytest.approx(
        {"D1": 5.5, "D50": 5.5, "D99": 5.5, "Dmean": 5.5}
    )
    assert flat.metric("V5.5Gy") == 100.0 and flat.metric("V5.6Gy") == 0.0
    # Mass spread below Dmin and above Dmax is folded back inside [Dmin, Dmax].
    hist = np.zeros(20)
    hist[3:8] = 200.0
    folded = dvh_from_histogram("f", hist, 1.0, 1000.0, 0.0, 5500.0, 4.2, 6.6)
    assert folded.dose_gy[0] == 4.2 and folded.dose_gy[-1] == 6.6
    assert folded.cumulative_cc[0] == pytest.approx(1.0) and folded.cumulative_cc[-1] == 0.0
    assert np.all(np.diff(folded.cumulative_cc) <= 0)


def test_prescription_is_required_for_relative_dose_metrics():
    with pytest.raises(MetricError):
        uniform_dvh().metric("V95%")


def test_empty_structures_have_undefined_metrics():
    empty = dvh_from_histogram("e", np.zeros(10), 1.0, 0.0, 0.0, 0.0, math.nan, math.nan)
    assert not empty.has_dose and empty.volume_cc == 0.0
    assert all(math.isnan(v) for v in empty.metrics(["D95", "Dmean", "V20Gy", "HI"]).values())


def test_which_metrics_need_the_dose_and_the_prescription():
    texts = ("volume", "VOLUME", "D95", "D2cc", "V20Gy", "V95%_cc", "Dmean", "Dmin", "Dmax", "HI")
    assert [parse_metric(t).needs_dose for t in texts] == [False, False] + [True] * 8
    assert [parse_metric(t).needs_prescription for t in texts] == [False] * 5 + [True] + [False] * 4


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])
def test_a_dvh_from_a_histogram_is_its_definition_bit_for_bit(monkeypatch, compiled):
    """The curve written in place (with NumPy, or by the compiled code that a process preferring it takes) is the
    definition written as array expressions, bit for bit: the mass in [Dmin, Dmax]'s bins with what lies beyond
    folded in (negative rounding clipped to 0), the edges from Dmin to Dmax, and the volume at or above each edge."""
    monkeypatch.setattr(dvh_module, "take_compiled", lambda: compiled)

    def definition(hist, bin_width, inside, dmin, dmax):
        mass = np.clip(hist, 0.0, None)
        k_lo, k_hi = min(int(dmin / bin_width), len(hist) - 1), min(int(dmax / bin_width), len(hist) - 1)
        folded = mass[k_lo : k_hi + 1].copy()
        folded[0] += mass[:k_lo].sum()
        folded[-1] += mass[k_hi + 1 :].sum()
        total = folded.sum()
        scale = inside / total if total > 0 else 0.0
        dose = np.concatenate([[dmin], bin_width * np.arange(k_lo + 1, k_hi + 1), [dmax]])
        below = np.concatenate([[0.0], np.cumsum(folded) * scale])
        below[-1] = inside
        cumulative = (inside - below) / 1000.0
        cumulative[-1] = 0.0
        return dose, cumulative

    rng = np.random.default_rng(12)
    for trial in range(300):
        n = int(rng.choice([1, 2, 7, 300, 16384]))
        hist = rng.uniform(-1e-9, 3.0, n) * (rng.uniform(size=n) < rng.uniform())
        bin_width = float(rng.uniform(1e-3, 0.5))
        dmin = float(rng.uniform(0.0, n * bin_width))
        dmax = dmin if trial % 9 == 0 else float(rng.uniform(dmin, 1.2 * n * bin_width))
        inside = float(rng.uniform(1.0, 5e5))
        got = dvh_from_histogram("s", hist, bin_width, inside, 0.0, 40.0 * inside, dmin, dmax)
        dose, cumulative = definition(hist, bin_width, inside, dmin, dmax)
        assert got.dose_gy.tobytes() == dose.tobytes() and got.cumulative_cc.tobytes() == cumulative.tobytes()


def test_a_dvh_read_only_within_the_bins_that_hold_mass_is_the_same_curve():
    """Where the backend says which bins hold mass (the GPU finds them on the device), only those are read: the same
    edges, and volumes to the last bits of the sums of what lies beyond Dmin and Dmax (added in other groups);
    the whole row as the span gives the same bits as no span."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = 16384
        first = int(rng.integers(0, n - 2))
        last = int(rng.integers(first, min(n, first + 6000)))
        hist = np.zeros(n)
        hist[first : last + 1] = rng.uniform(0.0, 3.0, last + 1 - first) * (rng.uniform(size=last + 1 - first) < 0.9)
        hist[first] = hist[last] = 1.0
        bin_width = float(rng.uniform(1e-3, 0.01))
        dmin = float(rng.uniform(max(first - 40, 0), first + 40) * bin_width)
        dmax = max(dmin, float(rng.uniform(last - 40, last + 40) * bin_width))
        inside = float(hist.sum())
        args = ("s", hist, bin_width, inside, 0.0, 40.0 * inside, dmin, dmax)
        plain = dvh_from_histogram(*args)
        spanned = dvh_from_histogram(*args, span=(first, last))
        whole = dvh_from_histogram(*args, span=(0, n - 1))
        assert spanned.dose_gy.tobytes() == plain.dose_gy.tobytes()
        np.testing.assert_allclose(spanned.cumulative_cc, plain.cumulative_cc, rtol=1e-12, atol=1e-12)
        assert whole.cumulative_cc.tobytes() == plain.cumulative_cc.tobytes()
