"""ListOps (LRA): evaluate a long nested prefix expression over digits; 10-way classification.

Expressions use ``[MIN``, ``[MAX``, ``[MED``, ``[SM`` (sum mod 10), digits 0-9 and ``]`` to close an
operator, e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9. Trees follow LRA's depth-limited recursion: the root is
at depth 1; a node below ``max_depth`` is a leaf with probability ``leaf_prob`` (0.75) and otherwise an
operator with 2..``max_args`` children; nodes at ``max_depth`` are leaves. The length L counts tokens
(a leaf 1, an operator 2 for its name and ``]``) and only trees with ``min_length < L < max_length`` are
kept (LRA: 500 < L < 2000).

Median convention: LRA computes ``int(np.median(values))``, so an even count takes the mean of the two
middle values rounded down (digits are non-negative): ``[MED 1 2 ]`` = 1, ``[MED 3 9 4 1 ]`` = 3. We do
the same with integer arithmetic: ``(a + b) // 2``.

Sampling is exact rejection sampling of LRA's distribution, made fast by separating shape from labels:
tree *shapes* are grown breadth-first for a whole batch of candidates at once with numpy (the
Galton-Watson tree does not depend on the order its nodes are drawn), a candidate is dropped as soon as
its nodes already reach ``max_length``, and operators/digits are drawn only for the accepted shapes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, pad_rows, register_task

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))
SPECIALS = ("<pad>", "<cls>")
VOCAB = [*SPECIALS, *OPERATORS, CLOSE, *DIGITS]


def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    ordered = sorted(args)  # [MED: LRA's int(np.median(.)), i.e. the lower-rounded mean of the middle pair
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2


def evaluate(expr_tokens: list[str] | str) -> int:
    """Value (0-9) of a ListOps expression given as tokens or a space-separated string.

    Raises ``ValueError`` for an unknown token, an unbalanced ``]`` or an operator without arguments.
    """
    tokens = expr_tokens.split() if isinstance(expr_tokens, str) else list(expr_tokens)
    stack: list[tuple[str, list[int]]] = [("<top>", [])]
    for tok in tokens:
        if tok in OPERATORS:
            stack.append((tok, []))
        elif tok in DIGITS:
            stack[-1][1].append(int(tok))
        elif tok == CLOSE:
            if len(stack) == 1 or not stack[-1][1]:
                raise ValueError(
                    f"expr_tokens: ']' closes nothing or an empty operator in {' '.join(tokens)!r}"
                )
            op, args = stack.pop()
            stack[-1][1].append(_apply(op, args))
        else:
            raise ValueError(f"expr_tokens: unknown token {tok!r}; valid: {[*OPERATORS, CLOSE, *DIGITS]}")
    if len(stack) != 1 or len(stack[0][1]) != 1:
        raise ValueError(f"expr_tokens: {' '.join(tokens)!r} is not one complete expression")
    return stack[0][1][0]


@dataclass
class _Shapes:
    """Breadth-first tree shapes of a batch: per depth level, each node's tree id and argument count."""

    tree_ids: list[np.ndarray]  # level d: (n_d,) id of the tree each node belongs to, grouped by tree
    n_args: list[np.ndarray]  # level d: (n_d,) 0 for a leaf, 2..max_args for an operator
    lengths: np.ndarray  # (B,) token length of each tree (only exact for trees still alive)
    alive: np.ndarray  # (B,) False once a tree reached max_length


def _grow_shapes(rng: np.random.Generator, batch: int, cfg: ListOpsTask) -> _Shapes:
    tree_ids, n_args = [], []
    ids = np.arange(batch)
    lengths = np.zeros(batch, dtype=np.int64)
    alive = np.ones(batch, dtype=bool)
    for depth in range(1, cfg.max_depth + 1):
        if depth < cfg.max_depth:
            is_op = rng.random(ids.size) >= cfg.leaf_prob
        else:
            is_op = np.zeros(ids.size, dtype=bool)
        args = np.where(is_op, rng.integers(2, cfg.max_args + 1, ids.size), 0)
        lengths += np.bincount(ids, weights=np.where(is_op, 2, 1), minlength=batch).astype(np.int64)
        tree_ids.append(ids)
        n_args.append(args)
        pending = np.bincount(ids, weights=args, minlength=batch).astype(np.int64)
        alive &= lengths + pending < cfg.max_length  # each pending child adds at least one token
        ids = np.repeat(ids, args)
        ids = ids[alive[ids]]
        if ids.size == 0:
            break
    return _Shapes(tree_ids, n_args, lengths, alive)


def _serialize(shapes: _Shapes, tree: int, rng: np.random.Generator) -> tuple[list[str], int]:
    """Prefix tokens of one accepted tree (operators and digits drawn here) and its depth."""
    levels = []  # per depth: this tree's argument counts, in breadth-first order
    for ids, args in zip(shapes.tree_ids, shapes.n_args, strict=False):
        lo, hi = np.searchsorted(ids, [tree, tree + 1])
        if lo == hi:
            break
        levels.append(args[lo:hi].tolist())
    n_nodes = sum(len(level) for level in levels)
    digits = iter(rng.integers(len(DIGITS), size=n_nodes).tolist())  # drawn in bulk: per-node draws are slow
    ops = iter(rng.integers(len(OPERATORS), size=n_nodes).tolist())
    cursor = [0] * len(levels)
    tokens: list[str] = []

    def emit(depth: int) -> None:
        k = levels[depth][cursor[depth]]
        cursor[depth] += 1
        if k == 0:
            tokens.append(DIGITS[next(digits)])
            return
        tokens.append(OPERATORS[next(ops)])
        for _ in range(k):
            emit(depth + 1)
        tokens.append(CLOSE)

    emit(0)
    return tokens, len(levels)


def sample_expressions(
    cfg: ListOpsTask, n: int, rng: np.random.Generator, batch: int = 4096
) -> tuple[list[list[str]], list[int]]:
    """``n`` distinct expressions (token lists) with ``min_length < L < max_length`` and their depths."""
    seen: set[bytes] = set()  # digests, not token tuples: LRA-size runs would hold gigabytes of tuples
    out: list[list[str]] = []
    depths: list[int] = []
    tried = 0
    while len(out) < n:
        shapes = _grow_shapes(rng, batch, cfg)
        tried += batch
        ok = shapes.alive & (shapes.lengths > cfg.min_length) & (shapes.lengths < cfg.max_length)
        for tree in np.flatnonzero(ok)[: n - len(out)]:
            tokens, depth = _serialize(shapes, int(tree), rng)
            key = hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).digest()
            if key not in seen:
                seen.add(key)
                out.append(tokens)
                depths.append(depth)
        if not out and tried >= 2_000_000:
            raise RuntimeError(
                f"no tree with {cfg.min_length} < length < {cfg.max_length} in {tried} draws; widen them"
            )
    return out, depths


def _max_tree_length(max_depth: int, max_args: int) -> int:
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def encode_expressions(expressions: list[list[str]], depths: list[int]) -> TaskSplit:
    """Rows ``expression tokens <cls>``; the target at ``<cls>`` is the value's digit token.

    inputs/targets: (N, max L + 1); meta: "length" (N,) L = expression tokens, "label" (N,) value 0-9,
    "depth" (N,) tree depth (1 = a single digit), as returned by ``sample_expressions``.
    """
    ids = {tok: i for i, tok in enumerate(VOCAB)}
    inputs, targets, labels = [], [], []
    for tokens in expressions:
        label = evaluate(tokens)
        row = [ids[t] for t in tokens] + [ids["<cls>"]]
        inputs.append(row)
        targets.append([IGNORE_INDEX] * (len(row) - 1) + [ids[DIGITS[label]]])
        labels.append(label)
    lengths = torch.tensor([len(r) for r in inputs], dtype=torch.long)
    return TaskSplit(
        inputs=pad_rows(inputs, ids["<pad>"]),
        targets=pad_rows(targets, ids["<pad>"], fill=IGNORE_INDEX),
        lengths=lengths,
        meta={"length": lengths - 1, "label": torch.tensor(labels), "depth": torch.tensor(depths)},
    )


@register_task("listops")
@dataclass
class ListOpsTask(TaskConfig):
    """LRA ListOps: read a long expression, predict its value (10 classes) at the final ``<cls>`` position.

    Vocabulary (17): ``<pad> <cls> [MIN [MAX [MED [SM ] 0 1 ... 9``; the class target is the digit token
    itself. Expressions are distinct across all splits. LRA does not balance labels and neither do we;
    measured on 5,000 default training examples: 0 and 9 about 17% each, 1 about 10%, 2 about 7% and
    3-8 about 8% each (MIN/MAX over many arguments saturate). ``info["label_counts"]`` has the counts.

    Example:
        >>> data = ListOpsTask(n_train=8, n_valid=2, n_test=2).build(seed=0)
        >>> split = data.splits["train"]
        >>> bool(((split.meta["length"] > 500) & (split.meta["length"] < 2000)).all())
        True
        >>> evaluate("[MAX 2 9 [MIN 4 7 ] 0 ]"), evaluate("[MED 3 9 4 1 ]"), evaluate("[SM 5 6 7 ]")
        (9, 3, 8)

    A row is ``[MAX 2 9 [MIN 4 7 ] 0 ] <cls>`` (if it were long enough) with every target -100 except
    the last, which is the token ``9``; meta["length"] = 9 (tokens before ``<cls>``).

    Measured generation cost (defaults, one shared CPU core): about 1 s per 1000 examples (mean length
    ~1,040 tokens; ~8% of sampled tree shapes fall in 500 < L < 2000), so the defaults take ~7 s and
    LRA's 100k about 2 minutes. The time goes to writing out and evaluating tokens, not to rejection.
    """

    n_train: int = 5000  # LRA uses 96,000 / 2,000 / 2,000; kept small so a build takes a few seconds
    n_valid: int = 1000
    n_test: int = 1000
    min_length: int = 500  # keep expressions with min_length < L (tokens, excluding <cls>)
    max_length: int = 2000  # ... and L < max_length
    max_depth: int = 10  # nodes at this depth are leaves; the root has depth 1
    max_args: int = 10  # operators take 2..max_args arguments
    leaf_prob: float = 0.75  # chance a node above max_depth is a digit (LRA: 1 - VALUE_P)

    def __post_init__(self) -> None:
        for name in ("n_train", "n_valid", "n_test"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {self.n_train}")
        if self.max_depth < 2:
            raise ValueError(f"max_depth must be >= 2 (depth 1 is a lone digit), got {self.max_depth}")
        if self.max_args < 2:
            raise ValueError(f"max_args must be >= 2, got {self.max_args}")
        if not 0.0 <= self.leaf_prob < 1.0:
            raise ValueError(f"leaf_prob must be in [0, 1), got {self.leaf_prob}")
        if not 0 <= self.min_length < self.max_length - 1:
            raise ValueError(
                f"need 0 <= min_length < max_length - 1 so some length fits, got min_length="
                f"{self.min_length}, max_length={self.max_length}"
            )
        longest = _max_tree_length(self.max_depth, self.max_args)
        if self.min_length >= longest:
            raise ValueError(
                f"min_length={self.min_length} is unreachable: max_depth={self.max_depth} and "
                f"max_args={self.max_args} allow at most {longest} tokens"
            )

    def _build(self, seed: int) -> TaskData:
        rng = np.random.default_rng(seed)
        sizes = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        expressions, depths = sample_expressions(self, sum(sizes.values()), rng)
        splits, start = {}, 0
        for name, size in sizes.items():
            if size:
                part = slice(start, start + size)
                splits[name] = encode_expressions(expressions[part], depths[part])
            start += size
        counts = torch.bincount(splits["train"].meta["label"], minlength=10)
        return TaskData(
            name=self.name,
            vocab=list(VOCAB),
            pad_id=VOCAB.index("<pad>"),
            splits=splits,
            metric="accuracy",
            info={"label_counts": counts.tolist(), "n_classes": 10},
        )
