"""The cluster files in cluster/ and the commands in their docs, checked offline with the tools' own validators.

- Launcher configs (cluster/aws.yaml, cluster/gcp.yaml): the `ray-schema.json` shipped in the installed Ray wheel,
  then Ray's own `prepare_config` + `validate_config` (what `ray up` runs before it touches a cloud).
- KubeRay manifests: the RayCluster / RayJob CRD schemas of KubeRay v1.7.0 kept in tests/schemas/ (see its
  README), closed the way `kubectl apply --validate=strict` closes them, plus the admission rules of KubeRay's
  operator that a schema cannot state.
- Versions: every Ray version and image in cluster/ and in the cluster docs equals the `ray[...]==X.Y.Z` pin.
- Docs: the cluster guides walk through their steps in order (every command in every doc parses: test_docs.py,
  with the parsers of `atomica_ray_args` and `parse_ray` here).
Each validator also gets a broken input, to show that it can fail.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
LAUNCHERS = ("aws.yaml", "gcp.yaml")
MANIFESTS = {"kuberay/raycluster.yaml": "RayCluster", "kuberay/rayjob.yaml": "RayJob"}
CLUSTER_DOC = ROOT / "docs" / "running-on-a-cluster.md"  # the walk-through that cluster/*.yaml point to
LOCAL_DOC = CLUSTER / "local-debugging.md"
CRD_SCHEMAS = {"RayCluster": "kuberay-v1.7.0-raycluster-v1.schema.json.gz",
               "RayJob": "kuberay-v1.7.0-rayjob-v1.schema.json.gz"}
# Ray's image tags: {ray version}-py{3x}-{platform}, platform `gpu` (alias of a CUDA build) or `cu12x`.
IMAGE = re.compile(r"rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py3\d+-(?:gpu|cu12\d)")
# GPUs per AWS instance type used in aws.yaml (AWS's published specs); AWS reports them to Ray itself.
AWS_GPUS = {"m5.2xlarge": 0, "g5.2xlarge": 1, "p4d.24xlarge": 8}


def load(relpath: str) -> dict:
    return yaml.safe_load((CLUSTER / relpath).read_text())


def cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def pods(doc: dict) -> list[dict]:
    spec = cluster_spec(doc)
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


# ---------------------------------------------------------------------------------------------------- versions


def ray_pin(dependencies: list[str]) -> str:
    """The single Ray version that `ray[...]==X.Y.Z` pins; anything looser is an error."""
    (ray,) = [Requirement(d) for d in dependencies if Requirement(d).name == "ray"]
    specs = list(ray.specifier)
    if len(specs) != 1 or specs[0].operator != "==" or len(Version(specs[0].version).release) != 3:
        raise ValueError(f"pyproject.toml: pin ray to one version, e.g. ray[train,tune]==2.60.0 (found {ray})")
    return specs[0].version


@pytest.fixture(scope="module")
def pin() -> str:
    return ray_pin(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def test_ray_pin_parser_rejects_ranges():
    assert ray_pin(["torch>=2.3", "ray[default,train,tune]==2.60.0"]) == "2.60.0"
    for loose in ("ray[train,tune]>=2.51,<3", "ray[train]", "ray==2.60"):
        with pytest.raises(ValueError, match="pin ray to one version"):
            ray_pin([loose])


def test_installed_ray_is_the_pinned_one(pin):
    # the launcher schema below is read from the installed wheel: it must be the pinned Ray's
    import ray

    assert ray.__version__ == pin


def version_mentions(text: str) -> list[str]:
    """Every Ray version a cluster file or doc names: image tags, rayVersion, 'Ray X.Y.Z', ray[...]==X.Y.Z."""
    found = [m.group("version") for m in re.finditer(r"rayproject/ray(?:-ml)?:(?P<version>[\w.]+?)(?:-|\"|'|\s|$)",
                                                     text)]
    found += re.findall(r"rayVersion:\s*[\"']?([\w.]+)", text)
    found += re.findall(r"\bRay (\d+\.\d+(?:\.\d+)?)\b", text)
    found += re.findall(r"\bray(?:\[[\w,]*\])?==([\w.]+)", text)
    return found


def cluster_texts() -> dict[str, str]:
    files = sorted(p for p in CLUSTER.rglob("*") if p.is_file())
    files += [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files}


def test_every_ray_version_in_cluster_files_is_the_pin(pin):
    mentions = {name: version_mentions(text) for name, text in cluster_texts().items()}
    assert sum(len(v) for v in mentions.values()) >= 10, mentions
    wrong = {name: [v for v in found if v != pin] for name, found in mentions.items()}
    assert not any(wrong.values()), f"Ray versions other than the pin {pin}: {wrong}"


def test_version_scan_sees_stale_versions():
    text = "image: rayproject/ray:2.59.0-py311-gpu\nrayVersion: '2.52.0'\n# Ray 2.60\npip install ray[default]==2.49.1"
    assert version_mentions(text) == ["2.59.0", "2.52.0", "2.60", "2.49.1"]
    assert version_mentions("image: rayproject/ray:latest-gpu") == ["latest"]


def images(relpath: str) -> list[str]:
    doc = load(relpath)
    if relpath.startswith("kuberay/"):
        return [c["image"] for pod in pods(doc) for c in pod["spec"]["containers"]]
    docker = doc["docker"]
    found = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    found += [t["docker"]["worker_image"] for t in doc["available_node_types"].values()
              if "worker_image" in t.get("docker", {})]
    return found


def image_errors(image: str, pin: str) -> list[str]:
    match = IMAGE.fullmatch(image)
    if not match:
        return [f"{image}: not a pinned rayproject/ray:<version>-py3xx-<gpu|cu12x> tag"]
    if match["version"] != pin:
        return [f"{image}: Ray {match['version']}, but pyproject pins {pin}"]
    return []


def test_one_pinned_image_everywhere(pin):
    found = {relpath: images(relpath) for relpath in (*LAUNCHERS, *MANIFESTS)}
    assert all(found.values()), found
    assert len({i for imgs in found.values() for i in imgs}) == 1, f"one image for every node: {found}"
    assert [e for imgs in found.values() for i in imgs for e in image_errors(i, pin)] == []


def test_image_check_rejects_unpinned_tags(pin):
    assert image_errors("rayproject/ray:latest-gpu", pin)
    assert image_errors("rayproject/ray-ml:2.60.0-py311-gpu", pin)
    assert image_errors("rayproject/ray:2.60.0-py311-cpu", pin)  # no CUDA: GPU workers would not see their GPUs
    assert "pyproject pins" in image_errors("rayproject/ray:2.59.0-py311-cu128", pin)[0]


def test_one_torch_version_everywhere():
    versions = {v for text in cluster_texts().values() for v in re.findall(r"\btorch==([\w.+]+)", text)}
    assert len(versions) == 1, versions


# ------------------------------------------------------------------------------------------- launcher configs


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def launcher_errors(config: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(config)]


def ray_up_checks(config: dict) -> None:
    """What `ray up` does with a config before it calls a cloud API: fill in defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_rays_schema_and_checks(name, ray_schema):
    config = load(name)
    assert launcher_errors(config, ray_schema) == []
    ray_up_checks(config)


def test_launcher_validators_reject_broken_configs(ray_schema):
    good = load("aws.yaml")
    bad = copy.deepcopy(good)
    bad["available_node_types"]["gpu_1x"]["min_worker"] = 1  # misspelt
    bad["max_workers"] = "ten"
    bad["available_node_types"]["gpu_8x"]["resources"] = {"GPU": -8}
    errors = launcher_errors(bad, ray_schema)
    assert any("'min_worker' was unexpected" in e for e in errors), errors
    assert any(e.startswith("max_workers:") for e in errors), errors
    assert any("GPU" in e and "minimum" in e for e in errors), errors
    assert launcher_errors({"cluster_name": "x"}, ray_schema) == ["<root>: 'provider' is a required property"]

    wrong_head = copy.deepcopy(good)
    wrong_head["head_node_type"] = "head_gpu"  # schema-valid, but names no node type
    assert launcher_errors(wrong_head, ray_schema) == []
    with pytest.raises(ValueError, match="head_node_type"):
        ray_up_checks(wrong_head)


def gpus_of(name: str, node_type: dict) -> int:
    config = node_type["node_config"]
    if name == "aws.yaml":
        return AWS_GPUS[config["InstanceType"]]
    return sum(a["acceleratorCount"] for a in config.get("guestAccelerators", []))


def is_spot(name: str, node_type: dict) -> bool:
    config = node_type["node_config"]
    if name == "aws.yaml":
        return config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = config.get("scheduling", {})
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_cpu_head_and_gpu_worker_types(name):
    config = load(name)
    types = config["available_node_types"]
    assert gpus_of(name, types[config["head_node_type"]]) == 0, "the head is a CPU node"
    workers = {k: t for k, t in types.items() if k != config["head_node_type"]}
    for key, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], key
    on_demand = sorted(gpus_of(name, t) for t in workers.values() if not is_spot(name, t))
    spot = [gpus_of(name, t) for t in workers.values() if is_spot(name, t)]
    assert on_demand == [1, 8] and spot == [1], (on_demand, spot)


def test_gcp_node_types_state_what_they_have():
    # GCP reports nothing to Ray: `resources` must match machineType and guestAccelerators, and GPU machines
    # must stop on host maintenance. `scheduling` is an object (ray-project/ray#46248: a list is not).
    for key, node_type in load("gcp.yaml")["available_node_types"].items():
        config = node_type["node_config"]
        vcpus = int(re.fullmatch(r"[a-z]\w*-(?:standard|highmem|highcpu)-(\d+)", config["machineType"])[1])
        assert node_type["resources"].get("CPU") == vcpus, key
        gpus = gpus_of("gcp.yaml", node_type)
        assert node_type["resources"].get("GPU", 0) == gpus, key
        if gpus:
            assert isinstance(config["scheduling"], dict), key
            assert config["scheduling"]["onHostMaintenance"] == "TERMINATE", key
            assert {"key": "install-nvidia-driver", "value": "True"} in config["metadata"]["items"], key
        if is_spot("gcp.yaml", node_type):
            assert config["scheduling"]["automaticRestart"] is False, key


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_installs_torch_and_this_checkout(name):
    config = load(name)
    checkout = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert len(checkout) == 1, "the checkout (local '.') is mounted on every node"
    setup = config["setup_commands"]
    assert any(re.search(r"pip install .*torch==", c) for c in setup), setup
    assert any(re.search(rf"pip install .*{re.escape(checkout[0])}\b", c) for c in setup), setup
    assert ".gitignore" in config["rsync_filter"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_token_auth_and_private_dashboard(name):
    config = load(name)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head
    assert re.findall(r"--dashboard-host[= ](\S+)", head) == ["127.0.0.1"]
    assert "security_group" not in config["provider"], "no inbound rules beyond Ray's SSH + intra-cluster"


def test_launcher_workers_can_write_to_the_bucket():
    for key, node_type in load("aws.yaml")["available_node_types"].items():
        if key != "head_cpu":  # the head gets Ray's default profile
            assert node_type["node_config"]["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}, key
    for key, node_type in load("gcp.yaml")["available_node_types"].items():
        if key != "head_cpu":
            (account,) = node_type["node_config"]["serviceAccounts"]
            assert account["email"].startswith("ray-autoscaler-sa-v1@"), key
            assert "https://www.googleapis.com/auth/cloud-platform" in account["scopes"], key


# ------------------------------------------------------------------------------------------ KubeRay manifests


def strict(schema):
    """A copy of a Kubernetes structural schema that rejects unknown fields, as `kubectl --validate=strict` does.

    Walks schema keywords only (`properties` maps field names to schemas), so a field that happens to be called
    `properties` or `items` is not mistaken for a keyword.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {field: strict(s) for field, s in out["properties"].items()}
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
def crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    validators = {}
    for kind, filename in CRD_SCHEMAS.items():
        schema = strict(json.loads(gzip.decompress((SCHEMAS / filename).read_bytes())))
        schema["properties"]["apiVersion"] = {"type": "string", "enum": ["ray.io/v1"]}
        schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
        validators[kind] = jsonschema.Draft7Validator(schema)
    return validators


def crd_errors(doc: dict, validators) -> list[str]:
    validator = validators[doc.get("kind")] if doc.get("kind") in validators else validators["RayCluster"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def admission_errors(doc: dict) -> list[str]:
    """KubeRay v1.7.0's admission rules (ray-operator/controllers/ray/utils/validation.go) for what we use."""
    errors = []
    kind, name = doc["kind"], doc["metadata"].get("name", "")
    max_len = {"RayCluster": 53, "RayJob": 47}[kind]
    if not DNS_1035.fullmatch(name) or len(name) > max_len:
        errors.append(f"metadata.name {name!r}: a DNS-1035 label of at most {max_len} characters")
    spec = doc["spec"]
    if kind == "RayJob":
        if spec.get("ttlSecondsAfterFinished", 0) < 0:
            errors.append("ttlSecondsAfterFinished must be >= 0")
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            errors.append("suspend needs shutdownAfterJobFinishes")
        if spec.get("activeDeadlineSeconds", 1) <= 0 or spec.get("backoffLimit", 0) < 0:
            errors.append("activeDeadlineSeconds must be > 0 and backoffLimit >= 0")
        try:
            yaml.safe_load(spec.get("runtimeEnvYAML", ""))
        except yaml.YAMLError as error:
            errors.append(f"runtimeEnvYAML: {error}")
        if "rayClusterSpec" not in spec and not spec.get("clusterSelector"):
            errors.append("one of rayClusterSpec or clusterSelector must be set")
        spec = spec.get("rayClusterSpec", {})
    if not spec:
        return errors
    if not spec["headGroupSpec"]["template"]["spec"].get("containers"):
        errors.append("headGroupSpec needs a container")
    for group in spec.get("workerGroupSpecs", []):
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not spec.get("enableInTreeAutoscaling") and (lo is None or hi is None):
            errors.append(f"{group['groupName']}: minReplicas and maxReplicas are required without autoscaling")
        if lo is not None and hi is not None and not 0 <= lo <= hi:
            errors.append(f"{group['groupName']}: needs 0 <= minReplicas <= maxReplicas")
        if not group["template"]["spec"].get("containers"):
            errors.append(f"{group['groupName']}: needs a container")
    if spec.get("authOptions", {}).get("mode") == "token":
        if Version(spec.get("rayVersion") or "0") < Version("2.52.0"):
            errors.append("authOptions.mode token needs rayVersion >= 2.52.0")
    return errors


@pytest.mark.parametrize("relpath", MANIFESTS)
def test_manifest_passes_kuberay_crd_schema_and_admission(relpath, crd_validators):
    doc = load(relpath)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == MANIFESTS[relpath]
    assert crd_errors(doc, crd_validators) == []
    assert admission_errors(doc) == []


def test_crd_validation_rejects_broken_manifests(crd_validators):
    good = load("kuberay/rayjob.yaml")

    def errors_after(change) -> list[str]:
        doc = copy.deepcopy(good)
        change(doc)
        return crd_errors(doc, crd_validators)

    def worker(doc, i=0):
        return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][i]

    def container(doc, i=0):
        return worker(doc, i)["template"]["spec"]["containers"][0]

    assert any("'shutdownAfterJobFinish' was unexpected" in e for e in
               errors_after(lambda d: d["spec"].update(shutdownAfterJobFinish=True)))
    assert any("'limit' was unexpected" in e for e in
               errors_after(lambda d: container(d)["resources"].update(limit={"nvidia.com/gpu": 1})))
    assert any("'efect' was unexpected" in e for e in
               errors_after(lambda d: worker(d)["template"]["spec"]["tolerations"][0].update(efect="NoSchedule")))
    assert any("is not of type 'integer'" in e for e in errors_after(lambda d: worker(d).update(replicas="two")))
    assert any("is not one of ['disabled', 'token']" in e for e in
               errors_after(lambda d: d["spec"]["rayClusterSpec"]["authOptions"].update(mode="tokens")))
    # int-or-string quantities: integers and Kubernetes quantity strings pass, free text does not
    assert errors_after(lambda d: container(d)["resources"]["limits"].update(cpu=7, memory="28Gi")) == []
    assert any("does not match" in e for e in
               errors_after(lambda d: container(d)["resources"]["limits"].update(memory="28 GiB")))
    assert any("'headGroupSpec' is a required property" in e for e in
               errors_after(lambda d: d["spec"]["rayClusterSpec"].pop("headGroupSpec")))
    assert any("is not one of ['ray.io/v1']" in e for e in errors_after(lambda d: d.update(apiVersion="ray.io/v1alpha1")))
    assert any("'unexpected' was unexpected" in e for e in errors_after(lambda d: d.update(unexpected=1)))
    cluster_as_job = load("kuberay/raycluster.yaml") | {"kind": "RayJob"}
    assert any(e.startswith("spec: ") and "'headGroupSpec'" in e and "were unexpected" in e
               for e in crd_errors(cluster_as_job, crd_validators))


def test_admission_rules_reject_what_kuberay_rejects():
    job = load("kuberay/rayjob.yaml")
    for change, message in [
        (lambda d: d["metadata"].update(name="Atomica_Ray"), "DNS-1035"),
        (lambda d: d["metadata"].update(name="a" * 48), "at most 47"),
        (lambda d: d["spec"]["rayClusterSpec"].pop("rayVersion"), "rayVersion >= 2.52.0"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=5), "minReplicas <="),
        (lambda d: d["spec"].update(runtimeEnvYAML="pip: [torch"), "runtimeEnvYAML"),
        (lambda d: d["spec"].update(ttlSecondsAfterFinished=-1), "ttlSecondsAfterFinished"),
        (lambda d: d["spec"].pop("rayClusterSpec"), "rayClusterSpec or clusterSelector"),
    ]:
        doc = copy.deepcopy(job)
        change(doc)
        assert any(message in e for e in admission_errors(doc)), message


@pytest.mark.parametrize("relpath", MANIFESTS)
def test_manifest_gpu_groups_token_auth_and_private_dashboard(relpath, pin):
    doc = load(relpath)
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == pin
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    on_demand, spot = [], []
    for group in spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        gpus = int(resources["limits"]["nvidia.com/gpu"])
        assert int(resources.get("requests", {}).get("nvidia.com/gpu", gpus)) == gpus, group["groupName"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), group["groupName"]
        is_spot = any("spot" in k for k in pod.get("nodeSelector", {}))
        (spot if is_spot else on_demand).append(gpus)
    assert sorted(on_demand) == [1, 8] and spot == [1], (on_demand, spot)


def test_rayjob_and_raycluster_describe_the_same_cluster():
    # two copies of one cluster: keep them in step (a change to one belongs in the other)
    assert load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"] == load("kuberay/raycluster.yaml")["spec"]


def test_every_pod_mounts_the_shared_volume():
    claim = load("kuberay/storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    for relpath in MANIFESTS:
        for pod in pods(load(relpath)):
            volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
            mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
            shared = [n for n, v in volumes.items()
                      if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
            assert [mounts[n] for n in shared] == ["/mnt/cluster_storage"], relpath


# ------------------------------------------------------------------------------------- entrypoints and commands


class RaisingParser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(f"{self.prog}: {message}")


def atomica_ray_args(argv: list[str]) -> argparse.Namespace:
    """Parse `atomica-ray COMMAND ...` with the command's own parser (atomica_ray.cli.main's dispatch)."""
    from atomica_ray.cli.main import COMMANDS

    if argv[0] != "atomica-ray" or len(argv) < 2 or argv[1] not in COMMANDS:
        raise ValueError(f"not an atomica-ray command: {shlex.join(argv)}")
    module_name = COMMANDS[argv[1]][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            pytest.skip(f"{module_name} is not written yet")
        raise
    parser = RaisingParser(prog=f"atomica-ray {argv[1]}")
    module.add_arguments(parser)
    args = parser.parse_args(argv[2:])
    if argv[1] == "train":  # the flags must also make a valid TrainConfig
        module.resolve_config(args)
    return args


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell snippet, split at lines, && ; | and redirections; `VAR=value` prefixes
    dropped. Enough shell for documentation snippets, not a shell parser."""
    commands, current = [], []
    for token in (t for line in script.replace("\\\n", " ").splitlines() for t in [*_tokens(line), "\n"]):
        if token and set(token) <= set("();<>|&\n"):
            commands.append(current)
            current = [] if token != ">" else ["<redirect>"]
            continue
        if current == ["<redirect>"]:
            current = []  # the redirection's target
            continue
        if not current and re.fullmatch(r"[A-Za-z_]\w*=.*", token):
            continue
        current.append(token)
    commands.append(current)
    return [c for c in commands if c and c != ["<redirect>"]]


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def shell_operators(entrypoint: str) -> list[str]:
    return [t for t in _tokens(entrypoint) if set(t) <= set("();<>|&")]


def test_rayjob_entrypoint_runs_atomica_ray_on_gpus():
    spec = load("kuberay/rayjob.yaml")["spec"]
    # KubeRay pastes the entrypoint into a shell command line after `ray job submit ... --`: an operator would
    # run the rest in the submitter pod instead of the Ray job
    assert shell_operators(spec["entrypoint"]) == []
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] in (["atomica-ray", "train"], ["atomica-ray", "tune"])
    args = atomica_ray_args(argv)
    if argv[1] == "train":
        assert args.use_gpu is True and int(str(args.num_workers).split(":")[0]) >= 1  # N or MIN:MAX
    else:
        assert float(args.gpus_per_trial) >= 1
    assert args.storage_path.startswith("/mnt/cluster_storage/") and args.name
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    packages = {Requirement(p).name for p in runtime_env["pip"]}
    assert {"atomica-ray", "torch"} <= packages
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0


def test_entrypoint_checks_reject_bad_entrypoints():
    assert shell_operators("atomica-ray demo-data --out /d && atomica-ray train --train_set /d") == ["&&"]
    assert shell_operators("atomica-ray train --name 'a;b'") == []
    with pytest.raises(ValueError, match="unrecognized arguments: --use_gpus"):
        atomica_ray_args(["atomica-ray", "train", "--use_gpus"])
    with pytest.raises(ValueError, match="not an atomica-ray command"):
        atomica_ray_args(["atomica-ray", "fly"])


def parse_ray(argv: list[str]):
    """Parse a `ray ...` command line with Ray's own click CLI, without running it; return (command, params)."""
    import click
    from ray.scripts.scripts import cli

    command, name, args, ctx = cli, "ray", list(argv[1:]), None
    while True:
        ctx = command.make_context(name, args, parent=ctx)
        if not isinstance(command, click.Group):
            return command.name, ctx.params
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, args = command.resolve_command(ctx, rest)


def doc_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(where, argv) of every `ray` and `atomica-ray` command in the doc's ```bash blocks, in order."""
    text = path.read_text()
    found = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        first = text[: block.start()].count("\n") + 2  # line of the block's first command
        lines = block.group(1).split("\n")
        i = 0
        while i < len(lines):  # one logical line: a line and its backslash continuations
            start = i
            while lines[i].endswith("\\"):
                i += 1
            for argv in shell_commands("\n".join(lines[start: i + 1])):
                if argv[0] in ("ray", "atomica-ray"):
                    found.append((f"{path.name}:{first + start}:{shlex.join(argv[:3])}", argv))
            i += 1
    return found


def test_command_parsers_reject_typos():
    import click

    with pytest.raises(click.ClickException, match="--dashbord-host"):
        parse_ray(["ray", "start", "--head", "--dashbord-host=127.0.0.1"])
    with pytest.raises(click.ClickException):
        parse_ray(["ray", "job", "submit", "--adress", "http://127.0.0.1:8265", "--", "python"])
    assert shell_commands('A=1 ray status && atomica-ray train --name x > out.yaml; echo "a && b"') == [
        ["ray", "status"], ["atomica-ray", "train", "--name", "x"], ["echo", "a && b"]]


def steps(commands: list[tuple[str, list[str]]], *prefixes: str) -> list[int]:
    """Index of the first command starting with each prefix (ValueError if one is missing)."""
    joined = [shlex.join(argv) for _, argv in commands]
    return [next(i for i, c in enumerate(joined) if c.startswith(p)) for p in prefixes]


def test_local_guide_covers_the_loop_in_order():
    commands = doc_commands(LOCAL_DOC)
    order = steps(commands, "ray get-auth-token --generate", "ray start --head", "ray job submit",
                  "ray job submit --address http://127.0.0.1:8265 --working-dir . -- atomica-ray train", "ray stop")
    assert order == sorted(order)
    text = LOCAL_DOC.read_text()
    assert "export RAY_AUTH_MODE=token" in text and "http://127.0.0.1:8265" in text
    start = next(argv for _, argv in commands if argv[:3] == ["ray", "start", "--head"])
    assert parse_ray(start)[1]["dashboard_host"] == "127.0.0.1"


def test_cluster_guide_brings_up_submits_fetches_and_tears_down():
    text = CLUSTER_DOC.read_text()
    assert "docs/running-on-a-cluster.md" in (ROOT / "README.md").read_text(), "the README points to the guide"
    commands = doc_commands(CLUSTER_DOC)
    order = steps(commands, "ray get-auth-token --generate", "ray up", "ray dashboard", "ray job submit", "ray down")
    assert order == sorted(order)
    submit = next(argv for _, argv in commands if argv[:3] == ["ray", "job", "submit"])
    entrypoint = list(parse_ray(submit)[1]["entrypoint"])
    assert entrypoint[:2] == ["atomica-ray", "tune"] and "--storage-path" in entrypoint
    assert re.search(r"^aws s3 sync s3://", text, re.M), "fetching the results"


def test_every_placeholder_is_explained_in_the_cluster_guide():
    used = {p for path in CLUSTER.rglob("*.yaml") for p in re.findall(r"\bYOUR_[A-Z_]+\b", path.read_text())}
    assert used, "the configs name what the user must fill in"
    assert used <= set(re.findall(r"\bYOUR_[A-Z_]+\b", CLUSTER_DOC.read_text()))
