"""Component cache_teacher: the frozen teacher's outputs for every prompt and crop (GPU; cached)."""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def cache_teacher(
    splits: dsl.Input[dsl.Dataset],
    model_identity: str,
    teacher: dsl.Output[dsl.Dataset],
):
    """``model_identity`` (from snapshot) is part of this step's cache key: new weights, new cache."""
    from clipcite.steps.cache_teacher import run
    from clipcite.steps.common import splits_config

    summary = run(splits.path, teacher.path, splits_config(splits.path), expected_identity=model_identity)
    teacher.metadata.update(summary)
