# shellcheck shell=bash
# Variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared helpers of infra/scripts/{deploy,rollback,monitor}. Sourced, not executed.

RECSYS_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECSYS_REPO_ROOT="$(cd "$RECSYS_SCRIPTS_DIR/../.." && pwd)"
RECSYS_CHART="$RECSYS_REPO_ROOT/infra/helm/recsys"
CHART_NAME=recsys

DRY_RUN=0
RELEASE="${RECSYS_RELEASE:-recsys}"
NAMESPACE="${RECSYS_NAMESPACE:-recsys}"
KUBE_CONTEXT="${RECSYS_KUBE_CONTEXT:-}"
TIMEOUT="${RECSYS_TIMEOUT:-10m}"
FULLNAME=""
WORKLOAD=""

# Print a command as a shell-quoted line prefixed with "+ ", then run it unless --dry-run.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if ((DRY_RUN)); then
        return 0
    fi
    "$@"
}

die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

# The chart's resource name prefix (recsys.fullname): the release name when it already
# contains the chart name, else <release>-recsys. --fullname overrides it.
fullname() {
    if [[ -n "$FULLNAME" ]]; then
        printf '%s' "$FULLNAME"
    elif [[ "$RELEASE" == *"$CHART_NAME"* ]]; then
        printf '%s' "${RELEASE:0:52}"
    else
        local name="$RELEASE-$CHART_NAME"
        printf '%s' "${name:0:52}"
    fi
}

# The gateway workload as kubectl's TYPE/NAME: a StatefulSet with gateway.spool.volume=
# persistentVolume (the production values), else a Deployment. --workload KIND says which;
# without it the cluster is asked (a dry run cannot ask, and assumes a Deployment).
gateway_workload() {
    local name kind="$WORKLOAD"
    name="$(fullname)"
    if [[ -z "$kind" ]]; then
        kind=deployment
        if ((!DRY_RUN)) &&
            kubectl "${KUBECTL_FLAGS[@]}" get "statefulset/$name" -o name >/dev/null 2>&1; then
            kind=statefulset
        fi
    fi
    printf '%s/%s' "$kind" "$name"
}

# Global flags for helm and kubectl.
helm_flags() {
    HELM_FLAGS=(--namespace "$NAMESPACE")
    [[ -n "$KUBE_CONTEXT" ]] && HELM_FLAGS+=(--kube-context "$KUBE_CONTEXT")
    return 0
}

kubectl_flags() {
    KUBECTL_FLAGS=(--namespace "$NAMESPACE")
    [[ -n "$KUBE_CONTEXT" ]] && KUBECTL_FLAGS+=(--context "$KUBE_CONTEXT")
    return 0
}

# Parse an option shared by all scripts; prints how many arguments it consumed (0 if none).
common_option() {
    case "$1" in
        --release) [[ $# -ge 2 ]] || die "$1 needs a value"; RELEASE="$2"; return 2 ;;
        --namespace | -n) [[ $# -ge 2 ]] || die "$1 needs a value"; NAMESPACE="$2"; return 2 ;;
        --kube-context) [[ $# -ge 2 ]] || die "$1 needs a value"; KUBE_CONTEXT="$2"; return 2 ;;
        --timeout) [[ $# -ge 2 ]] || die "$1 needs a value"; TIMEOUT="$2"; return 2 ;;
        --fullname) [[ $# -ge 2 ]] || die "$1 needs a value"; FULLNAME="$2"; return 2 ;;
        --workload)
            [[ $# -ge 2 ]] || die "$1 needs a value"
            [[ "$2" == deployment || "$2" == statefulset ]] ||
                die "$1 must be deployment or statefulset"
            WORKLOAD="$2"
            return 2
            ;;
        --dry-run) DRY_RUN=1; return 1 ;;
        *) return 0 ;;
    esac
}

COMMON_USAGE="Common options:
  --release NAME         Helm release (default: \$RECSYS_RELEASE or recsys)
  -n, --namespace NS     namespace (default: \$RECSYS_NAMESPACE or recsys)
  --kube-context CTX     kubeconfig context (default: current context)
  --timeout DURATION     how long to wait (default: \$RECSYS_TIMEOUT or 10m)
  --fullname NAME        resource name prefix if the chart's fullnameOverride is set
  --workload KIND        the gateway's workload, deployment or statefulset (default: a
                         statefulset if the release has one, i.e. gateway.spool.volume=
                         persistentVolume as in the production values; deploy reads it from
                         the values it is given)
  --dry-run              print the helm/kubectl commands instead of running them
  -h, --help             show this help"
