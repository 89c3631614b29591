//! Exactly once for the backfill: each organisation's backfill is a stream of positions.
//!
//! - The stream is `<source>/<organisation>`; its epoch is a fingerprint of the backfill's target
//!   (the oldest time it reads back to, fixed in `state_file` when the organisation is first
//!   seen), so a backfill started afresh is not taken for the old one.
//! - The backfill reads back in time, so a window's position counts the seconds from its start to
//!   a fixed point in the future (2100-01-01): a window further back has a higher position, and a
//!   sink that stored one has every window from there to the present.
//! - When the source meets an organisation it asks the exactly-once sinks where they stopped in
//!   its backfill, and a window never spans one of those points: after a restart, each sink drops
//!   the windows it wrote whole and writes the others. The windows are read from the API again
//!   either way (from `state_file`'s progress, which trails every sink), so an at-least-once sink
//!   on the same source still gets them.
//!
//! The live poll's rows carry no position: they are in memory only, as without exactly once.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tributary_sdk::{Position, SourceContext};

use crate::time::id_key;

/// 2100-01-01T00:00:00Z: positions count seconds back from it.
const ANCHOR: i64 = 4_102_444_800;

/// The stream of `org`'s backfill.
pub(crate) fn stream(source: &str, org: &str) -> Arc<str> {
    format!("{source}/{}", id_key(org)).into()
}

fn epoch(target: DateTime<Utc>) -> u64 {
    tributary_sdk::position::fnv1a(target.to_rfc3339().as_bytes())
}

/// The position of the backfill window starting at `start`.
pub(crate) fn position(source: &str, org: &str, target: DateTime<Utc>, start: DateTime<Utc>) -> Position {
    Position { stream: stream(source, org), epoch: epoch(target), seq: (ANCHOR - start.timestamp()).max(0) as u64 }
}

/// Where the exactly-once sinks stopped in `org`'s backfill (toward `target`), as window starts,
/// newest first.
pub(crate) async fn sinks_stopped_at(ctx: &SourceContext, org: &str, target: DateTime<Utc>) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let stream = stream(&ctx.id, org);
    let written = ctx.sink_positions.written(std::slice::from_ref(&stream)).await?;
    let mut starts: Vec<DateTime<Utc>> = written
        .iter()
        .filter_map(|w| w.seq_in(&stream, epoch(target)))
        .filter_map(|seq| DateTime::from_timestamp(ANCHOR - seq as i64, 0))
        .collect();
    starts.sort_unstable_by(|a, b| b.cmp(a));
    starts.dedup();
    Ok(starts)
}

/// The window `[from, to)`, ended early so that no sink's stopping point falls inside it.
pub(crate) fn cut(from: DateTime<Utc>, to: DateTime<Utc>, stops: &[DateTime<Utc>]) -> DateTime<Utc> {
    stops.iter().copied().filter(|s| *s > from && *s < to).max().unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_window_further_back_has_a_higher_position_and_a_new_target_a_new_epoch() {
        let target = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        let day = |d| Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap();
        let (newer, older) = (position("mesh", "ORG==", target, day(20)), position("mesh", "ORG", target, day(14)));
        assert_eq!(&*newer.stream, "mesh/ORG", "the organisation's id without its padding");
        assert_eq!(newer.seq + 6 * 86_400, older.seq);
        assert_eq!(newer.epoch, older.epoch);
        assert_ne!(position("mesh", "ORG", day(1), day(20)).epoch, newer.epoch);
    }

    #[test]
    fn a_window_ends_at_the_newest_stop_inside_it() {
        let day = |d| Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap();
        let stops = [day(18), day(16), day(10)];
        assert_eq!(cut(day(14), day(20), &stops), day(18), "the window becomes [18th, 20th)");
        assert_eq!(cut(day(14), day(18), &stops), day(16));
        assert_eq!(cut(day(10), day(16), &stops), day(10), "a stop at the window's own start cuts nothing");
        assert_eq!(cut(day(1), day(10), &stops), day(1));
    }
}
