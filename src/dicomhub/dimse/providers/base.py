"""The one interface every service class provider implements on the acceptor side.

A provider translates the DIMSE messages of one service class (PS3.4) into
calls on the archive and back: :class:`~dicomhub.dimse.association.Association`
looks up the provider for a message in ONE table keyed by SOP class (the
presentation context's abstract syntax) and calls the method for the
message's command.  A provider implements only the operations its service
class defines; the defaults here answer what PS3.7 says an SCP answers for
an operation it does not support:

* DIMSE-C (``c_*``): *Refused: SOP Class not supported* (0x0122) in the
  response to the request (PS3.7 C.5);
* DIMSE-N (``n_*``): *Unrecognized operation* (0x0211, PS3.7 C.4.2).

Adding a service class is one module in this package (a subclass of
:class:`Provider`) and one line in
:func:`dicomhub.dimse.association.default_providers`.

References
----------
PS3.7 Sections 9 (DIMSE-C), 10 (DIMSE-N), Annex C (status encoding).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from dicomhub.dimse import status as S
from dicomhub.dimse.messages import Command, NRequest, NResponse

if TYPE_CHECKING:
    from dicomhub.dimse.association import Association

__all__ = ["AcceptedContext", "Provider"]

_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_VR_LE = "1.2.840.10008.1.2"


class AcceptedContext(NamedTuple):
    """An accepted presentation context and the provider its abstract syntax maps to."""

    abstract_syntax: str
    transfer_syntax: str
    provider: Provider | None
    as_scu: bool = False
    as_scp: bool = True


class Provider:
    """A service class on the acceptor side: SOP classes in, per-message methods.

    Attributes
    ----------
    sop_classes : collection of str
        The SOP classes (abstract syntaxes) this provider serves; the
        association's table maps each to this provider.
    transfer_syntaxes : sequence of str
        Accepted for those SOP classes when the configuration does not list
        them already (providers registered beyond the built-in ones).
    name : str
        For logs.
    """

    sop_classes: Collection[str] = ()
    transfer_syntaxes: Sequence[str] = (_EXPLICIT_VR_LE, _IMPLICIT_VR_LE)
    name: ClassVar[str] = "provider"

    def serves(self, abstract_syntax: str, sop_class_uid: str) -> bool:
        """Whether a DIMSE-N request naming `sop_class_uid` belongs on a context of `abstract_syntax`.

        The SOP class itself by default; a meta SOP class provider (PS3.4
        H.3.1: print management) answers for the classes the meta class groups.
        """
        return sop_class_uid == abstract_syntax

    # -- DIMSE-C -------------------------------------------------------------

    def c_echo(
        self, assoc: Association, command: Command, context_id: int, context: AcceptedContext | None
    ) -> None:
        """C-ECHO-RQ (PS3.7 9.1.5)."""
        assoc.refuse(command, context_id, S.SOP_CLASS_NOT_SUPPORTED, "no C-ECHO for this SOP class")

    def c_store(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        """C-STORE-RQ (PS3.7 9.1.1); the data set is in `fragments` or the association's spool file."""
        assoc.discard_spool()
        assoc.refuse(command, context_id, S.SOP_CLASS_NOT_SUPPORTED, "no C-STORE for this SOP class")

    def c_find(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        """C-FIND-RQ (PS3.7 9.1.2); served after the PDU that completed it, C-CANCEL possible."""
        assoc.refuse(command, context_id, S.SOP_CLASS_NOT_SUPPORTED, "no C-FIND for this SOP class")

    def c_get(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        """C-GET-RQ (PS3.7 9.1.3)."""
        assoc.refuse(command, context_id, S.SOP_CLASS_NOT_SUPPORTED, "no C-GET for this SOP class")

    def c_move(
        self,
        assoc: Association,
        command: Command,
        context_id: int,
        context: AcceptedContext | None,
        fragments: list[memoryview],
    ) -> None:
        """C-MOVE-RQ (PS3.7 9.1.4)."""
        assoc.refuse(command, context_id, S.SOP_CLASS_NOT_SUPPORTED, "no C-MOVE for this SOP class")

    # -- DIMSE-N -------------------------------------------------------------

    def n_event_report(self, assoc: Association, request: NRequest) -> NResponse:
        """N-EVENT-REPORT-RQ received: the peer reports an event to us (PS3.7 10.1.1)."""
        return NResponse(S.UNRECOGNIZED_OPERATION)

    def n_get(self, assoc: Association, request: NRequest) -> NResponse:
        """N-GET-RQ (PS3.7 10.1.2): the attributes in ``request.attribute_identifier_list`` (None: all)."""
        return NResponse(S.UNRECOGNIZED_OPERATION)

    def n_set(self, assoc: Association, request: NRequest) -> NResponse:
        """N-SET-RQ (PS3.7 10.1.3): ``request.dataset`` is the Modification List."""
        return NResponse(S.UNRECOGNIZED_OPERATION)

    def n_action(self, assoc: Association, request: NRequest) -> NResponse:
        """N-ACTION-RQ (PS3.7 10.1.4)."""
        return NResponse(S.UNRECOGNIZED_OPERATION)

    def n_create(self, assoc: Association, request: NRequest) -> NResponse:
        """N-CREATE-RQ (PS3.7 10.1.5); ``request.sop_instance_uid`` None: the SCP assigns one."""
        return NResponse(S.UNRECOGNIZED_OPERATION)

    def n_delete(self, assoc: Association, request: NRequest) -> NResponse:
        """N-DELETE-RQ (PS3.7 10.1.6)."""
        return NResponse(S.UNRECOGNIZED_OPERATION)
