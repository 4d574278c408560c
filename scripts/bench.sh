#!/usr/bin/env bash
# The end-to-end benchmark (benches/e2e.rs): in one run, against a real Apache Kafka broker,
# a bare librdkafka consumer (the input side's limit) and waterline's trades dataflow,
# at-least-once and exactly-once, on the same pre-produced topic; then the most exactly-once
# sustains live (fed more than it takes), and end-to-end latency at half that. Prints a
# markdown table (events/s, ratio to the baseline, CPU seconds of the run and of the broker,
# events per CPU-second, peak RSS, latency p50/p99), a latency table and the target checks
# as PASS/MISS lines.
#
#   scripts/bench.sh                      # 2 million trades, 3 rounds, 20 s per latency mode: ~9 min
#   WATERLINE_BENCH_MILLIONS=0.3 WATERLINE_BENCH_LATENCY_SECS=10 scripts/bench.sh
#
# Settings (environment):
#   KAFKA_BOOTSTRAP               a broker to use; unset: scripts/kafka.sh starts one (and
#                                 leaves it running)
#   WATERLINE_BENCH_MILLIONS      million trades to pre-produce (default 2; fractions work)
#   WATERLINE_BENCH_LATENCY_SECS  measured seconds per latency mode (default 20)
#   WATERLINE_BENCH_ROUNDS        runs of each throughput row, interleaved; the table shows
#                                 each row's median (default 3)
#   WATERLINE_BENCH_WARM_UP       rounds run first and discarded, to warm the broker's JIT
#                                 (default 2)
#   WATERLINE_BENCH_WARM_UP_MAX   more of them, up to this many in all, while a round's
#                                 exactly-once run is over a tenth faster than the last
#                                 round's (default 6)
#   WATERLINE_BENCH_PRECREATE     1 (default): each waterline run's output topics are created
#                                 just before it, as set-up; 0: the run creates them
#   WATERLINE_BENCH_LATENCY_SHARE the live feed's rate as a share of the live maximum
#                                 (default 0.5)
#   WATERLINE_BENCH_LATENCY_RATE  records/s: measure only the latency sets, fed at this rate
#                                 (no pre-produced topic, throughput rows or live maximum;
#                                 WATERLINE_BENCH_WARM_UP discarded 10 s live runs first;
#                                 about 3-4 minutes)
#   WATERLINE_BENCH_SET           settings passed to every run as --set, separated by spaces
#
# Progress goes to stderr, the report to stdout; exits non-zero if a run dies, reads fewer
# records than were produced, or a latency sample set is empty.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [[ -z "${KAFKA_BOOTSTRAP:-}" ]]; then
    KAFKA_BOOTSTRAP=$(scripts/kafka.sh start | tail -n 1)
fi
export KAFKA_BOOTSTRAP

# Release build of the binary and the harness (the bench profile is release's).
cargo bench --bench e2e --no-run >&2
exec cargo bench --bench e2e
