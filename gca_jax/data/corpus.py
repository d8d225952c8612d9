"""Reading a text corpus into documents (docs/method.md §4: books, one document each).

A corpus path is a text file (one document), a JSONL file (one document per line, the text in
field `text_field`), or a directory searched recursively for `*.txt`, `*.md` (one document per
file) and `*.jsonl` files, sorted by path components (`a/x.txt` before `a.txt`). Names
starting with "." are skipped in directories. Unusable input is skipped and counted in
`CorpusStats`, never silently lost.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md")
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


def list_corpus_files(path: str | os.PathLike) -> tuple[list[Path], int]:
  """Files `read_documents` would read, sorted, and the count of ignored directory files."""
  p = Path(path)
  if not p.exists():
    raise CorpusError(f"corpus path {str(p)!r} does not exist")
  if p.is_file():
    return [p], 0
  files, ignored = [], 0
  for f in sorted(p.rglob("*")):
    rel = f.relative_to(p)
    if any(part.startswith(".") for part in rel.parts) or not f.is_file():
      continue
    if f.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES:
      files.append(f)
    else:
      ignored += 1
  if not files:
    raise CorpusError(f"corpus directory {str(p)!r} holds no *.txt, *.md or *.jsonl files "
                      f"({ignored} files with other suffixes ignored)")
  return files, ignored


def _read_text(f: Path, name: str, stats: CorpusStats) -> str | None:
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


def read_documents(path: str | os.PathLike, *, text_field: str = "text"
                   ) -> tuple[list[str], CorpusStats]:
  """All documents under `path` in sorted file order, and what was read and skipped.

  Text files are kept verbatim (one document each); JSONL lines give one document each.
  Raises CorpusError naming the path and the skip counts when no usable document remains.
  """
  files, ignored = list_corpus_files(path)
  root = Path(path)
  stats = CorpusStats(path=str(root), ignored_files=ignored)
  docs: list[str] = []
  for f in files:
    name = f.name if f == root else f.relative_to(root).as_posix()
    stats.files += 1
    text = _read_text(f, name, stats)
    if text is None:
      continue
    if f.suffix.lower() in JSONL_SUFFIXES:
      docs.extend(_jsonl_documents(text, name, text_field, stats))
    elif not text.strip():
      stats._skip("empty", name)
    else:
      docs.append(text)
  stats.documents = len(docs)
  stats.chars = sum(len(d) for d in docs)
  if not docs:
    raise CorpusError(f"corpus {str(root)!r} has no usable documents: {stats.summary()}")
  return docs, stats
