"""An example dicomhub plugin (see docs/plugins.md): every kind of hook, small enough to read."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dicomhub.plugins.api import (
    ACCEPT,
    ArchiveEvent,
    Modify,
    OutgoingInstance,
    Plugin,
    PluginRequest,
    PluginRoute,
    ReceivedObject,
    ReceiveResult,
    Reject,
)

__all__ = ["ExamplePlugin"]

# Failure statuses of its own choosing, inside the ranges a plugin may use.
REFUSED_CALLING_AE = 0xA7F0
REFUSED_ATTRIBUTE = 0xC0F1


class ExamplePlugin(Plugin):
    """Refuses objects by calling AE title or attribute value, stamps attributes,
    counts events in a file, delivers routed instances to a folder, answers a summary."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        unknown = set(settings) - {"reject_calling_ae", "reject_when", "stamp", "events_file"}
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        self.reject_calling_ae = frozenset(str(a) for a in settings.get("reject_calling_ae", []))
        self.reject_when = {str(k): str(v) for k, v in dict(settings.get("reject_when", {})).items()}
        self.stamp = dict(settings.get("stamp", {}))
        events = settings.get("events_file")
        self.events_file = Path(str(events)) if events else None
        self._lock = threading.Lock()  # the event hooks and routes run on several threads

    # -- on receive: runs per object, before anything is written

    def on_receive(self, received: ReceivedObject) -> ReceiveResult:
        if received.calling_ae_title in self.reject_calling_ae:
            return Reject(REFUSED_CALLING_AE, f"calling AE title {received.calling_ae_title} is not accepted")
        for keyword, value in self.reject_when.items():
            found = received.get(keyword)
            if found is not None and str(found) == value:
                return Reject(REFUSED_ATTRIBUTE, f"{keyword} {value} is not accepted here")
        return Modify(self.stamp) if self.stamp else ACCEPT

    # -- events: from the change log, at least once (the same seq may come twice)

    def on_stored(self, event: ArchiveEvent) -> None:
        self._append(event)

    def on_stable_study(self, event: ArchiveEvent) -> None:
        self._append(event)

    def _append(self, event: ArchiveEvent) -> None:
        if self.events_file is None:
            return
        line = json.dumps({"event": event.event, "seq": event.seq, "uid": event.uid}) + "\n"
        with self._lock, self.events_file.open("a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    def counts(self) -> dict[str, int]:
        """Events seen, each (event, seq) once however often it was delivered."""
        if self.events_file is None or not self.events_file.exists():
            return {}
        seen = set()
        for line in self.events_file.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            seen.add((entry["event"], entry["seq"]))
        return dict(Counter(event for event, _seq in seen))

    # -- a routing destination: plugin:example:FOLDER

    def send(self, argument: str, instance: OutgoingInstance) -> None:
        folder = Path(argument)
        folder.mkdir(parents=True, exist_ok=True)
        if not instance.sop_instance_uid.replace(".", "").isdigit():
            raise ValueError(f"{instance.sop_instance_uid!r} cannot name a file")
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(instance.read())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, folder / f"{instance.sop_instance_uid}.dcm")

    # -- HTTP: GET /plugins/example/summary

    def routes(self) -> Sequence[PluginRoute]:
        return [PluginRoute("/summary", self.summary)]

    def summary(self, request: PluginRequest) -> dict[str, Any]:
        # The caller's view: studies it may not query are not in the answer.
        studies = request.archive.studies(limit=int(request.query_params.get("limit", "100")))
        return {
            "caller": request.caller.who,
            "studies": [s["StudyInstanceUID"] for s in studies],
            "events": self.counts(),
        }
