"""Spark SQL's ``hash()`` of strings, computed with pyarrow on the driver, so tracker rows can be
fingerprinted the way Spark fingerprints target rows without shipping them to the JVM
(``checks._batch_fingerprints``).

Spark's ``hash(col)`` is Murmur3 x86_32 with seed 42 over the UTF-8 bytes (``Murmur3_x86_32.hashUnsafeBytes``).
It differs from the reference Murmur3 in the tail: each of the last ``len % 4`` bytes is mixed on its own as a
sign-extended int, instead of being packed into one word. ``hash(a, b)`` hashes ``b`` with the hash of ``a``
as its seed. Both are reproduced here bit for bit (``loader_assets_tests`` compares them with Spark on strings
of every tail length, non-ASCII ones included).

Strings are hashed in groups of equal byte length, one vectorised step per 4-byte word (pyarrow kernels on
uint32, which wrap like Java's int arithmetic), so 100,000 paths take tens of milliseconds.
"""

import pyarrow as pa
import pyarrow.compute as pc

SPARK_HASH_SEED = 42
_U32 = pa.uint32()


def _u32(value: int) -> pa.Scalar:
    return pa.scalar(value, _U32)


def _rotl(x: pa.Array, r: int) -> pa.Array:
    return pc.bit_wise_or(pc.shift_left(x, _u32(r)), pc.shift_right(x, _u32(32 - r)))


def _mix_k1(k1: pa.Array) -> pa.Array:
    return pc.multiply(_rotl(pc.multiply(k1, _u32(0xCC9E2D51)), 15), _u32(0x1B873593))


def _mix_h1(h1: pa.Array, k1: pa.Array) -> pa.Array:
    return pc.add(pc.multiply(_rotl(pc.bit_wise_xor(h1, k1), 13), _u32(5)), _u32(0xE6546B64))


def _fmix(h1: pa.Array, length: int) -> pa.Array:
    h1 = pc.bit_wise_xor(h1, _u32(length))
    h1 = pc.bit_wise_xor(h1, pc.shift_right(h1, _u32(16)))
    h1 = pc.multiply(h1, _u32(0x85EBCA6B))
    h1 = pc.bit_wise_xor(h1, pc.shift_right(h1, _u32(13)))
    h1 = pc.multiply(h1, _u32(0xC2B2AE35))
    return pc.bit_wise_xor(h1, pc.shift_right(h1, _u32(16)))


def spark_hash(strings: pa.Array | pa.ChunkedArray, seeds: pa.Array | None = None) -> pa.Array:
    """Spark's ``hash(s)`` of each string as int64 (the signed int32 result). With ``seeds`` (int64, as this
    function returns), element i is hashed with seeds[i]: ``spark_hash(s, spark_hash(s))`` is ``hash(s, s)``."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.cast(pa.binary())
    if strings.null_count:
        raise ValueError("spark_hash: null strings are not supported (Spark skips them)")
    n = len(strings)
    if seeds is None:
        seeds = pa.array([SPARK_HASH_SEED] * n, pa.int64())
    seeds = pc.cast(pc.cast(seeds, pa.int32(), safe=False), _U32, safe=False)
    lengths = pc.binary_length(strings)
    positions = pa.array(range(n), pa.int64())
    parts_positions, parts_hashes = [], []
    for length in pc.unique(lengths).to_pylist():
        mask = pc.equal(lengths, length)
        group = pc.filter(strings, mask)
        h1 = pc.filter(seeds, mask)
        aligned = length - length % 4
        for j in range(0, aligned, 4):
            piece = pc.binary_slice(group, j, j + 4)  # rows x 4 contiguous bytes: read them as little-endian words
            word = pa.Array.from_buffers(_U32, len(piece), [None, piece.buffers()[2]], offset=piece.offset)
            h1 = _mix_h1(h1, _mix_k1(word))
        for i in range(aligned, length):  # Spark's legacy tail: one sign-extended byte at a time
            piece = pc.binary_slice(group, i, i + 1)
            signed = pa.Array.from_buffers(pa.int8(), len(piece), [None, piece.buffers()[2]], offset=piece.offset)
            h1 = _mix_h1(h1, _mix_k1(pc.cast(pc.cast(signed, pa.int32()), _U32, safe=False)))
        parts_hashes.append(_fmix(h1, length))
        parts_positions.append(pc.filter(positions, mask))
    if not parts_hashes:
        return pa.array([], pa.int64())
    order = pc.sort_indices(pa.concat_arrays(parts_positions))
    hashes = pc.take(pa.concat_arrays(parts_hashes), order)
    return pc.cast(pc.cast(hashes, pa.int32(), safe=False), pa.int64())


def weighted_sums(groups: pa.Array | pa.ChunkedArray, values: pa.Array, weights: pa.Array) -> dict:
    """{group: sum of weight * value} in wrapping int64 arithmetic. Exact whenever the true sum fits in a long
    (wrapped intermediate results cancel out), which is when Spark's ``try_sum`` of the same values is not
    NULL; otherwise that side is NULL and the two cannot compare equal anyway."""
    products = pc.multiply(pc.cast(values, pa.int64()), pc.cast(weights, pa.int64()))
    table = pa.table({"group": groups, "value": products})
    summed = table.group_by("group").aggregate([("value", "sum")])
    return dict(zip(summed["group"].to_pylist(), summed["value_sum"].to_pylist(), strict=True))
