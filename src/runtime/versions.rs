//! A running transform's or sink's next version, handed over by a reload (see `reload.rs`): when
//! it takes over, at once, at the first batch with its new columns, or once the old channel closed.
//! Apart from `reload.rs` so the tasks that switch versions (`sink.rs`, `windowed.rs`) need
//! nothing else of it.

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;
use tributary_sdk::{Delivery, Sink};

use crate::graph::{ExactlyOnce, SinkRetry};

/// A new version of a sink: the plugin, the engine's retry settings and its delivery.
pub(crate) type NewSink = NewVersion<SinkVersion>;

/// What a sink's task runs: the plugin, with the engine's settings for it.
pub(crate) struct SinkVersion {
    pub sink: Box<dyn Sink>,
    pub retry: SinkRetry,
    pub exactly_once: Option<ExactlyOnce>,
}

/// A new version of a transform or sink, with the columns of those of its inputs that change.
pub(crate) struct NewVersion<T> {
    pub component: T,
    /// Per input (in `inputs:` order): the new columns, where the reload changes them.
    pub changed_inputs: Vec<Option<SchemaRef>>,
    /// Set when the component's `inputs:` changed: its new channel. The old version handles what
    /// comes through the old channel until the producers, rewired, have all let go of it.
    pub channel: Option<mpsc::Receiver<Delivery>>,
    /// Told once the component has counted what is queued for the old version: the reload is
    /// recorded (`/health`'s generation) only then, so a row sent after it never counts as queued
    /// before it. Dropped untold by a task that does not count (the reload waits no longer).
    pub taken: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The new versions a running component has been handed and not yet switched to: one waiting for
/// its first batch with the new columns (batches sent before the producer switched carry the old
/// ones and go to the old version), or one waiting for the old channel to close (rewired).
pub(crate) struct Versions<T> {
    upcoming: Option<NewVersion<T>>,
    rewired: Option<(T, mpsc::Receiver<Delivery>)>,
}

impl<T> Default for Versions<T> {
    fn default() -> Self {
        Versions { upcoming: None, rewired: None }
    }
}

impl<T> Versions<T> {
    /// A new version arrived (superseding any waiting one). Returned when it takes over now, once
    /// the component has handled what is queued; otherwise it waits, and `what` says what for.
    pub fn arrive(&mut self, new: NewVersion<T>, what: &str) -> Option<T> {
        self.upcoming = None;
        match new.channel {
            Some(rx) => {
                self.rewired = Some((new.component, rx));
                tracing::info!(component = %what, "reloaded: the new version takes over once the old inputs let go");
                None
            }
            None if new.changed_inputs.iter().all(Option::is_none) => Some(new.component),
            None => {
                tracing::info!(component = %what, "reloaded: the new version takes over at the first batch with the new columns");
                self.upcoming = Some(new);
                None
            }
        }
    }

    /// The waiting version, when `batch` (from input `input`) is the first with its columns.
    pub fn due(&mut self, input: usize, batch: &RecordBatch) -> Option<T> {
        let new = self.upcoming.as_ref()?;
        let expected = new.changed_inputs.get(input)?.as_ref()?;
        same_columns(expected, &batch.schema()).then(|| self.upcoming.take().expect("checked").component)
    }

    /// The old channel closed: the rewired version and the channel it reads, if there is one.
    pub fn rewired(&mut self) -> Option<(T, mpsc::Receiver<Delivery>)> {
        self.rewired.take()
    }
}

/// Same names and types in the same order (nullability and metadata aside: a plan's declared
/// schema and the batches it makes can differ there).
fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_version_takes_over_at_the_first_batch_with_its_columns() {
        use datafusion::arrow::array::{ArrayRef, Int64Array};
        use datafusion::arrow::datatypes::{DataType, Field};
        let batch = |names: &[&str]| {
            let fields: Vec<Field> = names.iter().map(|n| Field::new(*n, DataType::Int64, true)).collect();
            let columns: Vec<ArrayRef> = names.iter().map(|_| std::sync::Arc::new(Int64Array::from(vec![1])) as ArrayRef).collect();
            RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns).unwrap()
        };
        let new_columns = batch(&["id"]).schema();
        let mut versions = Versions::default();
        assert_eq!(
            versions.arrive(NewVersion { component: "v2", changed_inputs: vec![None, Some(new_columns)], channel: None, taken: None }, "t"),
            None
        );
        assert_eq!(versions.due(1, &batch(&["id", "score"])), None, "still the old columns");
        assert_eq!(versions.due(0, &batch(&["id"])), None, "an input whose columns did not change");
        assert_eq!(versions.due(1, &batch(&["id"])), Some("v2"));
        assert_eq!(versions.due(1, &batch(&["id"])), None, "taken over once");
        let now = NewVersion { component: "v3", changed_inputs: vec![None, None], channel: None, taken: None };
        assert_eq!(versions.arrive(now, "t"), Some("v3"), "same columns: takes over now");
    }
}
