//! Environment settings (`config/*.toml`), layered: built-in defaults → file → environment
//! variables → command-line flags. Every bad field is reported at once, by name.
//!
//! ```toml
//! app_id = "waterline-trades"      # names consumer groups (and, later, transactional ids)
//! [kafka]
//! bootstrap_servers = "127.0.0.1:19092"
//! replication_factor = 1          # for topics waterline creates
//! create_topics = true
//! [kafka.properties]              # passed to every librdkafka client as is
//! "client.rack" = "eu-west-1a"
//! [processing]
//! guarantee = "exactly-once"      # or "at-least-once"
//! commit_interval = "100ms"       # how often each worker commits outputs and progress
//! [log]
//! format = "text"                 # or "json"
//! level = "info"                  # a tracing filter, e.g. "waterline=debug,info"
//! ```
//!
//! Environment: `WATERLINE_BOOTSTRAP_SERVERS` (or `KAFKA_BOOTSTRAP`), `WATERLINE_APP_ID`,
//! `WATERLINE_LOG_FORMAT`, `WATERLINE_LOG_LEVEL`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::fields::{Problems, Table, parse_toml};

/// A config that failed to load: every problem, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{source_name} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
pub struct ConfigError {
    /// What was read.
    pub source_name: String,
    /// One message per bad field.
    pub problems: Vec<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with structured fields.
    Json,
}

/// What waterline promises about its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// Outputs and progress are committed in Kafka transactions: across crashes and
    /// restarts, every input contributes to the committed output exactly once.
    ExactlyOnce,
    /// No transactions: after a crash, outputs since the last progress record are written
    /// again (duplicates, never losses).
    AtLeastOnce,
}

/// Validated environment settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Application id: names the consumer group.
    pub app_id: String,
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Replication factor of topics waterline creates.
    pub replication_factor: i32,
    /// Whether to create missing output topics at start-up.
    pub create_topics: bool,
    /// Extra librdkafka properties for every client.
    pub kafka_properties: BTreeMap<String, String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Delivery guarantee.
    pub guarantee: Guarantee,
    /// How often each worker commits its outputs and progress.
    pub commit_interval: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            app_id: "waterline".into(),
            bootstrap_servers: "127.0.0.1:19092".into(),
            replication_factor: 1,
            create_topics: true,
            kafka_properties: BTreeMap::new(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            guarantee: Guarantee::ExactlyOnce,
            commit_interval: std::time::Duration::from_millis(100),
        }
    }
}

impl Config {
    /// Defaults, overlaid with `path` if given, then with the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut problems = Problems::default();
        let name = path.map_or("configuration".to_string(), |p| p.display().to_string());
        if let Some(path) = path {
            match std::fs::read_to_string(path) {
                Ok(text) => config.overlay_toml(&text, &mut problems),
                Err(e) => {
                    problems.field("--config", format!("cannot read {}: {e}", path.display()))
                }
            }
        }
        config.overlay_env(|k| std::env::var(k).ok(), &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                source_name: name,
                problems: problems.into_messages(),
            })
        }
    }

    fn overlay_toml(&mut self, text: &str, problems: &mut Problems) {
        let Some(t) = parse_toml(text, problems) else {
            return;
        };
        let top = Table::new("", &t);
        if let Some(v) = top.opt_string("app_id", problems) {
            self.app_id = v;
        }
        if let Some(kafka) = top.table("kafka", false, problems) {
            if let Some(v) = kafka.opt_string("bootstrap_servers", problems) {
                self.bootstrap_servers = v;
            }
            if let Some(v) = kafka.opt_integer("replication_factor", 1..=32, problems) {
                self.replication_factor = v as i32;
            }
            if let Some(v) = kafka.opt_bool("create_topics", problems) {
                self.create_topics = v;
            }
            if let Some(props) = kafka.table("properties", false, problems) {
                for key in props.keys() {
                    if let Some(v) = props.string(&key, problems) {
                        self.kafka_properties.insert(key, v);
                    }
                }
                props.finish(problems);
            }
            kafka.finish(problems);
        }
        if let Some(processing) = top.table("processing", false, problems) {
            if let Some(v) = processing.opt_string("guarantee", problems) {
                match v.as_str() {
                    "exactly-once" => self.guarantee = Guarantee::ExactlyOnce,
                    "at-least-once" => self.guarantee = Guarantee::AtLeastOnce,
                    _ => problems.field(
                        "processing.guarantee",
                        format!("must be \"exactly-once\" or \"at-least-once\", found `{v}`"),
                    ),
                }
            }
            if let Some(d) = processing.opt_duration("commit_interval", problems) {
                if d.is_zero() || d > std::time::Duration::from_secs(60) {
                    problems.field("processing.commit_interval", "must be between 1ms and 60s");
                } else {
                    self.commit_interval = d;
                }
            }
            processing.finish(problems);
        }
        if let Some(log) = top.table("log", false, problems) {
            if let Some(v) = log.opt_string("format", problems) {
                match parse_format(&v) {
                    Some(f) => self.log_format = f,
                    None => problems.field(
                        "log.format",
                        format!("must be \"text\" or \"json\", found `{v}`"),
                    ),
                }
            }
            if let Some(v) = log.opt_string("level", problems) {
                self.log_level = v;
            }
            log.finish(problems);
        }
        top.finish(problems);
    }

    fn overlay_env(&mut self, get: impl Fn(&str) -> Option<String>, problems: &mut Problems) {
        if let Some(v) = get("WATERLINE_BOOTSTRAP_SERVERS").or_else(|| get("KAFKA_BOOTSTRAP")) {
            self.bootstrap_servers = v;
        }
        if let Some(v) = get("WATERLINE_APP_ID") {
            self.app_id = v;
        }
        if let Some(v) = get("WATERLINE_LOG_FORMAT") {
            match parse_format(&v) {
                Some(f) => self.log_format = f,
                None => problems.field(
                    "WATERLINE_LOG_FORMAT",
                    format!("must be \"text\" or \"json\", found `{v}`"),
                ),
            }
        }
        if let Some(v) = get("WATERLINE_LOG_LEVEL") {
            self.log_level = v;
        }
    }
}

fn parse_format(s: &str) -> Option<LogFormat> {
    match s {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_file_then_environment() {
        let mut c = Config::default();
        let mut problems = Problems::default();
        c.overlay_toml(
            "app_id = \"a\"\n[kafka]\nbootstrap_servers = \"k:1\"\n[kafka.properties]\n\"client.rack\" = \"r1\"\n",
            &mut problems,
        );
        assert!(problems.is_empty());
        assert_eq!(c.bootstrap_servers, "k:1");
        c.overlay_env(
            |k| (k == "KAFKA_BOOTSTRAP").then(|| "env:2".to_string()),
            &mut problems,
        );
        assert_eq!(c.bootstrap_servers, "env:2");
        assert_eq!(c.app_id, "a");
        assert_eq!(
            c.kafka_properties.get("client.rack").map(String::as_str),
            Some("r1")
        );
    }

    #[test]
    fn names_every_bad_field() {
        let mut c = Config::default();
        let mut problems = Problems::default();
        c.overlay_toml(
            "app_id = 1\n[kafka]\nreplication_factor = 0\nbootstrap = \"x\"\n[log]\nformat = \"xml\"\n",
            &mut problems,
        );
        let all = problems.into_messages().join("\n");
        for needle in [
            "`app_id`",
            "`kafka.replication_factor`",
            "`kafka.bootstrap`: is not a known setting",
            "log.format",
        ] {
            assert!(all.contains(needle), "missing {needle} in {all}");
        }
    }
}
