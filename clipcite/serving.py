"""Resolve ``models:/NAME@champion`` for a deployment: the version holding the alias now and its artifact URI.

The serving manifests (``manifests/serving/``) take the result from ``manifests/serving/champion/champion.env``, so a
deployment names one fixed version: every replica loads the same weights, moving the alias later changes nothing
running until the next deploy, and a rollback is "move the alias back, resolve, apply"::

    python -m clipcite.serving --name clipcite --out manifests/serving/champion/champion.env
    kubectl apply -n <profile namespace> -k manifests/serving/deployment     # or manifests/serving/kserve
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clipcite import registry, storage, tracking

log = logging.getLogger(__name__)
KEYS = ("name", "alias", "version", "artifact-uri")


def resolve(client, name: str, alias: str = registry.CHAMPION) -> dict:
    """``{name, alias, version, artifact-uri}`` of the version ``alias`` points at; TrackingError when none does."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except Exception as e:  # MlflowException: no such model or alias
        raise tracking.TrackingError(
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
    """Write ``champion.env`` atomically (a temp file beside it, then renamed)."""
    storage.write_text(path, env_text(resolved))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipcite.serving",
        description="Resolve NAME@ALIAS to a version and artifact URI and write the serving manifests' champion.env.",
    )
    parser.add_argument("--name", default="clipcite", help="registered model name")
    parser.add_argument("--alias", default=registry.CHAMPION)
    parser.add_argument("--tracking-uri", default="", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--out", default="manifests/serving/champion/champion.env", help="'-' prints it instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        resolved = resolve(tracking.connect(args.tracking_uri), args.name, args.alias)
    except tracking.TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(env_text(resolved))
    else:
        write_env(resolved, Path(args.out))
        log.info(
            "%s@%s = v%s (%s) -> %s", args.name, args.alias, resolved["version"], resolved["artifact-uri"], args.out
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
