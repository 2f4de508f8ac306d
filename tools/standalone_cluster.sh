#!/usr/bin/env bash
# A throw-away Spark standalone cluster on this machine (one Master, two
# Workers, loopback only), for running the jobs the way a cluster runs them:
# driver here, Python code shipped to the executors as a --py-files zip.
#
#   tools/standalone_cluster.sh start            start Master + 2 Workers, wait until both registered
#   tools/standalone_cluster.sh status           show the master URL and whether the daemons are alive
#   tools/standalone_cluster.sh submit ARGS...   build dist/spark_unlearn.zip, spark-submit ARGS to the cluster
#   tools/standalone_cluster.sh stop             stop exactly the daemons that `start` recorded
#   tools/standalone_cluster.sh smoke            start, run jobs/train.py, unlearn.py, audit.py --verify-certificate
#                                                and ifru.py on it, check, stop
#
# pyspark's pip distribution has no sbin/start-master.sh, so the daemons are
# started with bin/spark-class.  Everything binds to 127.0.0.1.
#
# Environment:
#   PYTHON                   interpreter for the driver and the executors
#                            (default: python3 on PATH; it must have pyspark, numpy, ...)
#   SPARK_UNLEARN_CLUSTER_DIR  work dir: logs, pid file, master URL
#                            (default: out/cluster; `smoke` uses a fresh temp dir unless this is set)
#   CLUSTER_WAIT_SECONDS     how long to wait for the workers to register (default 120)
#   WORKER_MEMORY            memory of each worker (default 2g)
#   EXECUTOR_MEMORY          spark.executor.memory for submit/smoke (default 1g)
#   SMOKE_TIMEOUT_SECONDS    time limit of the smoke job's spark-submit (default 480)
#   SMOKE_TRAIN_ARGS         extra arguments for the smoke's jobs/train.py, e.g. "--iterations 3" (default none)
#   SMOKE_UNLEARN_ARGS       extra arguments for the smoke's jobs/unlearn.py, e.g. "--config FILE" (default none)
#   SMOKE_LOAD_CHECK         0: skip the ALSModel.load check in a local JVM of its own (a caller that has a
#                            Spark session checks the version itself, as the test suite does; default 1)
#   SMOKE_KEEP               set to keep smoke's own temp work dir after a success

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST=127.0.0.1
N_WORKERS=2
WAIT_SECONDS="${CLUSTER_WAIT_SECONDS:-120}"
WORKER_MEMORY="${WORKER_MEMORY:-2g}"
EXECUTOR_MEMORY="${EXECUTOR_MEMORY:-1g}"

# Keep every Spark socket (RPC, block manager, web UIs) on the loopback address.
export SPARK_LOCAL_IP="$HOST"

die() { echo "standalone_cluster: $*" >&2; exit 1; }
say() { echo "standalone_cluster: $*" >&2; }

resolve_python() {
    local py="${PYTHON:-}"
    if [[ -z "$py" ]]; then
        py="$(command -v python3 || command -v python || true)"
    fi
    [[ -n "$py" ]] || die "no python3 on PATH (set PYTHON)"
    # Resolve shims/symlinks to the real interpreter so executors use exactly it.
    PYTHON="$("$py" -c 'import sys; print(sys.executable)')" || die "cannot run $py"
    export PYTHON
    export PYSPARK_PYTHON="$PYTHON" PYSPARK_DRIVER_PYTHON="$PYTHON"
}

resolve_spark_home() {
    SPARK_HOME="$("$PYTHON" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')" \
        || die "$PYTHON cannot import pyspark (pip install -e . first)"
    export SPARK_HOME
    [[ -x "$SPARK_HOME/bin/spark-class" ]] || die "$SPARK_HOME/bin/spark-class not found"
}

require_java() {
    command -v java >/dev/null 2>&1 || die "java not found on PATH (Spark needs Java 17)"
}

setup() {
    resolve_python
    resolve_spark_home
    require_java
    WORK="${SPARK_UNLEARN_CLUSTER_DIR:-$REPO/out/cluster}"
    mkdir -p "$WORK"
    WORK="$(cd "$WORK" && pwd)"
    PIDFILE="$WORK/pids"
    URLFILE="$WORK/master.url"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# A pid is alive if it exists and is not a zombie (an exited daemon that was
# our child stays a zombie until reaped, and kill -0 still succeeds on it).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    if [[ -r "/proc/$1/stat" ]]; then
        local state
        state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
        [[ "$state" != Z ]]
    fi
}

recorded_pids() {
    [[ -f "$PIDFILE" ]] || return 0
    awk '{print $2}' "$PIDFILE"
}

any_alive() {
    local pid
    for pid in $(recorded_pids); do
        if alive "$pid"; then return 0; fi
    done
    return 1
}

log_tails() {
    local f
    for f in "$WORK"/master.log "$WORK"/worker-*.log; do
        [[ -f "$f" ]] || continue
        echo "----- tail of $f" >&2
        tail -n 30 "$f" >&2
    done
    for f in "$WORK"/worker-*/app-*/*/stderr; do
        [[ -f "$f" ]] || continue
        echo "----- tail of $f" >&2
        tail -n 30 "$f" >&2
    done
}

# Start one daemon in the background (immune to the terminal's hangup) and
# record its pid.  spark-class ends in `exec java ...`, so the recorded pid is
# the JVM's.
launch() {
    local name="$1"
    shift
    nohup "$SPARK_HOME/bin/spark-class" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    local pid=$!
    echo "$name $pid" >>"$PIDFILE"
    say "started $name (pid $pid), log $WORK/$name.log"
}

cmd_start() {
    setup
    if any_alive; then
        die "a cluster recorded in $PIDFILE is still running; run '$0 stop' first"
    fi
    rm -f "$PIDFILE" "$URLFILE"
    rm -rf "$WORK"/worker-*
    local port webui
    port="$(free_port)"
    webui="$(free_port)"
    launch master org.apache.spark.deploy.master.Master \
        --host "$HOST" --port "$port" --webui-port "$webui"
    local url="spark://$HOST:$port"
    local i wport wweb
    for ((i = 1; i <= N_WORKERS; i++)); do
        wport="$(free_port)"
        wweb="$(free_port)"
        mkdir -p "$WORK/worker-$i"
        launch "worker-$i" org.apache.spark.deploy.worker.Worker "$url" \
            --host "$HOST" --port "$wport" --cores 1 --memory "$WORKER_MEMORY" \
            --webui-port "$wweb" --work-dir "$WORK/worker-$i"
    done

    local deadline=$((SECONDS + WAIT_SECONDS)) registered=0 pid
    while ((SECONDS < deadline)); do
        # Distinct addresses: a slow worker may re-register (same address twice).
        registered="$({ grep -oE 'Registering worker [0-9.]+:[0-9]+' "$WORK/master.log" 2>/dev/null || true; } | sort -u | wc -l)"
        if ((registered >= N_WORKERS)); then
            break
        fi
        for pid in $(recorded_pids); do
            if ! alive "$pid"; then
                log_tails
                cmd_stop_quiet
                die "daemon pid $pid exited during start-up (logs above)"
            fi
        done
        sleep 1
    done
    if ((registered < N_WORKERS)); then
        log_tails
        cmd_stop_quiet
        die "only $registered of $N_WORKERS workers registered within ${WAIT_SECONDS}s (logs above)"
    fi
    echo "$url" >"$URLFILE"
    say "cluster up: $url (master web UI http://$HOST:$webui), $N_WORKERS workers x 1 core, $WORKER_MEMORY"
    echo "$url"
}

# Stop the recorded daemons (and any executor JVM a worker still has): TERM,
# wait up to 30 s, then KILL whatever is left.  Only pids from the pid file
# and their direct children are touched.
stop_recorded() {
    [[ -f "$PIDFILE" ]] || return 0
    local pids=() children=() pid child
    # Workers first (they kill their executors), the master last.
    while read -r _ pid; do pids=("$pid" "${pids[@]}"); done <"$PIDFILE"
    for pid in "${pids[@]}"; do
        if alive "$pid"; then
            for child in $(pgrep -P "$pid" 2>/dev/null || true); do children+=("$child"); done
        fi
    done
    for pid in "${pids[@]}"; do
        if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    local deadline=$((SECONDS + 30)) left
    while ((SECONDS < deadline)); do
        left=0
        for pid in "${pids[@]}" "${children[@]}"; do
            if alive "$pid"; then left=1; fi
        done
        ((left == 0)) && break
        sleep 0.5
    done
    for pid in "${pids[@]}" "${children[@]}"; do
        if alive "$pid"; then
            say "pid $pid did not stop after TERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${pids[@]}" "${children[@]}"; do
        while alive "$pid"; do sleep 0.2; done
        wait "$pid" 2>/dev/null || true # reap it if it is our child (smoke)
    done
    rm -f "$PIDFILE" "$URLFILE"
}

cmd_stop_quiet() { stop_recorded; }

cmd_stop() {
    setup
    if [[ ! -f "$PIDFILE" ]]; then
        say "no cluster recorded in $WORK (nothing to stop)"
        return 0
    fi
    stop_recorded
    say "cluster in $WORK stopped"
}

cmd_status() {
    setup
    if [[ ! -f "$PIDFILE" ]]; then
        echo "not running (no $PIDFILE)"
        return 1
    fi
    local name pid rc=0
    [[ -f "$URLFILE" ]] && echo "master: $(cat "$URLFILE")"
    while read -r name pid; do
        if alive "$pid"; then echo "$name: pid $pid running"; else echo "$name: pid $pid NOT running"; rc=1; fi
    done <"$PIDFILE"
    return "$rc"
}

# The package as a zip for --py-files: spark_unlearn/ at the zip's root, no caches.
build_zip() {
    mkdir -p "$REPO/dist"
    ZIP="$REPO/dist/spark_unlearn.zip"
    "$PYTHON" - "$REPO" "$ZIP" <<'EOF'
import os, sys, zipfile
repo, out = sys.argv[1], sys.argv[2]
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
    for root, dirs, files in os.walk(os.path.join(repo, "spark_unlearn")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(root, name)
            zf.write(path, os.path.relpath(path, repo))
os.replace(tmp, out)
EOF
    say "built $ZIP"
}

# spark-submit to the running cluster, driver on this machine (client mode).
submit_to_cluster() {
    local url
    [[ -f "$URLFILE" ]] || die "no running cluster recorded in $WORK; run '$0 start' first"
    url="$(cat "$URLFILE")"
    build_zip
    "$SPARK_HOME/bin/spark-submit" \
        --master "$url" \
        --deploy-mode client \
        --properties-file "$REPO/conf/spark-cluster.properties" \
        --py-files "$ZIP" \
        --conf "spark.executor.memory=$EXECUTOR_MEMORY" \
        --conf "spark.pyspark.python=$PYTHON" \
        --conf "spark.pyspark.driver.python=$PYTHON" \
        --conf "spark.driver.host=$HOST" \
        --conf "spark.driver.bindAddress=$HOST" \
        --conf "spark.ui.enabled=false" \
        --conf "spark.checkpoint.dir=file://$WORK/checkpoints" \
        "$@"
}

cmd_submit() {
    setup
    cd "$REPO"
    submit_to_cluster "$@"
}

smoke_cleanup() {
    if [[ -n "${SUBMIT_PID:-}" ]] && alive "$SUBMIT_PID"; then
        say "stopping the running job (pid $SUBMIT_PID)"
        kill -TERM "$SUBMIT_PID" 2>/dev/null || true
        wait "$SUBMIT_PID" 2>/dev/null || true
    fi
    say "stopping the cluster"
    stop_recorded
}

# One job of the smoke, in the background + `wait`, so that a TERM to this script is handled at once (the trap stops
# the job and the cluster) instead of after the job; timeout(1) puts the job in its own process group and signals
# all of it.  Usage: smoke_job NAME JOB ARGS... (stdout in $WORK/NAME.out, logs in $WORK/NAME.log; the caller's
# `limit` is the time limit).  On failure: the job's log tail and the daemons' logs, then exit.
smoke_job() {
    local name="$1" rc=0
    shift
    timeout -k 10 "$limit" bash "${BASH_SOURCE[0]}" submit "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" </dev/null &
    SUBMIT_PID=$!
    wait "$SUBMIT_PID" || rc=$?
    SUBMIT_PID=""
    if ((rc != 0)); then
        echo "----- tail of $WORK/$name.log" >&2
        tail -n 60 "$WORK/$name.log" >&2
        log_tails
        die "spark-submit $1 exited with $rc (124 = timed out after ${limit}s)"
    fi
}

cmd_smoke() {
    local own_dir=0
    if [[ -z "${SPARK_UNLEARN_CLUSTER_DIR:-}" ]]; then
        SPARK_UNLEARN_CLUSTER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/spark_unlearn_cluster.XXXXXX")"
        export SPARK_UNLEARN_CLUSTER_DIR
        own_dir=1
    fi
    setup
    cd "$REPO"
    local t0=$SECONDS
    local store="$WORK/model_store"
    rm -rf "$store"
    SUBMIT_PID=""
    trap 'rc=$?; trap - EXIT; smoke_cleanup; exit $rc' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP

    cmd_start >/dev/null
    say "cluster started in $((SECONDS - t0))s; submitting jobs/train.py"

    local limit="${SMOKE_TIMEOUT_SECONDS:-480}"
    local -a train_args=()
    read -r -a train_args <<<"${SMOKE_TRAIN_ARGS:-}"
    # --verbose: the executor check below reads the driver's INFO lines ("Finished task ... (executor N)").
    smoke_job driver jobs/train.py --model "$store" --verbose --json ${train_args[@]+"${train_args[@]}"}
    say "train job finished in $((SECONDS - t0))s"

    # 1. The store got a version that Spark's own ALSModel.load reads.
    [[ -f "$store/CURRENT" ]] || die "$store/CURRENT missing after a successful train job"
    local version
    version="$(tr -d '[:space:]' <"$store/CURRENT")"
    [[ -d "$store/versions/$version" ]] || die "CURRENT names $version but $store/versions/$version is missing"
    if [[ "${SMOKE_LOAD_CHECK:-1}" != 0 ]]; then
    "$PYTHON" - "$store/versions/$version" <<'EOF' >"$WORK/load_check.log" 2>&1 || { tail -n 40 "$WORK/load_check.log" >&2; die "ALSModel.load of the published version failed"; }
import sys
from pyspark.sql import SparkSession
from pyspark.ml.recommendation import ALSModel

path = sys.argv[1]
spark = (SparkSession.builder.master("local[1]").appName("smoke-load-check")
         .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
model = ALSModel.load(path)
n_users, n_items = model.userFactors.count(), model.itemFactors.count()
assert model.rank > 0 and n_users > 0 and n_items > 0, (model.rank, n_users, n_items)
print(f"ALSModel.load({path}): rank {model.rank}, {n_users} users, {n_items} items")
spark.stop()
EOF
    say "$(tail -n 1 "$WORK/load_check.log")"
    else
        say "ALSModel.load check left to the caller (SMOKE_LOAD_CHECK=0)"
    fi

    # 2. Both workers launched an executor, and tasks ran on more than one executor.
    local i
    for ((i = 1; i <= N_WORKERS; i++)); do
        grep -q "Asked to launch executor" "$WORK/worker-$i.log" \
            || { log_tails; die "worker-$i never launched an executor"; }
    done
    local executors
    executors="$({ grep -oE 'Finished task .* \(executor [0-9]+\)' "$WORK/driver.log" || true; } \
        | { grep -oE 'executor [0-9]+' || true; } | sort -u | wc -l)"
    if ((executors < 2)); then
        echo "----- tail of $WORK/driver.log" >&2
        tail -n 40 "$WORK/driver.log" >&2
        die "tasks finished on $executors distinct executor(s); expected at least 2"
    fi
    # 3. The unlearning job runs on the cluster too: erase one user, a new version and a ledger entry appear.
    printf 'user\n1\n' >"$WORK/delete.csv"
    local -a unlearn_args=()
    read -r -a unlearn_args <<<"${SMOKE_UNLEARN_ARGS:-}"
    smoke_job unlearn jobs/unlearn.py --model "$store" --delete "$WORK/delete.csv" --batch-id smoke-erase-1 \
        ${unlearn_args[@]+"${unlearn_args[@]}"}
    local unlearned
    unlearned="$(tr -d '[:space:]' <"$store/CURRENT")"
    [[ "$unlearned" != "$version" ]] || die "jobs/unlearn.py succeeded but CURRENT still names $version"
    grep -q '"batch_id":"smoke-erase-1"' "$store/ledger.jsonl" || die "no ledger entry for the smoke batch"
    say "unlearn job finished in $((SECONDS - t0))s: $version -> $unlearned, ledger entry written"
    version="$unlearned"

    # 3b. The independent verifier recomputes the new version's certificate on the cluster (exit 3 if it fails).
    smoke_job verify jobs/audit.py --model "$store" --verify-certificate --json
    grep -q '"status": "verified"' "$WORK/verify.out" || { tail -n 40 "$WORK/verify.out" >&2; die "the verifier did not verify $version"; }
    say "verifier finished in $((SECONDS - t0))s: the certificate of $version recomputed from its files holds"

    # 4. The IFRU job runs on the cluster too: a 1-layer LightGCN trained on pyspark's sample, then every 7th of its
    #    first 150 interactions unlearned with pruning (the subgraph's passes are Python tasks on the executors).
    local sample
    sample="$("$PYTHON" -c 'from spark_unlearn.data.embedded import sample_movielens_path as p; print(p())')" \
        || die "cannot locate pyspark's sample ratings"
    awk -F'::' 'BEGIN { print "user,item" } NR % 7 == 0 && NR <= 150 { print $1 "," $2 }' "$sample" >"$WORK/ifru_delete.csv"
    printf '[ifru]\nkcore = 3\ndim = 8\nepochs = 40\nlr = 0.05\nreg = 0.001\nprune_quantile = 0.5\ndamping = 0.01\n' \
        >"$WORK/ifru.toml"
    smoke_job ifru jobs/ifru.py --ratings "$sample" --model "$WORK/ifru_model" --delete "$WORK/ifru_delete.csv" \
        --model-type lightgcn --config "$WORK/ifru.toml" --json
    local ifru_summary
    ifru_summary="$("$PYTHON" - "$WORK/ifru.out" <<'EOF'
import json, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
start = text.rfind("\n{\n")
report = json.loads(text[start + 1:] if start >= 0 else text)
u = report.get("unlearning") or {}
if not (report.get("trained") and u.get("removed_terms", 0) > 0 and u.get("cg_converged")):
    sys.exit(f"unexpected IFRU report: {json.dumps(report)[:2000]}")
print(f"{u['removed_terms']} terms unlearned, {u['kept_nodes']} kept nodes, {u['hvps']} HVPs, "
      f"subgraph {u['timings_s']['spark_subgraph_s']:.2f} s")
EOF
)" || { tail -n 40 "$WORK/ifru.out" >&2; die "jobs/ifru.py did not unlearn on the cluster"; }
    say "IFRU job finished in $((SECONDS - t0))s: $ifru_summary"

    say "OK: version $version published and loadable; $N_WORKERS workers launched executors;" \
        "tasks ran on $executors executors; total $((SECONDS - t0))s"
    # --json: the driver's stdout holds the report only (logs and summary go to spark-submit's stderr).
    "$PYTHON" - "$WORK/driver.out" <<'EOF' || true
import json, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
start = text.rfind("\n{\n")
try:
    report = json.loads(text[start + 1:] if start >= 0 else text)
    keys = ("version", "n_train", "n_test", "seconds_total", "seconds_training", "test_rmse")
    print("train report:", json.dumps({k: report[k] for k in keys if k in report}))
except ValueError:
    print("train report: (no JSON object found at the end of the driver's stdout)")
EOF
    if ((own_dir)) && [[ -z "${SMOKE_KEEP:-}" ]]; then
        stop_recorded
        rm -rf "$WORK"
        echo "smoke OK ($((SECONDS - t0))s); work dir removed (set SMOKE_KEEP=1 to keep it)"
    else
        echo "smoke OK ($((SECONDS - t0))s): logs in $WORK"
    fi
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        submit) cmd_submit "$@" ;;
        smoke) cmd_smoke ;;
        *)
            sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
            exit 2
            ;;
    esac
}

main "$@"
