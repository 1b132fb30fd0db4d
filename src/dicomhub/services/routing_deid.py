"""De-identification for routing: the start-time check of a rule's ``deidentify``
project, without side effects (a project is otherwise made on its first use, as for
a de-identifying C-MOVE destination; the check does not make it)."""

from __future__ import annotations

from collections.abc import Sequence

from dicomhub.deid import Options, ProjectKey, load_secret
from dicomhub.errors import InvalidRequest
from dicomhub.services.deidentify import DeidService, SecretChanged

__all__ = ["check_project"]


def check_project(deid: DeidService, project: str, options: Sequence[str]) -> None:
    """Whether ``project`` can de-identify with ``options`` now.

    Raises
    ------
    DeidentificationError
        An unknown option, or no secret configured (or one unreadable or too short).
    SecretChanged
        The project exists with another secret than the configured one.
    InvalidRequest
        A malformed project name.
    """
    Options.parse(options)
    if not project or len(project) > 64 or not project.isprintable():
        raise InvalidRequest("a project name has 1-64 printable characters")
    key = ProjectKey.derive(load_secret(deid.key_file, deid.environ), project)
    found = deid.repo.project(project)
    if found is not None and found[1] != key.fingerprint:
        raise SecretChanged(
            f"the de-identification secret is not the one project {project!r} was created with"
        )
