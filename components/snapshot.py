"""Component snapshot: fingerprint the data sources as they are now (CPU; never cached).

Its digest is an input of sample_splits, so sample_splits' cache key changes exactly when the data does: new images
under the same prefix are picked up by the next (scheduled) run, unchanged data reuses the cached splits.
"""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def snapshot(data_uri: str, eval_data_uris: list) -> str:
    from clipcite.data.table import snapshot as table_snapshot
    from clipcite.data.table import sources_digest

    return sources_digest([table_snapshot(uri) for uri in (data_uri, *eval_data_uris)])
