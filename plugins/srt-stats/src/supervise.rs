//! `mode: sessions`: run srt-live-transmit per configured session, read its statistics and
//! connection messages, and restart it (with backoff) whenever it exits.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tributary_sdk::retry::Backoff;
use tributary_sdk::{now_us, CancellationToken, ComponentMetrics};

use crate::config::{SessionConfig, SessionsMode};
use crate::lines::{LineSplitter, Piece};
use crate::parse::redact_passphrase;
use crate::session::{Emitted, SessionTracker};
use crate::{LineErrors, MAX_LINE};

/// A run at least this long counts as healthy: the next restart starts from the initial delay.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long a stopped child gets to exit after SIGINT before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

pub struct Supervisor {
    pub source_id: String,
    pub session: SessionConfig,
    pub program: String,
    pub report_every_packets: u32,
    pub cumulative: bool,
    pub backoff: Backoff,
    pub rows: mpsc::Sender<Emitted>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<ComponentMetrics>,
}

impl Supervisor {
    pub fn from_config(
        source_id: &str,
        cfg: &SessionsMode,
        session: &SessionConfig,
        rows: mpsc::Sender<Emitted>,
        shutdown: CancellationToken,
        metrics: Arc<ComponentMetrics>,
    ) -> Self {
        Supervisor {
            source_id: source_id.to_string(),
            session: session.clone(),
            program: cfg.program.clone(),
            report_every_packets: cfg.report_every_packets,
            cumulative: cfg.cumulative,
            backoff: Backoff { initial: cfg.restart_initial.0, max: cfg.restart_max.0, max_attempts: None },
            rows,
            shutdown,
            metrics,
        }
    }

    pub async fn run(self) {
        let name = self.session.name.clone();
        let mut tracker = SessionTracker::new(name.as_str(), Some(self.session.role), self.cumulative);
        let mut errors = LineErrors::new(&self.source_id, &name);
        let command = self.session.display_command(&self.program, self.report_every_packets, self.cumulative);
        let mut failures = 0u32;
        while !self.shutdown.is_cancelled() {
            let started = Instant::now();
            let mut child = match Command::new(&self.program)
                .args(self.session.args(self.report_every_packets, self.cumulative))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    failures += 1;
                    let delay = self.backoff.delay(failures);
                    tributary_sdk::report_error!(self.metrics, error, source = %self.source_id, session = %name, program = %self.program, error = %e, retry_in = ?delay, "cannot start srt-live-transmit");
                    self.metrics.retries.inc();
                    tokio::select! { _ = self.shutdown.cancelled() => break, _ = tokio::time::sleep(delay) => continue }
                }
            };
            tracing::info!(source = %self.source_id, session = %name, pid = child.id(), command = %command, "session started");
            let mut out = Emitted::default();
            let pid = child.id().unwrap_or_default();
            tracker.started(now_us(), format!("started (pid {pid}): {command}"), &mut out);
            if self.rows.send(out).await.is_err() {
                break;
            }
            let status = self.follow(&mut child, &mut tracker, &mut errors).await;
            let mut out = Emitted::default();
            tracker.exited(now_us(), redact_passphrase(&status), &mut out);
            let _ = self.rows.send(out).await;
            if self.shutdown.is_cancelled() {
                break;
            }
            failures = if started.elapsed() >= HEALTHY_RUN { 1 } else { failures + 1 };
            let delay = self.backoff.delay(failures);
            self.metrics.retries.inc();
            tracing::warn!(source = %self.source_id, session = %name, status = %status, restart_in = ?delay, "session exited; restarting");
            tokio::select! { _ = self.shutdown.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
        }
    }

    /// Read both pipes until the child exits (or shutdown stops it); the exit status as text.
    async fn follow(&self, child: &mut Child, tracker: &mut SessionTracker, errors: &mut LineErrors) -> String {
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (mut out_lines, mut err_lines) = (LineSplitter::new(MAX_LINE), LineSplitter::new(MAX_LINE));
        let (mut out_buf, mut err_buf) = (vec![0u8; 16 * 1024], vec![0u8; 4 * 1024]);
        let (mut out_open, mut err_open) = (true, true);
        let mut stopping = false;
        while out_open || err_open {
            let mut emitted = Emitted::default();
            tokio::select! {
                _ = self.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    stop(child).await;
                }
                n = stdout.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => {
                        out_open = false;
                        out_lines.finish(|p| feed(tracker, errors, &self.metrics, p, &mut emitted));
                    }
                    Ok(n) => out_lines.push(&out_buf[..n], |p| feed(tracker, errors, &self.metrics, p, &mut emitted)),
                },
                n = stderr.read(&mut err_buf), if err_open => match n {
                    Ok(0) | Err(_) => {
                        err_open = false;
                        err_lines.finish(|p| feed(tracker, errors, &self.metrics, p, &mut emitted));
                    }
                    Ok(n) => err_lines.push(&err_buf[..n], |p| feed(tracker, errors, &self.metrics, p, &mut emitted)),
                },
            }
            if !emitted.is_empty() && self.rows.send(emitted).await.is_err() {
                stop(child).await;
                break;
            }
        }
        match child.wait().await {
            Ok(status) if stopping => format!("stopped ({status})"),
            Ok(status) => format!("exited ({status})"),
            Err(e) => format!("lost the process: {e}"),
        }
    }
}

/// One line of output into the tracker; garbage is counted and skipped.
pub(crate) fn feed(tracker: &mut SessionTracker, errors: &mut LineErrors, metrics: &ComponentMetrics, piece: Piece<'_>, out: &mut Emitted) {
    let result = match piece {
        Piece::Line(line) => {
            metrics.bytes_in.add(line.len() as u64 + 1);
            tracker.line(line, now_us(), out)
        }
        Piece::TooLong(n) => Err(crate::parse::ParseError(format!("a line longer than {MAX_LINE} bytes ({n} so far) was skipped"))),
    };
    if let Err(e) = result {
        errors.report(metrics, &e);
    }
}

/// SIGINT first (srt-live-transmit then tells its peer at once), SIGKILL after a grace period.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGINT);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
