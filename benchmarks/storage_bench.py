"""Blob store throughput: file:// vs s3:// (an S3-compatible server), and migrate-storage.

Not a test: prints figures (and writes them as JSON with --json). Without
--endpoint it starts the local moto server of the tests (tests/s3backend.py),
whose figures show dicomhub's overhead on a slow in-memory S3, not what a
real object store does; give --endpoint (and AWS_* credentials) for those.

    /work/venv/bin/python benchmarks/storage_bench.py [--small 200] [--large-mib 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicomhub.storage.base import BlobStore  # noqa: E402
from dicomhub.storage.urls import open_blob_store  # noqa: E402

SMALL = 512 * 1024  # a CT slice


def _bench_store(name: str, store: BlobStore, small: int, large_mib: int) -> dict[str, Any]:
    payload = os.urandom(SMALL)
    keys = []
    put_ms = []
    for _ in range(small):
        key = store.new_key()
        t = time.perf_counter()
        store.put(key, payload)
        put_ms.append((time.perf_counter() - t) * 1000)
        keys.append(key)
    get_ms = []
    for key in keys:
        t = time.perf_counter()
        store.read(key)
        get_ms.append((time.perf_counter() - t) * 1000)
    frame_ms = []
    for key in keys[:50]:
        t = time.perf_counter()
        store.open_range(key, 4096, 32768)
        frame_ms.append((time.perf_counter() - t) * 1000)
    chunk = os.urandom(1 << 20)
    big = store.new_key()
    t = time.perf_counter()
    store.put_stream(big, (chunk for _ in range(large_mib)))
    put_mbs = large_mib / (time.perf_counter() - t)
    t = time.perf_counter()
    with store.open(big) as fh:
        while fh.read(1 << 20):
            pass
    get_mbs = large_mib / (time.perf_counter() - t)
    result = {
        "store": name,
        "small_put_median_ms": round(statistics.median(put_ms), 2),
        "small_get_median_ms": round(statistics.median(get_ms), 2),
        "range_32k_median_ms": round(statistics.median(frame_ms), 2),
        "large_put_mib_s": round(put_mbs, 1),
        "large_get_mib_s": round(get_mbs, 1),
    }
    print(json.dumps(result))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=200, help="512 KiB objects (default 200)")
    parser.add_argument("--large-mib", type=int, default=200, help="size of the streamed object")
    parser.add_argument("--endpoint", help="S3 endpoint URL (default: start moto)")
    parser.add_argument("--bucket-url", help="s3://bucket/prefix to use with --endpoint")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="dicomhub-storage-bench-") as tmp:
        results.append(_bench_store("file", open_blob_store(Path(tmp).as_uri()), args.small, args.large_mib))
        if args.endpoint:
            url = args.bucket_url or "s3://dicomhub-bench/bench"
            s3 = open_blob_store(url, s3_endpoint_url=args.endpoint)
        else:
            from tests import s3backend

            url, env = s3backend.fresh_storage("bench")
            os.environ.update(env)
            s3 = open_blob_store(url)
        results.append(_bench_store("s3" if args.endpoint else "s3 (moto)", s3, args.small, args.large_mib))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
