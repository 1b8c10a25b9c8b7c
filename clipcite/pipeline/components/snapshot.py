"""Component snapshot: check sources and MLflow, fingerprint the data, open the MLflow run (CPU; never cached).

Its digest is an input of sample_splits, so sample_splits' cache key changes exactly when the data does: new images
under the same prefix are picked up by the next (scheduled) run, unchanged data reuses the cached splits. Likewise
the base model's identity (a checkpoint file's SHA-256, or the open_clip tag) is an input of cache_teacher, so a
checkpoint replaced under the same path gets a new teacher cache. The MLflow run goes only to the never-cached
steps (finetune, evaluate, register), so it does not defeat caching. The run's config parameters (shots, seed,
arch, pretrained, method) name and describe the MLflow run.
"""

from typing import NamedTuple

from kfp import dsl

from clipcite.pipeline.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def snapshot(
    data_uri: str,
    eval_data_uris: list,
    tracking_uri: str,
    experiment_name: str,
    kfp_run_id: str,
    kfp_run_name: str,
    config: str,
    shots: int,
    seed: int,
    arch: str,
    pretrained: str,
    method: str,
    overrides: dict,
    mlflow_run: dsl.Output[dsl.Artifact],
) -> NamedTuple("Outputs", [("digest", str), ("model_identity", str)]):
    from collections import namedtuple

    from clipcite.steps.snapshot import for_pipeline

    found = for_pipeline(
        data_uri,
        tuple(eval_data_uris),
        preset=config,
        overrides=overrides,
        shots=shots,
        seed=seed,
        arch=arch,
        pretrained=pretrained,
        method=method,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        kfp_run_id=kfp_run_id,
        run_name=kfp_run_name,
        run_uri=mlflow_run.path,
    )
    mlflow_run.metadata.update({"mlflow_run_id": found.mlflow_run_id})
    return namedtuple("Outputs", ["digest", "model_identity"])(found.digest, found.model_identity)
