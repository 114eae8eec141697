"""Byte corpora: tokenizer round trips, deterministic stdlib corpus and fingerprint, file splits, windows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sessa.tasks import IGNORE_INDEX, get_task
from sessa.tasks.corpus import ByteLMTask, ByteTokenizer, fingerprint, hf_corpus, stdlib_corpus, text_corpus

TEXTS = ["", "hello, world\n", "héllo wörld — 日本語 🙂", "tab\tnull\x00end", "ß" * 100]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    wrapped = tok.encode(text, bos=True, eos=True)
    assert wrapped[0] == tok.bos_id and wrapped[-1] == tok.eos_id
    assert tok.decode(torch.tensor(wrapped)) == text


def test_tokenizer_specials_invalid_utf8_and_vocab():
    tok = ByteTokenizer()
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode([0xFF, ord("h"), tok.pad_id]) == "\ufffdh"
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character
    assert len(tok.vocab) == tok.vocab_size == 259 == len(set(tok.vocab))
    assert tok.vocab[ord("a")] == "a" and tok.vocab[10] == "<0x0A>" and tok.vocab[tok.eos_id] == "<eos>"
    with pytest.raises(ValueError, match="ids"):
        tok.decode([300])
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"bytes")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stdlib_small():
    return stdlib_corpus(max_bytes=400_000)


def test_stdlib_corpus_is_deterministic_and_fingerprinted(stdlib_small):
    again = stdlib_corpus(max_bytes=400_000)
    assert again.fingerprint == stdlib_small.fingerprint and len(stdlib_small.fingerprint) == 64
    assert again.train == stdlib_small.train and again.valid == stdlib_small.valid
    all_docs = sorted(stdlib_small.train + stdlib_small.valid)
    assert fingerprint(all_docs) == stdlib_small.fingerprint  # covers exactly the documents used
    changed = [(all_docs[0][0], all_docs[0][1] + b" ")] + all_docs[1:]
    assert fingerprint(changed) != stdlib_small.fingerprint
    assert stdlib_corpus(max_bytes=300_000).fingerprint != stdlib_small.fingerprint
    assert stdlib_small.info["python"].count(".") == 2


def test_stdlib_corpus_files_split_by_file(stdlib_small):
    train_ids = [d for d, _ in stdlib_small.train]
    valid_ids = [d for d, _ in stdlib_small.valid]
    assert train_ids == sorted(train_ids) and valid_ids == sorted(valid_ids)
    assert not set(train_ids) & set(valid_ids) and valid_ids and train_ids
    assert sum(stdlib_small.n_bytes.values()) <= 400_000
    root = Path(stdlib_small.info["root"])
    for doc_id, data in stdlib_small.train[:20] + stdlib_small.valid:
        parts = Path(doc_id).parts
        assert doc_id.endswith(".py") and not {"site-packages", "test", "tests", "idle_test"} & set(parts)
        assert (root / doc_id).read_bytes() == data


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "texts"
    (root / "nested").mkdir(parents=True)
    for i in range(30):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}: " + "ünïcode " * (i + 1), encoding="utf-8")
    (root / "nested" / "deep.md").write_text("# deep\n", encoding="utf-8")
    (root / ".hidden").write_text("secret", encoding="utf-8")
    return root


def test_text_folder_corpus(folder):
    corpus = text_corpus(folder, valid_fraction=0.2)
    ids = [d for d, _ in corpus.train + corpus.valid]
    assert sorted(ids) == sorted([f"doc{i:02d}.txt" for i in range(30)] + ["nested/deep.md"])
    assert corpus.valid and not {d for d, _ in corpus.train} & {d for d, _ in corpus.valid}
    for doc_id, data in corpus.train + corpus.valid:
        assert (folder / doc_id).read_bytes() == data
    assert text_corpus(folder, valid_fraction=0.2).fingerprint == corpus.fingerprint
    (folder / "doc03.txt").write_text("edited", encoding="utf-8")
    assert text_corpus(folder, valid_fraction=0.2).fingerprint != corpus.fingerprint
    subset = text_corpus(folder, pattern="doc0*.txt", valid_fraction=0.2)
    assert sorted(d for d, _ in subset.train + subset.valid) == [f"doc0{i}.txt" for i in range(10)]
    with pytest.raises(ValueError, match="at least 2 files"):  # one file cannot be split by file
        text_corpus(folder / "nested")


def test_single_text_file_holds_out_its_tail(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(bytes(range(256)) * 40)
    corpus = text_corpus(path, valid_fraction=0.1)
    assert corpus.train[0][1] + corpus.valid[0][1] == path.read_bytes()
    assert len(corpus.valid[0][1]) == 1024
    three = text_corpus(path, valid_fraction=0.1, test_fraction=0.2)
    assert three.train[0][1] + three.test[0][1] + three.valid[0][1] == path.read_bytes()
    assert len(three.test[0][1]) == 2048 and three.valid == corpus.valid
    with pytest.raises(ValueError, match="does not exist"):
        text_corpus(tmp_path / "missing.txt")


def test_bytelm_windows_are_the_joined_stream_shifted(folder):
    data = ByteLMTask(corpus=str(folder), seq_len=16, valid_fraction=0.2, test_fraction=0.2).build(seed=0)
    assert data.metric == "bpb" and data.vocab_size == 259 and data.pad_id == 256
    corpus = text_corpus(folder, valid_fraction=0.2, test_fraction=0.2)
    assert data.info["fingerprint"] == corpus.fingerprint
    assert corpus.test and not {d for d, _ in corpus.test} & {d for d, _ in corpus.train + corpus.valid}
    for name, docs in (("train", corpus.train), ("valid", corpus.valid), ("test", corpus.test)):
        split = data.splits[name]
        stream = []
        for _, doc in docs:
            stream += list(doc) + [ByteTokenizer.eos_id]
        n = len(split)
        assert n == (len(stream) - 1) // 16
        assert split.inputs.flatten().tolist() == stream[: n * 16]
        expected = torch.tensor(stream[1 : n * 16 + 1]).view(n, 16)
        expected[expected == ByteTokenizer.eos_id] = IGNORE_INDEX
        assert torch.equal(split.targets, expected)
        assert (split.lengths == 16).all()


def test_bytelm_default_corpus_via_registry():
    data = get_task("bytelm", max_bytes=200_000, seq_len=64).build(seed=0)
    sizes = data.info["train_bytes"] + data.info["valid_bytes"] + data.info["test_bytes"]
    assert data.info["corpus"] == "stdlib" and sizes <= 200_000
    assert set(data.splits) == {"train", "valid", "test"}
    train = data.splits["train"]
    assert train.inputs.shape[1] == 64 and (train.targets != IGNORE_INDEX).float().mean() > 0.99


def test_bad_options_raise(tmp_path):
    with pytest.raises(ValueError, match="seq_len"):
        ByteLMTask(seq_len=0)
    with pytest.raises(ValueError, match="valid_fraction"):
        ByteLMTask(valid_fraction=0.0)
    with pytest.raises(ValueError, match="test_fraction"):
        ByteLMTask(valid_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="max_bytes"):
        ByteLMTask(max_bytes=0)
    with pytest.raises(ValueError, match="does not exist"):
        ByteLMTask(corpus=str(tmp_path / "nope")).build(seed=0)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hf_corpus_without_datasets_says_what_to_do():
    with pytest.raises(ImportError, match="datasets"):
        hf_corpus("SimpleStories/SimpleStories")
    with pytest.raises(ImportError, match="datasets"):
        ByteLMTask(corpus="hf:SimpleStories/SimpleStories").build(seed=0)
