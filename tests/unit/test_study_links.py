"""The rules that link a stored study to its order (model.links)."""

from __future__ import annotations

from dicomhub.model.links import MatchedBy, OrderKeys, StudyKeys, match_order

A1 = OrderKeys(1, "A1", frozenset({"RP1"}), frozenset({"1.2.3"}))
A2 = OrderKeys(2, "A2", frozenset({"RP2", "RP1X"}), frozenset({"1.2.4"}))
A3 = OrderKeys(3, "A3", frozenset({"RP2"}), frozenset())


def test_accession_number_wins_over_the_other_keys() -> None:
    study = StudyKeys("1.2.4", accession_number="A1", requested_procedure_id="RP2")
    assert match_order(study, [A1, A2, A3]) == (A1, MatchedBy.ACCESSION_NUMBER)


def test_requested_procedure_id_when_the_accession_number_names_no_order() -> None:
    study = StudyKeys("9.9", accession_number="UNKNOWN", requested_procedure_id="RP1X")
    assert match_order(study, [A1, A2, A3]) == (A2, MatchedBy.REQUESTED_PROCEDURE_ID)


def test_a_procedure_id_two_orders_share_matches_none_and_does_not_fall_through() -> None:
    # RP2 is in A2 and A3; the study's UID would name A2, but the ambiguity stops there.
    study = StudyKeys("1.2.4", requested_procedure_id="RP2")
    assert match_order(study, [A1, A2, A3]) is None


def test_study_instance_uid_last() -> None:
    assert match_order(StudyKeys("1.2.3"), [A1, A2, A3]) == (A1, MatchedBy.STUDY_INSTANCE_UID)


def test_nothing_matches() -> None:
    assert match_order(StudyKeys("7.7", accession_number="B", requested_procedure_id="X"), [A1, A2]) is None
    assert match_order(StudyKeys("1.2.3"), []) is None


def test_empty_keys_never_match_empty_values() -> None:
    blank = OrderKeys(9, "", frozenset({""}), frozenset())
    assert match_order(StudyKeys("5.5"), [blank]) is None


def test_the_same_order_found_twice_is_one_match() -> None:
    assert match_order(StudyKeys("1.2.3"), [A1, A1]) == (A1, MatchedBy.STUDY_INSTANCE_UID)
