"""The one store path: C-STORE, STOW-RS, ``dicomhub import``, migration, de-identification.

:class:`IngestService` (:mod:`~dicomhub.services.ingest.service`) is the entry
every source calls; :mod:`~dicomhub.services.ingest.steps` holds the steps all
its entries share, :mod:`~dicomhub.services.ingest.batch` the path of objects
acknowledged together.
"""

from dicomhub.model.ingest import StoreOutcome, StoreResult
from dicomhub.model.policy import DuplicatePolicy
from dicomhub.services.ingest.service import IngestService

__all__ = ["DuplicatePolicy", "IngestService", "StoreOutcome", "StoreResult"]
