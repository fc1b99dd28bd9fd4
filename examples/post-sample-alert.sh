#!/usr/bin/env sh
# Posts examples/sample-alert.json to a local kabar, as Alertmanager would.
#   examples/post-sample-alert.sh            # the alert fires: opens its thread
#   examples/post-sample-alert.sh resolved   # the same alert resolves: a reply in that thread
set -eu
here=$(dirname "$0")
url=${KABAR_URL:-http://127.0.0.1:9095/alerts}
token=${KABAR_TOKEN:-demo-token-change-me}
payload=$(cat "$here/sample-alert.json")
if [ "${1:-firing}" = "resolved" ]; then
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  payload=$(printf '%s' "$payload" | sed -e 's/"firing"/"resolved"/g' -e "s/0001-01-01T00:00:00Z/$now/")
fi
printf '%s' "$payload" | curl --silent --show-error --fail-with-body \
  -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
  --data-binary @- "$url"
echo
