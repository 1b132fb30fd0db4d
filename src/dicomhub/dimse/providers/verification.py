"""Verification SOP Class SCP (PS3.4 Annex A): C-ECHO."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Final

from dicomhub.dimse import messages as M
from dicomhub.dimse import status as S
from dicomhub.dimse.messages import Command
from dicomhub.dimse.pdu import ProtocolError
from dicomhub.dimse.providers.base import AcceptedContext, Provider

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association

__all__ = ["VERIFICATION_SOP_CLASS", "VerificationProvider"]

LOGGER = logging.getLogger("dicomhub.dimse")

VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"


class VerificationProvider(Provider):
    """Answers C-ECHO-RQ with success on a Verification context, 0x0122 on any other."""

    sop_classes = frozenset({VERIFICATION_SOP_CLASS})
    name: ClassVar[str] = "verification"

    def c_echo(
        self, assoc: Association, command: Command, context_id: int, context: AcceptedContext | None
    ) -> None:
        if command.has_data_set:
            raise ProtocolError("C-ECHO-RQ with a data set")
        sop_class = command.sop_class_uid or VERIFICATION_SOP_CLASS
        status = S.SUCCESS
        if context is None or context[0] != VERIFICATION_SOP_CLASS or sop_class != context[0]:
            status = S.SOP_CLASS_NOT_SUPPORTED
        assert command.message_id is not None
        assoc.send_message(
            context_id, M.encode_response(M.C_ECHO_RSP, command.message_id, sop_class, None, status)
        )
        assoc.echoes += 1
        LOGGER.debug("C-ECHO from %s: status 0x%04X", assoc.calling_ae, status)
        assoc.emit("echo", {"calling_ae_title": assoc.calling_ae, "status": status})
