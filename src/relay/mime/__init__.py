"""Byte-exact header operations on raw messages (no re-serialisation)."""

from .headers import bare_cr_in_header, header_values, remove_fields, split_header_block
from .mandrill_headers import PRIVATE_HEADERS, PRIVATE_PREFIXES, extract_metadata
from .rewrite import rewrite_headers
from .sender import present_sender

__all__ = [
    "PRIVATE_HEADERS",
    "PRIVATE_PREFIXES",
    "bare_cr_in_header",
    "extract_metadata",
    "header_values",
    "present_sender",
    "remove_fields",
    "rewrite_headers",
    "split_header_block",
]
