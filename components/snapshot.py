"""Component snapshot: check sources and MLflow, fingerprint the data, open the MLflow run (CPU; never cached).

Its digest is an input of sample_splits, so sample_splits' cache key changes exactly when the data does: new images
under the same prefix are picked up by the next (scheduled) run, unchanged data reuses the cached splits. Likewise
the base model's identity (a checkpoint file's SHA-256, or the open_clip tag) is an input of cache_teacher, so a
checkpoint replaced under the same path gets a new teacher cache. The MLflow run id goes only to the never-cached
steps (finetune, evaluate, register), so it does not defeat caching.
"""

from typing import NamedTuple

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def snapshot(
    data_uri: str,
    eval_data_uris: list,
    tracking_uri: str,
    experiment_name: str,
    kfp_run_id: str,
    kfp_run_name: str,
    config: str,
    arch: str,
    pretrained: str,
    overrides: dict,
) -> NamedTuple("Outputs", [("digest", str), ("mlflow_run_id", str), ("model_identity", str)]):
    from collections import namedtuple

    from clipcite.models import checkpoint_identity
    from clipcite.steps.run_config import run_config
    from clipcite.steps.snapshot import run

    model = run_config(config, overrides, arch=arch, pretrained=pretrained).model
    identity = checkpoint_identity(model.arch, model.pretrained, init_seed=model.init_seed)
    digest, run_id = run(
        data_uri,
        tuple(eval_data_uris),
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        kfp_run_id=kfp_run_id,
        run_name=kfp_run_name,
        model_identity=identity,
    )
    return namedtuple("Outputs", ["digest", "mlflow_run_id", "model_identity"])(digest, run_id, identity)
