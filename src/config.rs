//! Environment settings: one typed, validated [`Config`] built from layers, each
//! overriding the one before, and every problem in every layer reported at once.
//!
//! ```text
//!  built-in defaults            Config::default(), spelled out in config/default.toml
//!    ▼
//!  files, in order              --env NAME: <config-dir>/default.toml, <config-dir>/NAME.toml
//!    ▼                          then each --config FILE (repeatable; later files win)
//!  environment variables        WATERLINE__SECTION__FIELD (and the older names below)
//!    ▼
//!  flags                        --set section.field=value, then --bootstrap, --app-id, ...
//!    ▼
//!  Config  +  where each value came from (`waterline config --print`)
//! ```
//!
//! The settings, with their defaults:
//!
//! ```toml
//! app_id = "waterline"            # names the consumer group, transactional ids, progress topic
//! [kafka]
//! bootstrap_servers = "127.0.0.1:19092"
//! replication_factor = 1          # for topics waterline creates
//! create_topics = true
//! [kafka.properties]              # passed to every librdkafka client as is
//! "client.rack" = "eu-west-1a"
//! [kafka.secret_files]            # librdkafka properties read from files at start-up
//! "sasl.password" = "/run/secrets/kafka-password"
//! [processing]
//! guarantee = "exactly-once"      # or "at-least-once"
//! commit_interval = "100ms"       # how often each worker commits outputs and progress
//! [log]
//! format = "text"                 # or "json"
//! level = "info"                  # a tracing filter, e.g. "waterline=debug,info"
//! [http]
//! listen = "127.0.0.1:9464"       # metrics and health; "off" (or "") disables it
//! ready_commit_intervals = 100    # ready while a commit happened within this many intervals
//! ```
//!
//! # Environment variables
//!
//! `WATERLINE__` followed by the setting's path in upper case, levels separated by a double
//! underscore: `WATERLINE__APP_ID`, `WATERLINE__KAFKA__BOOTSTRAP_SERVERS`,
//! `WATERLINE__PROCESSING__GUARANTEE`, `WATERLINE__HTTP__LISTEN`. Names are
//! case-insensitive. After `WATERLINE__KAFKA__PROPERTIES__` (or
//! `WATERLINE__KAFKA__SECRET_FILES__`) comes a librdkafka property name, written with `_`
//! for `.` and `__` for `_`: `…__SASL_PASSWORD` is `sasl.password`, `…__LOG__LEVEL` is
//! `log_level`. An unknown `WATERLINE__` name is an error, as an unknown key in a file is.
//!
//! The older names still work, below their `WATERLINE__` equivalents:
//! `WATERLINE_BOOTSTRAP_SERVERS` and `KAFKA_BOOTSTRAP` (lowest; the tests and CI use it),
//! `WATERLINE_APP_ID`, `WATERLINE_LOG_FORMAT`, `WATERLINE_LOG_LEVEL`. A single-underscore
//! name that would be a setting with two (`WATERLINE_HTTP__LISTEN`) is an error rather
//! than ignored.
//!
//! # Kafka properties
//!
//! `[kafka.properties]` (and `WATERLINE__KAFKA__PROPERTIES__…`, `--set
//! kafka.properties.…`) reach every librdkafka client as they are; unquoted dotted keys
//! are property names too, and numbers and booleans are written as text. librdkafka checks
//! each name and value at start-up, so a typo fails then rather than at the first client.
//! A few properties waterline sets itself, because its guarantees rest on them, are
//! refused with the setting to use instead: `bootstrap.servers`, `group.id`,
//! `transactional.id`, `isolation.level`, `enable.auto.commit`, `enable.partition.eof`.
//!
//! # Secrets
//!
//! Properties whose values are secrets ([`is_secret`]: names ending in `.password`,
//! `.secret` or `.passphrase`, private keys given inline, `sasl.oauthbearer.config`) are
//! refused in files and flags, which end up in repositories, images and process lists.
//! They come from the environment (`WATERLINE__KAFKA__PROPERTIES__SASL_PASSWORD`) or from
//! a file named in `[kafka.secret_files]`, read at start-up (a trailing newline is
//! dropped). They are held as [`Secret`]s, which print as `<redacted>` in `Debug`,
//! `Display` and `config --print`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;

use crate::fields::{did_you_mean, type_name};

/// A config that failed to load: every problem, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{source_name} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
pub struct ConfigError {
    /// What was read.
    pub source_name: String,
    /// One message per bad field, each naming the layer it came from and the field.
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

/// The names of the guarantees in files, the environment and flags.
const GUARANTEES: [(&str, Guarantee); 2] = [
    ("exactly-once", Guarantee::ExactlyOnce),
    ("at-least-once", Guarantee::AtLeastOnce),
];

/// The names of the log formats.
const LOG_FORMATS: [(&str, LogFormat); 2] = [("text", LogFormat::Text), ("json", LogFormat::Json)];

/// Validated environment settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Application id: names the consumer group.
    pub app_id: String,
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Replication factor of topics waterline creates.
    pub replication_factor: i32,
    /// Whether to create missing output topics at start-up.
    pub create_topics: bool,
    /// Extra librdkafka properties for every client; secrets among them are [`Secret`]s.
    pub kafka_properties: KafkaProperties,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Delivery guarantee.
    pub guarantee: Guarantee,
    /// How often each worker commits its outputs and progress.
    pub commit_interval: Duration,
    /// Where the HTTP server (metrics, health) listens; `None`: no server. Port 0 lets the
    /// system choose.
    pub http_listen: Option<SocketAddr>,
    /// The run is ready while a commit happened within this many commit intervals (≥ 1).
    pub ready_commit_intervals: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            app_id: "waterline".into(),
            bootstrap_servers: "127.0.0.1:19092".into(),
            replication_factor: 1,
            create_topics: true,
            kafka_properties: KafkaProperties::default(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            guarantee: Guarantee::ExactlyOnce,
            commit_interval: Duration::from_millis(100),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            ready_commit_intervals: 100,
        }
    }
}

impl Config {
    /// Defaults, overlaid with `path` if given, then with the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_sources(&Sources {
            files: path.map(Path::to_path_buf).into_iter().collect(),
            env: Sources::process_env(),
            ..Sources::default()
        })
    }

    /// Every layer of `sources`, validated.
    pub fn from_sources(sources: &Sources) -> Result<Config, ConfigError> {
        Layered::load(sources).map(|l| l.config)
    }

    /// Sets one setting from a value of any layer.
    fn set(&mut self, setting: Setting, raw: Raw<'_>) -> Result<(), String> {
        match setting {
            Setting::AppId => self.app_id = app_id(raw)?,
            Setting::BootstrapServers => self.bootstrap_servers = bootstrap_servers(raw)?,
            Setting::ReplicationFactor => self.replication_factor = integer(raw, 1..=32)? as i32,
            Setting::CreateTopics => self.create_topics = boolean(raw)?,
            Setting::Guarantee => self.guarantee = one_of(raw, &GUARANTEES)?,
            Setting::CommitInterval => {
                let d = duration(raw)?;
                if d < Duration::from_millis(1) || d > Duration::from_secs(60) {
                    return Err(format!(
                        "must be between 1ms and 60s, found {}",
                        humantime::format_duration(d)
                    ));
                }
                self.commit_interval = d;
            }
            Setting::LogFormat => self.log_format = one_of(raw, &LOG_FORMATS)?,
            Setting::LogLevel => {
                let level = string(raw)?;
                if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
                    return Err(format!(
                        "`{level}` is not a log filter ({e}); write e.g. \"info\" or \"waterline=debug,info\""
                    ));
                }
                self.log_level = level;
            }
            Setting::HttpListen => self.http_listen = listen(raw)?,
            Setting::ReadyCommitIntervals => {
                self.ready_commit_intervals = integer(raw, 1..=i64::from(u32::MAX))? as u32
            }
        }
        Ok(())
    }
}

// --- secrets and Kafka properties -------------------------------------------------------

/// A secret value: its `Debug` and `Display` print `<redacted>`; [`Secret::expose`] is the
/// one way to the value, for handing it to librdkafka.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What a secret prints as.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The value of one librdkafka property.
#[derive(Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// An ordinary value, printed as it is.
    Plain(String),
    /// A secret, printed as `<redacted>`.
    Secret(Secret),
}

impl PropertyValue {
    /// The value, for librdkafka.
    pub fn expose(&self) -> &str {
        match self {
            PropertyValue::Plain(v) => v,
            PropertyValue::Secret(s) => s.expose(),
        }
    }
}

impl fmt::Debug for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::Plain(v) => fmt::Debug::fmt(v, f),
            PropertyValue::Secret(s) => fmt::Debug::fmt(s, f),
        }
    }
}

/// librdkafka properties passed to every client, by name. Iterating `&KafkaProperties`
/// yields `(name, value)` pairs ready for `ClientConfig::set`, secrets included; `Debug`
/// redacts the secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaProperties(BTreeMap<String, PropertyValue>);

impl KafkaProperties {
    /// Sets an ordinary property.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0
            .insert(name.into(), PropertyValue::Plain(value.into()));
    }

    /// Sets a secret property.
    pub fn insert_secret(&mut self, name: impl Into<String>, value: Secret) {
        self.0.insert(name.into(), PropertyValue::Secret(value));
    }

    /// The value of `name`, secret or not.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(PropertyValue::expose)
    }

    /// The value of `name` as held, so a caller can tell a secret.
    pub fn value(&self, name: &str) -> Option<&PropertyValue> {
        self.0.get(name)
    }

    /// Every property, in name order.
    pub fn iter(&self) -> KafkaPropertiesIter<'_> {
        KafkaPropertiesIter(self.0.iter())
    }

    /// How many properties are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `(name, value)` pairs of [`KafkaProperties`], in name order.
pub struct KafkaPropertiesIter<'a>(std::collections::btree_map::Iter<'a, String, PropertyValue>);

impl<'a> Iterator for KafkaPropertiesIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k.as_str(), v.expose()))
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a str, &'a str);
    type IntoIter = KafkaPropertiesIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Whether the librdkafka property `name` holds a secret: names ending in `.password`,
/// `.secret` or `.passphrase` (`sasl.password`, `ssl.key.password`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret`,
/// `sasl.oauthbearer.assertion.private.key.passphrase`), the private keys given inline
/// (`ssl.key.pem`, `sasl.oauthbearer.assertion.private.key.pem`) and
/// `sasl.oauthbearer.config`, which librdkafka also treats as sensitive. Paths to key
/// files and `sasl.username` are not secrets.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with(".password")
        || name.ends_with(".secret")
        || name.ends_with(".passphrase")
        || matches!(
            name.as_str(),
            "ssl.key.pem"
                | "sasl.oauthbearer.assertion.private.key.pem"
                | "sasl.oauthbearer.config"
        )
}

/// Properties waterline sets itself because its guarantees depend on them.
fn reserved(name: &str) -> Option<&'static str> {
    match name {
        "bootstrap.servers" | "metadata.broker.list" => {
            Some("is set from `kafka.bootstrap_servers`: set that instead")
        }
        "group.id" => Some("is set from `app_id`: set that instead"),
        "transactional.id" => {
            Some("is set by waterline, one per worker from `app_id`: exactly-once depends on it")
        }
        "isolation.level" => {
            Some("is set by waterline: it reads only committed records (read_committed)")
        }
        "enable.auto.commit" | "enable.partition.eof" => {
            Some("is set by waterline, which chooses the positions it reads itself")
        }
        _ => None,
    }
}

/// Asks librdkafka whether it knows the property and accepts the value, without showing a
/// secret's value in the answer.
fn check_property(name: &str, value: &str, secret: bool) -> Result<(), String> {
    if let Some(why) = reserved(name) {
        return Err(why.into());
    }
    let mut c = rdkafka::ClientConfig::new();
    c.set(name, value);
    match c.create_native_config() {
        Ok(_) => Ok(()),
        Err(KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..)) => {
            Err("is not a librdkafka property (see librdkafka's CONFIGURATION.md)".into())
        }
        Err(KafkaError::Nul(_)) => Err("contains a NUL character".into()),
        // librdkafka's reason may quote the value: for a secret, only a reason that does not.
        Err(KafkaError::ClientConfig(_, reason, ..)) if !secret || !reason.contains(value) => {
            Err(format!("librdkafka refuses it: {reason}"))
        }
        Err(e) if !secret => Err(format!("librdkafka refuses it: {e}")),
        Err(_) => Err("librdkafka refuses the value (not shown: it is a secret)".into()),
    }
}

// --- sources and layers -----------------------------------------------------------------

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A config file, as named.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag, as written (`--app-id`, `--set processing.guarantee`).
    Flag(String),
    /// A secret read from `path`, named by a `kafka.secret_files` entry of another layer.
    SecretFile {
        /// The file read.
        path: PathBuf,
        /// Where the entry naming it came from.
        named_by: Box<Origin>,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::SecretFile { path, named_by } => {
                write!(f, "file {} (named by {named_by})", path.display())
            }
        }
    }
}

/// `--env NAME`: `<dir>/default.toml`, then `<dir>/NAME.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The environment's name (`dev`, `prod`, ...).
    pub name: String,
    /// The directory of its files (`config`).
    pub dir: PathBuf,
}

/// One flag's contribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flag {
    /// A flag for one setting: the flag as written, the setting's key, its value.
    Named {
        /// E.g. `--app-id`.
        flag: &'static str,
        /// E.g. `app_id`.
        key: &'static str,
        /// The value given, not yet validated.
        value: String,
    },
    /// `--set KEY=VALUE`, as written.
    Set(String),
}

/// Everything a [`Config`] is built from, in layer order.
#[derive(Clone, Default)]
pub struct Sources {
    /// `--env`: its two files come before [`Sources::files`].
    pub profile: Option<Profile>,
    /// Config files, in order: later ones override earlier ones.
    pub files: Vec<PathBuf>,
    /// Environment variables (name, value; `None` when the value is not UTF-8).
    pub env: Vec<(String, Option<String>)>,
    /// Flags, in the order applied.
    pub flags: Vec<Flag>,
}

/// `Debug` names the environment variables but never shows their values (secrets).
impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("profile", &self.profile)
            .field("files", &self.files)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("flags", &self.flags)
            .finish()
    }
}

impl Sources {
    /// The variables of this process that configuration reads: `WATERLINE*` (any case)
    /// and `KAFKA_BOOTSTRAP`. Names that are not UTF-8 cannot be settings and are skipped.
    pub fn process_env() -> Vec<(String, Option<String>)> {
        std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                let ours = strip_prefix_ignore_case(&name, "WATERLINE").is_some()
                    || name == "KAFKA_BOOTSTRAP";
                ours.then(|| (name, value.into_string().ok()))
            })
            .collect()
    }
}

/// A validated config and the layer each of its values came from.
#[derive(Clone, Debug)]
pub struct Layered {
    /// The effective settings.
    pub config: Config,
    /// Setting key (`kafka.bootstrap_servers`, `kafka.properties.<name>`) → where its value
    /// came from; keys left at their default are absent.
    origins: BTreeMap<String, Origin>,
}

impl Layered {
    /// Reads every layer of `sources`, collecting every problem of every layer.
    pub fn load(sources: &Sources) -> Result<Layered, ConfigError> {
        let mut loader = Loader {
            config: Config::default(),
            origins: BTreeMap::new(),
            problems: Vec::new(),
        };
        let mut files = match &sources.profile {
            Some(profile) => loader.profile_files(profile),
            None => Vec::new(),
        };
        files.extend(sources.files.iter().cloned());
        for file in &files {
            loader.file(file);
        }
        loader.env(&sources.env);
        loader.flags(&sources.flags);
        if loader.problems.is_empty() {
            Ok(Layered {
                config: loader.config,
                origins: loader.origins,
            })
        } else {
            Err(ConfigError {
                source_name: "the configuration".into(),
                problems: loader.problems,
            })
        }
    }

    /// Where the value of `key` came from (`app_id`, `processing.guarantee`,
    /// `kafka.properties.sasl.password`).
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// The effective config as TOML, each value followed by a comment naming its layer;
    /// secrets print as `"<redacted>"`.
    pub fn to_toml(&self) -> String {
        // Exhaustive, so that a new setting cannot be left out of the print.
        let Config {
            app_id,
            bootstrap_servers,
            replication_factor,
            create_topics,
            kafka_properties,
            log_format,
            log_level,
            guarantee,
            commit_interval,
            http_listen,
            ready_commit_intervals,
        } = &self.config;
        let scalars = [
            (Setting::AppId, quote(app_id)),
            (Setting::BootstrapServers, quote(bootstrap_servers)),
            (Setting::ReplicationFactor, replication_factor.to_string()),
            (Setting::CreateTopics, create_topics.to_string()),
            (Setting::Guarantee, name_of(&GUARANTEES, *guarantee)),
            (
                Setting::CommitInterval,
                quote(&humantime::format_duration(*commit_interval).to_string()),
            ),
            (Setting::LogFormat, name_of(&LOG_FORMATS, *log_format)),
            (Setting::LogLevel, quote(log_level)),
            (
                Setting::HttpListen,
                quote(&http_listen.map_or("off".to_string(), |a| a.to_string())),
            ),
            (
                Setting::ReadyCommitIntervals,
                ready_commit_intervals.to_string(),
            ),
        ];
        let mut out = String::from(
            "# waterline's effective configuration; each comment names the layer a value came from.\n",
        );
        let line = |out: &mut String, key: &str, field: &str, value: &str| {
            let setting = format!("{field} = {value}");
            out.push_str(&format!("{setting:<44} # {}\n", self.origin(key)));
        };
        let mut table = "";
        for (setting, value) in &scalars {
            let key = setting.key();
            let (section, field) = key.rsplit_once('.').unwrap_or(("", key));
            if section != table {
                table = section;
                out.push_str(&format!("\n[{section}]\n"));
            }
            line(&mut out, key, field, value);
        }
        // Last: a long list reads better at the end, and TOML allows the sub-table here.
        out.push_str(&format!("\n[{PROPERTIES}]\n"));
        for (name, value) in &kafka_properties.0 {
            let shown = match value {
                PropertyValue::Plain(v) => quote(v),
                PropertyValue::Secret(_) => quote(REDACTED),
            };
            line(
                &mut out,
                &format!("{PROPERTIES}.{name}"),
                &quote(name),
                &shown,
            );
        }
        out
    }
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The settings with one value each; `kafka.properties` and `kafka.secret_files` are maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setting {
    AppId,
    BootstrapServers,
    ReplicationFactor,
    CreateTopics,
    Guarantee,
    CommitInterval,
    LogFormat,
    LogLevel,
    HttpListen,
    ReadyCommitIntervals,
}

impl Setting {
    const ALL: [Setting; 10] = [
        Setting::AppId,
        Setting::BootstrapServers,
        Setting::ReplicationFactor,
        Setting::CreateTopics,
        Setting::Guarantee,
        Setting::CommitInterval,
        Setting::LogFormat,
        Setting::LogLevel,
        Setting::HttpListen,
        Setting::ReadyCommitIntervals,
    ];

    /// The setting's path in files, `--set` and (upper-cased, `.` → `__`) the environment.
    fn key(self) -> &'static str {
        match self {
            Setting::AppId => "app_id",
            Setting::BootstrapServers => "kafka.bootstrap_servers",
            Setting::ReplicationFactor => "kafka.replication_factor",
            Setting::CreateTopics => "kafka.create_topics",
            Setting::Guarantee => "processing.guarantee",
            Setting::CommitInterval => "processing.commit_interval",
            Setting::LogFormat => "log.format",
            Setting::LogLevel => "log.level",
            Setting::HttpListen => "http.listen",
            Setting::ReadyCommitIntervals => "http.ready_commit_intervals",
        }
    }

    fn find(key: &str) -> Option<Setting> {
        Setting::ALL.into_iter().find(|s| s.key() == key)
    }
}

/// The tables that group settings.
const SECTIONS: [&str; 4] = ["kafka", "processing", "log", "http"];
/// The table of librdkafka properties.
const PROPERTIES: &str = "kafka.properties";
/// The table of librdkafka properties read from files.
const SECRET_FILES: &str = "kafka.secret_files";

/// Environment variables read before the `WATERLINE__` ones, so those win: the names
/// used before the layers had a double underscore.
const ENV_ALIASES: [(&str, Setting); 5] = [
    ("KAFKA_BOOTSTRAP", Setting::BootstrapServers),
    ("WATERLINE_BOOTSTRAP_SERVERS", Setting::BootstrapServers),
    ("WATERLINE_APP_ID", Setting::AppId),
    ("WATERLINE_LOG_FORMAT", Setting::LogFormat),
    ("WATERLINE_LOG_LEVEL", Setting::LogLevel),
];

const ENV_PREFIX: &str = "WATERLINE__";

/// The environment variable for a setting key.
fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

/// The environment variable for a librdkafka property.
fn property_env_name(property: &str) -> String {
    format!(
        "{ENV_PREFIX}KAFKA__PROPERTIES__{}",
        property
            .to_ascii_uppercase()
            .replace('_', "__")
            .replace('.', "_")
    )
}

/// A librdkafka property name from the tail of an environment variable name: `_` is `.`,
/// `__` is `_`.
fn property_from_env(tail: &str) -> String {
    tail.to_ascii_lowercase()
        .split("__")
        .map(|part| part.replace('_', "."))
        .collect::<Vec<_>>()
        .join("_")
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// A value from one layer, not yet validated: TOML from files, text from the environment
/// and flags.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Toml(&'a toml::Value),
    Text(&'a str),
}

struct Loader {
    config: Config,
    origins: BTreeMap<String, Origin>,
    problems: Vec<String>,
}

impl Loader {
    fn problem(&mut self, origin: &Origin, key: Option<&str>, message: impl fmt::Display) {
        self.problems.push(match key {
            Some(key) => format!("{origin}: `{key}`: {message}"),
            None => format!("{origin}: {message}"),
        });
    }

    /// The files `--env` stands for.
    fn profile_files(&mut self, profile: &Profile) -> Vec<PathBuf> {
        let origin = Origin::Flag("--env".into());
        let Profile { name, dir } = profile;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            self.problem(
                &origin,
                None,
                format!("`{name}` is not an environment name (letters, digits, - and _)"),
            );
            return Vec::new();
        }
        if !dir.is_dir() {
            self.problem(
                &origin,
                None,
                format!(
                    "{} is not a directory (--config-dir names the directory of the environments' files)",
                    dir.display()
                ),
            );
            return Vec::new();
        }
        let mut files = vec![dir.join("default.toml")];
        if name != "default" {
            let file = dir.join(format!("{name}.toml"));
            if file.is_file() {
                files.push(file);
            } else {
                let known = environments(dir);
                let hint = did_you_mean(name, known.iter().map(String::as_str))
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                self.problem(
                    &origin,
                    None,
                    format!(
                        "no environment `{name}`: {} does not exist (environments in {}: {}){hint}",
                        file.display(),
                        dir.display(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
        files
    }

    fn file(&mut self, path: &Path) {
        let origin = Origin::File(path.to_path_buf());
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                self.problem(&origin, None, format!("cannot read: {e}"));
                return;
            }
        };
        match text.parse::<toml::Table>() {
            Ok(table) => self.table("", &table, &origin),
            Err(e) => {
                let at = e
                    .span()
                    .map(|span| {
                        let before = text.get(..span.start).unwrap_or("");
                        let line = before.matches('\n').count() + 1;
                        let column =
                            before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                        format!(" at line {line}, column {column}")
                    })
                    .unwrap_or_default();
                self.problem(
                    &origin,
                    None,
                    format!("not valid TOML{at}: {}", e.message().trim()),
                );
            }
        }
    }

    fn table(&mut self, prefix: &str, table: &toml::Table, origin: &Origin) {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let map = key == PROPERTIES || key == SECRET_FILES;
            if map || SECTIONS.contains(&key.as_str()) {
                let toml::Value::Table(inner) = value else {
                    self.problem(
                        origin,
                        Some(&key),
                        format!("expected a table, found {}", type_name(value)),
                    );
                    continue;
                };
                if !map {
                    self.table(&key, inner, origin);
                    continue;
                }
                let mut entries = Vec::new();
                flatten("", inner, &mut entries);
                for (name, value) in entries {
                    if key == PROPERTIES {
                        self.property(&name, Raw::Toml(value), origin);
                    } else {
                        self.secret_file(&name, Raw::Toml(value), origin);
                    }
                }
            } else {
                self.setting(&key, Raw::Toml(value), origin);
            }
        }
    }

    /// A dotted key from `--set`.
    fn dotted(&mut self, key: &str, value: &str, origin: &Origin) {
        if let Some(name) = key.strip_prefix("kafka.properties.") {
            self.property(name, Raw::Text(value), origin);
        } else if let Some(name) = key.strip_prefix("kafka.secret_files.") {
            self.secret_file(name, Raw::Text(value), origin);
        } else {
            self.setting(key, Raw::Text(value), origin);
        }
    }

    fn setting(&mut self, key: &str, raw: Raw<'_>, origin: &Origin) {
        let Some(setting) = Setting::find(key) else {
            self.unknown(key, origin);
            return;
        };
        match self.config.set(setting, raw) {
            Ok(()) => {
                self.origins
                    .insert(setting.key().to_string(), origin.clone());
            }
            Err(message) => self.problem(origin, Some(key), message),
        }
    }

    fn unknown(&mut self, key: &str, origin: &Origin) {
        if SECTIONS.contains(&key) || key == PROPERTIES || key == SECRET_FILES {
            self.problem(origin, Some(key), "is a table of settings, not a setting");
            return;
        }
        let hint = suggest(key)
            .map(|k| match origin {
                Origin::Env(_) => format!("; did you mean {}?", env_name(k)),
                _ => format!("; did you mean `{k}`?"),
            })
            .unwrap_or_default();
        self.problem(origin, Some(key), format!("is not a known setting{hint}"));
    }

    fn property(&mut self, name: &str, raw: Raw<'_>, origin: &Origin) {
        let key = format!("{PROPERTIES}.{}", quote(name));
        if name.is_empty() {
            self.problem(origin, Some(&key), "names no property");
            return;
        }
        let value = match property_text(raw) {
            Ok(value) => value,
            Err(message) => {
                self.problem(origin, Some(&key), message);
                return;
            }
        };
        let secret = is_secret(name);
        if secret && !matches!(origin, Origin::Env(_)) {
            let why = match origin {
                Origin::Flag(_) => "flags show in process lists",
                _ => "files end up in repositories and images",
            };
            self.problem(
                origin,
                Some(&key),
                format!(
                    "is a secret and {why}: set it with the environment variable {}, or name a file holding it in [{SECRET_FILES}]",
                    property_env_name(name)
                ),
            );
            return;
        }
        if let Err(message) = check_property(name, &value, secret) {
            self.problem(origin, Some(&key), message);
            return;
        }
        let value = if secret {
            PropertyValue::Secret(Secret::new(value))
        } else {
            PropertyValue::Plain(value)
        };
        self.config
            .kafka_properties
            .0
            .insert(name.to_string(), value);
        self.origins
            .insert(format!("{PROPERTIES}.{name}"), origin.clone());
    }

    fn secret_file(&mut self, name: &str, raw: Raw<'_>, origin: &Origin) {
        let key = format!("{SECRET_FILES}.{}", quote(name));
        if name.is_empty() {
            self.problem(origin, Some(&key), "names no property");
            return;
        }
        let path = match string(raw) {
            Ok(path) => PathBuf::from(path),
            Err(message) => {
                self.problem(origin, Some(&key), message);
                return;
            }
        };
        let value = match std::fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text.trim_end_matches(['\r', '\n']).to_string(),
                Err(_) => {
                    self.problem(
                        origin,
                        Some(&key),
                        format!("{} is not UTF-8 text", path.display()),
                    );
                    return;
                }
            },
            Err(e) => {
                self.problem(
                    origin,
                    Some(&key),
                    format!("cannot read {}: {e}", path.display()),
                );
                return;
            }
        };
        if value.is_empty() {
            self.problem(origin, Some(&key), format!("{} is empty", path.display()));
            return;
        }
        if let Err(message) = check_property(name, &value, true) {
            self.problem(origin, Some(&key), message);
            return;
        }
        self.config
            .kafka_properties
            .insert_secret(name, Secret::new(value));
        self.origins.insert(
            format!("{PROPERTIES}.{name}"),
            Origin::SecretFile {
                path,
                named_by: Box::new(origin.clone()),
            },
        );
    }

    fn env(&mut self, vars: &[(String, Option<String>)]) {
        for (alias, setting) in ENV_ALIASES {
            if let Some((name, value)) = vars.iter().find(|(name, _)| name == alias) {
                let origin = Origin::Env(name.clone());
                match value {
                    Some(value) => self.setting(setting.key(), Raw::Text(value), &origin),
                    None => self.problem(&origin, Some(setting.key()), "is not valid UTF-8"),
                }
            }
        }
        let mut ours: Vec<(&str, &Option<String>)> = vars
            .iter()
            .filter_map(|(name, value)| {
                strip_prefix_ignore_case(name, ENV_PREFIX).map(|_| (name.as_str(), value))
            })
            .collect();
        ours.sort();
        for (name, value) in ours {
            let origin = Origin::Env(name.to_string());
            let tail = strip_prefix_ignore_case(name, ENV_PREFIX)
                .expect("filtered on the prefix above")
                .to_ascii_lowercase();
            let Some(value) = value else {
                self.problem(&origin, None, "is not valid UTF-8");
                continue;
            };
            if let Some(property) = tail.strip_prefix("kafka__properties__") {
                self.property(&property_from_env(property), Raw::Text(value), &origin);
            } else if let Some(property) = tail.strip_prefix("kafka__secret_files__") {
                self.secret_file(&property_from_env(property), Raw::Text(value), &origin);
            } else {
                self.setting(&tail.replace("__", "."), Raw::Text(value), &origin);
            }
        }
        // `WATERLINE_PROCESSING__GUARANTEE`: one underscore short of a setting.
        for (name, _) in vars {
            let Some(tail) = strip_prefix_ignore_case(name, "WATERLINE_") else {
                continue;
            };
            if tail.starts_with('_') || ENV_ALIASES.iter().any(|(alias, _)| alias == name) {
                continue;
            }
            let tail = tail.to_ascii_lowercase();
            let looks_like_ours = tail.starts_with("kafka__properties__")
                || tail.starts_with("kafka__secret_files__")
                || Setting::find(&tail.replace("__", ".")).is_some();
            if tail.contains("__") && looks_like_ours {
                self.problem(
                    &Origin::Env(name.clone()),
                    None,
                    format!(
                        "is not read: settings take two underscores after WATERLINE, as in {ENV_PREFIX}{}",
                        name.get("WATERLINE_".len()..).unwrap_or("")
                    ),
                );
            }
        }
    }

    fn flags(&mut self, flags: &[Flag]) {
        for flag in flags {
            match flag {
                Flag::Set(text) => {
                    let Some((key, value)) = text.split_once('=') else {
                        self.problem(
                            &Origin::Flag("--set".into()),
                            None,
                            format!(
                                "`{text}` is not KEY=VALUE (e.g. --set processing.guarantee=at-least-once)"
                            ),
                        );
                        continue;
                    };
                    let key = key.trim();
                    self.dotted(key, value, &Origin::Flag(format!("--set {key}")));
                }
                Flag::Named { flag, key, value } => {
                    self.setting(key, Raw::Text(value), &Origin::Flag(flag.to_string()))
                }
            }
        }
    }
}

/// The setting most likely meant by an unknown `key`: the same name in another section
/// (`guarantee` → `processing.guarantee`), one it begins (`kafka.bootstrap`), else the
/// nearest spelling.
fn suggest(key: &str) -> Option<&'static str> {
    let last = key.rsplit('.').next().unwrap_or(key);
    let keys = || Setting::ALL.into_iter().map(Setting::key);
    keys()
        .find(|k| k.rsplit('.').next() == Some(last))
        .or_else(|| keys().find(|k| k.starts_with(key)))
        .or_else(|| {
            did_you_mean(
                key,
                Setting::ALL
                    .into_iter()
                    .map(Setting::key)
                    .chain(SECTIONS)
                    .chain([PROPERTIES, SECRET_FILES]),
            )
        })
}

/// The environments in `dir`: its `*.toml` files but `default.toml`.
fn environments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "toml" {
                return None;
            }
            let stem = path.file_stem()?.to_str()?.to_string();
            (stem != "default").then_some(stem)
        })
        .collect();
    names.sort();
    names
}

/// `a = { b = "x" }` → `("a.b", "x")`: unquoted dotted keys in `[kafka.properties]` are
/// property names too.
fn flatten<'t>(prefix: &str, table: &'t toml::Table, out: &mut Vec<(String, &'t toml::Value)>) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&name, inner, out),
            value => out.push((name, value)),
        }
    }
}

// --- reading values ---------------------------------------------------------------------

/// A property value: librdkafka takes text, so numbers and booleans are written as text.
fn property_text(raw: Raw<'_>) -> Result<String, String> {
    let text = match raw {
        Raw::Toml(toml::Value::String(s)) => s.clone(),
        Raw::Toml(
            v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
        ) => v.to_string(),
        Raw::Toml(other) => {
            return Err(format!(
                "expected a string, number or boolean, found {}",
                type_name(other)
            ));
        }
        Raw::Text(s) => s.to_string(),
    };
    if text.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text)
    }
}

fn string(raw: Raw<'_>) -> Result<String, String> {
    let s = match raw {
        Raw::Toml(toml::Value::String(s)) => s.as_str(),
        Raw::Toml(other) => return Err(format!("expected a string, found {}", type_name(other))),
        Raw::Text(s) => s,
    };
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

fn integer(raw: Raw<'_>, range: std::ops::RangeInclusive<i64>) -> Result<i64, String> {
    let i = match raw {
        Raw::Toml(toml::Value::Integer(i)) => *i,
        Raw::Toml(other) => {
            return Err(format!("expected an integer, found {}", type_name(other)));
        }
        Raw::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("expected an integer, found `{s}`"))?,
    };
    if range.contains(&i) {
        Ok(i)
    } else {
        Err(format!(
            "must be between {} and {}, found {i}",
            range.start(),
            range.end()
        ))
    }
}

fn boolean(raw: Raw<'_>) -> Result<bool, String> {
    match raw {
        Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
        Raw::Toml(other) => Err(format!(
            "expected true or false, found {}",
            type_name(other)
        )),
        Raw::Text(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Raw::Text(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Raw::Text(s) => Err(format!("expected true or false, found `{s}`")),
    }
}

/// A duration: `"5s"`, `"250ms"`, `"1m"`, or integer milliseconds.
fn duration(raw: Raw<'_>) -> Result<Duration, String> {
    let text = match raw {
        Raw::Toml(toml::Value::Integer(ms)) if *ms >= 0 => {
            return Ok(Duration::from_millis(*ms as u64));
        }
        Raw::Toml(toml::Value::String(s)) => s.as_str(),
        Raw::Toml(other) => {
            return Err(format!(
                "expected a duration such as \"5s\" or integer milliseconds, found {}",
                type_name(other)
            ));
        }
        Raw::Text(s) => match s.trim().parse::<u64>() {
            Ok(ms) => return Ok(Duration::from_millis(ms)),
            Err(_) => s,
        },
    };
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"1m\"")
    })
}

fn one_of<T: Copy>(raw: Raw<'_>, choices: &[(&str, T)]) -> Result<T, String> {
    let s = string(raw)?;
    match choices.iter().find(|(name, _)| *name == s) {
        Some((_, value)) => Ok(*value),
        None => Err(format!(
            "must be {}, found `{s}`",
            choices
                .iter()
                .map(|(name, _)| format!("\"{name}\""))
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    }
}

/// The name of `value` among `choices`, as a TOML string.
fn name_of<T: PartialEq>(choices: &[(&str, T)], value: T) -> String {
    choices
        .iter()
        .find(|(_, v)| *v == value)
        .map(|(name, _)| quote(name))
        .expect("every value has a name in its list of choices")
}

fn app_id(raw: Raw<'_>) -> Result<String, String> {
    let id = string(raw)?;
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.len() > 200 || !id.chars().all(legal) {
        return Err(format!(
            "must be at most 200 of the characters a-z A-Z 0-9 . _ - (it names Kafka topics, \
             groups and transactional ids), found `{id}`"
        ));
    }
    Ok(id)
}

fn bootstrap_servers(raw: Raw<'_>) -> Result<String, String> {
    let servers = string(raw)?;
    if servers.split(',').any(|s| s.trim().is_empty()) {
        return Err(format!(
            "has an empty entry in `{servers}`; write host:port,host:port"
        ));
    }
    Ok(servers)
}

/// An address such as `127.0.0.1:9464`, or `"off"` / `""` for none.
fn listen(raw: Raw<'_>) -> Result<Option<SocketAddr>, String> {
    let text = match raw {
        Raw::Toml(toml::Value::String(s)) => s.as_str(),
        Raw::Toml(other) => return Err(format!("expected a string, found {}", type_name(other))),
        Raw::Text(s) => s,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    trimmed.parse().map(Some).map_err(|_| {
        format!(
            "expected an address such as \"127.0.0.1:9464\", \"0.0.0.0:0\" or \"[::]:9464\", or \"off\", found `{text}`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("the temporary directory is writable");
        path
    }

    fn problems(sources: &Sources) -> String {
        Layered::load(sources)
            .expect_err("the configuration is invalid")
            .problems
            .join("\n")
    }

    fn config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn default_toml_is_exactly_the_built_in_defaults() {
        let path = config_dir().join("default.toml");
        let layered = Layered::load(&Sources {
            files: vec![path.clone()],
            ..Sources::default()
        })
        .expect("config/default.toml is valid");
        assert_eq!(layered.config, Config::default());
        // It spells out every setting: each one's value came from the file.
        for setting in Setting::ALL {
            assert_eq!(
                layered.origin(setting.key()),
                Origin::File(path.clone()),
                "config/default.toml does not set `{}`",
                setting.key()
            );
        }
    }

    #[test]
    fn the_environments_files_are_valid() {
        for name in ["dev", "prod", "docker"] {
            let layered = Layered::load(&Sources {
                profile: Some(Profile {
                    name: name.into(),
                    dir: config_dir(),
                }),
                ..Sources::default()
            })
            .unwrap_or_else(|e| panic!("config/{name}.toml: {e}"));
            assert_eq!(
                layered.origin("app_id"),
                Origin::File(config_dir().join(format!("{name}.toml")))
            );
        }
        let docker = Layered::load(&Sources {
            files: vec![config_dir().join("docker.toml")],
            ..Sources::default()
        })
        .expect("valid");
        assert_eq!(
            docker.config.http_listen,
            Some("0.0.0.0:9464".parse().expect("an address"))
        );
    }

    #[test]
    fn each_layer_overrides_the_one_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = write(
            dir.path(),
            "a.toml",
            "app_id = \"a\"\n[kafka]\nbootstrap_servers = \"a:1\"\nreplication_factor = 2\n\
             [processing]\ncommit_interval = \"1s\"\nguarantee = \"at-least-once\"\n\
             [kafka.properties]\n\"client.rack\" = \"r1\"\nlinger.ms = 7\n",
        );
        let b = write(
            dir.path(),
            "b.toml",
            "[kafka]\nreplication_factor = 3\n[processing]\ncommit_interval = 250\n",
        );
        let layered = Layered::load(&Sources {
            files: vec![a.clone(), b.clone()],
            env: env(&[
                ("KAFKA_BOOTSTRAP", "alias:1"),
                ("WATERLINE_BOOTSTRAP_SERVERS", "old:1"),
                ("waterline__kafka__bootstrap_servers", "new:1"),
                ("WATERLINE_APP_ID", "from-env"),
                ("WATERLINE__PROCESSING__GUARANTEE", "exactly-once"),
                ("WATERLINE__HTTP__LISTEN", "off"),
                ("WATERLINE__KAFKA__PROPERTIES__LINGER_MS", "9"),
            ]),
            flags: vec![
                Flag::Set("http.ready_commit_intervals=5".into()),
                Flag::Named {
                    flag: "--app-id",
                    key: "app_id",
                    value: "from-flag".into(),
                },
            ],
            ..Sources::default()
        })
        .expect("valid");
        let c = &layered.config;
        assert_eq!(c.app_id, "from-flag");
        assert_eq!(c.bootstrap_servers, "new:1");
        assert_eq!(c.replication_factor, 3);
        assert_eq!(c.commit_interval, Duration::from_millis(250));
        assert_eq!(c.guarantee, Guarantee::ExactlyOnce);
        assert_eq!(c.http_listen, None);
        assert_eq!(c.ready_commit_intervals, 5);
        assert_eq!(c.kafka_properties.get("client.rack"), Some("r1"));
        assert_eq!(c.kafka_properties.get("linger.ms"), Some("9"));
        assert_eq!(layered.origin("app_id"), Origin::Flag("--app-id".into()));
        assert_eq!(
            layered.origin("kafka.bootstrap_servers"),
            Origin::Env("waterline__kafka__bootstrap_servers".into())
        );
        assert_eq!(layered.origin("kafka.replication_factor"), Origin::File(b));
        assert_eq!(
            layered.origin("kafka.properties.client.rack"),
            Origin::File(a)
        );
        assert_eq!(layered.origin("log.format"), Origin::Default);
        assert_eq!(
            layered.origin("http.ready_commit_intervals"),
            Origin::Flag("--set http.ready_commit_intervals".into())
        );
    }

    #[test]
    fn the_older_environment_names_rank_below_the_new_ones() {
        let only_alias = Config::from_sources(&Sources {
            env: env(&[("KAFKA_BOOTSTRAP", "alias:1"), ("WATERLINE_APP_ID", "old")]),
            ..Sources::default()
        })
        .expect("valid");
        assert_eq!(only_alias.bootstrap_servers, "alias:1");
        assert_eq!(only_alias.app_id, "old");
        let both = Config::from_sources(&Sources {
            env: env(&[
                ("KAFKA_BOOTSTRAP", "alias:1"),
                ("WATERLINE_BOOTSTRAP_SERVERS", "old:1"),
            ]),
            ..Sources::default()
        })
        .expect("valid");
        assert_eq!(both.bootstrap_servers, "old:1");
        // Not settings: ignored.
        Config::from_sources(&Sources {
            env: env(&[("WATERLINE_FAULT", "x"), ("WATERLINE_BENCH_RECORDS", "5")]),
            ..Sources::default()
        })
        .expect("valid");
    }

    #[test]
    fn names_every_bad_field_with_its_layer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bad = write(
            dir.path(),
            "bad.toml",
            "app_id = 1\nguarantee = \"x\"\n[kafka]\nreplication_factor = 0\nbootstrap_server = \"x\"\n\
             [log]\nformat = \"xml\"\n[http]\nlisten = \"localhost:80\"\n\
             [kafka.properties]\n\"linger.ms\" = \"soon\"\n\"no.such.thing\" = \"1\"\n\"group.id\" = \"g\"\n",
        );
        let broken = write(dir.path(), "broken.toml", "[kafka\nx = 1\n");
        let all = problems(&Sources {
            files: vec![bad, broken, dir.path().join("missing.toml")],
            env: env(&[
                ("WATERLINE__PROCESSING__COMMIT_INTERVAL", "2m"),
                ("WATERLINE__HTTP__READY_COMMIT_INTERVALS", "0"),
                ("WATERLINE__KAFKA__BOOTSTRAP", "x"),
                ("WATERLINE_HTTP__LISTEN", "off"),
                ("WATERLINE__LOG__LEVEL", "waterline=loud"),
            ]),
            flags: vec![
                Flag::Named {
                    flag: "--log-format",
                    key: "log.format",
                    value: "yaml".into(),
                },
                Flag::Set("processing.guarantee".into()),
            ],
            ..Sources::default()
        });
        for needle in [
            "bad.toml: `app_id`: expected a string, found an integer",
            "bad.toml: `guarantee`: is not a known setting; did you mean `processing.guarantee`?",
            "bad.toml: `kafka.replication_factor`: must be between 1 and 32, found 0",
            "bad.toml: `kafka.bootstrap_server`: is not a known setting; did you mean `kafka.bootstrap_servers`?",
            "bad.toml: `log.format`: must be \"text\" or \"json\", found `xml`",
            "bad.toml: `http.listen`: expected an address",
            "bad.toml: `kafka.properties.\"linger.ms\"`: librdkafka refuses it",
            "bad.toml: `kafka.properties.\"no.such.thing\"`: is not a librdkafka property",
            "bad.toml: `kafka.properties.\"group.id\"`: is set from `app_id`",
            "broken.toml: not valid TOML at line 1, column 7",
            "missing.toml: cannot read",
            "env WATERLINE__PROCESSING__COMMIT_INTERVAL: `processing.commit_interval`: must be between 1ms and 60s, found 2m",
            "env WATERLINE__HTTP__READY_COMMIT_INTERVALS: `http.ready_commit_intervals`: must be between 1 and 4294967295, found 0",
            "env WATERLINE__KAFKA__BOOTSTRAP: `kafka.bootstrap`: is not a known setting; did you mean WATERLINE__KAFKA__BOOTSTRAP_SERVERS?",
            "env WATERLINE_HTTP__LISTEN: is not read: settings take two underscores after WATERLINE, as in WATERLINE__HTTP__LISTEN",
            "env WATERLINE__LOG__LEVEL: `log.level`: `waterline=loud` is not a log filter",
            "flag --log-format: `log.format`: must be \"text\" or \"json\", found `yaml`",
            "flag --set: `processing.guarantee` is not KEY=VALUE",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(all.lines().count(), 18, "one line per problem:\n{all}");
    }

    #[test]
    fn secrets_come_from_the_environment_or_files_and_never_print() {
        let dir = tempfile::tempdir().expect("temp dir");
        let in_file = write(
            dir.path(),
            "secret.toml",
            "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\nsasl.username = \"svc\"\n",
        );
        let all = problems(&Sources {
            files: vec![in_file],
            flags: vec![Flag::Set(
                "kafka.properties.ssl.key.password=hunter3".into(),
            )],
            ..Sources::default()
        });
        assert!(
            all.contains(
                "`kafka.properties.\"sasl.password\"`: is a secret and files end up in repositories \
                 and images: set it with the environment variable WATERLINE__KAFKA__PROPERTIES__SASL_PASSWORD"
            ),
            "{all}"
        );
        assert!(
            all.contains("flag --set kafka.properties.ssl.key.password: `kafka.properties.\"ssl.key.password\"`: is a secret and flags show in process lists"),
            "{all}"
        );
        assert!(!all.contains("hunter"), "a secret in a message:\n{all}");

        // From the environment: held as a secret, given to librdkafka as is.
        let layered = Layered::load(&Sources {
            env: env(&[
                ("WATERLINE__KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
                ("WATERLINE__KAFKA__PROPERTIES__SASL_USERNAME", "svc"),
            ]),
            ..Sources::default()
        })
        .expect("valid");
        let props = &layered.config.kafka_properties;
        assert_eq!(props.get("sasl.password"), Some("hunter2"));
        assert_eq!(
            props.value("sasl.username"),
            Some(&PropertyValue::Plain("svc".into()))
        );
        let pairs: Vec<(&str, &str)> = props.iter().collect();
        assert_eq!(
            pairs,
            [("sasl.password", "hunter2"), ("sasl.username", "svc")]
        );
        let debug = format!("{:?}", layered.config);
        let printed = layered.to_toml();
        for shown in [&debug, &printed] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
        assert!(printed.contains("\"sasl.username\" = \"svc\""), "{printed}");
        assert_eq!(Secret::new("x").to_string(), REDACTED);

        // From a file named in [kafka.secret_files].
        let password_file = write(dir.path(), "kafka-password", "from-file\n");
        let files = write(
            dir.path(),
            "files.toml",
            &format!(
                "[kafka.secret_files]\n\"sasl.password\" = {}\n",
                quote(&password_file.display().to_string())
            ),
        );
        let layered = Layered::load(&Sources {
            files: vec![files.clone()],
            ..Sources::default()
        })
        .expect("valid");
        assert_eq!(
            layered.config.kafka_properties.get("sasl.password"),
            Some("from-file")
        );
        assert_eq!(
            layered.origin("kafka.properties.sasl.password"),
            Origin::SecretFile {
                path: password_file,
                named_by: Box::new(Origin::File(files))
            }
        );
        let printed = layered.to_toml();
        assert!(
            !printed.contains("from-file")
                && printed.contains("\"sasl.password\" = \"<redacted>\""),
            "{printed}"
        );

        let all = problems(&Sources {
            env: env(&[(
                "WATERLINE__KAFKA__SECRET_FILES__SASL_PASSWORD",
                "/no/such/secret",
            )]),
            ..Sources::default()
        });
        assert!(
            all.contains("env WATERLINE__KAFKA__SECRET_FILES__SASL_PASSWORD: `kafka.secret_files.\"sasl.password\"`: cannot read /no/such/secret"),
            "{all}"
        );
    }

    #[test]
    fn environment_names_map_to_property_names() {
        assert_eq!(property_from_env("SASL_PASSWORD"), "sasl.password");
        assert_eq!(property_from_env("log__level"), "log_level");
        assert_eq!(
            property_from_env("SASL_OAUTHBEARER_CLIENT_SECRET"),
            "sasl.oauthbearer.client.secret"
        );
        assert_eq!(
            property_env_name("sasl.password"),
            "WATERLINE__KAFKA__PROPERTIES__SASL_PASSWORD"
        );
        assert_eq!(
            property_env_name("log_level"),
            "WATERLINE__KAFKA__PROPERTIES__LOG__LEVEL"
        );
        assert!(is_secret("sasl.password") && is_secret("ssl.keystore.password"));
        assert!(is_secret("sasl.oauthbearer.client.secret") && is_secret("ssl.key.pem"));
        assert!(!is_secret("sasl.username") && !is_secret("ssl.key.location"));
    }

    #[test]
    fn http_listen_takes_an_address_or_off() {
        let listen_of = |value: &str| {
            Config::from_sources(&Sources {
                flags: vec![Flag::Set(format!("http.listen={value}"))],
                ..Sources::default()
            })
            .map(|c| c.http_listen)
        };
        assert_eq!(listen_of("off").expect("valid"), None);
        assert_eq!(listen_of("").expect("valid"), None);
        assert_eq!(
            listen_of("0.0.0.0:0").expect("valid"),
            Some(SocketAddr::from(([0, 0, 0, 0], 0)))
        );
        assert_eq!(
            listen_of("[::1]:9464").expect("valid"),
            Some("[::1]:9464".parse().expect("an address"))
        );
        assert!(listen_of("9464").is_err());
    }

    #[test]
    fn the_print_is_toml_that_loads_back_to_the_same_config() {
        let layered = Layered::load(&Sources {
            env: env(&[
                ("WATERLINE__APP_ID", "printed"),
                ("WATERLINE__KAFKA__PROPERTIES__CLIENT_RACK", "r \"1\""),
                ("WATERLINE__PROCESSING__COMMIT_INTERVAL", "1s 500ms"),
            ]),
            ..Sources::default()
        })
        .expect("valid");
        let printed = layered.to_toml();
        assert!(
            printed.contains("app_id = \"printed\"") && printed.contains("# env WATERLINE__APP_ID"),
            "{printed}"
        );
        assert!(printed.contains("listen = \"127.0.0.1:9464\""), "{printed}");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "printed.toml", &printed);
        let again = Config::from_sources(&Sources {
            files: vec![path],
            ..Sources::default()
        })
        .expect("the print loads");
        assert_eq!(again, layered.config);
    }

    #[test]
    fn an_unknown_environment_is_named_with_the_known_ones() {
        let all = problems(&Sources {
            profile: Some(Profile {
                name: "prdo".into(),
                dir: config_dir(),
            }),
            ..Sources::default()
        });
        assert!(
            all.starts_with("flag --env: no environment `prdo`"),
            "{all}"
        );
        assert!(all.contains("dev, docker, prod"), "{all}");
        assert!(all.contains("did you mean `prod`?"), "{all}");
    }
}
