//! A TOML table reader that reports every bad field at once.
//!
//! serde stops at the first error; a user fixing a dataflow file wants the whole list.
//! [`Table`] reads one field at a time, records a message naming the field's full path
//! (`windows[0].size`) for each problem, and [`Table::finish`] reports keys nobody read,
//! so a typo never passes silently.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

/// Every problem found while reading a file, one message per bad field.
#[derive(Debug, Default)]
pub struct Problems {
    messages: Vec<String>,
}

impl Problems {
    /// Records a problem with the field at `path`.
    pub fn field(&mut self, path: &str, message: impl std::fmt::Display) {
        self.messages.push(format!("`{path}`: {message}"));
    }

    /// True when nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages, in the order found.
    pub fn into_messages(self) -> Vec<String> {
        self.messages
    }
}

/// One TOML table being read, with the path that names it in messages.
pub struct Table<'a> {
    path: String,
    table: &'a toml::Table,
    read: RefCell<BTreeSet<String>>,
}

/// What kind of TOML value `v` is, for messages ("expected a string, found an integer").
pub fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl<'a> Table<'a> {
    /// Reads `table`, naming it `path` in messages (empty for the file's top level).
    pub fn new(path: impl Into<String>, table: &'a toml::Table) -> Self {
        Table {
            path: path.into(),
            table,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    /// This table's own path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The full path of `key` in this table.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.read.borrow_mut().insert(key.to_string());
        self.table.get(key)
    }

    /// The keys present in this table, in order.
    pub fn keys(&self) -> Vec<String> {
        self.table.keys().cloned().collect()
    }

    /// A required string.
    pub fn string(&self, key: &str, problems: &mut Problems) -> Option<String> {
        match self.get(key) {
            None => {
                problems.field(&self.path_of(key), "is required (a string)");
                None
            }
            Some(v) => self.as_string(key, v, problems),
        }
    }

    /// An optional string.
    pub fn opt_string(&self, key: &str, problems: &mut Problems) -> Option<String> {
        self.get(key).and_then(|v| self.as_string(key, v, problems))
    }

    fn as_string(&self, key: &str, v: &toml::Value, problems: &mut Problems) -> Option<String> {
        match v {
            toml::Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            toml::Value::String(_) => {
                problems.field(&self.path_of(key), "must not be empty");
                None
            }
            other => {
                problems.field(
                    &self.path_of(key),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An optional integer within `range`.
    pub fn opt_integer(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        problems: &mut Problems,
    ) -> Option<i64> {
        match self.get(key)? {
            toml::Value::Integer(i) if range.contains(i) => Some(*i),
            toml::Value::Integer(i) => {
                problems.field(
                    &self.path_of(key),
                    format!(
                        "must be between {} and {}, found {i}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
            other => {
                problems.field(
                    &self.path_of(key),
                    format!("expected an integer, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str, problems: &mut Problems) -> Option<bool> {
        match self.get(key)? {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                problems.field(
                    &self.path_of(key),
                    format!("expected true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A required duration: a string such as `"5s"`, `"250ms"`, `"1m"`, or integer milliseconds.
    pub fn duration(&self, key: &str, problems: &mut Problems) -> Option<Duration> {
        match self.get(key) {
            None => {
                problems.field(
                    &self.path_of(key),
                    "is required (a duration such as \"5s\")",
                );
                None
            }
            Some(v) => self.as_duration(key, v, problems),
        }
    }

    /// An optional duration.
    pub fn opt_duration(&self, key: &str, problems: &mut Problems) -> Option<Duration> {
        self.get(key)
            .and_then(|v| self.as_duration(key, v, problems))
    }

    fn as_duration(&self, key: &str, v: &toml::Value, problems: &mut Problems) -> Option<Duration> {
        match v {
            toml::Value::String(s) => {
                match humantime::parse_duration(s) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        problems.field(
                        &self.path_of(key),
                        format!("`{s}` is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"1m\""),
                    );
                        None
                    }
                }
            }
            toml::Value::Integer(ms) if *ms >= 0 => Some(Duration::from_millis(*ms as u64)),
            other => {
                problems.field(
                    &self.path_of(key),
                    format!(
                        "expected a duration such as \"5s\" or integer milliseconds, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    /// An optional array of strings.
    pub fn opt_strings(&self, key: &str, problems: &mut Problems) -> Option<Vec<String>> {
        match self.get(key)? {
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => problems.field(
                            &format!("{}[{i}]", self.path_of(key)),
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                problems.field(
                    &self.path_of(key),
                    format!("expected an array of strings, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// The raw value of an optional key, marked as read.
    pub fn raw(&self, key: &str) -> Option<&'a toml::Value> {
        self.get(key)
    }

    /// A sub-table; `None` (and a problem, if `required`) when absent or not a table.
    pub fn table(&self, key: &str, required: bool, problems: &mut Problems) -> Option<Table<'a>> {
        match self.get(key) {
            None => {
                if required {
                    problems.field(&self.path_of(key), "is required (a table)");
                }
                None
            }
            Some(toml::Value::Table(t)) => Some(Table::new(self.path_of(key), t)),
            Some(other) => {
                problems.field(
                    &self.path_of(key),
                    format!("expected a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An array of tables (`[[key]]`); empty when absent.
    pub fn tables(&self, key: &str, problems: &mut Problems) -> Vec<Table<'a>> {
        match self.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    toml::Value::Table(t) => {
                        Some(Table::new(format!("{}[{i}]", self.path_of(key)), t))
                    }
                    other => {
                        problems.field(
                            &format!("{}[{i}]", self.path_of(key)),
                            format!("expected a table, found {}", type_name(other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                problems.field(
                    &self.path_of(key),
                    format!("expected an array of tables, found {}", type_name(other)),
                );
                Vec::new()
            }
        }
    }

    /// Reports every key of this table that no reader asked for, suggesting the nearest
    /// key that was asked for (the readers ask for every key they know).
    pub fn finish(self, problems: &mut Problems) {
        let read = self.read.borrow();
        for key in self.table.keys() {
            if !read.contains(key) {
                let hint = did_you_mean(key, read.iter().map(String::as_str))
                    .map(|k| format!("; did you mean `{}`?", self.path_of(k)))
                    .unwrap_or_default();
                problems.field(&self.path_of(key), format!("is not a known setting{hint}"));
            }
        }
    }
}

/// Parses TOML text, turning a syntax error into a problem that names the line.
pub fn parse_toml(text: &str, problems: &mut Problems) -> Option<toml::Table> {
    match text.parse::<toml::Table>() {
        Ok(t) => Some(t),
        Err(e) => {
            problems.messages.push(format!("not valid TOML: {e}"));
            None
        }
    }
}

/// The candidate nearest to `word`, if it is near enough to be the word meant: at most
/// one edit for short words, two for longer ones (a transposition counts as one).
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent
/// transpositions, case-insensitive.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    // rows[i][j]: the distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_bad_field_and_unknown_keys() {
        let mut problems = Problems::default();
        let t = parse_toml(
            "name = 5\nsize = \"fortnight\"\ntypo = 1\n[sub]\nx = \"\"\n",
            &mut problems,
        )
        .expect("valid toml");
        let top = Table::new("", &t);
        assert_eq!(top.string("name", &mut problems), None);
        assert_eq!(top.duration("size", &mut problems), None);
        assert_eq!(top.duration("missing", &mut problems), None);
        let sub = top
            .table("sub", true, &mut problems)
            .expect("sub is a table");
        assert_eq!(sub.string("x", &mut problems), None);
        sub.finish(&mut problems);
        top.finish(&mut problems);
        let msgs = problems.into_messages();
        assert_eq!(msgs.len(), 5, "{msgs:#?}");
        assert!(msgs[0].starts_with("`name`: expected a string"));
        assert!(msgs[1].starts_with("`size`: `fortnight` is not a duration"));
        assert!(msgs[2].starts_with("`missing`: is required"));
        assert!(msgs[3].starts_with("`sub.x`: must not be empty"));
        assert!(msgs[4].starts_with("`typo`: is not a known setting"));
    }

    #[test]
    fn suggests_a_near_key() {
        let known = ["bootstrap_servers", "replication_factor", "create_topics"];
        assert_eq!(
            did_you_mean("bootstrap_server", known),
            Some("bootstrap_servers")
        );
        assert_eq!(did_you_mean("creaet_topics", known), Some("create_topics"));
        assert_eq!(did_you_mean("partitions", known), None);
        let mut problems = Problems::default();
        let t = parse_toml("sise = \"1m\"\n", &mut problems).expect("valid toml");
        let top = Table::new("w", &t);
        assert_eq!(top.opt_duration("size", &mut problems), None);
        top.finish(&mut problems);
        assert_eq!(
            problems.into_messages(),
            ["`w.sise`: is not a known setting; did you mean `w.size`?"]
        );
    }

    #[test]
    fn durations_accept_text_and_milliseconds() {
        let mut problems = Problems::default();
        let t = parse_toml("a = \"1m 30s\"\nb = 250\n", &mut problems).expect("valid toml");
        let top = Table::new("", &t);
        assert_eq!(
            top.duration("a", &mut problems),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            top.duration("b", &mut problems),
            Some(Duration::from_millis(250))
        );
        assert!(problems.is_empty());
    }
}
