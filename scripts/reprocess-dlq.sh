#!/usr/bin/env bash
# Replay dead letters: each entry is republished to the ingest stream with
# replay_count+1, its status goes back to 'accepted', and the entry is
# removed once JetStream acknowledged the republish. Entries past the replay
# limit (DLQ_MAX_REPLAYS) are refused and stay in the queue.
#
# Usage: scripts/reprocess-dlq.sh [--dry-run] [--entity order|customer|product] [--class permanent|transient|poison]
#                                 [--payload-file FILE] [MESSAGE_ID...]
#   No ids: every entry matching the filters. --payload-file: a corrected JSON
#   record to send instead of the stored one (exactly one MESSAGE_ID).
#   NOMNOM_URL, NOMNOM_TOKEN: as for scripts/inspect-dlq.sh.
set -euo pipefail

url=${NOMNOM_URL:-http://localhost:8080}
auth=()
[ -n "${NOMNOM_TOKEN:-}" ] && auth=(-H "Authorization: Bearer ${NOMNOM_TOKEN}")
dry=false entity="" class="" payload="" ids=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=true ;;
    --entity) entity=${2:-}; shift ;;
    --class) class=${2:-}; shift ;;
    --payload-file) payload=${2:-}; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) ids+=("$1") ;;
  esac
  shift
done
case "$entity" in ""|order|customer|product) ;; *) echo "--entity must be order, customer or product, not '$entity'" >&2; exit 2 ;; esac
case "$class" in ""|permanent|transient|poison) ;; *) echo "--class must be permanent, transient or poison, not '$class'" >&2; exit 2 ;; esac

if [ -n "$payload" ]; then
  [ ${#ids[@]} -eq 1 ] || { echo "--payload-file needs exactly one MESSAGE_ID" >&2; exit 2; }
  [ -r "$payload" ] || { echo "--payload-file: cannot read $payload" >&2; exit 2; }
  body=$(jq -cn --argjson dry "$dry" --rawfile p "$payload" --arg id "${ids[0]}" \
    '{message_ids: [$id], corrected_payload: $p, dry_run: $dry}')
elif [ ${#ids[@]} -gt 0 ]; then
  body=$(jq -cn --argjson dry "$dry" '{message_ids: $ARGS.positional, dry_run: $dry}' --args "${ids[@]}")
else
  filter=$(jq -cn --arg e "$entity" --arg c "$class" '{}
    + (if $e != "" then {entity_type: ("ENTITY_TYPE_" + ($e|ascii_upcase))} else {} end)
    + (if $c != "" then {error_class: ("ERROR_CLASS_" + ($c|ascii_upcase))} else {} end)')
  body=$(jq -cn --argjson dry "$dry" --argjson f "$filter" '{filter: $f, dry_run: $dry, all: true}')
fi

resp=$(curl -sS --fail-with-body -X POST "${url}/nomnom.deadletter.v1.DeadLetterService/ReplayDeadLetters" \
  -H 'Content-Type: application/json' "${auth[@]}" -d "$body")
echo "$resp" | jq -r '.dryRun as $dry | .outcomes[]? | [.messageId, (if .replayed then (if $dry then "would replay" else "replayed" end) else "refused: " + .error end)] | @tsv'
echo "$resp" | jq -r '"\(.replayed // 0) replayed, \(.failed // 0) refused" + (if .dryRun then " (dry run)" else "" end)'
