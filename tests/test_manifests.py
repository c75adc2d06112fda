"""The KubeRay deployment in ``cluster/``, checked without a cluster.

``cluster/base`` holds the manifests with two image placeholders (``lmcot``, ``lmcot-submitter``);
``cluster/overlays/example`` is what a team copies and applies: its registry, storage class and
node selection, set in one place. Every RayCluster, RayJob and RayService, in the base and as
``kubectl kustomize`` renders the overlay (skipped where kubectl is absent), is validated against
the ``openAPIV3Schema`` of the KubeRay v1.7.0 CRDs vendored in ``cluster/crds/`` made strict: an
object schema that lists its ``properties`` rejects any other key (what ``kubectl apply
--validate=strict`` does), and ``x-kubernetes-int-or-string`` accepts exactly an int or a string.
A misspelt field would otherwise be dropped silently by the API server.

Then what a schema cannot say: every container has requests and limits (ephemeral storage too)
and runs as non-root, the run volume is writable by the pods' uid, every RayJob fails fast when
its cluster cannot come up, per-GPU requests fit common GPU node types, Ray token auth is on and
nothing is exposed, each RayJob's entrypoint parses with the real CLI into a real preset and its
cluster has the GPUs that preset asks for, and the RayService's Serve config mirrors the one in
``serve_configs/``. The Dockerfile that builds what they run: ``tests/test_dockerfile.py``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
BASE = CLUSTER / "base"
OVERLAY = CLUSTER / "overlays" / "example"
CRD_DIR = CLUSTER / "crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.json", "RayJob": "ray.io_rayjobs.json",
             "RayService": "ray.io_rayservices.json"}
# KubeRay appends 6 characters to RayJob / RayService names for their RayCluster, whose
# name must leave room for "-serve-svc" in a 63-character Service name.
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
JOB_SCRIPTS = {"generate-rationales": "generate_rationales.py", "distill": "distill.py",
               "refine": "refine.py", "search": "search_reward_weights.py", "eval": "evaluate.py",
               "pipeline": "pipeline.py"}
GROUP_RESOURCE = {"small-lm-gpu": "small_lm", "large-lm-gpu": "large_lm"}
AUTH = {"mode": "token", "secretName": "lmcot-ray-auth"}
RUNS_CLAIM, RUNS_MOUNT = "lmcot-runs", "/mnt/runs"
SERVE_IMPORT = "lmcot.stages.serve:build_app"
# The base's image placeholders, which an overlay's `images:` replaces: Ray pods, and the small
# image of the submitters and the volume's init Job (the Dockerfile's default and `submitter` targets).
RAY_IMAGE, SMALL_IMAGE = "lmcot", "lmcot-submitter"
HF_TOKEN_REF = {"name": "lmcot-hf-token", "key": "token", "optional": True}
COMPONENT = "app.kubernetes.io/component"


def _pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"(?im)^([A-Za-z0-9_.\-]+)==([^\s#]+)", path.read_text()))


RAY_VERSION = _pins(ROOT / "constraints.txt")["ray"]


def load_docs(text: str, source: str) -> list[tuple[str, dict]]:
    return [(source, doc) for doc in yaml.safe_load_all(text) if doc]


KUSTOMIZATION = yaml.safe_load((BASE / "kustomization.yaml").read_text())
DOCS = [pair for file in KUSTOMIZATION["resources"] for pair in load_docs((BASE / file).read_text(), file)]
CRD_DOCS = [(name, doc) for name, doc in DOCS if doc.get("kind") in CRD_FILES]
JOBS = [(name, doc) for name, doc in DOCS if doc.get("kind") == "RayJob"]
SERVICES = [doc for _, doc in DOCS if doc.get("kind") == "RayService"]


def _ids(pairs):
    return [f"{name}:{doc['kind']}" for name, doc in pairs]


# --- kustomize ---------------------------------------------------------------------------------

def kustomize(path: Path) -> list[tuple[str, dict]]:
    """``kubectl kustomize PATH`` as (source, doc) pairs; skips where kubectl is absent."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found on PATH: the kustomize overlays are not rendered here "
                    "(install kubectl >= 1.32, which bundles kustomize v5.5, to run these checks)")
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path}: {done.stderr}"
    return load_docs(done.stdout, f"{path.name}(rendered)")


@pytest.fixture(scope="module")
def overlay_docs():
    return kustomize(OVERLAY)


def overlay_settings() -> dict:
    """What the example overlay sets: images, storage class, and node selectors per GPU group."""
    kust = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    images = {i["name"]: i["newName"] + (f"@{i['digest']}" if "digest" in i else f":{i['newTag']}")
              for i in kust["images"]}
    (pvc_patch,) = [p for p in kust["patches"] if p["target"]["kind"] == "PersistentVolumeClaim"]
    (op,) = yaml.safe_load(pvc_patch["patch"])
    selectors = {doc["metadata"]["name"].removesuffix("-node-selector") + "-gpu": doc["data"]
                 for doc in yaml.safe_load_all((OVERLAY / "node-selectors.yaml").read_text())}
    return {"images": images, "storage_class": op["value"], "node_selectors": selectors}


def test_base_lists_every_manifest_and_renders_to_the_same_objects():
    on_disk = sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(KUSTOMIZATION["resources"]) == on_disk
    key = lambda d: (d["kind"], d["metadata"]["name"])  # kustomize orders by kind
    rendered = sorted((d for _, d in kustomize(BASE)), key=key)
    assert rendered == sorted((d for _, d in DOCS), key=key), "the base renders as written"


def test_overlay_changes_only_images_storage_class_and_node_selectors(overlay_docs):
    """The overlay is the one place a team edits; what it renders is the base plus its settings."""
    settings = overlay_settings()
    assert set(settings["images"]) == {RAY_IMAGE, SMALL_IMAGE}
    assert all(not image.startswith(("lmcot:", "lmcot@")) and "/" in image for image in settings["images"].values())
    undone = []
    for _, doc in overlay_docs:
        doc = copy.deepcopy(doc)
        reverse = {v: k for k, v in settings["images"].items()}
        for _, c, _ in containers(doc):
            if "image" in c:
                assert c["image"] in reverse, f"{doc['metadata']['name']}: {c['image']} not from the overlay"
                c["image"] = reverse[c["image"]]
        if doc["kind"] == "PersistentVolumeClaim":
            assert doc["spec"].pop("storageClassName") == settings["storage_class"]
        for spec in cluster_specs(doc) if doc["kind"] in CRD_FILES else []:
            for group in spec.get("workerGroupSpecs", []):
                pod = group["template"]["spec"]
                assert pod["nodeSelector"] == settings["node_selectors"][group["groupName"]]
                pod["nodeSelector"] = {}
        undone.append(doc)
    key = lambda d: (d["kind"], d["metadata"]["name"])
    assert sorted(undone, key=key) == sorted((d for _, d in DOCS), key=key)
    assert not [d for _, d in overlay_docs if d["kind"] == "ConfigMap"], "node selectors are local config"


@pytest.mark.parametrize("image", ["registry.internal:5000/ml/lmcot@sha256:" + "ab" * 32, "lmcot.example.org/lmcot:2024-06"])
def test_one_images_entry_sets_every_ray_pod_image(tmp_path, validators, image):
    """A team's own registry, tag or digest, set once, reaches every Ray container and still validates."""
    name, _, ref = image.rpartition("@") if "@" in image else image.rpartition(":")
    entry = {"name": RAY_IMAGE, "newName": name, **({"digest": ref} if "@" in image else {"newTag": ref})}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
         "resources": [os.path.relpath(BASE, tmp_path)], "images": [entry]}))
    docs = kustomize(tmp_path)
    seen = 0
    for _, doc in docs:
        for where, c, _ in containers(doc):
            if "image" in c:
                seen += 1
                assert c["image"] in (image, SMALL_IMAGE), (doc["metadata"]["name"], where, c["image"])
        if doc["kind"] in CRD_FILES:
            assert schema_errors(validators, doc) == []
    assert seen > 20


# --- strict CRD schemas -------------------------------------------------------------------

def strict(schema: dict) -> dict:
    """A copy of an openAPIV3Schema in which unknown fields fail and int-or-string is typed."""
    out = dict(schema)
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    return out


@pytest.fixture(scope="module")
def validators():
    """kind -> jsonschema validator of its strict v1 schema (the repository's own copy, ``cluster/crds/``)."""
    from jsonschema import Draft7Validator

    out = {}
    for kind, file in CRD_FILES.items():
        crd = json.loads((CRD_DIR / file).read_text())
        assert (crd["kind"], crd["apiVersion"], crd["kuberay"]) == (kind, "ray.io/v1", "v1.7.0"), file
        out[kind] = Draft7Validator(strict(crd["openAPIV3Schema"]))
    return out


def schema_errors(validators, doc: dict) -> list[str]:
    """Every schema error of one manifest, as ``path: message``."""
    errors = validators[doc["kind"]].iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


@pytest.mark.parametrize("name,doc", CRD_DOCS, ids=_ids(CRD_DOCS))
def test_manifest_matches_strict_kuberay_schema(validators, name, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert schema_errors(validators, doc) == []


def test_rendered_overlay_matches_strict_kuberay_schema(validators, overlay_docs):
    crds = [doc for _, doc in overlay_docs if doc["kind"] in CRD_FILES]
    assert len(crds) == len(CRD_DOCS)
    for doc in crds:
        assert schema_errors(validators, doc) == [], doc["metadata"]["name"]


def test_strict_schema_rejects_unknown_fields_and_wrong_types(validators):
    (doc,) = [d for _, d in CRD_DOCS if d["kind"] == "RayCluster"]
    assert schema_errors(validators, doc) == []

    typo = copy.deepcopy(doc)
    typo["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    typo["spec"]["workerGroupSpecs"][0]["gpus"] = 1
    typo["spec"]["authOption"] = {"mode": "token"}
    errors = schema_errors(validators, typo)
    for field in ("runAsNonroot", "gpus", "authOption"):
        assert any(field in e and "Additional properties" in e for e in errors), (field, errors)

    wrong = copy.deepcopy(doc)
    wrong["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    wrong["spec"]["authOptions"]["mode"] = "tokens"
    limits = wrong["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits["cpu"] = [8]
    errors = schema_errors(validators, wrong)
    assert any(e.startswith("spec.workerGroupSpecs.0.maxReplicas") for e in errors), errors
    assert any(e.startswith("spec.authOptions.mode") for e in errors), errors
    assert any(e.startswith("spec.headGroupSpec.template.spec.containers.0.resources.limits.cpu")
               for e in errors), errors

    for kind, typo_field in (("RayJob", "shutdownAfterJobFinish"), ("RayService", "serveConfigV3")):
        other = copy.deepcopy(next(d for _, d in CRD_DOCS if d["kind"] == kind))
        other["spec"][typo_field] = True
        assert any(typo_field in e for e in schema_errors(validators, other)), kind

    int_or_string = copy.deepcopy(doc)
    int_or_string["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 8
    assert schema_errors(validators, int_or_string) == []


# --- what every manifest shares --------------------------------------------------------------

def cluster_specs(doc: dict) -> list[dict]:
    """The RayCluster specs a manifest creates (none for other kinds)."""
    spec = doc.get("spec", {})
    return {"RayCluster": [spec], "RayJob": [spec.get("rayClusterSpec")],
            "RayService": [spec.get("rayClusterConfig")]}.get(doc["kind"], [])


def pod_specs(doc: dict):
    """(where, pod spec) for every pod a manifest creates."""
    for spec in cluster_specs(doc):
        if spec is None:
            continue
        yield "head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield group["groupName"], group["template"]["spec"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        yield "submitter", doc["spec"]["submitterPodTemplate"]["spec"]
    if doc["kind"] == "Job":
        yield "job", doc["spec"]["template"]["spec"]


def containers(doc: dict):
    """(where, container, pod spec) for every container, the autoscaler sidecar included."""
    for where, pod in pod_specs(doc):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{where}/{c['name']}", c, pod
    for spec in cluster_specs(doc):
        if spec and spec.get("enableInTreeAutoscaling"):
            head_pod = spec["headGroupSpec"]["template"]["spec"]
            yield "autoscaler", spec.get("autoscalerOptions", {}), head_pod


QUANTITY = re.compile(r"^([0-9.]+)(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
FACTOR = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> float:
    """A Kubernetes quantity ("500m", "64Gi", 8) as a number."""
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * FACTOR[match.group(2)]


@pytest.mark.parametrize("name,doc", CRD_DOCS, ids=_ids(CRD_DOCS))
def test_every_container_is_bounded_and_non_root(name, doc):
    seen = 0
    for where, c, pod in containers(doc):
        seen += 1
        res = c.get("resources", {})
        requests, limits = res.get("requests", {}), res.get("limits", {})
        # The autoscaler writes only to the head's /tmp/ray volume, which KubeRay mounts into it.
        keys = ("cpu", "memory") if where == "autoscaler" else ("cpu", "memory", "ephemeral-storage")
        for key in keys:
            assert key in requests and key in limits, f"{name} {where}: needs {key} requests and limits"
            assert quantity(requests[key]) <= quantity(limits[key]), f"{name} {where}: {key} request > limit"
        if "nvidia.com/gpu" in limits:
            assert requests.get("nvidia.com/gpu") == limits["nvidia.com/gpu"], f"{name} {where}: GPU request != limit"
        sec, pod_sec = c.get("securityContext", {}), pod.get("securityContext", {})
        assert sec.get("allowPrivilegeEscalation") is False, f"{name} {where}"
        assert "ALL" in sec.get("capabilities", {}).get("drop", []), f"{name} {where}: drop ALL capabilities"
        assert sec.get("privileged", False) is False, f"{name} {where}"
        assert sec.get("runAsNonRoot", pod_sec.get("runAsNonRoot")) is True, f"{name} {where}"
        assert sec.get("runAsUser", pod_sec.get("runAsUser")) == 1000, f"{name} {where}"
        assert pod_sec.get("runAsNonRoot") is True and pod_sec.get("runAsUser") == 1000, f"{name} {where}"
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), f"{name} {where}"
        assert all("hostPort" not in p for p in c.get("ports", [])), f"{name} {where}: hostPort"
    assert seen >= 2


@pytest.mark.parametrize("name,doc", CRD_DOCS, ids=_ids(CRD_DOCS))
def test_name_ray_version_and_image_placeholders(name, doc):
    assert RAY_VERSION == "2.60.0"
    meta = doc["metadata"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", meta["name"]), "name must be a DNS-1035 label"
    assert len(meta["name"]) <= MAX_NAME[doc["kind"]]
    for spec in cluster_specs(doc):
        assert spec["rayVersion"] == RAY_VERSION
    for where, c, _ in containers(doc):
        if where != "autoscaler" or "image" in c:  # the autoscaler defaults to the head's image
            # A bare placeholder, so an overlay's `images:` sets registry, tag or digest in one place.
            want = SMALL_IMAGE if where.startswith("submitter/") else RAY_IMAGE
            assert c["image"] == want, f"{name} {where}: {c['image']}"
            assert c.get("imagePullPolicy") != "Always"


@pytest.mark.parametrize("name,doc", CRD_DOCS, ids=_ids(CRD_DOCS))
def test_token_auth_on_and_nothing_exposed(name, doc):
    for spec in cluster_specs(doc):
        assert spec["authOptions"] == AUTH, "Ray token auth from the lmcot-ray-auth Secret"
        head = spec["headGroupSpec"]
        assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
        assert "headService" not in head and "ingressOptions" not in head
        groups = [head] + spec.get("workerGroupSpecs", [])
        for group in groups:
            # KubeRay rejects rayStartParams labels, and resources set both there and per group.
            assert "labels" not in group["rayStartParams"] and "resources" not in group
            assert group["template"]["spec"].get("serviceAccountName") in (None, "default")
    if doc["kind"] == "RayService":
        assert doc["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


def test_no_ingress_or_external_service_and_pvc_shape():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"RayCluster", "RayJob", "RayService", "PersistentVolumeClaim"} <= kinds
    assert kinds <= set(CRD_FILES) | {"PersistentVolumeClaim", "Job", "Service", "Secret", "ConfigMap"}, kinds
    for name, doc in DOCS:
        assert doc.get("apiVersion") and doc.get("kind"), name
        assert isinstance(doc.get("metadata", {}).get("name"), str), f"{name}: metadata.name"
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", name
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{name}: no secrets in git"
    # KubeRay names a head Service <name>-head-svc (and a RayService's <name>-serve-svc):
    # two manifests with one name would fight over it.
    services = [f"{d['metadata']['name']}-{s}" for _, d in CRD_DOCS
                for s in (("head-svc", "serve-svc") if d["kind"] == "RayService" else ("head-svc",))]
    assert len(services) == len(set(services)), services
    (pvc,) = [doc for _, doc in DOCS if doc["kind"] == "PersistentVolumeClaim"]
    assert pvc["apiVersion"] == "v1" and pvc["metadata"]["name"] == RUNS_CLAIM
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "head and workers share it across nodes"
    assert quantity(pvc["spec"]["resources"]["requests"]["storage"]) > 0
    # The cluster default is usually ReadWriteOnce block storage: the overlay names an RWX class.
    assert "storageClassName" not in pvc["spec"] and "storageClassName" in (BASE / "pvc.lmcot-runs.yaml").read_text()
    assert overlay_settings()["storage_class"]


@pytest.mark.parametrize("name,doc", CRD_DOCS, ids=_ids(CRD_DOCS))
def test_every_ray_pod_mounts_the_shared_run_dir(name, doc):
    for where, pod in pod_specs(doc):
        if where == "submitter":
            continue
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
        assert claims.get(mounts.get(RUNS_MOUNT)) == RUNS_CLAIM, f"{name} {where}: {RUNS_MOUNT}"
        assert pod["containers"][0].get("workingDir") == "/home/ray/lmcot", "jobs/ paths are relative"
        sec = pod["securityContext"]
        assert sec["fsGroup"] == 100 and sec["fsGroupChangePolicy"] == "OnRootMismatch", f"{name} {where}"
        # /tmp (Ray's logs and spilling, the HF trainer's checkpoints) on a bounded emptyDir, not
        # the container's root filesystem; the container's ephemeral-storage limit covers it.
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = volumes[mounts["/tmp"]]["emptyDir"]
        assert "medium" not in tmp and quantity(tmp["sizeLimit"]) > 0, f"{name} {where}: /tmp"
        limits = pod["containers"][0]["resources"]["limits"]
        assert quantity(tmp["sizeLimit"]) < quantity(limits["ephemeral-storage"]), f"{name} {where}"
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory" and quantity(shm["sizeLimit"]) <= quantity(limits["memory"]) / 3


# --- GPU groups and what the presets ask of them -------------------------------------------------

def gpu_groups(spec: dict) -> dict[str, dict]:
    """groupName -> {gpus (most the group can hold), cpus per pod, resource}."""
    out = {}
    for group in spec.get("workerGroupSpecs", []):
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        gpus_per_pod = int(limits.get("nvidia.com/gpu", 0))
        custom = json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))
        out[group["groupName"]] = {"gpus": gpus_per_pod * group["maxReplicas"],
                                   "cpus": quantity(limits["cpu"]), "resources": custom,
                                   "per_pod": gpus_per_pod, "group": group}
    return out


@pytest.mark.parametrize("name,doc", CRD_DOCS, ids=_ids(CRD_DOCS))
def test_gpu_groups_advertise_their_role(name, doc):
    for spec in cluster_specs(doc):
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", "job drivers and GCS only on the head"
        assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
        for group_name, g in gpu_groups(spec).items():
            assert group_name in GROUP_RESOURCE and g["per_pod"] == 1
            assert g["resources"] == {GROUP_RESOURCE[group_name]: 1}
            group = g["group"]
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
            if group["minReplicas"] == 0:
                assert spec.get("enableInTreeAutoscaling"), f"{group_name}: scale from zero needs the autoscaler"
            pod = group["template"]["spec"]
            assert pod["nodeSelector"] == {}, "node selection is the overlay's (node-selectors.yaml)"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def job_args(doc: dict):
    """The entrypoint of a RayJob parsed by the real lmcot CLI: (script, parsed args)."""
    from lmcot.cli import build_parser

    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith("jobs/"), argv
    script = ROOT / argv[1]
    assert script.is_file(), f"{argv[1]} does not exist"
    (command,) = re.findall(r'main\(\["([a-z-]+)"', script.read_text())
    return script, build_parser().parse_args([command, *argv[2:]])


def test_one_ray_job_per_stage():
    assert sorted(name for name, _ in JOBS) == sorted(f"ray-job.{s}.yaml" for s in JOB_SCRIPTS)


@pytest.mark.parametrize("name,doc", JOBS, ids=_ids(JOBS))
def test_ray_job_entrypoint_runs_a_stage_on_a_preset(name, doc):
    from lmcot.config import load_config

    stage = name.removeprefix("ray-job.").removesuffix(".yaml")
    script, args = job_args(doc)
    assert script.name == JOB_SCRIPTS[stage]
    assert (ROOT / "configs" / f"{args.config}.yaml").is_file(), f"no preset configs/{args.config}.yaml"
    load_config(args.config, args.overrides)  # raises on a bad key or value
    assert Path(args.run_dir).is_relative_to(RUNS_MOUNT), "the run dir must be on the shared volume"


@pytest.mark.parametrize("name,doc", JOBS, ids=_ids(JOBS))
def test_ray_job_pins_each_model_to_its_gpu_group(name, doc):
    from lmcot.config import load_config

    _, args = job_args(doc)
    cfg = load_config(args.config, args.overrides)
    assert (cfg.small.ray_resource, cfg.large.ray_resource) == ("small_lm", "large_lm")
    for group_name, g in gpu_groups(doc["spec"]["rayClusterSpec"]).items():
        assert set(g["resources"]) <= {cfg.small.ray_resource, cfg.large.ray_resource}, group_name


@pytest.mark.parametrize("name,doc", JOBS, ids=_ids(JOBS))
def test_ray_job_owns_its_cluster_and_cleans_up(name, doc):
    spec = doc["spec"]
    assert "clusterSelector" not in spec and spec["rayClusterSpec"]
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 1
    # An unschedulable pod fails the job in minutes instead of holding the GPUs that did schedule
    # until activeDeadlineSeconds (hours to days).
    assert 600 <= spec["preRunningDeadlineSeconds"] <= 3600 < spec["activeDeadlineSeconds"]
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    assert not spec.get("entrypointNumCpus") and not spec.get("entrypointNumGpus"), "drivers run on the head"


@pytest.mark.parametrize("name,doc", JOBS, ids=_ids(JOBS))
def test_ray_job_cluster_holds_what_its_preset_asks(name, doc):
    from lmcot.config import load_config

    stage = name.removeprefix("ray-job.").removesuffix(".yaml")
    _, args = job_args(doc)
    cfg = load_config(args.config, args.overrides)
    groups = gpu_groups(doc["spec"]["rayClusterSpec"])
    small, large = groups.get("small-lm-gpu"), groups.get("large-lm-gpu")
    needs = []
    if stage in ("generate-rationales", "pipeline"):
        r = cfg.rationales
        needs.append((large, r.num_actors * r.gpus_per_actor, r.cpus_per_actor))
    for section, stages in (("distill", ("distill", "pipeline")), ("refine", ("refine", "search", "pipeline"))):
        scaling = getattr(cfg, section).scaling
        if stage in stages and scaling.use_gpu:
            needs.append((small, scaling.num_workers, scaling.cpus_per_worker))
    if stage in ("refine", "search", "pipeline"):
        needs.append((large, 1, 1))  # judge
    if stage == "search":  # trials at once, each: judges plus its own evaluation on a large-LM GPU
        s, rc = cfg.search, cfg.refine
        assert s.trial_gpus >= 1, f"{name}: a trial's evaluation loads both LMs: set search.trial_gpus"
        needs.append((large, s.max_concurrent_trials * (s.trial_gpus + rc.judge_num_actors * rc.judge_num_gpus),
                      max(s.trial_cpus, rc.judge_num_cpus)))
    if stage in ("eval", "pipeline"):
        # The driver runs on the CPU-only head: the evaluation must run in its own GPU actor.
        assert cfg.eval.on_cluster and cfg.eval.num_gpus >= 1, f"{name}: set eval.on_cluster and eval.num_gpus"
        needs.append((large, cfg.eval.num_gpus, cfg.eval.num_cpus))
    assert needs
    for group, gpus, cpus in needs:
        assert group is not None, f"{name}: a stage needs a GPU group it lacks"
        assert group["gpus"] >= gpus and group["cpus"] >= cpus, (name, group["gpus"], gpus, cpus)


# --- sizing, storage, secrets, and applying one part at a time ---------------------------------------

# Common GPU nodes: (vCPUs, memory GiB, GPUs), from the providers' published shapes. A pod must fit
# 90 % of its per-GPU share: the rest is the kubelet's reservations and the DaemonSets (GPU device
# plugin, logging, CNI). 1-GPU nodes with 8 vCPUs take only the small LM (a 24-48 GB card).
NODE_TYPES = {
    "p4d.24xlarge (8x A100 40GB)": (96, 1152, 8), "p5.48xlarge (8x H100)": (192, 2048, 8),
    "a2-highgpu-8g (8x A100 40GB)": (96, 633, 8), "a3-highgpu-8g (8x H100)": (208, 1743, 8),
    "ND96asr_v4 (8x A100 40GB)": (96, 900, 8), "a2-highgpu-1g (A100 40GB)": (12, 79, 1),
    "a3-highgpu-1g (H100)": (26, 218, 1), "g6e.2xlarge (L40S)": (8, 64, 1),
}
SMALL_ONLY = {"g6e.2xlarge (L40S)"}
NODE_SHARE = 0.9


@pytest.mark.parametrize("name,doc", CRD_DOCS, ids=_ids(CRD_DOCS))
def test_per_gpu_requests_fit_common_gpu_nodes(name, doc):
    for spec in cluster_specs(doc):
        for group_name, g in gpu_groups(spec).items():
            requests = g["group"]["template"]["spec"]["containers"][0]["resources"]["requests"]
            for node, (cpus, mem_gib, gpus) in NODE_TYPES.items():
                if group_name == "large-lm-gpu" and node in SMALL_ONLY:
                    continue
                assert quantity(requests["cpu"]) <= NODE_SHARE * cpus / gpus, (name, group_name, node)
                assert quantity(requests["memory"]) <= NODE_SHARE * mem_gib * 2**30 / gpus, (name, group_name, node)
            # The sums behind the numbers stand next to each group (docs/deployment.md has the table).
            text = (BASE / name).read_text()
            assert re.search(rf"# {group_name}, per GPU: {requests['cpu']} CPU, "
                             rf"{requests['memory'].removesuffix('Gi')} GiB", text), (name, group_name)


def test_run_volume_init_job_is_the_only_root_container():
    (job,) = [doc for _, doc in DOCS if doc["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sec = c["securityContext"]
    assert c["image"] == SMALL_IMAGE and pod["restartPolicy"] == "Never"
    assert sec["runAsUser"] == 0 and sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert [claims[m["name"]] for m in c["volumeMounts"] if m["mountPath"] == RUNS_MOUNT] == [RUNS_CLAIM]
    script = c["args"][0]
    assert "chown 1000:100" in script and 'stat -c %u "$d")" != 1000' in script, "only when not yet owned"
    assert job["metadata"]["labels"][COMPONENT] == "run-volume", "applied with the claim"
    for _, doc in CRD_DOCS:
        for where, c, pod in containers(doc):
            assert c.get("securityContext", {}).get("runAsUser", 1000) == 1000


def test_each_part_is_applied_on_its_own_by_label():
    """`kubectl apply -k OVERLAY -l app.kubernetes.io/component=X` picks exactly one part."""
    parts: dict[str, list[str]] = {}
    for _, doc in DOCS:
        parts.setdefault(doc["metadata"]["labels"][COMPONENT], []).append(doc["kind"])
    assert sorted(parts.pop("run-volume")) == ["Job", "PersistentVolumeClaim"]
    assert all(len(kinds) == 1 for kinds in parts.values()), parts
    assert set(parts) == set(JOB_SCRIPTS) | {"ray-cluster", "serve"}
    used = set()
    for doc_file in (ROOT / "README.md", CLUSTER / "README.md", OVERLAY / "kustomization.yaml"):
        used |= set(re.findall(rf"-l {re.escape(COMPONENT)}=([a-z-]+)", doc_file.read_text()))
    assert used and used <= set(parts) | {"run-volume"}, used - set(parts)
    assert {"run-volume", "refine", "serve"} <= used, "the docs walk through storage, refine, then serve"


@pytest.mark.parametrize("name,doc", CRD_DOCS, ids=_ids(CRD_DOCS))
def test_hf_token_reaches_model_pods_from_an_optional_secret_only(name, doc):
    for where, c, _ in containers(doc):
        env = {e["name"]: e for e in c.get("env", [])}
        if where == "autoscaler" or where.startswith("submitter/"):
            assert "HF_TOKEN" not in env, f"{name} {where}: loads no model"
            continue
        assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": HF_TOKEN_REF}}, where
        for e in env.values():
            assert not (e["name"].endswith("TOKEN") and "value" in e), f"{name} {where}: {e['name']} inline"
    # A runtime_env is shown in the dashboard: no secrets there, nor anything else per job.
    assert "runtimeEnvYAML" not in doc["spec"]


# --- the RayService and its Serve config -------------------------------------------------------

def test_ray_service_upgrades_in_place_and_reads_what_refine_wrote():
    (doc,) = SERVICES
    # NewCluster (the default) builds a whole second GPU cluster for any change to rayClusterConfig.
    assert doc["spec"]["upgradeStrategy"] == {"type": "None"}
    (refine,) = [d for n, d in JOBS if n == "ray-job.refine.yaml"]
    _, args = job_args(refine)
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["small"]["name_or_path"] == f"{args.run_dir}/refine/model"
    assert app["args"]["config"] == args.config


def test_ray_service_serves_the_gpu_serve_config_with_the_refined_small_lm():
    from lmcot.serving.app_args import config_from_args  # what build_app parses its args with

    (doc,) = SERVICES
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == SERVE_IMPORT
    # serve_configs/lmcot.gpu.yaml, but serving the small LM that ray-job.refine.yaml trained,
    # each model pinned to its GPU group: these are the only fields that may differ.
    refined = f"{RUNS_MOUNT}/paper/refine/model"
    assert app["args"]["small"]["name_or_path"] == refined
    expected = yaml.safe_load((ROOT / "serve_configs" / "lmcot.gpu.yaml").read_text())
    args = expected["applications"][0]["args"]
    args["small"].update(name_or_path=refined, ray_resource="small_lm")
    args["large"].update(ray_resource="large_lm")
    assert serve == expected, "serveConfigV2 mirrors serve_configs/lmcot.gpu.yaml"

    serve_cfg = config_from_args(app["args"]).serve
    groups = gpu_groups(doc["spec"]["rayClusterConfig"])
    deployments = (serve_cfg.ingress, serve_cfg.rationalizer, serve_cfg.answerer)
    most = {id(d): d.max_replicas if d.autoscaling else d.num_replicas for d in deployments}
    wanted = sum(d.num_gpus * most[id(d)] for d in deployments)
    assert 0 < wanted <= sum(g["gpus"] for g in groups.values()), "GPUs for every replica at full scale"
    assert serve_cfg.answerer.num_gpus * most[id(serve_cfg.answerer)] <= groups["large-lm-gpu"]["gpus"]
    assert serve_cfg.rationalizer.num_gpus * most[id(serve_cfg.rationalizer)] <= groups["small-lm-gpu"]["gpus"]
    for d in deployments:
        assert d.num_gpus <= 1 and any(d.num_cpus <= g["cpus"] for g in groups.values())
    large_limits = groups["large-lm-gpu"]["group"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert serve_cfg.answerer.memory_gb * 1e9 <= quantity(large_limits["memory"])
    assert serve_cfg.auth_token_env, "the RayService serves with bearer auth"
    for where, c, _ in containers(doc):
        if where != "autoscaler":
            env = {e["name"]: e for e in c.get("env", [])}
            ref = env[serve_cfg.auth_token_env]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "lmcot-serve-auth", "key": "token"}, f"{where}: token from the Secret"
            # Serve's HTTP proxy answers its own errors as JSON (lmcot.serving.proxy).
            from lmcot.serving.proxy import PROXY_CALLBACK
            assert env[PROXY_CALLBACK[0]]["value"] == PROXY_CALLBACK[1], where
