"""A store that found nothing under its UID indexes it without looking again
(``IndexRepository.add_instance(absent=True)``): a row another writer stored since
is still found, by the unique key, and the answer is as if it had looked."""

from __future__ import annotations

from sqlalchemy import text

from dicomhub.index.engine import connect_engine, migrate
from dicomhub.index.repository import AddResult, IndexRepository
from dicomhub.model.extract import extract_header
from tests import datagen


class _Blob:
    def __init__(self, key: str) -> None:
        self.key = key
        self.size = 1
        self.sha256 = "0" * 64


def test_a_row_stored_since_the_store_looked_is_found(index_url: str) -> None:
    engine = connect_engine(index_url)
    try:
        migrate(engine)
        repo = IndexRepository(engine)
        ds = datagen.make_dataset(
            sop_uid=datagen.uid(), study_uid=datagen.uid(), series_uid=datagen.uid(), patient_id="P1"
        )
        header = extract_header(ds)

        first = repo.add_instance(header, _Blob("first"), "content", None, False, absent=True)
        # As if another association stored the UID between this store's read and its transaction.
        again = repo.add_instance(header, _Blob("again"), "content", None, False, absent=True)
        replaced = repo.add_instance(header, _Blob("other"), "other content", None, True, absent=True)

        assert first.result is AddResult.CREATED
        assert again.result is AddResult.EXISTS
        assert again.existing is not None and again.existing.blob_key == "first"
        assert replaced.result is AddResult.REPLACED and replaced.replaced_blob_key == "first"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT blob_key FROM instance")).scalars().all() == ["other"]
            assert conn.execute(text("SELECT number_of_instances FROM series")).scalar() == 1
            assert conn.execute(text("SELECT number_of_instances FROM study")).scalar() == 1
    finally:
        engine.dispose()
