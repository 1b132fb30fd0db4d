"""ACSE: association establishment, rejection and the presentation contexts we accept.

The cold path of an association (once per association), on pynetdicom's PDU
classes (:class:`~pynetdicom.pdu.A_ASSOCIATE_RQ` to decode the request,
:class:`~pynetdicom.pdu.A_ASSOCIATE_AC` / :class:`~pynetdicom.pdu.A_ASSOCIATE_RJ`
to encode the answer) and :func:`pynetdicom.presentation.negotiate_as_acceptor`,
which also answers SCP/SCU role selection (PS3.7 D.3.3.4) exactly as
pynetdicom would.  Release and abort are single fixed PDUs
(:mod:`dicomhub.dimse.pdu`); the association loop sends them.

References
----------
PS3.8 Sections 7.1 (A-ASSOCIATE), 9.3.2-9.3.4 (A-ASSOCIATE-RQ/AC/RJ),
Table 9-21 (rejection reasons); PS3.7 Annex D.3.3 (extended negotiation,
role selection).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicomhub.dimse import pdu as P
from dicomhub.dimse.contexts import STORAGE_TRANSFER_SYNTAXES
from dicomhub.dimse.requests import (
    QUERY_RETRIEVE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
    AssociationConfig,
)
from dicomhub.model.commitment import STORAGE_COMMITMENT_PUSH_MODEL
from dicomhub.model.mpps import MODALITY_PERFORMED_PROCEDURE_STEP
from dicomhub.model.presentationlut import PRESENTATION_LUT
from dicomhub.model.printing import META_SOP_CLASSES, PRINT_JOB
from dicomhub.model.sopclasses import StorableSOPClasses
from dicomhub.model.worklist import MODALITY_WORKLIST_FIND

__all__ = [
    "APPLICATION_CONTEXT_NAME",
    "MAX_ASSOCIATE_RQ",
    "acceptor_contexts",
    "acceptor_contexts_for",
    "context_outcome",
    "decode_associate_rq",
    "encode_rejection",
    "negotiate",
    "refusal_of",
    "storage_syntaxes",
]

LOGGER = logging.getLogger("dicomhub.dimse.acse")

#: The DICOM application context (PS3.7 A.2.1).
APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"

_IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
_EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
_UNCOMPRESSED: Final = (_EXPLICIT_VR_LE, _IMPLICIT_VR_LE, _EXPLICIT_VR_BE)
_A_ASSOCIATE_RQ: Final = P.A_ASSOCIATE_RQ
_UINT4_BE = P.UINT4_BE
_UINT2_BE = P.UINT2_BE
_PDU_HEADER = P.PDU_HEADER
# A-ASSOCIATE-RQs are a few kB even with 128 contexts; anything bigger than
# this is garbage or an attack, and must not make us allocate or wait for it.
MAX_ASSOCIATE_RQ: Final = 1 << 20


_KNOWN_USER_SUB_ITEMS: Final = frozenset(range(0x51, 0x5A))


def _sanitise_associate_rq(body: memoryview) -> bytes:
    """Drop unknown variable items and user information sub-items.

    PS3.8 9.3.1 tells the acceptor to ignore items it does not know, but
    pynetdicom's decoder raises ``KeyError`` on them; rebuild the PDU without
    them before handing it over.

    Parameters
    ----------
    body : memoryview
        The A-ASSOCIATE-RQ after its 6-byte PDU header.

    Returns
    -------
    bytes
        A complete A-ASSOCIATE-RQ PDU (header included).

    Raises
    ------
    ValueError
        If an item overruns the PDU.
    """
    if len(body) < 68:
        raise ValueError("A-ASSOCIATE-RQ too short")
    items: list[bytes] = []
    pos, end = 68, len(body)
    while pos < end:
        if end - pos < 4:
            raise ValueError("truncated variable item")
        item_type = body[pos]
        item_end = pos + 4 + _UINT2_BE.unpack_from(body, pos + 2)[0]
        if item_end > end:
            raise ValueError("variable item overruns the PDU")
        if item_type in (0x10, 0x20):
            items.append(bytes(body[pos:item_end]))
        elif item_type == 0x50:
            subs: list[bytes] = []
            sub = pos + 4
            while sub < item_end:
                if item_end - sub < 4:
                    raise ValueError("truncated user information sub-item")
                sub_end = sub + 4 + _UINT2_BE.unpack_from(body, sub + 2)[0]
                if sub_end > item_end:
                    raise ValueError("user information sub-item overruns its item")
                if body[sub] in _KNOWN_USER_SUB_ITEMS:
                    subs.append(bytes(body[sub:sub_end]))
                sub = sub_end
            content = b"".join(subs)
            items.append(b"\x50\x00" + _UINT2_BE.pack(len(content)) + content)
        pos = item_end
    variable = b"".join(items)
    return _PDU_HEADER.pack(_A_ASSOCIATE_RQ, 0, 68 + len(variable)) + bytes(body[:68]) + variable


def decode_associate_rq(body: memoryview) -> tuple[A_ASSOCIATE, int]:
    """Decode an A-ASSOCIATE-RQ body (after the PDU header) with pynetdicom.

    Returns
    -------
    tuple of (A_ASSOCIATE, int)
        The request primitive and the PDU's protocol version (the primitive
        has no field for the latter).
    """
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(_sanitise_associate_rq(body))
    return pdu.to_primitive(), int(pdu.protocol_version)


# --------------------------------------------------------------------------
# Acceptor contexts (built once per configuration)
# --------------------------------------------------------------------------

_CONTEXT_CACHE: dict[int, tuple[AssociationConfig, list[PresentationContext]]] = {}
_CONTEXT_CACHE_LOCK = threading.Lock()


def acceptor_contexts(config: AssociationConfig) -> list[PresentationContext]:
    """Return the supported presentation contexts for `config`.

    Building ~150 :class:`PresentationContext` objects validates every UID and
    costs milliseconds, so it is cached per configuration object (keyed by
    ``id`` and checked by identity; the config is not hashable because of its
    mapping field).
    """
    key = id(config)
    cached = _CONTEXT_CACHE.get(key)
    if cached is not None and cached[0] is config:
        return cached[1]
    contexts: dict[str, PresentationContext] = {}
    if config.verification:
        contexts[VERIFICATION_SOP_CLASS] = _context(
            VERIFICATION_SOP_CLASS, [_IMPLICIT_VR_LE, _EXPLICIT_VR_LE]
        )
    # With Q/R, C-GET needs us as SCU of the storage classes too (the
    # requestor proposes role selection; without it we stay SCP only).
    roles = config.query_retrieve
    for abstract_syntax, transfer_syntaxes in config.storage_contexts.items():
        if transfer_syntaxes:
            contexts[abstract_syntax] = _context(abstract_syntax, transfer_syntaxes, roles)
    if config.query_retrieve:
        for model in sorted(QUERY_RETRIEVE_SOP_CLASSES):
            contexts[model] = _context(model, _UNCOMPRESSED)
    if config.storage_commitment:
        # Both roles: a requestor that proposes role selection (to receive the
        # report later on an association we open) gets what it asks for.
        contexts[STORAGE_COMMITMENT_PUSH_MODEL] = _context(
            STORAGE_COMMITMENT_PUSH_MODEL, [_EXPLICIT_VR_LE, _IMPLICIT_VR_LE], roles=True
        )
    if config.modality_performed_procedure_step:
        contexts[MODALITY_PERFORMED_PROCEDURE_STEP] = _context(
            MODALITY_PERFORMED_PROCEDURE_STEP, [_EXPLICIT_VR_LE, _IMPLICIT_VR_LE]
        )
    if config.modality_worklist:
        contexts[MODALITY_WORKLIST_FIND] = _context(MODALITY_WORKLIST_FIND, _UNCOMPRESSED)
    if config.print_management:
        for meta in (*sorted(META_SOP_CLASSES), PRINT_JOB, PRESENTATION_LUT):
            contexts[meta] = _context(meta, [_EXPLICIT_VR_LE, _IMPLICIT_VR_LE])
    result = list(contexts.values())
    with _CONTEXT_CACHE_LOCK:
        if len(_CONTEXT_CACHE) >= 16:
            _CONTEXT_CACHE.clear()
        _CONTEXT_CACHE[key] = (config, result)
    return result


def storage_syntaxes(config: AssociationConfig, abstract_syntax: str) -> Sequence[str]:
    """The transfer syntaxes accepted for ``abstract_syntax`` as a storage SOP class.

    Those of ``config.storage_contexts``; with ``config.accept_unknown_storage``
    the storage syntaxes for a SOP class the standard does not register too
    (empty: not accepted for storage).
    """
    listed = config.storage_contexts.get(abstract_syntax)
    if listed is not None:
        return listed
    if config.accept_unknown_storage and StorableSOPClasses.is_unknown(abstract_syntax):
        return STORAGE_TRANSFER_SYNTAXES
    return ()


def acceptor_contexts_for(
    config: AssociationConfig,
    proposed: Sequence[PresentationContext],
    provided: Callable[[str], Sequence[str]] | None = None,
) -> list[PresentationContext]:
    """The supported presentation contexts for one A-ASSOCIATE-RQ.

    :func:`acceptor_contexts`, plus, with ``config.accept_unknown_storage``, a
    storage context for every proposed abstract syntax that is a valid UID the
    standard does not register: a private storage SOP class (Orthanc's
    ``UnknownSopClassAccepted``). Registered UIDs that are not storage SOP
    classes (say, Modality Worklist) stay refused, and so do abstract syntaxes
    that are not valid UIDs. At most 128 contexts fit in a request (odd
    context IDs), so a hostile requestor cannot make this list grow further.

    Parameters
    ----------
    config : AssociationConfig
        The association loop's configuration.
    proposed : sequence of PresentationContext
        The requestor's presentation context definition list.
    provided : callable, optional
        For a proposed SOP class the configuration does not list: the
        transfer syntaxes of a provider registered for it (empty: none);
        such contexts accept both roles.

    Returns
    -------
    list of PresentationContext
    """
    contexts = acceptor_contexts(config)
    if not config.accept_unknown_storage and provided is None:
        return contexts
    known = {str(cx.abstract_syntax) for cx in contexts}
    extra: dict[str, PresentationContext] = {}
    for context in proposed:
        uid = "" if context.abstract_syntax is None else str(context.abstract_syntax)
        if uid in known or uid in extra:
            continue
        syntaxes = provided(uid) if provided is not None else ()
        if syntaxes:
            extra[uid] = _context(uid, syntaxes, roles=True)
            continue
        syntaxes = storage_syntaxes(config, uid)
        if syntaxes:
            # As for the listed classes: the SCU role too, for C-GET sub-operations.
            extra[uid] = _context(uid, syntaxes, config.query_retrieve)
    return [*contexts, *extra.values()] if extra else contexts


def _context(
    abstract_syntax: str, transfer_syntaxes: Sequence[str], roles: bool = False
) -> PresentationContext:
    context = PresentationContext()
    context.abstract_syntax = UID(abstract_syntax)
    context.transfer_syntax = [UID(uid) for uid in transfer_syntaxes]
    if roles:
        context.scu_role = True
        context.scp_role = True
    return context


# --------------------------------------------------------------------------
# Accepting and rejecting
# --------------------------------------------------------------------------


def refusal_of(
    rq: A_ASSOCIATE, protocol_version: int, config: AssociationConfig
) -> tuple[tuple[int, int, int], str] | None:
    """The ACSE-level reason to reject `rq`, if any: ((result, source, diagnostic), text).

    PS3.8 Table 9-21: protocol version, application context name, called AE
    title (only with ``config.require_called_ae_title``).  The archive's own
    policy (known AEs, load) is asked by the association afterwards.
    """
    if not protocol_version & 1:
        return (1, 2, 2), "protocol version not supported"
    if str(rq.application_context_name) != APPLICATION_CONTEXT_NAME:
        return (1, 1, 2), f"application context {rq.application_context_name} not supported"
    if config.require_called_ae_title and rq.called_ae_title.strip() != config.ae_title.strip():
        return (1, 1, 7), "called AE title not recognised"
    return None


def encode_rejection(result: int, source: int, diagnostic: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    rj = A_ASSOCIATE()
    rj.result = result
    rj.result_source = source
    rj.diagnostic = diagnostic
    return bytes(A_ASSOCIATE_RJ(rj).encode())


def negotiate(
    rq: A_ASSOCIATE,
    config: AssociationConfig,
    provided: Callable[[str], Sequence[str]] | None = None,
) -> tuple[bytes, list[PresentationContext]]:
    """Negotiate the presentation contexts of `rq`; return the encoded A-ASSOCIATE-AC and the results.

    Every proposed context is answered, rejected ones included; with no
    acceptable context at all the A-ASSOCIATE-AC still goes out, as DCMTK
    does.  SCP/SCU role selection: pynetdicom's acceptor defaults (no roles
    configured) accept the context with us as SCP and send no reply item; the
    contexts built with roles (storage with Q/R for C-GET, Storage
    Commitment, registered providers) accept what the requestor proposes,
    so ``as_scu``/``as_scp`` of each result say what we may do on it.

    Parameters
    ----------
    provided : callable, optional
        See :func:`acceptor_contexts_for`.
    """
    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in rq.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
    }
    results, role_items = negotiate_as_acceptor(
        rq.presentation_context_definition_list,
        acceptor_contexts_for(config, rq.presentation_context_definition_list, provided),
        roles,
    )
    _prefer_requestor_syntax(results, rq.presentation_context_definition_list, config)
    ac = A_ASSOCIATE()
    ac.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result = 0x00
    ac.result_source = 0x01
    ac.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = config.maximum_pdu_size
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID(config.implementation_class_uid)
    user_info: list[object] = [max_length, class_uid]
    if config.implementation_version_name:
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = config.implementation_version_name
        user_info.append(version)
    user_info.extend(role_items)
    ac.user_information = user_info  # type: ignore[assignment]
    return bytes(A_ASSOCIATE_AC(ac).encode()), results


def context_outcome(
    result: PresentationContext, proposal: PresentationContext | None
) -> tuple[str, int, str | None, list[str] | None]:
    """(abstract syntax, result, accepted transfer syntax, proposed syntaxes if refused)."""
    code = int(result.result) if result.result is not None else 2
    accepted = str(result.transfer_syntax[0]) if code == 0 and result.transfer_syntax else None
    offered = None
    if code != 0 and proposal is not None:
        offered = [str(ts) for ts in proposal.transfer_syntax]
    return str(result.abstract_syntax or ""), code, accepted, offered


def _prefer_requestor_syntax(
    results: list[PresentationContext],
    proposed: Sequence[PresentationContext],
    config: AssociationConfig,
) -> None:
    """Accept a storage context in the requestor's first supported syntax when it is compressed.

    pynetdicom picks the acceptor's first preference, which puts the
    uncompressed syntaxes first. An archive keeps what it receives, so when
    the requestor puts a compressed syntax first, that is the better choice:
    a modality that proposes JPEG 2000 first sends what it holds instead of
    decompressing it, and a C-GET requestor that asks for it first (``getscu
    +xv``) gets JPEG 2000 objects without a transcode. Among the uncompressed
    syntaxes our own order stays (explicit, implicit, then big endian): DCMTK
    tools offer ``[big endian, implicit]`` as a secondary context and must get
    implicit VR little endian there, not big endian.
    """
    by_id = {cx.context_id: cx.transfer_syntax for cx in proposed}
    for context in results:
        if context.result != 0x00:
            continue
        ours = storage_syntaxes(config, str(context.abstract_syntax))
        if not ours:
            continue
        first = next((str(ts) for ts in by_id.get(context.context_id, ()) if ts in ours), None)
        if first is not None and first not in _UNCOMPRESSED:
            context.transfer_syntax = [UID(first)]
