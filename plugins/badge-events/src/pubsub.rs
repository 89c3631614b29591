//! `mode: pubsub`: the API's channels, as published. Redis Pub/Sub keeps nothing: whatever is
//! published while we are disconnected is gone, so the reader reconnects with backoff and counts
//! the reconnects (`retries_total`).

use futures::StreamExt;
use tokio::sync::mpsc;
use tributary_sdk::{now_us, AckSet, Batcher, SourceContext};

use crate::config::PubsubConfig;
use crate::{Message, RECONNECT};

pub(crate) struct PubsubReader {
    pub id: String,
    pub cfg: PubsubConfig,
}

impl PubsubReader {
    fn client(&self) -> anyhow::Result<redis::Client> {
        Ok(redis::Client::open(self.cfg.url.expose())?)
    }

    /// Pub/Sub cannot push back: while the pipeline is busy, messages keep arriving. A reader
    /// drains Redis into a buffer of at most `max_buffered` messages (beyond it the newest are
    /// dropped and counted in `dropped_total`), so memory stays bounded; an emitter batches from
    /// the buffer and waits for the pipeline.
    pub async fn run(&self, ctx: &SourceContext) -> anyhow::Result<()> {
        let (buffer, buffered) = mpsc::channel::<Message>(self.cfg.max_buffered);
        let emitter = async {
            let mut batcher: Batcher<Message> = Batcher::new(buffered, self.cfg.batch_size, self.cfg.batch_wait.0);
            while let Some(messages) = batcher.next().await {
                crate::emit(&self.id, ctx, &messages, AckSet::none(), None).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        let reader = async move {
            let result = self.read_pubsub(ctx, &buffer).await;
            drop(buffer);
            result
        };
        tokio::try_join!(reader, emitter)?;
        Ok(())
    }

    async fn read_pubsub(&self, ctx: &SourceContext, buffer: &mpsc::Sender<Message>) -> anyhow::Result<()> {
        let client = self.client()?;
        let mut attempt = 0u32;
        while !ctx.shutdown.is_cancelled() {
            let mut pubsub = match client.get_async_pubsub().await {
                Ok(p) => p,
                Err(e) => {
                    attempt += 1;
                    ctx.metrics.retries.inc();
                    let d = RECONNECT.delay(attempt);
                    tracing::warn!(source = %self.id, error = %e, retry_in = ?d, "cannot reach Redis; messages published meanwhile are lost (Pub/Sub keeps nothing)");
                    tokio::select! { _ = ctx.shutdown.cancelled() => break, _ = tokio::time::sleep(d) => continue }
                }
            };
            for ch in &self.cfg.channels {
                pubsub.subscribe(ch).await?;
            }
            attempt = 0;
            tracing::info!(source = %self.id, channels = %self.cfg.channels.join(","), "subscribed");
            let mut messages = pubsub.on_message();
            let disconnected = loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break false,
                    m = messages.next() => match m {
                        None => break true,
                        Some(msg) => {
                            let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                            let message = Message { ts_us: now_us(), channel: msg.get_channel_name().to_string(), payload };
                            match buffer.try_send(message) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    ctx.metrics.dropped.inc();
                                    let dropped = ctx.metrics.dropped.get();
                                    if dropped == 1 || dropped.is_multiple_of(1000) {
                                        tracing::warn!(source = %self.id, dropped, max_buffered = self.cfg.max_buffered, "pipeline busy and the buffer full: dropping new Pub/Sub messages (counted in dropped_total; use mode: stream to keep them)");
                                    }
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => break false,
                            }
                        }
                    },
                }
            };
            if !disconnected {
                break;
            }
            tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, "Redis connection lost; resubscribing (messages published meanwhile are lost)");
        }
        Ok(())
    }
}
