#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline: every manifest against the Kubernetes JSON
# schemas (kubernetes-validate, which bundles them, in strict mode: unknown fields fail),
# kustomization.yaml's resources against the files here, and the TOML in ConfigMaps. Exits non-zero on any error.
#
#   deploy/kubernetes/validate.sh [FILE...]    # default: every *.yaml here
#
# The validator, pinned, lives in a venv under $CARGO_TARGET_DIR (as tests/api-fuzz/).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$HOME/.cache/isola-target}"
k8s_version="${ISOLA_K8S_VERSION:-1.30.0}"

venv="$target/k8s-venv"
# A venv moved with its target dir keeps scripts that name the old path:
# made again when its pip no longer runs.
if [ ! -x "$venv/bin/kubernetes-validate" ] || ! "$venv/bin/pip" --version >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  files=("$here"/*.yaml)
fi

manifests=()
kustomizations=()
for f in "${files[@]}"; do
  case "$(basename "$f")" in
    kustomization.yaml) kustomizations+=("$f") ;;
    *) manifests+=("$f") ;;
  esac
done

status=0
if [ "${#manifests[@]}" -gt 0 ]; then
  "$venv/bin/kubernetes-validate" --strict --no-warn -k "$k8s_version" "${manifests[@]}" || status=1
fi

# kustomization.yaml is not a Kubernetes object: check its shape and that it lists
# files that exist, each once, and every manifest here but the *.planned.yaml ones.
for k in "${kustomizations[@]+"${kustomizations[@]}"}"; do
  "$venv/bin/python" - "$k" <<'PY' || status=1
import os, sys, yaml
path = sys.argv[1]
base = os.path.dirname(path)
with open(path) as f:
    doc = yaml.safe_load(f)
errors = []
if not isinstance(doc, dict):
    errors.append("not a mapping")
    doc = {}
if doc.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or doc.get("kind") != "Kustomization":
    errors.append("apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
known = {"apiVersion", "kind", "namespace", "resources", "labels", "commonLabels",
         "commonAnnotations", "images", "patches", "configMapGenerator", "secretGenerator",
         "generatorOptions", "namePrefix", "nameSuffix", "replicas", "components"}
for key in doc:
    if key not in known:
        errors.append(f"unknown key {key!r}")
resources = doc.get("resources") or []
if not isinstance(resources, list) or not resources:
    errors.append("resources must be a non-empty list")
    resources = []
for r in resources:
    if not isinstance(r, str) or not os.path.isfile(os.path.join(base, r)):
        errors.append(f"resource {r!r} is not a file next to it")
if len(set(resources)) != len(resources):
    errors.append("a resource is listed twice")
here = {f for f in os.listdir(base)
        if f.endswith(".yaml") and f != "kustomization.yaml" and not f.endswith(".planned.yaml")}
for f in sorted(here - set(resources)):
    errors.append(f"{f} is not listed in resources")
for e in errors:
    print(f"{path}: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"{path}: ok ({len(resources)} resources)")
PY
done

# The TOML files carried in ConfigMaps must parse (the binaries refuse a broken one at
# start, which a schema check cannot see).
if [ "${#manifests[@]}" -gt 0 ]; then
  "$venv/bin/python" - "${manifests[@]}" <<'PY' || status=1
import sys, yaml
try:
    import tomllib
except ImportError:
    sys.exit(0)  # Python < 3.11: skip
bad = False
for path in sys.argv[1:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not isinstance(doc, dict) or doc.get("kind") != "ConfigMap":
                continue
            for key, text in (doc.get("data") or {}).items():
                if key.endswith(".toml"):
                    try:
                        tomllib.loads(text)
                    except tomllib.TOMLDecodeError as e:
                        print(f"{path}: ConfigMap {doc['metadata']['name']} {key}: {e}", file=sys.stderr)
                        bad = True
sys.exit(1 if bad else 0)
PY
fi

if [ "$status" -ne 0 ]; then
  echo "deploy/kubernetes: validation FAILED" >&2
  exit 1
fi
echo "deploy/kubernetes: all manifests valid (Kubernetes $k8s_version, strict)"
