"""The deploy steps as a new user follows them: set the profile namespace in the one place docs/cluster.md names, set
the MLflow image in the overlay, and both overlays render (with the real ``kubectl kustomize``: the manifests use
replacements) with nothing left pointing at the defaults."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.kubectl import render

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = "kubeflow-user-example-com"
PROFILE = "team-a"
NAMESPACE_FILE = "manifests/base/pipeline-access/kustomization.yaml"  # docs/cluster.md's deploy step 2 names it
MLFLOW_IMAGE = "ghcr.io/clipcite/clipcite-mlflow"
OUR_IMAGE = "registry.example.com/ml/clipcite-mlflow"


@pytest.fixture(scope="module")
def edited(tmp_path_factory) -> Path:
    """A copy of manifests/ after deploy steps 1 and 2: namespace and MLflow image changed, nothing else."""
    root = tmp_path_factory.mktemp("deploy")
    shutil.copytree(ROOT / "manifests", root / "manifests")
    namespace_file = root / NAMESPACE_FILE
    text, count = re.subn(r"(?m)^namespace: \S+", f"namespace: {PROFILE}", namespace_file.read_text())
    assert count == 1, f"{NAMESPACE_FILE}: expected one top-level namespace: line"
    namespace_file.write_text(text)
    for overlay in ("dev", "prod"):
        path = root / "manifests" / "overlays" / overlay / "kustomization.yaml"
        spec = yaml.safe_load(path.read_text())
        (image,) = [i for i in spec["images"] if i["name"] == MLFLOW_IMAGE]
        image["newName"] = OUR_IMAGE
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request, edited) -> tuple[str, list[dict]]:
    return request.param, render(edited / "manifests" / "overlays" / request.param)


def find(objects: list[dict], kind: str, name: str) -> dict:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_the_cluster_guide_names_the_one_place_to_set_the_namespace():
    guide = (ROOT / "docs" / "cluster.md").read_text()
    step = guide[guide.index("**Choose the profile namespace**") :].split("\n3. ", 1)[0]
    assert NAMESPACE_FILE in step
    assert "networkpolicy.yaml" not in step and "rbac.yaml" not in step and "settings-patch.yaml" not in step


def test_nothing_points_at_the_default_namespace_after_changing_it_in_one_place(rendered):
    name, objects = rendered
    text = yaml.safe_dump_all(objects)
    assert DEFAULT_PROFILE not in text, f"{name}: an object still names {DEFAULT_PROFILE}"
    assert "profile-namespace" not in text, f"{name}: a placeholder was not replaced"
    for kind, obj_name in [
        ("ServiceAccount", "clipcite-pipeline"),
        ("Role", "clipcite-pipeline"),
        ("RoleBinding", "clipcite-pipeline"),
        ("ConfigMap", "clipcite-pipeline-settings"),
        ("PodDefault", "clipcite-mlflow"),
    ]:
        assert find(objects, kind, obj_name)["metadata"]["namespace"] == PROFILE, f"{name}: {kind}/{obj_name}"
    binding = find(objects, "RoleBinding", "clipcite-pipeline")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "clipcite-pipeline", "namespace": PROFILE}]


def test_the_network_policies_admit_the_new_namespace(rendered):
    name, objects = rendered
    admitted = {
        policy["metadata"]["name"]: {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in policy["spec"].get("ingress", [])
            for peer in rule["from"]
            if "namespaceSelector" in peer
        }
        for policy in objects
        if policy["kind"] == "NetworkPolicy"
    }
    assert admitted["mlflow-from-pipelines"] == {PROFILE}
    if name == "dev":
        assert admitted["minio-from-mlflow-and-pipelines"] == {PROFILE}
    else:
        assert "minio-from-mlflow-and-pipelines" not in admitted


def test_pipeline_pods_get_the_tracking_stacks_s3_endpoint(rendered):
    name, objects = rendered
    pipeline_settings = find(objects, "ConfigMap", "clipcite-pipeline-settings")["data"]
    stack_settings = find(objects, "ConfigMap", "clipcite-settings")["data"]
    assert pipeline_settings["s3-endpoint"] == stack_settings["s3-endpoint"]
    assert ("minio.clipcite-mlflow" in pipeline_settings["s3-endpoint"]) == (name == "dev")


def test_the_overlay_sets_the_mlflow_image(rendered):
    name, objects = rendered
    container = find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith(f"{OUR_IMAGE}:"), f"{name}: {container['image']}"
