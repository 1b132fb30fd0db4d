"""The HTTP status of a STOW-RS response from its per-instance outcomes (PS3.18 10.5.3)."""

from __future__ import annotations

import pytest

from dicomhub.errors import IndexUnavailable, InsufficientStorage, StorageError
from dicomhub.web.dicomweb.stow import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    InstanceOutcome,
    _http_status,
    failure_reason,
)


def stored() -> InstanceOutcome:
    return InstanceOutcome("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1", True)


def failed(reason: int, no_space: bool = False) -> InstanceOutcome:
    return InstanceOutcome("1.2.840.10008.5.1.4.1.1.2", "1.2.3.2", False, reason, no_space=no_space)


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ([stored(), stored()], 200),
        ([stored(), failed(OUT_OF_RESOURCES, no_space=True)], 202),
        ([failed(CANNOT_UNDERSTAND), failed(OUT_OF_RESOURCES)], 409),
        # Nothing stored only for want of resources: the same request may succeed later.
        ([failed(OUT_OF_RESOURCES, no_space=True), failed(OUT_OF_RESOURCES)], 507),
        ([failed(OUT_OF_RESOURCES), failed(OUT_OF_RESOURCES)], 503),
    ],
)
def test_http_status(outcomes: list[InstanceOutcome], status: int) -> None:
    assert _http_status(outcomes) == status


@pytest.mark.parametrize(
    "exc", [InsufficientStorage("full"), StorageError("down"), IndexUnavailable("gone")]
)
def test_resource_failures_are_out_of_resources(exc: Exception) -> None:
    assert failure_reason(exc) == OUT_OF_RESOURCES
