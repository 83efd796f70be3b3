//! The outbox driven against an in-memory queue: ids, stages, windows and replay order.

use super::*;
use std::time::Duration;

fn q(id: i64, topic: &str, qos: u8) -> Queued {
    Queued {
        id,
        record: Record { topic: topic.into(), payload: id.to_string().into(), qos, retain: false, accepted_ms: 0 },
    }
}

/// Drives the outbox against an in-memory queue until it has nothing more to send now.
fn pump(o: &mut Outbox, queue: &[Queued], now: Instant) -> Vec<Send> {
    let mut out = Vec::new();
    loop {
        if let Some(r) = o.next_read() {
            let rows = queue.iter().filter(|x| x.id > r.after && x.id < r.before).take(r.limit).cloned().collect();
            o.rows(r, rows);
            continue;
        }
        match o.next_send(now) {
            Some(s) => out.push(s),
            None if o.next_read().is_some() => continue,
            None => return out,
        }
    }
}

fn ids(sends: &[Send]) -> Vec<(u16, bool, String)> {
    sends
        .iter()
        .map(|s| match s {
            Send::Publish { pkid, dup, record } => (*pkid, *dup, String::from_utf8(record.payload.to_vec()).unwrap()),
            Send::PubRel { pkid } => (*pkid, false, "rel".into()),
            Send::Subscribe { pkid, .. } => (*pkid, false, "sub".into()),
        })
        .collect()
}

#[test]
fn a_resumed_session_resends_unfinished_qos2_with_the_same_ids_before_anything_new() {
    let t = Instant::now();
    let mut o = Outbox::new(10, 1000, t);
    o.sweep_owed = false;
    let mut queue: Vec<Queued> = (1..=3).map(|i| q(i, "t", 2)).collect();
    o.connected(true, 0, HashMap::new(), t);
    let sent = pump(&mut o, &queue, t);
    assert_eq!(ids(&sent), vec![(1, false, "1".into()), (2, false, "2".into()), (3, false, "3".into())]);
    // 1 is complete, 2 got its PUBREC (PUBREL sent), 3 nothing; then the link breaks.
    assert_eq!(o.pubrec(1), Send::PubRel { pkid: 1 });
    o.pubcomp(1);
    o.pubrec(2);
    assert_eq!(o.take_acked(), vec![1]);
    o.disconnected();
    queue.remove(0);
    queue.push(q(4, "t", 2));
    o.connected(true, 4, HashMap::from([("t".to_string(), 3)]), t + Duration::from_secs(1));
    let sent = pump(&mut o, &queue, t + Duration::from_secs(1));
    // PUBREL 2 and PUBLISH 3 (DUP) again, then 4 under an id the broker does not hold.
    assert_eq!(ids(&sent), vec![(2, false, "rel".into()), (3, true, "3".into()), (4, false, "4".into())]);
}

#[test]
fn a_resent_message_acknowledged_while_its_row_waits_in_the_replay_buffer_is_not_sent_again() {
    let t = Instant::now();
    let mut o = Outbox::new(10, 1, t);
    let queue: Vec<Queued> = (1..=3).map(|i| q(i, "t", 2)).collect();
    o.connected(false, 0, HashMap::new(), t);
    pump(&mut o, &queue, t);
    o.pubrec(1);
    o.pubcomp(1);
    o.disconnected();
    // 2 and 3 are resent; the replay (1 message/s) reads 2 and 3 into its buffer.
    let rest = &queue[1..];
    o.connected(true, 3, HashMap::from([("t".to_string(), 2)]), t);
    let sent = pump(&mut o, rest, t);
    assert_eq!(ids(&sent), vec![(2, true, "2".into()), (3, true, "3".into())]);
    o.pubrec(2);
    o.pubcomp(2);
    o.pubrec(3);
    o.pubcomp(3);
    let later = pump(&mut o, rest, t + Duration::from_secs(5));
    assert!(later.is_empty(), "acknowledged messages sent again: {later:?}");
    assert_eq!(o.take_acked(), vec![1, 2, 3]);
}

#[test]
fn a_lost_session_resends_everything_unfinished_as_new() {
    let t = Instant::now();
    let mut o = Outbox::new(10, 1000, t);
    let queue: Vec<Queued> = (1..=2).map(|i| q(i, "t", 2)).collect();
    o.connected(false, 0, HashMap::new(), t);
    pump(&mut o, &queue, t);
    o.pubrec(1);
    o.disconnected();
    o.connected(false, 2, HashMap::from([("t".to_string(), 2)]), t);
    let sent = pump(&mut o, &queue, t);
    assert_eq!(ids(&sent), vec![(1, false, "1".into()), (2, false, "2".into())]);
    assert!(o.take_stages().iter().any(|c| c.id == 1 && c.stage == Some(Stage::Published)));
}

#[test]
fn the_first_resumed_session_after_a_restart_releases_every_unknown_id_first() {
    let t = Instant::now();
    let mut o = Outbox::new(10, 1000, t);
    o.restore(vec![(q(7, "t", 2), 5, Stage::Released)]);
    let queue = vec![q(7, "t", 2), q(8, "t", 2)];
    o.connected(true, 8, HashMap::from([("t".to_string(), 2)]), t);
    let birth = q(0, "status", 1).record;
    o.send_status(birth.clone());
    let sent = pump(&mut o, &queue, t);
    // The restored PUBREL, then one PUBREL per other id; nothing new while all ids are taken.
    assert_eq!(sent.len(), PKID_SPACE as usize);
    assert_eq!(sent[0], Send::PubRel { pkid: 5 });
    assert!(sent.iter().all(|s| matches!(s, Send::PubRel { .. })));
    for p in 1..=PKID_SPACE {
        o.pubcomp(p);
    }
    assert_eq!(o.take_acked(), vec![7]);
    // The birth waited for a released id, then new messages go.
    let sent = pump(&mut o, &queue, t + Duration::from_secs(1));
    assert_eq!(ids(&sent), vec![(1, false, "0".into()), (2, false, "8".into())]);
    assert!(o.status_unacked());
    assert!(o.puback(1));
    assert!(!o.status_unacked());
    // A later resumed session owes no sweep.
    o.disconnected();
    o.connected(true, 8, HashMap::new(), t);
    assert_eq!(ids(&pump(&mut o, &queue, t)), vec![(2, true, "8".into())]);
}

#[test]
fn ids_are_not_reused_while_held_and_the_window_bounds_what_is_outstanding() {
    let t = Instant::now();
    let mut o = Outbox::new(3, 1000, t);
    let queue: Vec<Queued> = (1..=10).map(|i| q(i, "t", 1)).collect();
    o.connected(false, 0, HashMap::new(), t);
    let sent = pump(&mut o, &queue, t);
    assert_eq!(sent.len(), 3);
    assert!(o.puback(2));
    let sent = pump(&mut o, &queue, t);
    assert_eq!(ids(&sent), vec![(4, false, "4".into())]);
    assert_eq!(o.take_acked(), vec![2]);
    assert!(!o.puback(2), "a second PUBACK for a finished id is not ours");
}

#[test]
fn live_messages_of_a_topic_with_backlog_wait_behind_it_and_others_go_at_once() {
    let t = Instant::now();
    let mut o = Outbox::new(100, 5, t);
    // Backlog: 1..=3 on "old"; live: 4 on "old", 5 on "new".
    let queue = vec![q(1, "old", 1), q(2, "old", 1), q(3, "old", 1), q(4, "old", 1), q(5, "new", 1)];
    o.connected(false, 3, HashMap::from([("old".to_string(), 3)]), t);
    let sent = pump(&mut o, &queue, t);
    assert_eq!(ids(&sent)[0], (1, false, "5".into()), "the other topic goes at once");
    // One backlog message on the starting token, and one more for the live message deferred behind it.
    assert_eq!(sent.len(), 3);
    let mut all = ids(&sent)[1..].to_vec();
    for s in 1..=10 {
        all.extend(ids(&pump(&mut o, &queue, t + Duration::from_millis(200 * s))));
    }
    let order: Vec<String> = all.into_iter().map(|x| x.2).collect();
    assert_eq!(order, vec!["1", "2", "3", "4"]);
    assert!(!o.replaying());
}

#[test]
fn qos2_in_flight_is_bounded_below_the_window_and_waits_in_order() {
    let t = Instant::now();
    let mut o = Outbox::new(100, 1000, t);
    let queue: Vec<Queued> = (1..=30).map(|i| q(i, "t", 2)).collect();
    o.connected(false, 0, HashMap::new(), t);
    let sent = pump(&mut o, &queue, t);
    assert_eq!(sent.len(), QOS2_WINDOW);
    o.pubrec(1);
    assert!(pump(&mut o, &queue, t).is_empty(), "a released message still holds its slot");
    o.pubcomp(1);
    let sent = pump(&mut o, &queue, t);
    assert_eq!(ids(&sent), vec![(11, false, "11".into())]);
}

#[test]
fn qos0_is_acknowledged_as_it_goes_out() {
    let t = Instant::now();
    let mut o = Outbox::new(1, 1000, t);
    let queue: Vec<Queued> = (1..=3).map(|i| q(i, "t", 0)).collect();
    o.connected(false, 0, HashMap::new(), t);
    assert_eq!(pump(&mut o, &queue, t).len(), 3);
    assert_eq!(o.take_acked(), vec![1, 2, 3]);
}

#[test]
fn a_backlog_drains_even_when_readings_arrive_faster_than_replay_rate() {
    let t = Instant::now();
    let mut o = Outbox::new(1000, 10, t);
    let mut queue: Vec<Queued> = (1..=100).map(|i| q(i, "a", 1)).collect();
    o.connected(false, 100, HashMap::from([("a".to_string(), 100)]), t);
    let mut sent = Vec::new();
    let mut next = 101;
    // 500 readings/s arrive on the topic with the backlog, 50 times the replay rate.
    for step in 1..=150u64 {
        for _ in 0..50 {
            queue.push(q(next, "a", 1));
            next += 1;
        }
        o.committed();
        let out = ids(&pump(&mut o, &queue, t + Duration::from_millis(100 * step)));
        // The broker acknowledges each step's messages before the next step.
        for (pkid, _, _) in &out {
            o.puback(*pkid);
        }
        sent.extend(out);
    }
    let order: Vec<i64> = sent.iter().map(|x| x.2.parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order");
    // The replay sends each deferred reading as it comes plus `replay_rate` more: the 100 old ones
    // are caught up after 10 s. Charging deferred readings to the rate would send 10/s and never
    // catch up.
    assert!(!o.replaying(), "the backlog drained; sent {} of {}", order.len(), next - 1);
    assert_eq!(order.len() as i64, next - 1, "everything is out");
}

#[test]
fn a_refused_message_ends_its_exchange_as_refused_not_acked_and_frees_its_id() {
    let t = Instant::now();
    let mut o = Outbox::new(10, 1000, t);
    o.sweep_owed = false;
    let queue = vec![q(1, "a", 1), q(2, "b", 2), q(3, "c", 1)];
    o.connected(false, 0, HashMap::new(), t);
    let sent = pump(&mut o, &queue, t);
    assert_eq!(sent.len(), 3);
    // MQTT 5: PUBACK 0x87 for 1, PUBREC 0x97 for 2, a plain PUBACK for 3.
    assert_eq!(o.refused(1).as_deref(), Some("a"));
    assert_eq!(o.refused(2).as_deref(), Some("b"));
    assert!(o.puback(3));
    assert_eq!(o.take_refused(), vec![1, 2]);
    assert_eq!(o.take_acked(), vec![3]);
    assert_eq!(o.refused(1), None, "an id already finished is not ours any more");
    // Nothing is owed for them: no PUBREL for the refused QoS 2, no resend.
    assert!(pump(&mut o, &queue, t + Duration::from_secs(60)).is_empty());
}

#[test]
fn an_mqtt5_receive_maximum_narrows_the_window_and_a_later_connection_widens_it_again() {
    let t = Instant::now();
    let mut o = Outbox::new(100, 100_000, t);
    o.sweep_owed = false;
    let queue: Vec<Queued> = (1..=50).map(|i| q(i, "t", 1)).collect();
    o.limit_window(Some(10));
    o.connected(false, 0, HashMap::new(), t);
    assert_eq!(pump(&mut o, &queue, t).len(), 9, "one short of the broker's 10, for the status message");
    o.disconnected();
    o.limit_window(None);
    o.connected(false, 0, HashMap::new(), t);
    assert_eq!(pump(&mut o, &queue, t).len(), 50, "the configured window again");
}
