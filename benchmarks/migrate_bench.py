#!/usr/bin/env python3
"""Migration benchmark: Orthanc -> dicomhub throughput, and the time to reconcile.

Orthanc (with its DICOMweb plugin) is loaded over DIMSE with one data set at a time
(the 300-slice 512x512 CT series, then set A: 10,000 small instances in 2,000
studies); for each retrieval mode a `dicomhub serve` with an empty archive is started
and the CLI migrates everything:

  * ``move``: C-MOVE to dicomhub's own AE (Orthanc knows it as a modality), stored by
    the server;
  * ``get``: C-GET into the `dicomhub migrate` process;
  * ``dicomweb``: QIDO-RS inventory and WADO-RS retrieval.

Each run is ``dicomhub inventory`` then ``dicomhub migrate --parallel N`` (which ends
with the reconcile that must come out clean); both are timed from process start to
exit. Instances/s and MB/s (file bytes / 10^6) are of the migrate step.

Push (``--push-modes``): once a data set has been pulled, Orthanc is emptied and the
archive is pushed back to it with ``dicomhub migrate --to`` (which takes a fresh
inventory of the target first and last, and ends with the reconcile):

  * ``cstore``: C-STORE, one association per series and worker;
  * ``stow``: STOW-RS, batches of up to 64 objects per request.

Reconcile: two synthesised inventories of ``--reconcile-studies`` studies (2 series
of 3+2 instances each, with digests) are stored in a fresh index, then compared by
the reconcile service (both loaded from the index, then compared), and by the
comparison alone.

    /work/venv/bin/python benchmarks/migrate_bench.py [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from _common import (  # noqa: E402
    HOST,
    DicomhubServer,
    OrthancServer,
    dcmtk_env,
    find_dicomhub,
    log,
)
from datasets import CACHE_ROOT, ensure_datasets  # noqa: E402

HUB_AET = "DICOMHUB"


def run(cmd: list[str], timeout: float = 3600) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dcmtk_env(), check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


def load_orthanc(orthanc: OrthancServer, folder: Path) -> None:
    t0 = time.monotonic()
    cmd = ["storescu", "+sd", "+r", "-nh", "-aec", orthanc.aet, HOST, str(orthanc.port), str(folder)]
    subprocess.run(cmd, check=True, env=dcmtk_env(), capture_output=True)
    log(f"loaded Orthanc with {folder.name} in {time.monotonic() - t0:.1f} s")


def migrate_once(
    hub: DicomhubServer, orthanc: OrthancServer, dicomhub: list[str], mode: str, parallel: int
) -> dict[str, float]:
    hub.restart_empty()
    # Orthanc must send C-MOVE sub-operations to this generation's port.
    httpx.put(
        f"http://{HOST}:{orthanc.http_port}/modalities/{HUB_AET}",
        json={"AET": HUB_AET, "Host": HOST, "Port": hub.port},
        timeout=30,
    ).raise_for_status()
    assert hub.workdir is not None
    data = ["--data-dir", str(hub.workdir / f"{hub.key}-dicomhub-{hub.generation}" / "data")]
    if mode == "dicomweb":
        remote = ["--dicomweb", orthanc.dicomweb_url]
    else:
        remote = ["--dimse", f"{orthanc.aet}@{HOST}:{orthanc.port}", "--retrieve", mode]
    run([*dicomhub, "remote", "add", "peer", *remote, *data])
    inventory, _ = run([*dicomhub, "inventory", "peer", "--aet", HUB_AET, *data])
    migrate, out = run(
        [*dicomhub, "migrate", "peer", "--aet", HUB_AET, "--parallel", str(parallel), "--quiet", *data]
    )
    if "final reconcile clean" not in out:
        raise RuntimeError(f"migration did not end clean:\n{out}")
    reconcile, _ = run([*dicomhub, "reconcile", "peer", "--json", *data])
    return {"inventory_s": inventory, "migrate_s": migrate, "reconcile_s": reconcile}


def push_once(
    hub: DicomhubServer, orthanc: OrthancServer, dicomhub: list[str], mode: str, parallel: int
) -> dict[str, float]:
    """Push the archive of ``hub`` (holding the data set) to an emptied Orthanc."""
    orthanc.restart_empty()
    assert hub.workdir is not None
    data = ["--data-dir", str(hub.workdir / f"{hub.key}-dicomhub-{hub.generation}" / "data")]
    name = f"push-{mode}-{orthanc.generation}"
    if mode == "stow":
        remote = ["--dicomweb", orthanc.dicomweb_url]
    else:
        remote = ["--dimse", f"{orthanc.aet}@{HOST}:{orthanc.port}"]
    run([*dicomhub, "remote", "add", name, *remote, *data])
    push, out = run([*dicomhub, "migrate", "--to", name, "--parallel", str(parallel), "--quiet", *data])
    if "final reconcile clean" not in out:
        raise RuntimeError(f"push did not end clean:\n{out}")
    return {"push_s": push}


def reconcile_bench(studies: int) -> dict[str, float]:
    from dicomhub.bootstrap import open_archive
    from dicomhub.config import Settings
    from dicomhub.model.migration import (
        Inventory,
        InventoryInstance,
        InventorySeries,
        InventoryStudy,
        RemoteArchive,
        RemoteKind,
        reconcile,
    )

    def synthesise(tag: str) -> Inventory:
        inv = Inventory()
        for s in range(studies):
            study = InventoryStudy(f"1.2.3.{s}", f"PAT{s % 997}", "DOE^JANE", "20240101", f"A{s}")
            for n, size in ((1, 3), (2, 2)):
                series = InventorySeries(f"1.2.3.{s}.{n}", "CT" if n == 1 else "MR")
                for i in range(size):
                    sop = f"1.2.3.{s}.{n}.{i}"
                    series.instances[sop] = InventoryInstance(sop, "1.2.840.10008.5.1.4.1.1.2", f"{tag}{sop}")
                study.series[series.series_instance_uid] = series
            inv.studies[study.study_instance_uid] = study
        return inv

    with tempfile.TemporaryDirectory(prefix="migrate-bench-") as tmp:
        archive = open_archive(Settings(data_dir=Path(tmp)))
        try:
            a, b = synthesise(""), synthesise("")
            del b.studies["1.2.3.7"]  # a few planted differences
            b.studies["1.2.3.8"].patient_id = "OTHER"
            repo = archive.migration.repo
            t0 = time.perf_counter()
            for name, inv in (("a", a), ("b", b)):
                archive.migration.add_remote(RemoteArchive(name, RemoteKind.FOLDER, path=tmp))
                repo.replace_inventory(archive.migration.remote(name)[0], inv)
            stored = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = archive.migration.reconcile("a", against="b")
            service = time.perf_counter() - t0
            t0 = time.perf_counter()
            reconcile(a, b)
            compare = time.perf_counter() - t0
            assert len(report.problems()) == 2, report.counts()
        finally:
            archive.close()
    return {"store_both_s": stored, "reconcile_service_s": service, "compare_only_s": compare}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct-count", type=int, default=300)
    p.add_argument("--small-count", type=int, default=10000)
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--cache-root", type=Path, default=CACHE_ROOT, help="where the data sets are cached")
    p.add_argument("--modes", default="move,get,dicomweb")
    p.add_argument("--push-modes", default="cstore,stow", help="push modes after each set ('' for none)")
    p.add_argument("--sets", default="ct,small", help="data sets to migrate (ct, small)")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--reconcile-studies", type=int, default=10000)
    p.add_argument("--skip-migration", action="store_true")
    p.add_argument("--dicomhub-cmd")
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, storage)")
    a = p.parse_args()

    results: dict[str, Any] = {"parallel": a.parallel}
    if not a.skip_migration:
        cache, manifest = ensure_datasets(a.ct_count, a.small_count, a.seed, root=a.cache_root, log=log)
        work = Path(tempfile.mkdtemp(prefix="migrate-bench-"))
        dicomhub = find_dicomhub(a.dicomhub_cmd)
        # move_port: the benchmarks' storescp AE every dicomhub knows; never contacted here.
        hub = DicomhubServer(
            key="hub",
            label="dicomhub",
            aet=HUB_AET,
            managed=True,
            workdir=work,
            command=dicomhub,
            move_port=104,
        )
        # DICOMHUB's port is set (REST API) for each dicomhub started.
        orthanc = OrthancServer(
            key="orthanc",
            label="Orthanc",
            aet="ORTHANC",
            managed=True,
            workdir=work,
            dicomweb=True,
            extra_config={"DicomModalities": {HUB_AET: [HUB_AET, HOST, 104]}},
        )
        sets = {
            "ct": (cache / manifest["ct"]["dir"], manifest["ct"]["count"], manifest["ct"]["bytes"]),
            "small": (
                cache / manifest["small"]["A"]["dir"],
                manifest["small"]["A"]["count"],
                manifest["small"]["A"]["bytes"],
            ),
        }
        try:
            for name, (folder, count, nbytes) in sets.items():
                if name not in a.sets.split(","):
                    continue
                if orthanc.proc is None:
                    orthanc.start()
                else:
                    orthanc.restart_empty()
                load_orthanc(orthanc, folder)
                for mode in a.modes.split(","):
                    log(f"{name}: migrating {count} instances by {mode}")
                    t = migrate_once(hub, orthanc, dicomhub, mode, a.parallel)
                    t["instances_per_s"] = count / t["migrate_s"]
                    t["mb_per_s"] = nbytes / 1e6 / t["migrate_s"]
                    results[f"{name}_{mode}"] = t
                    log(f"{name} {mode}: {json.dumps({k: round(v, 2) for k, v in t.items()})}")
                for mode in filter(None, a.push_modes.split(",")):
                    log(f"{name}: pushing {count} instances by {mode}")
                    t = push_once(hub, orthanc, dicomhub, mode, a.parallel)
                    t["instances_per_s"] = count / t["push_s"]
                    t["mb_per_s"] = nbytes / 1e6 / t["push_s"]
                    results[f"{name}_push_{mode}"] = t
                    log(f"{name} push {mode}: {json.dumps({k: round(v, 2) for k, v in t.items()})}")
        finally:
            hub.stop()
            orthanc.stop()
            if not a.keep:
                import shutil

                shutil.rmtree(work, ignore_errors=True)
            else:
                log(f"work directory kept: {work}")
    log(f"reconcile of {a.reconcile_studies} studies")
    results["reconcile"] = {"studies": a.reconcile_studies, **reconcile_bench(a.reconcile_studies)}
    log(json.dumps(results["reconcile"]))
    print(json.dumps(results, indent=1))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
