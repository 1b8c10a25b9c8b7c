"""Component evaluate: one eval domain, fine-tuned and zero-shot (GPU; one task per domain; never cached).

With several methods, every candidate's model comes in too (optional inputs per method, as select has them:
one per name of ``clipcite.train_params.REGISTRY``, pinned to it by a test).
"""

from kfp import dsl

from clipcite.pipeline.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(
    model: dsl.Input[dsl.Model],
    splits: dsl.Input[dsl.Dataset],
    run_config: dsl.Input[dsl.Artifact],
    mlflow_run: dsl.Input[dsl.Artifact],
    domain: str,
    tracking_uri: str,
    registered_model_name: str,
    baseline_cache: str,
    attempts: int,
    report: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    cite_model: dsl.Input[dsl.Model] = None,
    lora_model: dsl.Input[dsl.Model] = None,
    linear_probe_model: dsl.Input[dsl.Model] = None,
    ce_model: dsl.Input[dsl.Model] = None,
    flyp_model: dsl.Input[dsl.Model] = None,
    zeroshot_model: dsl.Input[dsl.Model] = None,
):
    inputs = dict(locals())  # the per-method inputs by name: <method>_model
    from clipcite.steps.artifact_io import read_config, read_mlflow_run
    from clipcite.steps.evaluate import run
    from clipcite.train_params import METHODS

    # several methods: every candidate, scored beside the selected one for the record (see select)
    wired = {method: inputs[f"{method}_model"] for method in METHODS}

    body = run(
        model.path,
        splits.path,
        report.path,
        read_config(run_config.path),
        (domain,),
        tracking_uri=tracking_uri,
        mlflow_run_id=read_mlflow_run(mlflow_run.path),
        registered_model_name=registered_model_name,
        baseline_cache=baseline_cache,
        model_ref=model.uri,  # read at .path (in the pod), recorded by .uri (where the artifact lives)
        splits_ref=splits.uri,
        attempts=attempts,
        candidates={method: m.path for method, m in wired.items() if m is not None},
    )
    for model_name, values in body.domains[domain].items():
        for key, value in values.items():
            metrics.log_metric(f"{domain}/{model_name}/{key}", float(value))
    report.metadata.update({"domain": domain})
