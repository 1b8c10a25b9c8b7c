"""The model registry: versions (one per pipeline run, also across lost replies), the ``champion`` alias, model
cards as descriptions, and the version table ``clipcite champion`` prints."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from clipcite.records import META_FILE, MODEL_ARTIFACT
from clipcite.tracking.model_card import promoted_by_hand
from clipcite.tracking.runs import TrackingError, http_retries, process_uris

log = logging.getLogger(__name__)

CHAMPION = "champion"
RUN_TAG = "clipcite.pipeline_run"  # on a model version: the pipeline run that registered it (rerun -> same version)


def find_version(client: MlflowClient, name: str, pipeline_run_id: str):
    """The version a pipeline run already registered (a rerun of the register step must not add another)."""
    with contextlib.suppress(MlflowException):
        for version in client.search_model_versions(f"name = '{name}' and tags.`{RUN_TAG}` = '{pipeline_run_id}'"):
            return version
    return None


REGISTER_ATTEMPTS = 4  # creating a version: tries, 2 s, 4 s, 8 s apart (each lookup has MLflow's own retries)


def register_version(client: MlflowClient, name: str, model_uri: str, *, run_id: str, pipeline_run_id: str, tags: dict):
    """Create ``name`` if needed and a version from ``model_uri`` tagged with the pipeline run and ``tags``.

    Exactly one version per pipeline run, also when the server or the network fails: MLflow's client retries
    every HTTP method, so a reply lost after the server created the version would create a second one. Creation
    is therefore sent once per try (no HTTP retries); after a failed try the version tagged with this pipeline
    run is looked up, and only when there is none is creation tried again."""
    with contextlib.suppress(MlflowException):
        client.create_registered_model(name)  # described by the register step (clipcite.tracking.model_card)
    all_tags = {RUN_TAG: pipeline_run_id, **{k: str(v) for k, v in tags.items()}}
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        try:
            # A local (sqlite) registry finds a models:/m-... source through the process-wide tracking URI, not
            # the client's (mlflow 3.17, SqlAlchemyStore.create_model_version); a server finds it on its own.
            with http_retries(0), process_uris(client.tracking_uri):
                version = client.create_model_version(name, model_uri, run_id=run_id, tags=all_tags, model_id=model_id)
            break
        except Exception as e:  # MlflowException; a dropped connection arrives wrapped in one
            version = find_version(client, name, pipeline_run_id)
            if version is not None:  # created, but the reply was lost
                log.warning("%s: the registry created version %s before the reply was lost", name, version.version)
                break
            status = e.get_http_status_code() if isinstance(e, MlflowException) else 500
            if status < 500 or attempt == REGISTER_ATTEMPTS:
                raise TrackingError(
                    f"the model registry at {client.tracking_uri} did not register a version of {name!r} from "
                    f"{model_uri} ({attempt} tries): {e}"
                ) from e
            log.warning("%s: registering failed (%s); try %d of %d", name, e, attempt + 1, REGISTER_ATTEMPTS)
            time.sleep(2**attempt)
    log.info("registered %s version %s", name, version.version)
    return version


def champion(client: MlflowClient, name: str):
    """The version holding the ``champion`` alias, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def download_model_dir(client: MlflowClient, name: str, version: str, dst: Path) -> Path:
    """The weights folder of a registered version (what :func:`clipcite.model.clip.load_saved` reads)."""
    source = f"models:/{name}/{version}"
    # models:/ must resolve on the client's store; MLflow 3.17's models:/ repository builds its own client from the
    # process-wide URIs whatever is passed here, so they are set for the call and put back after it
    uri = client.tracking_uri
    with process_uris(uri):
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dst), tracking_uri=uri, registry_uri=uri
            )
        )
    folder = local / "artifacts" / MODEL_ARTIFACT
    if not (folder / META_FILE).is_file():
        raise TrackingError(f"{source} has no clipcite weights under artifacts/{MODEL_ARTIFACT}")
    return folder


def describe_model(client: MlflowClient, name: str, description: str) -> None:
    """The registered model's own description (what the family is, how versions are promoted)."""
    client.update_registered_model(name, description=description)


def describe_version(client: MlflowClient, name: str, version: int | str, card: str) -> None:
    """A version's description: its model card (Markdown, rendered by the registry UI)."""
    client.update_model_version(name, str(version), description=card)


def set_version_tags(client: MlflowClient, name: str, version: int | str, tags: dict) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def set_champion(client: MlflowClient, name: str, version: int | str) -> None:
    client.set_registered_model_alias(name, CHAMPION, str(version))


def promote_by_hand(client: MlflowClient, name: str, version: int, reason: str) -> None:
    """Move ``champion`` to ``version`` outside the gate (a rollback), recording why on the version: its tags and
    its model card (which otherwise still shows the gate's decision, e.g. "challenger", on the alias holder)."""
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as e:
        raise TrackingError(f"{name} has no version {version}: {e}") from e
    previous = champion(client, name)
    set_champion(client, name, version)
    set_version_tags(client, name, version, {"gate.decision": "champion", "gate.reason": f"manual: {reason}"})
    if previous is None or previous.version != found.version:
        before = int(previous.version) if previous is not None else None
        describe_version(
            client, name, version, promoted_by_hand(found.description or "", reason=reason, previous=before)
        )
    log.info("%s: champion v%s -> v%s (%s)", name, previous.version if previous else None, version, reason)


def version_table(client: MlflowClient, name: str) -> list[str]:
    """One line per version, newest first: number, champion marker, gate decision, the mean metrics of the pipeline
    run that registered it, the gate's reason."""
    holder = champion(client, name)
    lines = []
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version))
    for v in versions:
        holds = holder is not None and v.version == holder.version
        decision = v.tags.get("gate.decision", "-")
        if decision == "champion" and not holds:  # the gate's decision then; another version holds the alias now
            decision = "was champion"
        means = _pipeline_metrics(client, v.tags.get(RUN_TAG, ""), "mean/finetuned/")
        metrics = " ".join(f"mean.{k}={val:.2f}" for k, val in sorted(means.items()))
        lines.append(
            f"{'*' if holds else ' '} v{v.version:<4} {decision:<12} {metrics}  {v.tags.get('gate.reason', '')}"
        )
    return lines


def _pipeline_metrics(client: MlflowClient, run_id: str, prefix: str) -> dict:
    """The pipeline run's metrics under ``prefix`` (prefix removed); {} when the run is gone or unnamed."""
    if not run_id:
        return {}
    try:
        metrics = client.get_run(run_id).data.metrics
    except MlflowException:
        return {}
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
