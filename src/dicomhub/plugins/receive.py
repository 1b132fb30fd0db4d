"""The receive hooks on the one ingest path.

:class:`ReceiveHooks` runs every enabled plugin's
:meth:`~dicomhub.plugins.api.Plugin.on_receive`, in configuration order, on an
object before anything of it is written: the first :class:`Reject` refuses it
(:class:`~dicomhub.errors.RefusedByPlugin`, with the plugin's status); the
:class:`Modify` results are applied in order (a later hook sees the earlier
changes) and the changed object is what the store digests, writes and indexes.

:class:`HookedIngestService` is the ingest service with the hooks in front.
The composition root uses it only when a plugin has a receive hook: otherwise
the plain :class:`~dicomhub.services.ingest.IngestService` runs, with not one
call more per object.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicomhub.errors import InvalidIdentifier, InvalidRequest, PluginFailure, RefusedByPlugin
from dicomhub.model.caller import Caller
from dicomhub.model.ingest import (
    UNSPECIFIED_ORIGIN,
    InstanceOrigin,
    Part10Object,
    Received,
    ReceivedDataSet,
    StoreResult,
)
from dicomhub.model.part10 import file_meta_header
from dicomhub.plugins.api import FIXED_ATTRIBUTES, Accept, Modify, Plugin, ReceivedObject, Reject, iter_hooked
from dicomhub.services.ingest import IngestService

__all__ = ["HookedIngestService", "ReceiveHooks"]

LOGGER = logging.getLogger("dicomhub.plugins")

_PIXEL_DATA = 0x7FE00010


def _before_pixels(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) >= _PIXEL_DATA


class _Source:
    """One received object, parsed lazily: its header for the hooks' view, the whole
    object only when a hook changes it."""

    def __init__(self, received: Received, caller: Caller) -> None:
        self.received = received
        self.caller = caller
        self._header: Dataset | None = None

    def part10(self) -> bytes:
        r = self.received
        if isinstance(r, ReceivedDataSet):
            meta = file_meta_header(
                r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid, self.caller.ae_title
            )
            if r.path is None:
                return meta + r.dataset
            with open(r.path, "rb") as fh:
                return meta + fh.read()
        if r.data is not None:
            return bytes(r.data)
        if r.path is None:
            raise InvalidRequest("nothing to store")
        with open(r.path, "rb") as fh:
            return fh.read()

    def header(self) -> Dataset:
        if self._header is None:
            self._header = self._read_header()
        return self._header

    def _read_header(self) -> Dataset:
        r = self.received
        if isinstance(r, ReceivedDataSet) and r.path is not None:
            # A spooled data set may be hundreds of MB: read up to its pixel data only.
            syntax = UID(r.transfer_syntax_uid)
            if syntax.is_deflated:
                return dcmread(io.BytesIO(self.part10()), stop_before_pixels=True)
            with open(r.path, "rb") as fh:
                return read_dataset(
                    fh, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_before_pixels
                )
        if isinstance(r, Part10Object) and r.path is not None:
            return dcmread(r.path, stop_before_pixels=True)
        return dcmread(io.BytesIO(self.part10()), stop_before_pixels=True)


def _value(dataset: Dataset, keyword: str) -> Any:
    element = dataset.get(keyword)
    if element is None:
        return None
    value = element.value if hasattr(element, "value") else element
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    if isinstance(value, Dataset) or type(value).__name__ == "Sequence":
        return None  # sequences are not offered: a copy would be expensive and could mislead
    return value


def _settable(keyword: str) -> bool:
    """A data set attribute a hook may set: a known keyword, not a File Meta element
    (group 0002) nor one that names the object."""
    tag = tag_for_keyword(keyword)
    return tag is not None and tag >= 0x00080000 and keyword not in FIXED_ATTRIBUTES


class ReceiveHooks:
    """The enabled plugins' receive hooks, applied to one object at a time."""

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.plugins = tuple(iter_hooked(plugins, "on_receive"))

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def apply(self, received: Received, origin: InstanceOrigin, caller: Caller) -> Received:
        """``received`` as the hooks leave it (itself when no hook changes it).

        Raises
        ------
        RefusedByPlugin
            A hook rejected it.
        PluginFailure
            A hook raised, answered something else, or asked for a change that
            cannot be made.
        """
        source = _Source(received, caller)
        changes: dict[str, Any] = {}

        def get(keyword: str) -> Any:
            if keyword in changes:
                return changes[keyword]
            return _value(source.header(), keyword)

        view = ReceivedObject(get, origin, caller)
        for plugin in self.plugins:
            try:
                result = plugin.on_receive(view)
            except Exception as exc:
                LOGGER.exception("plugin %s: receive hook failed on an object from %s", plugin.name,
                                 origin.describe())  # fmt: skip
                raise PluginFailure(f"plugin {plugin.name} failed: {type(exc).__name__}: {exc}") from exc
            if isinstance(result, Reject):
                LOGGER.info("plugin %s refused an object from %s (0x%04X): %s", plugin.name,
                            origin.describe(), result.status, result.reason)  # fmt: skip
                raise RefusedByPlugin(plugin.name, result.status, result.reason)
            if isinstance(result, Modify):
                for keyword in result.attributes:
                    if not _settable(keyword):
                        raise PluginFailure(f"plugin {plugin.name} may not set {keyword!r}")
                changes.update(result.attributes)
            elif not isinstance(result, Accept):
                raise PluginFailure(
                    f"plugin {plugin.name}: on_receive returned {result!r}, not a ReceiveResult"
                )
        if not changes:
            return received
        if isinstance(received, ReceivedDataSet) and _value(source.header(), "SOPInstanceUID") != (
            received.sop_instance_uid
        ):
            # The changed object goes on as a Part 10 file, which store() does not
            # compare with the command: compare it here, as store() would have.
            raise InvalidIdentifier(
                "the data set's SOP Instance UID differs from the request's Affected SOP Instance UID"
            )
        return Part10Object(_changed(source, changes, plugin_names=[p.name for p in self.plugins]))


def _changed(source: _Source, changes: dict[str, Any], plugin_names: list[str]) -> bytes:
    dataset = dcmread(io.BytesIO(source.part10()))
    try:
        for keyword, value in changes.items():
            if value is None:
                if keyword in dataset:
                    del dataset[keyword]
            else:
                setattr(dataset, keyword, value)
        out = DicomBytesIO()
        dataset.save_as(out, enforce_file_format=True)
    except Exception as exc:  # a value pydicom cannot take for the keyword's VR
        raise PluginFailure(
            f"plugin change cannot be made ({', '.join(plugin_names)}): {type(exc).__name__}: {exc}"
        ) from exc
    return out.getvalue()


class HookedIngestService(IngestService):
    """:class:`IngestService` with the receive hooks in front of each object."""

    hooks: ReceiveHooks = ReceiveHooks(())

    def store(
        self,
        received: Received,
        origin: InstanceOrigin,
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
    ) -> StoreResult:
        received = self.hooks.apply(received, origin, caller)
        return super().store(received, origin, caller, study_instance_uid=study_instance_uid)

    def store_many(
        self,
        items: Iterable[bytes | Iterator[bytes | memoryview]],
        caller: Caller,
        *,
        study_instance_uid: str | None = None,
        origin: InstanceOrigin = UNSPECIFIED_ORIGIN,
    ) -> list[StoreResult | Exception]:
        # Each item is read whole here (the hooks need the object before anything is
        # written); what a hook refuses keeps its place in the answers.
        refused: dict[int, Exception] = {}
        passed: list[bytes] = []
        for position, item in enumerate(items):
            data = item if isinstance(item, bytes) else b"".join(bytes(c) for c in item)
            try:
                hooked = self.hooks.apply(Part10Object(data), origin, caller)
            except (RefusedByPlugin, PluginFailure) as exc:
                refused[position] = exc
                continue
            passed.append(
                hooked.data if isinstance(hooked, Part10Object) and hooked.data is not None else data
            )
        stored = iter(
            super().store_many(passed, caller, study_instance_uid=study_instance_uid, origin=origin)
        )
        total = len(passed) + len(refused)
        return [refused[i] if i in refused else next(stored) for i in range(total)]
