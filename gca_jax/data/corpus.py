"""Reading a text corpus into documents (docs/method.md §4: books, one document each).

A corpus path is a text file (one document), a JSONL file (one document per line, the text in
field `text_field`), a directory searched recursively for `*.txt`, `*.md` (one document per
file) and `*.jsonl` files, or a glob (`*`, `?`, `[...]`; no `**`) whose matches are such files or
directories. Files are sorted by path components (`a/x.txt` before `a.txt`) relative to the
root (the directory, or the glob's part before its first wildcard); names starting with "." are
skipped in directories. Paths go through `etils.epath`, so `gs://...` works where epath can
reach it. Unusable input is skipped and counted in `CorpusStats`, never silently lost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from etils import epath

TEXT_SUFFIXES = (".txt", ".md")
GLOB_CHARS = re.compile(r"[*?\[]")
JSONL_SUFFIXES = (".jsonl",)
MAX_EXAMPLES = 5


class CorpusError(ValueError):
  """The corpus cannot be used; the message names the path and the cause."""


@dataclasses.dataclass
class CorpusStats:
  """What `read_documents` read and what it skipped, with the first few offending names.

  empty: empty or whitespace-only files and JSONL records; non_utf8: files that do not decode
  as UTF-8; bad_json: JSONL lines that are not a JSON object; missing_field: JSONL objects
  without a string `text_field`. examples maps each of these reasons to up to 5 "file" or
  "file:line" names. ignored_files: files in a directory with an unsupported suffix.
  """

  path: str
  files: int = 0
  documents: int = 0
  chars: int = 0
  empty: int = 0
  non_utf8: int = 0
  bad_json: int = 0
  missing_field: int = 0
  ignored_files: int = 0
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  @property
  def skipped(self) -> int:
    return self.empty + self.non_utf8 + self.bad_json + self.missing_field

  def _skip(self, reason: str, where: str) -> None:
    setattr(self, reason, getattr(self, reason) + 1)
    names = self.examples.setdefault(reason, [])
    if len(names) < MAX_EXAMPLES:
      names.append(where)

  def summary(self) -> str:
    """One line: documents read, then each skip reason with its count and first names."""
    parts = [f"{self.documents} documents ({self.chars} chars) from {self.files} files "
             f"under {self.path}"]
    for reason in ("empty", "non_utf8", "bad_json", "missing_field"):
      n = getattr(self, reason)
      if n:
        parts.append(f"skipped {n} {reason} (e.g. {', '.join(self.examples[reason])})")
    if self.ignored_files:
      parts.append(f"ignored {self.ignored_files} files with other suffixes")
    return "; ".join(parts)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "CorpusStats":
    return cls(**d)

  def add(self, other: "CorpusStats") -> None:
    """Adds the counts of `other` (one more file's stats) and its example names, up to 5."""
    for f in ("files", "documents", "chars", "empty", "non_utf8", "bad_json", "missing_field",
              "ignored_files"):
      setattr(self, f, getattr(self, f) + getattr(other, f))
    for reason, names in other.examples.items():
      mine = self.examples.setdefault(reason, [])
      mine.extend(names[:MAX_EXAMPLES - len(mine)])


def _sort_key(f: epath.Path, root: epath.Path) -> tuple[str, ...]:
  return f.relative_to(root).parts if f != root else (f.name,)


def _walk(d: epath.Path, root: epath.Path, files: list, counts: list) -> None:
  for f in d.iterdir():
    if f.name.startswith("."):
      continue
    if f.is_dir():
      _walk(f, root, files, counts)
    elif not f.is_file():
      continue
    elif f.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES:
      files.append(f)
    else:
      counts[0] += 1


def corpus_root(path: str | os.PathLike) -> epath.Path:
  """The directory names are relative to: `path` itself, or a glob's part before its first
  wildcard (a file's root is the file)."""
  s = os.fspath(path)
  m = GLOB_CHARS.search(s)
  if m is None:
    return epath.Path(s)
  head = s[:m.start()]
  return epath.Path(head[:head.rfind("/") + 1] or ".")


def list_corpus_files(path: str | os.PathLike) -> tuple[list[epath.Path], int]:
  """Files `read_documents` would read, sorted, and the count of ignored directory files."""
  s = os.fspath(path)
  root = corpus_root(s)
  if GLOB_CHARS.search(s) is None:
    if not root.exists():
      raise CorpusError(f"corpus path {s!r} does not exist")
    if not root.is_dir():
      return [root], 0
    tops = [root]
  else:
    if "**" in s:
      raise CorpusError(f"corpus glob {s!r}: '**' is not supported (a directory is searched "
                        f"recursively; glob the directories instead)")
    pattern = s[len(os.fspath(root)):].lstrip("/") if s.startswith(os.fspath(root)) else s
    tops = sorted(root.glob(pattern), key=lambda f: _sort_key(f, root))
    if not tops:
      raise CorpusError(f"corpus glob {s!r} matches no files")
  files: list[epath.Path] = []
  counts = [0]
  for t in tops:
    if t.is_dir():
      _walk(t, root, files, counts)
    elif t.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES:
      files.append(t)
    else:
      counts[0] += 1
  files.sort(key=lambda f: _sort_key(f, root))
  if not files:
    raise CorpusError(f"corpus {'directory' if GLOB_CHARS.search(s) is None else 'glob'} {s!r} "
                      f"holds no *.txt, *.md or *.jsonl files ({counts[0]} files with other "
                      f"suffixes ignored)")
  return files, counts[0]


def file_name(f: epath.Path, root: epath.Path) -> str:
  """How reports name file `f` of the corpus at `root`: relative to it (a single file: its name)."""
  return f.name if f == root else f.relative_to(root).as_posix()


def _read_text(f: epath.Path, name: str, stats: CorpusStats) -> str | None:
  try:
    return f.read_bytes().decode("utf-8")
  except UnicodeDecodeError:
    stats._skip("non_utf8", name)
    return None


def _jsonl_documents(text: str, name: str, text_field: str, stats: CorpusStats) -> list[str]:
  docs = []
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    where = f"{name}:{lineno}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      stats._skip("bad_json", where)
      continue
    if not isinstance(record, dict):
      stats._skip("bad_json", where)
      continue
    doc = record.get(text_field)
    if not isinstance(doc, str):
      stats._skip("missing_field", where)
    elif not doc.strip():
      stats._skip("empty", where)
    else:
      docs.append(doc)
  return docs


def read_file_documents(f: epath.Path, name: str, stats: CorpusStats, *,
                        text_field: str = "text") -> list[str]:
  """The documents of one corpus file (text: one; JSONL: one per usable line); skips are
  counted in `stats` (its `files` +1; `documents`/`chars` are left to the caller)."""
  stats.files += 1
  text = _read_text(f, name, stats)
  if text is None:
    return []
  if f.suffix.lower() in JSONL_SUFFIXES:
    return _jsonl_documents(text, name, text_field, stats)
  if not text.strip():
    stats._skip("empty", name)
    return []
  return [text]


def read_documents(path: str | os.PathLike, *, text_field: str = "text"
                   ) -> tuple[list[str], CorpusStats]:
  """All documents under `path` in sorted file order, and what was read and skipped.

  Text files are kept verbatim (one document each); JSONL lines give one document each.
  Raises CorpusError naming the path and the skip counts when no usable document remains.
  """
  files, ignored = list_corpus_files(path)
  root = corpus_root(path)
  s = os.fspath(path)
  stats = CorpusStats(path=s if GLOB_CHARS.search(s) else str(root), ignored_files=ignored)
  docs: list[str] = []
  for f in files:
    docs.extend(read_file_documents(f, file_name(f, root), stats, text_field=text_field))
  stats.documents = len(docs)
  stats.chars = sum(len(d) for d in docs)
  if not docs:
    raise CorpusError(f"corpus {stats.path!r} has no usable documents: {stats.summary()}")
  return docs, stats
