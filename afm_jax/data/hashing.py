"""Stable 64-bit hashes in numpy: the splitmix64 finalizer and the hashed-id rule of `hash_buckets`.

A hashed field maps a value string to the id

    id = 1 + h(field, value) mod (N - 1),   h(field, value) = mix64(FNV-1a-64(utf8(field) + b"\\x1f" + utf8(value)))

where N is the field's `hash_buckets` (table rows, id 0 included), FNV-1a-64 starts from the
offset basis 0xCBF29CE484222325 and multiplies by the prime 0x100000001B3 (mod 2**64) after
xor-ing each byte, and mix64 is splitmix64's finalizer (below), which spreads FNV's weak low bits
over the whole word before the modulo. Ids are 1..N-1: a present value never gets 0, which keeps
its meaning (missing). The rule depends on nothing but the bytes, so every process, platform and
run agrees (Python's salted `hash()` would not). `hash_id` is the one-value reference in plain
Python; `hash_ids` computes the same for a whole column, byte position by byte position over all
values at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.errors import DataError

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
FIELD_SEPARATOR = b"\x1f"  # between the field name and the value: ("ab", "c") and ("a", "bc") differ
HASH_RULE = "1 + mix64(fnv1a64(utf8(field) + 0x1f + utf8(value))) mod (buckets - 1)"
_MASK64 = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _mix64_int(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _fnv1a64(data: bytes, h: int = FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & _MASK64
    return h


def check_buckets(buckets: Any, field: str | None = None) -> int:
    """`buckets` as an int >= 2 (id 0 plus at least one hashed id), else DataError."""
    if isinstance(buckets, bool) or not isinstance(buckets, (int, np.integer)) or buckets < 2 \
            or buckets > 2 ** 31 - 1:
        raise DataError(f"hash_buckets must be an integer in 2..2**31-1 (id 0 plus the hashed ids), "
                        f"got {buckets!r}", field=field)
    return int(buckets)


def hash_id(field: str, value: str, buckets: int) -> int:
    """The id of one value (plain Python reference of `hash_ids`)."""
    h = _fnv1a64(value.encode("utf-8"), _fnv1a64(field.encode("utf-8") + FIELD_SEPARATOR))
    return 1 + _mix64_int(h) % (check_buckets(buckets, field) - 1)


def hash_ids(field: str, values: Any, buckets: int) -> np.ndarray:
    """Ids int32 [N] of `values` (strings; None = missing -> 0) under the rule in the module
    docstring. Vectorized: one numpy pass per byte position, over the values that long."""
    buckets = check_buckets(buckets, field)
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not isinstance(arr, pa.Array):
        arr = pa.array(list(arr) if not isinstance(arr, np.ndarray) else arr.tolist(), pa.string())
    if not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.large_string())
    n = len(arr)
    out = np.zeros(n, dtype=np.int32)
    if n == 0:
        return out
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: the values still going are a prefix
    starts, lengths = starts[order], lengths[order]
    h = np.full(n, _fnv1a64(field.encode("utf-8") + FIELD_SEPARATOR), dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    active = np.searchsorted(-lengths, -np.arange(int(lengths[0])), side="left")  # values longer than k
    with np.errstate(over="ignore"):
        for k, m in enumerate(active):
            h[:m] = (h[:m] ^ data[starts[:m] + k].astype(np.uint64)) * prime
    ids = (mix64(h) % np.uint64(buckets - 1)).astype(np.int64) + 1
    out[order] = ids.astype(np.int32)
    out[~valid] = 0
    return out
