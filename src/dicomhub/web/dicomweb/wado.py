"""DICOMweb retrieve: WADO-RS (instances, metadata, frames, bulk data, rendered) and WADO-URI.

Media type negotiation follows PS3.18 8.7: the ``Accept`` ranges are tried
best first; ``*/*`` (or no ``Accept``) gives the stored representation.

- Instances: ``multipart/related; type="application/dicom"``, one part per
  instance streamed from storage. ``transfer-syntax=*`` is the stored
  syntax; a named syntax is transcoded to when it is not the stored one
  (:mod:`dicomhub.services.transcode`; lossy only because the client named
  it); no ``transfer-syntax`` means Explicit VR Little Endian (PS3.18
  8.7.3.5.2). What this install cannot produce is 406 with the reason.
- Metadata: ``application/dicom+json``, spliced from the header JSON the index
  holds (BulkDataURIs made absolute, Pixel Data's added), with an ``ETag``.
- Frames: ``*/*`` gives them as stored (native pixel data as
  ``application/octet-stream``, encapsulated as the stored bit stream in its
  image media type, PS3.18 Table 8.7.3-5); a named media type (with its
  default or a named ``transfer-syntax``) gives them decoded or re-encoded.
  ``application/octet-stream`` with ``transfer-syntax=*``, what cornerstone3D
  (OHIF's image loader) asks for, gives them as stored too, each part's
  Content-Type naming the syntax. Native frames are always little endian.
  A frame number out of range is 404 (PS3.18 allows 400 or 404: the
  resource does not exist).
- Bulk data: ``/bulk/{tag}`` (8 hex digits: the top-level element, else the
  first one nested in a sequence). Single-part ``application/octet-stream``
  honours ``Range``. Big-endian pixel data is given byte-swapped.
- Rendered/thumbnail: JPEG (default) or PNG of the first frame of an
  instance, of a frame, or of the middle image of a series (or, for a
  thumbnail, of a study); a video instance renders as its stored stream, an
  encapsulated PDF as the PDF.

An ``accept`` query parameter replaces the ``Accept`` header (PS3.18 8.3.3.1).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from functools import wraps

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicomhub import codec
from dicomhub.config import Settings
from dicomhub.errors import DicomhubError, InvalidRequest
from dicomhub.model.audit import AuditAction, AuditedStudy
from dicomhub.model.caller import Caller
from dicomhub.model.records import InstanceRow
from dicomhub.services.archive import Archive
from dicomhub.services.wado import (
    ENCAPSULATED_DOCUMENT,
    NATIVE_SYNTAXES,
    PIXEL_DATA,
    VIDEO_MEDIA_TYPES,
    CannotDecode,
    CannotEncode,
    WadoService,
)
from dicomhub.web.auth import audit_after_response, caller_of, outcome_of
from dicomhub.web.dicomweb.multipart import (
    MediaRange,
    Part,
    in_batches,
    multipart_body,
    multipart_content_type,
    multipart_length,
    new_boundary,
    parse_accept,
)
from dicomhub.web.dicomweb.rejection import include_rejected
from dicomhub.web.dicomweb.render import (
    RENDERED_TYPES,
    Viewport,
    Window,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
    to_display,
)
from dicomhub.web.dicomweb.urls import dicomweb_base
from dicomhub.web.errors import NotAcceptable

__all__ = ["FRAME_MEDIA_TYPES", "routes"]

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"

#: PS3.18 Table 8.7.3-5: media types of compressed frames by transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_LITTLE_ENDIAN_NATIVE = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
_THUMBNAIL = Viewport(128, 128)
_FRAME_LIST = re.compile(r"^\d+(,\d+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

Endpoint = Callable[[Request], Response]


def _negotiation(endpoint: Endpoint) -> Endpoint:
    """Report what cannot be encoded or decoded yet as 406 Not Acceptable."""

    @wraps(endpoint)
    def wrapper(request: Request) -> Response:
        try:
            return endpoint(request)
        except (CannotEncode, CannotDecode) as exc:
            raise NotAcceptable(str(exc)) from exc

    return wrapper


def _caller(request: Request) -> Caller:
    return caller_of(request)


def _accept(request: Request) -> list[MediaRange]:
    # PS3.18 8.3.3.1: an ``accept`` query parameter replaces the header. OHIF
    # appends it to the URLs it hands to <img> and <video> elements, which
    # cannot set headers (``.../thumbnail?accept=image/jpeg``).
    in_query = request.query_params.getlist("accept")
    if in_query:
        return parse_accept(", ".join(in_query))
    return parse_accept(request.headers.get("accept"))


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    p = request.path_params
    return p["study"], p.get("series"), p.get("instance")


class _Wado:
    """The endpoints, bound to one :class:`WadoService`."""

    def __init__(self, archive: Archive, public_base_url: str = "") -> None:
        self.archive = archive
        self.wado = archive.wado
        self.public_base_url = public_base_url

    # ------------------------------------------------------------ instances

    def _syntax_for(self, row: InstanceRow, ranges: list[MediaRange]) -> str | None:
        """The transfer syntax to send ``row`` in, or None when no range can be met."""
        for r in ranges:
            if r.media_type in ("*/*", "multipart/*"):
                return row.transfer_syntax_uid
            if r.media_type != "multipart/related":
                continue
            part_type = r.part_type or DICOM
            if part_type != DICOM and not r.part_matches(DICOM):
                continue
            wanted = r.params.get("transfer-syntax")
            if wanted == "*" or (wanted is None and part_type != DICOM):
                return row.transfer_syntax_uid
            # PS3.18 8.7.3.5.2: no transfer-syntax parameter means Explicit VR Little Endian.
            wanted = wanted or EXPLICIT_VR_LE
            if self.wado.can_encode(row, wanted):
                return wanted
        return None

    def _instances(
        self, request: Request, study: str, series: str | None, instance: str | None
    ) -> list[InstanceRow]:
        """The instances a request names, with its one RETRIEVE audit record (a study the
        caller may not retrieve is not found, and audited as a refusal)."""
        caller = _caller(request)
        try:
            rows = self.wado.instances(
                caller, study, series, instance, include_rejected=include_rejected(request)
            )
        except DicomhubError as exc:
            self._audit(request, caller, study, [], exc)
            raise
        self._audit(request, caller, study, rows, None)
        return rows

    def _audit(
        self,
        request: Request,
        caller: Caller,
        study: str,
        rows: Sequence[InstanceRow],
        exc: DicomhubError | None,
    ) -> None:
        series = tuple(dict.fromkeys(r.series_instance_uid for r in rows))
        audit_after_response(
            request,
            self.archive,
            caller,
            AuditAction.RETRIEVE,
            outcome_of(exc),
            [AuditedStudy(study[:64], "", series, len(rows))],
            {"path": request.url.path[:256]},
        )

    def retrieve(self, request: Request) -> Response:
        """WADO-RS retrieve study / series / instance (PS3.18 10.4.1.1.1)."""
        study, series, instance = _uids(request)
        rows = self._instances(request, study, series, instance)
        ranges = _accept(request)
        plan: list[tuple[InstanceRow, str]] = []
        for row in rows:
            ts = self._syntax_for(row, ranges)
            if ts is None:
                raise NotAcceptable(
                    f"instance {row.sop_instance_uid} is stored in {row.transfer_syntax_uid}; "
                    f"none of the accepted representations ({request.headers.get('accept')}) "
                    "can be produced from it in this install (see GET /admin/codecs); "
                    "transfer-syntax=* gives it as stored"
                )
            plan.append((row, ts))
        boundary = new_boundary()

        def part_headers(ts: str) -> dict[str, str]:
            return {"Content-Type": f"{DICOM}; transfer-syntax={ts}"}

        # The first part is prepared before the response starts: when it cannot
        # be produced (e.g. an image too small for the encoder) the answer is a
        # 406, not a broken stream.
        # Studies filed under corrected demographics go out with them (one lookup).
        coerced = self.wado.coercions(rows)
        first = self.wado.encoded(*plan[0], coerced.get(plan[0][0].study_instance_uid))

        def parts() -> Iterator[Part]:
            for i, (row, ts) in enumerate(plan):
                yield Part(
                    part_headers(ts),
                    first if i == 0 else self.wado.encoded(row, ts, coerced.get(row.study_instance_uid)),
                )

        headers = {"Content-Type": multipart_content_type(DICOM, boundary)}
        if not coerced and all(ts == row.transfer_syntax_uid for row, ts in plan):
            # Objects go out as stored: every size is known up front.
            sizes = ((part_headers(ts), row.size) for row, ts in plan)
            headers["Content-Length"] = str(multipart_length(sizes, boundary))
        return StreamingResponse(in_batches(multipart_body(parts(), boundary)), headers=headers)

    # ------------------------------------------------------------ metadata

    def metadata(self, request: Request) -> Response:
        """WADO-RS retrieve metadata (PS3.18 10.4.1.1.2) as DICOM JSON."""
        ranges = _accept(request)
        if not any(r.matches("application/dicom+json") or r.media_type == "application/json" for r in ranges):
            raise NotAcceptable("metadata is available as application/dicom+json only")
        study, series, instance = _uids(request)
        caller = _caller(request)
        try:
            pairs = self.wado.metadata(
                caller, study, series, instance, include_rejected=include_rejected(request)
            )
        except DicomhubError as exc:
            self._audit(request, caller, study, [], exc)
            raise
        self._audit(request, caller, study, [row for row, _text in pairs], None)
        base = dicomweb_base(request, self.public_base_url)
        digest = hashlib.blake2b(base.encode(), digest_size=16)
        for row, text in pairs:
            digest.update(f"\0{row.pk}\0{row.transfer_syntax_uid}\0".encode())
            digest.update(text.encode())
        etag = f'"{digest.hexdigest()}"'
        if _not_modified(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={"ETag": etag})
        body = "[" + ",".join(_splice(row, text, base) for row, text in pairs) + "]"
        return Response(
            body.encode("utf-8"),
            media_type="application/dicom+json",
            headers={"ETag": etag, "Cache-Control": "no-cache"},
        )

    # ------------------------------------------------------------ frames

    def frames(self, request: Request) -> Response:
        """WADO-RS retrieve frames (PS3.18 10.4.1.1.3)."""
        numbers = _frame_numbers(request.path_params["frames"])
        row = self._instance(request)
        layout, _ds = self.wado.pixel_layout(row)
        stored_ts = layout.transfer_syntax_uid
        media, target, multipart = _frame_representation(
            row, stored_ts, not layout.encapsulated, len(numbers), _accept(request), self.wado
        )
        if target == stored_ts or (target in _LITTLE_ENDIAN_NATIVE and stored_ts in _LITTLE_ENDIAN_NATIVE):
            _layout, data = self.wado.frames(row, numbers)
        else:
            data = self.wado.frames_in(row, numbers, target)
        return _frames_response(data, media, target, multipart)

    def _instance(self, request: Request) -> InstanceRow:
        study, series, instance = _uids(request)
        return self._instances(request, study, series, instance)[0]

    # ------------------------------------------------------------ bulk data

    def bulk(self, request: Request) -> Response:
        """Bulk data of one instance: ``/bulk/{tag}`` (the URIs metadata hands out)."""
        text = request.path_params["tag"]
        if not _TAG.match(text):
            raise InvalidRequest(f"bulk data tag must be 8 hex digits, not {text!r}")
        tag = int(text, 16)
        row = self._instance(request)
        ranges = _accept(request)
        if tag == PIXEL_DATA:
            layout, _ds = self.wado.pixel_layout(row)
            if layout.encapsulated:
                every = list(range(1, layout.number_of_frames + 1))
                media, target, multipart = _frame_representation(
                    row, layout.transfer_syntax_uid, False, len(every), ranges, self.wado
                )
                if target == layout.transfer_syntax_uid:
                    _layout, data = self.wado.frames(row, every)
                else:
                    data = self.wado.frames_in(row, every, target)
                return _frames_response(data, media, target, multipart)
            if layout.transfer_syntax_uid == EXPLICIT_VR_BE:
                # Bulk data in application/octet-stream is little endian (PS3.18
                # 8.7.3.3.2): big-endian pixel data is swapped, not sent as stored.
                every = list(range(1, layout.number_of_frames + 1))
                inline = b"".join(self.wado.frames_in(row, every, EXPLICIT_VR_LE))
                length, offset = len(inline), 0
            else:
                length, offset, inline = layout.value_length, layout.value_offset, None
        else:
            value = self.wado.bulk(row, tag)
            length, offset, inline = value.length, value.offset, value.data
        single = _single_octet_stream(ranges)
        if single is None:
            raise NotAcceptable(f"bulk data is available as {OCTET_STREAM} (single or multipart) only")
        if not single:
            boundary = new_boundary()
            content = [inline] if inline is not None else self.wado.stream_range(row, offset, length)
            part = Part({"Content-Type": OCTET_STREAM}, content)
            return StreamingResponse(
                multipart_body([part], boundary),
                headers={"Content-Type": multipart_content_type(OCTET_STREAM, boundary)},
            )
        start, end = 0, length - 1
        status = 200
        headers = {"Accept-Ranges": "bytes"}
        requested = _byte_range(request.headers.get("range"), length)
        if requested is not None:
            start, end = requested
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{length}"
        size = max(0, end - start + 1)
        headers["Content-Length"] = str(size)
        if inline is not None:
            return Response(
                inline[start : end + 1], status_code=status, media_type=OCTET_STREAM, headers=headers
            )
        return StreamingResponse(
            self.wado.stream_range(row, offset + start, size),
            status_code=status,
            media_type=OCTET_STREAM,
            headers=headers,
        )

    # ------------------------------------------------------------ rendered

    def rendered(self, request: Request, *, thumbnail: bool = False) -> Response:
        """Rendered instance, frame or series (middle instance), or its thumbnail (PS3.18 10.4.1.1.4).

        A video instance renders as its stored video stream and an encapsulated
        PDF as the PDF, when the ``Accept`` allows (``*/*`` does): that is how
        OHIF shows them, from ``.../instances/{instance}/rendered``.
        """
        ranges = _accept(request)
        q = request.query_params
        window = parse_window(q.get("window"))
        viewport = parse_viewport(q.get("viewport")) or (_THUMBNAIL if thumbnail else None)
        quality = parse_quality(q.get("quality"))
        study, series, instance = _uids(request)
        rows = self._instances(request, study, series, instance)
        row = _representative(rows) if instance is None else rows[0]
        if instance is not None and not thumbnail and "frames" not in request.path_params:
            own = _own_rendered_type(row)
            if own is not None and any(r.matches(own) for r in ranges):
                return self._as_own(row, own)
            if own is not None and not own.startswith("video/"):
                # A document has no pixels to render as an image: not 404, it exists.
                raise NotAcceptable(f"instance {row.sop_instance_uid} renders as {own} only")
        media_type = _rendered_type(ranges)
        frame = 1
        if "frames" in request.path_params:
            numbers = _frame_numbers(request.path_params["frames"])
            if len(numbers) != 1:
                raise InvalidRequest("rendered frames are served one frame at a time")
            frame = numbers[0]
        return Response(
            self._render(row, frame, media_type, window, viewport, quality), media_type=media_type
        )

    def thumbnail(self, request: Request) -> Response:
        return self.rendered(request, thumbnail=True)

    def _as_own(self, row: InstanceRow, media_type: str) -> Response:
        """A video's stored stream, or an encapsulated document's bytes, as ``media_type``."""
        if media_type.startswith("video/"):
            return StreamingResponse(in_batches(self.wado.video_stream(row)), media_type=media_type)
        value = self.wado.bulk(row, ENCAPSULATED_DOCUMENT)
        if value.data is not None:
            return Response(value.data, media_type=media_type)
        return StreamingResponse(
            self.wado.stream_range(row, value.offset, value.length),
            media_type=media_type,
            headers={"Content-Length": str(value.length)},
        )

    def _render(
        self,
        row: InstanceRow,
        frame: int,
        media_type: str,
        window: Window | None,
        viewport: Viewport | None,
        quality: int | None,
    ) -> bytes:
        src = self.wado.render_source(row, frame)
        default = None
        if src.window_center is not None and src.window_width is not None and src.window_width >= 1:
            default = Window(src.window_center, src.window_width)
        display = to_display(
            src.pixels,
            src.photometric_interpretation,
            rescale_slope=src.rescale_slope,
            rescale_intercept=src.rescale_intercept,
            window=window,
            default_window=default,
            bits_stored=src.bits_stored,
        )
        return render(display, media_type, viewport=viewport, quality=quality)

    # ------------------------------------------------------------ WADO-URI

    def wado_uri(self, request: Request) -> Response:
        """WADO-URI (PS3.18 9): ``?requestType=WADO&studyUID=&seriesUID=&objectUID=``."""
        q = request.query_params
        if q.get("requestType") != "WADO":
            raise InvalidRequest("requestType must be WADO")
        uids = [q.get(name) for name in ("studyUID", "seriesUID", "objectUID")]
        study, series, instance = (u or "" for u in uids)
        wanted = [t.strip().split(";", 1)[0].strip().lower() for t in q.get("contentType", "").split(",")]
        wanted = [t for t in wanted if t] or ["image/jpeg"]
        content_type = next(
            (t for t in wanted if t in (DICOM, *RENDERED_TYPES) or t in ("image/*", "*/*")), None
        )
        if content_type is None:
            raise NotAcceptable(
                f"contentType {q.get('contentType')!r}: offered are {DICOM}, image/jpeg, image/png"
            )
        if content_type in ("image/*", "*/*"):
            content_type = "image/jpeg"
        # UIDs are checked (400) before the lookup (404).
        WadoService.query(study, series, instance)
        row = self._instances(request, study, series, instance)[0]
        if content_type == DICOM:
            ts = q.get("transferSyntax")
            if not ts:
                # PS3.18 9: Explicit VR Little Endian unless asked otherwise; an
                # object that cannot be decoded goes out as stored rather than not at all.
                ts = EXPLICIT_VR_LE if self.wado.can_encode(row, EXPLICIT_VR_LE) else row.transfer_syntax_uid
            return StreamingResponse(
                self.wado.encoded(row, ts, self.wado.coercions([row]).get(row.study_instance_uid)),
                media_type=DICOM,
                headers={"Content-Disposition": f'attachment; filename="{row.sop_instance_uid}.dcm"'},
            )
        center, width = q.get("windowCenter"), q.get("windowWidth")
        if (center is None) != (width is None):
            raise InvalidRequest("windowCenter and windowWidth go together")
        window = parse_window(f"{center},{width}") if center is not None else None
        columns, rows_ = _positive(q.get("columns"), "columns"), _positive(q.get("rows"), "rows")
        viewport = Viewport(columns, rows_) if columns or rows_ else None
        frame = _positive(q.get("frameNumber"), "frameNumber") or 1
        quality = parse_quality(q.get("imageQuality"))
        return Response(
            self._render(row, frame, content_type, window, viewport, quality), media_type=content_type
        )


# ---------------------------------------------------------------- helpers


def _not_modified(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _splice(row: InstanceRow, text: str, base: str) -> str:
    """One instance's stored header JSON with absolute BulkDataURIs and Pixel Data's added."""
    prefix = (
        f"{base}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
        f"/instances/{row.sop_instance_uid}"
    )
    out = text.replace('"BulkDataURI":"bulkdata:', f'"BulkDataURI":"{prefix}/bulk/')
    # Pixel Data is not in the header JSON (stop_before_pixels): add its URI
    # when the header describes an image. Only two top-level values are read.
    try:
        top = json.loads(text)
    except ValueError:
        return out
    if not isinstance(top, dict) or "00280010" not in top:
        return out
    bits = (top.get("00280100") or {}).get("Value") or [16]
    vr = "OW" if row.transfer_syntax_uid in NATIVE_SYNTAXES and int(bits[0]) > 8 else "OB"
    entry = f'"7FE00010":{{"vr":"{vr}","BulkDataURI":"{prefix}/bulk/7FE00010"}}'
    body = out.rstrip()
    if body == "{}" or not body.endswith("}"):
        return "{" + entry + "}"
    return body[:-1] + "," + entry + "}"


def _frame_numbers(text: str) -> list[int]:
    if not _FRAME_LIST.match(text):
        raise InvalidRequest(f"frame list must be comma-separated positive integers, not {text!r}")
    numbers = [int(n) for n in text.split(",")]
    if any(n < 1 for n in numbers):
        raise InvalidRequest("frame numbers start at 1")
    return numbers


def _positive(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a positive integer") from exc
    if value < 1:
        raise InvalidRequest(f"{name} must be a positive integer")
    return value


#: PS3.18 Table 8.7.3-5: the transfer syntax an image media type means when none is named.
_DEFAULT_FRAME_SYNTAX = {
    OCTET_STREAM: EXPLICIT_VR_LE,
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}


def _frame_representation(
    row: InstanceRow,
    stored_ts: str,
    native: bool,
    count: int,
    ranges: list[MediaRange],
    wado: WadoService,
) -> tuple[str, str, bool]:
    """(media type, transfer syntax, multipart) for frames, from the ``Accept`` ranges.

    ``*/*`` gives the frames as stored. ``transfer-syntax=*`` leaves the
    syntax to the server (PS3.18 8.7.3.5.2): with ``application/octet-stream``
    (what cornerstone3D and OHIF ask for) or the stored media type the frames
    go as stored, each part's Content-Type naming the syntax; with another
    image media type they are transcoded to its default syntax. A media type
    with a named (or its default) transfer syntax gives them transcoded when
    the stored pixel data is not already in it.

    Native frames always go as little endian (``transfer-syntax`` Explicit VR
    Little Endian, PS3.18 8.7.3.3.2), big-endian ones byte-swapped.
    """
    stored_media = OCTET_STREAM if native else FRAME_MEDIA_TYPES.get(stored_ts, OCTET_STREAM)
    # Native frames are sent as little endian octets whatever the stored framing.
    stored_as = EXPLICIT_VR_LE if native else stored_ts
    for r in ranges:
        if r.media_type in ("*/*", "multipart/*"):
            return stored_media, stored_as, True
        if r.media_type == "multipart/related":
            media = _FRAME_MEDIA_ALIASES.get(r.part_type or "", r.part_type or stored_media)
            multipart = True
        elif _FRAME_MEDIA_ALIASES.get(r.media_type, r.media_type) in _DEFAULT_FRAME_SYNTAX and count == 1:
            media, multipart = _FRAME_MEDIA_ALIASES.get(r.media_type, r.media_type), False
        else:
            continue
        if media in ("*/*", "image/*"):
            return stored_media, stored_as, multipart
        wanted = r.params.get("transfer-syntax")
        if wanted == "*":
            if media in (stored_media, OCTET_STREAM):
                # The stored bit stream, labelled with its syntax: cornerstone3D
                # reads the syntax from the part's Content-Type and decodes itself.
                return media, stored_as, multipart
            wanted = None  # another image type: its default syntax
        if media not in _DEFAULT_FRAME_SYNTAX:
            continue
        target = wanted or _DEFAULT_FRAME_SYNTAX[media]
        if media != (OCTET_STREAM if target in _NATIVE_TARGETS else FRAME_MEDIA_TYPES.get(target)):
            continue
        if target == stored_as or (native and target in _LITTLE_ENDIAN_NATIVE):
            return media, target, multipart
        if target in _NATIVE_TARGETS and codec.can_decode(stored_ts):
            return media, target, multipart
        if wado.can_encode(row, target):
            return media, target, multipart
    raise NotAcceptable(
        f"the frames of instance {row.sop_instance_uid} (stored in {stored_ts}) cannot be given in "
        f"any of the accepted media types in this install; as stored they are "
        f'multipart/related; type="{stored_media}" (or type=application/octet-stream; '
        "transfer-syntax=*)"
    )


#: Media types of frames spelled as before PS3.18 registered them, still sent by
#: dicomweb-client and cornerstone3D (``image/x-jls``, ``image/x-dicom-rle``).
_FRAME_MEDIA_ALIASES = {
    "image/x-jls": "image/jls",
    "image/x-dicom-rle": "image/dicom-rle",
}


_NATIVE_TARGETS = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)


def _frames_response(data: list[bytes], media: str, ts: str, multipart: bool) -> Response:
    content_type = f"{media}; transfer-syntax={ts}"
    if not multipart:
        return Response(data[0], headers={"Content-Type": content_type})
    boundary = new_boundary()
    parts = [Part({"Content-Type": content_type}, [frame]) for frame in data]
    return StreamingResponse(
        multipart_body(parts, boundary),
        headers={"Content-Type": multipart_content_type(media, boundary)},
    )


def _single_octet_stream(ranges: list[MediaRange]) -> bool | None:
    """True for single-part octet-stream, False for multipart, None when neither is accepted."""
    for r in ranges:
        if r.media_type == OCTET_STREAM:
            return True
        if r.media_type in ("*/*", "multipart/*"):
            return False
        if r.media_type == "multipart/related" and (r.part_type is None or r.part_matches(OCTET_STREAM)):
            return False
    return None


def _byte_range(header: str | None, length: int) -> tuple[int, int] | None:
    """The (first, last) byte of a single ``Range: bytes=...``; None to send everything.

    Raises
    ------
    _RangeNotSatisfiable
        When the range lies outside the value.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None  # several ranges or another unit: RFC 9110 lets us ignore it
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0 or length == 0:
            raise _RangeNotSatisfiable(length)
        return max(0, length - n), length - 1
    start = int(first)
    end = min(int(last), length - 1) if last else length - 1
    if start >= length or (last and int(last) < start):
        raise _RangeNotSatisfiable(length)
    return start, end


class _RangeNotSatisfiable(Exception):
    def __init__(self, length: int) -> None:
        super().__init__(f"range not satisfiable (value of {length} bytes)")
        self.length = length


#: SOP Class UID prefixes and UIDs of objects without an image to show (structured
#: reports and key object selections, encapsulated documents, presentation states,
#: waveforms, RT structure sets, plans and records).
_NOT_IMAGES_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.9.",
)
_NOT_IMAGES = frozenset(f"1.2.840.10008.5.1.4.1.1.481.{n}" for n in range(3, 10))


def _representative(rows: Sequence[InstanceRow]) -> InstanceRow:
    """The instance that shows a series or study: the middle one (index order) of its images.

    A study's middle instance may be a report, a PDF or a video, which has no
    image for a thumbnail here: those are passed over while there are images.
    """
    images = [
        r
        for r in rows
        if not r.sop_class_uid.startswith(_NOT_IMAGES_PREFIXES)
        and r.sop_class_uid not in _NOT_IMAGES
        and r.transfer_syntax_uid not in VIDEO_MEDIA_TYPES  # no video decoder here
    ]
    chosen = images or list(rows)
    return chosen[len(chosen) // 2]


#: SOP Class UID of Encapsulated PDF Storage.
_ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _own_rendered_type(row: InstanceRow) -> str | None:
    """The media type an instance renders as without decoding, if any (PS3.18 Table 8.7.4-1)."""
    if row.sop_class_uid == _ENCAPSULATED_PDF:
        return "application/pdf"
    return VIDEO_MEDIA_TYPES.get(row.transfer_syntax_uid)


def _rendered_type(ranges: list[MediaRange]) -> str:
    for r in ranges:
        for media_type in RENDERED_TYPES:
            if r.matches(media_type):
                return media_type
    # dicomweb-client's retrieveBulkData, which OHIF uses for thumbnails and
    # rendered images unless its bulk data is configured single part, asks for
    # multipart/related; type="application/octet-stream". A rendered image is
    # single part; RFC 9110 12.5.1 lets a server disregard Accept rather than
    # answer 406, and that client takes a single-part body as it is.
    for r in ranges:
        if r.media_type == "multipart/related" and r.part_type in (None, OCTET_STREAM, *RENDERED_TYPES):
            return r.part_type if r.part_type in RENDERED_TYPES else RENDERED_TYPES[0]
    raise NotAcceptable(f"rendered images are available as {' or '.join(RENDERED_TYPES)}")


def _ranges_checked(endpoint: Endpoint) -> Endpoint:
    @wraps(endpoint)
    def wrapper(request: Request) -> Response:
        try:
            return endpoint(request)
        except _RangeNotSatisfiable as exc:
            return Response(
                str(exc).encode(),
                status_code=416,
                media_type="text/plain",
                headers={"Content-Range": f"bytes */{exc.length}"},
            )

    return wrapper


def routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    """The WADO-RS and WADO-URI routes, relative to the ``/dicomweb`` mount."""
    w = _Wado(archive, settings.public_base_url)
    study = "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    frames = instance + "/frames/{frames}"
    table: list[tuple[str, Endpoint]] = [
        (study, w.retrieve),
        (study + "/metadata", w.metadata),
        (study + "/thumbnail", w.thumbnail),
        (series, w.retrieve),
        (series + "/metadata", w.metadata),
        (series + "/rendered", w.rendered),
        (series + "/thumbnail", w.thumbnail),
        (instance, w.retrieve),
        (instance + "/metadata", w.metadata),
        (instance + "/rendered", w.rendered),
        (instance + "/thumbnail", w.thumbnail),
        (instance + "/bulk/{tag}", _ranges_checked(w.bulk)),
        (frames, w.frames),
        (frames + "/rendered", w.rendered),
        (frames + "/thumbnail", w.thumbnail),
        ("/wado", w.wado_uri),
    ]
    return [Route(path, _negotiation(endpoint), methods=["GET"]) for path, endpoint in table]
