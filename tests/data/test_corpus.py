"""Built-in corpus, document splits and the text/JSONL loaders."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import pytest

from attnkit.data import corpus
from attnkit.data.corpus import (
    CorpusError,
    Document,
    builtin_corpus,
    builtin_documents,
    load_documents,
    load_jsonl,
    load_text,
    normalize_whitespace,
    split_documents,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache dir, so the test exercises build + cache without touching ~/.cache."""
    path = tmp_path_factory.mktemp("attnkit-cache")
    old = os.environ.get("ATTNKIT_CACHE")
    os.environ["ATTNKIT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ATTNKIT_CACHE", None)
    else:
        os.environ["ATTNKIT_CACHE"] = old


@pytest.fixture(scope="module")
def built(cache):
    return builtin_corpus()


def test_builtin_corpus_size_cache_and_determinism(cache, built):
    assert len(built) >= 1_500_000
    files = list(cache.glob("builtin-corpus-*.json"))
    assert len(files) == 1 and f"{sys.version_info[0]}.{sys.version_info[1]}." in files[0].name
    assert builtin_corpus() == built  # from the cache
    assert builtin_corpus(rebuild=True) == built  # rebuilt in this process
    # ... and in a fresh interpreter with an empty cache: same text
    env = {**os.environ, "ATTNKIT_CACHE": str(cache / "fresh")}
    # (corpus.py is loaded by path: it imports nothing from attnkit, and skipping the package
    # __init__ keeps torch out of the child process)
    code = ("import hashlib, importlib.util as u, sys; "
            "s = u.spec_from_file_location('c', sys.argv[1]); "
            "m = sys.modules['c'] = u.module_from_spec(s); s.loader.exec_module(m); "
            "print(hashlib.sha256(m.builtin_corpus().encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code, corpus.__file__], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == hashlib.sha256(built.encode()).hexdigest()


def test_builtin_corpus_in_process_fallback(cache, built, monkeypatch):
    monkeypatch.setattr(sys, "executable", "")  # no child process: build here instead
    text = builtin_corpus(rebuild=True)
    assert len(text) >= 1_500_000 and text[:10_000] == built[:10_000]
    monkeypatch.undo()
    builtin_corpus(rebuild=True)  # leave the clean build in the cache


def test_builtin_documents_content(built):
    docs = builtin_documents()
    titles = [d.title for d in docs]
    assert len(set(titles)) == len(titles)
    topics = [t for t in titles if t.startswith("topic:")]
    modules = [t for t in titles if t.startswith("module:")]
    assert topics == sorted(topics) and modules == sorted(modules)
    assert titles == topics + modules and len(topics) > 50 and len(modules) > 100
    assert "\t" not in built and "\r" not in built and "\n\n\n" not in built
    assert "json.dumps" in built  # a stdlib docstring header
    assert all(n in corpus.STDLIB_MODULES for n in ("builtins", "json", "typing"))
    assert list(corpus.STDLIB_MODULES) == sorted(corpus.STDLIB_MODULES)
    assert not {"this", "antigravity", "tkinter", "turtle", "idlelib"} & set(
        corpus.STDLIB_MODULES)


def test_split_documents_deterministic_and_order_independent():
    docs = [Document(f"doc-{i}", f"text {i}") for i in range(2000)]
    train, val = split_documents(docs, 0.1, seed=0)
    assert len(train) + len(val) == len(docs)
    assert {d.title for d in train}.isdisjoint(d.title for d in val)
    assert 150 < len(val) < 250
    assert split_documents(docs, 0.1, seed=0) == (train, val)
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    _, val2 = split_documents(shuffled, 0.1, seed=0)
    assert {d.title for d in val2} == {d.title for d in val}
    _, val3 = split_documents(docs, 0.1, seed=1)
    assert {d.title for d in val3} != {d.title for d in val}
    assert train == [d for d in docs if d in train]  # order kept


def test_split_documents_edge_cases():
    two = ["alpha", "beta"]
    train, val = split_documents(two, 0.1)
    assert len(train) == len(val) == 1
    assert split_documents(two, 0.0) == (two, [])
    with pytest.raises(ValueError):
        split_documents(two, 1.0)


def test_normalize_whitespace():
    assert normalize_whitespace("a  \r\nb\t|\n\n\n\n  c  \f\n") == "a\nb   |\n\n  c"


def test_load_text_file_and_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "a.md").write_text("# A\n")
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "skip.py").write_text("print('no')")
    (tmp_path / "empty.txt").write_text("  \n")
    docs = load_documents(tmp_path)
    assert [d.title for d in docs] == ["a.md", "b.txt", "sub/c.txt"]
    assert load_text(tmp_path) == "# A\n\nbee\n\nsea"
    assert load_text(tmp_path / "b.txt") == "bee"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(CorpusError, match="empty corpus"):
        load_text(tmp_path)  # empty folder
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(CorpusError, match="empty corpus"):
        load_text(tmp_path)
    with pytest.raises(CorpusError, match="empty corpus"):
        load_text(tmp_path / "blank.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("héllo ".encode() + b"\xff world")
    with pytest.raises(CorpusError, match=r"bad\.txt: not valid UTF-8 at byte offset 7"):
        load_text(tmp_path)


def test_load_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n{"text": ""}\n')
    assert load_jsonl(p) == ["one", "two"]
    p.write_text('{"text": "one"}\n{"body": "two"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: no field 'text'"):
        load_jsonl(p)
    p.write_text('{"text": "one"}\n{oops\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid JSON"):
        load_jsonl(p)
    p.write_text('{"text": 3}\n')
    with pytest.raises(CorpusError, match="expected a string"):
        load_jsonl(p)
    p.write_text('{"text": "  "}\n')
    with pytest.raises(CorpusError, match="empty corpus"):
        load_jsonl(p)
    p.write_bytes(b'{"text": "\xc3"}\n')
    with pytest.raises(CorpusError, match="byte offset 10"):
        load_jsonl(p)
