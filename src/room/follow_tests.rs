//! A follower copy checked against its owner: it takes the owner's stored records into the same
//! state, revisions, acks and dedupe state; it refuses to commit itself; a record it already
//! holds is ignored and one after a gap is refused; a forwarded change's reject reaches its
//! author only. The wire form of a forwarded request round-trips.

use std::sync::{Arc, Weak};

use serde_json::json;

use super::follow::Followed;
use super::*;
use crate::ids::{ClientId, ClientReqId};
use crate::store::memory::MemoryStore;
use crate::store::{Journal, Store};

fn id() -> RoomId {
    RoomId::parse("followed").unwrap()
}

fn change(author: u64, req: u64, ops: serde_json::Value) -> ChangeRequest {
    ChangeRequest {
        author: ClientId(author),
        user: Some("u".into()),
        client_req_id: Some(ClientReqId(req)),
        base_rev: Some(Rev(0)),
        mode: protocol::Mode::Overwrite,
        ops: patch::parse_patch(ops).unwrap(),
        extras: Extras {
            session: Some(format!("token-{author}").into()),
            meta: Some(json!({"why": "test"})),
            ..Extras::default()
        },
    }
}

/// An owner room on a memory store, and a follower copy of it as it was before any change.
fn owner_and_follower() -> (Arc<MemoryStore>, Arc<Room>, Room) {
    let store = MemoryStore::new();
    let owner = Arc::new(Room::new(id(), RoomConfig::default()));
    let journal: Weak<dyn Journal> = Arc::downgrade(&owner) as _;
    owner.attach_log(store.open(owner.id(), owner.epoch().as_str(), journal));
    let follower = Room::new(id(), RoomConfig::default());
    follower.set_follower();
    (store, owner, follower)
}

#[test]
fn a_follower_takes_the_owners_records_into_the_same_room() {
    let (store, owner, follower) = owner_and_follower();
    owner.commit(change(7, 1, json!([{"op": "add", "path": "/a", "value": [1, 2]}]))).unwrap();
    owner.commit(change(8, 1, json!([{"op": "add", "path": "/a/-", "value": 3}]))).unwrap();
    owner.commit(change(7, 2, json!([{"op": "incr", "path": "/n", "value": 5}]))).unwrap();
    let undo = ChangeRequest {
        ops: Vec::new(),
        extras: Extras { kind: protocol::ChangeKind::Undo, ..change(7, 3, json!([])).extras },
        mode: protocol::Mode::Overwrite,
        ..change(7, 3, json!([]))
    };
    owner.commit(undo).unwrap();
    let records = store.records(owner.id());
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(follower.follow(r), Ok(Followed::Applied));
    }
    assert_eq!(follower.state(), owner.state());
    assert_eq!(follower.rev(), Rev(4));
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    assert!(follower.changes_after(Rev(0), &mut mine));
    assert!(owner.changes_after(Rev(0), &mut theirs));
    for (m, t) in mine.iter().zip(&theirs) {
        assert_eq!((m.rev, m.author, m.client_req_id, m.ts), (t.rev, t.author, t.client_req_id, t.ts));
        assert_eq!(m.delta_frame, t.delta_frame, "the same bytes go out on either node");
        assert_eq!(m.wire_ack, t.wire_ack, "the author's ack too");
    }
    let s = follower.stored_session("token-7").expect("dedupe state follows");
    assert_eq!((s.client, s.last_req), (7, 3));
    assert_eq!(follower.max_client(), 8);
    // Again, or an older one: ignored. After a gap: refused (the copy must be reloaded).
    assert_eq!(follower.follow(&records[3]), Ok(Followed::Held));
    assert_eq!(follower.follow(&records[0]), Ok(Followed::Held));
    let mut later = records[3].clone();
    later.rev = 6;
    assert_eq!(follower.follow(&later), Ok(Followed::Gap { head: 4 }), "not taken: the gap is filled first");
    assert_eq!(follower.rev(), Rev(4));
    let mut bad = records[3].clone();
    (bad.rev, bad.ops) = (5, r#"[{"op":"remove","path":"/nothing"}]"#.into());
    assert!(follower.follow(&bad).unwrap_err().contains("does not apply"));
}

#[test]
fn a_follower_never_commits_and_hands_a_forwarded_reject_to_its_author_only() {
    let (_, _, follower) = owner_and_follower();
    let r = follower.commit(change(1, 1, json!([{"op": "add", "path": "/x", "value": 1}]))).unwrap_err();
    assert_eq!(r.code, ErrorCode::Unavailable);
    assert_eq!(follower.rev(), Rev(0));
    assert_eq!(follower.state().1, json!({}));
    let reject = Reject::new(ErrorCode::Conflict, "no", 0);
    follower.reject_forwarded(ClientId(1), ClientReqId(4), reject.clone());
    let got = follower.rejections_for(ClientId(1), &mut 0);
    assert_eq!((got.len(), got[0].client_req_id, &got[0].reject), (1, ClientReqId(4), &reject));
    assert!(follower.rejections_for(ClientId(2), &mut 0).is_empty());
}

#[test]
fn a_forwarded_request_round_trips_through_its_wire_form() {
    let mut req = change(1 << 32 | 9, 12, json!([{"op": "replace", "path": "/a", "value": {"b": [null]}}]));
    req.extras.may_revert_any = true;
    req.mode = protocol::Mode::Paths;
    let back = ChangeRequest::from_wire(&req.to_wire()).unwrap();
    assert_eq!(
        (back.author, back.user.as_deref(), back.client_req_id, back.base_rev, back.mode),
        (req.author, Some("u"), req.client_req_id, req.base_rev, req.mode)
    );
    assert_eq!(protocol::encode_ops(&back.ops), protocol::encode_ops(&req.ops));
    assert_eq!((back.extras.meta, back.extras.may_revert_any), (req.extras.meta, true));
    assert_eq!(back.extras.session.as_deref(), Some("token-4294967305"));
    let revert = ChangeRequest {
        extras: Extras { kind: protocol::ChangeKind::Reverts(Rev(3)), ..Extras::default() },
        ..change(2, 1, json!([]))
    };
    let back = ChangeRequest::from_wire(&revert.to_wire()).unwrap();
    assert_eq!((back.extras.kind, back.extras.session), (protocol::ChangeKind::Reverts(Rev(3)), None));
    assert!(ChangeRequest::from_wire(&json!({"author": 1})).is_err());
}

#[test]
fn a_forwarded_change_is_answered_once_by_its_record_its_reject_its_owners_end_or_the_timeout() {
    let (store, owner, follower) = owner_and_follower();
    let waiter = |f: &Room, id: u64, node: u64| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        f.note_forwarded(ClientId::HTTP, ClientReqId(id), node, Some(tx));
        rx
    };
    // An HTTP change is answered by its own record only (ids are unique per node, not ordered
    // across nodes).
    let mut mine = waiter(&follower, 2 << 32 | 1, 1);
    let mut other = waiter(&follower, 3 << 32 | 9, 1);
    let http = |id: u64| ChangeRequest {
        author: ClientId::HTTP,
        user: None,
        client_req_id: Some(ClientReqId(id)),
        extras: Extras::default(),
        ..change(0, 0, json!([{"op": "incr", "path": "/n", "value": 1}]))
    };
    owner.commit(http(3 << 32 | 9)).unwrap();
    assert_eq!(follower.follow(&store.records(owner.id())[0]), Ok(Followed::Applied));
    assert_eq!(other.try_recv().unwrap().unwrap().rev, Rev(1));
    assert!(mine.try_recv().is_err(), "not answered by another node's change");
    follower.reject_forwarded(
        ClientId::HTTP,
        ClientReqId(2 << 32 | 1),
        Reject::new(ErrorCode::Conflict, "no", 1),
    );
    assert_eq!(mine.try_recv().unwrap().unwrap_err().code, ErrorCode::Conflict);
    assert!(follower.rejections_for(ClientId::HTTP, &mut 0).is_empty(), "an HTTP answer goes to its request");
    // A session's change is answered through its connection: by the owner's end...
    follower.note_forwarded(ClientId(5), ClientReqId(1), 1, None);
    follower.note_forwarded(ClientId(6), ClientReqId(1), 2, None);
    assert_eq!(follower.owner_gone(Some(1)), 1, "only what went to the old owner");
    assert_eq!(follower.rejections_for(ClientId(5), &mut 0)[0].reject.code, ErrorCode::Unavailable);
    // ... or by the timeout.
    assert_eq!(follower.expire_forwarded(std::time::Duration::from_secs(60)), 0);
    assert_eq!(follower.expire_forwarded(std::time::Duration::ZERO), 1);
    assert_eq!(follower.rejections_for(ClientId(6), &mut 0).len(), 1);
    assert_eq!(follower.forwarded_open(), 0);
}

#[test]
fn a_forwarded_change_not_answered_yet_is_not_reported_as_processed() {
    let (store, owner, follower) = owner_and_follower();
    follower.note_forwarded(ClientId(7), ClientReqId(1), 1, None);
    follower.note_forwarded(ClientId(7), ClientReqId(2), 1, None);
    // The session counts both as processed; a snapshot at the follower's head holds neither.
    assert_eq!(follower.processed_as_of(ClientId(7), ClientReqId(2), Rev(0)), ClientReqId(0));
    assert_eq!(
        follower.processed_as_of(ClientId(8), ClientReqId(4), Rev(0)),
        ClientReqId(4),
        "others unaffected"
    );
    owner.commit(change(7, 1, json!([{"op": "add", "path": "/a", "value": 1}]))).unwrap();
    assert_eq!(follower.follow(&store.records(owner.id())[0]), Ok(Followed::Applied));
    assert_eq!(follower.processed_as_of(ClientId(7), ClientReqId(2), Rev(1)), ClientReqId(1));
    follower.reject_forwarded(ClientId(7), ClientReqId(2), Reject::new(ErrorCode::Conflict, "no", 1));
    assert_eq!(follower.processed_as_of(ClientId(7), ClientReqId(2), Rev(1)), ClientReqId(2));
}
