"""Transfer syntaxes: the catalogue, transcoding and frame access (issue 4).

Everything here streams: objects are read and written one frame at a time.
"""

from __future__ import annotations

from .equivalence import content_difference, same_content
from .frames import DecodedFrame, DecodeReport, check_decodable, decode_frame, decode_report, read_frames
from .syntaxes import (
    TransferSyntax,
    can_decode,
    can_encode,
    codec_table_markdown,
    lossless_targets,
    transfer_syntax,
    transfer_syntaxes,
)
from .transcode import TranscodeInfo, transcode_bytes, transcode_file

__all__ = [
    "DecodeReport",
    "DecodedFrame",
    "TranscodeInfo",
    "TransferSyntax",
    "can_decode",
    "can_encode",
    "check_decodable",
    "codec_table_markdown",
    "content_difference",
    "decode_frame",
    "decode_report",
    "lossless_targets",
    "read_frames",
    "same_content",
    "transcode_bytes",
    "transcode_file",
    "transfer_syntax",
    "transfer_syntaxes",
]
