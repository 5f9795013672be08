#!/bin/sh
# Local stack only: wait for the dev-mode OpenBao, mount KV v2 at kv/ (as in the cluster) and
# write the API keys the function reads (API_KEYS=vault:kv/kubesentiment/api#keys). The key is
# random per start; read it with `bao kv get -field=keys kv/kubesentiment/api`.
set -eu
i=0
until bao status >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -le 60 ] || { echo "OpenBao not up after 30 s" >&2; exit 1; }
  sleep 0.5
done
bao secrets enable -path=kv kv-v2 >/dev/null 2>&1 || true
key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
bao kv put kv/kubesentiment/api keys="$key" >/dev/null
echo "API key written to kv/kubesentiment/api"
