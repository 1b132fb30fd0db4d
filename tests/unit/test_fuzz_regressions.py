"""Regression tests for the crashes the fuzz targets in ``fuzz/`` found.

Each test feeds the input (or a minimal equivalent, built here rather than
committed as binary) to the real parser and checks the documented outcome.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomhub.config import load_settings
from dicomhub.errors import ConfigurationError


def test_config_file_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    # fuzz_config: tomllib decodes before parsing, so a latin-1 byte raised
    # UnicodeDecodeError out of load_settings instead of ConfigurationError.
    path = tmp_path / "dicomhub.toml"
    path.write_bytes(b'public_base_url = "https://pacs.example.org/dicomweb\xff"\n')
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        load_settings(config_file=path, environ={})
