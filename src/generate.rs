//! The trade generator behind `waterline produce` and `waterline demo`: realistic trades
//! with chosen fractions of invalid, late and duplicate records, repeatable from a seed.

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
        let symbol = self.symbols[self.rng.random_range(0..self.symbols.len())].clone();
        let id = format!("TRX-{:08}", self.sent);
        let cents: u64 = self.rng.random_range(1..=10_000_000);
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let status = STATUSES[self.rng.random_range(0..STATUSES.len())];
        let amount_json = if self.rng.random_bool(0.5) {
            amount.clone()
        } else {
            format!("\"{amount}\"")
        };
        let time_json = if self.rng.random_bool(0.5) {
            format!("\"{}\"", rfc3339_ms(time))
        } else {
            time.to_string()
        };
        let good = format!(
            r#"{{"trade_id":"{id}","timestamp":{time_json},"amount":{amount_json},"symbol":"{symbol}","status":"{status}"}}"#
        );
        let payload = if kind == Kind::Invalid {
            match self.rng.random_range(0..10) {
                0 => good.as_bytes()[..good.len() / 2].to_vec(),
                1 => good
                    .replace(&amount_json, &format!("-{amount}"))
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
                8 => good.replace(&amount_json, "\"NaN\"").into_bytes(),
                _ => good.replace(&time_json, "\"yesterday\"").into_bytes(),
            }
        } else {
            good.into_bytes()
        };
        let g = Generated {
            key: Some(symbol.into_bytes()),
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
