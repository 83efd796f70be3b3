//! The bridge's send/acknowledge bookkeeping as a pure state machine: which queued message goes out
//! next, under which MQTT packet id, and which queue ids the cloud broker has acknowledged. No I/O
//! and no clock of its own: the link feeds it store rows, the broker's packets and the time, and
//! puts on the wire what it returns.
//!
//! Invariants:
//! - A packet id is never reused while the broker may still hold it: an id is taken when its PUBLISH
//!   (or SUBSCRIBE, or PUBREL) goes out and given back only on PUBACK, PUBCOMP or SUBACK. Flights
//!   survive a broken link: on a resumed session every unfinished QoS 1/2 PUBLISH is sent again with
//!   its own id and DUP set, and every QoS 2 message past PUBREC gets its PUBREL again, before
//!   anything new (MQTT 3.1.1 §4.4). On a fresh session they are sent again as new messages.
//! - After a restart the ids of the previous run are known only as far as their stage was committed
//!   (`restore`). On the first resumed session of a run, every other id in `PKID_SPACE` gets a PUBREL
//!   before it is used, so a QoS 2 id the broker still holds unreleased can never swallow a new
//!   message. (A message whose stage was not yet committed may then arrive twice, never not at all.)
//! - Per upstream topic, messages go out in queue order: on (re)connect the queue up to its newest id
//!   is the backlog, replayed oldest first at `replay_rate`; newer (live) messages go out at once
//!   unless their topic still has backlog, in which case they wait behind it.
//! - A queue id is reported acknowledged (`take_acked`) exactly when the broker's PUBACK or PUBCOMP
//!   for it arrived (or when it went out at QoS 0); only then may the store delete it.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::time::Instant;

use crate::store::{Queued, Record};
use budget::ReplayBudget;
use types::{Control, Flight};
pub use types::{Read, Send, Side, Stage, StageChange};

mod acks;
mod budget;
mod types;

/// Packet ids this client uses (1..=PKID_SPACE). More than twice the largest window (1,000), so a
/// free id is always at hand; small enough that the release sweep after a restart is 8 KiB.
pub const PKID_SPACE: u16 = 2048;

/// Most QoS 2 messages in flight at once, whatever the window. MQTT 3.1.1 has no way for a broker to
/// say how many unreleased QoS 2 messages it takes per client, and Mosquitto answers one past its
/// `max_inflight_messages` (default 20) with a plain PUBREC and discards it; VerneMQ's default is
/// also 20 and HiveMQ's receive maximum 10. Ten stays inside all of them.
pub const QOS2_WINDOW: usize = 10;

/// Messages read from the store at a time (per cursor): an acknowledgement is then answered from
/// memory, not with a store read per message.
pub const READ_CHUNK: usize = 256;

pub struct Outbox {
    /// Most queued messages sent and not yet acknowledged.
    window: usize,
    /// `queue.inflight` as configured; `window` is this or less (an MQTT 5 broker's Receive Maximum).
    configured_window: usize,
    /// Where the search for a free packet id starts.
    next_pkid: u16,
    /// Each id in use, with the sequence number it was taken at (to resend in the original order).
    flights: HashMap<u16, (u64, Flight)>,
    seq: u64,
    /// Queue ids currently in `flights` (the cursors skip them).
    flying: HashSet<i64>,
    /// How many of them are QoS 2 (bounded by `QOS2_WINDOW`).
    flying_qos2: usize,
    /// Packets owed before anything new: resends after a reconnect and the release sweep.
    urgent: VecDeque<Send>,
    /// Status messages and subscriptions waiting for a free packet id.
    control: VecDeque<Control>,
    acked: Vec<i64>,
    /// Ids the broker refused (MQTT 5 reason codes): done, but not delivered.
    refused: Vec<i64>,
    stages: Vec<StageChange>,
    connected: bool,
    /// Whether this run has not yet had a resumed session (the release sweep is then owed).
    sweep_owed: bool,
    /// Live cursor: the newest id looked at (sent, deferred to the replay, or skipped).
    live_pos: i64,
    /// How far the live side has read, and whether the store may have more (cleared by a short read,
    /// set by `committed`).
    live_read: i64,
    live_more: bool,
    live_buf: VecDeque<Queued>,
    /// Replay cursor: the newest backlog id read; None when there is no replay.
    replay_pos: Option<i64>,
    /// The newest backlog id the replay has dealt with (sent or skipped); rows up to `replay_pos`
    /// beyond it wait in `replay_buf`.
    replay_seen: i64,
    replay_buf: VecDeque<Queued>,
    /// Per topic: messages up to the replay cursor's end that the replay still has to send.
    backlog: HashMap<String, u64>,
    /// Live messages sent ahead of the replay cursor, which the replay must skip.
    sent_live: HashSet<i64>,
    /// Resent backlog messages acknowledged before the replay cursor reached them (the store deletes
    /// them only with its next commit): the replay skips them as done.
    done_ahead: HashSet<i64>,
    /// How many backlog messages the replay may send now (`replay_rate`).
    budget: ReplayBudget,
}

impl Outbox {
    pub fn new(window: u16, replay_rate: u32, now: Instant) -> Outbox {
        Outbox {
            window: window.max(1) as usize,
            configured_window: window.max(1) as usize,
            next_pkid: 1,
            flights: HashMap::new(),
            seq: 0,
            flying: HashSet::new(),
            flying_qos2: 0,
            urgent: VecDeque::new(),
            control: VecDeque::new(),
            acked: Vec::new(),
            refused: Vec::new(),
            stages: Vec::new(),
            connected: false,
            sweep_owed: true,
            live_pos: 0,
            live_read: 0,
            live_more: false,
            live_buf: VecDeque::new(),
            replay_pos: None,
            replay_buf: VecDeque::new(),
            replay_seen: 0,
            backlog: HashMap::new(),
            sent_live: HashSet::new(),
            done_ahead: HashSet::new(),
            budget: ReplayBudget::new(replay_rate, now),
        }
    }

    /// QoS 2 messages an earlier run had in flight, with the packet id and stage it committed.
    pub fn restore(&mut self, flights: Vec<(Queued, u16, Stage)>) {
        for (q, pkid, stage) in flights {
            if pkid == 0 || pkid > PKID_SPACE || self.flights.contains_key(&pkid) || q.record.qos != 2 {
                continue;
            }
            self.flying.insert(q.id);
            self.flying_qos2 += 1;
            self.hold(pkid, Flight::Data { id: q.id, record: q.record, stage });
        }
    }

    fn hold(&mut self, pkid: u16, flight: Flight) {
        self.seq += 1;
        self.flights.insert(pkid, (self.seq, flight));
    }

    /// The broker accepted a connection. `last_id` is the newest queued id and `backlog` the number
    /// of queued messages per topic up to it (both read when the CONNACK came).
    /// Keeps the window within what the broker takes unacknowledged (MQTT 5 Receive Maximum), one
    /// short of it for the status message that shares the session; `None`: the configured window.
    pub fn limit_window(&mut self, receive_maximum: Option<u16>) {
        self.window = match receive_maximum {
            Some(m) => self.configured_window.min((m as usize).saturating_sub(1).max(1)),
            None => self.configured_window,
        };
    }

    pub fn connected(&mut self, session_present: bool, last_id: i64, backlog: HashMap<String, u64>, now: Instant) {
        self.connected = true;
        self.urgent.clear();
        self.control.clear();
        let mut order: Vec<(u64, u16)> = self.flights.iter().map(|(p, (seq, _))| (*seq, *p)).collect();
        order.sort_unstable();
        for (_, pkid) in order {
            let Some((_, flight)) = self.flights.get_mut(&pkid) else { continue };
            match flight {
                Flight::Data { id, record, stage } => {
                    if session_present {
                        self.urgent.push_back(match stage {
                            Stage::Published => Send::Publish { pkid, dup: true, record: record.clone() },
                            Stage::Released => Send::PubRel { pkid },
                        });
                    } else {
                        if *stage == Stage::Released {
                            *stage = Stage::Published;
                            self.stages.push(StageChange { id: *id, pkid, stage: Some(Stage::Published) });
                        }
                        self.urgent.push_back(Send::Publish { pkid, dup: false, record: record.clone() });
                    }
                }
                Flight::Release if session_present => self.urgent.push_back(Send::PubRel { pkid }),
                // Status messages are sent afresh by the link; subscriptions are made again; a
                // fresh session holds nothing to release.
                Flight::Status | Flight::Subscribe | Flight::Release => {
                    self.flights.remove(&pkid);
                }
            }
        }
        if session_present && self.sweep_owed {
            for pkid in 1..=PKID_SPACE {
                if !self.flights.contains_key(&pkid) {
                    self.hold(pkid, Flight::Release);
                    self.urgent.push_back(Send::PubRel { pkid });
                }
            }
        }
        // Whichever session this is, from now on every id the broker can hold is one we know.
        self.sweep_owed = false;
        self.live_pos = last_id;
        self.live_read = last_id;
        self.live_more = true;
        self.live_buf.clear();
        self.replay_buf.clear();
        self.sent_live.clear();
        self.done_ahead.clear();
        self.budget.restart(now);
        self.backlog = backlog;
        self.backlog.retain(|_, n| *n > 0);
        self.replay_pos = if self.backlog.is_empty() { None } else { Some(0) };
        self.replay_seen = 0;
    }

    /// The link broke. Flights are kept for the next connection.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.urgent.clear();
    }

    /// The store committed new rows: the live side may read again.
    pub fn committed(&mut self) {
        self.live_more = true;
    }

    pub fn replaying(&self) -> bool {
        self.replay_pos.is_some()
    }

    /// Queued messages sent and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.flying.len()
    }

    fn room(&self) -> bool {
        // Ids run out only while the release sweep holds them all; then nothing new can go.
        self.connected && self.flying.len() < self.window && self.has_free_pkid()
    }

    /// The store read to do before `next_send` can go on, if any.
    pub fn next_read(&self) -> Option<Read> {
        if !self.room() {
            return None;
        }
        if self.live_buf.is_empty() && self.live_more {
            return Some(Read { side: Side::Live, after: self.live_read, before: i64::MAX, limit: READ_CHUNK });
        }
        match self.replay_pos {
            Some(pos) if self.replay_buf.is_empty() => {
                Some(Read { side: Side::Replay, after: pos, before: self.live_pos + 1, limit: READ_CHUNK })
            }
            _ => None,
        }
    }

    /// The rows a `Read` asked for.
    pub fn rows(&mut self, read: Read, rows: Vec<Queued>) {
        match read.side {
            Side::Live => {
                if rows.len() < read.limit {
                    self.live_more = false;
                }
                if let Some(last) = rows.last() {
                    self.live_read = self.live_read.max(last.id);
                }
                self.live_buf.extend(rows);
            }
            Side::Replay => {
                let Some(last) = rows.last() else {
                    self.replay_pos = None;
                    self.backlog.clear();
                    self.sent_live.clear();
                    self.done_ahead.clear();
                    return;
                };
                self.replay_pos = Some(last.id);
                self.replay_buf.extend(rows);
            }
        }
    }

    fn take_pkid(&mut self) -> Option<u16> {
        for _ in 0..PKID_SPACE {
            let p = self.next_pkid;
            self.next_pkid = if p >= PKID_SPACE { 1 } else { p + 1 };
            if !self.flights.contains_key(&p) {
                return Some(p);
            }
        }
        None
    }

    /// Queues the gateway's own status message (QoS 1, not stored: the next connection sends its own).
    pub fn send_status(&mut self, record: Record) {
        self.control.push_back(Control::Status(record));
    }

    /// Queues a SUBSCRIBE for the downlink filters.
    pub fn send_subscribe(&mut self, filters: Vec<(String, u8)>) {
        if !filters.is_empty() {
            self.control.push_back(Control::Subscribe(filters));
        }
    }

    /// Whether a status message is queued or not yet acknowledged.
    pub fn status_unacked(&self) -> bool {
        self.control.iter().any(|c| matches!(c, Control::Status(_)))
            || self.flights.values().any(|(_, f)| matches!(f, Flight::Status))
    }

    fn has_free_pkid(&self) -> bool {
        self.flights.len() < PKID_SPACE as usize
    }

    /// A QoS 2 message not yet in flight while `QOS2_WINDOW` are.
    fn waits_for_qos2_slot(&self, q: &Queued) -> bool {
        q.record.qos == 2 && self.flying_qos2 >= QOS2_WINDOW && !self.flying.contains(&q.id)
    }

    /// Hands out a queued message under a new packet id; only called when `room()` says one is free.
    fn launch(&mut self, q: Queued) -> Send {
        if q.record.qos == 0 {
            self.acked.push(q.id);
            return Send::Publish { pkid: 0, dup: false, record: q.record };
        }
        let pkid = self.take_pkid().unwrap_or(PKID_SPACE);
        if q.record.qos == 2 {
            self.flying_qos2 += 1;
            self.stages.push(StageChange { id: q.id, pkid, stage: Some(Stage::Published) });
        }
        self.flying.insert(q.id);
        let record = q.record.clone();
        self.hold(pkid, Flight::Data { id: q.id, record: q.record, stage: Stage::Published });
        Send::Publish { pkid, dup: false, record }
    }

    /// The next packet to send, if the window, the replay rate and the rows read allow one. When this
    /// returns None, ask `next_read`; when both do, wait for the broker, a commit or a tick.
    pub fn next_send(&mut self, now: Instant) -> Option<Send> {
        if !self.connected {
            return None;
        }
        if let Some(s) = self.urgent.pop_front() {
            return Some(s);
        }
        if self.has_free_pkid() {
            if let Some(c) = self.control.pop_front() {
                let pkid = self.take_pkid().unwrap_or(PKID_SPACE);
                return Some(match c {
                    Control::Status(record) => {
                        self.hold(pkid, Flight::Status);
                        Send::Publish { pkid, dup: false, record }
                    }
                    Control::Subscribe(filters) => {
                        self.hold(pkid, Flight::Subscribe);
                        Send::Subscribe { pkid, filters }
                    }
                });
            }
        }
        // Live: everything accepted since the connection came up.
        while self.room() {
            let Some(q) = self.live_buf.pop_front() else { break };
            if self.waits_for_qos2_slot(&q) {
                // Nothing behind it overtakes it.
                self.live_buf.push_front(q);
                return None;
            }
            self.live_pos = q.id;
            if self.flying.contains(&q.id) {
                continue;
            }
            let behind_backlog = self.replay_pos.is_some() && self.backlog.get(&q.record.topic).is_some_and(|n| *n > 0);
            if behind_backlog {
                // Same topic still has older messages to replay: it goes out with them, in order.
                *self.backlog.entry(q.record.topic.clone()).or_default() += 1;
                self.budget.deferred();
                continue;
            }
            if self.replay_pos.is_some() {
                self.sent_live.insert(q.id);
            }
            return Some(self.launch(q));
        }
        // Replay: oldest first, at most `replay_rate` per second, never past what the live side has
        // looked at, so deferred live messages are sent by the replay, in order.
        self.replay_pos?;
        self.budget.refill(now);
        while self.room() && self.budget.allows() {
            let q = self.replay_buf.pop_front()?;
            if self.waits_for_qos2_slot(&q) {
                self.replay_buf.push_front(q);
                return None;
            }
            self.replay_seen = q.id;
            if self.sent_live.remove(&q.id) {
                continue;
            }
            let topic_done = |b: &mut HashMap<String, u64>, t: &str| {
                if let Some(n) = b.get_mut(t) {
                    *n = n.saturating_sub(1);
                }
            };
            if self.flying.contains(&q.id) || self.done_ahead.remove(&q.id) {
                // Resent as a flight already.
                topic_done(&mut self.backlog, &q.record.topic);
                continue;
            }
            self.budget.spend();
            topic_done(&mut self.backlog, &q.record.topic);
            return Some(self.launch(q));
        }
        None
    }

    /// When the replay rate next allows a message (for the link's timer), if it is waiting on it.
    pub fn replay_wakeup(&self, now: Instant) -> Option<Instant> {
        if self.replay_pos.is_none() || !self.room() {
            return None;
        }
        self.budget.next_allowed(now)
    }
}

#[cfg(test)]
mod tests;
