"""HL7 v2 messages per second over one MLLP connection against ``dicomhub serve --hl7-port``.

Starts dicomhub with an empty data directory, opens one MLLP connection and sends
``--count`` ORM^O01 new orders (ORC-1 NW, each a new Accession Number and patient),
one at a time: the next message goes out when the ACK of the last one is read, as an
order system's interface engine sends. Every ACK must be ``MSA|AA`` (an ACK means the
order is committed). Afterwards ``GET /api/orders`` must list every order.

Prints messages/s over the timed messages and the median / 90th percentile
round-trip time of one message, in milliseconds.

    .venv/bin/python benchmarks/hl7_bench.py --count 2000 [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    HOST,
    find_dicomhub,
    http_json,
    log,
    running_dicomhub,
    work_dir,
)

SB, EB = b"\x0b", b"\x1c\x0d"
_MSH = "MSH|^~\\&|RIS|HOSP|DICOMHUB|ARCH|20260101120000||ORM^O01|{n}|P|2.5.1||||||UNICODE UTF-8"


def orm(n: int) -> bytes:
    """A new order (ORC-1 NW) for patient BP<n>, Accession Number BA<n>."""
    segments = [
        _MSH.format(n=n),
        f"PID|||BP{n}^^^HOSP^MR||Bench^Patient{n}||19700102|F",
        "PV1||O|||||||Ref^Doctor",
        f"ORC|NW|PL{n}|FL{n}",
        f"OBR|1|PL{n}|FL{n}|CTHEAD^CT Head^LOCAL||||||||||||||BA{n}|RP{n}|SPS{n}|CTAE|||CT|||"
        "^^^20260301101500^^R",
    ]
    return SB + "\r".join(segments).encode() + EB


def exchange(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    reply = b""
    while not reply.endswith(EB):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"the listener closed the connection (got {reply[:200]!r})")
        reply += chunk
    return reply


def _accepted(reply: bytes) -> bool:
    return any(seg.startswith(b"MSA|AA") for seg in reply.strip(SB + EB).split(b"\r"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="timed messages")
    parser.add_argument("--warmup", type=int, default=50, help="untimed messages first")
    parser.add_argument("--dicomhub-cmd", help="how to run dicomhub (default: next to this Python)")
    parser.add_argument(
        "--dicomhub-arg", action="append", default=[], help="extra serve argument (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.warmup + args.count > 10000:
        parser.error("at most 10,000 messages (what GET /api/orders lists at once, to check them)")

    command = find_dicomhub(args.dicomhub_cmd)
    with (
        work_dir("hl7-bench-", args.keep) as work,
        running_dicomhub(command, work, work / "data", args.dicomhub_arg, hl7=True) as hub,
    ):
        http_port, hl7_port = hub.http_port, hub.hl7_port
        total = args.warmup + args.count
        rtts: list[float] = []
        with socket.create_connection((HOST, hl7_port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for n in range(args.warmup):
                if not _accepted(exchange(sock, orm(n))):
                    raise SystemExit(f"warm-up message {n} was not accepted")
            log(f"sending {args.count} ORM^O01 on one connection")
            start = time.perf_counter()
            for n in range(args.warmup, total):
                sent = time.perf_counter()
                reply = exchange(sock, orm(n))
                rtts.append((time.perf_counter() - sent) * 1000)
                if not _accepted(reply):
                    raise SystemExit(f"message {n} was not accepted: {reply[:300]!r}")
            elapsed = time.perf_counter() - start
        stored = len(http_json(f"http://{HOST}:{http_port}/api/orders?limit=10000", timeout=300))
        if stored != total:
            raise SystemExit(f"{stored} orders stored, {total} acknowledged")
        rtts.sort()
        figures = {
            "messages": args.count,
            "seconds": round(elapsed, 3),
            "messages_per_second": round(args.count / elapsed, 1),
            "rtt_median_ms": round(statistics.median(rtts), 2),
            "rtt_p90_ms": round(rtts[int(len(rtts) * 0.9) - 1], 2),
            "orders_stored": stored,
        }
        print(
            f"HL7 ORM^O01 over one MLLP connection: {figures['messages_per_second']} messages/s "
            f"({args.count} in {elapsed:.2f} s); round trip median {figures['rtt_median_ms']} ms, "
            f"p90 {figures['rtt_p90_ms']} ms; {stored} orders stored"
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return 0


if __name__ == "__main__":
    sys.exit(main())
