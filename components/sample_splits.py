"""Component sample_splits: resolve the run's config, then few-shot splits and eval sets (CPU; cached).

The resolved config is written into the splits artifact (``config.yaml``), where every later step reads it; the
step returns the eval domains the pipeline fans out over.
"""

from kfp import dsl

from components.images import CPU_IMAGE


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
) -> list:
    from clipcite.steps.run_config import run_config
    from clipcite.steps.sample_splits import run

    resolved = run_config(config, overrides, shots=shots, seed=seed, arch=arch, pretrained=pretrained, method=method)
    manifest = run(data_uri, splits.path, resolved, tuple(eval_data_uris), expected_digest=data_digest)
    splits.metadata.update({"train_rows": manifest["sets"]["train"]["rows"], "shots": manifest["shots"]})
    return sorted({s["domain"] for s in manifest["eval_sets"]})
