"""Which transfer syntax a storage context is accepted in: the requestor's compressed
first choice, otherwise our order among the uncompressed syntaxes."""

from __future__ import annotations

from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicomhub.dimse.acse import _prefer_requestor_syntax, acceptor_contexts
from dicomhub.dimse.contexts import STORAGE_SOP_CLASSES, STORAGE_TRANSFER_SYNTAXES
from dicomhub.dimse.requests import AssociationConfig

CT = "1.2.840.10008.5.1.4.1.1.2"
ELE, ILE, EBE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
J2K, JLS = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"
CONFIG = AssociationConfig(
    ae_title="DICOMHUB", storage_contexts={sop: STORAGE_TRANSFER_SYNTAXES for sop in STORAGE_SOP_CLASSES}
)


def accepted(*proposals: list[str]) -> list[str]:
    rq = []
    for i, syntaxes in enumerate(proposals):
        cx = PresentationContext()
        cx.context_id = 2 * i + 1
        cx.abstract_syntax = CT
        cx.transfer_syntax = syntaxes
        rq.append(cx)
    results, _roles = negotiate_as_acceptor(rq, acceptor_contexts(CONFIG), {})
    _prefer_requestor_syntax(results, rq, CONFIG)
    return [str(r.transfer_syntax[0]) for r in results]


def test_a_compressed_first_choice_of_the_requestor_is_taken() -> None:
    assert accepted([J2K, ELE, ILE]) == [J2K]
    assert accepted([JLS, J2K, ELE]) == [JLS]


def test_uncompressed_proposals_keep_our_order() -> None:
    # DCMTK's storescu: [explicit] and [big endian, implicit] as two contexts.
    assert accepted([ELE], [EBE, ILE]) == [ELE, ILE]
    assert accepted([ELE, J2K]) == [ELE]
    assert accepted([ILE, ELE]) == [ELE]
