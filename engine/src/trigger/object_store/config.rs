//! The `[trigger]` table of `kind = "object_store"`, and what the engine asks of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use weir_functions::KeyFilter;

use super::event::ObjectWork;
use super::{history, ObjectStoreTrigger};
use crate::auth::{PushAuth, MIN_TOKEN_CHARS};
use crate::config::diagnostics::Reporter;
use crate::config::units::HumanDuration;
use crate::error::EngineError;
use crate::event::Work;
use crate::trigger::{History, HistoryContext, Trigger, TriggerContext, TriggerKind, TriggerSpec, Window};

/// `kind = "object_store"`.
pub struct ObjectStoreKind;

impl TriggerKind for ObjectStoreKind {
    const NAME: &'static str = "object_store";
    type Raw = RawConfig;
    type Config = ObjectStoreConfig;

    fn validate(raw: RawConfig, report: &mut Reporter<'_>) -> Option<ObjectStoreConfig> {
        raw.validate(report)
    }
}

impl TriggerSpec for ObjectStoreConfig {
    fn kind(&self) -> &'static str {
        ObjectStoreKind::NAME
    }

    fn push_auth(&self) -> Option<&PushAuth> {
        matches!(self.detect, Detect::Notifications | Detect::Hybrid).then_some(&self.auth)
    }

    fn health<'a>(&'a self, stores: &'a weir_functions::Stores) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let bucket = stores.resolve(&self.url).map_err(|e| e.to_string())?;
            bucket.reachable(self.filter.dir()).await
        })
    }

    fn register_stores(&self, stores: &weir_functions::Stores) {
        if !self.options.is_empty() {
            stores.set_options(&self.url, self.options.clone());
        }
    }

    fn watches(&self, url: Option<&str>, key: &str) -> bool {
        url.is_none_or(|u| u == self.url) && self.filter.matches(key)
    }

    fn build(&self, ctx: TriggerContext) -> Arc<dyn Trigger> {
        Arc::new(ObjectStoreTrigger::new(self.clone(), ctx))
    }

    fn revive(&self, record: &serde_json::Value) -> Result<Arc<dyn Work>, String> {
        ObjectWork::revive(record, &self.url, &self.filter)
    }

    fn history(&self, ctx: &HistoryContext, window: &Window) -> Result<Box<dyn History>, EngineError> {
        Ok(Box::new(history::Listing::new(ctx, self, window)?))
    }
}

/// A prefix and globs from a `[trigger]` table, each bad glob reported at its place.
pub(crate) fn key_filter(
    prefix: &str,
    include: &[Spanned<String>],
    exclude: &[Spanned<String>],
    report: &mut Reporter<'_>,
) -> Option<KeyFilter> {
    let text = |globs: &[Spanned<String>]| globs.iter().map(|g| g.get_ref().clone()).collect::<Vec<_>>();
    match KeyFilter::new(prefix, &text(include), &text(exclude)) {
        Ok(filter) => Some(filter),
        Err(bad) => {
            for b in bad {
                let span = match b.list {
                    "include" => include.get(b.index).map(|g| g.span()),
                    "exclude" => exclude.get(b.index).map(|g| g.span()),
                    _ => None,
                };
                let message = if b.list == "prefix" { format!("trigger prefix {}", b.message) } else { b.message };
                report.error(span.unwrap_or(0..0), message);
            }
            None
        }
    }
}

/// The `[trigger]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    url: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    #[serde(default)]
    detect: Option<Spanned<Detect>>,
    /// The shared token pushed notifications must carry.
    #[serde(default)]
    notify_token: Option<Spanned<String>>,
    /// `"none"`: accept notifications from anyone who can reach a loopback address;
    /// `"sns"`: accept SNS messages signed by SNS for one of `sns_topic_arns`.
    #[serde(default)]
    notify_auth: Option<Spanned<String>>,
    #[serde(default)]
    sns_topic_arns: Option<Spanned<Vec<String>>>,
    /// Where SNS certificates and subscription URLs live, for SNS-compatible services.
    #[serde(default)]
    sns_signing_origin: Option<Spanned<String>>,
    #[serde(default, alias = "rescan_interval")]
    poll_interval: Option<HumanDuration>,
    #[serde(default = "default_poll_page")]
    poll_page: Spanned<usize>,
    #[serde(default)]
    keys: KeyOrder,
    #[serde(default)]
    settle: Option<HumanDuration>,
    #[serde(default = "default_events")]
    events: Vec<Spanned<String>>,
    #[serde(default)]
    verify: bool,
    #[serde(default)]
    options: BTreeMap<Spanned<String>, String>,
}

fn default_poll_page() -> Spanned<usize> {
    Spanned::new(0..0, 1000)
}
fn default_events() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "created".to_string())]
}

/// How new objects are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detect {
    /// List the prefix every `poll_interval`.
    Poll,
    /// Only bucket notifications posted to `/v1/notifications/{pipeline}`.
    Notifications,
    /// Notifications for latency, plus a reconciling poll every `poll_interval`.
    Hybrid,
    /// inotify (`file://` only), plus a re-listing every `poll_interval`.
    Watch,
}

/// Whether new keys always sort after old ones, which lets polls start after the last
/// key seen instead of passing over the whole prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrder {
    /// Keys arrive in any order: every pass lists the whole prefix (page by page).
    #[default]
    Any,
    /// Keys only grow (timestamped or sequenced names): polls continue after the last
    /// key seen and never go back. Changes to old keys are not noticed.
    Ascending,
}

/// A validated object-store trigger configuration.
#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    pub url: String,
    pub filter: KeyFilter,
    pub detect: Detect,
    /// How often the prefix is listed (poll, hybrid, watch).
    pub poll_interval: Duration,
    /// Most keys examined per listing page; the cursor is saved after each page.
    pub poll_page: usize,
    pub keys: KeyOrder,
    /// Objects modified more recently than this are left for the next look: a writer
    /// may still be at work (local directories; cloud objects appear complete).
    pub settle: Duration,
    /// Also deliver `ObjectRemoved` notifications.
    pub removals: bool,
    /// HEAD each notified object before queueing it (skips objects deleted since).
    pub verify: bool,
    /// object_store configuration keys for this URL (`aws_endpoint`, …).
    pub options: Vec<(String, String)>,
    /// Who may post notifications (with `detect = "notifications"` or `"hybrid"`).
    pub auth: PushAuth,
}

impl RawConfig {
    fn validate(self, report: &mut Reporter<'_>) -> Option<ObjectStoreConfig> {
        let filter = key_filter(&self.prefix, &self.include, &self.exclude, report);
        let mut ok = filter.is_some();
        let scheme = self.url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !matches!(scheme, "file" | "memory" | "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "adl") {
            report.error(0..0, format!("trigger url {:?}: use file://, memory://, s3://, gs:// or az://", self.url));
            ok = false;
        }
        let local = scheme == "file";
        let detect_span = self.detect.as_ref().map(|d| d.span()).unwrap_or(0..0);
        let detect = self.detect.map(Spanned::into_inner).unwrap_or(if local { Detect::Watch } else { Detect::Poll });
        if detect == Detect::Watch && !local {
            report.error(detect_span.clone(), format!("detect = \"watch\" needs a file:// bucket, not {}", self.url));
            ok = false;
        }
        let pushed = matches!(detect, Detect::Notifications | Detect::Hybrid);
        let sns = Sns { topics: self.sns_topic_arns, origin: self.sns_signing_origin };
        let auth = push_auth(pushed, detect_span, self.notify_token, self.notify_auth, sns, report);
        ok &= auth.is_some();
        if *self.poll_page.get_ref() == 0 {
            report.error(self.poll_page.span(), "poll_page must be at least 1");
            ok = false;
        }
        let mut removals = false;
        for event in &self.events {
            match event.get_ref().as_str() {
                "created" => {}
                "removed" => removals = true,
                other => {
                    report.error(event.span(), format!("unknown event {other:?} (created, removed)"));
                    ok = false;
                }
            }
        }
        let options: Vec<(String, String)> =
            self.options.iter().map(|(k, v)| (k.get_ref().clone(), v.clone())).collect();
        if !local && scheme != "memory" {
            for unknown in weir_functions::store::unknown_option_keys(&self.url, &options) {
                let span = self.options.keys().find(|k| *k.get_ref() == unknown).map(|k| k.span()).unwrap_or(0..0);
                report.error(span, format!("unknown object_store option {unknown:?} for {scheme}:// (see object_store's config keys, e.g. aws_endpoint)"));
                ok = false;
            }
        } else if let Some(key) = self.options.keys().next() {
            report.error(key.span(), format!("[trigger.options] only apply to cloud stores, not {scheme}://"));
            ok = false;
        }
        let (filter, auth) = (filter?, auth?);
        ok.then(|| ObjectStoreConfig {
            url: self.url,
            filter,
            detect,
            poll_interval: self
                .poll_interval
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30))
                .max(Duration::from_millis(10)),
            poll_page: *self.poll_page.get_ref(),
            keys: self.keys,
            settle: self.settle.map(|d| d.0).unwrap_or(if local { Duration::from_millis(500) } else { Duration::ZERO }),
            removals,
            verify: self.verify,
            options,
            auth,
        })
    }
}

/// The SNS half of the push credential.
struct Sns {
    topics: Option<Spanned<Vec<String>>>,
    origin: Option<Spanned<String>>,
}

/// Closed by default: pushed notifications need `notify_token`, signed SNS messages
/// (`notify_auth = "sns"`), or an explicit `notify_auth = "none"` (which `weir run`
/// accepts only on a loopback address).
fn push_auth(
    pushed: bool,
    detect: std::ops::Range<usize>,
    token: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    sns: Sns,
    report: &mut Reporter<'_>,
) -> Option<PushAuth> {
    let stray = [token.as_ref().map(|t| t.span()), mode.as_ref().map(|m| m.span())];
    if !pushed {
        if let Some(span) = stray.into_iter().flatten().next() {
            report.error(span, "notify_token and notify_auth only apply with detect = \"notifications\" or \"hybrid\"");
            return None;
        }
    }
    let is_sns = mode.as_ref().is_some_and(|m| m.get_ref() == "sns");
    if !is_sns {
        if let Some(span) = sns.topics.as_ref().map(|t| t.span()).or(sns.origin.as_ref().map(|o| o.span())) {
            report.error(span, "sns_topic_arns and sns_signing_origin only apply with notify_auth = \"sns\"");
            return None;
        }
    }
    if !pushed {
        return Some(PushAuth::None);
    }
    let token = match token {
        Some(token) if token.get_ref().chars().count() < MIN_TOKEN_CHARS => {
            report.error(token.span(), format!("notify_token must be at least {MIN_TOKEN_CHARS} characters"));
            return None;
        }
        token => token,
    };
    match (token, mode) {
        (token, Some(mode)) if mode.get_ref() == "sns" => {
            let topics = match sns.topics {
                Some(topics) if !topics.get_ref().is_empty() => topics.into_inner(),
                topics => {
                    let span = topics.map(|t| t.span()).unwrap_or(mode.span());
                    report.error(
                        span,
                        "notify_auth = \"sns\" needs sns_topic_arns = [\"arn:aws:sns:REGION:ACCOUNT:TOPIC\"]: anyone \
                         can get messages signed by SNS for a topic of their own",
                    );
                    return None;
                }
            };
            let origin = match sns.origin {
                None => crate::auth::sns::Origin::Aws,
                Some(origin) => match crate::auth::sns::Origin::parse(origin.get_ref()) {
                    Ok(parsed) => parsed,
                    Err(why) => {
                        report.error(origin.span(), format!("sns_signing_origin: {why}"));
                        return None;
                    }
                },
            };
            let sns = std::sync::Arc::new(crate::auth::sns::SnsAuth::new(topics, origin));
            Some(PushAuth::Sns { sns, token: token.map(Spanned::into_inner) })
        }
        (Some(token), None) => Some(PushAuth::Token(token.into_inner())),
        (None, Some(none)) if none.get_ref() == "none" => Some(PushAuth::None),
        (_, Some(other)) if other.get_ref() != "none" => {
            report.error(other.span(), "notify_auth takes \"sns\" or \"none\" (or set notify_token instead)");
            None
        }
        (Some(_), Some(none)) => {
            report.error(none.span(), "notify_token and notify_auth = \"none\" exclude each other");
            None
        }
        (None, _) => {
            report.error(
                detect,
                "notifications need a credential: notify_token = \"${env:WEIR_NOTIFY_TOKEN}\" (sent as \
                 `Authorization: Bearer …`, or as the password in http://weir:TOKEN@host/… for SNS), \
                 notify_auth = \"sns\" with sns_topic_arns (SNS-signed messages), or notify_auth = \"none\" \
                 to accept any caller on a loopback address",
            );
            None
        }
    }
}
