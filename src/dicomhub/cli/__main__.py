"""``python -m dicomhub.cli``: the same as the ``dicomhub`` console script."""

import signal
import sys

from dicomhub.cli import main

signal.signal(signal.SIGPIPE, signal.SIG_DFL)
sys.exit(main())
