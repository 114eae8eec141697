"""Byte-level language modelling corpora and the "bytelm" task.

Offline default: the Python standard library's own source (``*.py`` under ``sysconfig`` "stdlib"), which
every machine with Python has. The stdlib differs between Python versions, so every corpus carries a
``fingerprint`` (sha256 over the relative paths and contents of the files it uses) that results should
quote. Any local text file or folder works too (``text_corpus``), and any Hugging Face dataset when the
optional ``datasets`` package is installed and the hub is reachable (``hf_corpus``).

Train/validation is split by document (file), never inside one, using a hash of the relative path, so
the split is stable when files are added or removed.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, register_task
from sessa.tokens import ByteTokenizer

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
TEST_DIRS = frozenset({"test", "tests", "idle_test"})


@dataclass
class Corpus:
    """Documents split into train and validation, with a fingerprint of exactly what is included.

    train, valid, test: lists of (document id, raw bytes), in a fixed order (sorted by id for files); test
    is empty unless a test fraction was asked for
    """

    name: str
    train: list[tuple[str, bytes]]
    valid: list[tuple[str, bytes]]
    fingerprint: str
    info: dict[str, object] = field(default_factory=dict)
    test: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def n_bytes(self) -> dict[str, int]:
        sizes = {"train": self.train, "valid": self.valid, **({"test": self.test} if self.test else {})}
        return {name: sum(len(d) for _, d in docs) for name, docs in sizes.items()}


def _hash_unit(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) from ``key`` (independent for different salts)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fingerprint(documents: Sequence[tuple[str, bytes]]) -> str:
    """sha256 over (id, content) of the documents in order with lengths, so joins are unambiguous."""
    h = hashlib.sha256()
    for doc_id, data in documents:
        name = doc_id.encode("utf-8")
        h.update(len(name).to_bytes(8, "big") + name + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _check_fraction(valid_fraction: float, test_fraction: float = 0.0) -> None:
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
    if not 0.0 <= test_fraction < 1.0 - valid_fraction:
        raise ValueError(
            f"test_fraction must be in [0, 1 - valid_fraction = {1 - valid_fraction:g}), "
            f"got {test_fraction!r}"
        )


def _split_of(key: str, valid_fraction: float, test_fraction: float) -> str:
    """"valid", "test" or "train" for a document, by a hash of its id (stable as documents come and go)."""
    u = _hash_unit(key, "split")
    return "valid" if u < valid_fraction else "test" if u < valid_fraction + test_fraction else "train"


def _files_corpus(
    name: str,
    root: Path,
    rel_paths: list[str],
    valid_fraction: float,
    max_bytes: int | None,
    test_fraction: float = 0.0,
) -> Corpus:
    """Split files by a hash of their relative path, capping the total size; read only what is used."""
    _check_fraction(valid_fraction, test_fraction)
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be None or > 0, got {max_bytes!r}")
    chosen = sorted(rel_paths)
    if max_bytes is not None:  # a pseudo-random subset (hash order), so a cap does not favour "a*" names
        chosen, total = [], 0
        for rel in sorted(rel_paths, key=lambda r: _hash_unit(r, "order")):
            size = (root / rel).stat().st_size
            if total + size <= max_bytes:
                chosen.append(rel)
                total += size
        chosen.sort()
    need = 3 if test_fraction > 0 else 2
    if len(chosen) < need:
        raise ValueError(
            f"{name!r}: need at least {need} files to split by file, got {len(chosen)} "
            f"(max_bytes={max_bytes!r})"
        )
    split = {rel: _split_of(rel, valid_fraction, test_fraction) for rel in chosen}
    by_hash = sorted(chosen, key=lambda r: _hash_unit(r, "split"))
    for wanted, rel in (("valid", by_hash[0]), ("train", by_hash[-1])):  # keep the splits non-empty
        if wanted not in split.values():
            split[rel] = wanted
    if test_fraction > 0 and "test" not in split.values():
        split[by_hash[1]] = "test"
    docs = [(rel, (root / rel).read_bytes()) for rel in chosen]
    parts = {name: [d for d in docs if split[d[0]] == name] for name in ("train", "valid", "test")}
    info = {"root": str(root), **{f"n_{k}_files": len(v) for k, v in parts.items() if v}}
    return Corpus(name, parts["train"], parts["valid"], fingerprint(docs), info, parts["test"])


def stdlib_corpus(
    max_bytes: int | None = 4_000_000,
    valid_fraction: float = 0.05,
    include_tests: bool = False,
    test_fraction: float = 0.0,
) -> Corpus:
    """The ``*.py`` files of this interpreter's standard library (no site-packages).

    Test suites (``test``/``tests``/``idle_test`` folders) are left out unless ``include_tests``; with
    ``max_bytes`` a fixed pseudo-random subset of files totalling at most that many bytes is used.
    The fingerprint changes with the Python version; ``info["python"]`` records it.
    """
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    rel_paths = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if EXCLUDED_DIRS.intersection(parts[:-1]) or (
            not include_tests and TEST_DIRS.intersection(parts[:-1])
        ):
            continue
        if path.is_file():
            rel_paths.append(path.relative_to(root).as_posix())
    corpus = _files_corpus("stdlib", root, rel_paths, valid_fraction, max_bytes, test_fraction)
    corpus.info["python"] = sys.version.split()[0]
    return corpus


def text_corpus(
    path: str | Path,
    valid_fraction: float = 0.05,
    pattern: str = "*",
    max_bytes: int | None = None,
    test_fraction: float = 0.0,
) -> Corpus:
    """A local text file or folder as a corpus.

    A file: its first ``max_bytes`` bytes, the last ``valid_fraction`` of them held out for validation
    (and the ``test_fraction`` before those for test). A folder: files matching ``pattern`` anywhere below
    it (hidden ones skipped), split by file; needs 2+ (3+ with a test split).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    if root.is_file():
        _check_fraction(valid_fraction, test_fraction)
        data = root.read_bytes()[:max_bytes]
        if not data:
            raise ValueError(f"file {str(path)!r} is empty")
        cut = int(len(data) * (1 - valid_fraction))
        cut_test = int(len(data) * (1 - valid_fraction - test_fraction))
        train, valid = [(root.name, data[:cut_test])], [(f"{root.name}#tail", data[cut:])]
        test = [(f"{root.name}#test", data[cut_test:cut])] if test_fraction > 0 else []
        info = {"root": str(root.resolve())}
        return Corpus(root.name, train, valid, fingerprint([(root.name, data)]), info, test)
    rel_paths = [
        p.relative_to(root).as_posix()
        for p in root.rglob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not rel_paths:
        raise ValueError(f"folder {str(path)!r} has no file matching pattern {pattern!r}")
    return _files_corpus(root.name, root.resolve(), rel_paths, valid_fraction, max_bytes, test_fraction)


def hf_corpus(
    name: str,
    config: str | None = None,
    text_field: str = "text",
    max_bytes: int | None = 4_000_000,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.0,
) -> Corpus:
    """Rows of a Hugging Face dataset's "train" split as documents (needs ``datasets`` and the hub).

    Rows are taken in order until ``max_bytes``; each row goes to validation (or test) by a hash of its index.
    """
    _check_fraction(valid_fraction, test_fraction)
    try:
        import datasets  # noqa: PLC0415  (optional dependency)
    except ImportError as err:
        raise ImportError(
            "hf_corpus needs the optional 'datasets' package (pip install datasets) and a reachable "
            "Hugging Face hub; offline, use stdlib_corpus() or text_corpus(path)"
        ) from err
    try:
        rows = datasets.load_dataset(name, config, split="train", streaming=True)
    except Exception as err:  # network, auth or name errors all surface here
        raise RuntimeError(f"could not load dataset {name!r} (config {config!r}): {err}") from err
    docs, total = [], 0
    for i, row in enumerate(rows):
        if text_field not in row:
            raise ValueError(f"text_field {text_field!r} not in dataset columns {sorted(row)}")
        data = str(row[text_field]).encode("utf-8")
        if max_bytes is not None and total + len(data) > max_bytes:
            break
        docs.append((f"train/{i}", data))
        total += len(data)
    parts = {k: [d for d in docs if _split_of(d[0], valid_fraction, test_fraction) == k]
             for k in ("train", "valid", "test")}
    label = f"hf:{name}" + (f":{config}" if config else "")
    info = {"rows": len(docs)}
    return Corpus(label, parts["train"], parts["valid"], fingerprint(docs), info, parts["test"])


def load_corpus(
    source: str,
    max_bytes: int | None,
    valid_fraction: float,
    include_tests: bool = False,
    test_fraction: float = 0.0,
) -> Corpus:
    """``"stdlib"``, ``"hf:<name>"`` / ``"hf:<name>:<config>"``, or a local file or folder path."""
    fractions = {"valid_fraction": valid_fraction, "test_fraction": test_fraction, "max_bytes": max_bytes}
    if source == "stdlib":
        return stdlib_corpus(include_tests=include_tests, **fractions)
    if source.startswith("hf:"):
        name, _, config = source[3:].partition(":")
        return hf_corpus(name, config or None, **fractions)
    return text_corpus(source, **fractions)


def byte_windows(documents: list[tuple[str, bytes]], seq_len: int) -> TaskSplit:
    """Non-overlapping next-byte windows over the documents joined with ``<eos>``.

    inputs (N, seq_len): a window of the stream; targets (N, seq_len): the stream shifted by one, with
    ``IGNORE_INDEX`` where the next token is ``<eos>`` (only bytes are scored, so loss / ln 2 is bits per
    byte). N = (stream length - 1) // seq_len; the remainder is dropped.
    """
    eos = torch.tensor([ByteTokenizer.eos_id], dtype=torch.long)
    parts = []
    for _, data in documents:
        parts += [torch.frombuffer(bytearray(data), dtype=torch.uint8).long(), eos] if data else []
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    n = (stream.numel() - 1) // seq_len
    if n < 1:
        raise ValueError(f"seq_len={seq_len} is longer than the {stream.numel()}-token split; lower seq_len")
    inputs = stream[: n * seq_len].view(n, seq_len).clone()
    targets = stream[1 : n * seq_len + 1].view(n, seq_len).clone()
    targets[targets == ByteTokenizer.eos_id] = IGNORE_INDEX
    return TaskSplit(inputs=inputs, targets=targets, lengths=torch.full((n,), seq_len, dtype=torch.long))


@register_task("bytelm")
@dataclass
class ByteLMTask(TaskConfig):
    """Byte-level language modelling: predict the next byte; metric bits per byte (``metric="bpb"``).

    Documents are joined with ``<eos>`` and cut into non-overlapping windows of ``seq_len`` tokens; every
    position whose next token is a byte is scored (the per-position accuracy is also meaningful). The
    vocabulary is ``ByteTokenizer``'s 259 tokens. ``info`` records the corpus name, its ``fingerprint``
    and byte counts (and the Python version for the stdlib corpus): quote the fingerprint with results.

    Example:
        >>> data = ByteLMTask(max_bytes=200_000, seq_len=128).build(seed=0)
        >>> data.vocab_size, data.splits["train"].inputs.shape[1], data.metric
        (259, 128, 'bpb')
        >>> len(data.info["fingerprint"]), data.info["corpus"]
        (64, 'stdlib')

    For the window ``b"def f"`` followed by ``b"(x)"``: inputs = ``d e f ␣ f``, targets = ``e f ␣ f (``.
    The seed is unused: the corpus and its split are fixed by the files (and the fingerprint says which).
    """

    corpus: str = "stdlib"  # "stdlib", a local text file or folder, or "hf:<name>[:<config>]"
    seq_len: int = 256  # tokens per window
    max_bytes: int | None = 4_000_000  # cap on the corpus size (None = everything)
    valid_fraction: float = 0.05  # share of files (or of a single file's tail) held out for validation
    test_fraction: float = 0.05  # share held out for a test split (0: none); lrs are picked on valid
    include_tests: bool = False  # stdlib only: also use the test-suite folders

    def __post_init__(self) -> None:
        if not isinstance(self.corpus, str) or not self.corpus:
            raise ValueError(f"corpus must be 'stdlib', 'hf:<name>' or a path, got {self.corpus!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"seq_len must be an int >= 1, got {self.seq_len!r}")
        if self.max_bytes is not None and (not isinstance(self.max_bytes, int) or self.max_bytes < 1):
            raise ValueError(f"max_bytes must be None or an int >= 1, got {self.max_bytes!r}")
        _check_fraction(self.valid_fraction, self.test_fraction)

    def _build(self, seed: int) -> TaskData:
        corpus = load_corpus(
            self.corpus, self.max_bytes, self.valid_fraction, self.include_tests, self.test_fraction
        )
        tok = ByteTokenizer()
        splits = {
            "train": byte_windows(corpus.train, self.seq_len),
            "valid": byte_windows(corpus.valid, self.seq_len),
        }
        if corpus.test:
            splits["test"] = byte_windows(corpus.test, self.seq_len)
        sizes = {f"{split}_bytes": n for split, n in corpus.n_bytes.items()}
        info = {"corpus": corpus.name, "fingerprint": corpus.fingerprint, **sizes, **corpus.info}
        return TaskData(
            name=self.name, vocab=tok.vocab, pad_id=tok.pad_id, splits=splits, metric="bpb", info=info
        )
