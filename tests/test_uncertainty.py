"""Classification under registration uncertainty. References: closed forms (a sphere cut by a planar isodose of a
linear field, shifted along the gradient: its share inside is the spherical cap, so each class's probability is
a normal probability of closed-form shift thresholds), the deterministic classification, the NumPy reference and
the emulated CUDA kernels."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from isodose import classify_recurrence
from isodose.cli import main
from isodose.dicom.write import new_uid, write_dose, write_plan, write_structures
from isodose.dispatch import Backend
from isodose.errors import IsodoseError
from isodose.model import StructureSet
from isodose.phantoms import LinearField, Sphere, contour_shape
from isodose.uncertainty import CLASSES, Uncertainty, cohort_uncertainty

from .browser import colour_pixels, screenshot

FRAME = "1.2.826.0.1.3680043.8.498.300"
FIELD = LinearField(60.0, (0.0, -1.0, 0.0), (0.0, 0.0, 0.0))  # 60 Gy at y = 0, 1 Gy/mm less towards +y
PRESCRIPTION = 60.0  # the 95% isodose, 57 Gy, is the plane y = 3 mm
PLANE_Y = 3.0


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def case(centre_y: float, radius: float):
    dose = FIELD.grid((-40.0, -40.0, -40.0), (2.5, 2.5, 2.5), (33, 33, 33), FRAME)
    vr = contour_shape(Sphere((0.0, centre_y, 0.0), radius), "Vr", 9, 1.0, offset_mm=0.5)
    ptv = contour_shape(Sphere((0.0, 0.0, 0.0), 16.0), "PTV", 1, 2.5)
    return dose, StructureSet((ptv, vr), FRAME)


def cap_fraction(h: float, radius: float) -> float:
    h = min(max(h, 0.0), 2 * radius)
    return (math.pi * h * h * (3 * radius - h) / 3) / (4 / 3 * math.pi * radius**3)


def cap_height_for(fraction: float, radius: float) -> float:
    lo, hi = 0.0, 2 * radius
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cap_fraction(mid, radius) < fraction else (lo, mid)
    return 0.5 * (lo + hi)


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def closed_form_probabilities(centre_y: float, radius: float, sd: float) -> dict[str, float]:
    """A shift s along +y (away from the dose) leaves the cap height h(s) = PLANE_Y - (centre_y + s - radius): the
    case is in-field while h >= h95, marginal while h20 <= h < h95. With s ~ N(0, sd), both are normal
    probabilities."""
    h0 = PLANE_Y - (centre_y - radius)
    s95 = h0 - cap_height_for(0.95, radius)  # in-field for s <= s95
    s20 = h0 - cap_height_for(0.20, radius)
    p_in = normal_cdf(s95 / sd)
    p_out = 1.0 - normal_cdf(s20 / sd)
    return {"in-field": 100 * p_in, "marginal": 100 * (1 - p_in - p_out), "out-field": 100 * p_out}


@pytest.mark.parametrize(
    ("centre_y", "radius", "sd"),
    [(-4.0, 8.0, 2.0), (-2.0, 6.0, 1.5), (-5.0, 10.0, 3.0), (2.0, 5.0, 2.0)],
)
def test_class_probabilities_match_the_closed_form_within_3_standard_errors(centre_y, radius, sd):
    dose, structures = case(centre_y, radius)
    u = Uncertainty(translation_sd_mm=(0.0, sd, 0.0), draws=2000, seed=11)
    result = classify_recurrence(dose, structures, "Vr", PRESCRIPTION, uncertainty=u, backend="numba")
    expected = closed_form_probabilities(centre_y, radius, sd)
    for c in CLASSES:
        p = expected[c] / 100.0
        se = 100.0 * math.sqrt(p * (1 - p) / u.draws)
        got = result.uncertainty.volume_probability_pct[c]
        assert abs(got - expected[c]) <= 3 * se + 0.1, (c, got, expected[c], se)
        assert result.uncertainty.volume_se_pct[c] == pytest.approx(
            100 * math.sqrt(got / 100 * (1 - got / 100) / u.draws)
        )


def test_zero_sigma_gives_the_deterministic_classification_exactly():
    dose, structures = case(-4.0, 8.0)
    result = classify_recurrence(
        dose, structures, "Vr", PRESCRIPTION, uncertainty=Uncertainty(draws=50), backend="numba"
    )
    u = result.uncertainty
    assert u.volume_probability_pct[result.class_volume] == 100.0 and u.volume_stable
    assert u.centroid_probability_pct[result.class_centroid] == 100.0 and u.centroid_stable
    assert set(u.inside_isodose_pct.values()) == {result.inside_isodose_pct}
    assert set(u.d95_gy.values()) == {result.metrics["D95"]} and set(u.d100_gy.values()) == {result.metrics["D100"]}


def test_rotations_about_the_centroid_leave_a_sphere_as_it_is():
    dose, structures = case(-4.0, 8.0)
    u = Uncertainty(rotation_sd_deg=(5.0, 5.0, 5.0), draws=200, seed=3)
    result = classify_recurrence(dose, structures, "Vr", PRESCRIPTION, uncertainty=u, backend="numba")
    shares = list(result.uncertainty.inside_isodose_pct.values())
    assert max(abs(s - result.inside_isodose_pct) for s in shares) < 0.05
    assert result.uncertainty.volume_probability_pct[result.class_volume] == 100.0


RECORD = """
import json, sys
from tests.test_uncertainty import case, PRESCRIPTION
from isodose import classify_recurrence
from isodose.uncertainty import Uncertainty
dose, structures = case(-4.0, 8.0)
u = Uncertainty(translation_sd_mm=(1.0, 2.0, 1.0), rotation_sd_deg=2.0, draws=300, seed=5)
r = classify_recurrence(dose, structures, "Vr", PRESCRIPTION, uncertainty=u, backend="numba")
print(json.dumps({k: v for k, v in r.record().items() if k not in ("device",)}, sort_keys=True))
"""


def test_the_same_seed_gives_the_same_numbers_bit_for_bit_on_1_or_2_threads():
    outputs = []
    for threads in ("1", "2"):
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", RECORD], env=env, capture_output=True, text=True, check=True)
        outputs.append(done.stdout.strip().splitlines()[-1])
    assert outputs[0] == outputs[1]
    record = json.loads(outputs[0])
    assert record["uncertainty_draws"] == 300 and 0 < record["p_volume_in_field_pct"] < 100


def test_the_draws_depend_on_the_seed_and_the_key_only():
    u = Uncertainty(translation_sd_mm=2.0, draws=5, seed=1)
    assert np.array_equal(u.transforms((1.0, 2.0, 3.0), "case-1"), u.transforms((1.0, 2.0, 3.0), "case-1"))
    assert not np.array_equal(u.transforms((1.0, 2.0, 3.0), "case-1"), u.transforms((1.0, 2.0, 3.0), "case-2"))
    other = Uncertainty(translation_sd_mm=2.0, draws=5, seed=2)
    assert not np.array_equal(u.transforms((0, 0, 0)), other.transforms((0, 0, 0)))
    with pytest.raises(IsodoseError, match="translation's SD"):
        Uncertainty(translation_sd_mm=(-1.0, 0.0, 0.0))
    with pytest.raises(IsodoseError, match="number of draws"):
        Uncertainty(draws=0)


def test_backends_agree(emulated_gpu):
    dose, structures = case(-4.0, 8.0)
    u = Uncertainty(translation_sd_mm=(1.0, 2.0, 1.0), rotation_sd_deg=1.0, draws=300, seed=7)
    results = {
        name: classify_recurrence(dose, structures, "Vr", PRESCRIPTION, uncertainty=u, backend=backend)
        for name, backend in (
            ("numpy", "numpy"),
            ("numba", "numba"),
            ("gpu", Backend("cupy (emulated)", emulated_gpu.device, emulated_gpu)),
        )
    }
    reference = results["numpy"].uncertainty
    for name in ("numba", "gpu"):
        other = results[name].uncertainty
        for c in CLASSES:  # a draw on a threshold may fall either side of it
            assert abs(other.volume_probability_pct[c] - reference.volume_probability_pct[c]) <= 100 / 300
        for q in reference.inside_isodose_pct:
            assert other.inside_isodose_pct[q] == pytest.approx(reference.inside_isodose_pct[q], abs=1e-3)


def test_the_cohorts_interval_combines_the_cases_uncertainty_with_its_sampling():
    """Four hundred cases, each in-field or marginal with probability 1/2: the in-field share's interval is the
    binomial one, 50 +- 1.96 x 50 / sqrt(400) = 45.1 to 54.9 %; cases certain of their class give the plain
    bootstrap of the shares."""
    n = 400
    half = np.tile([50.0, 50.0, 0.0], (n, 1))
    summary = cohort_uncertainty([f"c{k}" for k in range(n)], half, [False] * n, seed=1)
    assert summary.expected_counts == {"in-field": 200.0, "marginal": 200.0, "out-field": 0.0}
    low, high = summary.share_interval_pct["in-field"]
    assert low == pytest.approx(50 - 1.96 * 50 / 20, abs=0.8) and high == pytest.approx(50 + 1.96 * 50 / 20, abs=0.8)
    assert len(summary.unstable) == n
    certain = np.array([[100.0, 0.0, 0.0]] * 100 + [[0.0, 100.0, 0.0]] * 300)
    low, high = cohort_uncertainty([str(k) for k in range(n)], certain, [True] * n).share_interval_pct["in-field"]
    assert low < 25.0 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.25 * 0.75 / n) * 100, abs=1.0)


def write_case(folder, centre_y: float, patient: str):
    folder.mkdir(parents=True, exist_ok=True)
    dose, structures = case(centre_y, 8.0)
    uid = new_uid()
    rd = write_dose(dose, folder / "RD.dcm", patient_id=patient, frame_of_reference_uid=FRAME, referenced_plan_uid=uid)
    rs = write_structures(structures, folder / "RS.dcm", patient_id=patient, frame_of_reference_uid=FRAME)
    rp = write_plan(
        folder / "RP.dcm",
        prescription_gy=PRESCRIPTION,
        number_of_fractions=30,
        patient_id=patient,
        frame_of_reference_uid=FRAME,
        sop_instance_uid=uid,
    )
    return rd, rs, rp


OPTIONS = ["--uncertainty-translation-mm", "2", "--uncertainty-rotation-deg", "1", "--draws", "400", "--seed", "0"]


def test_classify_prints_the_probabilities(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path, -4.0, "P1")
    base = ["classify", "--dose", rd, "--structures", rs, "--plan", rp, "--recurrence", "Vr", "--format", "json"]
    code, out, err = run(capsys, *base, *OPTIONS)
    assert code == 0, err
    record = json.loads(out)
    assert sum(record[f"p_volume_{c.replace('-', '_')}_pct"] for c in CLASSES) == pytest.approx(100.0)
    for key in (
        "inside_isodose_pct_p2_5",
        "inside_isodose_pct_p50",
        "inside_isodose_pct_p97_5",
        "D95_gy_p50",
        "D100_gy_p2_5",
        "class_volume_stable",
        "se_centroid_marginal_pct",
        "uncertainty_draws",
    ):
        assert key in record, key
    code, _, err = run(capsys, *base, "--uncertainty-translation-mm", "1", "2")
    assert code == 2 and "one value or three" in err


def test_a_cohort_run_keeps_the_probabilities_and_reports_the_unstable_cases(tmp_path, capsys):
    folder = tmp_path / "cohort"
    for k, centre in enumerate((-10.0, -4.0, -3.0, 2.0, 9.0)):
        write_case(folder / f"p{k}", centre, f"P{k}")
    out = tmp_path / "r.h5"
    code, _, err = run(
        capsys,
        "cohort",
        "run",
        folder,
        "--out",
        out,
        "--recurrence-roi",
        "Vr",
        "--no-progress",
        "--workers",
        "2",
        *OPTIONS,
    )
    assert code == 0, err
    rows = {r["case_id"]: r for r in csv.DictReader(out.with_suffix(".csv").open())}
    assert float(rows["P0"]["p_volume_in_field_pct"]) == 100.0 and rows["P0"]["class_volume_stable"] == "true"
    assert rows["P2"]["class_volume_stable"] == "false"
    code, text, _ = run(capsys, "cohort", "report", out)
    assert "Under registration uncertainty (5 cases)" in text and "unstable cases (volume method): " in text
    html = out.with_suffix(".html").read_text()
    assert "Under registration uncertainty" in html and "class probabilities of each case" in html and "P2" in html
    # As a person sees it: the figure's in-field (green) and marginal (orange) bars are on the page.
    pixels = screenshot(out.with_suffix(".html"), tmp_path / "report.png", size=(1200, 5000))
    assert colour_pixels(pixels, (0x23, 0x8B, 0x45)) > 2000 and colour_pixels(pixels, (0xFE, 0x99, 0x29)) > 500
    code, js, _ = run(capsys, "cohort", "report", out, "--format", "json")
    summary = json.loads(js)["uncertainty"]["volume"]
    assert summary["cases"] == 5 and "P2" in summary["unstable"]
    # Other draws are other settings: a store is resumed only with its own.
    code, _, err = run(
        capsys, "cohort", "run", folder, "--out", out, "--recurrence-roi", "Vr", "--no-progress", "--draws", "100"
    )
    assert code == 2 and "uncertainty" in err


def test_draws_without_an_error_to_draw_are_refused(tmp_path, capsys):
    rd, rs, rp = write_case(tmp_path, -4.0, "P")
    for extra in (["--draws", "1000"], ["--stable-level", "90"], ["--seed", "3"]):
        code, _, err = run(
            capsys, "classify", "--dose", rd, "--structures", rs, "--plan", rp, "--recurrence", "Vr", *extra
        )
        assert code == 2 and err.count("\n") == 1 and "need the registration's error" in err, err
