"""Component snapshot: check sources and MLflow, fingerprint the data, open the MLflow run (CPU; never cached).

Its digest is an input of sample_splits, so sample_splits' cache key changes exactly when the data does: new images
under the same prefix are picked up by the next (scheduled) run, unchanged data reuses the cached splits. The MLflow
run id goes only to the never-cached steps (finetune, evaluate, register), so it does not defeat caching.
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
) -> NamedTuple("Outputs", [("digest", str), ("mlflow_run_id", str)]):
    from collections import namedtuple

    from clipcite.steps.snapshot import run

    digest, run_id = run(
        data_uri,
        tuple(eval_data_uris),
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        kfp_run_id=kfp_run_id,
        run_name=kfp_run_name,
    )
    return namedtuple("Outputs", ["digest", "mlflow_run_id"])(digest, run_id)
