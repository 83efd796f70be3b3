//! What the outbox says to the link and the store (packets to send, store reads it needs, QoS 2
//! stages to commit), and what it holds packet ids for.

use crate::store::Record;

/// How far a QoS 2 message has got; what the store keeps of it (`stage` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// PUBLISH sent, no PUBREC yet.
    Published = 1,
    /// PUBREC received and PUBREL sent, no PUBCOMP yet.
    Released = 2,
}

impl Stage {
    pub fn from_db(v: i64) -> Option<Stage> {
        match v {
            1 => Some(Stage::Published),
            2 => Some(Stage::Released),
            _ => None,
        }
    }
}

/// A QoS 2 message's packet id and stage, for the store to commit with the queue (stage None: the
/// message went back to unsent, e.g. after the broker lost the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageChange {
    pub id: i64,
    pub pkid: u16,
    pub stage: Option<Stage>,
}

/// What the link must put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Send {
    /// `pkid` is 0 at QoS 0.
    Publish {
        pkid: u16,
        dup: bool,
        record: Record,
    },
    PubRel {
        pkid: u16,
    },
    /// Downlink subscriptions: (filter, QoS).
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
}

/// Which cursor a store read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Live,
    Replay,
}

/// A store read the outbox needs: queued rows with `after < id < before`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub side: Side,
    pub after: i64,
    pub before: i64,
    pub limit: usize,
}

/// The gateway's own packets that need an id: sent after what is owed, as soon as an id is free.
#[derive(Debug, Clone)]
pub(super) enum Control {
    Status(Record),
    Subscribe(Vec<(String, u8)>),
}

/// What holds a packet id.
#[derive(Debug, Clone)]
pub(super) enum Flight {
    /// A queued message (QoS 1 or 2).
    Data { id: i64, record: Record, stage: Stage },
    /// The gateway's own status (birth, goodbye): QoS 1, not queued, not resent on a new connection.
    Status,
    /// A downlink SUBSCRIBE awaiting its SUBACK.
    Subscribe,
    /// A PUBREL of the release sweep, for an id the previous run may have left unreleased.
    Release,
}
