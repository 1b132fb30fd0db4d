"""What the fork server imports before it forks the DIMSE workers and the background process.

Importing here, once, lets every forked process share these modules' memory with the
fork server (see :func:`dicomhub.bootstrap.processes.worker_context`). ``gc.freeze()``
moves everything imported into the permanent generation: the collector then never
walks those objects, and its walks would otherwise write to (and so unshare) the
pages they live on.
"""

from __future__ import annotations

import gc

import dicomhub.bootstrap.processes
import dicomhub.dimse.server
import dicomhub.migrate.outbound

__all__: list[str] = []

# Referenced so that linters see the imports are wanted for their side effect.
_PRELOADED = (dicomhub.bootstrap.processes, dicomhub.dimse.server, dicomhub.migrate.outbound)

gc.freeze()
