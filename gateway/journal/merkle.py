"""RFC 6962 Merkle tree hash over journal leaf hashes, computed in one streaming pass.

RFC 6962 §2.1 defines, for leaves ``D[0:n]``::

    MTH({})     = SHA-256()
    MTH({d0})   = d0          (here d0 is already the entry's leaf hash, SHA-256(0x00 | ...))
    MTH(D[0:n]) = SHA-256(0x01 | MTH(D[0:k]) | MTH(D[k:n]))   k = largest power of two smaller than n

The journal stores leaf hashes, not leaf data, so the inputs are the 32-byte ``SHA-256(0x00 | entry |
signature)`` values. The tree for ``n`` leaves is a sequence of perfect subtrees, one per set bit of ``n``,
largest on the left, and MTH folds them right to left. :class:`MerkleRoot` keeps only those subtree roots (at
most 64 hashes), so a million-entry journal is hashed in constant memory.

Pure (no I/O): the offline verifier, the checkpoint writer and the collector share it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_NODE_PREFIX = b"\x01"


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 | left | right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class MerkleRoot:
    """Accumulates leaf hashes in order and yields the RFC 6962 root of everything appended so far."""

    def __init__(self) -> None:
        # Roots of the perfect subtrees covering the leaves so far, largest (leftmost) first, with their
        # heights. Heights strictly decrease along the list, like the set bits of ``size``.
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def append(self, leaf: bytes) -> None:
        """Adds the next leaf hash (32 bytes) at the right edge of the tree.

        Raises:
            ValueError: ``leaf`` is not a 32-byte hash.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
        height, digest = 0, leaf
        # Two perfect subtrees of equal height merge into one a level up (a binary-counter carry); the
        # left operand is the older one, matching RFC 6962's left-to-right leaf order.
        while self._stack and self._stack[-1][0] == height:
            _, left = self._stack.pop()
            height, digest = height + 1, node_hash(left, digest)
        self._stack.append((height, digest))
        self.size += 1

    def root(self) -> bytes:
        """Returns MTH over the leaves appended so far (SHA-256 of the empty string when there are none)."""
        if not self._stack:
            return EMPTY_ROOT
        # The rightmost (smallest) subtree is the innermost right operand of the recursive definition: for
        # n = 4 + 2 + 1, MTH = H(P4, H(P2, P1)), where P4 is exactly MTH(D[0:4]) since 4 is the largest power
        # of two below 7, and likewise all the way down.
        digest = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            digest = node_hash(left, digest)
        return digest

    def state(self) -> list[tuple[int, bytes]]:
        """The perfect-subtree roots as (height, hash), largest first: with :attr:`size`, all the tree needs."""
        return list(self._stack)

    @classmethod
    def restore(cls, size: int, stack: Sequence[tuple[int, bytes]]) -> MerkleRoot:
        """Rebuilds an accumulator from :attr:`size` and :meth:`state`, ready to take the next leaf.

        Raises:
            ValueError: the heights are not exactly the set bits of ``size`` (largest first), or a hash is not
                32 bytes.
        """
        if size < 0:
            raise ValueError(f"tree size must not be negative, got {size}")
        expected = _subtree_heights(size)
        heights = [height for height, _ in stack]
        if heights != expected:
            raise ValueError(f"a tree of size {size} has subtrees of heights {expected}, not {heights}")
        if any(len(digest) != HASH_SIZE for _, digest in stack):
            raise ValueError(f"subtree hashes must be {HASH_SIZE} bytes")
        tree = cls()
        tree._stack = [(height, bytes(digest)) for height, digest in stack]
        tree.size = size
        return tree


def _subtree_heights(size: int) -> list[int]:
    """The heights of the perfect subtrees of a tree of ``size`` leaves: its set bits, largest first."""
    return [bit for bit in range(size.bit_length() - 1, -1, -1) if size >> bit & 1]


_STATE_SIZE = struct.Struct(">Q")


def encode_state(tree: MerkleRoot) -> bytes:
    """Compact encoding of a tree's state for one database column: u64 size | the subtree hashes, largest first.

    The heights are implied by ``size``, so a tree of n leaves takes 8 + 32 x popcount(n) bytes (at most 2 KiB).
    """
    return _STATE_SIZE.pack(tree.size) + b"".join(digest for _, digest in tree.state())


def decode_state(data: bytes) -> MerkleRoot:
    """The tree encoded by :func:`encode_state`.

    Raises:
        ValueError: ``data`` is not a valid encoding (truncated, or the hash count does not match the size).
    """
    if len(data) < _STATE_SIZE.size:
        raise ValueError("tree state is shorter than its 8-byte size")
    (size,) = _STATE_SIZE.unpack_from(data)
    hashes = data[_STATE_SIZE.size :]
    heights = _subtree_heights(size)
    if len(hashes) != HASH_SIZE * len(heights):
        raise ValueError(f"tree state for size {size} needs {len(heights)} hashes, holds {len(hashes)} bytes")
    stack = [(height, hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE]) for i, height in enumerate(heights)]
    return MerkleRoot.restore(size, stack)


def rfc6962_root(leaf_hashes: Iterable[bytes]) -> bytes:
    """Returns the RFC 6962 Merkle tree hash of ``leaf_hashes``, consuming the iterable once.

    Raises:
        ValueError: a leaf hash is not 32 bytes.
    """
    tree = MerkleRoot()
    for leaf in leaf_hashes:
        tree.append(leaf)
    return tree.root()


def _split(n: int) -> int:
    """RFC 6962's k: the largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class SubtreeHashes:
    """MTH of any range of a tree RFC 6962's PATH visits, from the leaves it has and subtree roots it was given.

    ``leaves`` are the leaf hashes from index ``first`` on; ``known`` maps (start, end) ranges to their MTH (a
    pruned prefix's perfect subtrees, from the prune marker's frontier). A range that is neither computable nor
    known raises ``LookupError``.
    """

    def __init__(self, leaves: Sequence[bytes], first: int = 0, known: dict[tuple[int, int], bytes] | None = None):
        self._leaves = leaves
        self._first = first
        self._known = dict(known or {})

    def mth(self, start: int, end: int) -> bytes:
        """The Merkle tree hash of leaves ``[start, end)``."""
        cached = self._known.get((start, end))
        if cached is not None:
            return cached
        if end - start == 1:
            if start < self._first or start - self._first >= len(self._leaves):
                raise LookupError(f"leaf {start} is not available (pruned or beyond the journal)")
            return self._leaves[start - self._first]
        if end <= start:
            raise LookupError(f"empty range [{start}, {end})")
        k = _split(end - start)
        digest = node_hash(self.mth(start, start + k), self.mth(start + k, end))
        if k >= 64:  # keep large subtrees: proofs for many leaves of one tree share them
            self._known[(start, end)] = digest
        return digest

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 6962 §2.1.1 PATH(index, D[0:size]): the sibling hashes from the leaf up to the root."""
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self.mth(start + k, end))
                end = start + k
            else:
                path.append(self.mth(start, start + k))
                start += k
        path.reverse()
        return path


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root a leaf and its inclusion proof lead to (RFC 9162 §2.1.3.2); compare it with the trusted root.

    Raises:
        ValueError: the proof has the wrong length or a hash of the wrong size for ``index`` in ``size``.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    fn, sn, digest = index, size - 1, leaf
    for sibling in proof:
        if len(sibling) != HASH_SIZE:
            raise ValueError("a proof hash is not 32 bytes")
        if sn == 0:
            raise ValueError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            digest = node_hash(sibling, digest)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            digest = node_hash(digest, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the inclusion proof is shorter than the tree is deep")
    return digest
