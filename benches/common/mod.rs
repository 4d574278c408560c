//! What the benchmarks against Apache Kafka share: the broker and their settings.

use std::process::Command;

/// `$KAFKA_BOOTSTRAP`, or the address of a broker started with `scripts/kafka.sh`.
pub fn bootstrap() -> String {
    if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
        return b;
    }
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
        .arg("start")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("kafka.sh prints the bootstrap address last")
        .trim()
        .to_string()
}

/// The number in environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
