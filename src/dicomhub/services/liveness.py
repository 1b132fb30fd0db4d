"""Whether a process of this host still runs, for claims that name their process.

Routing items and migration jobs are claimed by an owner that names a process id, so that
a restarted node can take over at once the claims of a process that was killed instead
of waiting out their lease. A process killed with its parent (``kill -9`` of the whole
group) stays a zombie until whatever adopted it reaps it; containers whose first process
never reaps (Docker without ``--init``) keep it forever. ``kill(pid, 0)`` succeeds on a
zombie, so the state in ``/proc`` decides where there is one.
"""

from __future__ import annotations

import os

__all__ = ["process_alive"]


def process_alive(pid: int) -> bool:
    """True when ``pid`` is a running process (of any user); False when it is gone or a
    zombie (it has exited and will never release anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists; its state below
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True  # no /proc (not Linux) or no access: kill() found it
    # The state follows the command name, which is in parentheses and may hold spaces.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")
