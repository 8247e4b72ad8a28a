"""Text corpora for character-level language models.

* ``tinyshakespeare``: Karpathy's char-rnn corpus (1,115,394 bytes), looked for
  in the data folder (``--data-dir``, else ``$JAXRNN_DATA``, else
  ``~/.cache/jaxrnn``) and downloaded there from its public source when
  missing; either way its SHA-256 is checked.
* ``python-stdlib``: the ``.py`` files of this Python's standard library, one
  document each: a corpus every machine has, offline.
* ``python-docs``: the help topics this Python ships for ``help()``
  (``pydoc_data.topics``, about 465,000 characters of English technical prose
  in reStructuredText, one document per topic): offline too.
* any file, by path (``--text PATH``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sysconfig
import urllib.request
from typing import NamedTuple

import numpy as np

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPORA = ("tinyshakespeare", "python-stdlib", "python-docs")
DOCUMENT_SEPARATOR = "\x00"  # between documents; the model learns to reset after it


class CorpusError(RuntimeError):
    """A corpus could not be found or fetched; the message names the ways to provide one."""


class Corpus(NamedTuple):
    """A text, its vocabulary and its encoding as integer ids."""

    name: str
    text: str
    vocab: str  # the sorted distinct characters; id i is vocab[i]

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"text: characters {unknown[:10]} are not in the corpus vocabulary")
        return np.array([index[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def split(self, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Train and validation ids: the last ``val_fraction`` of the text is validation."""
        ids = self.encode(self.text)
        cut = int(len(ids) * (1.0 - val_fraction))
        return ids[:cut], ids[cut:]


def data_dir(explicit: str | os.PathLike | None = None) -> pathlib.Path:
    """Where corpora are looked for and cached: the argument, ``$JAXRNN_DATA``, or ``~/.cache/jaxrnn``."""
    return pathlib.Path(explicit or os.environ.get("JAXRNN_DATA") or pathlib.Path.home() / ".cache" / "jaxrnn")


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tinyshakespeare(folder: pathlib.Path) -> str:
    path = folder / "tinyshakespeare.txt"
    if path.exists():
        if sha256(path) != TINYSHAKESPEARE_SHA256:
            raise CorpusError(f"{path}: SHA-256 {sha256(path)} is not tiny-shakespeare's {TINYSHAKESPEARE_SHA256}")
        return path.read_text()
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
            body = response.read()
    except OSError as e:
        raise CorpusError(
            f"corpus 'tinyshakespeare' is not in {folder} and could not be downloaded ({e}). Options: "
            f"place tinyshakespeare.txt (sha256 {TINYSHAKESPEARE_SHA256[:12]}...) in that folder, or name "
            "another folder with --data-dir / $JAXRNN_DATA; train on any file with --text PATH; or use the "
            "offline corpus with --corpus python-stdlib."
        ) from e
    if hashlib.sha256(body).hexdigest() != TINYSHAKESPEARE_SHA256:
        raise CorpusError(f"{TINYSHAKESPEARE_URL}: the download's SHA-256 does not match; not cached")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(body)
    tmp.replace(path)  # atomic: a crash never leaves half a file under the real name
    return body.decode()


def _python_stdlib(max_chars: int) -> str:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.glob("*.py")):  # top-level modules only: plain, varied Python
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = text.replace(DOCUMENT_SEPARATOR, "")
        docs.append(text)
        total += len(text) + 1
        if total >= max_chars:
            break
    if not docs:
        raise CorpusError(f"corpus 'python-stdlib': no .py files under {root}; use --text PATH")
    return DOCUMENT_SEPARATOR.join(docs)[:max_chars]


def _python_docs(max_chars: int) -> str:
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions package it apart
        raise CorpusError(f"corpus 'python-docs': this Python has no pydoc_data ({e}); use --text PATH") from None
    docs = [topics[k].replace(DOCUMENT_SEPARATOR, "") for k in sorted(topics)]
    return DOCUMENT_SEPARATOR.join(docs)[:max_chars]


#: More than this fraction of control characters (other than tab, newline, carriage return, form
#: feed, vertical tab) and a file is taken for binary: text has few (a NUL between documents).
MAX_CONTROL_FRACTION = 0.05


def read_text_file(path: str | os.PathLike, what: str = "path") -> str:
    """A UTF-8 text file's contents; :class:`CorpusError` if it is not one (invalid UTF-8, or more
    than :data:`MAX_CONTROL_FRACTION` control characters, as in a binary file).

    Example::

      >>> import pathlib, tempfile
      >>> from jaxrnn.programs.data import read_text_file
      >>> binary = pathlib.Path(tempfile.mkdtemp()) / "model.bin"
      >>> _ = binary.write_bytes(bytes(range(256)))
      >>> read_text_file(binary, "--text")
      Traceback (most recent call last):
      ...
      jaxrnn.programs.data.CorpusError: --text: ... is not a UTF-8 text file: invalid UTF-8 at byte 128 (0x80); convert it to UTF-8 (e.g. iconv -t utf-8) or give a text file
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{what}: {path} is not a UTF-8 text file: invalid UTF-8 at byte {e.start} (0x{data[e.start]:02x}); "
            "convert it to UTF-8 (e.g. iconv -t utf-8) or give a text file"
        ) from None
    control = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f\v") + text.count("\x7f")
    if text and control > MAX_CONTROL_FRACTION * len(text):
        raise CorpusError(
            f"{what}: {path} does not look like text: {control} of its {len(text)} characters "
            f"({100 * control / len(text):.0f}%) are control characters such as NUL; give a text file"
        )
    return text


def load_corpus(
    name: str | None = None, *, text_path: str | os.PathLike | None = None,
    folder: str | os.PathLike | None = None, max_chars: int = 2_000_000,
) -> Corpus:
    """Load a corpus by ``name`` (see :data:`CORPORA`) or from ``text_path``.

    Example::

      >>> from jaxrnn.programs.data import load_corpus
      >>> c = load_corpus("python-stdlib", max_chars=10_000)
      >>> len(c.text), c.decode(c.encode("def")) == "def"
      (10000, True)
    """
    if (name is None) == (text_path is None):
        raise ValueError(f"corpus: give exactly one of a corpus name {CORPORA} or a text path, got {name!r}, {text_path!r}")
    if text_path is not None:
        path = pathlib.Path(text_path)
        if not path.is_file():
            raise CorpusError(f"--text: {path} is not a file")
        text, name = read_text_file(path, "--text"), path.name
    elif name == "tinyshakespeare":
        text = _tinyshakespeare(data_dir(folder))
    elif name == "python-stdlib":
        text = _python_stdlib(max_chars)
    elif name == "python-docs":
        text = _python_docs(max_chars)
    else:
        raise ValueError(f"corpus: expected one of {CORPORA}, got {name!r}")
    if len(text) < 2:
        raise CorpusError(f"corpus {name!r} has {len(text)} characters; need at least 2")
    return Corpus(name, text, "".join(sorted(set(text))))
