//! What an invocation can reach besides its item.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::{LazyEvent, Stores, TriggerEvent};

/// Per-invocation context. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// Object stores by URL, shared by every step so connections are reused.
    pub stores: Stores,
    /// Cancelled when the invocation times out or the engine stops without draining.
    /// Long loops should check it; CPU work checks `deadline` between stages.
    pub cancel: CancellationToken,
    pub deadline: Instant,
    pub pipeline: Arc<str>,
    pub step: Arc<str>,
    /// 1 for the first try.
    pub attempt: u32,
    /// The pipeline's `[limits]` that functions enforce themselves (pixels from headers).
    pub limits: Limits,
    /// The invocation's span (pipeline, step, key): events a function logs inside it
    /// carry those fields. The executor already runs `invoke` inside it.
    pub span: tracing::Span,
    /// The trigger's event in AWS Lambda's shape (an S3 event for bucket triggers),
    /// for functions that want more than the item's metadata; read it with
    /// [`Context::event`]. None for `weir invoke`.
    pub event: Option<LazyEvent>,
}

/// Input limits from the pipeline's `[limits]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest input object, checked from its size before it is downloaded.
    pub max_input_bytes: u64,
    /// Largest decoded image (width × height), checked from the header before pixels
    /// are allocated, so a decompression bomb is refused cheaply.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_input_bytes: 64 << 20, max_pixels: 100_000_000 }
    }
}

impl Context {
    /// A context for one-off runs (`weir invoke`, tests): no pipeline, a generous deadline.
    pub fn standalone(stores: Stores) -> Self {
        Self {
            stores,
            cancel: CancellationToken::new(),
            deadline: Instant::now() + std::time::Duration::from_secs(3600),
            pipeline: Arc::from("invoke"),
            step: Arc::from("invoke"),
            attempt: 1,
            limits: Limits::default(),
            span: tracing::Span::none(),
            event: None,
        }
    }

    /// The trigger's event in AWS Lambda's shape, built on first use.
    pub fn event(&self) -> Option<&TriggerEvent> {
        self.event.as_ref().map(LazyEvent::get)
    }

    /// True when the work should stop: deadline passed or cancelled.
    pub fn expired(&self) -> bool {
        self.cancel.is_cancelled() || Instant::now() >= self.deadline
    }
}
