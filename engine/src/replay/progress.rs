//! What a running replay shows: an indicatif bar on a terminal (done, failed and
//! skipped counts, rate, ETA once the listing is complete), plain periodic lines
//! otherwise (logs, CI), so a long backfill is never silent.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Counters;

/// How progress is shown.
#[derive(Debug, Clone, Copy)]
pub enum Display {
    /// A redrawn bar on stderr.
    Bar,
    /// One line on stderr every so often.
    Lines(Duration),
    Hidden,
}

/// A running display; [`Progress::finish`] draws the last state and stops it.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
    counters: Arc<Counters>,
    started: Instant,
}

impl Progress {
    pub fn start(counters: Arc<Counters>, display: Display) -> Self {
        let (task, bar) = match display {
            Display::Hidden => (None, None),
            Display::Bar => {
                let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} · ETA {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                let (c, b) = (counters.clone(), bar.clone());
                let task = tokio::spawn(async move {
                    let started = Instant::now();
                    loop {
                        update(&b, &c, started.elapsed());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                (Some(task), Some(bar))
            }
            Display::Lines(every) => {
                let c = counters.clone();
                let task = tokio::spawn(async move {
                    let started = Instant::now();
                    loop {
                        tokio::time::sleep(every).await;
                        eprintln!("{}", line(&c, started.elapsed()));
                    }
                });
                (Some(task), None)
            }
        };
        Self { task, bar, counters, started: Instant::now() }
    }

    pub fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            update(&bar, &self.counters, self.started.elapsed());
            bar.finish();
        }
    }
}

fn processed(c: &Counters) -> u64 {
    c.done.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed) + c.skipped.load(Ordering::Relaxed)
}

fn counts(c: &Counters) -> String {
    format!(
        "done {} · failed {} · skipped {}",
        c.done.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.skipped.load(Ordering::Relaxed)
    )
}

fn update(bar: &ProgressBar, c: &Counters, elapsed: Duration) {
    bar.set_length(c.found.load(Ordering::Relaxed));
    bar.set_position(processed(c));
    let rate = processed(c) as f64 / elapsed.as_secs_f64().max(0.001);
    let listing = if c.enumerated.load(Ordering::Relaxed) { "" } else { " (listing…)" };
    bar.set_message(format!("{} · {rate:.0}/s{listing}", counts(c)));
}

/// `replay: 5200/10000 (listing…) · done 5000 · failed 0 · skipped 200 · 812/s · ETA 6s`
fn line(c: &Counters, elapsed: Duration) -> String {
    let (found, processed) = (c.found.load(Ordering::Relaxed), processed(c));
    let rate = processed as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if c.enumerated.load(Ordering::Relaxed) && rate > 0.0 {
        let left = found.saturating_sub(processed) as f64 / rate;
        format!(" · ETA {}", humantime::format_duration(Duration::from_secs(left.ceil() as u64)))
    } else {
        " (listing…)".to_string()
    };
    format!("replay: {processed}/{found} · {} · {rate:.0}/s{eta}", counts(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_counts_rate_and_eta_once_the_total_is_known() {
        let c = Counters::default();
        c.found.store(100, Ordering::Relaxed);
        c.done.store(40, Ordering::Relaxed);
        c.skipped.store(10, Ordering::Relaxed);
        let listing = line(&c, Duration::from_secs(5));
        assert_eq!(listing, "replay: 50/100 · done 40 · failed 0 · skipped 10 · 10/s (listing…)");
        c.enumerated.store(true, Ordering::Relaxed);
        assert_eq!(
            line(&c, Duration::from_secs(5)),
            "replay: 50/100 · done 40 · failed 0 · skipped 10 · 10/s · ETA 5s"
        );
    }
}
