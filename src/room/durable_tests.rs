//! A room behind a store: visibility gated by the store, rollback on a failed append, restore
//! from what was stored (state, revision, epoch, ring, undo stacks, dedupe), checked against the
//! in-memory store with fault injection.

use std::sync::{Arc, Weak};

use serde_json::{Value, json};

use super::*;
use crate::ids::{ClientId, ClientReqId};
use crate::store::memory::MemoryStore;
use crate::store::{IdempotencyKey, Journal, Store};

fn id() -> RoomId {
    RoomId::parse("durable").unwrap()
}

fn stored(store: &Arc<MemoryStore>, config: RoomConfig) -> Arc<Room> {
    let room = Arc::new(Room::new(id(), config));
    attach(store, &room);
    room
}

fn attach(store: &Arc<MemoryStore>, room: &Arc<Room>) {
    let journal: Weak<dyn Journal> = Arc::downgrade(room) as _;
    room.attach_log(store.open(room.id(), room.epoch().as_str(), journal));
}

fn restored(store: &Arc<MemoryStore>, config: RoomConfig) -> Arc<Room> {
    let mut restore = Restore::new(id(), config.clone(), &Budget::unlimited());
    let loaded = store.load_with(&id(), config.history, &mut restore).unwrap().expect("stored");
    let (room, damage) = restore.finish(loaded).unwrap();
    assert!(damage.is_empty(), "{damage:?}");
    let room = Arc::new(room);
    attach(store, &room);
    room
}

fn change(author: u64, req: u64, ops: Value) -> ChangeRequest {
    ChangeRequest {
        author: ClientId(author),
        user: None,
        client_req_id: Some(ClientReqId(req)),
        base_rev: None,
        mode: protocol::Mode::Overwrite,
        ops: patch::parse_patch(ops).unwrap(),
        extras: Extras { session: Some(format!("token-{author}").into()), ..Extras::default() },
    }
}

fn set(author: u64, req: u64, key: &str, v: i64) -> ChangeRequest {
    change(author, req, json!([{"op": "add", "path": format!("/{key}"), "value": v}]))
}

#[test]
fn a_failed_append_rolls_the_room_back_and_rejects_the_author_unavailable() {
    let store = MemoryStore::new();
    let room = stored(&store, RoomConfig::default());
    room.commit(set(1, 1, "a", 1)).unwrap();
    let before = room.snapshot();
    store.set_failing(true);
    let lost = room.commit(set(1, 2, "b", 2)).unwrap();
    assert_eq!(room.outcome(&lost), Outcome::RolledBack);
    assert_eq!(room.rev().0, 1);
    assert_eq!(room.state(), (Rev(1), json!({"a": 1})));
    let mut seen = 0;
    let rejects = room.rejections_for(ClientId(1), &mut seen);
    assert_eq!(rejects.len(), 1);
    assert_eq!((rejects[0].client_req_id, rejects[0].reject.code), (ClientReqId(2), ErrorCode::Unavailable));
    assert!(room.rejections_for(ClientId(2), &mut 0).is_empty(), "only the author is told");
    assert_eq!(room.snapshot().state, before.state);
    // The store is back: the next change takes the revision the lost one had.
    store.set_failing(false);
    let next = room.commit(set(1, 3, "c", 3)).unwrap();
    assert_eq!((next.rev.0, room.outcome(&next)), (2, Outcome::Written));
    assert_eq!(room.state().1, json!({"a": 1, "c": 3}));
    let revs: Vec<u64> = store.records(&id()).iter().map(|r| r.rev).collect();
    assert_eq!(revs, [1, 2]);
    assert_eq!(store.records(&id())[1].ops, r#"[{"op":"add","path":"/c","value":3}]"#);
}

#[test]
fn a_restored_room_keeps_state_rev_epoch_ring_stacks_and_dedupe() {
    let store = MemoryStore::new();
    let config = RoomConfig { snapshot_every: 3, ..RoomConfig::default() };
    let room = stored(&store, config.clone());
    for i in 1..=7 {
        room.commit(set(1 + i % 2, i, &format!("k{i}"), i as i64)).unwrap();
    }
    assert_eq!(store.snapshots(&id()).iter().map(|s| s.rev).collect::<Vec<_>>(), [3, 6]);
    let back = restored(&store, config);
    assert_eq!(back.epoch(), room.epoch());
    assert_eq!(back.state(), room.state());
    assert_eq!(back.rev().0, 7);
    // The ring reaches back past the snapshot: a reader at 2 gets a delta, with the same bytes.
    let mut a = Vec::new();
    let mut b = Vec::new();
    assert!(back.changes_after(Rev(2), &mut a) && room.changes_after(Rev(2), &mut b));
    assert_eq!(
        a.iter().map(|c| c.delta_frame.clone()).collect::<Vec<_>>(),
        b.iter().map(|c| c.delta_frame.clone()).collect::<Vec<_>>()
    );
    // Dedupe: each session's highest clientReqId and its client id.
    let s = back.stored_session("token-1").unwrap();
    assert_eq!((s.client, s.last_req), (1, 6));
    assert_eq!(back.max_client(), 2);
    // Undo stacks: client 2's last change (rev 7) is undone after the restore.
    let undo = ChangeRequest {
        ops: Vec::new(),
        extras: Extras { kind: protocol::ChangeKind::Undo, ..Extras::default() },
        ..set(2, 8, "x", 0)
    };
    let undone = back.commit(undo).unwrap();
    assert_eq!(undone.reverts, Some(Rev(7)));
    assert!(back.state().1.get("k7").is_none());
}

#[test]
fn an_idempotency_key_commits_once_and_its_answer_survives_a_restore() {
    let store = MemoryStore::new();
    let room = stored(&store, RoomConfig::default());
    let key = IdempotencyKey { key: "k-1".into(), fingerprint: 42 };
    let with_key = |v| {
        let mut req = set(0, 0, "n", v);
        (req.author, req.client_req_id, req.extras.session) = (ClientId::HTTP, None, None);
        req.extras.idempotency = Some(key.clone());
        req
    };
    let first = room.commit(with_key(1)).unwrap();
    assert_eq!(room.commit(with_key(1)).unwrap_err().code, ErrorCode::Duplicate);
    assert_eq!(room.rev().0, 1);
    let (rev, response) = room.idempotent_answer(&key).unwrap().unwrap();
    assert_eq!((rev, response), (first.rev, first.http_response()));
    let other = IdempotencyKey { fingerprint: 7, ..key.clone() };
    assert_eq!(room.idempotent_answer(&other), Some(Err(())));
    let back = restored(&store, RoomConfig::default());
    assert_eq!(back.idempotent_answer(&key).unwrap().unwrap().1, first.http_response());
}

#[test]
fn a_room_restored_from_a_snapshot_alone_starts_its_ring_there() {
    let store = MemoryStore::new();
    let config = RoomConfig { snapshot_every: 2, history: 2, ..RoomConfig::default() };
    let room = stored(&store, config.clone());
    for i in 1..=6 {
        room.commit(set(1, i, "v", i as i64)).unwrap();
    }
    let back = restored(&store, config);
    assert_eq!(back.state(), (Rev(6), json!({"v": 6})));
    let mut out = Vec::new();
    assert!(back.changes_after(Rev(4), &mut out));
    assert_eq!(out.len(), 2);
    assert!(!back.changes_after(Rev(3), &mut out), "older than the ring: a snapshot");
    let next = back.commit(set(1, 7, "v", 7)).unwrap();
    assert_eq!(next.rev.0, 7);
}

#[test]
fn nothing_is_visible_before_the_store_writes_it() {
    let store = MemoryStore::new();
    let room = stored(&store, RoomConfig::default());
    room.commit(set(1, 1, "a", 1)).unwrap();
    let before = room.snapshot();
    store.hold();
    let pending = room.commit(set(1, 2, "b", 2)).unwrap();
    room.commit(set(2, 1, "c", 3)).unwrap();
    // Committed in memory, not written: readers, snapshots and the HTTP view stay at rev 1.
    assert_eq!((room.rev().0, room.outcome(&pending)), (1, Outcome::Pending));
    assert_eq!(room.state(), (Rev(1), json!({"a": 1})));
    assert_eq!(room.snapshot().state, before.state);
    assert!(matches!(room.catch_up(Cursor::Holds(Rev(1)), ClientId(9), &mut Vec::new()), CatchUp::Current));
    assert_eq!(room.state_at(Rev(2)), Err(TimeTravel::Future { head: 1 }));
    // A reader at rev 1 is not told client 1's second change was processed: it is not in rev 1.
    assert_eq!(room.processed_as_of(ClientId(1), ClientReqId(2), Rev(1)), ClientReqId(1));
    assert_eq!(room.processed_as_of(ClientId(2), ClientReqId(1), Rev(1)), ClientReqId(0));
    store.release();
    assert_eq!((room.rev().0, room.outcome(&pending)), (3, Outcome::Written));
    assert_eq!(room.state().1, json!({"a": 1, "b": 2, "c": 3}));
    assert_eq!(room.processed_as_of(ClientId(1), ClientReqId(2), Rev(3)), ClientReqId(2));
    match room.catch_up(Cursor::Holds(Rev(1)), ClientId(9), &mut Vec::new()) {
        CatchUp::Delta { from, to, .. } => assert_eq!((from, to), (Rev(1), Rev(3))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failure_after_a_slow_append_rolls_back_only_what_was_not_stored() {
    let store = MemoryStore::new();
    let room = stored(&store, RoomConfig::default());
    room.commit(set(1, 1, "a", 1)).unwrap();
    store.hold();
    let stored_late = room.commit(set(1, 2, "b", 2)).unwrap();
    store.set_failing(true);
    let failed = room.commit(set(2, 1, "c", 3)).unwrap();
    let also = room.commit(set(1, 3, "d", 4)).unwrap();
    // The store reports the stored one written before the failure: only later ones go back.
    assert_eq!(room.outcome(&stored_late), Outcome::Written);
    assert_eq!((room.outcome(&failed), room.outcome(&also)), (Outcome::RolledBack, Outcome::RolledBack));
    assert_eq!(room.state(), (Rev(2), json!({"a": 1, "b": 2})));
    assert_eq!(room.rejections_for(ClientId(1), &mut 0).len(), 1);
    assert_eq!(room.rejections_for(ClientId(2), &mut 0).len(), 1);
    store.set_failing(false);
    store.release();
    let next = room.commit(set(1, 4, "e", 5)).unwrap();
    assert_eq!((next.rev.0, room.rev().0), (3, 3));
    let revs: Vec<u64> = store.records(&id()).iter().map(|r| r.rev).collect();
    assert_eq!(revs, [1, 2, 3], "what the room shows is what is stored");
    let back = restored(&store, RoomConfig::default());
    assert_eq!(back.state(), room.state());
}
