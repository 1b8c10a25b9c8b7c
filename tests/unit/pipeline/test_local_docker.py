"""clipcite/pipeline/local_docker.py without an engine: the exit code is read before the container is removed (kfp's
auto_remove race), an unreadable code fails the task, and the run's local paths are mounted once each. The same against
podman's Docker API: tests/containers/test_dag_in_containers.py."""

from pathlib import Path

import pytest

import docker

ROOT = Path(__file__).resolve().parents[3]

from clipcite.pipeline import local_docker  # noqa: E402


class FakeContainer:
    """An engine that forgets a container as soon as it is removed, the way podman forgets an auto-removed one."""

    id = "0123456789abcdef"

    def __init__(self, code: int, log: list[str]) -> None:
        self.code, self.log, self.removed = code, log, False
        self.attrs: dict = {}

    def logs(self, stream: bool, follow: bool):
        yield b"step output\n"

    def reload(self) -> None:  # the exit code is read from the container's state
        self.log.append("reload")
        if self.removed:
            raise docker.errors.APIError("no such container")  # podman's 500
        self.attrs = {"State": {"Status": "exited", "ExitCode": self.code}}

    def remove(self, force: bool) -> None:
        self.log.append("remove")
        self.removed = True


class FakeClient:
    def __init__(self, code: int) -> None:
        self.log: list[str] = []
        self.code = code
        self.run_args: dict = {}
        self.images = self
        self.containers = self

    def get(self, image: str) -> None:  # images.get: the image is here
        pass

    def run(self, **kwargs) -> FakeContainer:  # containers.run
        self.run_args = kwargs
        self.container = FakeContainer(self.code, self.log)
        self.container.removed = bool(kwargs.get("auto_remove"))  # auto-removed before anyone asks
        return self.container


@pytest.mark.parametrize("code", [0, 3])
def test_the_exit_code_is_read_before_the_container_is_removed(code, capsys):
    client = FakeClient(code)
    assert local_docker.run_container(client, "img:1", ["sh"], {}, auto_remove=True) == code
    assert client.log == ["reload", "remove"] and "auto_remove" not in client.run_args
    assert "step output" in capsys.readouterr().out


def test_an_exit_code_that_cannot_be_read_fails_instead_of_passing():
    client = FakeClient(0)
    real_run = client.run

    def gone(**kwargs):
        container = real_run(**kwargs)
        container.removed = True  # the engine lost it (kfp would have returned 0 on a 404)
        return container

    client.run = gone
    with pytest.raises(docker.errors.APIError):
        local_docker.run_container(client, "img:1", ["sh"], {})


def test_the_runs_local_paths_are_mounted_once(tmp_path):
    out = tmp_path / "runs" / "pipeline"
    data = tmp_path / "data" / "table"
    data.mkdir(parents=True)
    params = {
        "data_uri": str(data),
        "teacher_store": str(out / "teachers"),  # under --out: mounted with it
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "pretrained": "clipcite:toyworld/toyclip.safetensors",  # in the image
        "checkpoint_root": "s3://bucket/ckpt",
        "shots": 16,
    }
    assert local_docker.shared_paths(params, out) == [tmp_path.resolve()]
    params["tracking_uri"] = "off"
    assert sorted(local_docker.shared_paths(params, out)) == sorted([out.resolve(), data.resolve()])
