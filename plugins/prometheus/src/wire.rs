//! The remote-write 1.0 wire format: a `prometheus.WriteRequest` protobuf (only the fields 1.0
//! senders fill), compressed with snappy's block format.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// One series: its labels sorted by name, `__name__` among them, and its samples in time order.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

impl WriteRequest {
    /// The request body: the protobuf, snappy-compressed (block format, as the spec requires).
    pub fn body(&self) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(&self.encode_to_vec()).unwrap_or_else(|e| unreachable!("snappy takes any input: {e}"))
    }

    /// Decodes a body (what a receiver does): for tests and the peer benchmark.
    pub fn from_body(body: &[u8]) -> Result<WriteRequest, String> {
        let raw = snap::raw::Decoder::new().decompress_vec(body).map_err(|e| format!("snappy: {e}"))?;
        WriteRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))
    }
}

/// Prometheus' metric name rule: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prometheus' label name rule: `[a-zA-Z_][a-zA-Z0-9_]*`; `__` prefixes are reserved.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}
