"""Component cache_teacher: the frozen teacher's outputs for every prompt and crop (GPU; cached)."""

from kfp import dsl

from clipcite.pipeline.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def cache_teacher(
    splits: dsl.Input[dsl.Dataset],
    run_config: dsl.Input[dsl.Artifact],
    model_identity: str,
    teacher_store: str,
    teacher: dsl.Output[dsl.Dataset],
):
    """``model_identity`` (from snapshot) is part of this step's cache key: new weights, new cache. KFP's cache
    misses whenever sample-splits ran again (a new splits artifact), e.g. for another lr; ``teacher_store`` ("" =
    off) keeps caches by content, so such a rerun copies the stored one instead of running the teacher."""
    from clipcite.steps.artifact_io import read_config
    from clipcite.steps.cache_teacher import run

    summary = run(
        splits.path, teacher.path, read_config(run_config.path), expected_identity=model_identity, store=teacher_store
    )
    teacher.metadata.update(summary)
