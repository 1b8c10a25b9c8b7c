"""Component finetune: CLIP-CITE on the train split, then the weight-space ensemble (GPU; never cached)."""

from kfp import dsl

from clipcite.pipeline.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune(
    splits: dsl.Input[dsl.Dataset],
    run_config: dsl.Input[dsl.Artifact],
    teacher: dsl.Input[dsl.Dataset],
    mlflow_run: dsl.Input[dsl.Artifact],
    tracking_uri: str,
    checkpoint_root: str,
    kfp_run_id: str,
    model: dsl.Output[dsl.Model],
    curves: dsl.Output[dsl.Metrics],
    method: str = "",
):
    """``method``: "" trains the config's ``train.method``; a name trains that candidate (pipeline.py's methods)."""
    import dataclasses

    from clipcite.steps.artifact_io import read_config, read_mlflow_run
    from clipcite.steps.finetune import checkpoint_uri, run

    summary = run(
        splits.path,
        model.path,
        read_config(run_config.path),
        cache_uri=teacher.path,
        tracking_uri=tracking_uri,
        mlflow_run_id=read_mlflow_run(mlflow_run.path),
        checkpoint_dir=checkpoint_uri(checkpoint_root, kfp_run_id, method),
        splits_ref=splits.uri,  # read at .path (in the pod), recorded by .uri (where the artifact lives)
        method=method,
    )
    model.metadata.update({k: v for k, v in dataclasses.asdict(summary).items() if v is not None})
    for key in ("steps", "epochs", "images_per_second"):
        curves.log_metric(key, float(getattr(summary, key)))
