//! The last steps' outputs of one event, kept for a caller waiting on them (an HTTP
//! request answered with the thumbnail it uploaded). Most events keep none: their
//! outputs are written by their steps and dropped as they come.

use std::sync::Mutex;

use weir_functions::{Item, Payload};

/// Payload bytes kept in all; past this, later outputs keep their metadata only (and
/// [`Kept::cut`] says so), so a fan-out of thousands cannot pile up in memory.
pub const MAX_KEPT_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct Outputs(Mutex<Kept>);

/// What an event's last steps produced, in the order they finished.
#[derive(Default, Clone)]
pub struct Kept {
    pub items: Vec<Item>,
    bytes: usize,
    /// Outputs whose payload was dropped for [`MAX_KEPT_BYTES`].
    pub cut: usize,
}

impl Outputs {
    /// Keeps `items`, which a step with no step after it returned.
    pub fn keep(&self, items: &[Item]) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for item in items {
            let size = weight(&item.payload);
            if kept.bytes + size > MAX_KEPT_BYTES {
                kept.cut += 1;
                kept.items.push(Item::new(Payload::Empty, item.meta.clone()));
            } else {
                kept.bytes += size;
                kept.items.push(item.clone());
            }
        }
    }

    /// Everything kept so far, emptying the store (a retried event starts afresh).
    pub fn take(&self) -> Kept {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// About how much memory a payload holds.
fn weight(payload: &Payload) -> usize {
    match payload {
        Payload::Empty => 0,
        Payload::Bytes(b) => b.len(),
        Payload::Image(image) => image.as_bytes().len(),
        // Serialized size is a fair guess at what a value costs, and bounded by the caller.
        Payload::Json(value) => value.to_string().len(),
        Payload::Collection(items) => items.iter().map(|i| weight(&i.payload)).sum(),
    }
}
