#!/usr/bin/env bash
# Release every function Service of one environment as a canary, then promote or roll back.
#
#   .github/scripts/release.sh ENVIRONMENT IMAGE_PREFIX IMAGE_TAG
#
# For each Service: pin `stable` to the revision now serving (python -m deploy.rollout pin), apply
# the kustomize overlay knative/overlays/ENVIRONMENT with the new images, give the new revision
# CANARY_PERCENT % (rollout canary), wait CANARY_BAKE_SECONDS, then read the candidate's error
# ratio from Prometheus. Within the availability SLO (observability/prometheus/
# kubesentiment-recording.yml: error budget 0.005) it is promoted, otherwise rolled back and the
# script fails. Needs kubectl on PATH with a kubeconfig (KUBECONFIG), PROMETHEUS_URL and,
# optionally, PROMETHEUS_TOKEN (read from the environment, never printed).
set -euo pipefail

ENVIRONMENT=$1
IMAGE_PREFIX=$2
IMAGE_TAG=$3
NAMESPACE=${NAMESPACE:-kubesentiment}
CANARY_PERCENT=${CANARY_PERCENT:-10}
CANARY_BAKE_SECONDS=${CANARY_BAKE_SECONDS:-600}
ERROR_BUDGET=${ERROR_BUDGET:-0.005}
PYTHON=${PYTHON:-python3}
SERVICES=(sentiment-cpu-int8 sentiment-cpu-fp32 sentiment-cpu-accurate-int8 sentiment-gpu-fp16)

overlay="knative/overlays/${ENVIRONMENT}"
[[ -d $overlay ]] || { echo "no overlay $overlay" >&2; exit 2; }

# The inference-route selector and error ratio of the recording rule
# variant:kubesentiment_http_errors:ratio_rate5m, narrowed to one revision (the PodMonitor adds
# the knative_revision label). `or vector(0)`: a revision with no 5xx yet has ratio 0.
slo_query() {
  local rev=$1 sel
  sel="knative_revision=\"${rev}\",route!~\".*/health/.*|.*/ready|/metrics\""
  printf '(sum(rate(kubesentiment_http_requests_total{%s,status_class="5xx"}[5m])) or vector(0)) / sum(rate(kubesentiment_http_requests_total{%s}[5m]))' \
    "$sel" "$sel"
}

# Prints the query's single value; "nan" when the candidate served nothing (no evidence).
prom_value() {
  local auth=()
  if [[ -n ${PROMETHEUS_TOKEN:-} ]]; then
    auth=(-H "Authorization: Bearer ${PROMETHEUS_TOKEN}")
  fi
  curl -fsS --max-time 30 "${auth[@]}" --data-urlencode "query=$1" \
    "${PROMETHEUS_URL%/}/api/v1/query" |
    "$PYTHON" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "nan")'
}

render() {
  kubectl kustomize "$overlay" |
    sed -E "s#image: kubesentiment/(sentiment-[a-z0-9-]+):[^[:space:]]+#image: ${IMAGE_PREFIX}/\\1:${IMAGE_TAG}#"
}

for svc in "${SERVICES[@]}"; do
  if kubectl get ksvc "$svc" -n "$NAMESPACE" >/dev/null 2>&1; then
    "$PYTHON" -m deploy.rollout pin "$svc" -n "$NAMESPACE"
  fi
done
old_revisions=()
for svc in "${SERVICES[@]}"; do
  old_revisions+=("$(kubectl get ksvc "$svc" -n "$NAMESPACE" \
    -o 'jsonpath={.status.latestReadyRevisionName}' 2>/dev/null || true)")
done

render | kubectl apply -f -

failed=0
for i in "${!SERVICES[@]}"; do
  svc=${SERVICES[$i]}
  stable=${old_revisions[$i]}
  kubectl wait ksvc "$svc" -n "$NAMESPACE" --for=condition=Ready --timeout=600s
  candidate=$(kubectl get ksvc "$svc" -n "$NAMESPACE" -o 'jsonpath={.status.latestReadyRevisionName}')
  if [[ -z $stable || $stable == "$candidate" ]]; then
    echo "$svc: first deploy or unchanged template ($candidate); nothing to canary"
    continue
  fi
  "$PYTHON" -m deploy.rollout canary "$svc" -n "$NAMESPACE" --percent "$CANARY_PERCENT" --stable "$stable"
  echo "$svc: $CANARY_PERCENT % to $candidate, baking ${CANARY_BAKE_SECONDS}s"
  sleep "$CANARY_BAKE_SECONDS"
  ratio=$(prom_value "$(slo_query "$candidate")")
  echo "$svc: candidate $candidate 5xx ratio over 5m = $ratio (budget $ERROR_BUDGET)"
  if "$PYTHON" -c 'import math,sys; r=float(sys.argv[1]); sys.exit(0 if not math.isnan(r) and r <= float(sys.argv[2]) else 1)' \
    "$ratio" "$ERROR_BUDGET"; then
    "$PYTHON" -m deploy.rollout promote "$svc" -n "$NAMESPACE" --candidate "$candidate"
  else
    echo "$svc: SLO check failed or no traffic reached the candidate; rolling back" >&2
    "$PYTHON" -m deploy.rollout rollback "$svc" -n "$NAMESPACE" --stable "$stable"
    failed=1
  fi
done
exit "$failed"
