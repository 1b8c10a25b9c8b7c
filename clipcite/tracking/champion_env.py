"""Resolve ``models:/NAME@champion`` for a deployment: the version holding the alias now and its artifact URI.

The serving manifests (``manifests/serving/``) take the result from ``manifests/serving/champion/champion.env``, so a
deployment names one fixed version: every replica loads the same weights, moving the alias later changes nothing
running until the next deploy, and a rollback is "move the alias back, resolve, apply"::

    python -m clipcite.tracking.champion_env --name clipcite --out manifests/serving/champion/champion.env --force
    kubectl apply -n <profile namespace> -k manifests/serving/deployment     # or manifests/serving/kserve

That file is committed (its default, version 0, makes each pod resolve the alias when it starts), so overwriting it
takes ``--force``: a resolved champion.env is a deploy-time record, not something to commit (``git checkout`` the
file afterwards). Its header comment is kept.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from clipcite import storage
from clipcite.tracking import default_uri, registry, runs

log = logging.getLogger(__name__)
KEYS = ("name", "alias", "version", "artifact-uri")


def resolve(client, name: str, alias: str = registry.CHAMPION) -> dict:
    """``{name, alias, version, artifact-uri}`` of the version ``alias`` points at; TrackingError when none does."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except Exception as e:  # MlflowException: no such model or alias
        raise runs.TrackingError(
            f"{name}@{alias}: no such registered model or alias on {client.tracking_uri} ({e}); "
            f"list the versions with `clipcite champion {name}`"
        ) from e
    uri = client.get_model_version_download_uri(name, version.version)
    return {"name": name, "alias": alias, "version": str(version.version), "artifact-uri": uri}


def env_text(resolved: dict) -> str:
    """The ``champion.env`` lines (kustomize's configMapGenerator reads ``key=value``)."""
    for key in KEYS:
        value = str(resolved.get(key, ""))
        if not value or "\n" in value:
            raise ValueError(f"champion.env: {key!r} must be one non-empty line, got {value!r}")
    return "".join(f"{key}={resolved[key]}\n" for key in KEYS)


def write_env(resolved: dict, path: Path) -> None:
    """Write ``champion.env`` atomically (a temp file beside it, then renamed), keeping the comment lines the file
    starts with (the committed one says what writes it and why)."""
    storage.write_text(path, _header(path) + env_text(resolved))


NEW_HEADER = (
    "# Written by `python -m clipcite.tracking.champion_env` before a deploy: the version NAME@ALIAS named then.\n"
)


def _header(path: Path) -> str:
    if not path.is_file():
        return NEW_HEADER
    lines = path.read_text().splitlines(keepends=True)
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    return "".join(header)


def git_tracked(path: Path) -> bool:
    """Whether git tracks ``path`` (False outside a work tree or without git)."""
    try:
        return (
            subprocess.run(
                ["git", "ls-files", "--error-unmatch", path.name],
                cwd=path.parent,
                capture_output=True,
                timeout=10,
                check=False,
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def check_target(path: Path, force: bool) -> None:
    """Refuse to overwrite a git-tracked file without ``--force``: the committed champion.env is a working default,
    and a resolved one (often a local ``file://`` URI) is easy to commit by accident."""
    if not force and path.is_file() and git_tracked(path):
        raise FileExistsError(
            f"{path} is tracked by git (the committed default resolves the alias in each pod); pass --force to "
            "overwrite it for this deploy (and `git checkout` it afterwards, do not commit it), or --out - to print"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipcite.tracking.champion_env",
        description="Resolve NAME@ALIAS to a version and artifact URI and write the serving manifests' champion.env "
        "(kustomize reads it from manifests/serving/champion/). That file is committed: overwriting a git-tracked "
        "file takes --force (restore it with `git checkout` after the deploy; do not commit a resolved one). The "
        "file's header comment is kept.",
    )
    parser.add_argument("--name", default="clipcite", help="registered model name")
    parser.add_argument("--alias", default=registry.CHAMPION, help="the alias to resolve")
    parser.add_argument("--tracking-uri", default="", help=default_uri.HELP)
    parser.add_argument(
        "--out", default="manifests/serving/champion/champion.env", help="the env file to write; '-' prints it instead"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out even when git tracks it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with default_uri.named_by_flag():
            uri = default_uri.default_tracking_uri(args.tracking_uri)
            default_uri.require_store(uri)
            if args.out != "-":
                check_target(Path(args.out), args.force)
            resolved = resolve(runs.connect(uri), args.name, args.alias)
    except (runs.TrackingError, FileNotFoundError, FileExistsError) as e:
        print(f"python -m clipcite.tracking.champion_env: error: {e}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(env_text(resolved))
    else:
        write_env(resolved, Path(args.out))
        log.info(
            "%s@%s = v%s (%s) -> %s", args.name, args.alias, resolved["version"], resolved["artifact-uri"], args.out
        )
    if resolved["artifact-uri"].startswith("file:"):
        log.warning(
            "warning: %s is a path on this machine: pods elsewhere cannot read it (a tracking server with an "
            "artifact store, e.g. mlflow-artifacts:/ or s3://, can); do not commit it",
            resolved["artifact-uri"],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
