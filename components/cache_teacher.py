"""Component cache_teacher: the frozen teacher's outputs for every prompt and crop (GPU; cached)."""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def cache_teacher(
    splits: dsl.Input[dsl.Dataset],
    config_yaml: str,
    teacher: dsl.Output[dsl.Dataset],
):
    from clipcite.config import config_from_yaml
    from clipcite.steps.cache_teacher import run

    summary = run(splits.path, teacher.path, config_from_yaml(config_yaml))
    teacher.metadata.update(summary)
