"""The layout of a study for the web UI's study viewer: its display sets and its
prior's, found with the caller's own searches, hung by :func:`dicomhub.model.hanging.hang`.

Every lookup is a :class:`~dicomhub.services.search.SearchService` search with the
caller, so the layout names only series the caller may query: a prior in a study
the caller may not see is simply not found.
"""

from __future__ import annotations

from collections.abc import Sequence

from dicomhub.errors import NotFound
from dicomhub.model.caller import Caller
from dicomhub.model.hanging import PER_IMAGE, DisplaySet, HangingProtocol, Layout, choose_protocol, hang
from dicomhub.model.identifiers import Level
from dicomhub.model.match import Match
from dicomhub.model.query import Condition, OrderKey, Query, Range, Single
from dicomhub.services.search import SearchService

__all__ = ["HangingService"]

_SERIES_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "Laterality",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)
_IMAGE_KEYS = ("SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber", "ImageLaterality", "ViewPosition")
# Earlier studies of the patient looked at for a prior: the newest few are enough.
_PRIOR_CANDIDATES = 10


def _text(match: Match, keyword: str) -> str:
    value = match.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return str(value[0]) if value else ""
    return str(value).strip()


def _int(match: Match, keyword: str) -> int:
    try:
        return int(_text(match, keyword) or 0)
    except ValueError:
        return 0


def _uid(keyword: str, value: str) -> Condition:
    return Condition(keyword, "UI", Single(value))


class HangingService:
    """Lays studies out by hanging protocol, through the caller's searches."""

    def __init__(self, search: SearchService, protocols: Sequence[HangingProtocol] = ()) -> None:
        self.search = search
        self.protocols = tuple(protocols)

    def layout(self, study_instance_uid: str, caller: Caller) -> Layout:
        """The viewports of one study (NotFound when the caller may not query it)."""
        studies = list(
            self.search.search(
                Query(
                    level=Level.STUDY,
                    conditions=(_uid("StudyInstanceUID", study_instance_uid),),
                    return_keys=("PatientID", "StudyDate", "ModalitiesInStudy"),
                ),
                caller,
            )
        )
        if not studies:
            raise NotFound(f"no study {study_instance_uid}")
        current = self.display_sets(study_instance_uid, caller)
        protocol = choose_protocol(self.protocols, [d.modality for d in current])
        prior: list[DisplaySet] = []
        if protocol.priors:
            prior = self._prior(studies[0], study_instance_uid, {d.modality for d in current}, caller)
        return hang(self.protocols, current, prior)

    def display_sets(self, study_instance_uid: str, caller: Caller, prior: bool = False) -> list[DisplaySet]:
        """A study's series, or their images for the projection modalities."""
        series = list(
            self.search.search(
                Query(
                    level=Level.SERIES,
                    conditions=(_uid("StudyInstanceUID", study_instance_uid),),
                    return_keys=_SERIES_KEYS,
                ),
                caller,
            )
        )
        out: list[DisplaySet] = []
        for match in series:
            base = DisplaySet(
                study_instance_uid,
                _text(match, "SeriesInstanceUID"),
                _text(match, "Modality").upper(),
                _text(match, "SeriesDescription"),
                _text(match, "BodyPartExamined").upper(),
                _text(match, "Laterality").upper(),
                images=_int(match, "NumberOfSeriesRelatedInstances"),
                series_number=_int(match, "SeriesNumber"),
                prior=prior,
            )
            if base.modality not in PER_IMAGE:
                out.append(base)
                continue
            images = self.search.search(
                Query(
                    level=Level.IMAGE,
                    conditions=(
                        _uid("StudyInstanceUID", study_instance_uid),
                        _uid("SeriesInstanceUID", base.series_instance_uid),
                    ),
                    return_keys=_IMAGE_KEYS,
                ),
                caller,
            )
            for image in sorted(images, key=lambda m: _int(m, "InstanceNumber")):
                out.append(
                    DisplaySet(
                        base.study_instance_uid,
                        base.series_instance_uid,
                        base.modality,
                        base.series_description,
                        base.body_part,
                        (_text(image, "ImageLaterality") or base.laterality).upper(),
                        _text(image, "ViewPosition").upper(),
                        1,
                        base.series_number * 100000 + _int(image, "InstanceNumber"),
                        _text(image, "SOPInstanceUID"),
                        prior,
                    )
                )
        return out

    def _prior(
        self, study: Match, study_instance_uid: str, modalities: set[str], caller: Caller
    ) -> list[DisplaySet]:
        """The display sets of the patient's newest earlier study sharing a modality."""
        patient_id, date = _text(study, "PatientID"), _text(study, "StudyDate")
        if not patient_id or not date:
            return []
        earlier = self.search.search(
            Query(
                level=Level.STUDY,
                conditions=(
                    Condition("PatientID", "LO", Single(patient_id)),
                    Condition("StudyDate", "DA", Range(None, date)),
                ),
                return_keys=("StudyInstanceUID", "StudyDate", "ModalitiesInStudy"),
                order_by=(OrderKey("StudyDate", descending=True),),
                limit=_PRIOR_CANDIDATES,
            ),
            caller,
        )
        for candidate in earlier:
            uid = _text(candidate, "StudyInstanceUID")
            value = candidate.get("ModalitiesInStudy")
            found = {str(m).upper() for m in (value if isinstance(value, list | tuple) else [value]) if m}
            if uid != study_instance_uid and found & modalities:
                return self.display_sets(uid, caller, prior=True)
        return []
