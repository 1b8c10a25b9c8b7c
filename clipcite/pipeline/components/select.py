"""Component select: the candidate method that goes on to test and registration (CPU; never cached).

KFP takes a list of artifacts only from a ParallelFor, and finetune's retries do not work inside one (kubeflow/
pipelines#12389), so each method has its own optional pair of inputs here, one pair per name of
``clipcite.train_params.REGISTRY`` (KFP reads a component's inputs from its signature, so they are written out; a
test keeps them equal to the registry); pipeline.py wires the candidates'.
"""

from kfp import dsl

from clipcite.pipeline.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select(
    mlflow_run: dsl.Input[dsl.Artifact],
    tracking_uri: str,
    model: dsl.Output[dsl.Model],
    choice: dsl.Output[dsl.Artifact],
    cite_model: dsl.Input[dsl.Model] = None,
    cite_scores: dsl.Input[dsl.Artifact] = None,
    lora_model: dsl.Input[dsl.Model] = None,
    lora_scores: dsl.Input[dsl.Artifact] = None,
    linear_probe_model: dsl.Input[dsl.Model] = None,
    linear_probe_scores: dsl.Input[dsl.Artifact] = None,
    ce_model: dsl.Input[dsl.Model] = None,
    ce_scores: dsl.Input[dsl.Artifact] = None,
    flyp_model: dsl.Input[dsl.Model] = None,
    flyp_scores: dsl.Input[dsl.Artifact] = None,
    zeroshot_model: dsl.Input[dsl.Model] = None,
    zeroshot_scores: dsl.Input[dsl.Artifact] = None,
):
    inputs = dict(locals())  # the per-method inputs by name: <method>_model, <method>_scores
    from clipcite.steps.artifact_io import read_mlflow_run
    from clipcite.steps.select import run
    from clipcite.train_params import METHODS

    wired = {method: (inputs[f"{method}_model"], inputs[f"{method}_scores"]) for method in METHODS}
    body = run(
        {method: (m.path, s.path) for method, (m, s) in wired.items() if m is not None and s is not None},
        model.path,
        choice.path,
        tracking_uri=tracking_uri,
        mlflow_run_id=read_mlflow_run(mlflow_run.path),
    )
    model.metadata.update({"method": body.winner})
    choice.metadata.update({"winner": body.winner, "rule": body.rule})
