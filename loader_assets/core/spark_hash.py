"""Spark SQL's ``xxhash64()`` of strings, computed with pyarrow on the driver, so tracker rows can be
fingerprinted the way Spark fingerprints target rows without shipping them to the JVM (``fingerprint.py``).

Spark's ``xxhash64(col)`` is XXH64 with seed 42 over the UTF-8 bytes (``XXH64.hashUnsafeBytes``), returned as a
signed long: 32-byte stripes into four accumulators for strings of 32 bytes or more, then 8-byte words, one
4-byte word, single bytes, and the final avalanche. It is reproduced here bit for bit
(``loader_assets_tests`` compares it with Spark on strings of every length up to past two stripes, non-ASCII
ones included). One pass over a string, 8 bytes at a time: the fingerprint used to take three Murmur3 passes
(``hash(s)`` and ``hash(s, s)``), which cost benchmark P1's write about 0.2 s more at 10M rows.

Strings are hashed in groups of equal byte length, one vectorised step per 8-byte word (pyarrow kernels on
uint64, which wrap like Java's long arithmetic), so 100,000 paths take tens of milliseconds.
"""

import pyarrow as pa
import pyarrow.compute as pc

SPARK_HASH_SEED = 42
_U64 = pa.uint64()
_MASK = 2**64 - 1
_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5


def _u64(value: int) -> pa.Scalar:
    return pa.scalar(value & _MASK, _U64)


def _rotl(x: pa.Array, r: int) -> pa.Array:
    return pc.bit_wise_or(pc.shift_left(x, _u64(r)), pc.shift_right(x, _u64(64 - r)))


def _mul(x: pa.Array, prime: int) -> pa.Array:
    return pc.multiply(x, _u64(prime))


def _add(x: pa.Array, value: int | pa.Array) -> pa.Array:
    return pc.add(x, _u64(value) if isinstance(value, int) else value)


def _round(acc: pa.Array, lane: pa.Array) -> pa.Array:
    """XXH64's round: ``rotl(acc + lane * P2, 31) * P1``."""
    return _mul(_rotl(_add(acc, _mul(lane, _P2)), 31), _P1)


def _words(group: pa.Array, start: int, width: int, kind: pa.DataType) -> pa.Array:
    """Bytes ``start .. start + width`` of each (equal-length) string as one little-endian unsigned word."""
    piece = pc.binary_slice(group, start, start + width)  # rows x width contiguous bytes
    words = pa.Array.from_buffers(kind, len(piece), [None, piece.buffers()[2]], offset=piece.offset)
    return pc.cast(words, _U64)


def _hash_group(group: pa.Array, length: int, seed: int) -> pa.Array:
    n = len(group)
    offset = 0
    if length >= 32:
        lanes = [pa.array([(seed + _P1 + _P2) & _MASK] * n, _U64), pa.array([(seed + _P2) & _MASK] * n, _U64),
                 pa.array([seed & _MASK] * n, _U64), pa.array([(seed - _P1) & _MASK] * n, _U64)]
        while offset <= length - 32:
            lanes = [_round(lane, _words(group, offset + 8 * i, 8, _U64)) for i, lane in enumerate(lanes)]
            offset += 32
        h = _add(_add(_rotl(lanes[0], 1), _rotl(lanes[1], 7)), _add(_rotl(lanes[2], 12), _rotl(lanes[3], 18)))
        for lane in lanes:  # merge: h ^= round(0, lane); h = h * P1 + P4
            h = _add(_mul(pc.bit_wise_xor(h, _mul(_rotl(_mul(lane, _P2), 31), _P1)), _P1), _P4)
    else:
        h = pa.array([(seed + _P5) & _MASK] * n, _U64)
    h = _add(h, length)
    while offset <= length - 8:
        h = pc.bit_wise_xor(h, _mul(_rotl(_mul(_words(group, offset, 8, _U64), _P2), 31), _P1))
        h = _add(_mul(_rotl(h, 27), _P1), _P4)
        offset += 8
    if offset + 4 <= length:
        h = pc.bit_wise_xor(h, _mul(_words(group, offset, 4, pa.uint32()), _P1))
        h = _add(_mul(_rotl(h, 23), _P2), _P3)
        offset += 4
    while offset < length:
        h = pc.bit_wise_xor(h, _mul(_words(group, offset, 1, pa.uint8()), _P5))
        h = _mul(_rotl(h, 11), _P1)
        offset += 1
    h = _mul(pc.bit_wise_xor(h, pc.shift_right(h, _u64(33))), _P2)
    h = _mul(pc.bit_wise_xor(h, pc.shift_right(h, _u64(29))), _P3)
    return pc.bit_wise_xor(h, pc.shift_right(h, _u64(32)))


def spark_xxhash64(strings: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Spark's ``xxhash64(s)`` of each string, as int64 (Spark's signed long)."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.cast(pa.binary())
    if strings.null_count:
        raise ValueError("spark_xxhash64: null strings are not supported (Spark gives them the seed)")
    lengths = pc.binary_length(strings)
    positions = pa.array(range(len(strings)), pa.int64())
    parts_positions, parts_hashes = [], []
    for length in pc.unique(lengths).to_pylist():
        mask = pc.equal(lengths, length)
        parts_hashes.append(_hash_group(pc.filter(strings, mask), length, SPARK_HASH_SEED))
        parts_positions.append(pc.filter(positions, mask))
    if not parts_hashes:
        return pa.array([], pa.int64())
    order = pc.sort_indices(pa.concat_arrays(parts_positions))
    return pc.cast(pc.take(pa.concat_arrays(parts_hashes), order), pa.int64(), safe=False)


def halves(hashes: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The high half of each 64-bit hash as a signed 32-bit value and the low half as an unsigned one, both
    int64: Spark's ``shiftright(h, 32)`` and ``h & 0xFFFFFFFF``. Summed as longs they cannot overflow below
    2^31 values, where the 64-bit hashes themselves would."""
    unsigned = pc.cast(hashes, _U64, safe=False)
    high = pc.cast(pc.cast(pc.cast(pc.shift_right(unsigned, _u64(32)), pa.uint32()), pa.int32(), safe=False),
                   pa.int64())
    low = pc.cast(pc.bit_wise_and(unsigned, _u64(0xFFFFFFFF)), pa.int64())
    return high, low


def weighted_sums(groups: pa.Array | pa.ChunkedArray, values: pa.Array, weights: pa.Array) -> dict:
    """{group: sum of weight * value} in wrapping int64 arithmetic. Exact whenever the true sum fits in a long
    (wrapped intermediate results cancel out), which is when Spark's ``try_sum`` of the same values is not
    NULL; otherwise that side is NULL and the two cannot compare equal anyway."""
    products = pc.multiply(pc.cast(values, pa.int64()), pc.cast(weights, pa.int64()))
    table = pa.table({"group": groups, "value": products})
    summed = table.group_by("group").aggregate([("value", "sum")])
    return dict(zip(summed["group"].to_pylist(), summed["value_sum"].to_pylist(), strict=True))
