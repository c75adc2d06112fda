"""Write the trimmed KubeRay CRD schemas of this folder from the upstream CRD files.

    python cluster/crds/vendor.py KUBERAY/ray-operator/config/crd/bases

Keeps, per kind, the ``openAPIV3Schema`` of the ``v1`` version (the one the manifests use)
without its ``description`` texts, which validation never reads: 3.4 MB of YAML become about
0.5 MB of JSON, and ``tests/test_manifests.py`` validates exactly as against the full files.
Rerun it with a new KubeRay release's files (and change ``KUBERAY`` below) to move the pin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

KUBERAY = "v1.7.0"
SOURCE = f"https://github.com/ray-project/kuberay/tree/{KUBERAY}/ray-operator/config/crd/bases"
FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
         "RayService": "ray.io_rayservices.yaml"}
HERE = Path(__file__).resolve().parent


def without_descriptions(schema):
    """``schema`` minus every ``description`` text (a property *named* description is a dict: kept)."""
    if isinstance(schema, dict):
        return {k: without_descriptions(v) for k, v in schema.items()
                if not (k == "description" and isinstance(v, str))}
    if isinstance(schema, list):
        return [without_descriptions(v) for v in schema]
    return schema


def trimmed(crd: dict, kind: str) -> dict:
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return {"kind": kind, "apiVersion": f"{crd['spec']['group']}/v1", "kuberay": KUBERAY, "source": SOURCE,
            "openAPIV3Schema": without_descriptions(v1["schema"]["openAPIV3Schema"])}


def main(upstream: str) -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for kind, name in FILES.items():
        crd = yaml.load((Path(upstream) / name).read_text(), Loader=loader)
        out = HERE / name.replace(".yaml", ".json")
        out.write_text(json.dumps(trimmed(crd, kind), sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
