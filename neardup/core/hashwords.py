"""Hashes as rows of 64-bit words, most significant first: the layout the search, the store's
key reader and the caches share. A 64-bit hash is one word; a 256-bit hash four.

The store's keys are lowercase hex text; decoding them one by one with int(key, 16) costs about a
second per million, so they are checked and decoded as numpy arrays of digits.
"""

from __future__ import annotations

import numpy as np

from .hashing import Hash


def hex_keys_to_words(keys: list[bytes], bits: int) -> np.ndarray:
    """Decode fixed-width hex keys into a (count, words) uint64 array, most significant word first.

    Vectorised: numpy checks the digits and bytes.fromhex decodes them all in one call, so a million
    keys take tens of milliseconds instead of a second of int(key, 16).
    """
    width = (bits + 3) // 4
    words = (bits + 63) // 64
    if not keys:
        return np.zeros((0, words), dtype=np.uint64)
    raw = np.frombuffer(b"".join(keys), dtype=np.uint8)
    if raw.size != len(keys) * width:
        raise ValueError(f"hash keys must be {width} hex digits each")
    digits = raw.reshape(len(keys), width)
    if (_HEX_VALUES[digits] > 15).any():
        raise ValueError("a hash key is not lowercase hex")
    return _digits_to_words(digits, bits)


def _digits_to_words(digits: np.ndarray, bits: int) -> np.ndarray:
    """(count, width) checked lowercase hex digits -> (count, words) uint64."""
    count, width = digits.shape
    words = (bits + 63) // 64
    if width != words * 16:  # left-pad each key to whole 64-bit words
        padded = np.full((count, words * 16), ord("0"), dtype=np.uint8)
        padded[:, words * 16 - width:] = digits
        digits = padded
    as_bytes = bytes.fromhex(np.ascontiguousarray(digits).tobytes().decode("ascii"))
    return np.frombuffer(as_bytes, dtype=">u8").astype(np.uint64).reshape(count, words)


def hash_to_words(value: Hash) -> np.ndarray:
    """The same word layout as hex_keys_to_words, for one query hash."""
    words = (value.bits + 63) // 64
    return np.array(
        [(value.value >> (64 * (words - 1 - i))) & 0xFFFF_FFFF_FFFF_FFFF for i in range(words)],
        dtype=np.uint64,
    )


def words_to_hex(row: np.ndarray, bits: int) -> str:
    value = 0
    for word in row:
        value = (value << 64) | int(word)
    return format(value, f"0{(bits + 3) // 4}x")


_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
_HEX_VALUES[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10)
_HEX_VALUES[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16)


def decode_joined_keys(joined: bytes, rows: int, width: int, bits: int) -> np.ndarray | None:
    """Keys joined by commas -> sorted distinct words, or None if any key is not `width` lowercase
    hex digits. If the text has rows * (width + 1) - 1 bytes, a comma at every (width + 1)th place
    and hex digits everywhere else, then it holds exactly `rows` keys of `width` hex digits: any
    other key would put a comma or a non-hex byte where a digit must be."""
    if len(joined) != rows * (width + 1) - 1:
        return None
    raw = np.frombuffer(joined + b",", dtype=np.uint8).reshape(rows, width + 1)
    if not (raw[:, width] == ord(",")).all():
        return None
    digits = raw[:, :width]
    if not (_HEX_VALUES[digits] <= 15).all():
        return None
    return sort_distinct(_digits_to_words(digits, bits))


def rows_increasing(matrix: np.ndarray) -> bool:
    """Whether the rows are in strictly ascending order (most significant word first)."""
    if matrix.shape[0] < 2:
        return True
    if matrix.shape[1] == 1:
        column = matrix[:, 0]
        return bool((column[1:] > column[:-1]).all())
    greater = np.zeros(matrix.shape[0] - 1, dtype=bool)
    decided = np.zeros(matrix.shape[0] - 1, dtype=bool)
    for word in range(matrix.shape[1]):
        after, before = matrix[1:, word], matrix[:-1, word]
        greater |= ~decided & (after > before)
        decided |= after != before
    return bool(greater.all())


def sort_distinct(matrix: np.ndarray) -> np.ndarray:
    """Rows sorted ascending, each once (a hash stored under a text key and a bytes key)."""
    if rows_increasing(matrix):
        return matrix
    if matrix.shape[1] == 1:
        column = np.sort(matrix[:, 0])
        keep = np.ones(column.size, dtype=bool)
        keep[1:] = column[1:] != column[:-1]
        return column[keep].reshape(-1, 1)
    order = np.lexsort(matrix.T[::-1])
    ordered = matrix[order]
    keep = np.ones(ordered.shape[0], dtype=bool)
    keep[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    return np.ascontiguousarray(ordered[keep])
