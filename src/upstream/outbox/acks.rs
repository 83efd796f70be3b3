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
        self.finish_as(pkid, false);
    }

    /// Ends a message's exchange: delivered, or refused by the broker.
    fn finish_as(&mut self, pkid: u16, refused: bool) {
        if let Some((_, Flight::Data { id, record, .. })) = self.flights.remove(&pkid) {
            self.flying.remove(&id);
            if record.qos == 2 {
                self.flying_qos2 -= 1;
            }
            if refused {
                self.refused.push(id);
            } else {
                self.acked.push(id);
            }
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

    /// MQTT 5: a PUBACK or PUBREC with a failure reason code: the broker will not deliver the message
    /// and its exchange is over (no PUBREL follows). Returns its topic if the id was one of ours.
    pub fn refused(&mut self, pkid: u16) -> Option<String> {
        match self.flights.get(&pkid) {
            Some((_, Flight::Data { record, .. })) => {
                let topic = record.topic.clone();
                self.finish_as(pkid, true);
                Some(topic)
            }
            Some((_, Flight::Status)) => {
                self.flights.remove(&pkid);
                None
            }
            _ => None,
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

    /// Queue ids the broker refused since the last call (the store deletes them as refused).
    pub fn take_refused(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.refused)
    }

    /// QoS 2 stage changes since the last call (the store commits them with the queue).
    pub fn take_stages(&mut self) -> Vec<StageChange> {
        std::mem::take(&mut self.stages)
    }
}
