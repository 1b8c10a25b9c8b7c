"""Component register: gather the per-domain evaluations with the model (CPU; never cached).

Until MLflow lands, the "registration" is the pipeline artifact itself: the model's location, the merged metrics
and the Markdown report, which kfp records in its metadata store.
"""

from typing import List  # noqa: UP035  (KFP's type parser wants typing.List)

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(
    model: dsl.Input[dsl.Model],
    reports: dsl.Input[List[dsl.Artifact]],  # noqa: UP006
    registered_model_name: str,
    experiment_name: str,
    summary: dsl.Output[dsl.Markdown],
    record: dsl.Output[dsl.Artifact],
):
    from clipcite.steps.register import run

    body = run(
        model.path,
        [r.path for r in reports],
        record.path,
        summary.path,
        registered_model_name=registered_model_name,
        experiment_name=experiment_name,
    )
    record.metadata.update({"model_name": registered_model_name, **body["mean"].get("finetuned", {})})
