//! The store on real SQLite files: bounds, counters, corruption, stages and reopening.

use super::*;

fn settings(dir: &Path, max_bytes: u64, when_full: WhenFull) -> QueueSettings {
    QueueSettings {
        path: dir.join("queue.db"),
        max_bytes,
        max_age: Duration::from_secs(3600),
        when_full,
        commit_interval: Duration::from_millis(100),
        sync: SyncMode::Full,
        replay_rate: 100,
        inflight: 10,
    }
}

fn rec(i: usize) -> Record {
    Record { topic: "t".into(), payload: format!("{i:09}").into(), qos: 1, retain: false, accepted_ms: now_ms() }
}

#[test]
fn drop_oldest_keeps_the_newest_within_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), 100, WhenFull::DropOldest);
    let store = Store::open(&s.path, Some(s.clone())).unwrap();
    let recs: Vec<Record> = (0..25).map(rec).collect();
    for chunk in recs.chunks(4) {
        store.append(chunk, &[], &[], &[], &[]).unwrap();
    }
    // 10 bytes per record, 100 bytes allowed: the last 10 survive.
    let got: Vec<String> = store
        .read(0, i64::MAX, 100)
        .unwrap()
        .into_iter()
        .map(|q| String::from_utf8(q.record.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (15..25).map(|i| format!("{i:09}")).collect();
    assert_eq!(got, want);
    let st = store.status();
    assert_eq!((st.depth, st.bytes, st.dropped_full, st.accepted), (10, 100, 15, 25));
    drop(store);
    // Counters and depth survive a reopen.
    assert_eq!(Store::read_status(&s.path).unwrap().dropped_full, 15);
}

#[test]
fn an_unreadable_file_is_moved_aside_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let store = Store::open(&path, None).unwrap();
    store.append(&[], &[Record { retain: true, ..rec(1) }], &[], &[], &[]).unwrap();
    assert_eq!(store.retained().unwrap().len(), 1);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("queue.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
}

#[test]
fn a_torn_wal_tail_loses_only_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), 1 << 20, WhenFull::DropOldest);
    let store = Store::open(&s.path.clone(), Some(s.clone())).unwrap();
    let recs: Vec<Record> = (0..50).map(rec).collect();
    for chunk in recs.chunks(10) {
        store.append(chunk, &[], &[], &[], &[]).unwrap();
    }
    // What a power cut leaves: the files as they are while the store is open, the WAL's last
    // frame cut short.
    let crash = tempfile::tempdir().unwrap();
    std::fs::copy(&s.path, crash.path().join("queue.db")).unwrap();
    let wal = std::fs::read(dir.path().join("queue.db-wal")).unwrap();
    std::fs::write(crash.path().join("queue.db-wal"), &wal[..wal.len() - 100]).unwrap();
    let reopened = Store::open(&crash.path().join("queue.db"), Some(s)).unwrap();
    let got = reopened.read(0, i64::MAX, 100).unwrap();
    assert_eq!(got.len(), 40, "the torn commit is rolled back, the ones before it survive");
    assert_eq!(&got[39].record.payload[..], b"000000039");
    assert_eq!(reopened.status().corrupted, 0);
}

#[test]
fn reject_newest_keeps_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), 100, WhenFull::RejectNewest);
    let store = Store::open(&s.path.clone(), Some(s)).unwrap();
    let recs: Vec<Record> = (0..25).map(rec).collect();
    store.append(&recs, &[], &[], &[], &[]).unwrap();
    let got = store.read(0, i64::MAX, 100).unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!(&got[9].record.payload[..], b"000000009");
    assert_eq!(store.status().rejected_full, 15);
}
