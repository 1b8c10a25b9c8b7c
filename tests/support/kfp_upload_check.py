"""The checks a KFP API server runs on an uploaded pipeline spec, with the protobuf modules the SDK ships.

Follows backend/src/apiserver/template/v2_template.go (release-2.17, ``NewV2SpecTemplate``): each YAML document is
parsed strictly into ``PipelineSpec`` or ``PlatformSpec`` (``protojson.Unmarshal``: an unknown field is an error),
``schemaVersion`` must be 2.1.0, the pipeline name must be given and DNS-label shaped, the root must be there; the
Argo compiler (backend/src/v2/compiler/argocompiler/) then reads every Kubernetes executor config as a
``KubernetesExecutorConfig``. The server's name regexp is unanchored (it matches any name with one lowercase
letter); this check anchors it, as Kubernetes does for the names KFP derives from it.

Run as a script (``python tests/support/kfp_upload_check.py SPEC [PROTO_DIR]``) it checks against the ``_pb2`` modules
found under PROTO_DIR (another release's ``kfp-pipeline-spec`` and ``kfp-kubernetes``, installed with
``pip install --no-deps --target``) instead of the installed ones; it prints ``ok`` or the first problem.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import yaml
from google.protobuf import json_format

SCHEMA_VERSION = "2.1.0"
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def installed_protos() -> tuple[types.ModuleType, types.ModuleType]:
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    return pipeline_spec_pb2, kubernetes_executor_config_pb2


def protos_from(folder: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The two ``_pb2`` modules of another release, loaded from their files alone (their packages' ``__init__``
    would import the installed SDK), under the module names the generated code imports them by."""
    for package in ("kfp", "kfp.pipeline_spec", "kfp.kubernetes"):
        sys.modules.setdefault(package, types.ModuleType(package))
    loaded = []
    for name, path in (
        ("kfp.pipeline_spec.pipeline_spec_pb2", folder / "kfp/pipeline_spec/pipeline_spec_pb2.py"),
        ("kfp.kubernetes.kubernetes_executor_config_pb2", folder / "kfp/kubernetes/kubernetes_executor_config_pb2.py"),
    ):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        loaded.append(module)
    return loaded[0], loaded[1]


def check_spec(text: str, pipeline_pb2: types.ModuleType, kubernetes_pb2: types.ModuleType) -> list[str]:
    """What the server would refuse in ``text`` (a compiled pipeline.yaml), as messages; [] when it accepts it."""
    problems: list[str] = []
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    pipeline_docs = [d for d in documents if "platforms" not in d]
    platform_docs = [d for d in documents if "platforms" in d]
    if len(pipeline_docs) != 1 or len(platform_docs) > 1:
        found = f"found {len(pipeline_docs)} and {len(platform_docs)}"
        return [f"want one pipeline spec and at most one platform spec, {found}"]
    spec = pipeline_pb2.PipelineSpec()
    try:
        json_format.ParseDict(pipeline_docs[0], spec, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        return [f"PipelineSpec: {e}"]
    if spec.schema_version != SCHEMA_VERSION:
        problems.append(f"schemaVersion {spec.schema_version!r}: the server supports only {SCHEMA_VERSION}")
    if not spec.pipeline_info.name:
        problems.append("pipelineInfo.name is empty")
    elif not NAME.fullmatch(spec.pipeline_info.name):
        problems.append(f"pipelineInfo.name {spec.pipeline_info.name!r} is not a DNS-1123 name")
    if not spec.HasField("root"):
        problems.append("no root DAG")
    if platform_docs:
        platform = pipeline_pb2.PlatformSpec()
        try:
            json_format.ParseDict(platform_docs[0], platform, ignore_unknown_fields=False)
        except json_format.ParseError as e:
            return [*problems, f"PlatformSpec: {e}"]
        executors = platform_docs[0]["platforms"].get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        for name, config in executors.items():
            try:
                json_format.ParseDict(config, kubernetes_pb2.KubernetesExecutorConfig(), ignore_unknown_fields=False)
            except json_format.ParseError as e:
                problems.append(f"KubernetesExecutorConfig of {name}: {e}")
    return problems


if __name__ == "__main__":
    protos = protos_from(Path(sys.argv[2])) if len(sys.argv) > 2 else installed_protos()
    found = check_spec(Path(sys.argv[1]).read_text(), *protos)
    print("\n".join(found) or "ok")
    sys.exit(1 if found else 0)
