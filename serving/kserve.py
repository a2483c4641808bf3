"""KServe manifests for the aa-deploy server: one ``ServingRuntime`` (the image and how to start it) and
one ``InferenceService`` per deployment (which tasks, where their exports are, how much to give them).

Plain dicts built from small dataclasses: generating manifests needs neither the KServe SDK nor a
cluster (the tests check the output against the SDK's typed models). Every fact KServe must agree on
with the server (port, protocol, probe paths, where the exports land) has one owner here.

How the server learns its tasks under KServe: the storage initializer downloads ``storageUri`` into
``/mnt/models`` before the server starts, so a URI pointing at a folder of exports
(``<uri>/<task>/aa_export.json``) becomes ``/mnt/models/<task>/``. The runtime starts
``aa-deploy serve --models-dir /mnt/models`` (every export folder there is a task named after its
folder) and each InferenceService names its tasks in ``$AA_DEPLOY_MODELS_TASKS``: KServe merges the predictor's
env into the runtime's container by name, so one runtime serves any set of tasks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import MODELS_DIR_TASKS_ENV, validate_task_name

API_GROUP = "serving.kserve.io"
RUNTIME_API_VERSION = f"{API_GROUP}/v1alpha1"
ISVC_API_VERSION = f"{API_GROUP}/v1beta1"
MODEL_FORMAT = "aa-deploy-onnx"
PROTOCOL = "v2"  # Open Inference Protocol: /v2/models/<task>/infer (serving/oip.py)
# KServe's conventions: the runtime's container is named kserve-container, models land in /mnt/models,
# and the container listens on 8080.
CONTAINER_NAME = "kserve-container"
MODELS_DIR = "/mnt/models"
PORT = 8080
# The server's health endpoints (serving/app.py): liveness answers while the process runs; readiness only
# once the tasks are loaded and the server is not draining, so traffic waits for the models.
LIVENESS_PATH = "/health"
READINESS_PATH = "/ready"
METRICS_PATH = "/metrics"
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "hf://", "https://", "http://", "oci://", "abfs://")
# Kubernetes object names that become DNS labels (InferenceService names become host names).
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def default_image() -> str:
    from .. import __version__

    return f"aa-deploy:{__version__}"


def _check_name(kind: str, name: str) -> str:
    if not _DNS_LABEL.match(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: use at most 63 lower-case letters, digits and '-', starting with a "
            "letter and not ending with '-' (Kubernetes DNS label)"
        )
    return name


@dataclass
class Resources:
    """Container requests and limits; ``gpus`` adds ``nvidia.com/gpu`` to both (it cannot be overcommitted)."""

    cpu_request: str = "1"
    memory_request: str = "2Gi"
    cpu_limit: str = "4"
    memory_limit: str = "4Gi"
    gpus: int = 0

    def threads(self) -> int:
        """Whole CPUs of the limit (ONNX Runtime would otherwise size its pool by the node's cores)."""
        value = self.cpu_limit.strip()
        try:
            cpus = float(value[:-1]) / 1000 if value.endswith("m") else float(value)
        except ValueError:
            raise ValueError(f"CPU limit {value!r} is not a Kubernetes CPU quantity like 4 or 3500m") from None
        return max(1, int(cpus))

    def to_dict(self) -> dict[str, dict[str, str]]:
        requests = {"cpu": self.cpu_request, "memory": self.memory_request}
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        if self.gpus:
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(self.gpus)
        return {"requests": requests, "limits": limits}


@dataclass
class RuntimeSpec:
    """The ``ServingRuntime``: the image and the command that serves whatever lands in /mnt/models."""

    name: str = "aa-deploy"
    image: str = field(default_factory=default_image)
    resources: Resources = field(default_factory=Resources)
    # Extra ``aa-deploy serve`` flags (e.g. ["--max-batch", "32"]).
    serve_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_name("ServingRuntime", self.name)
        self.resources.threads()  # a malformed CPU limit fails here, not in the cluster
        if not self.image:
            raise ValueError("the runtime needs an image (e.g. aa-deploy:0.1.0)")

    def command(self) -> list[str]:
        return ["aa-deploy"]

    def args(self) -> list[str]:
        # No Hub access from the pod: KServe's storage initializer fetches the exports (hf:// included).
        return [
            "serve", "--host", "0.0.0.0", "--port", str(PORT), "--models-dir", MODELS_DIR, "--no-hub",
            "--threads", str(self.resources.threads()), *self.serve_args,
        ]  # fmt: skip

    def to_manifest(self) -> dict[str, Any]:
        probe = {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
        container = {
            "name": CONTAINER_NAME,
            "image": self.image,
            "command": self.command(),
            "args": self.args(),
            "ports": [{"containerPort": PORT, "name": "http1", "protocol": "TCP"}],
            "resources": self.resources.to_dict(),
            # The server answers nothing until its tasks are loaded and checked (seconds per task), so the
            # startup probe gives it up to 10 minutes before liveness (restart on failure) takes over.
            "startupProbe": {
                "httpGet": {"path": LIVENESS_PATH, "port": PORT},
                "periodSeconds": 5,
                "timeoutSeconds": 5,
                "failureThreshold": 120,
            },
            "livenessProbe": {"httpGet": {"path": LIVENESS_PATH, "port": PORT}, **probe},
            # Ready: tasks loaded and not draining (a draining replica leaves the rotation first).
            "readinessProbe": {"httpGet": {"path": READINESS_PATH, "port": PORT}, **probe},
        }
        return {
            "apiVersion": RUNTIME_API_VERSION,
            "kind": "ServingRuntime",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/name": "aa-deploy"}},
            "spec": {
                "annotations": {"prometheus.kserve.io/port": str(PORT), "prometheus.kserve.io/path": METRICS_PATH},
                "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": True}],
                "protocolVersions": [PROTOCOL],
                "multiModel": False,
                "containers": [container],
            },
        }


@dataclass
class DeploymentSpec:
    """One ``InferenceService``: the tasks it serves and the storage URI holding ``<task>/`` export folders."""

    name: str
    tasks: list[str]
    storage_uri: str
    runtime: str = "aa-deploy"
    resources: Resources = field(default_factory=Resources)
    min_replicas: int = 1
    max_replicas: int = 1
    namespace: str | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("an InferenceService needs at least one task (--task NAME)")
        for task in self.tasks:
            validate_task_name(task)
        _check_name("InferenceService", self.name)
        _check_name("ServingRuntime", self.runtime)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks repeat: {self.tasks}")
        if not self.storage_uri.startswith(STORAGE_SCHEMES):
            raise ValueError(
                f"storage URI {self.storage_uri!r} is not one KServe downloads: use one of "
                f"{', '.join(STORAGE_SCHEMES)} (a folder holding <task>/aa_export.json for each task)"
            )
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas >= 1, got {self.min_replicas}, {self.max_replicas}"
            )

    def to_manifest(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.name,
            "labels": {"app.kubernetes.io/name": "aa-deploy"},
            "annotations": {"aa-deploy/tasks": ",".join(self.tasks)},
        }
        if self.namespace:
            metadata["namespace"] = self.namespace
        return {
            "apiVersion": ISVC_API_VERSION,
            "kind": "InferenceService",
            "metadata": metadata,
            "spec": {
                "predictor": {
                    "minReplicas": self.min_replicas,
                    "maxReplicas": self.max_replicas,
                    "model": {
                        "modelFormat": {"name": MODEL_FORMAT},
                        "runtime": self.runtime,
                        "protocolVersion": PROTOCOL,
                        "storageUri": self.storage_uri,
                        "env": [{"name": MODELS_DIR_TASKS_ENV, "value": ",".join(self.tasks)}],
                        "resources": self.resources.to_dict(),
                    },
                }
            },
        }


def manifests(runtime: RuntimeSpec, deployment: DeploymentSpec) -> dict[str, dict[str, Any]]:
    """``{file name: manifest}`` for one deployment on its runtime."""
    if deployment.runtime != runtime.name:
        raise ValueError(
            f"the InferenceService uses runtime {deployment.runtime!r} but the runtime is {runtime.name!r}"
        )
    return {"servingruntime.yaml": runtime.to_manifest(), "inferenceservice.yaml": deployment.to_manifest()}


def to_yaml(documents: Sequence[dict[str, Any]]) -> str:
    """Documents as one multi-document YAML text (key order kept as built: apiVersion, kind, ... first)."""
    import yaml

    return "---\n".join(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False) for doc in documents)
