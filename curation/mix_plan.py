"""The sample order of a weighted mixture: which source, and which window of it, each sample reads.

Pure numpy, no files, so the 146M-sample GPT-3 plan is built chunk by chunk in bounded memory.

Interleaving: source i's k-th sample has the ideal position (k + 1/2) / n_i in [0, 1); samples are
ordered by that position, ties by source index (a stride schedule). After any prefix of t samples
every source holds within about 1.5 samples of n_i * t / N; Megatron's greedy largest-deficit
loop, which needs a compiled sequential helper, stays within about 1.2 on the same weights. Both
keep shares exact to O(1/t). Positions compare exactly in integers (N < 2^31 keeps the products
inside int64), so a sample's global rank is computed directly and chunks need no sort.

Windows: an epoch over a source visits its windows in a seeded pseudo-random permutation. The
permutation is a keyed Feistel network with cycle walking, evaluated per index, so no index array
of a source's size is ever materialised (CommonCrawl at GPT-3 scale has 200M windows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

import numpy as np

from curation.tokens_manifest import BadInput

MAX_SAMPLES = 1 << 31  # keeps the rank products (2k+1) * n_j inside int64
_FEISTEL_ROUNDS = 4  # Luby-Rackoff: four rounds of a pseudo-random function give a pseudo-random permutation
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser constants
_MIX2 = np.uint64(0x94D049BB133111EB)


def normalized_weights(weights: Mapping[str, float], where: str) -> dict[str, float]:
    """Weights scaled to sum to one (GPT-3's Table 2.2 sums to 1.01 by rounding)."""
    if not weights:
        raise BadInput(f"{where}: no sources; list at least one `sources.<name>.weight`")
    for name, weight in weights.items():
        if not isinstance(weight, int | float) or weight < 0 or weight != weight:
            raise BadInput(f"{where}: sources.{name}.weight={weight!r} must be a number >= 0")
    total = float(sum(weights.values()))
    if total <= 0:
        raise BadInput(f"{where}: all source weights are zero; give at least one source a positive weight")
    return {name: float(weight) / total for name, weight in weights.items()}


def allocate_samples(weights: np.ndarray, caps: np.ndarray, num_samples: int) -> np.ndarray:
    """Samples per source: proportional to weight, at most `caps`, summing to num_samples.

    A capped source's unmet share goes to the others in proportion to their weights; fractions are
    rounded by largest remainder (ties to the earlier source), so the result is deterministic.
    """
    counts = np.zeros(len(weights), dtype=np.int64)
    free = weights > 0
    remaining = num_samples
    while True:
        share = np.where(free, weights, 0.0)
        if share.sum() <= 0:
            raise BadInput(f"mix: {num_samples} samples exceed what the sources' max_epochs allow "
                           f"({int(caps[weights > 0].sum())}); lower mix.tokens or raise max_epochs")
        ideal = remaining * share / share.sum()
        over = free & (ideal > caps)
        if not over.any():
            break
        counts[over] = caps[over]
        remaining -= int(caps[over].sum())
        free &= ~over
    floor = np.floor(ideal).astype(np.int64)
    leftover = remaining - int(floor[free].sum())
    order = np.lexsort((np.arange(len(weights)), -(ideal - floor)))
    order = order[free[order]][:leftover]
    floor[order] += 1
    counts[free] = floor[free]
    return counts


def _ceil_div(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    return -((-a) // b)


def _count_before(counts: np.ndarray, numer: int, denom: int) -> np.ndarray:
    """Per source, how many of its samples have ideal position strictly below numer / denom."""
    return np.clip(_ceil_div(2 * numer * counts - denom, 2 * denom), 0, counts)


def _ranks(source: int, k: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Global position of source `source`'s samples k: k plus the samples of other sources ordered before."""
    n_i = counts[source]
    rank = k.copy()
    odd = 2 * k + 1
    for j, n_j in enumerate(counts):
        if j == source or n_j == 0:
            continue
        a = odd * n_j - n_i  # sample l of j precedes when (2l+1) n_i < (2k+1) n_j  (<= for j < source)
        before = a // (2 * n_i) + 1 if j < source else _ceil_div(a, 2 * n_i)
        rank += np.clip(before, 0, n_j)
    return rank


def interleave(counts: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (start, source ids, per-source sample numbers) for consecutive slices of the global order."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    num_chunks = max(1, -(-total // chunk))
    lo = _count_before(counts, 0, num_chunks)
    for c in range(num_chunks):
        hi = _count_before(counts, c + 1, num_chunks) if c + 1 < num_chunks else counts
        start = int(lo.sum())
        size = int(hi.sum()) - start
        sources = np.empty(size, dtype=np.int64)
        samples = np.empty(size, dtype=np.int64)
        for i in np.flatnonzero(hi > lo):
            k = np.arange(lo[i], hi[i], dtype=np.int64)
            where = _ranks(int(i), k, counts) - start
            sources[where] = i
            samples[where] = k
        yield start, sources, samples
        lo = hi


def _round_keys(seed: int, source: str, epoch: int) -> np.ndarray:
    material = hashlib.sha256(f"{seed}/{source}/{epoch}".encode()).digest()
    return np.frombuffer(material, dtype="<u8")[:_FEISTEL_ROUNDS].copy()


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _feistel(x: np.ndarray, half: int, keys: np.ndarray) -> np.ndarray:
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << shift) | right


def permute(index: np.ndarray, size: int, keys: np.ndarray) -> np.ndarray:
    """A keyed bijection of [0, size) evaluated at `index`: Feistel on 2h bits, cycle-walked into range.

    `keys` holds one key per round, shape (rounds,), or per round and element, shape (rounds, len(index)).
    """
    half = max(1, (int(size - 1).bit_length() + 1) // 2)
    x = _feistel(index.astype(np.uint64), half, keys)
    outside = np.flatnonzero(x >= size)
    while outside.size:  # the domain is < 4 * size, so a value leaves it after a few steps on average
        y = _feistel(x[outside], half, keys if keys.ndim == 1 else keys[:, outside])
        x[outside] = y
        outside = outside[y >= size]
    return x.astype(np.int64)


def window_indices(samples: np.ndarray, windows: int, seed: int, source: str) -> np.ndarray:
    """Window read by each of a source's sample numbers: epoch e = k // windows visits its own permutation."""
    if samples.size == 0:
        return samples.copy()
    epochs, offsets = np.divmod(samples, windows)
    first = int(epochs.min())
    table = np.stack([_round_keys(seed, source, e) for e in range(first, int(epochs.max()) + 1)], axis=1)
    return permute(offsets, windows, table[:, epochs - first])
