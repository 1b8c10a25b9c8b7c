"""manifests/: every overlay renders; every object validates strictly against Kubernetes 1.33 (custom resources
against their own schemas); references resolve; checkov finds no unjustified failure in manifests and Dockerfiles."""

import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.kubectl import render

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("dev", "prod")
K8S_VERSION = "1.33.0"
CUSTOM_SCHEMAS = {("kubeflow.org/v1alpha1", "PodDefault"): MANIFESTS / "schemas" / "poddefault.json"}
PROFILE = "kubeflow-user-example-com"
# The references each overlay's pods make (update when manifests/ adds or removes one): a check that finds none of
# them passes silently, so the test counts what it checked.
EXPECTED_REFERENCES = {
    "dev": {"configMapKeyRef": 2, "secretKeyRef": 10, "secret volume": 0},
    "prod": {"configMapKeyRef": 2, "secretKeyRef": 7, "secret volume": 1},
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(MANIFESTS / "overlays" / request.param)


def index(objects: list[dict]) -> dict:
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}


def pod_specs(objects: list[dict]):
    for obj in objects:
        template = obj.get("spec", {}).get("template")
        if template:
            yield obj, template["spec"]


def test_every_object_validates_strictly(overlay):
    name, objects = overlay
    assert len(objects) >= 15
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CUSTOM_SCHEMAS:
            jsonschema.validate(obj, json.loads(CUSTOM_SCHEMAS[key].read_text()))
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"{name}: duplicate objects"
    for kind, namespace, obj_name in keys:
        assert namespace or kind == "Namespace", f"{name}: {kind}/{obj_name} has no namespace"


def test_a_typo_in_a_custom_resource_is_caught():
    (poddefault,) = [o for o in render(MANIFESTS / "overlays" / "dev") if o["kind"] == "PodDefault"]
    broken = copy.deepcopy(poddefault)
    broken["spec"].setdefault("env", []).append({"name": "X", "valueFrom": {"secretKeyRef": {"nam": "s"}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(CUSTOM_SCHEMAS[("kubeflow.org/v1alpha1", "PodDefault")].read_text()))


def test_references_resolve_and_secrets_come_from_the_templates(overlay):
    name, objects = overlay
    objs = index(objects)
    templates = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): s
        for path in (MANIFESTS / "secrets").glob("*.example.yaml")
        for s in yaml.safe_load_all(path.read_text())
    }
    checked = {"configMapKeyRef": 0, "secretKeyRef": 0, "secret volume": 0}  # a vanished reference is a failure
    for obj, spec in pod_specs(objects):
        namespace = obj["metadata"]["namespace"]
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    cm = objs[("ConfigMap", namespace, ref["configMapKeyRef"]["name"])]
                    assert ref["configMapKeyRef"]["key"] in cm["data"]
                    checked["configMapKeyRef"] += 1
                if "secretKeyRef" in ref:
                    secret = templates[(namespace, ref["secretKeyRef"]["name"])]
                    assert ref["secretKeyRef"]["key"] in secret["stringData"]
                    checked["secretKeyRef"] += 1
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert (namespace, volume["secret"]["secretName"]) in templates
                checked["secret volume"] += 1
    assert checked == EXPECTED_REFERENCES[name], f"{name}: references checked {checked}"
    services = [o for o in objects if o["kind"] == "Service"]
    for service in services:
        selector = service["spec"]["selector"]
        assert any(
            o["metadata"]["namespace"] == service["metadata"]["namespace"] and selector.items() <= s_labels.items()
            for o, s_labels in ((o, o["spec"]["template"]["metadata"]["labels"]) for o, _ in pod_specs(objects))
        ), f"Service {service['metadata']['name']} selects no pods"


def test_secret_templates_hold_no_values():
    for path in (MANIFESTS / "secrets").glob("*.example.yaml"):
        for secret in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
            assert "data" not in secret and all(v == "" for v in secret["stringData"].values()), path.name
    ignored = (ROOT / ".gitignore").read_text()
    assert "manifests/secrets/*.local.yaml" in ignored


def test_security_context_probes_and_resources_on_every_container(overlay):
    _, objects = overlay
    for obj, spec in pod_specs(objects):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["requests"] and container["resources"]["limits"], where
            if obj["kind"] != "Job":
                assert "readinessProbe" in container and "livenessProbe" in container, where


def test_mlflow_server_settings(overlay):
    name, objects = overlay
    mlflow = index(objects)[("Deployment", "clipcite-mlflow", "mlflow")]
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert {"mlflow.clipcite-mlflow.svc.cluster.local:5000", "mlflow.clipcite-mlflow.svc:5000"} <= set(hosts)
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://") for a in args)
    assert "--artifacts-destination=$(ARTIFACTS_DESTINATION)" in args
    assert ("--app-name=basic-auth" in args) == (name == "prod")  # prod puts the UI/API behind authentication
    minio = [o for o in objects if o["metadata"]["name"] == "minio"]
    assert bool(minio) == (name == "dev")  # MinIO is the optional component dev includes
    settings = index(objects)[("ConfigMap", "clipcite-mlflow", "clipcite-settings")]["data"]
    assert ("minio" in settings["s3-endpoint"]) == (name == "dev")


def test_network_policies_admit_only_the_pipeline_namespace_to_mlflow_and_only_mlflow_to_the_database(overlay):
    name, objects = overlay
    policies = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == "clipcite-mlflow"]
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies)  # default deny

    def sources(app: str) -> list[dict]:
        return [
            peer
            for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == app
            for rule in p["spec"].get("ingress", [])
            for peer in rule["from"]
        ]

    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in sources("mlflow")}
    assert namespaces == ({PROFILE, "ingress-nginx"} if name == "prod" else {PROFILE})
    assert sources("postgres") == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]
    pipeline_objects = [o for o in objects if o["metadata"].get("namespace") == PROFILE]
    assert {o["kind"] for o in pipeline_objects} >= {"ServiceAccount", "Role", "RoleBinding", "PodDefault"}


def test_poddefault_selects_the_label_the_pipeline_sets():

    from clipcite.pipeline import settings as pipeline_settings

    (poddefault,) = [o for o in render(MANIFESTS / "overlays" / "dev") if o["kind"] == "PodDefault"]
    key, value = pipeline_settings.POD_LABEL
    assert poddefault["spec"]["selector"]["matchLabels"] == {key: value}
    root, spec = yaml.safe_load_all((ROOT / "pipeline.yaml").read_text())
    executors = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(root["deploymentSpec"]["executors"])  # every step's pod, the exit handler's too
    assert len(executors) >= 6 and all(e["podMetadata"]["labels"] == {key: value} for e in executors.values())


def test_checkov_finds_no_unjustified_failure(tmp_path):
    checkov = ROOT / ".venv-checkov" / "bin" / "checkov"
    assert checkov.exists(), "checkov is installed by `make test` into .venv-checkov (requirements-checkov.txt)"
    for name in (*(f"overlays/{o}" for o in OVERLAYS), "serving/deployment", "serving/kserve"):
        docs = render(MANIFESTS / name)
        for doc in docs:  # serving: `kubectl apply -n <profile>` sets the namespace its objects leave open
            doc["metadata"].setdefault("namespace", PROFILE)
        (tmp_path / f"{name.replace('/', '-')}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    command = [str(checkov), "--compact", "--output", "json", "--skip-download"]
    results = []
    for target in (
        ["-d", str(tmp_path), "--framework", "kubernetes"],
        ["-d", str(ROOT / "docker"), "--framework", "dockerfile"],
    ):
        out = subprocess.run([*command, *target], capture_output=True, text=True, timeout=600)
        report = json.loads(out.stdout)
        results.extend(report if isinstance(report, list) else [report])
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for r in results
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    skipped = [c for r in results for c in r.get("results", {}).get("skipped_checks", [])]
    assert skipped  # the suppressions below are read
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 15 and reason != "No comment provided", f"{check['check_id']}: unjustified skip"
    passed = sum(r.get("summary", {}).get("passed", 0) for r in results)
    assert passed > 100


def test_manifest_images_are_the_ones_make_images_builds():
    makefile = (ROOT / "Makefile").read_text()
    for path in MANIFESTS.rglob("*.yaml"):
        for image in re.findall(r"image: (ghcr.io/clipcite/[\w-]+)", path.read_text()):
            assert image.rsplit("/", 1)[1] in makefile, f"{path}: {image} is not built by make images"
