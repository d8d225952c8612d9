"""Public-domain book text from Debian's SWORD modules as plain-text corpus files.

    apt-get install sword-text-web sword-comm-tdavid libsword-utils
    python scripts/prepare_sword.py --out data/text20m/train [--modules engWEB2015eb,TDavid]
        [--also data/sotu/train] [--file_chars 400000]

Each module is exported with `mod2imp` (World English Bible: `engWEB2015eb`; Spurgeon's
Treasury of David: `TDavid`), its OSIS markup and entry headers stripped, and written as
`<module>_<i>.txt` files of about `--file_chars` characters (cut at paragraph ends). `--also`
copies the `.txt` files of other corpus directories beside them (e.g. the SOTU training split),
so one directory holds the whole training text. Prints the character count per module.
"""

import argparse
import html
import os
import re
import shutil
import subprocess
import sys


def module_text(name: str) -> str:
  try:
    raw = subprocess.run(["mod2imp", name], capture_output=True, check=True).stdout
  except FileNotFoundError:
    sys.exit("error: mod2imp not found (apt-get install libsword-utils)")
  except subprocess.CalledProcessError as e:
    first = e.stderr.decode(errors="replace").strip().splitlines()[:1]
    sys.exit(f"error: mod2imp {name} failed (is its sword-* package installed?): "
             f"{first[0] if first else 'exit code ' + str(e.returncode)}")
  t = raw.decode("utf-8", errors="replace")
  if not t.strip():
    sys.exit(f"error: module {name} exported no text (is its sword-* package installed?)")
  t = re.sub(r"^\$\$\$.*$", "\n", t, flags=re.M)
  t = html.unescape(re.sub(r"<[^>]*>", " ", t))
  t = re.sub(r"[ \t]+", " ", t)
  return re.sub(r"\n\s*\n+", "\n\n", t).strip() + "\n"


def write_parts(text: str, out: str, stem: str, file_chars: int) -> int:
  paras, buf, n, i = text.split("\n\n"), [], 0, 0
  for p in paras + [None]:
    if p is not None:
      buf.append(p)
      n += len(p) + 2
    if buf and (p is None or n >= file_chars):
      with open(os.path.join(out, f"{stem}_{i:03d}.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(buf) + "\n")
      buf, n, i = [], 0, i + 1
  return i


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--modules", default="engWEB2015eb,TDavid")
  ap.add_argument("--also", default="", help="comma-separated corpus dirs whose .txt to copy")
  ap.add_argument("--file_chars", type=int, default=400_000)
  a = ap.parse_args()
  os.makedirs(a.out, exist_ok=True)
  for m in a.modules.split(","):
    t = module_text(m)
    k = write_parts(t, a.out, m, a.file_chars)
    print(f"{m}: {len(t):,} characters in {k} files")
  for d in filter(None, a.also.split(",")):
    names = sorted(x for x in os.listdir(d) if x.endswith(".txt"))
    for x in names:
      shutil.copy(os.path.join(d, x), os.path.join(a.out, x))
    print(f"{d}: {len(names)} files copied")


if __name__ == "__main__":
  main()
