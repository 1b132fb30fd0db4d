"""Header metadata as DICOM JSON, prepared once per instance.

Converting a whole header to DICOM JSON costs several milliseconds, more than
the rest of the store path, so it is not done before the acknowledgement: a
background worker fills ``instance.header_json`` shortly after ingest, and
any reader that gets there first computes and saves it itself.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Sequence

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomhub.errors import DicomhubError
from dicomhub.index.engine import lease
from dicomhub.index.repository import IndexRepository
from dicomhub.model.extract import read_header
from dicomhub.services.background import run_until_stopped
from dicomhub.storage.base import BlobStore

__all__ = ["HeaderService", "header_to_json"]

LOGGER = logging.getLogger("dicomhub.headers")

# Values larger than this (binary VRs) are bulk data: not kept in the index.
BULK_DATA_THRESHOLD = 1024


def _bulk(elem: DataElement) -> str:
    return f"bulkdata:{elem.tag:08X}"


def _no_bulk(_tag: str, _vr: str, _uri: str) -> bytes:
    # Bulk data is not part of the indexed header; readers get an empty value.
    return b""


def header_to_json(ds: Dataset) -> str:
    """The header of ``ds`` (no File Meta, no pixel data) as compact DICOM JSON.

    An element whose value DICOM JSON cannot carry (a DS or IS value that is
    not a number, as a sender may write them) is left out rather than failing
    the whole header: the stored object keeps it, and the metadata of the rest
    of its study (and the header worker, which would retry it forever) must
    not depend on one malformed value.
    """
    try:
        body = ds.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=_bulk)
    except Exception:  # noqa: BLE001 - pydicom's converters raise ValueError, TypeError, ...
        # Not ``suppress_invalid_tags=True``: it also switches pydicom to strict
        # reading, which would drop every element with a merely non-conformant
        # (but representable) value; here only the unrepresentable ones go.
        body = {}
        for tag in ds.keys():
            try:
                body[f"{tag:08X}"] = ds[tag].to_json_dict(
                    bulk_data_element_handler=_bulk, bulk_data_threshold=BULK_DATA_THRESHOLD
                )
            except Exception:  # noqa: BLE001 - as above, per element
                LOGGER.warning("element %08X has a value DICOM JSON cannot carry; left out", tag)
    return json.dumps(body, separators=(",", ":"))


class HeaderService:
    """Reads instance headers from the index's JSON, or from the blob once."""

    def __init__(self, index: IndexRepository, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    def headers(self, instance_pks: Sequence[int]) -> dict[int, Dataset]:
        """Header data sets by instance pk (missing instances are left out)."""
        return {
            pk: Dataset.from_json(text, bulk_data_uri_handler=_no_bulk)
            for pk, text in self.header_json(instance_pks).items()
        }

    def header_json(self, instance_pks: Sequence[int]) -> dict[int, str]:
        """Headers as DICOM JSON text by instance pk (missing instances are left out);
        the ones not prepared yet are read from their blobs now, and kept."""
        stored = self.index.header_json(instance_pks)
        out: dict[int, str] = {}
        computed: list[tuple[int, str]] = []
        for pk, (text, key) in stored.items():
            if text is None:
                try:
                    ds = read_header(self.blobs.read(key))
                except DicomhubError:
                    LOGGER.exception("cannot read header of instance %s", pk)
                    continue
                text = header_to_json(ds)
                computed.append((pk, text))
            out[pk] = text
        if computed:
            self.index.set_header_json(computed)
        return out

    def prepare_pending(self, batch: int = 200) -> int:
        """Compute the JSON of up to ``batch`` instances that lack it."""
        pending = self.index.pending_headers(batch)
        values: list[tuple[int, str]] = []
        for pk, key in pending:
            try:
                values.append((pk, header_to_json(read_header(self.blobs.read(key)))))
            except DicomhubError:
                LOGGER.exception("cannot prepare header of instance %s", pk)
                values.append((pk, "{}"))
        self.index.set_header_json(values)
        return len(pending)

    def run_worker(self, stop: threading.Event, idle: float = 1.0, patience: float = 30.0) -> None:
        """Loop until ``stop``: prepare pending headers while the archive is quiet.

        Metadata is derived data that readers can compute on demand, so the
        worker stays out of the way of storing (lowest priority; while the
        change log still grows it waits up to ``patience`` seconds).
        """
        run_until_stopped(
            stop,
            self.prepare_pending,
            "header worker",
            LOGGER,
            idle,
            last_change=self.index.last_change,
            patience=patience,
            claim=functools.partial(lease, self.index.engine, "header-worker"),
        )
