#!/usr/bin/env bash
# A one-machine "cluster": a Ray head and an MLflow tracking server, both on loopback, so that
# `ray job submit` from this machine behaves as it does against a real cluster.
#
#   cluster/local.sh start    start both, write <state>/env.sh, print how to submit
#   cluster/local.sh status   what is running and whether it answers
#   cluster/local.sh stop     stop exactly the processes `start` launched (never a bare `ray stop`)
#
# Settings (environment; defaults in brackets):
#   VILOCAL_LOCAL_CLUSTER_DIR  state: pid files, logs, token, env.sh, MLflow store [<repo>/runs/local-cluster]
#   VILOCAL_HOME               run outputs for jobs [<repo>/runs]
#   VILOCAL_STORAGE            Ray results and checkpoints [$VILOCAL_HOME/ray]
#   VILOCAL_RAY_PORT [6379]  VILOCAL_DASHBOARD_PORT [8265]  VILOCAL_MLFLOW_PORT [5000]
#   VILOCAL_RAY_CLIENT_PORT [10001]  VILOCAL_DASHBOARD_AGENT_PORT [52365]
#   VILOCAL_RAY_NUM_CPUS / VILOCAL_RAY_NUM_GPUS  resources the head advertises [detected]
set -euo pipefail

absolute() {  # a path made absolute (without requiring it to exist); URIs pass through
  case "$1" in
    *://* | /*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$PWD" "$1" ;;
  esac
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="$(absolute "${VILOCAL_LOCAL_CLUSTER_DIR:-$REPO_ROOT/runs/local-cluster}")"
JOB_HOME="$(absolute "${VILOCAL_HOME:-$REPO_ROOT/runs}")"
JOB_STORAGE="$(absolute "${VILOCAL_STORAGE:-$JOB_HOME/ray}")"
RAY_PORT="${VILOCAL_RAY_PORT:-6379}"
DASHBOARD_PORT="${VILOCAL_DASHBOARD_PORT:-8265}"
RAY_CLIENT_PORT="${VILOCAL_RAY_CLIENT_PORT:-10001}"
DASHBOARD_AGENT_PORT="${VILOCAL_DASHBOARD_AGENT_PORT:-52365}"
MLFLOW_PORT="${VILOCAL_MLFLOW_PORT:-5000}"

LOG_DIR="$STATE_DIR/logs"
TOKEN_FILE="$STATE_DIR/ray_auth_token"
ENV_FILE="$STATE_DIR/env.sh"
RAY_PID_FILE="$STATE_DIR/ray.pid"
MLFLOW_PID_FILE="$STATE_DIR/mlflow.pid"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
DASHBOARD_URL="http://127.0.0.1:$DASHBOARD_PORT"
# Ray's unix sockets live below its temp dir and their paths must stay short (~107 bytes), so the
# temp dir sits in /tmp, named after the state dir so two checkouts never share one.
RAY_TEMP_DIR="/tmp/vilocal-ray-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)"

die() { echo "local.sh: $*" >&2; exit 1; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

descendants() {  # every descendant pid of $1, from one snapshot of the process table
  ps -eo pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      for (p in parent) {
        q = p
        while ((q in parent) && q != root && q > 1) q = parent[q]
        if (q == root && p != root) print p
      }
    }'
}

wait_gone() {  # wait up to $1 seconds for all remaining pids to exit
  local deadline=$((SECONDS + $1)); shift
  local pid
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
  done
}

kill_left() {  # SIGKILL whichever of the given pids still exist
  local pid
  for pid in "$@"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "local.sh: killing leftover process $pid" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

wait_http() {  # wait_http URL SECONDS PID_FILE LOG [curl args...]: until URL answers 2xx
  local url="$1" limit="$2" pid_file="$3" log="$4"; shift 4
  local deadline=$((SECONDS + limit))
  until curl -fsS -o /dev/null --max-time 5 "$@" "$url" 2>/dev/null; do
    alive "$pid_file" || { tail -n 40 "$log" >&2; die "process for $url exited; log: $log"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 40 "$log" >&2; die "$url not answering after ${limit}s; log: $log"; }
    sleep 1
  done
}

start_mlflow() {
  # Absolute store paths: a relative sqlite URI would resolve against each process's cwd.
  MLFLOW_DISABLE_TELEMETRY=true nohup mlflow server \
    --backend-store-uri "sqlite:///$STATE_DIR/mlflow.db" \
    --artifacts-destination "$STATE_DIR/mlflow-artifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --allowed-hosts "127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT" \
    >"$LOG_DIR/mlflow.log" 2>&1 </dev/null &
  echo $! >"$MLFLOW_PID_FILE"
  wait_http "$MLFLOW_URL/health" 120 "$MLFLOW_PID_FILE" "$LOG_DIR/mlflow.log"
}

start_ray() {
  local resources=()
  if [ -n "${VILOCAL_RAY_NUM_CPUS:-}" ]; then resources+=(--num-cpus "$VILOCAL_RAY_NUM_CPUS"); fi
  if [ -n "${VILOCAL_RAY_NUM_GPUS:-}" ]; then resources+=(--num-gpus "$VILOCAL_RAY_NUM_GPUS"); fi
  # Jobs inherit the head's environment: this is how they find MLflow and the storage.
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_FILE" RAY_USAGE_STATS_ENABLED=0 \
  MLFLOW_TRACKING_URI="$MLFLOW_URL" MLFLOW_DISABLE_TELEMETRY=true \
  VILOCAL_HOME="$JOB_HOME" VILOCAL_STORAGE="$JOB_STORAGE" \
  nohup ray start --head --block \
    --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$RAY_CLIENT_PORT" --dashboard-agent-listen-port "$DASHBOARD_AGENT_PORT" \
    --temp-dir "$RAY_TEMP_DIR" --disable-usage-stats ${resources[@]+"${resources[@]}"} \
    >"$LOG_DIR/ray.log" 2>&1 </dev/null &
  echo $! >"$RAY_PID_FILE"
  wait_http "$DASHBOARD_URL/api/jobs/" 180 "$RAY_PID_FILE" "$LOG_DIR/ray.log" \
    -H "Authorization: Bearer $(cat "$TOKEN_FILE")"
  # The dashboard can answer before `ray start` has published the GCS address.
  local deadline=$((SECONDS + 60))
  until [ -s "$RAY_TEMP_DIR/ray_current_cluster" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "Ray did not publish its address in $RAY_TEMP_DIR"
    sleep 1
  done
}

write_env_file() {
  local gcs_address tmp
  # Ray publishes the address of the GCS it started (the node's own IP, not loopback).
  gcs_address="$(cat "$RAY_TEMP_DIR/ray_current_cluster")"
  tmp="$(mktemp "$STATE_DIR/env.sh.XXXXXX")"
  # %q quotes each value for the shell that sources the file: a path with spaces or shell
  # characters stays one literal word instead of being split or run.
  {
    echo "# Written by cluster/local.sh start; removed by stop. Source it in the shell you submit from."
    printf 'export %s=%q\n' \
      RAY_API_SERVER_ADDRESS "$DASHBOARD_URL" \
      RAY_ADDRESS "$gcs_address" \
      RAY_AUTH_MODE token \
      RAY_AUTH_TOKEN_PATH "$TOKEN_FILE" \
      MLFLOW_TRACKING_URI "$MLFLOW_URL" \
      VILOCAL_HOME "$JOB_HOME" \
      VILOCAL_STORAGE "$JOB_STORAGE"
  } >"$tmp"
  mv "$tmp" "$ENV_FILE"
}

cmd_start() {
  command -v ray >/dev/null || die "no 'ray' on PATH: activate the environment that has vilocal_dist"
  command -v mlflow >/dev/null || die "no 'mlflow' on PATH: activate the environment that has vilocal_dist"
  command -v curl >/dev/null || die "curl is needed to check that the servers answer"
  if alive "$RAY_PID_FILE" || alive "$MLFLOW_PID_FILE"; then
    die "already running (state in $STATE_DIR); run 'cluster/local.sh stop' first"
  fi
  mkdir -p "$LOG_DIR" "$STATE_DIR/mlflow-artifacts"
  case "$JOB_STORAGE" in *://*) ;; *) mkdir -p "$JOB_STORAGE" ;; esac
  chmod 700 "$STATE_DIR"
  if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE")
  fi
  # Whatever fails from here on (die exits), stop what was already started.
  trap 'cmd_stop >/dev/null' EXIT
  start_mlflow
  start_ray
  write_env_file
  trap - EXIT
  cat <<EOF
Ray dashboard   $DASHBOARD_URL   (token auth; token in $TOKEN_FILE)
MLflow          $MLFLOW_URL
Run outputs     $JOB_HOME   Ray storage $JOB_STORAGE

Submit from the repository root:
  source $(printf '%q' "$ENV_FILE")
  ray job submit --working-dir . -- python -m vilocal_dist --help
Stop with: cluster/local.sh stop
EOF
}

stop_ray() {
  alive "$RAY_PID_FILE" || { rm -f "$RAY_PID_FILE"; return 0; }
  local leader family
  leader="$(cat "$RAY_PID_FILE")"
  family="$(descendants "$leader")"
  # SIGTERM to `ray start --block` alone: it drains the node and stops its children in order.
  kill -TERM "$leader" 2>/dev/null || true
  # shellcheck disable=SC2086  # word splitting of the pid list is intended
  wait_gone 90 "$leader" $family
  # shellcheck disable=SC2086
  kill_left "$leader" $family
  rm -f "$RAY_PID_FILE"
  # Session logs and sockets; the head's own output stays in $LOG_DIR/ray.log.
  rm -rf "$RAY_TEMP_DIR"
}

stop_mlflow() {
  alive "$MLFLOW_PID_FILE" || { rm -f "$MLFLOW_PID_FILE"; return 0; }
  local leader family
  leader="$(cat "$MLFLOW_PID_FILE")"
  family="$(descendants "$leader")"
  # shellcheck disable=SC2086
  kill -TERM "$leader" $family 2>/dev/null || true
  # shellcheck disable=SC2086
  wait_gone 30 "$leader" $family
  # shellcheck disable=SC2086
  kill_left "$leader" $family
  rm -f "$MLFLOW_PID_FILE"
}

cmd_stop() {
  stop_ray
  stop_mlflow
  rm -f "$ENV_FILE"
  echo "stopped (kept: MLflow store, token and logs in $STATE_DIR)"
}

cmd_status() {
  local code=0
  if alive "$MLFLOW_PID_FILE"; then
    if curl -fsS -o /dev/null --max-time 5 "$MLFLOW_URL/health"; then
      echo "mlflow  running (pid $(cat "$MLFLOW_PID_FILE")), $MLFLOW_URL/health answers"
    else
      echo "mlflow  running (pid $(cat "$MLFLOW_PID_FILE")), NOT answering at $MLFLOW_URL"; code=1
    fi
  else
    echo "mlflow  stopped"; code=1
  fi
  if alive "$RAY_PID_FILE"; then
    if curl -fsS -o /dev/null --max-time 5 -H "Authorization: Bearer $(cat "$TOKEN_FILE")" \
      "$DASHBOARD_URL/api/jobs/"; then
      echo "ray     running (pid $(cat "$RAY_PID_FILE")), job API answers at $DASHBOARD_URL"
    else
      echo "ray     running (pid $(cat "$RAY_PID_FILE")), job API NOT answering at $DASHBOARD_URL"; code=1
    fi
  else
    echo "ray     stopped"; code=1
  fi
  [ -f "$ENV_FILE" ] && echo "env     source $(printf '%q' "$ENV_FILE")"
  return "$code"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: cluster/local.sh start|stop|status" >&2; exit 2 ;;
esac
