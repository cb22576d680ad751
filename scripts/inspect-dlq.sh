#!/usr/bin/env bash
# Inspect nomnom's dead-letter queue.
#
# Works wherever the ingest port is reachable: locally after `make run`, with
# docker compose (port 8080 is published), or in Kubernetes after
#   kubectl -n nomnom port-forward svc/ingest 8080:8080
# The DeadLetterService needs an admin token (NOMNOM_TOKEN) unless the server
# has no ADMIN_TOKENS and this runs on its host or through a port-forward.
#
# Usage: scripts/inspect-dlq.sh [MESSAGE_ID]
#   NOMNOM_URL   ingest URL (default http://localhost:8080)
#   NOMNOM_TOKEN admin bearer token
#   NATS_URL     if set and the nats CLI is installed, also show the stream
set -euo pipefail

url=${NOMNOM_URL:-http://localhost:8080}
auth=()
[ -n "${NOMNOM_TOKEN:-}" ] && auth=(-H "Authorization: Bearer ${NOMNOM_TOKEN}")

call() { # call METHOD JSON
  curl -sS --fail-with-body -X POST "${url}/nomnom.deadletter.v1.DeadLetterService/$1" \
    -H 'Content-Type: application/json' "${auth[@]}" -d "$2"
}

if [ $# -eq 1 ]; then
  echo "=== Dead letter $1 ==="
  call GetDeadLetter "{\"message_id\":\"$1\"}" | jq .
  exit 0
fi

if [ -n "${NATS_URL:-}" ] && command -v nats >/dev/null; then
  echo "=== DLQ stream info ==="
  nats -s "$NATS_URL" stream info "${NATS_STREAM:-MESSAGES}_DLQ"
  echo
fi

echo "=== DLQ messages ==="
token=""
while :; do
  page=$(call ListDeadLetters "{\"page_size\":500,\"page_token\":\"${token}\"}")
  echo "$page" | jq -r '.deadLetters[]? | [.messageId, .entityType, .errorClass, (.attempts // 0), .failedAt, .error] | @tsv'
  token=$(echo "$page" | jq -r '.nextPageToken // ""')
  [ -z "$token" ] && break
done
