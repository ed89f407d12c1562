"""The results store's consolidations: those on a run's way append the journal's cases to a copy of the HDF5 file,
and give what writing the file whole gives (the order of the rows aside); anything else is written whole."""

from __future__ import annotations

import math
import zlib

import h5py
import numpy as np
import pytest

from isodose.cohort import store as store_module
from isodose.cohort.store import ResultStore, StoreError

SETTINGS = {"kind": "test"}


def _entry(case_id: str, record: dict, *, rows=None, curves: int = 1, status: str = "ok") -> dict:
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    entry = {
        "case_id": case_id,
        "status": status,
        "error": "" if status == "ok" else "it failed",
        "record": record,
        "timings": {"read_s": 0.5, "compute_s": 0.25, "total_s": 0.75},
        "warnings": [f"warned about {case_id}"],
        "inputs": {"dose": {"size": len(case_id)}},
        "dvhs": {
            f"ROI{k}": {"role": "roi" if k else "recurrence", "step_gy": 0.1, "cumulative_cc": rng.random(5 + 7 * k)}
            for k in range(curves)
        },
    }
    if rows is not None:
        entry["rows"] = rows
    return entry


def _batches() -> list[list[dict]]:
    """Cases whose ids sort before those of the batches before them (so that appended rows are out of the order of a
    file written whole), with record columns that change what they hold on the way."""
    return [
        [_entry(f"z{i}", {"a": float(i), "b": None, "c": i, "e": "x"}) for i in range(5)],
        [_entry(f"y{i}", {"a": math.nan, "b": 2.5 * i, "c": 3, "e": 1.0}, curves=2) for i in range(5)]
        + [_entry("yy", {}, status="error", curves=0)],
        [_entry(f"x{i}", {"a": 1, "c": "text", "d": [i, "list"]}, rows=[{"r": i}]) for i in range(5)],
        [_entry(f"w{i}", {"a": 2.0, "b": None, "f": None}) for i in range(5)],
    ]


def _contents(path) -> dict:
    """A store file as data keyed by case id: every /cases dataset's value, the columns (name, dtype, value) and the
    curves; with the names of the datasets."""

    def plain(value):
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, float) and math.isnan(value):
            return "NaN"
        return value.item() if isinstance(value, np.generic) else value

    with h5py.File(path, "r") as f:
        cases, dvh = f["cases"], f["dvh"]
        ids = [plain(v) for v in cases["case_id"][()]]
        rows = {
            case_id: {
                **{k: plain(cases[k][()][n]) for k in cases if k != "columns"},
                **{f"columns/{k}": (str(c.dtype), plain(c[()][n])) for k, c in cases["columns"].items()},
            }
            for n, case_id in enumerate(ids)
        }
        values = dvh["cumulative_cc"][()]
        curves = {
            (ids[c], plain(dvh["roi"][()][j])): (
                plain(dvh["role"][()][j]),
                float(dvh["step_gy"][j]),
                values[dvh["start"][j] : dvh["start"][j] + dvh["count"][j]].tobytes(),
            )
            for j, c in enumerate(dvh["case"][()])
        }
        names = sorted(f["cases"]) + sorted(f["cases/columns"]) + sorted(f["dvh"])
        return {"rows": rows, "curves": curves, "names": names, "order": ids, "n_values": len(values)}


@pytest.fixture
def appends(monkeypatch):
    """Consolidations on the way every 5 cases; the count of those that appended."""
    monkeypatch.setattr(store_module, "MIN_CONSOLIDATE", 5)
    made = []
    append = ResultStore._append_journal

    def counted(self, f):
        written = append(self, f)
        made.append(written is not None)
        return written

    monkeypatch.setattr(ResultStore, "_append_journal", counted)
    return made


@pytest.mark.parametrize("kept", [True, False], ids=["curves-kept", "curves-read-back"])
def test_consolidations_on_the_way_append_and_give_what_writing_whole_gives(tmp_path, appends, monkeypatch, kept):
    """... whether the journal's curves were kept as written, or are read back from it (beyond the bytes kept)."""
    if not kept:
        monkeypatch.setattr(store_module, "KEPT_CURVE_BYTES", 0)
    batches = _batches()
    with ResultStore.open(tmp_path / "whole.h5", SETTINGS) as whole:
        whole.append_many([e for batch in batches for e in batch])  # one consolidation, of a new file: whole
    assert appends == []
    with ResultStore.open(tmp_path / "appended.h5", SETTINGS) as store:
        for batch in batches:
            store.append_many(batch)
            assert store.pending == 0  # each batch consolidated (every 5 cases, at least a quarter of the store)
    assert appends == [True, True, True]  # the first consolidation writes the new file whole, the others append
    appended, expected = _contents(tmp_path / "appended.h5"), _contents(tmp_path / "whole.h5")
    assert appended["order"] != expected["order"]  # appended: each batch after the one before
    assert appended["rows"] == expected["rows"] and appended["curves"] == expected["curves"]
    assert appended["names"] == expected["names"] and appended["n_values"] == expected["n_values"]
    assert expected["rows"]["x1"]["columns/c"] == ("object", "text") and expected["rows"]["z1"]["columns/c"][1] == "1"
    assert expected["rows"]["w1"]["columns/b"] == ("float64", "NaN") and expected["rows"]["y2"]["rows"] == "[]"
    read, written = ResultStore.open(tmp_path / "appended.h5", create=False), ResultStore.open(tmp_path / "whole.h5")
    assert read.cases() == written.cases()
    key = [(c["case_id"], c["roi"]) for c in written.dvh_curves()]
    assert sorted(key) == sorted((c["case_id"], c["roi"]) for c in read.dvh_curves())
    written.close()
    with ResultStore.open(tmp_path / "appended.h5", SETTINGS) as store:  # the end of a run: whole, in id order
        store.append(_entry("v0", {"a": 0.0}))
        store.consolidate()
    with ResultStore.open(tmp_path / "whole.h5", SETTINGS) as whole:
        whole.append(_entry("v0", {"a": 0.0}))
        whole.consolidate()
    assert _contents(tmp_path / "appended.h5") == _contents(tmp_path / "whole.h5")


def test_a_case_redone_on_the_way_is_written_once(tmp_path, appends):
    """A case of the journal already in the file (redone) makes the consolidation write the file whole: the case
    stands once, with its last result."""
    with ResultStore.open(tmp_path / "r.h5", SETTINGS) as store:
        store.append_many([_entry(f"c{i}", {"a": float(i)}) for i in range(5)])
        store.append_many([_entry("c1", {"a": 10.0}, curves=3), *(_entry(f"d{i}", {"a": 1.0}) for i in range(4))])
        assert store.pending == 0
    assert appends == []
    contents = _contents(tmp_path / "r.h5")
    assert contents["order"] == sorted(contents["order"]) and len(contents["order"]) == 9
    assert contents["rows"]["c1"]["columns/a"] == ("float64", 10.0)
    assert [key for key in contents["curves"] if key[0] == "c1"] == [("c1", "ROI0"), ("c1", "ROI1"), ("c1", "ROI2")]


def test_a_file_this_store_did_not_write_is_written_whole_first(tmp_path, appends):
    """A store opened on a file written before (an earlier run's, or datasets that cannot grow) writes it whole at
    its first consolidation, then appends."""
    with ResultStore.open(tmp_path / "r.h5", SETTINGS) as store:
        store.append_many([_entry(f"c{i}", {"a": float(i)}) for i in range(5)])
    with h5py.File(tmp_path / "r.h5", "r+") as f:  # as an earlier version wrote it: datasets of a fixed size
        status = f["cases/status"][()]
        del f["cases/status"]
        f["cases/status"] = status
    with ResultStore.open(tmp_path / "r.h5", SETTINGS) as store:
        for batch in ("d", "e"):
            store.append_many([_entry(f"{batch}{i}", {"a": 1.0}) for i in range(5)])
        # The fixed dataset comes back growable in the whole file; the next consolidation appends.
        assert appends == [True]
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["cases/status"].maxshape == (None,) and len(f["cases/status"]) == 15


def test_an_append_that_fails_keeps_the_file_and_the_journal(tmp_path, appends, monkeypatch):
    with ResultStore.open(tmp_path / "r.h5", SETTINGS) as store:
        store.append_many([_entry(f"c{i}", {"a": float(i)}) for i in range(5)])
        before = (tmp_path / "r.h5").read_bytes()

        def full(*args):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(store_module.shutil, "copyfile", full)
        with pytest.raises(StoreError, match="No space left on device.*the journal keeps every finished case"):
            store.append_many([_entry(f"d{i}", {"a": 1.0}) for i in range(5)])
        assert (tmp_path / "r.h5").read_bytes() == before and store.pending == 5
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5", "r.h5.journal", "r.h5.lock"]
        monkeypatch.undo()
        monkeypatch.setattr(store_module, "MIN_CONSOLIDATE", 5)
        store.append_many([_entry(f"e{i}", {"a": 1.0}) for i in range(5)])  # after a failure: whole again
        assert store.pending == 0
    assert len(_contents(tmp_path / "r.h5")["order"]) == 15
    assert ResultStore.open(tmp_path / "r.h5", create=False).finished() == {f"{b}{i}" for b in "cde" for i in range(5)}


def test_a_case_redone_within_the_journal_is_appended_with_its_last_result(tmp_path, appends):
    with ResultStore.open(tmp_path / "r.h5", SETTINGS) as store:
        store.append_many([_entry(f"c{i}", {"a": float(i)}) for i in range(5)])
        store.append_many([_entry("d0", {"a": 1.0}), _entry("d1", {"a": 1.0})])
        store.append_many([_entry("d1", {"a": 2.0}, curves=3), _entry("d2", {"a": 1.0}), _entry("d3", {"a": 1.0})])
        assert store.pending == 4
        store.append(_entry("d4", {"a": 1.0}))
        assert store.pending == 0
    assert appends == [True]
    contents = _contents(tmp_path / "r.h5")
    assert len(contents["order"]) == 10 and contents["rows"]["d1"]["columns/a"] == ("float64", 2.0)
    assert [key for key in contents["curves"] if key[0] == "d1"] == [("d1", "ROI0"), ("d1", "ROI1"), ("d1", "ROI2")]


def test_a_run_whose_last_batch_was_consolidated_on_the_way_ends_with_the_file_whole(tmp_path, appends, monkeypatch):
    """The end of a run writes the file whole (its rows in id order) even when its last batch left the journal empty:
    ``appended`` says the file holds appended rows."""
    from isodose.cohort.runner import run_cohort
    from isodose.cohort.settings import RunSettings
    from isodose.cohort.synthetic import generate_cohort

    monkeypatch.setattr(store_module, "MIN_CONSOLIDATE", 2)
    manifest = generate_cohort(tmp_path / "cohort", 4, seed=3)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")  # ids in reverse order
    consolidations = []
    consolidate = ResultStore.consolidate

    def seen(self, *, whole=True):
        consolidations.append((whole, self.pending))
        consolidate(self, whole=whole)

    monkeypatch.setattr(ResultStore, "consolidate", seen)
    summary = run_cohort(manifest, tmp_path / "r.h5", settings=RunSettings(), workers=1)
    assert summary.processed == 4 and summary.failed == 0
    assert consolidations[-1] == (True, 0) and any(not whole for whole, _ in consolidations)
    assert True in appends
    order = _contents(tmp_path / "r.h5")["order"]
    assert order == sorted(order) and len(order) == 4


def test_record_keys_that_would_share_a_column_are_refused_in_one_line(tmp_path, appends):
    with ResultStore.open(tmp_path / "r.h5", SETTINGS) as store:
        store.append_many([_entry(f"c{i}", {"a/b": 1.0}) for i in range(5)])
        with pytest.raises(StoreError, match="'a/b' and 'a_b' would both be stored as the column 'a_b'"):
            store.append_many([_entry(f"d{i}", {"a_b": 2.0}) for i in range(5)])
        assert store.pending == 5
    with ResultStore.open(tmp_path / "whole.h5", SETTINGS) as store:
        with pytest.raises(StoreError, match="would both be stored as the column 'a_b'"):
            store.append_many([_entry("c0", {"a/b": 1.0}), *(_entry(f"d{i}", {"a_b": 2.0}) for i in range(4))])


@pytest.mark.parametrize("odd", ["roi-key-not-text", "values-not-finite", "status-not-read-back"])
def test_curves_kept_as_written_are_those_the_journal_reads_back(tmp_path, appends, odd):
    """Curves that the journal writes otherwise, or entries it does not read back, are appended as the journal
    holds them: the same file as one written whole."""

    def odd_entry(case_id):
        entry = _entry(case_id, {"a": 1.0})
        if odd == "roi-key-not-text":
            entry["dvhs"] = {7: {"role": "roi", "step_gy": 0.1, "cumulative_cc": np.arange(3.0)}}
        elif odd == "values-not-finite":
            entry["dvhs"]["ROI0"]["cumulative_cc"] = np.array([np.inf, -np.inf, np.nan, 2.0, -0.0])
        else:
            entry["status"] = "skipped"
        return entry

    batches = [
        [_entry(f"c{i}", {"a": float(i)}) for i in range(5)],
        [_entry("d0", {"a": 1.0}), odd_entry("d1"), *(_entry(f"d{i}", {"a": 1.0}) for i in range(2, 5))],
    ]
    with ResultStore.open(tmp_path / "appended.h5", SETTINGS) as store:
        for batch in batches:
            store.append_many(batch)
    with ResultStore.open(tmp_path / "whole.h5", SETTINGS) as store:
        store.append_many([e for batch in batches for e in batch])
    assert appends == [True]
    appended, whole = _contents(tmp_path / "appended.h5"), _contents(tmp_path / "whole.h5")
    assert appended["rows"] == whole["rows"] and appended["curves"] == whole["curves"]
