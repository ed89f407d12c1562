"""The report of ``make gpu-check``: the tests' outcome from JUnit XML above the benchmark table, written even
when no benchmark finished."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("benchmark_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_gpu_device" name="test_phantoms[device]" time="1.0"/>
<testcase classname="tests.test_gpu_device" name="test_nelms[device]" time="2.0">
  <failure message="AssertionError: 0.0123 != 0.0124 within 1e-05&#10;second line">trace</failure></testcase>
<testcase classname="tests.test_distributed" name="test_dask_cuda" time="0.1">
  <skipped type="pytest.skip" message="needs dask-cuda">skip</skipped></testcase>
<testcase classname="tests.test_gpu_kernels" name="test_launch" time="0.1">
  <error message="CUDARuntimeError: bad">e</error></testcase>
</testsuite></testsuites>
"""


def test_the_gpu_report_heads_the_table_with_the_tests_outcome(tmp_path):
    report = _report()
    (tmp_path / "gpu-tests.xml").write_text(JUNIT)
    results = {
        "datetime": "2026-12-01T10:00:00",
        "machine_info": {"cpu": {"brand_raw": "Some CPU", "count": 16}},
        "benchmarks": [
            {
                "group": "GPU kernel",
                "name": "test_kernel_bandwidth",
                "stats": {"median": 0.002, "rounds": 10},
                "extra_info": {"device": "NVIDIA H100 (GPU 0)", "cell_data_gbs": 900.0},
            }
        ],
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert (
        report.main(
            [
                str(tmp_path / "results.json"),
                "--out",
                str(tmp_path),
                "--tests",
                str(tmp_path / "gpu-tests.xml"),
                "--command",
                "make gpu-check",
            ]
        )
        == 0
    )
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "on Some CPU (16 cores), Python ; command: `make gpu-check`." in text
    assert "4 tests (gpu-tests.xml): 1 passed, 1 failed, 1 error, 1 skipped." in text
    assert "- tests.test_gpu_device::test_nelms[device]: AssertionError: 0.0123 != 0.0124 within 1e-05\n" in text
    assert "- tests.test_gpu_kernels::test_launch: CUDARuntimeError: bad" in text
    assert "- tests.test_distributed::test_dask_cuda: needs dask-cuda" in text
    assert text.index("## Tests") < text.index("| GPU kernel | test_kernel_bandwidth | 2.00 | 10 |")
    assert "device=NVIDIA H100 (GPU 0)" in text


def test_the_report_is_written_without_benchmarks_or_tests(tmp_path):
    report = _report()
    assert (
        report.main([str(tmp_path / "missing.json"), "--out", str(tmp_path), "--tests", str(tmp_path / "missing.xml")])
        == 0
    )
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "No test results: " in text and "| group | benchmark |" in text
