"""Re-extract the KubeRay CRD schemas kept in this folder (run by hand when KubeRay is upgraded).

    python tests/schemas/extract_kuberay_schemas.py /path/to/kuberay-checkout v1.7.0

Reads `ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml` at the given git revision and writes
the `openAPIV3Schema` of the served `v1` version, unchanged, as deterministic gzip'd JSON. Then update README.md.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
CRDS = {"raycluster": "ray.io_rayclusters.yaml", "rayjob": "ray.io_rayjobs.yaml"}


def extract(repo: Path, rev: str, crd_file: str) -> dict:
    text = subprocess.check_output(
        ["git", "-C", str(repo), "show", f"{rev}:ray-operator/config/crd/bases/{crd_file}"])
    crd = yaml.safe_load(text)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def main(repo: str, rev: str) -> None:
    commit = subprocess.check_output(["git", "-C", repo, "rev-list", "-n1", rev], text=True).strip()
    for name, crd_file in CRDS.items():
        schema = extract(Path(repo), rev, crd_file)
        data = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
        out = HERE / f"kuberay-{rev}-{name}-v1.schema.json.gz"
        out.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))  # mtime=0: byte-identical reruns
        print(f"{out.name}: {len(data)} bytes of JSON from {crd_file} at {rev} ({commit})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
