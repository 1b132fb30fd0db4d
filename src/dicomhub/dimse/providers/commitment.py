"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

The requestor asks with N-ACTION-RQ (Action Type 1, *Request Storage
Commitment*) on the well-known SOP instance; the answer is the N-ACTION-RSP,
then, on the same association, the N-EVENT-REPORT-RQ with the result
(Event Type 1 all committed, 2 some failed).  That report is not waited for:
the requestor may release at once, and a report that is not acknowledged
with success here is delivered later on an association of our own (the
``delivered`` callback of the outcome records the acknowledgement).

When the requestor proposed SCP/SCU role selection for this SOP class (to
receive reports on later associations too), the context accepts both roles
(:mod:`dicomhub.dimse.acse`), and the report still goes out on this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final

from dicomhub.dimse import status as S
from dicomhub.dimse.messages import NRequest, NResponse
from dicomhub.dimse.providers.base import Provider
from dicomhub.dimse.requests import NActionOutcome, NActionRequest
from dicomhub.model.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association

__all__ = ["StorageCommitmentProvider"]

LOGGER = logging.getLogger("dicomhub.dimse")

# PS3.4 J.3.2: the only action of the Push Model.
_REQUEST_STORAGE_COMMITMENT: Final = 1


class StorageCommitmentProvider(Provider):
    """Storage Commitment Push Model SCP.

    Parameters
    ----------
    on_n_action : callable
        Called with the :class:`NActionRequest`; its :class:`NActionOutcome`
        gives the N-ACTION-RSP status and the N-EVENT-REPORT sent right after it.
    """

    sop_classes = frozenset({STORAGE_COMMITMENT_PUSH_MODEL})
    name: ClassVar[str] = "storage commitment"

    def __init__(self, on_n_action: Callable[[NActionRequest], NActionOutcome]) -> None:
        self._on_n_action = on_n_action

    def n_action(self, assoc: Association, request: NRequest) -> NResponse:
        if request.sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            return NResponse(S.NO_SUCH_SOP_INSTANCE)
        action_type = request.action_type_id if request.action_type_id is not None else 0
        if action_type != _REQUEST_STORAGE_COMMITMENT:
            return NResponse(S.NO_SUCH_ACTION)
        if request.dataset is None:
            return NResponse(S.MISSING_ATTRIBUTE)
        outcome = self._on_n_action(
            NActionRequest(
                assoc.calling_ae,
                assoc.host,
                request.message_id,
                request.transfer_syntax_uid,
                action_type,
                request.dataset,
            )
        )
        LOGGER.info("N-ACTION (storage commitment) from %s: status 0x%04X", assoc.calling_ae, outcome.status)
        if outcome.status != S.SUCCESS or outcome.report is None:
            return NResponse(outcome.status)
        report = outcome.report

        def send_report() -> None:
            try:
                event_type, information = report()
            except Exception:  # noqa: BLE001 - the report goes out later, on a new association
                LOGGER.exception("storage commitment report for %s not prepared", assoc.calling_ae)
                return
            # Not waited for: see the module docstring.
            assoc.send_n_event_report(
                request.context_id,
                STORAGE_COMMITMENT_PUSH_MODEL,
                STORAGE_COMMITMENT_INSTANCE,
                event_type,
                information,
                outcome.delivered,
            )

        return NResponse(outcome.status, after=send_report)
