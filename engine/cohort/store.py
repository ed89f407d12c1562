"""The results of a cohort run: one HDF5 file that never holds half-written data, and a journal.

A finished case is appended at once to the journal (:mod:`.journal`), so a crash at any moment loses at most the
cases in flight. From time to time, and at the end of a run, the journal is consolidated: a new HDF5 file holding
the old one's cases and the journal's is written beside the old one, synced, and renamed over it (atomic), then
the journal is removed. Readers merge the HDF5 file and the journal, the last record of a case winning, so no
case is ever lost or counted twice. One run at a time writes a store (:mod:`.lock`). Consolidations happen when
the journal holds a quarter of the store (at least ``MIN_CONSOLIDATE`` cases), which keeps the total copying
linear in the cohort's size. Those on a run's way copy the file the store wrote last and append the journal's new
cases to the copy (every dataset is chunked and can grow), so that each case is encoded and compressed once there;
the one at the end of a run writes the file whole, its cases in the order of their ids.

HDF5 layout (format ``isodose-cohort-1``)::

    /                    attrs: format, isodose_version, settings (JSON), updated
    /cases/case_id       one row per case (string); also status ("ok" or "error"), error (string),
    /cases/record        the flat result record (JSON), read_s, compute_s, total_s (float64),
    /cases/inputs        what the result depends on (JSON, see cases.input_fingerprint; "null" when unknown)
    /cases/warnings      the warnings kept with the case's result (JSON list of strings)
    /cases/rows          a job's several results of the case (an audit's structures): JSON list of flat records
    /cases/columns/<key> the record's keys as typed columns: float64 (NaN where missing) or string
    /dvh/case, roi, role cumulative DVHs: case index, ROI name, role ("recurrence" or "roi")
    /dvh/step_gy, start, count  dose step, and the curve's slice of /dvh/cumulative_cc
    /dvh/cumulative_cc   volume (cc) receiving at least k * step_gy, all curves end to end (float32)
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import StoreError
from ..formatting import csv_cell
from ..outputs import private_temporary
from .entries import CaseEntry
from .journal import append_lines, curve_list, encode_line, light, start_journal
from .journal import read as read_journal
from .lock import WriterLock
from .table import record_keys, write_rows_table, write_table

log = logging.getLogger(__name__)

FORMAT = "isodose-cohort-1"
MIN_CONSOLIDATE = 200
#: Disk space set aside per case still to run: its journal line (record and DVH curves, typically 10 to
#: 30 kB) and its share of the next consolidated HDF5 file, with room to spare.
BYTES_PER_CASE = 128 * 1024
#: The curves of the journal's cases kept in memory for the next consolidation, at most (some 6,000 cases of four
#: curves); beyond, it reads them back from the journal.
KEPT_CURVE_BYTES = 64 * 1024 * 1024


def _strings(values: Iterable[str]):
    import h5py

    return np.array(list(values), dtype=h5py.string_dtype())


class ResultStore:
    """A cohort's results: ``path`` (HDF5) plus ``path.journal`` (see the store's schema in the docs).

    Open one with :meth:`open`. In memory it keeps each case's small entry (status, error, record, timings); DVH
    curves stay on disk, in the HDF5 file or the journal, and are read back by :meth:`dvh_curves`.

    Parameters
    ----------
    path : Path
        The HDF5 file.
    settings : dict
        The settings its results were computed with.
    records : dict
        Each case's entry, without its curves, by case id.
    journal_ids : set of str
        The cases held in the journal (not yet consolidated).
    lock : WriterLock, optional
        The writer lock, held by a store opened for writing.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from isodose.dicom.write import write_example_case
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_example_case(folder)
    >>> header = "case_id,dose,structures,plan,prescription_gy,recurrence_roi,recurrence_structures,registration"
    >>> row = "case-1,RD.example.dcm,RS.example.dcm,RP.example.dcm,,Recurrence,,"
    >>> _ = (folder / "manifest.csv").write_text(header + "\\n" + row + "\\n")
    >>> from isodose import run_cohort
    >>> _ = run_cohort(folder / "manifest.csv", folder / "results.h5", workers=1)
    >>> store = ResultStore.open(folder / "results.h5", create=False)
    >>> [(e["case_id"], e["status"], e["record"]["class_volume"]) for e in store.cases()]
    [('case-1', 'ok', 'marginal')]
    >>> [(c["roi"], c["role"]) for c in store.dvh_curves()]
    [('Recurrence', 'recurrence')]
    """

    def __init__(
        self,
        path: Path,
        settings: dict,
        records: dict[str, dict],
        journal_ids: set[str],
        lock: WriterLock | None = None,
    ):
        self.path = path
        self.journal = self.companions(path)["journal"]
        self.settings = settings
        self._records = records
        self._journal_ids = journal_ids
        self._lock = lock
        #: What this store last wrote into its HDF5 file, to append the journal's next cases to (None: not known,
        #: a file written before this store was opened; the next consolidation writes it whole).
        self._written: _Written | None = None
        #: The curves of the journal's cases as written by this store (see :meth:`_keep_curves`); None where some
        #: are not kept (a journal found on opening, say), and the next consolidation reads them back.
        self._kept: dict[str, list[dict]] | None = None if journal_ids else {}
        self._kept_bytes = 0

    def close(self) -> None:
        """Let another run write this store (a store opened for writing holds it until then)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- opening --------------------------------------------------------------------------------------------
    @staticmethod
    def companions(path: str | Path) -> dict[str, Path]:
        """The files a store at ``path`` keeps beside it: its journal, writer lock, table (CSV) and temporary file."""
        path = Path(path)
        return {
            "journal": path.with_name(path.name + ".journal"),
            "lock": path.with_name(path.name + ".lock"),
            "table": path.with_suffix(".csv"),
            "temporary file": path.with_name(path.name + ".tmp"),  # an earlier version's fixed name
        }

    @classmethod
    def owned(cls, path: str | Path, store: str | Path) -> str | None:
        """Which of the files of the store at ``store`` ``path`` is (``store``, or a companion's name), or None."""
        target = Path(path).resolve()
        return next(
            (what for what, own in {"store": Path(store), **cls.companions(store)}.items() if own.resolve() == target),
            None,
        )

    @classmethod
    def check_not_ours(cls, output: str | Path, store: str | Path, option: str) -> None:
        """Refuse an output file (``option``'s) that is the store at ``store`` or one of its companions: writing it
        would destroy results."""
        what = cls.owned(output, store)
        if what is not None:
            raise StoreError(f"{option} would write over the {what} of the results store {Path(store)}", path=output)

    @classmethod
    def open(cls, path: str | Path, settings: dict | None = None, *, create: bool = True) -> ResultStore:
        """Open (or, with ``create``, start) the store at ``path``.

        Parameters
        ----------
        path : str or path
            The HDF5 file (its journal and lock beside it).
        settings : dict, optional
            Must equal those the store was started with, so that one store never mixes results computed
            differently (:meth:`isodose.RunSettings.as_dict`); a new store needs them.
        create : bool
            Open for writing (the default): the store is started if missing, and holds the writer lock until
            :meth:`close`. ``create=False`` only reads, and is never refused while another run writes.

        Returns
        -------
        ResultStore
            The store, its cases read from the HDF5 file and the journal.

        Raises
        ------
        StoreError
            For a folder in the way, a store of other settings, a file that is not a store, no store (reading),
            or a store another run writes.
        """
        path = Path(path)
        if path.is_dir():
            raise StoreError("is a folder: the results go into a file, such as RESULTS.h5 inside it", path=path)
        lock = None
        if create and path.suffix.lower() == ".csv":  # its table (RESULTS.csv) would be the store itself
            raise StoreError(
                "ends in .csv: the store's table is written beside it as NAME.csv and would replace the store; "
                "name the store RESULTS.h5 (its table is then RESULTS.csv)",
                path=path,
            )
        if create:
            cls._check_writable(path)
            lock = WriterLock.acquire(path)  # before reading, so that what is read is not changing
        try:
            return cls._open(path, settings, create, lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @classmethod
    def _open(cls, path: Path, settings: dict | None, create: bool, lock: WriterLock | None) -> ResultStore:
        records: dict[str, dict] = {}
        stored_settings = None
        if path.exists():
            stored_settings, records = cls._read_hdf5_records(path)
        journal = cls.companions(path)["journal"]
        journal_settings, journal_entries = read_journal(journal)
        if stored_settings is None and journal_settings is None and journal_entries:
            raise StoreError(
                f"its journal holds {len(journal_entries)} case(s) but no settings, and the store's HDF5 file is "
                "missing: the settings those cases were computed with are unknown; restore the HDF5 file, or write to "
                "another --out",
                path=path,
            )
        stored_settings = stored_settings or journal_settings
        for case_id, entry in journal_entries.items():
            records[case_id] = light(entry)
        if stored_settings is None:
            if not create:
                raise StoreError("no results store here", path=path)
            if settings is None:
                raise StoreError("a new store needs its settings", path=path)
            stored_settings = settings
        elif settings is not None and _canonical(settings) != _canonical(stored_settings):
            raise StoreError(
                f"was made with other settings ({settings_difference(stored_settings, settings)}); resume it with the "
                "same options, or write to another --out",
                path=path,
            )
        store = cls(path, stored_settings, records, set(journal_entries), lock)
        if create:
            if not path.exists() and not journal.exists():
                # A new store keeps its settings in the journal until it is consolidated.
                start_journal(store.journal, store.settings)
        return store

    @staticmethod
    def _check_writable(path: Path) -> None:
        folder = path.parent
        if folder.exists() and not folder.is_dir():
            raise StoreError("cannot create the output folder: a file of that name is in the way", path=folder)
        if not folder.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the output folder ({exc.strerror})", path=folder) from exc
        try:  # a real write: permissions, read-only mounts and quotas all show here
            probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".isodose-probe-", delete=True)
            probe.close()
        except OSError as exc:
            raise StoreError(f"the output folder is not writable ({exc.strerror or exc})", path=folder) from exc
        if path.exists() and not os.access(path, os.W_OK):
            raise StoreError("the results file is not writable", path=path)

    def check_free_space(self, n_cases: int) -> None:
        """Refuse to start ``n_cases`` cases that the output's file system has no room to record: better an error
        now than a full disk after hours of work (a full disk mid-run stops the run at the case it could not
        write; the cases written before it are kept)."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        stored = self.path.stat().st_size if self.path.exists() else 0
        needed = n_cases * BYTES_PER_CASE + stored  # journal lines, and a new HDF5 file beside the old one
        if n_cases and free < needed:
            raise StoreError(
                f"only {free / 1e6:,.0f} MB free for the results; {n_cases:,} cases need about {needed / 1e6:,.0f} MB "
                "(journal and HDF5 file): free some space or write to another --out",
                path=self.path.parent,
            )

    @staticmethod
    def _read_hdf5_records(path: Path) -> tuple[dict, dict[str, dict]]:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise StoreError(f"is not an isodose results store (format {f.attrs.get('format')!r})", path=path)
                settings = json.loads(f.attrs["settings"])
                cases = f["cases"]
                ids = _decoded(cases["case_id"][()])
                status = _decoded(cases["status"][()])
                error = _decoded(cases["error"][()])
                payload = [json.loads(v) for v in _decoded(cases["record"][()])]
                inputs = (
                    [json.loads(v) for v in _decoded(cases["inputs"][()])] if "inputs" in cases else [None] * len(ids)
                )
                warnings = (  # stores written before warnings were kept have none
                    [json.loads(v) for v in _decoded(cases["warnings"][()])] if "warnings" in cases else [[]] * len(ids)
                )
                rows = [json.loads(v) for v in _decoded(cases["rows"][()])] if "rows" in cases else [[]] * len(ids)
                timings = {k: cases[k][()] for k in ("read_s", "compute_s", "total_s")}
        except StoreError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"cannot be read as an isodose results store ({exc})", path=path) from exc
        records = {
            case_id: {
                "case_id": case_id,
                "status": status[i],
                "error": error[i],
                "record": payload[i],
                "timings": {k: _number(v[i]) for k, v in timings.items()},
                "inputs": inputs[i],
                "warnings": list(warnings[i]),
                **({"rows": rows[i]} if rows[i] else {}),
            }
            for i, case_id in enumerate(ids)
        }
        return settings, records

    # -- reading --------------------------------------------------------------------------------------------
    def cases(self) -> list[dict]:
        """Every case's entry (``case_id``, ``status``, ``error``, ``record``, ``timings``), by case id."""
        return sorted(self._records.values(), key=lambda e: e["case_id"])

    def finished(self) -> set[str]:
        """Cases finished without error: a resumed run skips them (unless :meth:`inputs_changed`)."""
        return {k for k, v in self._records.items() if v["status"] == "ok"}

    def inputs_changed(self, case_id: str, inputs: dict) -> bool:
        """Whether ``inputs`` (see :func:`isodose.cohort.cases.input_fingerprint`) differ from those stored with the
        case's result; False when the store holds none for it (a store written before they were kept)."""
        stored = self._records.get(case_id, {}).get("inputs")
        return stored is not None and stored != json.loads(json.dumps(inputs, default=str))

    def __len__(self) -> int:
        return len(self._records)

    def dvh_curves(self) -> list[dict]:
        """Every stored DVH: dicts of ``case_id``, ``roi``, ``role``, ``step_gy`` and ``cumulative_cc``.

        One consistent snapshot, even while another process consolidates the store: the journal is read first,
        then the HDF5 file, whose curves count only for cases that journal does not hold. A consolidation in
        between has put the journal's cases into the new HDF5 file (read whole), and one after it changes nothing
        read. Curves that cannot be read (a damaged ``/dvh`` group) are left out with a warning naming the file;
        the cases' records stay."""
        _, journal_entries = read_journal(self.journal)
        curves = [c for c in self._hdf5_curves() if c["case_id"] not in journal_entries]
        for case_id, entry in journal_entries.items():
            curves += [{"case_id": case_id, **curve} for curve in curve_list(entry)]
        return curves

    def _hdf5_curves(self) -> list[dict]:
        import h5py

        if not self.path.exists():
            return []
        try:
            return self._read_hdf5_curves(h5py)
        except (KeyError, OSError, ValueError, IndexError, TypeError) as exc:
            log.warning(
                "%s: its DVH curves cannot be read (%s: %s); going on without them (every case's record is kept)",
                self.path,
                type(exc).__name__,
                exc,
            )
            return []

    def _read_hdf5_curves(self, h5py) -> list[dict]:
        with h5py.File(self.path, "r") as f:
            ids = _decoded(f["cases/case_id"][()])
            dvh = f["dvh"]
            values = dvh["cumulative_cc"][()]
            rois, roles = _decoded(dvh["roi"][()]), _decoded(dvh["role"][()])
            step, start, count = dvh["step_gy"][()], dvh["start"][()], dvh["count"][()]
            return [
                {
                    "case_id": ids[c],
                    "roi": rois[j],
                    "role": roles[j],
                    "step_gy": float(step[j]),
                    "cumulative_cc": values[start[j] : start[j] + count[j]],
                }
                for j, c in enumerate(dvh["case"][()])
            ]

    # -- writing --------------------------------------------------------------------------------------------
    def append(self, entry: CaseEntry) -> None:
        """Record one finished case, durably, before anything else happens."""
        self.append_many([entry])

    def append_many(self, entries: Sequence[CaseEntry]) -> None:
        """Record finished cases, durably (one sync for them all), before anything else happens: none of them
        is held as stored until every line is on disk."""
        if not entries:
            return
        lines, records, curves = zip(*(encode_line(entry) for entry in entries))
        if not self.journal.exists() or self.journal.stat().st_size == 0:
            # Every journal starts with its settings, so that it never stands without them (after a
            # consolidation emptied the last one, with the HDF5 file lost since, say).
            start_journal(self.journal, self.settings)
        append_lines(self.journal, list(lines))
        for record, case_curves in zip(records, curves):
            self._records[record["case_id"]] = record
            self._journal_ids.add(record["case_id"])
            self._keep_curves(record["case_id"], case_curves)
        if len(self._journal_ids) >= max(MIN_CONSOLIDATE, len(self._records) // 4):
            self.consolidate(whole=False)

    def _keep_curves(self, case_id: str, curves: list[dict] | None) -> None:
        """Keep the curves of a case just written to the journal, as they read back from it, for the next
        consolidation to append without reading the journal again (up to ``KEPT_CURVE_BYTES`` in all)."""
        if self._kept is None:  # the next consolidation reads the journal back anyway
            return
        size = sum(c["cumulative_cc"].nbytes for c in curves) if curves is not None else 0
        if curves is None or self._kept_bytes + size > KEPT_CURVE_BYTES:
            self._kept, self._kept_bytes = None, 0
            return
        if case_id in self._kept:  # redone within the journal: its last curves
            self._kept_bytes -= sum(c["cumulative_cc"].nbytes for c in self._kept[case_id])
        self._kept[case_id] = curves
        self._kept_bytes += size

    def consolidate(self, *, whole: bool = True) -> None:
        """Put the journal's cases into a new HDF5 file, rename it over the old one, then empty the journal.

        ``whole`` (the default, and the end of a run): every case is written anew, in the order of their ids. Else
        (a run's consolidations on its way) the journal's cases are appended to a copy of the file that this store
        wrote last, where they are all new to it: copying the file costs the file system's time, not the encoding
        and compressing of its cases again. Written whole every time, each case would be encoded some five times
        over a run (0.6 ms a case in all, against 0.2 for the appends). Anything else (a file written before this
        store was opened, a case of the journal already in the file) is written whole."""
        import h5py

        # A temporary file of a name no one can foresee, made by this process (O_EXCL): a link planted at a fixed
        # name in the output folder cannot make the run write over another file.
        tmp = private_temporary(self.path)
        try:
            written = None
            if not whole and self._appendable():
                shutil.copyfile(self.path, tmp)
                with h5py.File(tmp, "r+") as f:
                    written = self._append_journal(f)
            if written is None:
                entries = self.cases()
                curves = self.dvh_curves()
                with h5py.File(tmp, "w") as f:
                    f.attrs["format"] = FORMAT
                    f.attrs["isodose_version"] = __version__
                    f.attrs["settings"] = json.dumps(self.settings)
                    f.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                    kinds = self._write_cases(f, entries)
                    self._write_dvhs(f, entries, curves)
                written = _Written([e["case_id"] for e in entries], kinds)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            self._written = None  # not known now: the next consolidation writes the file whole
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StoreError(
                    f"cannot write the results ({exc.strerror or exc}); the journal keeps every finished case",
                    path=self.path,
                ) from exc
            raise
        self._written = written
        # The new file holds everything the journal held (a crash before this line only leaves duplicates of
        # cases already in the file, which readers collapse).
        self.journal.unlink(missing_ok=True)
        self._journal_ids = set()
        self._kept, self._kept_bytes = {}, 0

    def _appendable(self) -> bool:
        """Whether the journal's cases can be appended to the HDF5 file: this store wrote it last, and none of
        them is in it yet (a case redone would otherwise stand twice)."""
        written = self._written
        return written is not None and self.path.exists() and self._journal_ids.isdisjoint(written.ids)

    def _append_journal(self, f) -> _Written | None:
        """The journal's cases appended to ``f``, a copy of the file this store wrote last (in the order of their
        ids, after its rows), giving the same datasets that writing it whole would (the order of their rows aside);
        None (``f`` untouched) where a dataset of ``f`` is not the one this store wrote."""
        written = self._written
        assert written is not None
        cases, dvh = f["cases"], f["dvh"]
        n_old = len(written.order)
        case_sets = [cases[k] for k in _CASE_DATASETS if k in cases]
        if any(d.maxshape != (None,) or d.shape[0] != n_old for d in case_sets) or any(
            k not in dvh or dvh[k].maxshape != (None,) for k in _DVH_DATASETS
        ):
            return None
        new_ids = sorted(self._journal_ids)
        entries = [self._records[i] for i in new_ids]
        kept = self._kept
        if kept is None:
            _, journal_entries = read_journal(self.journal)
            case_curves = {case_id: curve_list(journal_entries.get(case_id, {})) for case_id in new_ids}
        else:  # each one's curves as the journal holds them, kept as they were written
            case_curves = {case_id: kept.get(case_id, []) for case_id in new_ids}
        for key, values in _case_datasets(entries, rows="rows" in cases or any(e.get("rows") for e in entries)).items():
            if key in cases:
                _extend(cases[key], values)
            else:  # rows: the first job of several results per case (the earlier cases have none)
                cases.create_dataset(key, data=np.concatenate([_strings(["[]"] * n_old), values]), **_GROWING)
        order = written.order + new_ids
        kinds = dict(written.kinds)
        columns = cases["columns"]
        names = _column_names(record_keys([{"record": {k: None for k in written.kinds}}, *entries]), self.path)
        for key, name in names.items():
            in_column = [e.get("record", {}).get(key) for e in entries]
            before = kinds.get(key, "none")
            kinds[key] = _combined(before, _kind(in_column))
            if key in written.kinds and _stored_as(before) == _stored_as(kinds[key]):
                _extend(columns[name], _column_values(in_column, kinds[key]))
            else:  # new, or its values now stored otherwise: the whole column, from the records
                if name in columns:
                    del columns[name]
                every = [self._records[i].get("record", {}).get(key) for i in order]
                columns.create_dataset(name, data=_column_values(every, kinds[key]), **_GROWING)
        index = {case_id: n_old + k for k, case_id in enumerate(new_ids)}
        curves = [{"case_id": case_id, **curve} for case_id in new_ids for curve in case_curves[case_id]]
        start = dvh["cumulative_cc"].shape[0]
        for key, values in _dvh_datasets(curves, index, start).items():
            _extend(dvh[key], values)
        f.attrs["isodose_version"] = __version__
        f.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        return _Written(order, kinds, appended=True)

    @property
    def pending(self) -> int:
        """Cases in the journal, not yet in the HDF5 file."""
        return len(self._journal_ids)

    @property
    def appended(self) -> bool:
        """Whether the HDF5 file holds cases appended on a run's way (in the order they were consolidated): the end
        of a run then writes it whole."""
        return self._written is not None and self._written.appended

    def _write_cases(self, f, entries: list[dict]) -> dict[str, str]:
        """The ``cases`` group of ``entries``; what each record column holds (see :func:`_kind`)."""
        cases = f.create_group("cases")
        for key, values in _case_datasets(entries, rows=any(e.get("rows") for e in entries)).items():
            cases.create_dataset(key, data=values, **_GROWING)
        columns = cases.create_group("columns")
        kinds = {}
        for key, name in _column_names(record_keys(entries), self.path).items():
            in_column = [e.get("record", {}).get(key) for e in entries]
            kinds[key] = _kind(in_column)
            columns.create_dataset(name, data=_column_values(in_column, kinds[key]), **_GROWING)
        return kinds

    @staticmethod
    def _write_dvhs(f, entries: list[dict], curves: list[dict]) -> None:
        index = {e["case_id"]: i for i, e in enumerate(entries)}
        dvh = f.create_group("dvh")
        for key, values in _dvh_datasets([c for c in curves if c["case_id"] in index], index, 0).items():
            dvh.create_dataset(key, data=values, **(_CURVE_VALUES if key == "cumulative_cc" else _GROWING))

    def write_table(self, path: str | Path | None = None) -> Path:
        """The flat table beside the store (``RESULTS.csv`` for ``RESULTS.h5``): one row per case, with
        ``case_id``, ``error`` and the record's keys."""
        return write_table(self.cases(), Path(path) if path else self.path.with_suffix(".csv"))

    def write_rows_table(self, path: str | Path | None = None) -> Path:
        """The flat table of a job of several results per case (an audit): one row per result, with ``case_id``,
        ``error`` (a failed case is one row) and the rows' keys."""
        return write_rows_table(self.cases(), Path(path) if path else self.path.with_suffix(".csv"))


def _decoded(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _number(value) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class _Written:
    """What a store wrote into its HDF5 file: its cases in the order of its rows, and what each record column holds
    (:func:`_kind`), so that the journal's next cases can be appended to a copy of it."""

    order: list[str]
    kinds: dict[str, str]
    #: Whether cases were appended to the file rather than all written at once, in the order of their ids.
    appended: bool = False

    @functools.cached_property
    def ids(self) -> frozenset[str]:
        return frozenset(self.order)


#: How the datasets of a store are made: chunked and growable, so that a consolidation on a run's way can append to
#: them (readers see the same arrays).
_GROWING: dict = {"maxshape": (None,), "chunks": True}
#: ... and the DVH curves' values, compressed in chunks of 64 kB.
_CURVE_VALUES: dict = {
    "maxshape": (None,),
    "chunks": (16384,),
    "compression": "gzip",
    "compression_opts": 4,
    "shuffle": True,
}
#: The datasets of /cases with one row per case (``rows`` only in a store of several results per case), and those of
#: /dvh.
_CASE_DATASETS = (
    "case_id",
    "status",
    "error",
    "record",
    "inputs",
    "warnings",
    "rows",
    "read_s",
    "compute_s",
    "total_s",
)
_DVH_DATASETS = ("case", "roi", "role", "step_gy", "start", "count", "cumulative_cc")


def _case_datasets(entries: list[dict], rows: bool) -> dict[str, np.ndarray]:
    """The rows of ``entries`` in /cases's datasets (``rows`` too, if asked)."""
    out = {
        "case_id": _strings(e["case_id"] for e in entries),
        "status": _strings(e["status"] for e in entries),
        "error": _strings(e.get("error", "") for e in entries),
        "record": _strings(json.dumps(e.get("record", {})) for e in entries),
        "inputs": _strings(json.dumps(e.get("inputs")) for e in entries),
        "warnings": _strings(json.dumps(e.get("warnings", [])) for e in entries),
    }
    if rows:
        out["rows"] = _strings(json.dumps(e.get("rows", [])) for e in entries)
    for key in ("read_s", "compute_s", "total_s"):
        out[key] = np.array([_number(e.get("timings", {}).get(key)) for e in entries], dtype=np.float64)
    return out


def _column_names(keys: list[str], path: Path) -> dict[str, str]:
    """Each record key's column in /cases/columns (a ``/`` becomes ``_``); a StoreError where two keys would share
    one."""
    names: dict[str, str] = {}
    keys_by_name: dict[str, str] = {}
    for key in keys:
        name = key.replace("/", "_")
        if name in keys_by_name:
            raise StoreError(
                f"the record keys {keys_by_name[name]!r} and {key!r} would both be stored as the column {name!r}: "
                "rename one (a manifest's column, say); the journal keeps every finished case",
                path=path,
            )
        names[key], keys_by_name[name] = name, key
    return names


def _kind(values: list) -> str:
    """What a record column's values are: ``number`` (every value present is a number: stored as float64, NaN where
    missing), ``text`` (stored as strings, as the CSV writes them) or ``none`` (no value present: empty strings)."""
    present = [v for v in values if v is not None]
    if not present:
        return "none"
    return "number" if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present) else "text"


def _combined(before: str, after: str) -> str:
    """The kind of a column of two parts' values, of kinds ``before`` and ``after``."""
    if before == "none" or before == after:
        return after
    return before if after == "none" else "text"


def _stored_as(kind: str) -> str:
    return "float64" if kind == "number" else "string"


def _column_values(values: list, kind: str) -> np.ndarray:
    if kind == "number":
        return np.array([_number(v) for v in values], dtype=np.float64)
    return _strings(csv_cell(v) for v in values)


def _dvh_datasets(curves: list[dict], index: dict[str, int], start: int) -> dict[str, np.ndarray]:
    """The rows of ``curves`` in /dvh's datasets: each curve's case by ``index`` (its row in /cases), its values
    from ``start`` on in /dvh/cumulative_cc."""
    counts = np.array([len(c["cumulative_cc"]) for c in curves], dtype=np.int64)
    return {
        "case": np.array([index[c["case_id"]] for c in curves], dtype=np.int64),
        "roi": _strings(c["roi"] for c in curves),
        "role": _strings(c["role"] for c in curves),
        "step_gy": np.array([c["step_gy"] for c in curves], dtype=np.float64),
        "start": start + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else counts,
        "count": counts,
        "cumulative_cc": (
            np.concatenate([np.asarray(c["cumulative_cc"], np.float32) for c in curves])
            if curves
            else np.zeros(0, np.float32)
        ),
    }


def _extend(dataset, values: np.ndarray) -> None:
    """``values`` appended to a growable dataset."""
    n = dataset.shape[0]
    dataset.resize((n + len(values),))
    dataset[n:] = values


def settings_difference(stored: dict, asked: dict) -> str:
    """What differs between a store's settings and those asked for, in words: ``criteria.isodose_pct: the store
    has 95.0, this run asks for 90.0``."""

    def flat(value, prefix: str = "") -> dict[str, object]:
        if isinstance(value, dict):
            out: dict[str, object] = {}
            for key, item in value.items():
                out.update(flat(item, f"{prefix}{key}."))
            return out
        return {prefix.rstrip("."): value}

    a, b = flat(stored), flat(asked)
    differing = [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    shown = [f"{key}: the store has {a.get(key)!r}, this run asks for {b.get(key)!r}" for key in differing[:3]]
    return "; ".join(shown) + (f"; and {len(differing) - 3} more" if len(differing) > 3 else "")


def _canonical(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)
