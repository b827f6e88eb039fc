//! `kind = "sequence"`: a trigger that emits `count` numbered events, one every
//! `every` — small enough to read in a few minutes, and complete: it validates its
//! table with positions, records each event in the ledger (so a restart delivers the
//! unfinished ones again and never the finished ones), hands functions a JSON item,
//! revives its dead letters and replays its history.
//!
//! This file is the whole trigger: one folder (here, one file) and one line,
//! `triggers.register::<SequenceKind>()`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use weir_engine::config::diagnostics::Reporter;
use weir_engine::config::units::HumanDuration;
use weir_engine::error::EngineError;
use weir_engine::event::{Event, EventSink, LedgerAck, LedgerEntry, Ran, Runner, Scope, Work};
use weir_engine::trigger::{
    History, HistoryContext, HistoryItem, Trigger, TriggerContext, TriggerKind, TriggerSpec, Window,
};
use weir_functions::{Item, Metadata, Payload};

/// The ledger's "bucket" for sequence numbers.
const LEDGER_URL: &str = "sequence:";

/// `kind = "sequence"`.
pub struct SequenceKind;

/// The table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSequence {
    count: toml::Spanned<u64>,
    #[serde(default)]
    every: Option<HumanDuration>,
}

/// The table once valid.
#[derive(Clone)]
pub struct SequenceConfig {
    pub count: u64,
    pub every: Duration,
}

impl TriggerKind for SequenceKind {
    const NAME: &'static str = "sequence";
    type Raw = RawSequence;
    type Config = SequenceConfig;

    fn validate(raw: RawSequence, report: &mut Reporter<'_>) -> Option<SequenceConfig> {
        if *raw.count.get_ref() == 0 {
            report.error(raw.count.span(), "count must be at least 1");
            return None;
        }
        Some(SequenceConfig { count: *raw.count.get_ref(), every: raw.every.map(|d| d.0).unwrap_or_default() })
    }
}

impl TriggerSpec for SequenceConfig {
    fn kind(&self) -> &'static str {
        SequenceKind::NAME
    }

    fn build(&self, ctx: TriggerContext) -> Arc<dyn Trigger> {
        Arc::new(SequenceTrigger { config: self.clone(), ctx })
    }

    fn revive(&self, record: &serde_json::Value) -> Result<Arc<dyn Work>, String> {
        let work: Numbered =
            serde_json::from_value(record.clone()).map_err(|e| format!("not a sequence event: {e}"))?;
        Ok(Arc::new(work))
    }

    fn history(&self, _ctx: &HistoryContext, _window: &Window) -> Result<Box<dyn History>, EngineError> {
        Ok(Box::new(Replay { next: 0, count: self.count }))
    }
}

/// One number: the event. Its dead-letter record is `{"type": "sequence", "n": 3}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename = "sequence")]
pub struct Numbered {
    pub n: u64,
}

#[async_trait::async_trait]
impl Work for Numbered {
    fn describe(&self) -> String {
        format!("#{}", self.n)
    }

    fn record(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn ledger_entry(&self) -> Option<LedgerEntry> {
        Some(LedgerEntry { url: LEDGER_URL.into(), key: format!("{:08}", self.n), version: String::new() })
    }

    async fn run(&self, runner: &dyn Runner, _event: &Event) -> Ran {
        let mut meta = Metadata { key: Some(format!("seq/{:08}", self.n)), ..Metadata::default() };
        meta.attributes.insert("n".into(), self.n.to_string());
        let item = Item::new(Payload::Json(serde_json::json!({ "n": self.n })), meta);
        runner.run(item, None, &Scope::new(None, false)).await.into()
    }
}

struct SequenceTrigger {
    config: SequenceConfig,
    ctx: TriggerContext,
}

#[async_trait::async_trait]
impl Trigger for SequenceTrigger {
    async fn run(self: Arc<Self>, sink: EventSink, stop: CancellationToken) -> Result<(), EngineError> {
        let (ledger, pipeline) = (&self.ctx.ledger, &self.ctx.pipeline);
        for n in 0..self.config.count {
            let work = Numbered { n };
            let entry = work.ledger_entry().expect("numbered events have an entry");
            // Done or dead-lettered before: never again. Pending (unfinished): again.
            if ledger.object_seen(pipeline, &entry.url, &entry.key, &entry.version).await? {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.config.every) => {}
            }
            ledger
                .record_object(
                    pipeline,
                    &entry.url,
                    &entry.key,
                    &entry.version,
                    weir_engine::state::ObjectStatus::Pending,
                )
                .await?;
            let event = Event::new(pipeline.clone(), Arc::new(work), LedgerAck::new(ledger.clone(), None));
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                sent = sink.send(event) => if sent.is_err() { return Ok(()) },
            }
        }
        stop.cancelled().await;
        Ok(())
    }
}

/// `weir replay`: every number again, in chunks.
struct Replay {
    next: u64,
    count: u64,
}

#[async_trait::async_trait]
impl History for Replay {
    async fn next_chunk(&mut self) -> Result<Option<Vec<HistoryItem>>, EngineError> {
        if self.next >= self.count {
            return Ok(None);
        }
        let end = (self.next + 500).min(self.count);
        let chunk = (self.next..end)
            .filter_map(|n| {
                let work = Numbered { n };
                Some(HistoryItem { entry: work.ledger_entry()?, work: Arc::new(work) })
            })
            .collect();
        self.next = end;
        Ok(Some(chunk))
    }
}
