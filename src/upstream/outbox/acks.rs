//! Acknowledgements in: what PUBACK, PUBREC, PUBCOMP and SUBACK mean for the flights, and the
//! queue ids and QoS 2 stages they hand to the store.

use super::*;

impl Outbox {
    pub fn suback(&mut self, pkid: u16) {
        if matches!(self.flights.get(&pkid), Some((_, Flight::Subscribe))) {
            self.flights.remove(&pkid);
        }
    }

    fn finish(&mut self, pkid: u16) {
        if let Some((_, Flight::Data { id, record, .. })) = self.flights.remove(&pkid) {
            self.flying.remove(&id);
            if record.qos == 2 {
                self.flying_qos2 -= 1;
            }
            self.acked.push(id);
            // Not yet dealt with by the replay (maybe already read into its buffer): it must skip it.
            if self.replay_pos.is_some() && id > self.replay_seen && !self.sent_live.contains(&id) {
                self.done_ahead.insert(id);
            }
        }
    }

    /// PUBACK: a QoS 1 message (or status message) is delivered. Returns whether the id was ours.
    pub fn puback(&mut self, pkid: u16) -> bool {
        match self.flights.get(&pkid) {
            Some((_, Flight::Data { record, .. })) if record.qos == 1 => {
                self.finish(pkid);
                true
            }
            Some((_, Flight::Status)) => {
                self.flights.remove(&pkid);
                true
            }
            _ => false,
        }
    }

    /// PUBREC: the broker has a QoS 2 message; the PUBREL to send back. An id we do not know is
    /// released too: only the broker can be holding it.
    pub fn pubrec(&mut self, pkid: u16) -> Send {
        if let Some((_, Flight::Data { id, stage, record })) = self.flights.get_mut(&pkid) {
            if record.qos == 2 && *stage == Stage::Published {
                *stage = Stage::Released;
                self.stages.push(StageChange { id: *id, pkid, stage: Some(Stage::Released) });
            }
        }
        Send::PubRel { pkid }
    }

    /// PUBCOMP: a QoS 2 message is delivered (or a sweep id released).
    pub fn pubcomp(&mut self, pkid: u16) {
        match self.flights.get(&pkid) {
            Some((_, Flight::Data { stage: Stage::Released, .. })) => self.finish(pkid),
            Some((_, Flight::Release)) => {
                self.flights.remove(&pkid);
            }
            _ => {}
        }
    }

    /// Queue ids acknowledged since the last call (the store may delete them).
    pub fn take_acked(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.acked)
    }

    /// QoS 2 stage changes since the last call (the store commits them with the queue).
    pub fn take_stages(&mut self) -> Vec<StageChange> {
        std::mem::take(&mut self.stages)
    }
}
