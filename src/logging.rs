//! The process's log output: every line goes through [`tributary_sdk::redact::redact`] before it
//! reaches stderr, so a secret value or a URL's `user:password@` never appears in a log line,
//! whichever library's error text carried it.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;

/// A [`MakeWriter`] for stderr that redacts each formatted event.
pub struct RedactedStderr;

/// One event's text, written redacted to stderr when the formatter is done with it.
pub struct RedactedLine(Vec<u8>);

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedLine;
    fn make_writer(&'a self) -> RedactedLine {
        RedactedLine(Vec::with_capacity(256))
    }
}

impl Write for RedactedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let line = tributary_sdk::redact::redact(&text);
        // Above any progress bar (the Webex backfill's, on a terminal), not through it.
        let _ = tributary_sdk::progress_report::above_bars(|| std::io::stderr().lock().write_all(line.as_bytes()));
    }
}
