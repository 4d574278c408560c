//! Progress of long work: `waterline produce`, and `waterline run` with `--stop-at-end` or
//! `--until`. (Not to be confused with [`crate::progress`], the progress *records* of
//! exactly-once.)
//!
//! ```text
//!  work (produce loop, dataflow workers) ── bumps counters it keeps anyway
//!                                              │ read every 200 ms
//!  sampler thread ── stderr is a terminal, text logs ──► indicatif bar (or spinner)
//!                 └─ otherwise ──────────────────────► one `tracing` info line per 10 s
//! ```
//!
//! The work itself only bumps counters it already keeps (a record counter of
//! [`crate::metrics::Metrics`], the producer's sent count); a thread samples them, so the
//! dataflow's hot path does not change. A line looks like
//! `read 120000/500000 records (24%), 41000/s, eta 9s` ([`progress_line`]); with no known
//! total it leaves out the total and the percentage, and the ETA comes from a deadline
//! (`produce --duration`) or is left out. Lines go through `tracing`, so JSON logs stay
//! JSON; a bar is never drawn with JSON logs or when stderr is not a terminal.
//!
//! While a bar is drawn, log lines written through [`log_writer`] clear it, print, and
//! redraw it, so the two do not garble each other.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::LogFormat;

/// How often the counters are sampled (and the bar redrawn).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How often a plain line is logged when no bar is drawn.
const LINE_EVERY: Duration = Duration::from_secs(10);
/// The span the bar's rate is measured over.
const BAR_RATE_OVER: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// An indicatif bar (or spinner, with no known total) on stderr.
    Bar,
    /// A plain `tracing` info line every 10 s.
    Lines,
}

impl Display {
    /// A bar when stderr is a terminal and logs are text; lines otherwise (JSON logs, a
    /// pipe, a file, CI).
    pub fn choose(log_format: LogFormat) -> Display {
        if log_format == LogFormat::Text && std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

/// What is being tracked.
#[derive(Clone, Copy, Debug)]
pub struct Task {
    /// The verb a line starts with: `read`, `sent`.
    pub verb: &'static str,
    /// When the work stops by itself, if it stops at a time (`produce --duration`): the
    /// ETA is the time left.
    pub deadline: Option<Instant>,
}

/// A running progress display; stops (and leaves the bar's last state on screen) on
/// [`Reporter::finish`] or drop.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts the sampler thread. `done` returns the count of work done so far; `planned`
    /// the total, or 0 while it is not known. When `planned` falls back to 0 and is then
    /// set again (a bounded run restarted from its last commit and planned anew), the
    /// count starts over from what `done` returns at that moment.
    pub fn start(
        task: Task,
        display: Display,
        done: impl Fn() -> u64 + Send + 'static,
        planned: impl Fn() -> u64 + Send + 'static,
    ) -> std::io::Result<Reporter> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("progress".into()).spawn({
            let stop = Arc::clone(&stop);
            move || sample(task, display, &done, &planned, &stop)
        })?;
        Ok(Reporter {
            stop,
            thread: Some(thread),
        })
    }

    /// Draws the final state and stops.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Wakes the sampler from its wait: a bounded run then exits when its work is
            // done, not up to a sample interval later.
            thread.thread().unpark();
            // A panic in the sampler only loses the display.
            let _ = thread.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The sampler thread's loop.
fn sample(
    task: Task,
    display: Display,
    done: &dyn Fn() -> u64,
    planned: &dyn Fn() -> u64,
    stop: &AtomicBool,
) {
    let bar = (display == Display::Bar).then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(spinner_style());
        set_active_bar(Some(bar.clone()));
        bar
    });
    let mut counter = Counter::default();
    let mut bar_rate = Rate::new(BAR_RATE_OVER);
    let started = Instant::now();
    let mut last_line = (started, 0u64);
    loop {
        let finishing = stop.load(Ordering::Relaxed);
        let now = Instant::now();
        let (count, total) = counter.observe(done(), planned());
        let left = task.deadline.map(|d| d.saturating_duration_since(now));
        if let Some(bar) = &bar {
            let rate = bar_rate.observe(now, count);
            if let Some(total) = total
                && bar.length() != Some(total)
            {
                bar.set_length(total);
                bar.set_style(bar_style());
            }
            bar.set_message(progress_line(
                task.verb,
                count,
                total,
                rate,
                eta(count, total, rate, left),
            ));
            bar.set_position(count);
            if finishing {
                bar.finish();
                set_active_bar(None);
                return;
            }
        } else if finishing {
            return;
        } else if now.duration_since(last_line.0) >= LINE_EVERY {
            let secs = now.duration_since(last_line.0).as_secs_f64();
            let rate = count.saturating_sub(last_line.1) as f64 / secs;
            let line = progress_line(task.verb, count, total, rate, eta(count, total, rate, left));
            tracing::info!("{line}");
            last_line = (now, count);
        }
        // Woken early by [`Reporter::finish`] (or spuriously, which only samples sooner).
        std::thread::park_timeout(SAMPLE_EVERY);
    }
}

/// Turns the raw samples into the count shown: from where the current plan started, and
/// never above the plan.
#[derive(Debug, Default)]
struct Counter {
    /// `done` when the current plan was set.
    base: u64,
    /// The plan of the previous sample (0: none).
    plan: u64,
    /// Whether a plan was ever seen (the first plan counts from 0: nothing is read before
    /// a run has planned).
    planned_before: bool,
}

impl Counter {
    /// `(count, total)` for a sample of `done` and `planned`.
    fn observe(&mut self, done: u64, planned: u64) -> (u64, Option<u64>) {
        if planned != 0 && self.plan == 0 {
            self.base = if self.planned_before { done } else { 0 };
            self.planned_before = true;
        }
        self.plan = planned;
        let count = done.saturating_sub(self.base);
        match planned {
            0 => (count, None),
            total => (count.min(total), Some(total)),
        }
    }
}

/// The rate of a count over a sliding span of samples.
#[derive(Debug)]
struct Rate {
    span: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn new(span: Duration) -> Rate {
        Rate {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample and returns the rate per second over the span (0 until two samples).
    fn observe(&mut self, at: Instant, count: u64) -> f64 {
        self.samples.push_back((at, count));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > self.span)
        {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some((t, c)) if at > *t => {
                count.saturating_sub(*c) as f64 / at.duration_since(*t).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The time left: what remains of `total` at `per_sec`, or else the time to the
/// deadline; `None` when neither is known (no total and no deadline, or no rate yet).
pub fn eta(
    done: u64,
    total: Option<u64>,
    per_sec: f64,
    until_deadline: Option<Duration>,
) -> Option<Duration> {
    match total {
        Some(total) if per_sec > 0.0 => Some(Duration::from_secs_f64(
            total.saturating_sub(done) as f64 / per_sec,
        )),
        Some(_) => None,
        None => until_deadline,
    }
}

/// One progress line: `read 120000/500000 records (24%), 41000/s, eta 9s`; without a
/// total `sent 120000 records, 41000/s` (plus `, eta 9s` when the ETA is known).
pub fn progress_line(
    verb: &str,
    done: u64,
    total: Option<u64>,
    per_sec: f64,
    eta: Option<Duration>,
) -> String {
    let mut line = match total {
        Some(total) => {
            let percent = (u128::from(done) * 100)
                .checked_div(u128::from(total))
                .unwrap_or(100);
            format!("{verb} {done}/{total} records ({percent}%)")
        }
        None => format!("{verb} {done} records"),
    };
    line.push_str(&format!(", {per_sec:.0}/s"));
    if let Some(eta) = eta {
        line.push_str(", eta ");
        line.push_str(&format_eta(eta));
    }
    line
}

/// `9s`, `2m05s`, `1h02m` (seconds rounded up: an ETA of 0.2 s reads `1s`, not `0s`).
pub fn format_eta(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed}] [{wide_bar}] {msg}")
        .expect("the bar template is valid")
        .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
        .expect("the spinner template is valid")
}

/// The bar being drawn, if any, for [`log_writer`].
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn set_active_bar(bar: Option<ProgressBar>) {
    if let Ok(mut active) = ACTIVE_BAR.lock() {
        *active = bar;
    }
}

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR.lock().ok().and_then(|bar| bar.clone())
}

/// Stderr for log lines: while a progress bar is drawn, each line is written with the bar
/// cleared, and the bar is redrawn below it. Use as
/// `tracing_subscriber::fmt().with_writer(waterline::progress_bar::log_writer)`.
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// The writer [`log_writer`] makes.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match active_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // One log line, one suspension of the bar.
        match active_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_with_a_total_has_the_percentage_rate_and_eta() {
        assert_eq!(
            progress_line(
                "read",
                120_000,
                Some(500_000),
                41_000.0,
                Some(Duration::from_secs(9))
            ),
            "read 120000/500000 records (24%), 41000/s, eta 9s"
        );
    }

    #[test]
    fn a_line_without_a_total_has_no_percentage() {
        assert_eq!(
            progress_line("sent", 120_000, None, 999.6, None),
            "sent 120000 records, 1000/s"
        );
        assert_eq!(
            progress_line("sent", 7, None, 0.0, Some(Duration::from_secs(125))),
            "sent 7 records, 0/s, eta 2m05s"
        );
    }

    #[test]
    fn percentages_round_down_and_an_empty_plan_is_complete() {
        assert_eq!(
            progress_line("read", 999, Some(1000), 1.0, None),
            "read 999/1000 records (99%), 1/s"
        );
        assert_eq!(
            progress_line("read", 0, Some(0), 0.0, None),
            "read 0/0 records (100%), 0/s"
        );
        // No overflow near u64::MAX.
        assert_eq!(
            progress_line("read", u64::MAX / 2, Some(u64::MAX), 0.0, None),
            format!("read {}/{} records (49%), 0/s", u64::MAX / 2, u64::MAX)
        );
    }

    #[test]
    fn eta_formats_seconds_minutes_and_hours() {
        assert_eq!(format_eta(Duration::ZERO), "0s");
        assert_eq!(format_eta(Duration::from_millis(200)), "1s");
        assert_eq!(format_eta(Duration::from_secs(59)), "59s");
        assert_eq!(format_eta(Duration::from_secs(60)), "1m00s");
        assert_eq!(format_eta(Duration::from_secs(3599)), "59m59s");
        assert_eq!(format_eta(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn eta_comes_from_the_rate_with_a_total_and_from_the_deadline_without() {
        // 380000 left at 40000/s: 9.5 s.
        assert_eq!(
            eta(120_000, Some(500_000), 40_000.0, None),
            Some(Duration::from_millis(9500))
        );
        assert_eq!(eta(120_000, Some(500_000), 0.0, None), None);
        let left = Duration::from_secs(30);
        assert_eq!(eta(5, None, 10.0, Some(left)), Some(left));
        assert_eq!(eta(5, None, 10.0, None), None);
    }

    #[test]
    fn the_count_starts_over_when_a_restarted_run_plans_again() {
        let mut c = Counter::default();
        assert_eq!(c.observe(0, 0), (0, None));
        assert_eq!(c.observe(40, 100), (40, Some(100)));
        // The run failed at 70 read; the restart plans the 60 left from its last commit.
        assert_eq!(c.observe(70, 0), (70, None));
        assert_eq!(c.observe(70, 60), (0, Some(60)));
        assert_eq!(c.observe(100, 60), (30, Some(60)));
        // Never above the plan.
        assert_eq!(c.observe(200, 60), (60, Some(60)));
    }

    #[test]
    fn the_rate_is_over_the_last_span() {
        let t0 = Instant::now();
        let mut r = Rate::new(Duration::from_secs(5));
        assert_eq!(r.observe(t0, 0), 0.0);
        assert_eq!(r.observe(t0 + Duration::from_secs(1), 100), 100.0);
        // 2 s later at 1000 more per second; the first sample is still inside the span.
        assert_eq!(r.observe(t0 + Duration::from_secs(3), 2100), 700.0);
        // Every earlier sample is more than 5 s old: no span left to measure over.
        assert_eq!(r.observe(t0 + Duration::from_secs(9), 2100), 0.0);
        assert_eq!(r.observe(t0 + Duration::from_secs(10), 2600), 500.0);
    }
}
