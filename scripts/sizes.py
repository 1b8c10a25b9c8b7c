"""The longest files and functions of the project's code, now or at a git revision (a design review's evidence).

    python scripts/sizes.py              # the working tree
    python scripts/sizes.py --rev HEAD~20 --top 15

Counts lines of code as written (docstrings and comments included: they are read too). Functions are every
``def`` at any depth, measured from the ``def`` line (decorators excluded) to the last line of its body.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

ROOTS = ("clipcite", "components", "pipeline.py", "clipcite/pipeline/local_run.py")


def sources(rev: str | None) -> dict[str, str]:
    """Path -> text of every Python file under ROOTS, from the working tree or from ``rev``."""
    if rev is None:
        files = [p for root in ROOTS for p in (Path(root).rglob("*.py") if Path(root).is_dir() else [Path(root)])]
        return {str(p): p.read_text() for p in files if p.exists()}
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, *ROOTS], capture_output=True, text=True)
    names = [n for n in listed.stdout.splitlines() if n.endswith(".py")]
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], capture_output=True, text=True).stdout for n in names}


def functions(path: str, text: str) -> list[tuple[int, str]]:
    """(length in lines, "path:line name") of every function in ``text``."""
    found = []
    for node in ast.walk(ast.parse(text, path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append((node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="a git revision (default: the working tree)")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    texts = sources(args.rev)
    files = sorted(((len(t.splitlines()), p) for p, t in texts.items()), reverse=True)
    funcs = sorted((f for p, t in texts.items() for f in functions(p, t)), reverse=True)
    print(f"{args.rev or 'working tree'}: {len(texts)} files, {sum(n for n, _ in files)} lines, {len(funcs)} functions")
    print("\nlongest files (lines)\n" + "\n".join(f"{n:6d}  {p}" for n, p in files[: args.top]))
    print("\nlongest functions (lines)\n" + "\n".join(f"{n:6d}  {p}" for n, p in funcs[: args.top]))
    over = [f for f in funcs if f[0] > 60]
    print(f"\nfunctions over 60 lines: {len(over)}")


if __name__ == "__main__":
    main()
