#!/usr/bin/env bash
# Every option, flag, parameter, attribute, secret key and metric named in the first column
# of a table in docs/CONFIGURATION.md must appear in at least one test: the cargo tests
# (tests/ directories and #[cfg(test)] modules) or the test scripts under tests/. Prints
# the names no test mentions and fails if there are any.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import glob, re, sys
names = set()
for line in open("docs/CONFIGURATION.md"):
    if line.startswith("| `"):
        for n in re.findall(r"`([^`]+)`", line.split("|")[1]):
            n = n.split("=")[0].rstrip("*").strip()
            if n and not n.isupper():  # SOURCE, MOUNTPOINT: placeholders
                names.add(n)
corpus = []
for f in glob.glob("crates/*/tests/**/*.rs", recursive=True) + glob.glob("tests/**/*", recursive=True):
    try:
        corpus.append(open(f).read())
    except (IsADirectoryError, UnicodeDecodeError):
        pass
for f in glob.glob("crates/*/src/**/*.rs", recursive=True):
    text = open(f).read()
    i = text.find("#[cfg(test)]")
    if i >= 0:
        corpus.append(text[i:])
corpus = "\n".join(corpus)
missing = sorted(n for n in names if n not in corpus)
print(f"option coverage: {len(names) - len(missing)} of {len(names)} documented names appear in a test")
if missing:
    print("not in any test: " + ", ".join(missing), file=sys.stderr)
    sys.exit(1)
PY
