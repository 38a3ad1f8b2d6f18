#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline: every manifest against the Kubernetes JSON
# schemas (kubernetes-validate, which bundles them, in strict mode: unknown fields fail),
# each kustomization.yaml's resources against the files and folders there, the
# $(VAR) references in containers' args against their env and envFrom sources, the TOML
# in ConfigMaps, and, where kubectl is installed, what `kubectl kustomize` renders of
# each kustomization (against the schemas again). Exits non-zero on any error.
#
#   deploy/kubernetes/validate.sh [FILE...]    # default: every *.yaml here and below
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
  mapfile -t files < <(find "$here" -name '*.yaml' -type f | sort)
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

# kustomization.yaml is not a Kubernetes object: check its shape and that its resources
# are files next to it (kustomize refuses files above its folder) or folders holding a
# kustomization.yaml, each once, and that it lists every manifest in its folder but the
# *.example.yaml ones (placeholders the operator fills in and applies by hand).
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
listed = set()
for r in resources:
    target = os.path.normpath(os.path.join(base, r)) if isinstance(r, str) else ""
    if isinstance(r, str) and os.path.isdir(target):
        if not os.path.isfile(os.path.join(target, "kustomization.yaml")):
            errors.append(f"resource {r!r} is a folder without a kustomization.yaml")
    elif isinstance(r, str) and os.path.isfile(target):
        if os.path.dirname(target) != os.path.normpath(base):
            errors.append(f"resource {r!r} is not in this folder; list its folder's kustomization instead")
        listed.add(os.path.basename(target))
    else:
        errors.append(f"resource {r!r} is neither a file nor a folder next to it")
if len(set(resources)) != len(resources):
    errors.append("a resource is listed twice")
here = {f for f in os.listdir(base)
        if f.endswith(".yaml") and f != "kustomization.yaml" and not f.endswith(".example.yaml")}
for f in sorted(here - listed):
    errors.append(f"{f} is not listed in resources")
for e in errors:
    print(f"{path}: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"{path}: ok ({len(resources)} resources)")
PY
done

# A $(VAR) in a container's command or args that no env entry or envFrom source defines
# stays literal (Kubernetes passes "$(VAR)" on): every one must be defined, by `env` or
# by a key of a Secret or ConfigMap here (*.example.yaml included) that `envFrom` names.
if [ "${#manifests[@]}" -gt 0 ]; then
  "$venv/bin/python" - "$here" "${manifests[@]}" <<'PY' || status=1
import os, re, sys, yaml
root, paths = sys.argv[1], sys.argv[2:]
sources = {}
for dirpath, _, names in os.walk(root):
    for n in names:
        if n.endswith(".yaml") and n != "kustomization.yaml":
            with open(os.path.join(dirpath, n)) as f:
                for doc in yaml.safe_load_all(f):
                    if isinstance(doc, dict) and doc.get("kind") in ("Secret", "ConfigMap"):
                        keys = set((doc.get("data") or {}).keys()) | set((doc.get("stringData") or {}).keys())
                        sources[(doc["kind"], doc["metadata"]["name"])] = keys
bad = False
for path in paths:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not isinstance(doc, dict):
                continue
            spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
            for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
                defined = {e["name"] for e in c.get("env") or []}
                for src in c.get("envFrom") or []:
                    for kind, ref in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                        if ref in src:
                            name = src[ref]["name"]
                            if (kind, name) not in sources:
                                print(f"{path}: container {c['name']}: envFrom {kind} {name} is not here", file=sys.stderr)
                                bad = True
                            defined |= {src.get("prefix", "") + k for k in sources.get((kind, name), ())}
                for word in (c.get("command") or []) + (c.get("args") or []):
                    for var in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", word):
                        if var not in defined:
                            print(f"{path}: container {c['name']}: $({var}) is defined by no env or envFrom source", file=sys.stderr)
                            bad = True
sys.exit(1 if bad else 0)
PY
fi

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

# What kustomize makes of each kustomization: refused references, clashing names and
# the merged objects fail here. kubectl is optional: without it this step is skipped.
if [ "${#kustomizations[@]}" -gt 0 ]; then
  if command -v kubectl >/dev/null 2>&1; then
    rendered="$(mktemp -d)"
    trap 'rm -rf "$rendered"' EXIT
    for k in "${kustomizations[@]}"; do
      out="$rendered/$(echo "${k#"$here"/}" | tr / _)"
      if kubectl kustomize "$(dirname "$k")" >"$out"; then
        "$venv/bin/kubernetes-validate" --strict --no-warn -k "$k8s_version" "$out" >/dev/null || {
          echo "$k: what kustomize renders is not valid" >&2
          status=1
        }
        echo "$k: kustomize renders $(grep -c '^kind:' "$out") objects"
      else
        echo "$k: kubectl kustomize refused it" >&2
        status=1
      fi
    done
  else
    echo "deploy/kubernetes: kubectl not found, kustomizations not rendered" >&2
  fi
fi

if [ "$status" -ne 0 ]; then
  echo "deploy/kubernetes: validation FAILED" >&2
  exit 1
fi
echo "deploy/kubernetes: all manifests valid (Kubernetes $k8s_version, strict)"
