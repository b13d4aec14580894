#!/usr/bin/env bash
# Run the LiteLLM proxy with composite-llm's models (same as `composite-llm proxy`).
#
#   scripts/run_proxy_from_env.sh [--host HOST] [--port PORT] [--config FILE] [--dry-run] [-- litellm args...]
#
# - loads ./.env if present (see sample.env); variables already set in the environment win over it;
# - uses ./litellm_proxy.yaml if present, else ./litellm_proxy.example.yaml (run it from the repo root);
# - binds 127.0.0.1:4000 unless HOST / PORT (environment or flags) say otherwise;
# - needs LITELLM_MASTER_KEY (what clients send as their API key);
# - runs .venv/bin/litellm if present, else `litellm` from PATH.
set -euo pipefail

die() { echo "run_proxy_from_env: $*" >&2; exit 2; }

ENV_FILE="${ENV_FILE:-.env}"
if [[ -f "$ENV_FILE" ]]; then
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line#"${line%%[![:space:]]*}"}"            # trim leading blanks
    [[ -z "$line" || "$line" == \#* ]] && continue
    line="${line#export }"
    [[ "$line" == *=* ]] || die "$ENV_FILE: expected NAME=value, got: $line"
    name="${line%%=*}"; value="${line#*=}"
    name="${name%"${name##*[![:space:]]}"}"             # trim trailing blanks
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$ENV_FILE: invalid variable name: $name"
    value="${value#"${value%%[![:space:]]*}"}"
    value="${value%"${value##*[![:space:]]}"}"
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
      value="${BASH_REMATCH[1]}"
    else
      value="${value%% #*}"                            # inline comment after an unquoted value
    fi
    if [[ -z "${!name+x}" ]]; then export "$name=$value"; fi   # the environment wins over the file
  done < "$ENV_FILE"
fi

HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-4000}"
CONFIG=""
DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) [[ $# -ge 2 ]] || die "--host needs a value"; HOST="$2"; shift 2 ;;
    --port) [[ $# -ge 2 ]] || die "--port needs a value"; PORT="$2"; shift 2 ;;
    --config) [[ $# -ge 2 ]] || die "--config needs a value"; CONFIG="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument: $1 (litellm options go after --)" ;;
  esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || die "invalid port: $PORT"

if [[ -z "$CONFIG" ]]; then
  if [[ -f litellm_proxy.yaml ]]; then CONFIG=litellm_proxy.yaml
  elif [[ -f litellm_proxy.example.yaml ]]; then CONFIG=litellm_proxy.example.yaml
  else die "no litellm_proxy.yaml or litellm_proxy.example.yaml here: run from the repo root or pass --config FILE"
  fi
fi
[[ -f "$CONFIG" ]] || die "config file $CONFIG not found"

KEY_CMD="python -c \"import secrets; print('sk-' + secrets.token_urlsafe(24))\""
if [[ -z "${LITELLM_MASTER_KEY:-}" ]]; then
  die "LITELLM_MASTER_KEY is not set (clients send it as their API key). Generate one:
  export LITELLM_MASTER_KEY=\$($KEY_CMD)
or put LITELLM_MASTER_KEY=sk-... in .env (see sample.env)"
fi
if [[ "$LITELLM_MASTER_KEY" == "sk-1234" ]]; then
  die "LITELLM_MASTER_KEY=sk-1234 is publicly known and the proxy refuses it. Generate one: $KEY_CMD"
fi
if [[ "$LITELLM_MASTER_KEY" != sk-* ]]; then
  die "LITELLM_MASTER_KEY must start with 'sk-'. Generate one: $KEY_CMD"
fi

# The pinned litellm's own price map: no download at startup (set to False to fetch the latest one).
export LITELLM_LOCAL_MODEL_COST_MAP="${LITELLM_LOCAL_MODEL_COST_MAP:-True}"

if [[ -x .venv/bin/litellm ]]; then LITELLM=.venv/bin/litellm
elif command -v litellm >/dev/null 2>&1; then LITELLM="$(command -v litellm)"
else die "litellm is not installed: make install (or pip install 'composite-llm[proxy]')"
fi

CMD=("$LITELLM" --config "$CONFIG" --host "$HOST" --port "$PORT" "${EXTRA[@]}")
if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
echo "run_proxy_from_env: ${CMD[*]}" >&2
echo "  OpenAI base URL: http://$HOST:$PORT/v1 (API key: \$LITELLM_MASTER_KEY); ready in ~10 s" >&2
exec "${CMD[@]}"
