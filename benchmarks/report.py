"""Turn the JSON of ``make bench`` into a table (docs/generated/BENCHMARKS.md) and a scaling plot
(docs/generated/scaling.png), both shown by the docs' Benchmarks page; ``--out DIR`` writes them into DIR instead
(``make gpu-check`` does, into benchmarks/gpu), and ``--tests JUNIT_XML`` heads the table with the outcome of a test
run (``make gpu-check`` gives it the ``gpu`` tests').

    .venv/bin/python benchmarks/report.py [benchmarks/results.json] [--out DIR] [--tests JUNIT_XML]
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _median_ms(bench: dict) -> float:
    return 1000.0 * bench["stats"]["median"]


def table(data: dict, command: str = "make bench") -> list[str]:
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("processor", ""))
    lines = [
        "# Benchmarks",
        "",
        f"Measured {data.get('datetime', '')[:10]} on {cpu} ({machine.get('cpu', {}).get('count', '?')} cores), "
        f"Python {machine.get('python_version', '')}; command: `{command}`. "
        "Medians; compare rows of one group only (they ran side by side).",
        "",
        "| group | benchmark | median ms | rounds | details |",
        "|---|---|---|---|---|",
    ]
    for bench in sorted(data["benchmarks"], key=lambda b: (b["group"] or "", b["name"])):
        extra = {k: v for k, v in bench.get("extra_info", {}).items() if k not in ("scale", "unit")}
        details = ", ".join(f"{k}={v}" for k, v in extra.items())
        lines.append(
            f"| {bench['group']} | {bench['name']} | {_median_ms(bench):.2f} | {bench['stats']['rounds']} | {details} |"
        )
    return lines


def outcome_lines(junit_xml: Path) -> list[str]:
    """The outcome of a pytest run from its JUnit XML: counts, then each test that did not pass, with the first
    line of its message, and the tests that passed."""
    if not junit_xml.is_file():
        return ["## Tests", "", f"No test results: {junit_xml} was not written.", ""]
    cases = list(ElementTree.parse(junit_xml).getroot().iter("testcase"))
    outcomes: dict[str, list[str]] = {"passed": [], "failed": [], "error": [], "skipped": []}
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                message = (found.get("message") or found.text or "").strip().splitlines()
                outcomes["failed" if kind == "failure" else kind].append(f"{name}: {message[0] if message else ''}")
                break
        else:
            outcomes["passed"].append(name)
    counts = ", ".join(f"{len(v)} {k}" for k, v in outcomes.items())
    lines = ["## Tests", "", f"{len(cases)} tests ({junit_xml.name}): {counts}.", ""]
    for kind in ("failed", "error", "skipped", "passed"):
        if outcomes[kind]:
            lines += [f"{kind.capitalize()}:", ""] + [f"- {item}" for item in outcomes[kind]] + [""]
    return lines


def plot(data: dict, out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales: dict[str, list[tuple[float, float, str]]] = {}
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info", {})
        if "scale" in extra:
            scales.setdefault(extra["scale"], []).append((extra["size"], _median_ms(bench), extra.get("unit", "")))
    if not scales:
        return False
    fig, axes = plt.subplots(1, len(scales), figsize=(4.2 * len(scales), 3.6), squeeze=False)
    for ax, (scale, points) in zip(axes[0], sorted(scales.items())):
        points.sort()
        sizes = [p[0] for p in points]
        times = [p[1] for p in points]
        ax.loglog(sizes, times, "o-")
        ax.set_xlabel(f"{scale} ({points[0][2]})")
        ax.set_ylabel("median time (ms)")
        ax.set_title(scale)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="benchmark JSON to a table and a scaling plot")
    parser.add_argument("results", nargs="?", type=Path, default=HERE / "results.json")
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE.parent / "docs" / "generated",
        help="folder of BENCHMARKS.md and scaling.png (default docs/generated)",
    )
    parser.add_argument("--tests", type=Path, help="JUnit XML of a test run, summarised above the table")
    parser.add_argument("--command", default="make bench", help="the command that measured, for the table's head")
    args = parser.parse_args(argv)
    if args.results.is_file():
        data = json.loads(args.results.read_text())
    else:  # no benchmark finished (a broken device, say): the tests' outcome is still worth the page
        data = {"benchmarks": [], "datetime": f"(no {args.results.name})"}
    lines = table(data, args.command)
    if args.tests is not None:
        lines[2:2] = outcome_lines(args.tests)
    args.out.mkdir(parents=True, exist_ok=True)
    if plot(data, args.out / "scaling.png"):
        lines += ["", "![scaling](scaling.png)"]
    (args.out / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
