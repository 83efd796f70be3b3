//! Log output. Under systemd (stderr connected to the journal, or `log.journald: true`) every tracing
//! event goes to journald through systemd-journal-logger, its tracing fields becoming journal fields
//! (`port` → `PORT=`), so `journalctl -u ser2mqtt PORT=gps` filters by port. Otherwise, readable lines
//! on stderr. Level from the config unless `RUST_LOG` says otherwise. The broker engine logs through the
//! `log` crate; those records are bridged into tracing too.
//!
//! Why `JournalLayer` exists: systemd-journal-logger (the journald writer the design card names) is a
//! `log` backend and takes only `log` records, while the gateway logs with `tracing`. The layer is the
//! thin adapter between them: it collects an event's fields (`EventFields`) and hands one record with
//! those key/values to `JournalLog`; it formats nothing beyond the message text the default
//! `journalctl` view shows (`with_fields`).

use std::fmt::Write as _;
use std::io::IsTerminal;

use systemd_journal_logger::JournalLog;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Engine chatter (one line per client connect) is kept at warn unless asked for explicitly; rustls
/// warns about every OpenSSL client that sends an IP address as SNI (`mosquitto_sub -h 192.168.1.5`),
/// which it then ignores, so it is kept at error (a failed handshake is logged by the front door).
const QUIET_ENGINE: &str = "rmqtt=warn,rmqtt_net=warn,rmqtt_acl=warn,rmqtt_retainer=warn,rustls=error";

/// Installs the global subscriber; later calls (as in tests) are ignored.
pub fn init(level: Option<&str>) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::new(env),
        _ => EnvFilter::new(format!("{},{QUIET_ENGINE}", level.unwrap_or("info"))),
    };
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(journal) = JournalLog::new() {
            let _ = tracing_subscriber::registry().with(filter).with(JournalLayer { journal }).try_init();
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The one rate limiter for warnings that can repeat (every frame, every commit): at most one per
/// `every`, carrying how many occurrences were folded into it, so an SD card and the journal see a
/// line every few seconds, not one per event.
#[derive(Debug)]
pub struct Every {
    every: std::time::Duration,
    last: Option<tokio::time::Instant>,
    held: u64,
}

impl Every {
    pub fn new(every: std::time::Duration) -> Every {
        Every { every, last: None, held: 0 }
    }

    /// Counts `n` occurrences; when a warning is due, calls `emit` with the total since the last one.
    pub fn note(&mut self, n: u64, emit: impl FnOnce(u64)) {
        let now = tokio::time::Instant::now();
        self.held += n;
        if self.last.is_none_or(|t| now.duration_since(t) >= self.every) {
            emit(self.held);
            self.last = Some(now);
            self.held = 0;
        }
    }
}

/// Sends each tracing event to journald as one entry with structured fields.
pub struct JournalLayer {
    journal: JournalLog,
}

/// An event's message and fields, as text.
#[derive(Default)]
pub struct EventFields {
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl EventFields {
    /// The message and fields of `event`.
    pub fn of(event: &tracing::Event<'_>) -> EventFields {
        let mut f = EventFields::default();
        event.record(&mut f);
        f
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let f = EventFields::of(event);
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => log::Level::Error,
            tracing::Level::WARN => log::Level::Warn,
            tracing::Level::INFO => log::Level::Info,
            tracing::Level::DEBUG => log::Level::Debug,
            tracing::Level::TRACE => log::Level::Trace,
        };
        let kvs: Vec<(&str, &str)> = f.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let message = with_fields(&f);
        // Nothing sensible can be done if the journal refuses a log line.
        let _ = self.journal.journal_send(
            &log::Record::builder()
                .level(level)
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .key_values(&kvs)
                .args(format_args!("{message}"))
                .build(),
        );
    }
}

/// The message as the default journal view shows it: the text, then each field not already in it
/// (`port=gps device=/dev/ttyUSB0 error=…`), since `journalctl -u` shows only MESSAGE; the fields
/// are also sent as journal fields for filtering.
pub fn with_fields(f: &EventFields) -> String {
    let mut text = f.message.clone();
    let extra: Vec<String> =
        f.fields.iter().filter(|(_, v)| !f.message.contains(v.as_str())).map(|(k, v)| format!("{k}={v}")).collect();
    if !extra.is_empty() {
        let _ = write!(text, " ({})", extra.join(" "));
    }
    text
}

/// Writes a fatal error to stderr; under systemd with the `<3>` prefix journald reads as error
/// priority, so `journalctl -p err` shows why the service could not start.
pub fn fatal(text: &str) {
    let journal = systemd_journal_logger::connected_to_journal();
    for line in text.lines() {
        if journal {
            eprintln!("<3>{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn repeated_warnings_come_once_per_period_with_the_count() {
        let mut every = Every::new(std::time::Duration::from_secs(10));
        let mut said = Vec::new();
        for _ in 0..5 {
            every.note(3, |n| said.push(n));
            tokio::time::advance(std::time::Duration::from_secs(1)).await;
        }
        assert_eq!(said, [3], "the first at once, the next four held");
        tokio::time::advance(std::time::Duration::from_secs(6)).await;
        every.note(1, |n| said.push(n));
        assert_eq!(said, [3, 13], "after the period, everything held back is told");
    }

    struct Capture(Arc<Mutex<Vec<EventFields>>>);
    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(EventFields::of(event));
        }
    }

    #[test]
    fn tracing_fields_become_journal_key_values() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(port = %"gps", device = %"/dev/ttyUSB0", bytes = 12, "garbled input dropped");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].message, "garbled input dropped");
        let fields: Vec<(&str, &str)> = seen[0].fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(fields, [("port", "gps"), ("device", "/dev/ttyUSB0"), ("bytes", "12")]);
        assert_eq!(with_fields(&seen[0]), "garbled input dropped (port=gps device=/dev/ttyUSB0 bytes=12)");
        // systemd-journal-logger upper-cases keys: `journalctl PORT=gps` finds this entry.
    }
}
