"""Re-irradiation sums against closed forms: EQD2 and BED of uniform courses, sums of two courses, a linear field
resampled through a known rigid registration, the identity, and the errors; the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isodose.cli import main
from isodose.dicom.write import write_dose, write_plan, write_registration, write_structures
from isodose.errors import FrameOfReferenceError, RegistrationError
from isodose.geometry import rigid_matrix
from isodose.model import DoseGrid, Registration, Structure
from isodose.phantoms import LinearField, Sphere, contour_shape
from isodose.reirradiation import (
    AccumulationError,
    Course,
    accumulate,
    accumulated_dvhs,
    alpha_betas,
    bed,
    default_alpha_beta,
    eqd2,
    resample,
)

FRAME, OTHER = "1.2.3.4", "5.6.7.8"


def uniform(dose_gy: float, frame: str = FRAME, shape=(20, 24, 24), origin=(-30.0, -30.0, -25.0)) -> DoseGrid:
    return DoseGrid(np.full(shape, dose_gy, dtype=np.float32), origin, (2.5, 2.5, 2.5), frame)


def structures() -> list[Structure]:
    return [
        contour_shape(Sphere((0.0, 0.0, 0.0), 8.0), "GTV", 1, 2.0),
        contour_shape(Sphere((10.0, 5.0, 0.0), 5.0), "SpinalCord", 2, 2.0),
        contour_shape(Sphere((-10.0, -5.0, 0.0), 6.0), "Parotid_L", 3, 2.0),
    ]


@pytest.mark.parametrize(
    "dose, n, ab, expected",
    [
        (70.0, 35, 10.0, 70.0),  # 2 Gy fractions: EQD2 is the dose
        (60.0, 20, 10.0, 60.0 * 13.0 / 12.0),
        (30.0, 10, 3.0, 30.0 * 6.0 / 5.0),
        (20.0, 4, 2.0, 20.0 * 7.0 / 4.0),
    ],
)
def test_eqd2_of_a_uniform_course_is_the_closed_form(dose, n, ab, expected):
    d = dose / n
    assert eqd2(dose, n, ab) == pytest.approx(n * d * (d + ab) / (2 + ab)) == pytest.approx(expected)
    assert bed(dose, n, ab) == pytest.approx(dose * (1 + d / ab))
    assert eqd2(dose, n, ab) == pytest.approx(bed(dose, n, ab) / (1 + 2 / ab))
    with pytest.raises(AccumulationError, match="alpha/beta must be a positive"):
        eqd2(dose, n, 0.0)


def test_default_alpha_betas_and_overrides():
    rois = structures()
    assert [default_alpha_beta(s) for s in rois] == [10.0, 2.0, 3.0]
    assert alpha_betas(rois, {"gtv": 8.0}) == {"GTV": 8.0, "SpinalCord": 2.0, "Parotid_L": 3.0}
    with pytest.raises(AccumulationError, match="alpha/beta given for ROI 'Liver'"):
        alpha_betas(rois, {"Liver": 3.0})


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_two_uniform_courses_sum_physically_and_in_eqd2(backend):
    """60 Gy in 30 fractions, then 30 Gy in 10: physical 90 Gy everywhere; EQD2 60 + 30 (3 + a/b) / (2 + a/b)."""
    plan_sum = accumulate(
        [Course(uniform(60.0), 30), Course(uniform(30.0, shape=(18, 30, 30), origin=(-40.0, -40.0, -25.0)), 10)],
        backend=backend,
    )
    results = {r.name: r for r in accumulated_dvhs(plan_sum, structures(), backend=backend)}
    expected = {"GTV": 60 + 30 * 13 / 12, "SpinalCord": 60 + 30 * 5 / 4, "Parotid_L": 60 + 30 * 6 / 5}
    for name, value in expected.items():
        result = results[name]
        for statistic in ("dmin_gy", "dmean_gy", "dmax_gy"):
            assert getattr(result.physical, statistic) == pytest.approx(90.0, abs=1e-3)
            assert getattr(result.eqd2, statistic) == pytest.approx(value, abs=1e-3)
        assert result.eqd2.metric("D95") == pytest.approx(value, abs=1e-3)
        assert result.physical.volume_cc == pytest.approx(result.eqd2.volume_cc, rel=1e-9)
    # A tissue recovery of 40% discounts the first course's EQD2 only.
    recovered = accumulate([Course(uniform(60.0), 30), Course(uniform(30.0), 10)], recovery_pct=40.0, backend=backend)
    [gtv] = accumulated_dvhs(recovered, structures(), ["GTV"], backend=backend)
    assert gtv.eqd2.dmean_gy == pytest.approx(0.6 * 60 + 30 * 13 / 12, abs=1e-3)
    assert gtv.physical.dmean_gy == pytest.approx(90.0, abs=1e-3)


def two_courses() -> tuple[list[Course], Registration]:
    """Two courses of linear fields on different grids in different frames, and the registration relating them
    by a rotation and a shift (for comparing backends)."""
    first = LinearField(60.0, (0.3, -0.2, 0.1), (0.0, 0.0, 0.0)).grid(
        (-30.0, -30.0, -25.0), (2.5, 2.5, 2.5), (20, 24, 24), FRAME
    )
    second = LinearField(35.0, (-0.1, 0.25, 0.2), (2.0, 1.0, 0.0)).grid(
        (-40.0, -35.0, -30.0), (3.0, 2.0, 2.5), (22, 30, 26), OTHER
    )
    return [Course(first, 30), Course(second, 12)], Registration(
        FRAME, {OTHER: rigid_matrix(20.0, translation_mm=(3.0, -2.0, 1.5))}
    )


def test_a_linear_field_resampled_through_a_known_rigid_registration():
    """Course 2 is a linear field in its own frame; registered to course 1's frame by a rotation and a shift, its
    value at each of course 1's voxel centres is the field at the mapped point (trilinear is exact for it)."""
    field = LinearField(30.0, (0.2, -0.1, 0.05), (0.0, 0.0, 0.0))
    second = field.grid((-60.0, -60.0, -50.0), (2.0, 2.0, 2.0), (50, 60, 60), OTHER)
    first = uniform(0.0)
    to_first = rigid_matrix(30.0, translation_mm=(4.0, -3.0, 2.0))  # maps course 2's frame into course 1's
    registration = Registration(FRAME, {OTHER: to_first})
    plan_sum = accumulate([Course(first, 30), Course(second, 10)], registration=registration)
    centres = first.voxel_centres_mm()
    mapped = centres @ np.linalg.inv(to_first)[:3, :3].T + np.linalg.inv(to_first)[:3, 3]
    expected = field(mapped[:, 0], mapped[:, 1], mapped[:, 2]).reshape(first.dose_gy.shape)
    np.testing.assert_allclose(plan_sum.doses_gy[1], expected, atol=1e-4)
    np.testing.assert_allclose(plan_sum.grid.dose_gy, expected, atol=1e-4)


def test_identity_registration_leaves_the_doses_unchanged():
    rng = np.random.default_rng(4)
    dose = DoseGrid(rng.uniform(0, 50, (10, 12, 14)).astype(np.float32), (-17.5, -15.0, -12.5), (2.5, 2.5, 2.5), OTHER)
    first = DoseGrid(np.zeros((10, 12, 14), np.float32), dose.origin_mm, dose.spacing_mm, FRAME)
    plan_sum = accumulate([Course(first, 25), Course(dose, 5)], registration=Registration(FRAME, {OTHER: np.eye(4)}))
    np.testing.assert_allclose(plan_sum.doses_gy[1], dose.dose_gy, rtol=1e-6, atol=1e-6)
    values, outside = resample(dose, dose)
    assert outside == 0 and np.allclose(values, dose.dose_gy, rtol=1e-6)


def test_mismatched_frames_and_grids_are_clear_errors(caplog):
    with pytest.raises(FrameOfReferenceError, match="course 2 is in frame of reference 5.6.7.8, course 1 in 1.2.3.4"):
        accumulate([Course(uniform(60.0), 30), Course(uniform(30.0, frame=OTHER), 10)])
    with pytest.raises(RegistrationError):
        accumulate(
            [Course(uniform(60.0), 30), Course(uniform(30.0, frame=OTHER), 10)],
            registration=Registration(FRAME, {"9.9.9": np.eye(4)}),
        )
    far = uniform(30.0, origin=(500.0, 500.0, 500.0))
    with pytest.raises(AccumulationError, match="course 2's dose grid does not overlap course 1's"):
        accumulate([Course(uniform(60.0), 30), Course(far, 10)])
    partial = uniform(30.0, origin=(0.0, -30.0, -25.0))  # covers half of course 1's grid along x
    with caplog.at_level("WARNING"):
        plan_sum = accumulate([Course(uniform(60.0), 30), Course(partial, 10)])
    assert "does not reach" in caplog.text and "0 Gy there" in caplog.text
    assert plan_sum.grid.dose_gy.min() == pytest.approx(60.0) and plan_sum.grid.dose_gy.max() == pytest.approx(90.0)
    for fractions in (0, 2.5, True):
        with pytest.raises(AccumulationError, match=f"whole number of fractions of at least 1, not {fractions}"):
            Course(uniform(60.0), fractions)
        for convert in (eqd2, bed):
            with pytest.raises(AccumulationError, match="whole number of fractions"):
                convert(60.0, fractions, 3.0)
    with pytest.raises(AccumulationError, match="a course's dose must be a DoseGrid .* not str"):
        Course("RD.dcm", 30)
    with pytest.raises(AccumulationError, match="tissue recovery"):
        accumulate([Course(uniform(60.0), 30)], recovery_pct=100.0)
    with pytest.raises(AccumulationError, match="course 2 is not one of this plan sum's courses \\(0 to 1"):
        plan_sum.course_eqd2(2, 3.0)


def test_cli_accumulate_json(tmp_path, capsys):
    rd1 = write_dose(uniform(60.0), tmp_path / "rd1.dcm", frame_of_reference_uid=FRAME)
    rd2 = write_dose(uniform(30.0, frame=OTHER), tmp_path / "rd2.dcm", frame_of_reference_uid=OTHER)
    rp2 = write_plan(tmp_path / "rp2.dcm", prescription_gy=30.0, number_of_fractions=10, frame_of_reference_uid=OTHER)
    reg = write_registration(tmp_path / "reg.dcm", registered_frame_uid=FRAME, source_frame_uid=OTHER, matrix=np.eye(4))
    rs = write_structures(structures(), tmp_path / "rs.dcm", frame_of_reference_uid=FRAME)
    code = main(
        [
            "accumulate",
            "--course",
            f"{rd1}:30",
            "--course",
            f"{rd2}:{rp2}",
            "--reg",
            str(reg),
            "--structures",
            str(rs),
            "--alpha-beta",
            "GTV=8",
            "--metric",
            "D95",
            "--format",
            "json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert [c["fractions"] for c in report["courses"]] == [30, 10]
    by_name = {s["name"]: s for s in report["structures"]}
    gtv = by_name["GTV"]
    assert gtv["alpha_beta_gy"] == 8.0
    assert set(gtv["physical"]) == set(gtv["eqd2"]) == {"dmin_gy", "dmean_gy", "dmax_gy", "metrics"}
    assert gtv["physical"]["dmean_gy"] == pytest.approx(90.0, abs=1e-3)
    assert gtv["eqd2"]["dmean_gy"] == pytest.approx(60.0 + 30.0 * 11.0 / 10.0, abs=1e-3)
    assert gtv["eqd2"]["metrics"]["D95"] == pytest.approx(93.0, abs=1e-3)
    assert by_name["SpinalCord"]["eqd2"]["dmax_gy"] == pytest.approx(97.5, abs=1e-3)
    # Frames that differ without a registration: one line, status 2.
    code = main(["accumulate", "--course", f"{rd1}:30", "--course", f"{rd2}:10", "--structures", str(rs)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "give the spatial registration" in err
    code = main(["accumulate", "--course", f"{rd1}", "--course", f"{rd2}:10", "--structures", str(rs)])
    assert code == 2 and "--course must be RD.dcm:FRACTIONS" in capsys.readouterr().err
    for spec, message in [
        ("2.5", "the number of fractions must be a whole number of at least 1, not 2.5"),
        ("-3", "the number of fractions must be a whole number of at least 1, not -3"),
        ("0", "a course needs a whole number of fractions of at least 1, not 0"),
        ("thirty", "thirty is neither a number of fractions nor an RTPLAN file"),
    ]:
        code = main(
            [
                "accumulate",
                "--course",
                f"{rd1}:{spec}",
                "--course",
                f"{rd2}:10",
                "--reg",
                str(reg),
                "--structures",
                str(rs),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_course_too_large_for_the_device_is_a_clear_error():
    """Out of memory while resampling (as on a full GPU): one error naming the file, not a traceback."""
    import types

    from isodose.dispatch import Backend

    def resample(*args):
        raise MemoryError("out of memory allocating 38,400,000 bytes")

    kernels = types.SimpleNamespace(resample=resample, asarray=np.asarray, out_of_memory_errors=lambda: (MemoryError,))
    full = Backend("cupy", "a full GPU", kernels)
    second = DoseGrid(
        np.full((20, 24, 24), 30.0, np.float32), (-30.0, -30.0, -25.0), (2.5, 2.5, 2.5), FRAME, "/data/RD2.dcm"
    )
    with pytest.raises(AccumulationError, match=r"RD2\.dcm.*not enough memory on a full GPU .* 11,520 voxels"):
        accumulate([Course(uniform(60.0), 30), Course(second, 10)], backend=full)
