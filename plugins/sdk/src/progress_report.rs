//! Progress of long work for the person waiting on it (`replay` of a big dead-letter file, `query`
//! over a large lake, the Webex backfill): a bar with the count, rate and ETA on a terminal, and
//! with no terminal one plain line every few seconds (`TRIBUTARY_PROGRESS_EVERY`, default `5s`),
//! so a log or a pipe still shows the work moving. Both go to stderr; stdout keeps the results.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the plain lines come by default.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);

/// Every bar of the process, drawn together at the bottom of the terminal; log lines are printed
/// above them (`above_bars`), so a bar in `run` (the Webex backfill) and its log do not tear each
/// other.
static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();

/// Run `write` (a line to stderr) with the bars lifted, so the line lands above them.
pub fn above_bars<R>(write: impl FnOnce() -> R) -> R {
    match BARS.get() {
        Some(bars) => bars.suspend(write),
        None => write(),
    }
}

/// A bar for `what` counted in `unit` (a spinner when `total` is 0), among the process's bars.
fn bar(what: &str, unit: &str, total: u64) -> indicatif::ProgressBar {
    let bar = if total > 0 { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::no_length() };
    let template = if total > 0 {
        format!("{what} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{percent}}%), {{per_sec}}, ETA {{eta}}")
    } else {
        format!("{what} {{spinner}} {{human_pos}} {unit}, {{per_sec}}, {{elapsed}}")
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    let bar = BARS.get_or_init(indicatif::MultiProgress::new).add(bar);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// One piece of long work being counted. See the module docs.
pub struct ProgressReport {
    what: String,
    unit: &'static str,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    shown: Shown,
}

enum Shown {
    Bar(indicatif::ProgressBar),
    /// Plain lines to stderr, at most one per `every`.
    Lines {
        every: Duration,
        last: Mutex<Instant>,
    },
    /// Lines handed to a function instead (a source inside `run`, whose stderr is the log).
    Log {
        every: Duration,
        last: Mutex<Instant>,
        log: Box<dyn Fn(&str) + Send + Sync>,
    },
}

impl ProgressReport {
    /// `what` (`replay`), counted in `unit` (`letters`), out of `total` when known (0: unknown).
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new(what: &str, unit: &'static str, total: u64) -> Self {
        let shown = if std::io::stderr().is_terminal() {
            Shown::Bar(bar(what, unit, total))
        } else {
            Shown::Lines { every: every_from_env(), last: Mutex::new(Instant::now()) }
        };
        Self::with(what, unit, total, shown)
    }

    /// For work inside `run`, whose stderr is the log: a bar on a terminal (the log lines print
    /// above it, through the process's log writer calling [`above_bars`]), otherwise lines every
    /// few seconds through `log`.
    pub fn logged(what: &str, unit: &'static str, total: u64, log: impl Fn(&str) + Send + Sync + 'static) -> Self {
        let shown = if std::io::stderr().is_terminal() {
            Shown::Bar(bar(what, unit, total))
        } else {
            Shown::Log { every: every_from_env(), last: Mutex::new(Instant::now()), log: Box::new(log) }
        };
        Self::with(what, unit, total, shown)
    }

    fn with(what: &str, unit: &'static str, total: u64, shown: Shown) -> Self {
        ProgressReport {
            what: what.to_string(),
            unit,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
            shown,
        }
    }

    /// `n` more done.
    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.show(done, false);
    }

    /// `done` done in all (for work measured from outside, such as a query's rows read).
    pub fn set(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.show(done, false);
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Shown::Bar(bar) = &self.shown {
            bar.set_length(total);
        }
    }

    /// The work ended: the bar is cleared, or a last line says how much took how long.
    pub fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed);
        self.show(done, true);
    }

    fn show(&self, done: u64, last: bool) {
        let due = |every: &Duration, at: &Mutex<Instant>| {
            let mut at = at.lock().unwrap_or_else(|e| e.into_inner());
            let due = last || at.elapsed() >= *every;
            if due {
                *at = Instant::now();
            }
            due
        };
        let line = || line(&self.what, self.unit, done, self.total.load(Ordering::Relaxed), self.started.elapsed(), last);
        match &self.shown {
            Shown::Bar(bar) if last => bar.finish_and_clear(),
            Shown::Bar(bar) => bar.set_position(done),
            Shown::Lines { every, last: at } => {
                if due(every, at) {
                    eprintln!("{}", line());
                }
            }
            Shown::Log { every, last: at, log } => {
                if due(every, at) {
                    log(&line());
                }
            }
        }
    }
}

impl Drop for ProgressReport {
    fn drop(&mut self) {
        if let Shown::Bar(bar) = &self.shown {
            bar.finish_and_clear();
        }
    }
}

/// `TRIBUTARY_PROGRESS_EVERY` (a duration such as `5s` or `100ms`), else [`DEFAULT_EVERY`].
fn every_from_env() -> Duration {
    std::env::var("TRIBUTARY_PROGRESS_EVERY").ok().and_then(|v| humantime::parse_duration(&v).ok()).unwrap_or(DEFAULT_EVERY)
}

/// The plain line: `replay: 4,000 of 10,000 letters (40%), 2,000 letters/s, ETA 3s`, or at the
/// end `replay: 10,000 letters in 5.0s (2,000 letters/s)`.
pub fn line(what: &str, unit: &str, done: u64, total: u64, elapsed: Duration, finished: bool) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    if finished {
        return format!("{what}: {} {unit} in {secs:.1}s ({} {unit}/s)", grouped(done), grouped(rate.round() as u64));
    }
    let mut out = format!("{what}: {}", grouped(done));
    if total > 0 {
        out.push_str(&format!(" of {} {unit} ({}%)", grouped(total), done.saturating_mul(100) / total));
    } else {
        out.push_str(&format!(" {unit}"));
    }
    out.push_str(&format!(", {} {unit}/s", grouped(rate.round() as u64)));
    if total > done && rate > 0.0 {
        out.push_str(&format!(", ETA {}s", ((total - done) as f64 / rate).ceil() as u64));
    }
    out
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_line_gives_the_count_share_rate_and_eta() {
        let s = Duration::from_secs;
        assert_eq!(line("replay", "letters", 4_000, 10_000, s(2), false), "replay: 4,000 of 10,000 letters (40%), 2,000 letters/s, ETA 3s");
        assert_eq!(line("query", "rows", 1_234_567, 0, s(1), false), "query: 1,234,567 rows, 1,234,567 rows/s");
        assert_eq!(line("replay", "letters", 10_000, 10_000, s(5), true), "replay: 10,000 letters in 5.0s (2,000 letters/s)");
        assert_eq!(line("replay", "letters", 0, 10, Duration::ZERO, false), "replay: 0 of 10 letters (0%), 0 letters/s");
    }

    #[test]
    fn logged_progress_comes_at_most_once_per_period_and_always_at_the_end() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let p = ProgressReport::with(
            "backfill",
            "minutes",
            60,
            Shown::Log {
                every: Duration::from_secs(3600),
                last: Mutex::new(Instant::now()),
                log: Box::new(move |l| sink.lock().unwrap().push(l.to_string())),
            },
        );
        p.add(10);
        p.add(20);
        assert!(lines.lock().unwrap().is_empty(), "nothing before the period");
        p.finish();
        let got = lines.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("backfill: 30 minutes in "), "{got:?}");
    }
}
