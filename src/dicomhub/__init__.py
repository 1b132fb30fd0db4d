"""dicomhub: a DICOM archive and interoperability server."""

import sys

__version__ = "0.1.0"
__all__ = ["__version__"]

# pydicom imports GDCM's bindings (python-gdcm) as soon as they are installed, for a
# decoder plugin of its own that dicomhub never asks for; that maps about 25 MB of
# shared libraries into every process (the HTTP server, each DIMSE worker, the
# background process). dicomhub uses GDCM only as its fallback decoder, in a helper
# process of its own (dicomhub.codec.gdcm_plugin, which takes this entry out again).
# A None entry makes ``import gdcm`` fail fast with ImportError, which pydicom treats
# as "not installed". It has no effect where gdcm was imported before dicomhub.
sys.modules.setdefault("gdcm", None)  # type: ignore[arg-type]
