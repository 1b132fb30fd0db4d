"""Modality Worklist C-FIND latency with 10,000 scheduled procedure steps.

Places ``--steps`` orders (one requested procedure, one step each) through the
service layer (``OrderService.place_order``, as the CLI and REST do; not HL7,
to be quick) into an empty data directory: 5 modalities, 4 stations each, start
times spread over ``--days`` days around today. Then starts ``dicomhub serve`` on
it and times C-FINDs (pynetdicom, one association, Modality Worklist - FIND):

- typical: what a modality asks every few minutes: its Modality, its Scheduled
  Station AE Title and today's Scheduled Procedure Step Start Date;
- broad: universal matching (every scheduled step), ``--broad-queries`` times.

Prints p50/p95 per query (wall time from the request to the final response) and
the number of answers.

    .venv/bin/python benchmarks/mwl_bench.py [--steps 10000] [--queries 50] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pynetdicom import AE  # noqa: E402

from benchmarks._common import (  # noqa: E402
    HOST,
    find_dicomhub,
    log,
    running_dicomhub,
    work_dir,
)

MWL = "1.2.840.10008.5.1.4.31"
MODALITIES = ("CT", "MR", "US", "CR", "DX")
STATIONS_PER_MODALITY = 4


def place_orders(data_dir: Path, steps: int, days: int) -> None:
    from dicomhub.bootstrap import open_archive
    from dicomhub.config import Settings
    from dicomhub.model.caller import Caller
    from dicomhub.model.orders import (
        CodedEntry,
        Order,
        PatientRef,
        RequestedProcedure,
        ScheduledProcedureStep,
    )

    today = dt.datetime.combine(dt.date.today(), dt.time(7, 0))
    caller = Caller.cli()
    with open_archive(Settings(data_dir=data_dir)) as archive:
        for n in range(steps):
            modality = MODALITIES[n % len(MODALITIES)]
            station = f"{modality}{(n // len(MODALITIES)) % STATIONS_PER_MODALITY + 1}"
            # Each station's steps spread evenly over the days (today in the middle), 07:00-19:00.
            per_station = len(MODALITIES) * STATIONS_PER_MODALITY
            day = (n // per_station) % days - days // 2
            start = today + dt.timedelta(days=day, minutes=(n * 37) % 720)
            step = ScheduledProcedureStep(
                step_id=f"S{n}",
                modality=modality,
                description="Bench step",
                station_ae_title=station,
                station_name=station,
                start=start,
                performing_physician="Bench^Tech",
                protocol_code=CodedEntry("P1", "LOCAL", "Protocol"),
            )
            procedure = RequestedProcedure(
                f"R{n}", "Bench procedure", CodedEntry("C1", "LOCAL", "Code"), "", "ROUTINE", (step,)
            )
            order = Order(
                accession_number=f"A{n}",
                patient=PatientRef(f"P{n % 3000}", "HOSP"),
                patient_name=f"Bench^Patient{n % 3000}",
                patient_birth_date="19700102",
                patient_sex="F",
                procedures=(procedure,),
                source="cli",
            )
            archive.orders.place_order(order, caller)


def identifier(modality: str = "", station: str = "", day: str = "") -> Dataset:
    ds = Dataset()
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber"):
        setattr(ds, key, "")
    ds.StudyInstanceUID = ""
    ds.RequestedProcedureID = ""
    ds.RequestedProcedureDescription = ""
    item = Dataset()
    item.Modality = modality
    item.ScheduledStationAETitle = station
    item.ScheduledProcedureStepStartDate = day
    item.ScheduledProcedureStepStartTime = ""
    item.ScheduledProcedureStepID = ""
    item.ScheduledProcedureStepDescription = ""
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def timed(assoc: object, query: Dataset, repeat: int) -> tuple[list[float], int]:
    times: list[float] = []
    answers = 0
    for _ in range(repeat):
        count = 0
        started = time.perf_counter()
        for status, _ds in assoc.send_c_find(query, MWL):  # type: ignore[attr-defined]
            if status is None:
                raise SystemExit("no C-FIND response (association aborted)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                count += 1
            elif code != 0:
                raise SystemExit(f"C-FIND failed: 0x{code:04X} {status.get('ErrorComment', '')}")
        times.append((time.perf_counter() - started) * 1000)
        answers = count
    return times, answers


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--days", type=int, default=40, help="days the steps are spread over")
    parser.add_argument("--queries", type=int, default=50, help="timed typical queries")
    parser.add_argument("--broad-queries", type=int, default=10, help="timed universal queries")
    parser.add_argument("--dicomhub-cmd", help="how to run dicomhub (default: next to this Python)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    command = find_dicomhub(args.dicomhub_cmd)
    with work_dir("mwl-bench-", args.keep) as work:
        data = work / "data"
        log(f"placing {args.steps} orders through the service layer")
        started = time.perf_counter()
        place_orders(data, args.steps, args.days)
        log(f"placed in {time.perf_counter() - started:.1f} s")
        with running_dicomhub(command, work, data) as hub:
            return _measure(args, hub.dimse_port)


def _measure(args: argparse.Namespace, dimse_port: int) -> int:
    """The timed queries on one association; prints and returns the exit status."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MWL)
    assoc = ae.associate(HOST, dimse_port, ae_title="DICOMHUB")
    if not assoc.is_established:
        raise SystemExit("association not established")
    try:
        today = dt.date.today().strftime("%Y%m%d")
        typical = identifier("CT", "CT1", today)
        timed(assoc, typical, 2)  # warm-up
        typical_ms, typical_answers = timed(assoc, typical, args.queries)
        broad_ms, broad_answers = timed(assoc, identifier(), args.broad_queries)
    finally:
        assoc.release()
        ae.shutdown()
    figures = {
        "steps": args.steps,
        "typical": {
            "queries": args.queries,
            "answers": typical_answers,
            "p50_ms": round(statistics.median(typical_ms), 1),
            "p95_ms": round(pct(typical_ms, 0.95), 1),
        },
        "broad": {
            "queries": args.broad_queries,
            "answers": broad_answers,
            "p50_ms": round(statistics.median(broad_ms), 1),
            "p95_ms": round(pct(broad_ms, 0.95), 1),
        },
    }
    for name in ("typical", "broad"):
        f = figures[name]
        assert isinstance(f, dict)
        print(
            f"MWL C-FIND {name} ({f['answers']} answers of {args.steps} steps): "
            f"p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms over {f['queries']} queries"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
