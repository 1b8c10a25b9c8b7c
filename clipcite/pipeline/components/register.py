"""Component register: merge the per-domain evaluations, register the model, apply the promotion gate (CPU).

The model is already a pipeline artifact (finetune's output), so a registry failure here loses no training: fix
the registry and rerun this step. With tracking off, the record and the report are the only registration.
"""

from typing import List  # noqa: UP035  (KFP's type parser wants typing.List)

from kfp import dsl

from clipcite.pipeline.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    model: dsl.Input[dsl.Model],
    reports: dsl.Input[List[dsl.Artifact]],  # noqa: UP006
    run_config: dsl.Input[dsl.Artifact],
    mlflow_run: dsl.Input[dsl.Artifact],
    registered_model_name: str,
    experiment_name: str,
    tracking_uri: str,
    summary: dsl.Output[dsl.Markdown],
    record: dsl.Output[dsl.Artifact],
    selection: dsl.Input[dsl.Artifact] = None,
):
    """``selection``: select's choice when the model won among candidate methods (absent with one method)."""
    from clipcite.steps.artifact_io import read_config, read_mlflow_run
    from clipcite.steps.register import run

    registration = run(
        model.path,
        [r.path for r in reports],
        record.path,
        summary.path,
        read_config(run_config.path),
        registered_model_name=registered_model_name,
        experiment_name=experiment_name,
        tracking_uri=tracking_uri,
        mlflow_run_id=read_mlflow_run(mlflow_run.path),
        model_ref=model.uri,  # read at .path (in the pod), recorded by .uri (where the artifact lives)
        selection_uri=selection.path if selection is not None else "",
    )
    entry = registration.registry
    record.metadata.update(
        {
            "model_name": registered_model_name,
            **registration.mean.get("finetuned", {}),
            **({"version": entry.version, "decision": entry.decision, "reason": entry.reason} if entry else {}),
        }
    )
