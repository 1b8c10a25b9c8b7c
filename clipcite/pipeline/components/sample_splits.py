"""Component sample_splits: resolve the run's config, then few-shot splits and eval sets (CPU; cached).

The resolved config is its own artifact (``run_config``, YAML), the input of every later step; the step returns the
eval domains the pipeline fans out over.
"""

from kfp import dsl

from clipcite.pipeline.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sample_splits(
    data_uri: str,
    eval_data_uris: list,
    data_digest: str,
    config: str,
    shots: int,
    seed: int,
    arch: str,
    pretrained: str,
    method: str,
    overrides: dict,
    splits: dsl.Output[dsl.Dataset],
    run_config: dsl.Output[dsl.Artifact],
) -> list:
    from clipcite.steps.sample_splits import for_pipeline

    manifest = for_pipeline(
        data_uri,
        tuple(eval_data_uris),
        splits.path,
        run_config.path,
        preset=config,
        overrides=overrides,
        data_digest=data_digest,
        shots=shots,
        seed=seed,
        arch=arch,
        pretrained=pretrained,
        method=method,
    )
    splits.metadata.update({"train_rows": manifest.sets["train"].rows, "shots": manifest.shots})
    return sorted({s.domain for s in manifest.eval_sets})
