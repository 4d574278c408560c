#!/usr/bin/env bash
# A real Apache Kafka broker for tests and local runs: single-node KRaft (broker and
# controller in one JVM), transactions enabled, on 127.0.0.1.
#
#   scripts/kafka.sh start       start it (idempotent) and wait until it answers; prints the address
#   scripts/kafka.sh stop        stop it cleanly
#   scripts/kafka.sh status      exit 0 if it answers, 1 if not
#   scripts/kafka.sh bootstrap   print the address
#   scripts/kafka.sh topics ...  run Kafka's topic tool against it (e.g. topics --list)
#
# No Docker and no tarball download: the broker's jars come from Maven Central through
# Maven (org.apache.kafka:kafka_2.13 and its dependencies), cached under
# $WATERLINE_CACHE (default ~/.cache/waterline), so only the first start resolves them.
#
# Settings (environment):
#   KAFKA_VERSION          broker version (default 4.1.1)
#   KAFKA_PORT             client port (default 19092)
#   KAFKA_CONTROLLER_PORT  controller port (default 19093)
#   KAFKA_DIR              data, logs and pid file (default <repo>/target/kafka)
#   KAFKA_HEAP             JVM heap (default 1G)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
version=${KAFKA_VERSION:-4.1.1}
port=${KAFKA_PORT:-19092}
cport=${KAFKA_CONTROLLER_PORT:-19093}
dir=${KAFKA_DIR:-$repo/target/kafka}
cache=${WATERLINE_CACHE:-$HOME/.cache/waterline}/kafka-$version
lib=$cache/lib
bootstrap=127.0.0.1:$port

log() { echo "kafka.sh: $*" >&2; }

resolve_jars() {
  if [[ -f $cache/.complete ]]; then return; fi
  command -v mvn >/dev/null || { log "mvn is required to fetch Kafka from Maven Central (apt-get install maven)"; exit 1; }
  command -v java >/dev/null || { log "java (17+) is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
  log "resolving Apache Kafka $version from Maven Central into $lib"
  rm -rf "$lib" && mkdir -p "$lib"
  mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$version" -DincludeScope=runtime -DoutputDirectory="$lib" >&2
  touch "$cache/.complete"
}

# Kafka's command-line tools, quiet (their log4j output is not wanted on the terminal).
tool() { java -Xmx256m -cp "$lib/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" -Dkafka.logs.dir="$dir/tools" "$@"; }

answers() {
  # The port accepts connections and the broker serves metadata.
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || return 1
  timeout 20 java -Xmx256m -cp "$lib/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$dir/tools" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --list >/dev/null 2>&1
}

pid() { [[ -f $dir/kafka.pid ]] && cat "$dir/kafka.pid"; }
alive() { local p; p=$(pid) && [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

write_config() {
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
# One node: every internal topic has one replica, so transactions work.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Simple clients may produce to topics that do not exist yet.
auto.create.topics.enable=true
# Tests send payloads of 1 MiB and more; dead letters carry them twice.
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
PROPS
}

start() {
  resolve_jars
  if alive && answers; then echo "$bootstrap"; return; fi
  if alive; then
    log "a broker process is running but not answering; waiting for it"
  else
    write_config
    if [[ ! -f $dir/data/meta.properties ]]; then
      tool kafka.tools.StorageTool format --standalone -t "$(tool kafka.tools.StorageTool random-uuid)" \
        -c "$dir/server.properties" >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; exit 1; }
    fi
    log "starting Apache Kafka $version on $bootstrap (data in $dir)"
    nohup java -Xmx"${KAFKA_HEAP:-1G}" -Xms256m -XX:+UseG1GC -cp "$lib/*" \
      -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" -Dkafka.logs.dir="$dir" \
      kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 &
    echo $! >"$dir/kafka.pid"
  fi
  for _ in $(seq 1 90); do
    if answers; then echo "$bootstrap"; return; fi
    if ! alive; then break; fi
    sleep 1
  done
  log "the broker did not come up; last lines of its logs:"
  tail -n 40 "$dir/stdout.log" "$dir/broker.log" >&2 2>/dev/null || true
  exit 1
}

stop() {
  if ! alive; then log "not running"; rm -f "$dir/kafka.pid"; return; fi
  local p; p=$(pid)
  kill -TERM "$p"
  for _ in $(seq 1 60); do
    kill -0 "$p" 2>/dev/null || { rm -f "$dir/kafka.pid"; log "stopped"; return; }
    sleep 0.5
  done
  log "did not stop within 30 s; killing"
  kill -KILL "$p" 2>/dev/null || true
  rm -f "$dir/kafka.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if alive && answers; then echo "running on $bootstrap"; else echo "not running"; exit 1; fi ;;
  bootstrap) echo "$bootstrap" ;;
  topics) shift; resolve_jars; tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@" ;;
  *) echo "usage: $0 start|stop|status|bootstrap|topics ARGS..." >&2; exit 2 ;;
esac
