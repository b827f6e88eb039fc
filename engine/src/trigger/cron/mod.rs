//! `kind = "cron"`: events on a schedule, each carrying its *logical* time — the tick
//! it stands for, not the moment it ran — so a function can process "the hour that
//! just ended" even when the tick runs late, is caught up after downtime or replayed.
//!
//! Every tick is recorded in the ledger (as an item under [`LEDGER_URL`], keyed by its
//! logical time): *pending* when queued, *done* / *dead_letter* when finished,
//! *skipped* when `overlap = "skip"` dropped it. That record is what makes a restart
//! trustworthy: pending ticks are delivered again, and the newest recorded tick tells
//! which ticks were missed while weir was down (`catch_up`).

mod history;
pub mod schedule;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use toml::Spanned;

use serde::Serialize;
use weir_functions::{Item, LazyEvent, Metadata, Payload, TriggerEvent};

use super::{History, HistoryContext, Trigger, TriggerContext, TriggerKind, TriggerSpec, Window};
use crate::config::diagnostics::Reporter;
use crate::config::units::HumanDuration;
use crate::error::EngineError;
use crate::event::{Event, EventSink, LedgerAck, LedgerEntry, Ran, Runner, Scope, Work};
use crate::state::ObjectStatus;
pub use schedule::Schedule;

/// The ledger's "bucket" for ticks of a pipeline's schedule.
pub const LEDGER_URL: &str = "schedule:";

/// The `[trigger]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    schedule: Option<Spanned<String>>,
    #[serde(default)]
    every: Option<Spanned<String>>,
    #[serde(default)]
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default = "default_max_catch_up")]
    max_catch_up: Spanned<usize>,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default)]
    jitter: Option<HumanDuration>,
}

fn default_max_catch_up() -> Spanned<usize> {
    Spanned::new(0..0, 100)
}

/// What happens to ticks that fell while weir was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Forget them; carry on with the next tick.
    None,
    /// Run the most recent one (the state is brought up to date once).
    #[default]
    Latest,
    /// Run every one, oldest first, at most `max_catch_up` (the most recent ones).
    All,
}

/// What a tick does while the previous run of the pipeline is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Drop the tick (recorded as skipped).
    #[default]
    Skip,
    /// Run it as soon as the previous run finished; runs never overlap.
    Queue,
    /// Run it now, alongside (within the pipeline's concurrency).
    Allow,
}

/// A validated cron trigger configuration.
#[derive(Debug, Clone)]
pub struct CronConfig {
    pub schedule: Schedule,
    pub catch_up: CatchUp,
    pub max_catch_up: usize,
    pub overlap: Overlap,
    /// Each tick runs up to this much later than its logical time, at random, so many
    /// pipelines on one schedule do not all start at once.
    pub jitter: Duration,
}

impl RawConfig {
    fn validate(self, report: &mut Reporter<'_>) -> Option<CronConfig> {
        let zone = match &self.timezone {
            None => Some(Tz::UTC),
            Some(name) => match name.get_ref().parse::<Tz>() {
                Ok(zone) => Some(zone),
                Err(_) => {
                    report.error(
                        name.span(),
                        format!("unknown time zone {:?} (use an IANA name such as \"Europe/Berlin\")", name.get_ref()),
                    );
                    None
                }
            },
        };
        let schedule = match (&self.schedule, &self.every) {
            (Some(cron), None) => zone
                .and_then(|zone| Schedule::cron(cron.get_ref(), zone).map_err(|e| report.error(cron.span(), e)).ok()),
            (None, Some(every)) => crate::config::units::parse_duration(every.get_ref())
                .and_then(|period| Schedule::every(period, every.get_ref()))
                .map_err(|e| report.error(every.span(), e))
                .ok(),
            (Some(cron), Some(_)) => {
                report.error(cron.span(), "use either `schedule` or `every`, not both");
                None
            }
            (None, None) => {
                report.error(0..0, "a cron trigger needs `schedule = \"<cron expression>\"` or `every = \"15m\"`");
                None
            }
        };
        if *self.max_catch_up.get_ref() == 0 {
            report.error(
                self.max_catch_up.span(),
                "max_catch_up must be at least 1 (use catch_up = \"none\" to skip missed ticks)",
            );
            return None;
        }
        Some(CronConfig {
            schedule: schedule?,
            catch_up: self.catch_up,
            max_catch_up: *self.max_catch_up.get_ref(),
            overlap: self.overlap,
            jitter: self.jitter.map(|j| j.0).unwrap_or_default(),
        })
    }
}

/// `kind = "cron"`.
pub struct CronKind;

impl TriggerKind for CronKind {
    const NAME: &'static str = "cron";
    type Raw = RawConfig;
    type Config = CronConfig;

    fn validate(raw: RawConfig, report: &mut Reporter<'_>) -> Option<CronConfig> {
        raw.validate(report)
    }
}

impl TriggerSpec for CronConfig {
    fn kind(&self) -> &'static str {
        CronKind::NAME
    }

    fn build(&self, ctx: TriggerContext) -> Arc<dyn Trigger> {
        Arc::new(CronTrigger::new(self.clone(), ctx))
    }

    fn revive(&self, record: &serde_json::Value) -> Result<Arc<dyn Work>, String> {
        let tick: TickWork = serde_json::from_value(record.clone()).map_err(|e| format!("not a schedule tick: {e}"))?;
        Ok(Arc::new(tick))
    }

    fn history(&self, ctx: &HistoryContext, window: &Window) -> Result<Box<dyn History>, EngineError> {
        Ok(Box::new(history::Ticks::new(self, window, ctx.now)?))
    }

    fn replays_in_order(&self) -> bool {
        true
    }
}

/// A tick: its logical time and the schedule it belongs to. Serialized as its
/// dead-letter record (`{"type": "schedule", …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "schedule")]
pub struct TickWork {
    /// The tick this run stands for, however late it runs.
    pub time: DateTime<Utc>,
    pub schedule: String,
}

#[async_trait::async_trait]
impl Work for TickWork {
    fn describe(&self) -> String {
        format!("tick {}", tick_key(self.time))
    }

    fn record(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn ledger_entry(&self) -> Option<LedgerEntry> {
        Some(LedgerEntry { url: LEDGER_URL.into(), key: tick_key(self.time), version: String::new() })
    }

    /// The item is the tick as JSON; `{attr.scheduled_time}`, `{attr.date}` and
    /// `{attr.hour}` name outputs after the logical time; `ctx.event` is EventBridge's
    /// scheduled event.
    async fn run(&self, runner: &dyn Runner, event: &Event) -> Ran {
        let logical = tick_key(self.time);
        let mut meta = Metadata::default();
        meta.attributes.insert("scheduled_time".into(), logical.clone());
        meta.attributes.insert("date".into(), self.time.format("%Y-%m-%d").to_string());
        meta.attributes.insert("hour".into(), self.time.format("%Y-%m-%dT%H").to_string());
        let body =
            serde_json::json!({ "scheduled_time": logical, "schedule": self.schedule, "pipeline": &*event.pipeline });
        let lambda = TriggerEvent::scheduled(&event.id, &event.pipeline, self.time);
        let scope = Scope::new(Some(LazyEvent::ready(lambda)), false);
        runner.run(Item::new(Payload::Json(body), meta), None, &scope).await.into()
    }
}

/// The ledger key of a tick: fixed-width RFC 3339, so keys sort as times do.
pub fn tick_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn parse_tick_key(key: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(key).ok().map(|t| t.with_timezone(&Utc))
}

/// The running trigger.
pub struct CronTrigger {
    config: CronConfig,
    ctx: TriggerContext,
    /// This pipeline's ticks queued or running (for `overlap`).
    running: Arc<watch::Sender<usize>>,
    /// When the engine started the pipeline: ticks after it are live, ticks before it
    /// (and after the last recorded one) were missed.
    started: DateTime<Utc>,
}

impl CronTrigger {
    pub fn new(config: CronConfig, ctx: TriggerContext) -> Self {
        let started = ctx.clock.now();
        Self { config, ctx, running: Arc::new(watch::Sender::new(0)), started }
    }

    /// Ticks that fell in `(last, now]`, by the catch-up policy.
    async fn catch_up(
        &self,
        last: DateTime<Utc>,
        now: DateTime<Utc>,
        sink: &EventSink,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let keep = match self.config.catch_up {
            CatchUp::None => 0,
            CatchUp::Latest => 1,
            CatchUp::All => self.config.max_catch_up,
        };
        let mut missed = 0usize;
        let mut kept = VecDeque::with_capacity(keep.min(1024));
        for tick in self.config.schedule.ticks(last, now) {
            missed += 1;
            if keep > 0 {
                if kept.len() == keep {
                    kept.pop_front();
                }
                kept.push_back(tick);
            }
        }
        if missed == 0 {
            return Ok(());
        }
        metrics::counter!("weir_cron_missed_ticks_total", "pipeline" => self.ctx.pipeline.to_string())
            .increment(missed as u64);
        tracing::info!(
            pipeline = %self.ctx.pipeline, missed, running = kept.len(), catch_up = ?self.config.catch_up,
            since = %tick_key(last), "ticks missed while stopped"
        );
        // Ticks asked for are never dropped for overlapping each other: they queue.
        let overlap = if self.config.overlap == Overlap::Skip { Overlap::Queue } else { self.config.overlap };
        for tick in kept {
            if stop.is_cancelled() {
                break;
            }
            self.fire(tick, overlap, sink, stop).await?;
        }
        Ok(())
    }

    /// One tick, by the overlap policy.
    async fn fire(
        &self,
        tick: DateTime<Utc>,
        overlap: Overlap,
        sink: &EventSink,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        match overlap {
            Overlap::Skip if *self.running.borrow() > 0 => {
                tracing::info!(pipeline = %self.ctx.pipeline, tick = %tick_key(tick), "tick skipped: the previous run is still going (overlap = \"skip\")");
                let ledger = &self.ctx.ledger;
                ledger
                    .record_object(&self.ctx.pipeline, LEDGER_URL, &tick_key(tick), "", ObjectStatus::Skipped)
                    .await?;
                return Ok(());
            }
            Overlap::Queue => {
                let mut running = self.running.subscribe();
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = running.wait_for(|n| *n == 0) => {}
                }
            }
            Overlap::Skip | Overlap::Allow => {}
        }
        self.submit(tick, sink).await
    }

    /// Records the tick as pending, then queues it.
    async fn submit(&self, tick: DateTime<Utc>, sink: &EventSink) -> anyhow::Result<()> {
        let key = tick_key(tick);
        self.ctx.ledger.record_object(&self.ctx.pipeline, LEDGER_URL, &key, "", ObjectStatus::Pending).await?;
        self.running.send_modify(|n| *n += 1);
        let work = TickWork { time: tick, schedule: self.config.schedule.text().to_string() };
        // Records the tick as done or dead-lettered, then lets the next one through (`overlap`).
        let running = self.running.clone();
        let release = move |_: &Event| running.send_modify(|n| *n = n.saturating_sub(1));
        let acker = LedgerAck::new(self.ctx.ledger.clone(), Some(Box::new(release)));
        let event = Event::new(self.ctx.pipeline.clone(), Arc::new(work), acker);
        tracing::debug!(pipeline = %self.ctx.pipeline, tick = %key, "tick queued");
        if sink.send(event).await.is_err() {
            self.running.send_modify(|n| *n = n.saturating_sub(1));
            anyhow::bail!("executor stopped");
        }
        Ok(())
    }

    fn jitter(&self) -> chrono::Duration {
        let max = self.config.jitter.as_millis().min(i64::MAX as u128) as i64;
        if max == 0 {
            return chrono::Duration::zero();
        }
        chrono::Duration::milliseconds(rand::random_range(0..max))
    }
}

#[async_trait::async_trait]
impl Trigger for CronTrigger {
    async fn run(self: Arc<Self>, sink: EventSink, stop: CancellationToken) -> Result<(), EngineError> {
        self.tick(sink, stop).await.map_err(EngineError::from_anyhow)
    }
}

impl CronTrigger {
    async fn tick(self: Arc<Self>, sink: EventSink, stop: CancellationToken) -> anyhow::Result<()> {
        let (ledger, pipeline, clock) = (&self.ctx.ledger, &*self.ctx.pipeline, &self.ctx.clock);
        // Ticks queued before the last stop but never finished: run them again.
        for (url, key, _) in ledger.pending_objects(pipeline).await? {
            if let (LEDGER_URL, Some(tick)) = (url.as_str(), parse_tick_key(&key)) {
                tracing::info!(pipeline, tick = %key, "redelivering an unfinished tick");
                self.submit(tick, &sink).await?;
            }
        }
        let now = self.started;
        let last = ledger.last_key(pipeline, LEDGER_URL).await?.as_deref().and_then(parse_tick_key);
        let mut cursor = now;
        if let Some(last) = last {
            self.catch_up(last, now, &sink, &stop).await?;
            cursor = cursor.max(last);
        }
        tracing::info!(pipeline, schedule = self.config.schedule.text(), next = ?self.config.schedule.next_after(cursor).map(tick_key), "schedule started");
        metrics::describe_gauge!("weir_cron_next_fire_timestamp_seconds", "When the schedule fires next (Unix time).");
        metrics::describe_counter!("weir_cron_missed_ticks_total", "Ticks that fell while weir was stopped.");
        let next_fire = metrics::gauge!("weir_cron_next_fire_timestamp_seconds", "pipeline" => pipeline.to_string());
        while let Some(tick) = self.config.schedule.next_after(cursor) {
            next_fire.set(tick.timestamp() as f64);
            let at = tick + self.jitter();
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = clock.sleep_until(at) => {}
            }
            self.fire(tick, self.config.overlap, &sink, &stop).await?;
            cursor = tick;
        }
        tracing::info!(pipeline, "the schedule has no further ticks");
        stop.cancelled().await;
        Ok(())
    }
}
