"""Component validate: one candidate model scored on the validation split (GPU; one task per method; never cached)."""

from kfp import dsl

from clipcite.pipeline.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def validate(
    model: dsl.Input[dsl.Model],
    splits: dsl.Input[dsl.Dataset],
    run_config: dsl.Input[dsl.Artifact],
    mlflow_run: dsl.Input[dsl.Artifact],
    tracking_uri: str,
    scores: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    from clipcite.steps.artifact_io import read_config, read_mlflow_run
    from clipcite.steps.validate import run

    body = run(
        model.path,
        splits.path,
        scores.path,
        read_config(run_config.path),
        tracking_uri=tracking_uri,
        mlflow_run_id=read_mlflow_run(mlflow_run.path),
    )
    for key in ("val_top1", "val_balanced_accuracy", "val_images", "trainable_parameters", "seconds", "artefact_bytes"):
        metrics.log_metric(key, float(getattr(body, key)))
    scores.metadata.update({"method": body.method})
