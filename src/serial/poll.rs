//! `poll:` for sensors that answer only when asked (Winsen MH-Z19B, a PMS5003 in passive mode): a
//! request written every `every`, the answer awaited for `timeout`, retried, and the port marked
//! `offline` after `offline_after` polls in a row went unanswered.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use super::request::ReplySpec;
use crate::bytes::HexBytes;
use crate::settings::Problems;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSettings {
    /// Time between polls.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// The bytes to write, complete with their checksum, e.g. `"FF 01 86 00 00 00 00 00 79"`.
    pub request: HexBytes,
    /// How long to wait for the answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts after an unanswered request, in the same poll.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Unanswered polls in a row that mark the port `offline`; the next answer marks it `online`.
    #[serde(default = "default_offline_after")]
    pub offline_after: u32,
    /// The answer is the next frame starting with these bytes (default: the next frame).
    #[serde(default)]
    pub reply_starts_with: HexBytes,
}

fn default_timeout() -> Duration {
    // A 9600-baud sensor answers within tens of milliseconds; a second allows a slow one and a
    // loaded board without holding a shared bus long.
    Duration::from_secs(1)
}

fn default_retries() -> u32 {
    1
}

fn default_offline_after() -> u32 {
    // One lost answer is noise on the line; three in a row is a sensor that is gone.
    3
}

impl PollSettings {
    /// What serde cannot check; problems are keyed relative to `poll:`.
    pub fn check(&self, p: &mut Problems) {
        if self.request.is_empty() {
            p.add("request", "must not be empty: the bytes that ask the sensor for a reading");
        }
        if self.timeout.is_zero() {
            p.add("timeout", "must be longer than 0s, e.g. `1s`");
        }
        if self.offline_after == 0 {
            p.add("offline_after", "must be at least 1");
        }
        if self.timeout * (self.retries + 1) >= self.every {
            p.add(
                "every",
                format!(
                    "must be longer than `timeout` × (`retries` + 1) = {:?}, or polls would pile up",
                    self.timeout * (self.retries + 1)
                ),
            );
        }
    }

    pub fn reply(&self) -> ReplySpec {
        ReplySpec { timeout: self.timeout, starts_with: Bytes::from(self.reply_starts_with.0.clone()) }
    }
}
