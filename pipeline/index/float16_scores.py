"""Inner products of questions with chosen rows of float16-stored exact vectors (index.vector_dtype float16).

Re-ranking scores k x rerank_factor candidate rows per question. numpy's float16 -> float32 cast runs at ~4 ns
an element on this CPU (scalar code), so casting the gathered rows cost 30x the scoring itself (12.7 ms vs
0.4 ms for 8 x 400 rows of 768, measured beside FAISS's float32 scoring; docs/scaling.md). This kernel widens
each row in registers with integer operations that vectorise instead: a float16's sign, exponent and mantissa
bits shifted into a float32's place give the same value times 2^-112 (for normal and subnormal halves alike),
and one multiplication by 2^112 (exact: a power of two) restores it. It is applied to each element, not to the
sum, so that no product falls into float32's subnormal range, where it would lose precision and run slowly.
Infinities and NaNs do not occur: the build refuses vectors that would not fit a float16.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # as exact_scan.py: reassociation, IEEE -inf kept
_HALF_BIAS_SCALE = np.float32(2.0 ** 112)  # 2^(127 - 15): float32's exponent bias over float16's


def float16_inner_products(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32[B, m] inner products of each question (float32[B, d]) with its m rows of `vectors` (float16[n, d],
    e.g. a memory map; `rows` int[B, m], -1 for an empty slot, which scores -inf)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    bits = np.ascontiguousarray(vectors).view(np.uint16)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    out = np.empty(rows.shape, dtype=np.float32)
    _scores(queries, bits, rows, out)
    return out


def compile_float16_scores() -> None:
    """Compile (or load from numba's disk cache) the kernel, so no JIT compile lands in a search call."""
    float16_inner_products(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float16), np.zeros((1, 1), np.int64))


@njit(fastmath=_FASTMATH, cache=True, nogil=True)
def _scores(queries, bits, rows, out):
    d = bits.shape[1]
    row = np.empty(d, np.float32)
    row_bits = row.view(np.int32)
    for b in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            i = rows[b, j]
            if i < 0:
                out[b, j] = -np.inf
                continue
            for t in range(d):
                h = np.int32(bits[i, t])
                row_bits[t] = ((h & 0x7FFF) << 13) | ((h & 0x8000) << 16)
            s = np.float32(0.0)
            for t in range(d):
                s += queries[b, t] * (row[t] * _HALF_BIAS_SCALE)
            out[b, j] = s
