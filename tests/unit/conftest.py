from __future__ import annotations

from dicomhub.bootstrap import configure_pydicom

configure_pydicom()
