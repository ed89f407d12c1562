"""Runs dicompyler-core on DVH jobs and times it; it runs in dicompyler-core's own environment (pydicom below 3),
so it imports nothing from isodose. Used by compare_dicompyler.py.

    python dicompyler_worker.py JOBS.json OUT.json     # each job: rtdose, rtss, roi (number), options
    python dicompyler_worker.py --all RTDOSE RTSS       # every ROI, default settings (a whole-process run)
"""

from __future__ import annotations

import json
import sys
import time

STATISTICS = ("D99", "D95", "D5", "D1", "D0.03cc")


def _value(dvh, name: str) -> float:
    value = dvh.statistic(name)
    return float(getattr(value, "value", value))


def run_job(job: dict) -> dict:
    from dicompylercore import dvhcalc

    started = time.perf_counter()
    try:
        dvh = dvhcalc.get_dvh(job["rtss"], job["rtdose"], job["roi"], **job.get("options", {}))
    except Exception as exc:  # dicompyler-core's own failure, reported beside the numbers
        return {"id": job["id"], "error": f"{type(exc).__name__}: {exc}"}
    seconds = time.perf_counter() - started
    result = {
        "id": job["id"],
        "seconds": seconds,
        "volume_cc": float(dvh.volume),
        "dmin_gy": float(dvh.min),
        "dmean_gy": float(dvh.mean),
        "dmax_gy": float(dvh.max),
    }
    for name in STATISTICS:
        try:
            result[name] = _value(dvh, name) if dvh.volume > 0 else float("nan")
        except Exception:  # an empty or degenerate DVH
            result[name] = float("nan")
    return result


def main(argv: list[str]) -> int:
    if argv[:1] == ["--all"]:
        from dicompylercore import dicomparser, dvhcalc

        rtdose, rtss = argv[1], argv[2]
        for number in dicomparser.DicomParser(rtss).GetStructures():
            try:
                dvh = dvhcalc.get_dvh(rtss, rtdose, number)
                print(number, dvh.volume, dvh.mean, dvh.max)
            except Exception as exc:
                print(number, "error", exc)
        return 0
    jobs = json.loads(open(argv[0]).read())
    results = [run_job(job) for job in jobs]
    with open(argv[1], "w") as handle:
        json.dump(results, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
