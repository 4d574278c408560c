#!/usr/bin/env bash
# A real Apache Kafka broker for waterline's tests and local runs: a single-node KRaft
# cluster (one JVM is both controller and broker) on 127.0.0.1 (or $KAFKA_HOST),
# transactions enabled.
#
#   scripts/kafka.sh start              start it if needed, wait until it answers, print the
#                                       bootstrap address (last line of stdout)
#   scripts/kafka.sh stop               stop it (SIGTERM, SIGKILL after $KAFKA_STOP_TIMEOUT s)
#   scripts/kafka.sh status             "running on ADDRESS" and exit 0, or exit 1
#   scripts/kafka.sh bootstrap          print the bootstrap address
#   scripts/kafka.sh topics ARGS...     Kafka's topic tool against it (e.g. topics --list)
#   scripts/kafka.sh tool CLASS ARGS... any Kafka tool class with the broker's classpath, e.g.
#                                       tool org.apache.kafka.tools.consumer.ConsoleConsumer ...
#   scripts/kafka.sh logs               the last lines of the broker's log
#                                       (its GC pauses go to $KAFKA_DIR/gc.log)
#   scripts/kafka.sh clean              stop it and delete its data, logs and configuration
#
# Why this way: the machines this project is built and tested on run no containers and
# reach no download sites, only package registries. So the broker is the one Apache
# publishes to Maven Central (org.apache.kafka:kafka_2.13, plus kafka-tools for the
# command-line tools), resolved with its dependencies by Maven from scripts/kafka/pom.xml
# into a cache directory, and run with `java -cp 'lib/*' kafka.Kafka`. Only the first
# start runs Maven (a few seconds to a minute); later starts use the cache.
#
# Only the bootstrap address goes to stdout; progress and errors go to stderr.
# Concurrent starts (e.g. several test binaries) are serialized with a lock, so one
# broker is started and the others find it.
#
# Settings (environment):
#   KAFKA_VERSION          Apache Kafka version, 4.x (default 4.2.1)
#   KAFKA_HOST             address of the client listener, advertised to clients as is
#                          (default 127.0.0.1; e.g. a bridge address that network
#                          namespaces route to). The controller stays on 127.0.0.1.
#   KAFKA_PORT             client listener port (default 19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port on 127.0.0.1 (default 19093)
#   KAFKA_DIR              data, logs, pid file, configuration (default <repo>/target/kafka)
#   KAFKA_HEAP             JVM heap, -Xmx (default 1G)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 90)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 30)
#   WATERLINE_CACHE        cache root; jars go to $WATERLINE_CACHE/kafka-<version>/lib
#                          (default ~/.cache/waterline)
#
# Requires bash, Java 17+ and (for the first start only) Maven.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
conf=$here/kafka

version=${KAFKA_VERSION:-4.2.1}
host=${KAFKA_HOST:-127.0.0.1}
port=${KAFKA_PORT:-19092}
cport=${KAFKA_CONTROLLER_PORT:-19093}
dir=$(realpath -m "${KAFKA_DIR:-$repo/target/kafka}")
heap=${KAFKA_HEAP:-1G}
start_timeout=${KAFKA_START_TIMEOUT:-90}
stop_timeout=${KAFKA_STOP_TIMEOUT:-30}
cache=${WATERLINE_CACHE:-$HOME/.cache/waterline}/kafka-$version
lib=$cache/lib
bootstrap=$host:$port
pidfile=$dir/kafka.pid

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# --- prerequisites and jars ------------------------------------------------------------

need_java() {
  command -v java >/dev/null || die "java 17 or later is required (apt-get install openjdk-17-jre-headless)"
  local v
  v=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [[ ${v%%.*} =~ ^[0-9]+$ && ${v%%.*} -ge 17 ]] || die "Apache Kafka $version needs Java 17 or later; java is ${v:-unknown}"
}

# Copies org.apache.kafka:kafka_2.13:$version and kafka-tools with all their runtime
# dependencies into $lib. The .complete marker is written last, so an interrupted download
# is redone rather than half used.
resolve_jars() {
  [[ -f $cache/.complete ]] && return
  mkdir -p "$cache"
  exec 8>"$cache/.lock"
  flock 8
  if [[ ! -f $cache/.complete ]]; then
    command -v mvn >/dev/null || die "Maven is required once, to fetch Apache Kafka from Maven Central (apt-get install maven)"
    log "resolving Apache Kafka $version from Maven Central into $lib (first start only)"
    rm -rf "$lib" "$lib.part"
    if ! mvn -q -B -f "$conf/pom.xml" dependency:copy-dependencies -Dkafka.version="$version" \
      -DincludeScope=runtime -DoutputDirectory="$lib.part" >"$cache/mvn.log" 2>&1; then
      sed 's/\x1b\[[0-9;]*m//g' "$cache/mvn.log" | grep -E '^\[(ERROR|WARNING)\] .' | head -n 5 >&2
      die "Maven could not resolve org.apache.kafka:kafka_2.13:$version (log: $cache/mvn.log)"
    fi
    [[ -f $lib.part/kafka_2.13-$version.jar ]] || die "Maven did not produce kafka_2.13-$version.jar"
    mv "$lib.part" "$lib"
    echo "$version" >"$cache/.complete"
  fi
  exec 8>&-
}

# Runs a Kafka class with the broker's classpath, logging warnings to stderr.
tool() {
  java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$conf/log4j2-tools.properties" -cp "$lib/*" "$@"
}

# --- the broker process ------------------------------------------------------------------

# The broker's pid, if it runs: from the pid file, checked against /proc so that a reused
# pid is not mistaken for it.
broker_pid() {
  local p
  [[ -f $pidfile ]] && p=$(<"$pidfile") && [[ $p =~ ^[0-9]+$ ]] || return 1
  kill -0 "$p" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $dir/server.properties" || return 1
  echo "$p"
}

# The version the running broker was started with (from its classpath).
running_version() {
  tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | sed -n 's|.*/kafka-\([^/]*\)/lib/\*$|\1|p' | head -n 1
}

port_open() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

# The broker answers: the port accepts connections and a client gets metadata from it.
answers() {
  port_open || return 1
  timeout 30 java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$conf/log4j2-tools.properties" -cp "$lib/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --list >/dev/null 2>&1
}

write_config() {
  local t
  t=$(<"$conf/server.properties")
  t=${t//@HOST@/$host}
  t=${t//@PORT@/$port}
  t=${t//@CONTROLLER_PORT@/$cport}
  t=${t//@DATA_DIR@/$dir/data}
  printf '%s\n' "$t" >"$dir/server.properties"
}

# Formats the data directory once. The KRaft voter set written here names the controller
# port, so a data directory formatted for other ports is discarded (it only holds test data).
format_storage() {
  local ports="$port $cport"
  if [[ -f $dir/data/meta.properties && -f $dir/ports && $(<"$dir/ports") != "$ports" ]]; then
    log "ports changed to $ports: discarding the old data in $dir/data"
    rm -rf "$dir/data"
  fi
  [[ -f $dir/data/meta.properties ]] && return
  rm -rf "$dir/data" && mkdir -p "$dir/data"
  # A cluster id is 16 random bytes, base64url without padding.
  local id
  id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  # `--cluster-id=<id>`: an id may start with '-', which must not read as an option.
  tool kafka.tools.StorageTool format --standalone --cluster-id="$id" \
    --config "$dir/server.properties" >"$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; die "formatting $dir/data failed"; }
  echo "$ports" >"$dir/ports"
}

launch() {
  log "starting Apache Kafka $version on $bootstrap (data and logs in $dir)"
  rm -f "$pidfile"
  # setsid: the broker outlives the caller's session and its Ctrl-C; the inner shell writes
  # its own pid, which is the broker's after exec. Nothing may keep the caller's stdout or
  # the lock open, or callers reading our output (or waiting for the lock) would hang.
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidfile" \
    java -Xmx"$heap" -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Xlog:gc:file="$dir/gc.log":time,uptime:filecount=2,filesize=10m \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$conf/log4j2.properties" -Dkafka.logs.dir="$dir" \
    -cp "$lib/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >"$dir/stdout.log" 2>&1 9>&- &
  for _ in $(seq 50); do [[ -s $pidfile ]] && return; sleep 0.1; done
  die "the broker process did not start; see $dir/stdout.log"
}

show_logs() {
  log "errors in $dir/broker.log:"
  grep -E '^\[[^]]*\] (ERROR|FATAL)|^Caused by' "$dir/broker.log" 2>/dev/null | tail -n 10 >&2 || true
  log "last lines of $dir/stdout.log and $dir/broker.log:"
  tail -n 5 "$dir/stdout.log" >&2 2>/dev/null || true
  tail -n 30 "$dir/broker.log" >&2 2>/dev/null || true
}

# --- subcommands -------------------------------------------------------------------------

start() {
  need_java
  resolve_jars
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock -w $((start_timeout + 60)) 9 || die "another scripts/kafka.sh start holds $dir/.lock"

  local p
  if p=$(broker_pid); then
    local v
    v=$(running_version "$p")
    [[ -z $v || $v == "$version" ]] || log "note: the running broker is Apache Kafka $v, not $version; stop and start it to switch"
    if answers; then echo "$bootstrap"; return; fi
    log "the broker (pid $p) is running but not answering yet; waiting"
  elif port_open; then
    # Not ours, but if it is a Kafka broker the caller can use it all the same.
    if answers; then
      log "a Kafka broker not started from $dir already answers on $bootstrap; using it"
      echo "$bootstrap"
      return
    fi
    die "port $port is in use by something that is not a Kafka broker (set KAFKA_PORT)"
  else
    write_config
    format_storage
    launch
  fi

  local started=$SECONDS
  while ((SECONDS - started < start_timeout)); do
    if answers; then
      log "ready in $((SECONDS - started)) s"
      echo "$bootstrap"
      return
    fi
    broker_pid >/dev/null || { log "the broker exited"; show_logs; exit 1; }
    sleep 1
  done
  log "the broker did not answer within $start_timeout s (KAFKA_START_TIMEOUT)"
  show_logs
  exit 1
}

stop() {
  local p
  if ! p=$(broker_pid); then
    rm -f "$pidfile"
    log "not running"
    return
  fi
  log "stopping the broker (pid $p)"
  kill -TERM "$p" 2>/dev/null || true
  local waited=0
  while kill -0 "$p" 2>/dev/null; do
    if ((waited >= stop_timeout * 10)); then
      log "still running after $stop_timeout s; killing it"
      kill -KILL "$p" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f "$pidfile"
  log "stopped"
}

status() {
  local p
  if p=$(broker_pid) && answers; then
    echo "running on $bootstrap (pid $p, Apache Kafka $(running_version "$p"), data in $dir)"
  elif p=$(broker_pid); then
    echo "starting (pid $p), not answering on $bootstrap yet"
    return 1
  else
    echo "not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  bootstrap) echo "$bootstrap" ;;
  topics) shift; need_java; resolve_jars; tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@" ;;
  tool) shift; [[ $# -ge 1 ]] || die "usage: $0 tool CLASS ARGS..."; need_java; resolve_jars; tool "$@" ;;
  logs) tail -n "${2:-50}" "$dir/broker.log" ;;
  clean)
    [[ ! -e $dir || -f $dir/server.properties || -f $dir/.lock ]] || die "$dir does not look like a broker directory; not deleting it"
    stop
    rm -rf "$dir"
    log "removed $dir"
    ;;
  *)
    echo "usage: $0 start|stop|status|bootstrap|topics ARGS...|tool CLASS ARGS...|logs [N]|clean" >&2
    exit 2
    ;;
esac
