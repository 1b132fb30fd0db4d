#!/usr/bin/env python3
"""DIMSE benchmark: dicomhub (or any DIMSE server) against Orthanc, in the same run.

Measures the figures of the "Core archive" issue for both servers and prints each figure
and the ratio subject/Orthanc:

  * C-STORE ingest of a 512x512 CT series on one association (instances/s, MB/s)
  * C-STORE ingest of 10,000 small instances (2,000 studies) on 1 and on 4 associations
  * C-FIND median latency inside one association (STUDY by PatientID, PatientName A*,
    StudyDate range; SERIES within one study), with the 2,000 studies indexed
  * C-GET and C-MOVE of the CT series (instances/s)

See benchmarks/README.md.  Quick smoke run:

    /work/venv/bin/python benchmarks/dimse_bench.py --small-count 500 --ct-count 30
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    HOST,
    MOVE_AET,
    SCU_AET,
    DicomhubServer,
    ExternalServer,
    MemoryPeak,
    OrthancServer,
    Server,
    StoreSCP,
    dcmtk_env,
    find_dicomhub,
    log,
    tail,
)
from datasets import CACHE_ROOT, ensure_datasets  # noqa: E402
from minidimse import DimseError, MiniAssociation  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

PHASES = ("store", "find", "get", "move")


# --------------------------------------------------------------------------- results


@dataclass
class Figure:
    value: float | None = None  # the compared figure (instances/s or ms)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measurement:
    key: str
    label: str
    unit: str
    op: str  # ">=" (higher is better) or "<=" (lower is better)
    threshold: float
    figures: dict[str, Figure] = field(default_factory=dict)
    note: str = ""

    def ratio(self, subject: str, reference: str) -> float | None:
        a, b = self.figures.get(subject), self.figures.get(reference)
        if a is None or b is None or a.value is None or b.value is None or b.value == 0:
            return None
        return a.value / b.value

    def passed(self, ratio: float | None) -> bool | None:
        if ratio is None:
            return None
        return ratio >= self.threshold if self.op == ">=" else ratio <= self.threshold


# --------------------------------------------------------------------------- helpers


def run_bounded(cmd: list[str], timeout: float, logpath: Path) -> tuple[int | None, str]:
    """Run one DCMTK process with TCP_NODELAY=1 and a hard timeout; returns (rc, output)."""
    with open(logpath, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dcmtk_env(),
            start_new_session=True,
        )
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            rc = None
    return rc, ""


def last_lines(logpath: Path, n: int = 2) -> str:
    """Last output lines of a DCMTK log, without the echoed command line."""
    lines = [ln for ln in tail(logpath, 40).splitlines() if ln.strip() and not ln.startswith("$ ")]
    return " | ".join(lines[-n:]) or "no output (non-success status?)"


def warm_cache(paths: list[Path]) -> None:
    """Read the files once so every server is fed from the page cache."""
    for d in paths:
        for p in d.rglob("*.dcm"):
            with open(p, "rb") as fh:
                while fh.read(1 << 20):
                    pass


def settle() -> None:
    """Flush dirty pages of the previous run so they are not written back during the next."""
    os.sync()
    time.sleep(0.5)


def count_errors(logpath: Path, since: int) -> list[str]:
    text = logpath.read_text(errors="replace")[since:]
    return [ln for ln in text.splitlines() if ln.startswith(("E:", "F:"))]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.servers: list[Server] = []
        self.scps: dict[str, StoreSCP] = {}
        self.contents: dict[str, set[str]] = {}
        self.results: list[Measurement] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="dimse-bench-", dir=args.workdir))
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir()
        self.cache: Path = Path()
        self.manifest: dict[str, Any] = {}
        self.subject_key: str | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        a = self.args
        self.cache, self.manifest = ensure_datasets(a.ct_count, a.small_count, a.seed, log=log)
        if a.target:
            host, port, aet = parse_target(a.target)
            subject: Server | None = ExternalServer(
                key="subject", label="target", host=host, port=port, aet=aet
            )
        elif a.subject == "dicomhub":
            subject = DicomhubServer(
                key="subject",
                label="dicomhub",
                aet="DICOMHUB",
                managed=True,
                command=find_dicomhub(a.dicomhub_cmd),
                extra_args=list(a.dicomhub_arg or []),
            )
        elif a.subject == "orthanc":
            subject = OrthancServer(key="subject", label="Orthanc#2", aet="ORTHANC2", managed=True)
        else:
            subject = None
        if subject is not None:
            self.servers.append(subject)
            self.subject_key = "subject"
        if not a.no_orthanc:
            self.servers.append(OrthancServer(key="orthanc", label="Orthanc", aet="ORTHANC", managed=True))
        if not self.servers:
            raise SystemExit("nothing to measure (--no-dicomhub together with --no-orthanc)")
        for s in self.servers:
            s.workdir = self.workdir
            # one C-MOVE destination per server, so that an association a server keeps
            # open to BENCHSCP (Orthanc keeps it 5 s) never blocks the other server
            port = a.move_port if (s.key == "subject" and a.move_port) else 0
            scp = StoreSCP(
                name=s.key,
                outdir=self.workdir / f"move-{s.key}",
                logpath=self.logdir / f"storescp-{s.key}.log",
                port=port,
            )
            scp.start()
            self.scps[s.key] = scp
            s.move_port = scp.port
            if not s.managed:
                log(f"external target must know {MOVE_AET} = {HOST}:{scp.port} for C-MOVE")
            s.start()
            self.contents[s.key] = set()
            log(f"ready: {s.describe()}")

    def teardown(self) -> None:
        for s in self.servers:
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001
                log(f"stopping {s.label}: {exc}")
        for scp in self.scps.values():
            scp.stop()
        if self.args.keep:
            log(f"kept work directory {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def order(self, rep: int) -> list[Server]:
        """Servers in the order of repetition `rep`: alternates, so neither always goes first."""
        return list(self.servers) if rep % 2 == 0 else list(reversed(self.servers))

    @property
    def can_empty(self) -> bool:
        return all(s.managed for s in self.servers)

    def empty_all(self) -> None:
        """Restart every server that holds data with an empty archive (managed servers only)."""
        if not self.can_empty:
            return
        for s in self.servers:
            if self.contents[s.key]:
                s.restart_empty()
                self.contents[s.key] = set()

    def label(self, key: str) -> str:
        return next(s.label for s in self.servers if s.key == key)

    # ------------------------------------------------------------------ C-STORE
    def storescu(self, s: Server, dirs: list[Path], timeout: float, tag: str) -> tuple[float, str | None]:
        """Run one storescu per directory in parallel; returns (elapsed s, error)."""
        procs = []
        logs = []
        t0 = time.perf_counter()
        for i, d in enumerate(dirs):
            lp = self.logdir / f"storescu-{s.key}-{tag}-{i}.log"
            logs.append(lp)
            fh = open(lp, "wb")  # noqa: SIM115
            cmd = [
                "storescu",
                "-aet",
                SCU_AET,
                "-aec",
                s.aet,
                "-to",
                "20",
                "-ta",
                "30",
                "-td",
                "120",
                "+sd",
                "+r",
                s.host,
                str(s.port),
                str(d),
            ]
            fh.write(("$ " + " ".join(cmd) + "\n").encode())
            fh.flush()
            p = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dcmtk_env(),
                start_new_session=True,
            )
            procs.append((p, fh))
        deadline = t0 + timeout
        error = None
        for p, _fh in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
                error = f"timeout after {timeout:.0f} s"
        elapsed = time.perf_counter() - t0
        for (p, fh), lp in zip(procs, logs, strict=True):
            fh.close()
            if p.returncode != 0 and error is None:
                errs = count_errors(lp, 0)
                error = f"storescu exit {p.returncode}: " + ("; ".join(errs[:2]) or last_lines(lp))
            elif error is None:
                errs = count_errors(lp, 0)
                if errs:
                    error = "; ".join(errs[:2])
        return elapsed, error

    def verify_stored(self, s: Server, expected: int) -> str | None:
        if isinstance(s, OrthancServer) and s.proc is not None:
            try:
                n = int(s.statistics()["CountInstances"])
            except Exception as exc:  # noqa: BLE001
                return f"cannot read statistics: {exc}"
            if n < expected:
                return f"only {n} of {expected} instances stored"
        return None

    def load(self, s: Server, what: str) -> None:
        """Untimed load of a data set that a later phase needs."""
        if what in self.contents[s.key]:
            return
        if what == "ct":
            dirs = [self.cache / "ct"]
        else:
            root = self.cache / f"small-{what}"
            dirs = sorted(p for p in root.iterdir() if p.is_dir())
        log(f"loading {what} into {s.label} (untimed)")
        _, err = self.storescu(s, dirs, timeout=120 + 0.2 * self.total_count(what), tag=f"load-{what}")
        if err:
            raise RuntimeError(f"loading {what} into {s.label} failed: {err}")
        self.contents[s.key].add(what)

    def total_count(self, what: str) -> int:
        if what == "ct":
            return int(self.manifest["ct"]["count"])
        return int(self.manifest["small"][what]["count"])

    def phase_store(self) -> None:
        ct = self.manifest["ct"]
        plan = [
            ("store_ct", f"C-STORE CT {ct['count']}x512² 1 assoc", "ct", 1),
            ("store_small_1", f"C-STORE small {self.total_count('A')} 1 assoc", "A", 1),
            ("store_small_4", f"C-STORE small {self.total_count('B')} 4 assoc", "B", 4),
        ]
        for key, label, what, nassoc in plan:
            m = Measurement(key, label, "inst/s", ">=", 1.0)
            self.results.append(m)
            if what == "ct":
                src = [self.cache / "ct"]
                nbytes = int(ct["bytes"])
                reps = self.args.repeat
            else:
                root = self.cache / f"small-{what}"
                quarters = sorted(p for p in root.iterdir() if p.is_dir())
                src = [root] if nassoc == 1 else quarters
                nbytes = int(self.manifest["small"][what]["bytes"])
                reps = self.args.store_repeat
            count = self.total_count(what)
            if not self.can_empty:
                m.note = "servers not emptied (external target), single run"
                reps = 1
            elapsed_runs: dict[str, list[float]] = {s.key: [] for s in self.servers}
            peaks: dict[str, list[tuple[float, float]]] = {s.key: [] for s in self.servers}
            errors: dict[str, str] = {}
            for rep in range(max(1, reps)):
                self.empty_all()  # every timed ingest goes into an empty archive
                for s in self.order(rep):
                    if s.key in errors:
                        continue
                    warm_cache(src)
                    settle()
                    before = self.instances(s)
                    log(f"{label}: {s.label} run {rep + 1}/{reps} ...")
                    timeout = 120 + (0.5 if what == "ct" else 0.1) * count
                    with contextlib.ExitStack() as stack:
                        # The whole process tree's memory while it ingests (managed servers).
                        peak = stack.enter_context(MemoryPeak(s.proc.pid)) if s.proc else None
                        elapsed, err = self.storescu(s, src, timeout=timeout, tag=f"{key}-{rep}")
                    if peak is not None:
                        peaks[s.key].append((peak.rss_mb, peak.pss_mb))
                    if err is None and before is not None:
                        err = self.verify_stored(s, before + count)
                    self.contents[s.key].add(what)
                    if err:
                        log(f"  {s.label}: ERROR {err}")
                        errors[s.key] = err
                        continue
                    elapsed_runs[s.key].append(elapsed)
                    log(
                        f"  {s.label}: {count} in {elapsed:.2f} s = {count / elapsed:.1f} inst/s, "
                        f"{nbytes / 1e6 / elapsed:.1f} MB/s"
                    )
            for s in self.servers:
                runs = elapsed_runs[s.key]
                if not runs:
                    m.figures[s.key] = Figure(None, errors.get(s.key, "no run"))
                    continue
                elapsed = statistics.median(runs)
                m.figures[s.key] = Figure(
                    count / elapsed,
                    errors.get(s.key),
                    {
                        "elapsed_s": round(elapsed, 3),
                        "mb_s": round(nbytes / 1e6 / elapsed, 2),
                        "instances": count,
                        "bytes": nbytes,
                        "associations": nassoc,
                        "runs_inst_s": [round(count / e, 1) for e in runs],
                        "peak_rss_mb": [round(r) for r, _p in peaks[s.key]],
                        "peak_pss_mb": [round(p) for _r, p in peaks[s.key]],
                    },
                )
            if key == "store_small_4":
                self.memory_figures(label, peaks)

    def memory_figures(self, label: str, peaks: dict[str, list[tuple[float, float]]]) -> None:
        """Peak RSS and PSS of each server's process tree during ``label`` (median of its runs).

        RSS counts pages that the tree's processes share once per process; PSS shares
        them out, so it is what the tree takes from the machine. Orthanc is one process.
        """
        for which, index in (("RSS", 0), ("PSS", 1)):
            m = Measurement(f"memory_{which.lower()}", f"peak {which} of the tree, {label}", "MB", "<=", 1.0)
            for s in self.servers:
                values = [run[index] for run in peaks[s.key]]
                m.figures[s.key] = Figure(
                    statistics.median(values) if values else None, None if values else "not sampled"
                )
            self.results.append(m)
        pss = self.results[-1].figures.get(self.subject_key or "")
        rss = self.results[-2].figures.get("orthanc")
        if pss and rss and pss.value and rss.value:
            self.results[-1].note = f"subject's peak PSS / Orthanc's peak RSS = {pss.value / rss.value:.2f}"

    def instances(self, s: Server) -> int | None:
        if isinstance(s, OrthancServer) and s.proc is not None:
            try:
                return int(s.statistics()["CountInstances"])
            except Exception:  # noqa: BLE001
                return None
        return None

    # ------------------------------------------------------------------ C-FIND
    def find_queries(self, which: str) -> list[tuple[str, str, Dataset]]:
        q = self.manifest["query"]
        study_keys = [
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "StudyDescription",
            "StudyInstanceUID",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances",
        ]

        def study(**crit: str) -> Dataset:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            for k in study_keys:
                setattr(ds, k, "")
            for k, v in crit.items():
                setattr(ds, k, v)
            return ds

        st = self.manifest["small"][which]["studies"][q["series_study_index"]]
        series = Dataset()
        series.QueryRetrieveLevel = "SERIES"
        series.StudyInstanceUID = st["study_uid"]
        for k in (
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "SeriesDescription",
            "NumberOfSeriesRelatedInstances",
        ):
            setattr(series, k, "")
        return [
            (
                "find_patient_id",
                f"C-FIND STUDY PatientID={q['patient_id']}",
                study(PatientID=q["patient_id"]),
            ),
            (
                "find_patient_name",
                f"C-FIND STUDY PatientName={q['patient_name']}",
                study(PatientName=q["patient_name"]),
            ),
            (
                "find_date_range",
                f"C-FIND STUDY StudyDate={q['date_range']}",
                study(StudyDate=q["date_range"]),
            ),
            ("find_series", "C-FIND SERIES in one study", series),
        ]

    def phase_find(self) -> None:
        for s in self.servers:
            if not ({"A", "B"} & self.contents[s.key]):
                try:
                    self.load(s, "A")
                except Exception as exc:  # noqa: BLE001
                    log(f"  {exc}")
        present = set.union(*(self.contents[s.key] for s in self.servers))
        which = "B" if "B" in present else "A"
        n = self.args.find_repeat
        for key, label, ident in self.find_queries(which):
            m = Measurement(key, label + " (median ms)", "ms", "<=", 0.5)
            self.results.append(m)
            for s in self.servers:
                try:
                    with MiniAssociation(s.host, s.port, s.aet, SCU_AET, timeout=30) as assoc:
                        wire = assoc.encode_identifier(ident)
                        for _ in range(self.args.find_warmup):
                            assoc.find(wire)
                        times = []
                        counts = set()
                        status = 0
                        for _ in range(n):
                            r = assoc.find(wire)
                            times.append(r.seconds * 1000)
                            counts.add(r.matches)
                            status = r.status
                    if status != 0:
                        raise DimseError(f"final status 0x{status:04X}")
                    med = statistics.median(times)
                    matches = max(counts)
                    m.figures[s.key] = Figure(
                        med,
                        None,
                        {
                            "matches": matches,
                            "min_ms": round(min(times), 3),
                            "max_ms": round(max(times), 3),
                            "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))], 3),
                            "times_ms": [round(t, 3) for t in times],
                            "consistent_counts": len(counts) == 1,
                        },
                    )
                    log(f"{label}: {s.label} median {med:.2f} ms, {matches} matches")
                except (OSError, DimseError) as exc:
                    log(f"{label}: {s.label} ERROR {exc}")
                    m.figures[s.key] = Figure(None, str(exc))
            counts = {k: f.extra.get("matches") for k, f in m.figures.items() if f.value is not None}
            if len(set(counts.values())) > 1:
                m.note = "MATCH COUNTS DIFFER: " + ", ".join(
                    f"{self.label(k)}={v}" for k, v in counts.items()
                )
                log("WARNING: " + m.note)

    # ------------------------------------------------------------------ C-GET / C-MOVE
    def retrieve_keys(self) -> list[str]:
        ct = self.manifest["ct"]
        return [
            "-S",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={ct['study_uid']}",
            "-k",
            f"SeriesInstanceUID={ct['series_uid']}",
        ]

    def phase_retrieve(self, kind: str) -> None:
        ct_count = self.total_count("ct")
        key = "get" if kind == "get" else "move"
        label = f"C-{kind.upper()} CT series {ct_count}"
        m = Measurement(key, label, "inst/s", ">=", 1.0)
        self.results.append(m)
        for s in self.servers:
            try:
                self.load(s, "ct")
            except Exception as exc:  # noqa: BLE001
                m.figures[s.key] = Figure(None, str(exc))
        runs: dict[str, list[float]] = {s.key: [] for s in self.servers}
        errors: dict[str, str] = {}
        timeout = 60 + 0.2 * ct_count
        for rep in range(self.args.repeat):
            for s in self.order(rep):  # interleaved, alternating order
                if s.key in m.figures or s.key in errors:
                    continue
                settle()
                lp = self.logdir / f"{kind}scu-{s.key}.log"
                if kind == "get":
                    out = self.workdir / f"get-{s.key}-{rep}"
                    out.mkdir()
                    cmd = [
                        "getscu",
                        "-aet",
                        SCU_AET,
                        "-aec",
                        s.aet,
                        "-to",
                        "20",
                        "-ta",
                        "30",
                        "-td",
                        "120",
                        *self.retrieve_keys(),
                        "-od",
                        str(out),
                        s.host,
                        str(s.port),
                    ]
                else:
                    scp = self.scps[s.key]
                    scp.clear()
                    cmd = [
                        "movescu",
                        "-aet",
                        SCU_AET,
                        "-aec",
                        s.aet,
                        "-aem",
                        MOVE_AET,
                        "-to",
                        "20",
                        "-ta",
                        "30",
                        "-td",
                        "120",
                        *self.retrieve_keys(),
                        s.host,
                        str(s.port),
                    ]
                t0 = time.perf_counter()
                rc, _ = run_bounded(cmd, timeout, lp)
                elapsed = time.perf_counter() - t0
                if kind == "get":
                    received = sum(1 for p in out.iterdir() if p.is_file())
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    received = self.scps[s.key].count()
                    self.scps[s.key].clear()
                if rc is None:
                    errors[s.key] = f"timeout after {timeout:.0f} s ({received} received)"
                elif received != ct_count:
                    errors[s.key] = f"{received} of {ct_count} received (rc {rc}): {last_lines(lp)}"
                elif rc != 0:
                    errors[s.key] = f"{kind}scu exit {rc}: {last_lines(lp)}"
                else:
                    runs[s.key].append(ct_count / elapsed)
                    log(
                        f"{label}: {s.label} run {rep + 1}: {elapsed:.2f} s = {ct_count / elapsed:.1f} inst/s"
                    )
                    continue
                log(f"{label}: {s.label} ERROR {errors[s.key]}")
        for s in self.servers:
            if s.key in m.figures:
                continue
            if s.key in errors and not runs[s.key]:
                m.figures[s.key] = Figure(None, errors[s.key])
            else:
                r = runs[s.key]
                m.figures[s.key] = Figure(
                    statistics.median(r),
                    errors.get(s.key),
                    {"runs_inst_s": [round(x, 1) for x in r], "instances": ct_count},
                )

    # ------------------------------------------------------------------ main flow
    def run(self) -> None:
        only = self.args.only
        if "store" in only:
            self.phase_store()
        if "find" in only:
            self.phase_find()
        if "get" in only:
            self.phase_retrieve("get")
        if "move" in only:
            self.phase_retrieve("move")
        for s in self.servers:
            if not s.alive():
                log(f"WARNING: {s.label} died during the run:\n{tail(s.logfile()) if s.logfile() else ''}")

    # ------------------------------------------------------------------ output
    def fmt(self, m: Measurement, key: str) -> str:
        f = m.figures.get(key)
        if f is None or f.value is None:
            return "n/a"
        if m.unit == "ms":
            return f"{f.value:.2f} ms"
        if m.unit == "MB":
            return f"{f.value:.0f} MB"
        s = f"{f.value:.0f} /s"
        if "mb_s" in f.extra:
            s += f" ({f.extra['mb_s']:.0f} MB/s)"
        return s

    def report(self) -> dict[str, Any]:
        subj = self.subject_key
        ref = "orthanc" if any(s.key == "orthanc" for s in self.servers) else None
        rows = []
        for m in self.results:
            ratio = m.ratio(subj, ref) if (subj and ref) else None
            ok = m.passed(ratio)
            matches = ""
            if m.unit == "ms":
                matches = " / ".join(
                    str(f.extra.get("matches", "?")) if f.value is not None else "-"
                    for f in (m.figures.get(s.key) for s in self.servers)
                    if f
                )
            notes = [m.note] if m.note else []
            for s in self.servers:
                f = m.figures.get(s.key)
                if f and f.error:
                    notes.append(f"{s.label}: {f.error}")
            rows.append(
                {
                    "label": m.label,
                    "cells": [self.fmt(m, s.key) for s in self.servers],
                    "ratio": "n/a" if ratio is None else f"{ratio:.2f}",
                    "target": f"{m.op} {m.threshold:g}",
                    "mark": "—" if ok is None else ("PASS" if ok else "MISS"),
                    "matches": matches,
                    "notes": "; ".join(notes),
                }
            )
        headers = ["measurement", *[s.label for s in self.servers], "ratio", "target", "", "matches"]
        ratio_name = f"{self.label(subj)}/Orthanc" if subj and ref else "ratio"
        try:
            from rich.console import Console
            from rich.table import Table

            t = Table(title=f"DIMSE benchmark — ratio = {ratio_name}", show_lines=False)
            for h in headers:
                t.add_column(h, justify="left" if h == "measurement" else "right")
            for r in rows:
                mark = r["mark"]
                style = {"PASS": "[green]PASS[/]", "MISS": "[red]MISS[/]"}.get(mark, mark)
                t.add_row(r["label"], *r["cells"], r["ratio"], r["target"], style, r["matches"])
            con = Console(width=max(120, shutil.get_terminal_size((160, 20)).columns))
            con.print(t)
        except ImportError:
            widths = [
                max(len(str(x)) for x in col)
                for col in zip(
                    headers,
                    *[
                        [r["label"], *r["cells"], r["ratio"], r["target"], r["mark"], r["matches"]]
                        for r in rows
                    ],
                    strict=True,
                )
            ]
            line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
            print(f"DIMSE benchmark — ratio = {ratio_name}\n{line}\n" + "-" * len(line))
            for r in rows:
                vals = [r["label"], *r["cells"], r["ratio"], r["target"], r["mark"], r["matches"]]
                print("  ".join(str(v).ljust(w) for v, w in zip(vals, widths, strict=True)))
        for r in rows:
            if r["notes"]:
                print(f"  note [{r['label']}]: {r['notes']}")
        return {
            "ratio": ratio_name,
            "rows": rows,
        }

    def to_json(self) -> dict[str, Any]:
        subj = self.subject_key
        ref = "orthanc" if any(s.key == "orthanc" for s in self.servers) else None
        out_servers = {}
        for s in self.servers:
            d: dict[str, Any] = {
                "label": s.label,
                "aet": s.aet,
                "host": s.host,
                "port": s.port,
                "managed": s.managed,
            }
            if isinstance(s, OrthancServer):
                d["version"] = s.version_str
            out_servers[s.key] = d
        res = {}
        for m in self.results:
            ratio = m.ratio(subj, ref) if subj and ref else None
            res[m.key] = {
                "label": m.label,
                "unit": m.unit,
                "target": {"op": m.op, "ratio": m.threshold},
                "ratio": ratio,
                "pass": m.passed(ratio),
                "note": m.note,
                "figures": {k: {"value": f.value, "error": f.error, **f.extra} for k, f in m.figures.items()},
            }
        return {
            "generated": _dt.datetime.now().isoformat(timespec="seconds"),
            "host": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
            },
            "args": {k: v for k, v in vars(self.args).items() if k != "json"},
            "dataset": {
                "key": self.manifest.get("key"),
                "n_studies": self.manifest.get("n_studies"),
                "n_patients": self.manifest.get("n_patients"),
                "ct_bytes": self.manifest["ct"]["bytes"],
                "query": self.manifest.get("query"),
            },
            "servers": out_servers,
            "results": res,
        }


def parse_target(spec: str) -> tuple[str, int, str]:
    parts = spec.split(":")
    if len(parts) != 3:
        raise SystemExit("--target must be host:port:AET")
    return parts[0], int(parts[1]), parts[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("what to measure")
    g.add_argument(
        "--target",
        metavar="HOST:PORT:AET",
        help="measure an already-running DIMSE server instead of starting dicomhub",
    )
    g.add_argument(
        "--subject",
        choices=["dicomhub", "orthanc", "none"],
        default="dicomhub",
        help="server compared to Orthanc when --target is not given: dicomhub (default), "
        "a second Orthanc (sanity check, ratio ~1), or none",
    )
    g.add_argument(
        "--no-dicomhub",
        dest="subject",
        action="store_const",
        const="none",
        help="measure Orthanc only (same as --subject none)",
    )
    g.add_argument("--no-orthanc", action="store_true", help="do not start/measure Orthanc")
    g.add_argument(
        "--only",
        default=",".join(PHASES),
        help="comma-separated subset of: store,find,get,move (default: all)",
    )
    g = ap.add_argument_group("data")
    g.add_argument("--ct-count", type=int, default=300, help="CT slices (default 300)")
    g.add_argument(
        "--small-count", type=int, default=10000, help="small instances per set, 5 per study (default 10000)"
    )
    g.add_argument("--seed", type=int, default=20240601)
    g = ap.add_argument_group("measurement")
    g.add_argument("--find-repeat", type=int, default=20, help="timed C-FINDs per query (default 20)")
    g.add_argument("--find-warmup", type=int, default=1, help="untimed C-FINDs before (default 1)")
    g.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per server of CT ingest, C-GET and C-MOVE; median (default 3)",
    )
    g.add_argument(
        "--store-repeat",
        type=int,
        default=1,
        help="runs per server of each small-instance ingest; median (default 1)",
    )
    g = ap.add_argument_group("dicomhub")
    g.add_argument(
        "--dicomhub-cmd",
        help="command that starts dicomhub (default: dicomhub next to this interpreter, else on PATH)",
    )
    g.add_argument(
        "--dicomhub-arg",
        action="append",
        metavar="ARG",
        help="extra argument appended to 'dicomhub serve ...' (repeatable; "
        "use --dicomhub-arg=--flag for values starting with -)",
    )
    g.add_argument(
        "--move-port",
        type=int,
        default=0,
        help="port of the BENCHSCP storescp for the subject (useful with --target)",
    )
    g = ap.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    g.add_argument("--workdir", help="parent directory for the temporary work dir")
    g.add_argument("--keep", action="store_true", help="keep the temporary work dir (logs, storage)")
    a = ap.parse_args(argv)
    a.only = [p.strip() for p in a.only.split(",") if p.strip()]
    bad = [p for p in a.only if p not in PHASES]
    if bad:
        ap.error(f"unknown phase(s) in --only: {bad}")
    if a.small_count < 20 or a.small_count % 5:
        ap.error("--small-count must be a multiple of 5 and >= 20")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)

    def _sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    bench = Bench(args)
    rc = 0
    try:
        bench.setup()
        bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except Exception as exc:  # noqa: BLE001
        log(f"ERROR: {exc}")
        rc = 1
    finally:
        bench.teardown()
    if bench.results:
        bench.report()
        if args.json:
            Path(args.json).write_text(json.dumps(bench.to_json(), indent=1))
            log(f"figures written to {args.json}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
