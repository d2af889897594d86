"""The one hash of a user id that both the storage buckets and the Bloom filter use: xxh3-128.

A chunk's ids are hashed once, in one pass (``user_hashes``); the low 64 bits pick the user's bucket
(``goalhorn.preferences.reader.bucket_of``), and both halves feed the Bloom filter's double hashing
(``goalhorn.preferences.bloom``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from xxhash import xxh3_128_digest, xxh3_128_intdigest

if TYPE_CHECKING:  # numpy only where chunks are hashed (the expander): a worker's bucket_of needs none of it
    import numpy as np
    import numpy.typing as npt

MASK64 = (1 << 64) - 1


def user_hash(user_id: bytes) -> tuple[int, int]:
    """``(low, high)`` 64-bit halves of the user id's xxh3-128."""
    digest = xxh3_128_intdigest(user_id)
    return digest & MASK64, digest >> 64


def user_hashes(user_ids: Sequence[bytes]) -> npt.NDArray[np.uint64]:
    """:func:`user_hash` of each id, as the rows of an ``(n, 2)`` array."""
    import numpy as np

    if not user_ids:
        return np.zeros((0, 2), dtype=np.uint64)
    digests = np.frombuffer(b"".join(map(xxh3_128_digest, user_ids)), dtype=">u8").reshape(-1, 2)
    return digests[:, ::-1].astype(np.uint64)  # the digest is big-endian: high half first
