//! Reporting a component's errors from one place (Vector's `internal_events` idea): one statement
//! both counts the error in the component's `errors` (what `/metrics` and the run summary show)
//! and logs why, so no counted error goes unexplained and no logged one goes uncounted.

/// Count errors on a [`ComponentMetrics`](crate::ComponentMetrics) and log the event, in one
/// statement. The level is a `tracing` macro name; the rest is what that macro takes. With
/// `count = N` first, `errors` grows by N and the line carries `errors = N`; otherwise by one.
///
/// ```
/// # let metrics = tributary_sdk::ComponentMetrics::default();
/// # let (id, e) = ("badges", "connection reset");
/// tributary_sdk::report_error!(metrics, warn, source = %id, error = %e, "XACK failed; the entries will be delivered again");
/// tributary_sdk::report_error!(metrics, warn, count = 3, source = %id, first_reason = "not JSON", "undecodable badge events");
/// assert_eq!(metrics.errors.get(), 4);
/// ```
#[macro_export]
macro_rules! report_error {
    ($metrics:expr, $level:ident, count = $n:expr, $($log:tt)+) => {{
        let n = ($n) as u64;
        $metrics.errors.add(n);
        $crate::tracing::$level!(errors = n, $($log)+);
    }};
    ($metrics:expr, $level:ident, $($log:tt)+) => {{
        $metrics.errors.inc();
        $crate::tracing::$level!($($log)+);
    }};
}
