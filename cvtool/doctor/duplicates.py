"""Exact and near-duplicate images, grouped, within a split and across splits (leakage).

Two images are linked when their files are byte-identical (SHA-256), or when their 64-bit
perceptual hashes differ in at most `distance` bits (Hamming distance, default 8) and their 16x16
colour thumbnails correlate at `MIN_CORRELATION` (0.98) or more. Linked images form groups
(connected components: A~B and B~C put A, B, C together). Measured on generated 64 px images:
re-encoded JPEG (quality 50-80) and resized copies (0.6x-1.5x) stay within 6 bits and correlate
above 0.998; unrelated images were 10 bits or more apart (closest of 500,000 pairs) and correlate
below 0.82. The correlation keeps tiny, alike images (8x8 digits) from chaining into one group.
Every pair of hashes is compared: about a second per 10,000 images, growing with the square.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvtool.doctor.scan import ImageFacts

DEFAULT_DISTANCE = 8
MIN_CORRELATION = 0.98
SPLIT_ORDER = ("test", "val", "train")  # which copy of a leaked image is kept: the held-out one
_BYTE_BITS = np.asarray([bin(i).count("1") for i in range(256)], np.uint8)


@dataclass(frozen=True)
class DuplicateGroup:
    members: list[int]  # indices into the scan's facts, in scan order
    exact: bool  # every member is byte-identical
    distance: int  # the largest pHash distance among the group's links
    splits: list[str]  # the splits the members come from, in first-seen order

    @property
    def leaks(self) -> bool:
        """Members sit in more than one split: a validation or test score is inflated by it."""
        return len(self.splits) > 1


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element (numpy's bitwise_count where it exists)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    return _BYTE_BITS[values.view(np.uint8).reshape(*values.shape, 8)].sum(axis=-1)


def near_pairs(hashes: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, bits) of every pair i < j whose hashes differ in at most `distance` bits."""
    count = len(hashes)
    rows = max(1, (1 << 22) // max(count, 1))  # about 32 MB of XORs per block
    found_i, found_j, found_d = [], [], []
    for start in range(0, count, rows):
        block = hashes[start:start + rows]
        bits = popcount(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(bits <= distance)
        keep = j > i + start
        found_i.append(i[keep] + start)
        found_j.append(j[keep])
        found_d.append(bits[i[keep], j[keep]])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d).astype(np.int64)


def correlation(facts: list[ImageFacts], first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson correlation of the thumbnails of each pair (0 where one image is constant)."""
    if len(first) == 0:
        return np.zeros(0)
    thumbs = np.stack([f.thumb.reshape(-1) for f in facts]).astype(np.float32)
    thumbs -= thumbs.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(thumbs, axis=1, keepdims=True)
    thumbs /= np.where(norms > 0, norms, np.inf)
    return (thumbs[first] * thumbs[second]).sum(axis=1)


def find_duplicates(facts: list[ImageFacts], distance: int = DEFAULT_DISTANCE) -> list[DuplicateGroup]:
    """Groups of two or more linked images; leaking groups first, then by size."""
    parent = list(range(len(facts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    link_bits: dict[int, int] = {}
    first_of: dict[str, int] = {}
    for index, fact in enumerate(facts):
        if fact.digest in first_of:
            parent[root(index)] = root(first_of[fact.digest])
        first_of.setdefault(fact.digest, index)
    hashes = np.asarray([f.phash for f in facts], np.uint64)
    first, second, found = near_pairs(hashes, distance)
    alike = correlation(facts, first, second) >= MIN_CORRELATION
    for i, j, bits in zip(first[alike], second[alike], found[alike], strict=True):
        a, b = root(int(i)), root(int(j))
        top = max(link_bits.get(a, 0), link_bits.get(b, 0), int(bits))
        parent[a] = b
        link_bits[b] = top
    members: dict[int, list[int]] = {}
    for index in range(len(facts)):
        members.setdefault(root(index), []).append(index)
    groups = [_group(facts, group, link_bits.get(key, 0)) for key, group in members.items() if len(group) > 1]
    return sorted(groups, key=lambda g: (not g.leaks, -len(g.members), g.members[0]))


def _group(facts: list[ImageFacts], members: list[int], bits: int) -> DuplicateGroup:
    exact = len({facts[i].digest for i in members}) == 1
    splits = list(dict.fromkeys(facts[i].split for i in members))
    return DuplicateGroup(members, exact, 0 if exact else bits, splits)


def to_exclude(facts: list[ImageFacts], groups: list[DuplicateGroup]) -> list[str]:
    """Images `--fix` leaves out: per group one copy is kept, from the most held-out split
    (test, then val, then train); test images are never excluded (a test set is what it is)."""
    names: list[str] = []
    for group in groups:
        kept_split = next(s for s in SPLIT_ORDER if s in group.splits) if set(group.splits) <= set(SPLIT_ORDER) \
            else group.splits[0]
        kept = next(i for i in group.members if facts[i].split == kept_split)
        names += [facts[i].name for i in group.members if i != kept and facts[i].split != "test"]
    return names
