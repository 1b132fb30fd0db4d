"""The Storage SCU of C-MOVE sub-operations: the requestor engine under its old names.

:class:`StoreAssociation` is :class:`dicomhub.dimse.requestor.Association`
(``open``, ``accepted``, ``send_c_store``, ``release``, ``abort``); the
acceptor's C-MOVE imports it from here.
"""

from __future__ import annotations

from dicomhub.dimse.requestor import Association as StoreAssociation
from dicomhub.dimse.requestor import AssociationAborted, AssociationRejected
from dicomhub.dimse.requestor import AssociationError as StoreAssociationError

__all__ = [
    "AssociationAborted",
    "AssociationRejected",
    "StoreAssociation",
    "StoreAssociationError",
]
