//! Configuration: loading the YAML file, reporting every problem in it with its position, and the
//! resolved settings the gateway runs on.
//!
//! Two steps, as in ripgrep and Vector: `raw` mirrors the file (serde, unknown keys denied), `resolve`
//! checks meaning and builds compiled forms (regexes, templates, codecs). Each top-level section, each
//! port and each map is deserialized on its own, so one file shows all its problems at once; each
//! problem carries `file:line:column`, the key path, what is wrong and what would be valid.

pub mod locate;
pub mod raw;
mod resolve;
pub mod summary;
pub mod upstream;

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::local_broker::settings::{AclRule, BrokerSettings, ListenerSettings, Secret, DEFAULT_LISTENER};
pub use crate::serial::port::PortSettings;
pub use locate::Location;
use locate::LocationIndex;

use crate::topic_map::TopicMap;

/// One line for a status text: the first problem a load reported (`file:line:col: key: what`), or
/// the read error.
pub fn first_problem(e: &LoadError) -> String {
    let text = e.to_string();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head = lines.next().unwrap_or("invalid configuration");
    lines.next().unwrap_or(head).trim().to_string()
}

/// Where the packaged service looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/ser2mqtt/ser2mqtt.yaml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewaySettings,
    pub log_level: Option<String>,
    pub broker: BrokerSettings,
    pub ports: Vec<PortSettings>,
    pub maps: Vec<TopicMap>,
    pub upstream: Option<upstream::UpstreamSettings>,
    /// Home Assistant discovery, when the file has a `homeassistant:` section.
    pub homeassistant: Option<crate::homeassistant::HomeAssistant>,
    /// `/metrics` and `/healthz`, when the file has a `metrics:` section.
    pub metrics: Option<crate::metrics::MetricsSettings>,
}

impl Config {
    /// The gateway's SQLite store (queue and retained readings), if it keeps one.
    pub fn store_path(&self) -> Option<PathBuf> {
        match (&self.upstream, &self.gateway.state_dir) {
            (Some(u), _) => Some(u.queue.path.clone()),
            (None, Some(dir)) => Some(dir.join("queue.db")),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub name: String,
    /// Rendered: `{gateway}` already filled in.
    pub status_topic: String,
    pub channel_capacity: NonZeroUsize,
    pub stats_interval: Duration,
    pub state_dir: Option<PathBuf>,
    /// As written (`{port}`, `{command}` left in); each command's topics are rendered from them.
    pub command_topic: String,
    pub result_topic: String,
    /// `command_topic` with `{gateway}` filled and `{port}`, `{command}` as `+`: what the gateway taps.
    pub command_filter: String,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Option<Location>,
    /// Key path such as `ports[0].framing.type`; empty for the whole file.
    pub path: String,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} problem{}", self.file.display(), if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "{}", self.file.display())?;
            if let Some(l) = p.location {
                write!(f, ":{}:{}", l.line, l.column)?;
            }
            if p.path.is_empty() {
                writeln!(f, ": {}", p.message)?;
            } else {
                writeln!(f, ": {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The message carries the OS error and what to do about it (the error is not also a `source`,
    /// so a chain printer does not repeat it).
    #[error("cannot read config file {}: {error}{}", path.display(),
        crate::advice::file(path, error.kind(), false).map(|a| format!("; {a}")).unwrap_or_default())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read { path: path.into(), error })?;
    parse(&text, path).map_err(LoadError::Invalid)
}

/// Validates configuration `text`; `file` is only used in messages.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let index = LocationIndex::build(text);
    let mut problems = Problems { index: &index, list: Vec::new() };
    let config = resolve::resolve(text, &mut problems);
    match config {
        Some(c) if problems.list.is_empty() => Ok(c),
        _ => {
            let mut list = problems.list;
            list.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
            Err(ConfigErrors { file: file.into(), problems: list })
        }
    }
}

/// Collects problems, locating each by its key path.
pub(crate) struct Problems<'a> {
    index: &'a LocationIndex,
    list: Vec<Problem>,
}

impl Problems<'_> {
    pub(crate) fn add(&mut self, path: &str, message: impl Into<String>) {
        let location = self.index.find(path);
        self.list.push(Problem { location, path: path.to_string(), message: message.into() });
    }

    pub(crate) fn add_at(&mut self, location: Option<Location>, path: &str, message: impl Into<String>) {
        self.list.push(Problem { location, path: path.to_string(), message: message.into() });
    }

    pub(crate) fn count(&self) -> usize {
        self.list.len()
    }
}

pub use crate::settings::suggest;
