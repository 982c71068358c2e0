"""The prefix store: a trie of token prefixes memoizing pi_ref and V^ per node.

Every token prefix the sampler has touched is one ``Node``; ``prev`` / ``next`` are its trie links
(one token shorter / one token longer). Nodes at action boundaries (the root, ends of blocks,
leaves) are the walk's nodes: they know their walk ``parent`` (the start of the action that ends
here) and their depth in actions. A revisited node costs no model or verifier call: its
next-token distribution (``dist``, a row of a device ``mlx_vgb.dist.DistBatch``) and its value
(``log_value``) are kept.
"""

from __future__ import annotations

from .dist import NextTokenDist

__all__ = ["NextTokenDist", "Node", "PrefixTree"]


class Node:
    """One token prefix (tokens after the prompt)."""

    __slots__ = (
        "tokens",
        "prev",
        "next",
        "dist",
        "log_value",
        "parent",
        "depth",
        "is_leaf",
        "eos",
        "children",
    )

    def __init__(self, tokens: tuple[int, ...], prev: "Node | None", is_leaf: bool, eos: bool):
        self.tokens = tokens
        self.prev = prev  # trie: the prefix one token shorter
        self.next: dict[int, Node] = {}  # trie: one-token extensions
        self.dist: NextTokenDist | None = None
        self.log_value: float | None = None  # log V^ (internal walk nodes), log tau (leaves)
        self.parent: Node | None = None  # walk parent (start of the action that ends here)
        self.depth: int = -1  # depth in actions; -1 for nodes inside a block
        self.is_leaf = is_leaf  # a complete response: EOS or the horizon
        self.eos = eos
        self.children: tuple | None = None  # Enumerate: (walk children, log weights), memoized

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Node({self.tokens}, depth={self.depth}, leaf={self.is_leaf})"


class PrefixTree:
    """Owns the nodes; decides leaves (EOS or horizon)."""

    def __init__(self, horizon: int, eos_token_ids: frozenset[int]):
        self.horizon = horizon
        self.eos_token_ids = eos_token_ids
        self.root = Node((), None, is_leaf=False, eos=False)
        self.root.depth = 0
        self.size = 1

    def child(self, node: Node, token: int) -> Node:
        c = node.next.get(token)
        if c is None:
            tokens = node.tokens + (token,)
            eos = token in self.eos_token_ids
            c = Node(tokens, node, is_leaf=eos or len(tokens) >= self.horizon, eos=eos)
            node.next[token] = c
            self.size += 1
        return c
