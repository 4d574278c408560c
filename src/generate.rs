//! The generators behind `waterline produce` and `waterline demo`: realistic trades (or,
//! with `produce --kind web`, web-analytics events) with chosen fractions of invalid, late
//! and duplicate records, repeatable from a seed.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::cli::GenerateArgs;
use crate::time::rfc3339_ms;

/// What kind of record was generated (for summaries; consumers cannot see it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A valid trade, near the current event time.
    Valid,
    /// A valid trade whose event time lies minutes in the past.
    Late,
    /// A record that fails decoding or validation.
    Invalid,
    /// A copy of an earlier record (same trade id).
    Duplicate,
}

/// One generated record.
#[derive(Clone, Debug)]
pub struct Generated {
    /// Message key: the symbol, when there is one.
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub payload: Vec<u8>,
    /// What it is.
    pub kind: Kind,
}

const STATUSES: [&str; 3] = ["pending", "filled", "cancelled"];
const TICKERS: [&str; 12] = [
    "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "BRK.B", "JPM", "V", "XOM", "UNH",
];

/// Generates trades.
pub struct TradeGenerator {
    rng: StdRng,
    args: GenerateArgs,
    symbols: Vec<String>,
    sent: u64,
    recent: VecDeque<Generated>,
    start_ms: u64,
}

impl TradeGenerator {
    /// A generator; event times start at `start_ms` when `time_step_ms` is set.
    pub fn new(args: GenerateArgs, start_ms: u64) -> Self {
        let symbols = (0..args.keys as usize)
            .map(|i| match TICKERS.get(i) {
                Some(t) => t.to_string(),
                None => format!("SYM{i}"),
            })
            .collect();
        TradeGenerator {
            rng: StdRng::seed_from_u64(args.seed),
            args,
            symbols,
            sent: 0,
            recent: VecDeque::new(),
            start_ms,
        }
    }

    /// The next record; `now_ms` is the event time to use when no time step is set.
    pub fn next(&mut self, now_ms: u64) -> Generated {
        self.sent += 1;
        let base = if self.args.time_step_ms > 0 {
            self.start_ms + self.sent * self.args.time_step_ms
        } else {
            now_ms
        };
        let roll: f64 = self.rng.random();
        let args = &self.args;
        if roll < args.duplicate && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let mut copy = self.recent[i].clone();
            copy.kind = Kind::Duplicate;
            return copy;
        }
        let roll = roll - args.duplicate;
        let (kind, time) = if roll >= 0.0 && roll < args.invalid {
            (Kind::Invalid, base)
        } else if roll >= args.invalid && roll < args.invalid + args.late {
            (
                Kind::Late,
                base.saturating_sub(self.rng.random_range(180_000..600_000)),
            )
        } else {
            (
                Kind::Valid,
                base.saturating_sub(self.rng.random_range(0..2_000)),
            )
        };
        let symbol = &self.symbols[self.rng.random_range(0..self.symbols.len())];
        let cents: u64 = self.rng.random_range(1..=10_000_000);
        let status = STATUSES[self.rng.random_range(0..STATUSES.len())];
        let quote_amount = !self.rng.random_bool(0.5);
        let quote_time = self.rng.random_bool(0.5);
        // Written straight into the payload, with the spans the invalid variants change.
        let mut good = String::with_capacity(160);
        good.push_str(r#"{"trade_id":"TRX-"#);
        push_decimal(&mut good, self.sent, 8);
        good.push_str(r#"","timestamp":"#);
        let time_json = good.len();
        if quote_time {
            good.push('"');
            good.push_str(&rfc3339_ms(time));
            good.push('"');
        } else {
            push_decimal(&mut good, time, 1);
        }
        let time_json = time_json..good.len();
        good.push_str(r#","amount":"#);
        let amount_json = good.len();
        if quote_amount {
            good.push('"');
        }
        let amount = good.len();
        push_decimal(&mut good, cents / 100, 1);
        good.push('.');
        push_decimal(&mut good, cents % 100, 2);
        let amount = amount..good.len();
        if quote_amount {
            good.push('"');
        }
        let amount_json = amount_json..good.len();
        good.push_str(r#","symbol":""#);
        good.push_str(symbol);
        good.push_str(r#"","status":""#);
        good.push_str(status);
        good.push_str(r#""}"#);
        let payload = if kind == Kind::Invalid {
            let amount = &good[amount];
            let amount_json = &good[amount_json];
            let time_json = &good[time_json];
            match self.rng.random_range(0..10) {
                0 => good.as_bytes()[..good.len() / 2].to_vec(),
                1 => good
                    .replace(amount_json, &format!("-{amount}"))
                    .into_bytes(),
                2 => good.replace(status, "exploded").into_bytes(),
                3 => good
                    .replace(&format!("\"{symbol}\""), "\"not a symbol\"")
                    .into_bytes(),
                4 => good
                    .replace(&format!(r#","status":"{status}""#), "")
                    .into_bytes(),
                5 => {
                    let mut b = good.into_bytes();
                    b.insert(5, 0xff);
                    b
                }
                6 => Vec::new(),
                7 => b"[\"not\",\"an\",\"object\"]".to_vec(),
                8 => good.replace(amount_json, "\"NaN\"").into_bytes(),
                _ => good.replace(time_json, "\"yesterday\"").into_bytes(),
            }
        } else {
            good.into_bytes()
        };
        let g = Generated {
            key: Some(symbol.as_bytes().to_vec()),
            payload,
            kind,
        };
        // Only duplicates are copies of recent records.
        if kind == Kind::Valid && self.args.duplicate > 0.0 {
            if self.recent.len() >= 64 {
                self.recent.pop_front();
            }
            self.recent.push_back(g.clone());
        }
        g
    }
}

/// Appends `n` in decimal, zero-padded to at least `width` digits (as `{:0width$}` would,
/// without the formatting machinery: the generator feeds benchmarks at hundreds of
/// thousands of records a second).
fn push_decimal(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < width.max(1) {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

const PAGES: [&str; 8] = [
    "/",
    "/pricing",
    "/docs",
    "/blog",
    "/signup",
    "/features",
    "/about",
    "/checkout",
];

/// Per user: when (in event time) the user is back after leaving, and whether the next
/// event opens a session.
#[derive(Clone, Copy, Debug)]
struct User {
    back_at: u64,
    new_session: bool,
}

/// Generates web-analytics events (`dataflows/web_analytics.toml`): per user, sessions of
/// page views (`session_start` first, sometimes a `conversion`), with pauses of 31 to 120
/// minutes of event time between sessions; with the same fractions of invalid, late and
/// duplicate records as [`TradeGenerator`], repeatable from the seed.
///
/// ```text
/// {"event_id":"WEB-00000001","timestamp":"2026-01-13T14:30:45.123Z","user_id":"user-0007","event_type":"page_view","page":"/pricing"}
/// ```
pub struct WebGenerator {
    rng: StdRng,
    args: GenerateArgs,
    users: Vec<User>,
    sent: u64,
    recent: VecDeque<Generated>,
    start_ms: u64,
}

impl WebGenerator {
    /// A generator; event times start at `start_ms` when `time_step_ms` is set.
    pub fn new(args: GenerateArgs, start_ms: u64) -> Self {
        let users = vec![
            User {
                back_at: 0,
                new_session: true,
            };
            args.keys as usize
        ];
        WebGenerator {
            rng: StdRng::seed_from_u64(args.seed),
            args,
            users,
            sent: 0,
            recent: VecDeque::new(),
            start_ms,
        }
    }

    /// The next record; `now_ms` is the event time to use when no time step is set.
    pub fn next(&mut self, now_ms: u64) -> Generated {
        self.sent += 1;
        let base = if self.args.time_step_ms > 0 {
            self.start_ms + self.sent * self.args.time_step_ms
        } else {
            now_ms
        };
        let roll: f64 = self.rng.random();
        let args = &self.args;
        if roll < args.duplicate && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let mut copy = self.recent[i].clone();
            copy.kind = Kind::Duplicate;
            return copy;
        }
        let roll = roll - args.duplicate;
        let (kind, time) = if roll >= 0.0 && roll < args.invalid {
            (Kind::Invalid, base)
        } else if roll >= args.invalid && roll < args.invalid + args.late {
            (
                Kind::Late,
                base.saturating_sub(self.rng.random_range(180_000..600_000)),
            )
        } else {
            (
                Kind::Valid,
                base.saturating_sub(self.rng.random_range(0..2_000)),
            )
        };
        // A user who is not away; when all are, the one back first.
        let here: Vec<usize> = (0..self.users.len())
            .filter(|&u| self.users[u].back_at <= base)
            .collect();
        let u = if here.is_empty() {
            (0..self.users.len())
                .min_by_key(|&u| (self.users[u].back_at, u))
                .expect("there is at least one user")
        } else {
            here[self.rng.random_range(0..here.len())]
        };
        let user = format!("user-{u:04}");
        let event_type = if self.users[u].new_session {
            "session_start"
        } else if self.rng.random_bool(0.1) {
            "conversion"
        } else {
            "page_view"
        };
        let page = match event_type {
            "conversion" => "/checkout",
            _ => PAGES[self.rng.random_range(0..PAGES.len() - 1)],
        };
        if kind != Kind::Invalid {
            // Late records are re-sent history: they do not move the user along.
            if kind == Kind::Valid {
                let leaves = self.rng.random_bool(0.08);
                self.users[u] = User {
                    back_at: if leaves {
                        base + self.rng.random_range(31 * 60_000..120 * 60_000)
                    } else {
                        0
                    },
                    new_session: leaves,
                };
            }
        }
        let id = format!("WEB-{:08}", self.sent);
        let time_json = if self.rng.random_bool(0.5) {
            format!("\"{}\"", rfc3339_ms(time))
        } else {
            time.to_string()
        };
        let good = format!(
            r#"{{"event_id":"{id}","timestamp":{time_json},"user_id":"{user}","event_type":"{event_type}","page":"{page}"}}"#
        );
        let payload = if kind == Kind::Invalid {
            match self.rng.random_range(0..9) {
                0 => good.as_bytes()[..good.len() / 2].to_vec(),
                1 => good
                    .replace(&format!("\"{event_type}\""), "\"exploded\"")
                    .into_bytes(),
                2 => good
                    .replace(&format!("\"page\":\"{page}\""), "\"page\":\"no-slash\"")
                    .into_bytes(),
                3 => good
                    .replace(&format!("\"{user}\""), "\"anonymous\"")
                    .into_bytes(),
                4 => good
                    .replace(&format!(r#","user_id":"{user}""#), "")
                    .into_bytes(),
                5 => {
                    let mut b = good.into_bytes();
                    b.insert(5, 0xff);
                    b
                }
                6 => Vec::new(),
                7 => b"[\"not\",\"an\",\"object\"]".to_vec(),
                _ => good.replace(&time_json, "\"yesterday\"").into_bytes(),
            }
        } else {
            good.into_bytes()
        };
        let g = Generated {
            key: Some(user.into_bytes()),
            payload,
            kind,
        };
        if kind == Kind::Valid {
            if self.recent.len() >= 64 {
                self.recent.pop_front();
            }
            self.recent.push_back(g.clone());
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(seed: u64) -> GenerateArgs {
        GenerateArgs {
            keys: 5,
            invalid: 0.1,
            late: 0.05,
            duplicate: 0.05,
            seed,
            time_step_ms: 60_000,
        }
    }

    #[test]
    fn decimals_are_written_as_the_formatter_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345_678, 123_456_789, u64::MAX] {
            for width in [1, 2, 8] {
                let mut out = String::from("x");
                push_decimal(&mut out, n, width);
                assert_eq!(out, format!("x{n:0width$}"));
            }
        }
    }

    #[test]
    fn valid_trades_are_json_with_every_field() {
        let mut g = TradeGenerator::new(args(7), 1_700_000_000_000);
        let (mut valid, mut invalid) = (0, 0);
        for n in 1..=3_000u64 {
            let r = g.next(0);
            if r.kind == Kind::Duplicate {
                continue;
            }
            let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&r.payload);
            if r.kind == Kind::Invalid {
                invalid += 1;
                continue;
            }
            valid += 1;
            let v = parsed.expect("a valid trade is JSON");
            assert_eq!(v["trade_id"], format!("TRX-{n:08}"));
            // As written (a JSON number's trailing zeros do not survive parsing).
            let text = std::str::from_utf8(&r.payload).expect("a valid trade is UTF-8");
            let amount = text
                .split_once(r#""amount":"#)
                .and_then(|(_, rest)| rest.split_once(','))
                .expect("an amount")
                .0
                .trim_matches('"');
            let (units, cents) = amount.split_once('.').expect("two decimals");
            assert!(units.parse::<u64>().is_ok() && cents.len() == 2, "{amount}");
            let time = match &v["timestamp"] {
                serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                    .expect("RFC 3339")
                    .timestamp_millis() as u64,
                other => other.as_u64().expect("epoch milliseconds"),
            };
            assert!(time <= 1_700_000_000_000 + n * 60_000, "{time}");
            assert!(STATUSES.contains(&v["status"].as_str().expect("a status")));
            assert_eq!(
                r.key.as_deref(),
                Some(v["symbol"].as_str().expect("a symbol").as_bytes())
            );
        }
        assert!(
            valid > 2_000 && invalid > 200,
            "{valid} valid, {invalid} invalid"
        );
    }

    #[test]
    fn web_events_are_repeatable_from_the_seed() {
        let run = |seed| {
            let mut g = WebGenerator::new(args(seed), 1_700_000_000_000);
            (0..500).map(|_| g.next(0).payload).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn web_users_start_sessions_and_come_back_after_a_pause() {
        let mut g = WebGenerator::new(args(9), 1_700_000_000_000);
        let mut kinds = std::collections::BTreeMap::new();
        for _ in 0..2_000 {
            let r = g.next(0);
            if r.kind != Kind::Valid {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("valid JSON");
            *kinds
                .entry(v["event_type"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        for k in ["session_start", "page_view", "conversion"] {
            assert!(kinds.get(k).copied().unwrap_or(0) > 20, "{kinds:?}");
        }
    }
}
