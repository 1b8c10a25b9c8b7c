"""manifests/serving: the champion served by a plain Deployment or a KServe InferenceService, rendered with the real
``kubectl kustomize`` and validated offline (Kubernetes 1.33 strictly, the InferenceService against
manifests/schemas/inferenceservice.json and its pod fields against Kubernetes' PodSpec); the version resolved into
champion.env reaches the pods. (``tests/integration/test_serving.py`` serves what the rendered Deployment runs.)"""

import copy
import json
import shutil
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from clipcite.tracking import champion_env
from tests.support.kubectl import render

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "manifests" / "serving"
SCHEMA = json.loads((ROOT / "manifests" / "schemas" / "inferenceservice.json").read_text())
K8S_VERSION = "1.33.0"
VARIANTS = ("deployment", "kserve")
RESOLVED = {
    "name": "clipcite",
    "alias": "champion",
    "version": "7",
    "artifact-uri": "mlflow-artifacts:/1/models/m-0123/artifacts",
}
PREDICTOR = SCHEMA["$defs"]["predictor"]["properties"]
POD_FIELDS = {k for k, v in PREDICTOR.items() if "$comment" in v} | {  # the predictor's inlined core/v1 PodSpec
    "containers",
    "serviceAccountName",
    "automountServiceAccountToken",
}


@pytest.fixture(scope="module")
def resolved_tree(tmp_path_factory) -> Path:
    """A copy of manifests/serving after `python -m clipcite.tracking.champion_env --out .../champion.env` resolved
    v7."""
    root = tmp_path_factory.mktemp("serving") / "serving"
    shutil.copytree(SERVING, root)
    champion_env.write_env(RESOLVED, root / "champion" / "champion.env")
    return root


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, resolved_tree):
    return request.param, render(resolved_tree / request.param)


def workload(objects: list[dict]) -> tuple[dict, dict, dict]:
    """(the workload object, its pod spec, its pod labels) for either variant."""
    (obj,) = [o for o in objects if o["kind"] in ("Deployment", "InferenceService")]
    if obj["kind"] == "Deployment":
        return obj, obj["spec"]["template"]["spec"], obj["spec"]["template"]["metadata"]["labels"]
    predictor = obj["spec"]["predictor"]
    return obj, {k: v for k, v in predictor.items() if k in POD_FIELDS}, predictor["labels"]


def as_pod(spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec}


def test_every_object_validates_strictly_and_takes_its_namespace_from_kubectl_apply(variant):
    name, objects = variant
    assert {o["kind"] for o in objects} >= {"ServiceAccount", "ConfigMap", "NetworkPolicy"}
    for obj in objects:
        assert "namespace" not in obj["metadata"], f"{name}: {obj['kind']} pins a namespace; -n decides"
        if obj["kind"] == "InferenceService":
            jsonschema.validate(obj, SCHEMA)
            kubernetes_validate.validate(as_pod(workload(objects)[1]), K8S_VERSION, strict=True)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_typo_in_the_inference_service_or_its_container_is_caught(resolved_tree):
    objects = render(resolved_tree / "kserve")
    isvc, pod, _ = workload(objects)
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError, match="minReplica"):
        jsonschema.validate(broken, SCHEMA)
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["scaleMetric"] = "gpu"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    pod = copy.deepcopy(pod)
    pod["containers"][0]["readinesProbe"] = pod["containers"][0].pop("readinessProbe")
    with pytest.raises(Exception, match="readinesProbe"):
        kubernetes_validate.validate(as_pod(pod), K8S_VERSION, strict=True)


def test_the_resolved_version_reaches_the_pods(variant):
    name, objects = variant
    obj, spec, _ = workload(objects)
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["MODEL_URI"], env["MODEL_VERSION"]) == (RESOLVED["artifact-uri"], "7")
    assert container["args"][:5] == ["mlflow", "models", "serve", "-m", "$(MODEL_URI)"]
    annotations = obj["spec"]["template"]["metadata"] if name == "deployment" else obj["metadata"]
    assert annotations["annotations"]["clipcite.io/model-version"] == "7"  # a new champion rolls the pods
    (record,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert record["data"] == RESOLVED and record["metadata"]["name"].startswith("clipcite-champion-")


def test_non_root_probes_resources_and_a_network_policy_that_selects_the_pods(variant):
    name, objects = variant
    _, spec, labels = workload(objects)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for probe, path in (("readinessProbe", "/ping"), ("livenessProbe", "/health"), ("startupProbe", "/ping")):
        assert container[probe]["httpGet"]["path"] == path, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [8080]
    egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {5000, 53}  # MLflow (the model's download) and DNS only
    if name == "deployment":
        (service,) = [o for o in objects if o["kind"] == "Service"]
        assert service["spec"]["selector"].items() <= labels.items()


def test_both_variants_run_the_same_container():
    """One container, two wrappers: a change to one file that the other misses fails here."""
    deployment = workload(render(SERVING / "deployment"))[1]["containers"][0]
    kserve = workload(render(SERVING / "kserve"))[1]["containers"][0]
    for key in ("image", "args", "env", "resources", "securityContext", "volumeMounts"):
        assert deployment[key] == kserve[key], key
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert {k: v for k, v in deployment[probe].items() if k != "httpGet"} == {
            k: v for k, v in kserve[probe].items() if k != "httpGet"
        }
        assert deployment[probe]["httpGet"]["path"] == kserve[probe]["httpGet"]["path"]
