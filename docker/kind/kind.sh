#!/usr/bin/env bash
# The kind path: the whole of framescale on one machine with Docker.
#
#   docker/kind/kind.sh up       kind cluster (1 plain + 2 labelled, tainted accelerator workers),
#                                the four images built and loaded into it
#   docker/kind/kind.sh deploy   moto in the cluster as the AWS endpoint; queue, buckets, topics and
#                                a fake Auto Scaling group in it; the chart with ci/kind-values.yaml
#   docker/kind/kind.sh e2e      one video through the pipeline end to end, then
#                                `kubectl scale vp` shown to move the Auto Scaling group
#   docker/kind/kind.sh uninstall  helm uninstall; checks that no VideoPipeline is left behind
#   docker/kind/kind.sh down     delete the cluster
#
# The Makefile's kind-* targets call this with HELM, KUBECTL and PYTHON set (.tools/, .venv/).
# Needs: Docker with a running engine, kind >= 0.20 (node labels), an x86-64 machine (the
# tensorflow/serving images are built for amd64 only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-framescale}"
CONTEXT="kind-${CLUSTER}"
HELM="${HELM:-${ROOT}/.tools/helm}"
KUBECTL="${KUBECTL:-${ROOT}/.tools/kubectl}"
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
KIND="${KIND:-kind}"
DOCKER="${DOCKER:-docker}"
NAMESPACE="${NAMESPACE:-framescale}"
RELEASE="${RELEASE:-framescale}"
PIPELINE="demo"
VALUES="${ROOT}/charts/framescale/ci/kind-values.yaml"
MOTO_NAMESPACE="framescale-aws"
MOTO_LOCAL_PORT="${MOTO_LOCAL_PORT:-15000}"
TAG="dev"

# image name -> Dockerfile, name for framescale.local.images (it stages each image's context)
IMAGES=(
  "framescale/worker:${TAG}|docker/worker.Dockerfile|worker"
  "framescale/operator:${TAG}|docker/operator.Dockerfile|operator"
  "framescale/tfserving-local:${TAG}|docker/tfserving-local.Dockerfile|tfserving-local"
  "framescale/moto:${TAG}|docker/kind/moto.Dockerfile|moto"
)

log() { printf '\n==> %s\n' "$*" >&2; }
die() {
  printf 'kind.sh: %s\n' "$*" >&2
  exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
k() { "${KUBECTL}" --context "${CONTEXT}" "$@"; }
h() { "${HELM}" --kube-context "${CONTEXT}" "$@"; }

check_tools() {
  [[ -x "${HELM}" ]] || die "helm not found at ${HELM}: run \`make helm\`"
  [[ -x "${KUBECTL}" ]] || die "kubectl not found at ${KUBECTL}: run \`make helm\`"
}

check_cluster() {
  check_tools
  k get nodes >/dev/null 2>&1 || die "no kind cluster ${CLUSTER} (context ${CONTEXT}): run \`make kind-up\`"
}

# Port-forward moto to 127.0.0.1:MOTO_LOCAL_PORT for the Python steps; stopped on exit.
FORWARD_PID=""
stop_forward() {
  if [[ -n "${FORWARD_PID}" ]]; then
    kill "${FORWARD_PID}" 2>/dev/null || true
    wait "${FORWARD_PID}" 2>/dev/null || true
    FORWARD_PID=""
  fi
}
start_forward() {
  local log_file
  log_file="$(mktemp -t framescale-moto-forward.XXXXXX)"
  # kubectl itself in the background, not through k(): a backgrounded function is a subshell, and
  # killing its pid would leave the port-forward running after the script ends.
  "${KUBECTL}" --context "${CONTEXT}" -n "${MOTO_NAMESPACE}" port-forward svc/moto "${MOTO_LOCAL_PORT}:5000" \
    >"${log_file}" 2>&1 &
  FORWARD_PID=$!
  trap stop_forward EXIT
  for _ in $(seq 1 60); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${MOTO_LOCAL_PORT}") 2>/dev/null; then
      export AWS_ENDPOINT_URL="http://127.0.0.1:${MOTO_LOCAL_PORT}"
      export AWS_REGION="us-east-1" AWS_ACCESS_KEY_ID="testing" AWS_SECRET_ACCESS_KEY="testing"
      return 0
    fi
    kill -0 "${FORWARD_PID}" 2>/dev/null || break
    sleep 0.5
  done
  cat "${log_file}" >&2
  die "could not port-forward the moto server to 127.0.0.1:${MOTO_LOCAL_PORT}"
}

kind_py() { "${PYTHON}" "${ROOT}/docker/kind/kind_aws.py" "$@"; }

# Everything `up` needs, checked at once so that one run lists all that is missing.
check_up_prerequisites() {
  local missing=()
  command -v "${KIND}" >/dev/null 2>&1 ||
    missing+=("kind >= 0.20 (https://kind.sigs.k8s.io, or: go install sigs.k8s.io/kind@v0.29.0)")
  if ! command -v "${DOCKER}" >/dev/null 2>&1; then
    missing+=("docker or podman: install Docker, or podman with DOCKER=podman KIND_EXPERIMENTAL_PROVIDER=podman")
  elif ! "${DOCKER}" info >/dev/null 2>&1; then
    missing+=("a running ${DOCKER} engine: \`${DOCKER} info\` fails")
  fi
  [[ -x "${KUBECTL}" ]] || missing+=("kubectl at ${KUBECTL}: run \`make helm\`")
  [[ -x "${HELM}" ]] || missing+=("helm at ${HELM}: run \`make helm\`")
  [[ -x "${PYTHON}" ]] || missing+=("the project's Python at ${PYTHON}: run \`make setup\`")
  if ((${#missing[@]} > 0)); then
    printf 'kind.sh up: missing prerequisites:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
  fi
}

cmd_up() {
  check_up_prerequisites

  local clusters
  clusters="$("${KIND}" get clusters 2>/dev/null || true)"
  if grep -qx "${CLUSTER}" <<<"${clusters}"; then
    log "kind cluster ${CLUSTER} exists"
  else
    log "creating kind cluster ${CLUSTER}"
    local image_args=()
    if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
      image_args=(--image "${KIND_NODE_IMAGE}")
    fi
    # (the ${a[@]+...} form keeps bash 3.2, macOS's, happy with an empty array under set -u)
    "${KIND}" create cluster --name "${CLUSTER}" --config "${ROOT}/docker/kind/cluster.yaml" \
      ${image_args[@]+"${image_args[@]}"} --wait 180s
  fi
  log "tainting the accelerator nodes"
  k taint nodes -l framescale.io/accelerator=true \
    framescale.io/accelerator=true:NoSchedule --overwrite
  k get nodes -L framescale.io/accelerator,framescale.io/role

  local entry name dockerfile image built=()
  for entry in "${IMAGES[@]}"; do
    IFS='|' read -r name dockerfile image <<<"${entry}"
    built+=("${image}")
  done
  log "building ${built[*]} (framescale.local.images: small contexts, wheelhouse, cached layers)"
  FRAMESCALE_IMAGE_ENGINE="$(basename "${DOCKER}")" "${PYTHON}" -m framescale.local.images build "${built[@]}"
  for entry in "${IMAGES[@]}"; do
    IFS='|' read -r name dockerfile image <<<"${entry}"
    log "loading ${name} (${dockerfile}) into ${CLUSTER}"
    "${KIND}" load docker-image --name "${CLUSTER}" "${name}"
  done
}

cmd_deploy() {
  check_cluster
  log "moto server (the AWS endpoint) in namespace ${MOTO_NAMESPACE}"
  k apply -f "${ROOT}/docker/kind/moto.yaml"
  k -n "${MOTO_NAMESPACE}" rollout status deploy/moto --timeout=180s

  log "queue, dead-letter queue, buckets, topics and Auto Scaling group in moto"
  start_forward
  kind_py setup
  stop_forward

  log "installing the chart (release ${RELEASE}, namespace ${NAMESPACE})"
  local helm_args=(upgrade --install "${RELEASE}" "${ROOT}/charts/framescale"
    --namespace "${NAMESPACE}" --create-namespace --values "${VALUES}" --wait --timeout 15m)
  # On the install that creates the CRD, the VideoPipeline comes from a post-install hook. Should
  # that hook fail (the API not served yet), helm reports a failed install with everything else
  # in place; the API is served by then, so the same upgrade creates the VideoPipeline as an
  # ordinary release object (see the chart README). The failure is caught here, not by set -e,
  # or the retry could never run. A failure that left the VideoPipeline in place is something
  # else, and so is one that fails again: both stop the script.
  if ! h "${helm_args[@]}"; then
    if k -n "${NAMESPACE}" get "vp/${PIPELINE}" >/dev/null 2>&1; then
      die "helm upgrade --install failed (see above)"
    fi
    log "the install failed before VideoPipeline ${PIPELINE} existed: upgrading once more"
    h "${helm_args[@]}"
  fi
  k -n "${NAMESPACE}" get "vp/${PIPELINE}" >/dev/null || die "no VideoPipeline ${PIPELINE} after the install"
  k -n "${NAMESPACE}" rollout status "ds/${RELEASE}-${PIPELINE}" --timeout=600s
  k -n "${NAMESPACE}" get vp,deploy,ds,pods -o wide
}

cmd_e2e() {
  check_cluster
  k -n "${NAMESPACE}" get "vp/${PIPELINE}" >/dev/null || die "no VideoPipeline ${PIPELINE}: run \`make kind-deploy\`"
  start_forward

  log "one video through the pipeline: S3 -> SQS -> worker -> TF Serving -> S3 and SNS"
  kind_py run-job

  log "kubectl scale vp/${PIPELINE} --replicas=3 sets the Auto Scaling group's desired capacity"
  k -n "${NAMESPACE}" scale "vp/${PIPELINE}" --replicas=3
  kind_py wait-desired 3 --timeout 120
  k -n "${NAMESPACE}" get "vp/${PIPELINE}"

  log "handing the pipeline back to the autoscaler (spec.replicas: null); the queue is empty"
  k -n "${NAMESPACE}" patch "vp/${PIPELINE}" --type=merge -p '{"spec":{"replicas":null}}'
  kind_py wait-desired 0 --timeout 180
  k -n "${NAMESPACE}" get "vp/${PIPELINE}" -o wide

  log "kind e2e passed"
}

cmd_uninstall() {
  check_cluster
  # The chart's pre-delete hook deletes the VideoPipelines and waits while the operator releases
  # them; a VideoPipeline left afterwards (stuck on its finalizer) is the failure this checks for.
  log "uninstalling release ${RELEASE}: the pre-delete hook deletes the VideoPipelines first"
  h uninstall "${RELEASE}" --namespace "${NAMESPACE}" --wait --timeout 5m
  local left
  left="$(k -n "${NAMESPACE}" get videopipelines.framescale.io -o name)"
  [[ -z "${left}" ]] || die "VideoPipelines left after the uninstall: ${left}"
  log "uninstalled; no VideoPipeline left (the CRD stays: crds.keep)"
}

cmd_down() {
  need "${KIND}" "install kind"
  "${KIND}" delete cluster --name "${CLUSTER}"
}

main() {
  case "${1:-}" in
    up) cmd_up ;;
    deploy) cmd_deploy ;;
    e2e) cmd_e2e ;;
    uninstall) cmd_uninstall ;;
    down) cmd_down ;;
    *) die "usage: $0 {up|deploy|e2e|uninstall|down}" ;;
  esac
}

main "$@"
