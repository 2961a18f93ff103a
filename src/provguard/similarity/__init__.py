"""Profile similarity: handle normalisation, picture hashing, and the profile-match scan.

Pure functions over plain values, numpy arrays and pyarrow tables; no file or database I/O.
"""

from provguard.similarity.handles import (
    V1_STEPS,
    HandleStep,
    collapse_whitespace,
    drop_format_characters,
    nfkc_casefold,
    normalize_handle,
    normalize_handles,
)
from provguard.similarity.pictures import (
    PDQ_BYTES,
    decode_image,
    hamming,
    hamming_rows,
    pack_hashes,
    pdq_hash,
)
from provguard.similarity.scan import SCAN_SCHEMA, scan_profiles

__all__ = [
    "PDQ_BYTES",
    "SCAN_SCHEMA",
    "V1_STEPS",
    "HandleStep",
    "collapse_whitespace",
    "decode_image",
    "drop_format_characters",
    "hamming",
    "hamming_rows",
    "nfkc_casefold",
    "normalize_handle",
    "normalize_handles",
    "pack_hashes",
    "pdq_hash",
    "scan_profiles",
]
