"""Build a JSONL corpus of real English prose from what every Python installation ships.

    python tools/make_sample_corpus.py --output corpus.jsonl [--max-mb 4]

No download: the documents are

* the Python Language Reference topics of ``pydoc_data.topics`` (what ``help("if")``
  prints), one document per topic, and
* the docstrings of the standard library's modules, classes and functions, read from
  the ``.py`` sources with ``ast`` (nothing is imported, so nothing runs), one document
  per docstring of at least ``--min-chars`` characters.

Each line is ``{"text": ..., "source": "module:qualname"}``.  Documents are shuffled
with ``--seed`` so train/valid/test splits mix topics; the output is deterministic for a
given Python version (the text itself changes between Python releases).
"""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import random
import sys
import sysconfig

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
             "lib2to3", "turtledemo", "ensurepip", "pydoc_data", "config-3", "lib-dynload"}


def topic_documents():
    """``pydoc_data.topics``: the Language Reference sections, one per topic."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [(f"pydoc_data.topics:{name}", topics[name].strip()) for name in sorted(topics)]


def stdlib_sources(root: str):
    """Every ``.py`` under the standard library, sorted, skipping tests and site-packages."""
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith("config-"))
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(d, f)


def docstring_documents(path: str, root: str, min_chars: int):
    """The docstrings of one source file as ``(source, text)`` pairs."""
    module = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []

    def visit(node, qual):
        doc = ast.get_docstring(node, clean=False)
        if doc:
            text = inspect.cleandoc(doc).strip()
            if len(text) >= min_chars:
                out.append((f"{module}:{qual}" if qual else module, text))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if not child.name.startswith("_") or child.name == "__init__":
                    visit(child, f"{qual}.{child.name}" if qual else child.name)

    visit(tree, "")
    return out


def build_corpus(max_mb: float | None = None, min_chars: int = 200, seed: int = 1234):
    """The list of ``{"text", "source"}`` documents (shuffled, capped at ``max_mb``)."""
    root = sysconfig.get_paths()["stdlib"]
    docs = topic_documents()
    sources = list(stdlib_sources(root))
    random.Random(seed).shuffle(sources)  # with --max-mb, parse only what is needed
    budget = 2 * max_mb * 1e6 if max_mb is not None else float("inf")
    nbytes = sum(len(t) for _, t in docs)
    for path in sources:
        if nbytes >= budget:
            break
        found = docstring_documents(path, root, min_chars)
        docs.extend(found)
        nbytes += sum(len(t) for _, t in found)
    seen, unique = set(), []
    for source, text in docs:  # many docstrings are repeated verbatim (overloads, aliases)
        if text not in seen:
            seen.add(text)
            unique.append({"text": text, "source": source})
    random.Random(seed).shuffle(unique)
    if max_mb is not None:
        budget, kept = int(max_mb * 1e6), []
        for d in unique:
            budget -= len(d["text"].encode("utf-8"))
            if budget < 0:
                break
            kept.append(d)
        unique = kept
    return unique


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="JSONL file to write")
    p.add_argument("--max-mb", type=float, default=None, help="stop after this much text")
    p.add_argument("--min-chars", type=int, default=200, help="shortest docstring kept")
    p.add_argument("--seed", type=int, default=1234, help="document order")
    args = p.parse_args(argv)
    docs = build_corpus(args.max_mb, args.min_chars, args.seed)
    if not docs:
        print("error: found no documentation text in this Python installation", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)
    nbytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    print(f"wrote {args.output}: {len(docs)} documents, {nbytes / 1e6:.2f} MB of text "
          f"(Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
