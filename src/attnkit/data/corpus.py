"""Text corpora: the built-in default corpus, deterministic splits, and file loaders.

The built-in corpus needs no download: it is the English documentation that ships with every
CPython install,

* ``pydoc_data.topics.topics`` — the language-reference topics behind ``help("with")`` etc.
  (about 0.46M characters), one document per topic, in sorted key order;
* docstrings of a FIXED, sorted list of standard-library modules (:data:`STDLIB_MODULES`,
  all present on CPython 3.11–3.13; mostly pure Python plus a few always-built-in C modules
  such as ``builtins``), one document per module: the module docstring, then
  ``name`` + docstring of every class/function it defines (and of the methods and properties
  of those classes), in sorted name order; a docstring text seen before is not repeated.

Documents are added in that order until :data:`TARGET_CHARS` (2M) characters are reached.
Modules that fail to import are skipped; nothing with side effects (``this``,
``antigravity``, ``tkinter``, ``turtle``, ``idlelib``) is on the list. The assembled documents
are cached as JSON under :func:`cache_dir` keyed by the exact Python version, so the
(about one second) build happens once per interpreter. The build runs in a fresh
``python -I -S`` child process, so the text never depends on what the calling process has
imported or monkeypatched (and the ~270 imports stay out of it); if that child cannot run, it
falls back to building in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["Document", "CorpusError", "STDLIB_MODULES", "TARGET_CHARS", "cache_dir",
           "builtin_documents", "builtin_corpus", "split_documents", "normalize_whitespace",
           "load_documents", "load_text", "load_jsonl", "read_utf8"]

TARGET_CHARS = 2_000_000
_CACHE_VERSION = 1

#: Sorted; every name exists on CPython 3.11, 3.12 and 3.13 (nothing removed by PEP 594).
STDLIB_MODULES: tuple[str, ...] = tuple(sorted("""
    _collections_abc _compat_pickle _markupbase _py_abc _pydecimal _pyio _strptime
    _threading_local abc argparse array ast asyncio asyncio.base_events asyncio.base_futures
    asyncio.base_subprocess asyncio.coroutines asyncio.events asyncio.exceptions asyncio.futures
    asyncio.locks asyncio.protocols asyncio.queues asyncio.runners asyncio.selector_events
    asyncio.sslproto asyncio.streams asyncio.subprocess asyncio.tasks asyncio.transports
    asyncio.unix_events base64 bdb binascii bisect builtins bz2 calendar cmath cmd code codecs
    codeop collections collections.abc colorsys compileall concurrent.futures
    concurrent.futures._base concurrent.futures.process concurrent.futures.thread configparser
    contextlib contextvars copy copyreg csv ctypes ctypes.util dataclasses datetime dbm decimal
    difflib dis doctest email email._header_value_parser email._policybase email.base64mime
    email.charset email.contentmanager email.feedparser email.generator email.header
    email.headerregistry email.iterators email.message email.mime.base email.mime.multipart
    email.mime.text email.parser email.policy email.quoprimime email.utils encodings
    encodings.idna encodings.punycode ensurepip enum errno filecmp fileinput fnmatch fractions
    ftplib functools gc getopt getpass gettext glob graphlib gzip hashlib heapq hmac html
    html.parser http http.client http.cookiejar http.cookies http.server imaplib importlib
    importlib.abc importlib.machinery importlib.metadata importlib.resources
    importlib.resources.abc importlib.util inspect io ipaddress itertools json json.decoder
    json.encoder keyword linecache locale logging logging.config logging.handlers lzma mailbox
    marshal math mimetypes modulefinder multiprocessing multiprocessing.connection
    multiprocessing.context multiprocessing.heap multiprocessing.managers multiprocessing.pool
    multiprocessing.process multiprocessing.queues multiprocessing.reduction
    multiprocessing.resource_tracker multiprocessing.shared_memory multiprocessing.sharedctypes
    multiprocessing.spawn multiprocessing.synchronize multiprocessing.util netrc numbers opcode
    operator optparse os os.path pathlib pdb pickle pickletools pkgutil platform plistlib
    poplib posixpath pprint profile pstats py_compile pyclbr pydoc queue quopri random re
    reprlib rlcompleter runpy sched secrets select selectors shelve shlex shutil smtplib socket
    socketserver sqlite3 ssl stat statistics string stringprep struct subprocess symtable sys
    sysconfig tabnanny tarfile tempfile textwrap threading time timeit token tokenize tomllib
    trace traceback tracemalloc types typing unittest unittest.async_case unittest.case
    unittest.loader unittest.main unittest.mock unittest.result unittest.runner
    unittest.signals unittest.suite urllib urllib.error urllib.parse urllib.request
    urllib.response urllib.robotparser uuid venv warnings wave weakref wsgiref wsgiref.handlers
    wsgiref.headers wsgiref.simple_server wsgiref.util wsgiref.validate xml.dom
    xml.dom.expatbuilder xml.dom.minicompat xml.dom.minidom xml.dom.pulldom xml.dom.xmlbuilder
    xml.etree.ElementInclude xml.etree.ElementPath xml.etree.ElementTree xml.parsers.expat
    xml.sax xml.sax.expatreader xml.sax.handler xml.sax.saxutils xml.sax.xmlreader
    xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib zoneinfo
""".split()))


class CorpusError(ValueError):
    """A corpus that cannot be used: empty, undecodable, or malformed."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus: a stable ``title`` (used for splitting) and its ``text``."""

    title: str
    text: str


# ---- whitespace -----------------------------------------------------------------------------

_TRAILING_WS = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Light clean-up that keeps indentation (code examples survive): CRLF/CR -> LF, tabs ->
    4 spaces, form feeds/vertical tabs dropped, trailing spaces stripped, runs of blank lines
    collapsed to one, leading/trailing blank space removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    text = text.replace("\f", "").replace("\v", "")
    text = _TRAILING_WS.sub("\n", text + "\n")
    return _MANY_NEWLINES.sub("\n\n", text).strip()


# ---- cache ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$ATTNKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/attnkit``, else ``~/.cache/attnkit``."""
    env = os.environ.get("ATTNKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "attnkit"


def _cache_file(target_chars: int) -> Path:
    impl = sys.implementation.name
    ver = ".".join(str(v) for v in sys.version_info[:3])
    return cache_dir() / f"builtin-corpus-{impl}-{ver}-{target_chars}-v{_CACHE_VERSION}.json"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---- building the built-in corpus ------------------------------------------------------------


def _own_doc(obj: object) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) and doc.strip() else None


def _member_docs(cls: type) -> Iterable[tuple[str, str]]:
    """``(attribute name, docstring)`` of methods and properties defined in ``cls`` itself."""
    for name, value in sorted(vars(cls).items()):
        target = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if not (inspect.isroutine(target) or inspect.isdatadescriptor(value)):
            continue
        doc = _own_doc(target)
        if doc is not None:
            yield name, doc


def _module_document(name: str, seen: set[str]) -> Document | None:
    """The docstrings of module ``name`` as one document (None if it fails to import)."""
    with warnings.catch_warnings():  # deprecated modules/attributes warn on access
        warnings.simplefilter("ignore")
        return _module_document_quiet(name, seen)


def _module_document_quiet(name: str, seen: set[str]) -> Document | None:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure just skips the module
        return None
    parts: list[str] = []

    def add(header: str | None, doc: str) -> None:
        doc = normalize_whitespace(inspect.cleandoc(doc))
        if doc and doc not in seen:
            seen.add(doc)
            parts.append(f"{header}\n{doc}" if header else doc)

    if (doc := _own_doc(module)) is not None:
        add(f"Module {name}", doc)
    for attr, obj in sorted(vars(module).items()):
        if getattr(obj, "__module__", None) != name:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if (doc := _own_doc(obj)) is not None:
            add(f"{name}.{attr}", doc)
        if inspect.isclass(obj):
            for member, mdoc in _member_docs(obj):
                add(f"{name}.{attr}.{member}", mdoc)
    if not parts:
        return None
    return Document(f"module:{name}", "\n\n".join(parts))


def _build_documents(target_chars: int) -> list[Document]:
    from pydoc_data.topics import topics

    docs: list[Document] = []
    total = 0

    def push(doc: Document) -> bool:
        nonlocal total
        docs.append(doc)
        total += len(doc.text)
        return total >= target_chars

    for key in sorted(topics):
        text = normalize_whitespace(topics[key])
        if text and push(Document(f"topic:{key}", text)):
            return docs
    seen: set[str] = set()
    for name in STDLIB_MODULES:
        doc = _module_document(name, seen)
        if doc is not None and push(doc):
            break
    return docs


def _build_in_subprocess(target_chars: int) -> list[Document] | None:
    """Build in a fresh ``python -I -S`` running this file: the result cannot depend on what
    the calling process imported or monkeypatched (torch, for one, replaces functions of
    ``inspect`` and ``typing``), and the imports stay out of the caller. None on failure."""
    if not sys.executable:
        return None
    try:
        out = subprocess.run([sys.executable, "-I", "-S", __file__, str(target_chars)],
                             capture_output=True, check=True, timeout=600)
        return [Document(t, x) for t, x in json.loads(out.stdout.decode("ascii"))]
    except (OSError, subprocess.SubprocessError, ValueError, TypeError):
        return None


def builtin_documents(target_chars: int = TARGET_CHARS, *, rebuild: bool = False
                      ) -> list[Document]:
    """The built-in corpus as :class:`Document` s (titles ``topic:<key>``/``module:<name>``),
    read from the cache or built (and cached) on first use. ``rebuild=True`` ignores (and
    rewrites) the cache."""
    path = _cache_file(target_chars)
    if not rebuild and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") == _CACHE_VERSION:
                return [Document(t, x) for t, x in data["documents"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a corrupt cache is rebuilt below
    docs = _build_in_subprocess(target_chars)
    if docs is None:
        docs = _build_documents(target_chars)
    payload = {"version": _CACHE_VERSION, "python": sys.version,
               "documents": [[d.title, d.text] for d in docs]}
    try:
        _atomic_write_text(path, json.dumps(payload, ensure_ascii=False))
    except OSError:
        pass  # an unwritable cache only costs a rebuild next time
    return docs


def builtin_corpus(target_chars: int = TARGET_CHARS, *, rebuild: bool = False) -> str:
    """The built-in corpus as one string: documents joined by a blank line."""
    return "\n\n".join(d.text for d in builtin_documents(target_chars, rebuild=rebuild))


# ---- splitting ------------------------------------------------------------------------------


def _unit_hash(title: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}\x00{title}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


DocT = TypeVar("DocT", Document, str)


def split_documents(docs: Sequence[DocT], val_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[list[DocT], list[DocT]]:
    """Deterministic train/validation split by document.

    Each document goes to validation iff ``blake2b(seed, title)`` mapped to ``[0, 1)`` is below
    ``val_fraction`` (a plain ``str`` is its own title), so a document's side never depends on
    the others or on their order. Order is preserved within each side. With ``val_fraction > 0``
    and at least two documents, both sides are non-empty (the lowest/highest-hash document
    is moved over if needed)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keys = [_unit_hash(d.title if isinstance(d, Document) else d, seed) for d in docs]
    is_val = [k < val_fraction for k in keys]
    if val_fraction > 0 and len(docs) >= 2:
        if not any(is_val):
            is_val[min(range(len(docs)), key=keys.__getitem__)] = True
        if all(is_val):
            is_val[max(range(len(docs)), key=keys.__getitem__)] = False
    train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    val = [d for d, v in zip(docs, is_val, strict=True) if v]
    return train, val


# ---- loaders --------------------------------------------------------------------------------

TEXT_SUFFIXES = (".txt", ".md")


def read_utf8(path: Path) -> str:
    """``path`` decoded as strict UTF-8 (a BOM is dropped); :class:`CorpusError` names the
    file and the byte offset of the first invalid byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a BOM is not text
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not valid UTF-8 at byte offset {e.start} "
                          f"(byte 0x{data[e.start]:02x}: {e.reason})") from None


def _require(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"corpus path does not exist: {p}")
    return p


def load_documents(path: str | Path) -> list[Document]:
    """One :class:`Document` per file: ``path`` itself, or every ``*.txt``/``*.md`` under the
    folder ``path`` (recursive, sorted by relative path, which is also the title). Text is
    decoded as strict UTF-8 and lightly normalised; empty files are dropped.

    Raises ``FileNotFoundError`` (missing path) or :class:`CorpusError` (no text at all, or a
    file that is not UTF-8: the error names the file and the byte offset)."""
    p = _require(path)
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.is_file()
                        and f.suffix.lower() in TEXT_SUFFIXES),
                       key=lambda f: f.relative_to(p).as_posix())
        titled = [(f.relative_to(p).as_posix(), f) for f in files]
    else:
        titled = [(p.name, p)]
    docs = [Document(title, text) for title, f in titled
            if (text := normalize_whitespace(read_utf8(f)))]
    if not docs:
        what = f"no non-empty {'/'.join(TEXT_SUFFIXES)} files under" if p.is_dir() else "empty:"
        raise CorpusError(f"empty corpus: {what} {p}")
    return docs


def load_text(path: str | Path) -> str:
    """A file, or a folder of ``*.txt``/``*.md`` files (see :func:`load_documents`), as one
    string with documents separated by a blank line."""
    return "\n\n".join(d.text for d in load_documents(path))


def load_jsonl(path: str | Path, field: str = "text") -> list[str]:
    """The ``field`` string of every line of a JSON-lines file (blank lines skipped).

    Raises ``FileNotFoundError``, or :class:`CorpusError` naming the file and line for invalid
    JSON, a missing or non-string field, or when no line has any text."""
    p = _require(path)
    texts: list[str] = []
    for lineno, line in enumerate(read_utf8(p).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{p}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise CorpusError(f"{p}:{lineno}: no field {field!r} (has {keys})")
        value = record[field]
        if not isinstance(value, str):
            raise CorpusError(f"{p}:{lineno}: field {field!r} is {type(value).__name__}, "
                              "expected a string")
        if value.strip():
            texts.append(value)
    if not texts:
        raise CorpusError(f"empty corpus: no non-empty {field!r} values in {p}")
    return texts


if __name__ == "__main__":  # the clean builder process of _build_in_subprocess
    _docs = _build_documents(int(sys.argv[1]))
    sys.stdout.write(json.dumps([[d.title, d.text] for d in _docs], ensure_ascii=True))
