//! History over real sockets: undo, redo and `reverts` (stacks, conflicts, stale, who may revert
//! what), strict messages, `meta`, `ts`, and time travel (`GET /v1/rooms/{room}?rev=N`).

mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ringsync::ids::RoomId;
use serde_json::{Value, json};

fn add(path: &str, value: Value) -> Value {
    json!([{"op": "add", "path": path, "value": value}])
}

async fn state_of(server: &Server, room: &str) -> Value {
    let (s, v) = http(server, "GET", &format!("/v1/rooms/{room}"), None).await;
    assert_eq!(s, 200, "{v}");
    v["state"].clone()
}

/// Reads until the ack of `id` (returning its entry) or a reject of it (returning the reject).
async fn answer(c: &mut Client, id: u64) -> Value {
    loop {
        let m = c.recv().await;
        match m["type"].as_str() {
            Some("delta") => {
                for e in m["changes"].as_array().unwrap() {
                    if e["clientReqId"] == id {
                        return e.clone();
                    }
                }
            }
            Some("reject" | "error") if m["clientReqId"] == id => return m,
            _ => {}
        }
    }
}

#[tokio::test]
async fn undo_and_redo_round_trip_as_ordinary_deltas() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "h").await;
    let mut b = Client::connect(&server, "h").await;
    assert_eq!((&a.welcome["canUndo"], &a.welcome["canRedo"]), (&json!(false), &json!(false)));
    let id = a.change("overwrite", add("/x", json!(1))).await;
    let ack = answer(&mut a, id).await;
    assert_eq!((&ack["canUndo"], &ack["canRedo"]), (&json!(true), &json!(false)), "{ack}");
    assert!(ack.get("ops").is_none(), "a plain change's ack carries no ops: {ack}");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let ts = ack["ts"].as_u64().expect("ts");
    assert!(ts <= now_ms && ts + 60_000 > now_ms, "ts is the commit time in ms: {ts} vs {now_ms}");
    let id = a.change("overwrite", json!([{"op": "replace", "path": "/x", "value": 2}])).await;
    answer(&mut a, id).await;

    // Undo: a new revision that reverts 2; the author's entry has the ops only the server knew.
    let id = a.history("undo", json!({"meta": {"label": "undo x=2"}})).await;
    let ack = answer(&mut a, id).await;
    assert_eq!(ack["rev"], 3);
    assert_eq!(ack["reverts"], 2);
    assert_eq!(ack["ops"], json!([{"op": "replace", "path": "/x", "value": 1}]), "{ack}");
    assert_eq!((&ack["canUndo"], &ack["canRedo"]), (&json!(true), &json!(true)));
    assert!(ack["ts"].is_u64());
    assert_eq!(a.state, json!({"x": 1}));
    b.sync_to(3).await;
    let seen = b.others.last().unwrap();
    assert_eq!(seen["reverts"], 2, "others see an ordinary delta that says what it reverts: {seen}");
    assert_eq!(seen["meta"], json!({"label": "undo x=2"}));
    assert!(seen.get("clientReqId").is_none() && seen["ts"].is_u64());
    assert_eq!(b.state, json!({"x": 1}));

    // Redo reverts the undo.
    let id = a.history("redo", json!({})).await;
    let ack = answer(&mut a, id).await;
    assert_eq!((&ack["rev"], &ack["reverts"]), (&json!(4), &json!(3)));
    assert_eq!((&ack["canUndo"], &ack["canRedo"]), (&json!(true), &json!(false)));
    assert_eq!(state_of(&server, "h").await, json!({"x": 2}));
    // Undo twice goes back to the start.
    for (rev, reverts) in [(5, 4), (6, 1)] {
        let id = a.history("undo", json!({})).await;
        let ack = answer(&mut a, id).await;
        assert_eq!((&ack["rev"], &ack["reverts"]), (&json!(rev), &json!(reverts)), "{ack}");
    }
    assert_eq!(state_of(&server, "h").await, json!({}));
    b.sync_to(6).await;
    assert_eq!(b.state, json!({}));
    // Nothing left to undo.
    let id = a.history("undo", json!({})).await;
    let r = answer(&mut a, id).await;
    assert_eq!((&r["type"], &r["code"]), (&json!("reject"), &json!("invalid")), "{r}");
    assert!(r["message"].as_str().unwrap().contains("nothing to undo"), "{r}");

    // The HTTP API's entries carry the same fields.
    let (s, v) = http(&server, "GET", "/v1/rooms/h/changes?since=2", None).await;
    assert_eq!(s, 200);
    let e = &v["changes"][0];
    assert_eq!((&e["rev"], &e["reverts"], &e["meta"]), (&json!(3), &json!(2), &json!({"label": "undo x=2"})));
    assert!(e["ts"].is_u64() && e["ops"].is_array(), "{e}");
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    assert!(m.as_str().unwrap().contains("ringsync_history_commits_total{kind=\"undo\"}"));
}

#[tokio::test]
async fn a_new_change_clears_the_redo_stack() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "r").await;
    let id = a.change("overwrite", add("/x", json!(1))).await;
    answer(&mut a, id).await;
    let id = a.history("undo", json!({})).await;
    assert_eq!(answer(&mut a, id).await["canRedo"], true);
    let id = a.change("overwrite", add("/y", json!(1))).await;
    let ack = answer(&mut a, id).await;
    assert_eq!((&ack["canUndo"], &ack["canRedo"]), (&json!(true), &json!(false)));
    let id = a.history("redo", json!({})).await;
    let r = answer(&mut a, id).await;
    assert_eq!(r["code"], "invalid", "{r}");
    assert!(r["message"].as_str().unwrap().contains("nothing to redo"), "{r}");
    assert_eq!(state_of(&server, "r").await, json!({"y": 1}));
}

#[tokio::test]
async fn an_undo_over_another_users_later_change_is_a_conflict_unless_overwrite() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "c").await;
    let mut b = Client::connect(&server, "c").await;
    let id = a.change("overwrite", json!([{"op": "add", "path": "/board", "value": {"e2": "P"}}])).await;
    answer(&mut a, id).await;
    b.sync_to(1).await;
    // b's change elsewhere does not block; b's change under /board does.
    let id = b.change("overwrite", add("/clock", json!(30))).await;
    answer(&mut b, id).await;
    let id = b.change("overwrite", add("/board/e4", json!("p"))).await;
    answer(&mut b, id).await;
    a.sync_to(3).await;
    let before = state_of(&server, "c").await;
    let id = a.history("undo", json!({})).await;
    let r = answer(&mut a, id).await;
    assert_eq!((&r["type"], &r["code"]), (&json!("reject"), &json!("conflict")), "{r}");
    assert_eq!(r["conflicts"], json!([3]), "{r}");
    assert!(r.get("revs").is_none(), "one name for the list: {r}");
    assert_eq!(r["conflicts"], json!([3]), "{r}");
    assert_eq!(r["rev"], 3);
    assert_eq!(state_of(&server, "c").await, before, "nothing applied");
    // a's own later changes never conflict: a edits /board too, then undoes that, then retries.
    let id = a.change("overwrite", add("/board/d2", json!("P"))).await;
    answer(&mut a, id).await;
    let id = a.history("undo", json!({})).await;
    assert_eq!(answer(&mut a, id).await["reverts"], 4);
    // The first change is still blocked by b's; overwrite applies it anyway.
    let id = a.history("undo", json!({})).await;
    assert_eq!(answer(&mut a, id).await["code"], "conflict");
    let id = a.history("undo", json!({"mode": "overwrite"})).await;
    let ack = answer(&mut a, id).await;
    assert_eq!(
        (&ack["reverts"], &ack["ops"]),
        (&json!(1), &json!([{"op": "remove", "path": "/board"}])),
        "{ack}"
    );
    assert_eq!(state_of(&server, "c").await, json!({"clock": 30}));
    b.sync_to(6).await;
    assert_eq!(b.state, json!({"clock": 30}));
}

#[tokio::test]
async fn an_overwrite_revert_skips_ops_whose_target_is_gone() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "s").await;
    let mut b = Client::connect(&server, "s").await;
    let id = a
        .change("overwrite", json!([{"op": "add", "path": "/o", "value": {}}, {"op": "add", "path": "/o/k", "value": 1}, {"op": "add", "path": "/n", "value": 1}]))
        .await;
    answer(&mut a, id).await;
    b.sync_to(1).await;
    let id = b.change("overwrite", json!([{"op": "remove", "path": "/o"}])).await;
    answer(&mut b, id).await;
    a.sync_to(2).await;
    // The inverse is remove /n, remove /o/k, remove /o: the last two have no target any more.
    let id = a.history("undo", json!({"mode": "overwrite"})).await;
    let ack = answer(&mut a, id).await;
    assert_eq!(ack["ops"], json!([{"op": "remove", "path": "/n"}]), "{ack}");
    assert_eq!(state_of(&server, "s").await, json!({}));
}

#[tokio::test]
async fn an_undo_beyond_the_retained_history_is_stale() {
    let server = start(config(&["--history", "2"])).await;
    let mut a = Client::connect(&server, "st").await;
    let mut b = Client::connect(&server, "st").await;
    let id = a.change("overwrite", add("/a", json!(1))).await;
    answer(&mut a, id).await;
    for i in 0..3 {
        let id = b.change("overwrite", add(&format!("/b{i}"), json!(i))).await;
        answer(&mut b, id).await;
    }
    a.sync_to(4).await;
    let id = a.history("undo", json!({})).await;
    let r = answer(&mut a, id).await;
    assert_eq!(r["code"], "stale", "{r}");
    let a2 = Client::connect(&server, "st").await;
    assert_eq!(a2.welcome["canUndo"], false);
    // `reverts` of a revision out of the ring: stale too; of one that does not exist: invalid.
    let id10 = a.request(json!({"type": "change", "reverts": 1})).await;
    assert_eq!(answer(&mut a, id10).await["code"], "stale");
    let id11 = a.request(json!({"type": "change", "reverts": 99})).await;
    assert_eq!(answer(&mut a, id11).await["code"], "invalid");
}

#[tokio::test]
async fn reverts_names_a_revision_of_ones_own() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "rv").await;
    let mut b = Client::connect(&server, "rv").await;
    let id = a.change("overwrite", add("/x", json!(1))).await;
    answer(&mut a, id).await;
    let id = a.change("overwrite", add("/y", json!(2))).await;
    answer(&mut a, id).await;
    b.sync_to(2).await;
    let id3 = a.request(json!({"type": "change", "reverts": 1, "ops": [], "meta": {"why": "typo"}})).await;
    let ack = answer(&mut a, id3).await;
    assert_eq!((&ack["rev"], &ack["reverts"]), (&json!(3), &json!(1)), "{ack}");
    assert_eq!(state_of(&server, "rv").await, json!({"y": 2}));
    // Someone else's change without admin (open mode grants write only to sessions' own).
    let id1 = b.request(json!({"type": "change", "reverts": 2})).await;
    let r = answer(&mut b, id1).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    // A `reverts` with ops of its own is refused.
    let id4 =
        a.request(json!({"type": "change", "reverts": 2, "ops": [{"op": "remove", "path": "/y"}]})).await;
    assert_eq!(answer(&mut a, id4).await["code"], "invalid");
}

#[tokio::test]
async fn stacks_survive_a_resume() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "res").await;
    let id = a.change("overwrite", add("/x", json!(1))).await;
    answer(&mut a, id).await;
    let (session, epoch, rev) = (a.session.clone(), a.epoch.clone(), a.rev);
    drop(a);
    let q = format!("session={session}&epoch={epoch}&since={rev}");
    let mut a = Client::connect_query(&server, "res", &q).await;
    assert_eq!(a.welcome["resumed"], true);
    assert_eq!((&a.welcome["canUndo"], &a.welcome["canRedo"]), (&json!(true), &json!(false)));
    a.state = json!({"x": 1});
    let id = a.history("undo", json!({})).await;
    assert_eq!(answer(&mut a, id).await["reverts"], 1);
    assert_eq!(state_of(&server, "res").await, json!({}));
    // A new session is a new user in open mode: nothing to redo there.
    let mut other = Client::connect(&server, "res").await;
    assert_eq!(other.welcome["canRedo"], false);
    let id = other.history("redo", json!({})).await;
    assert_eq!(answer(&mut other, id).await["code"], "invalid");
}

struct Secret {
    dir: PathBuf,
    key: Vec<u8>,
}

impl Secret {
    fn new() -> Secret {
        let dir = std::env::temp_dir().join(format!("ringsync-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key: Vec<u8> = rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric).take(48).collect();
        std::fs::write(dir.join("secret"), &key).unwrap();
        Secret { dir, key }
    }

    fn token(&self, sub: &str, grant: &str) -> String {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let claims = json!({"sub": sub, "exp": exp, "rooms": {"t": [grant]}});
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&self.key))
            .unwrap()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn with_tokens_the_stack_belongs_to_the_user() {
    let secret = Secret::new();
    let file = secret.dir.join("secret").to_string_lossy().into_owned();
    let server = start(config(&["--jwt-secret-file", &file])).await;
    let alice = secret.token("alice", "write");
    let mut a1 = Client::connect_query(&server, "t", &format!("token={alice}")).await;
    let id = a1.change("overwrite", add("/x", json!(1))).await;
    answer(&mut a1, id).await;
    let id = a1.change("overwrite", add("/y", json!(1))).await;
    answer(&mut a1, id).await;
    // A second connection of the same user shares the stack.
    let mut a2 = Client::connect_query(&server, "t", &format!("token={alice}")).await;
    assert_ne!(a1.client, a2.client);
    assert_eq!(a2.welcome["canUndo"], true);
    let id = a2.history("undo", json!({})).await;
    let ack = answer(&mut a2, id).await;
    assert_eq!((&ack["reverts"], &ack["user"]), (&json!(2), &json!("alice")), "{ack}");
    // Another user cannot revert alice's change without admin ...
    let mut bob =
        Client::connect_query(&server, "t", &format!("token={}", secret.token("bob", "write"))).await;
    assert_eq!(bob.welcome["canUndo"], false);
    let id1 = bob.request(json!({"type": "change", "reverts": 1})).await;
    let r = answer(&mut bob, id1).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    // ... nor undo it: bob has nothing to undo.
    let id = bob.history("undo", json!({})).await;
    assert_eq!(answer(&mut bob, id).await["code"], "invalid");
    // An admin may.
    let mut carol =
        Client::connect_query(&server, "t", &format!("token={}", secret.token("carol", "admin"))).await;
    let id1 = carol.request(json!({"type": "change", "reverts": 1})).await;
    let ack = answer(&mut carol, id1).await;
    assert_eq!(ack["reverts"], 1, "{ack}");
    assert_eq!(state_in_app(&server, "t"), json!({}));
    // alice's redo (of her undo of /y) still works: the admin's revert is carol's change.
    let id = a1.history("redo", json!({})).await;
    assert_eq!(answer(&mut a1, id).await["reverts"], 3);
}

fn state_in_app(server: &Server, room: &str) -> Value {
    server.app.rooms.get(&RoomId::parse(room).unwrap()).expect("the room exists").state().1
}

#[tokio::test]
async fn strict_messages_refuse_unknown_fields_and_empty_ops() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "strict").await;
    for (i, m) in [
        json!({"type": "change", "clientReqId": 1, "ops": [{"op": "add", "path": "/a", "value": 1}], "colour": 1}),
        json!({"type": "change", "clientReqId": 2, "ops": []}),
        json!({"type": "undo", "clientReqId": 3, "baseRev": 0}),
        json!({"type": "change", "clientReqId": 4, "ops": [{"op": "add", "path": "/a", "value": 1}], "meta": [1]}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = a.request(m).await;
        assert_eq!(id, i as u64 + 1);
        let r = answer(&mut a, id).await;
        assert_eq!((&r["type"], &r["code"]), (&json!("reject"), &json!("invalid")), "{r}");
    }
    a.send(json!({"type": "ping", "t": 1, "extra": true})).await;
    let e = a.until("error").await;
    assert_eq!(e["code"], "invalid", "{e}");
    assert!(e["message"].as_str().unwrap().contains("unknown field \"extra\""), "{e}");
    assert_eq!(state_of(&server, "strict").await, json!({}), "nothing committed");
    let (s, v) = post_ops(&server, "strict", json!([])).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{v}");
    let body = json!({"ops": [{"op": "add", "path": "/a", "value": 1}], "clientReqId": 1}).to_string();
    let (s, v) = http(&server, "POST", "/v1/rooms/strict/changes", Some(&body)).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{v}");
    let (s, v) = http(&server, "GET", "/v1/rooms/strict", None).await;
    assert_eq!((s, &v["rev"]), (200, &json!(0)), "{v}");
    // The connection carries on.
    let id = a.change("overwrite", add("/ok", json!(true))).await;
    assert_eq!(answer(&mut a, id).await["rev"], 1);
}

#[tokio::test]
async fn meta_is_relayed_and_limited_to_one_kib() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "meta").await;
    let mut b = Client::connect(&server, "meta").await;
    let id1 =
        a.request(json!({"type": "change", "ops": add("/m", json!("e4")), "meta": {"label": "e2–e4"}})).await;
    answer(&mut a, id1).await;
    b.sync_to(1).await;
    assert_eq!(b.others[0]["meta"], json!({"label": "e2–e4"}));
    // {"l":"…"} is 8 bytes plus the string: 1016 fits exactly, 1017 does not.
    let meta = |n: usize| json!({"l": "x".repeat(n)});
    assert_eq!(serde_json::to_string(&meta(1016)).unwrap().len(), 1024);
    let id2 = a.request(json!({"type": "change", "ops": add("/n", json!(1)), "meta": meta(1016)})).await;
    assert_eq!(answer(&mut a, id2).await["rev"], 2);
    let id3 = a.request(json!({"type": "change", "ops": add("/n", json!(2)), "meta": meta(1017)})).await;
    assert_eq!(answer(&mut a, id3).await["code"], "too_large");
    // Over HTTP too.
    let body = json!({"ops": add("/h", json!(1)), "meta": {"by": "backend"}}).to_string();
    let (s, v) = http(&server, "POST", "/v1/rooms/meta/changes", Some(&body)).await;
    assert_eq!((s, &v["rev"]), (200, &json!(3)), "{v}");
    assert!(v["ts"].is_u64());
    b.sync_to(3).await;
    assert_eq!(b.others.last().unwrap()["meta"], json!({"by": "backend"}));
}

#[tokio::test]
async fn time_travel_returns_past_states_and_refuses_the_edges() {
    let server = start(config(&["--history", "4"])).await;
    let mut a = Client::connect(&server, "tt").await;
    let mut states = vec![json!({})];
    for i in 0..6u64 {
        let ops = if i % 3 == 2 {
            json!([{"op": "remove", "path": format!("/k{}", i - 1)}])
        } else {
            json!([{"op": "add", "path": format!("/k{i}"), "value": {"i": i}}, {"op": "incr", "path": "/n", "value": 1}])
        };
        let id = a.change("overwrite", ops).await;
        answer(&mut a, id).await;
        states.push(a.state.clone());
    }
    // The ring holds 4 changes: revisions 2..=6 can be reconstructed.
    for rev in 2..=6u64 {
        let (s, v) = http(&server, "GET", &format!("/v1/rooms/tt?rev={rev}"), None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!((&v["rev"], &v["state"]), (&json!(rev), &states[rev as usize]), "rev {rev}");
        assert_eq!(v["epoch"], json!(a.epoch));
    }
    for (rev, status, code) in
        [("1", 410, "gone"), ("0", 410, "gone"), ("7", 400, "invalid"), ("x", 400, "invalid")]
    {
        let (s, v) = http(&server, "GET", &format!("/v1/rooms/tt?rev={rev}"), None).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "rev {rev}: {v}");
    }
    let (s, v) = http(&server, "GET", "/v1/rooms/nothing-here?rev=0", None).await;
    assert_eq!((s, &v["rev"]), (200, &json!(0)));
}

#[tokio::test]
async fn reverts_over_http() {
    let server = start(config(&[])).await;
    let (s, v) = post_ops(&server, "web", add("/x", json!(1))).await;
    assert_eq!((s, &v["rev"]), (200, &json!(1)), "{v}");
    let mut a = Client::connect(&server, "web").await;
    let id = a.change("overwrite", add("/y", json!(2))).await;
    answer(&mut a, id).await;
    // An HTTP change without a token is the anonymous back-end's own: it may revert it.
    let (s, v) = http(&server, "POST", "/v1/rooms/web/changes", Some(r#"{"reverts":1}"#)).await;
    assert_eq!((s, &v["rev"], &v["reverts"]), (200, &json!(3), &json!(1)), "{v}");
    assert_eq!(v["ops"], json!([{"op": "remove", "path": "/x"}]));
    // A session's change is not its own; nor is a revision that does not exist.
    let (s, v) = http(&server, "POST", "/v1/rooms/web/changes", Some(r#"{"reverts":2}"#)).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, v) = http(&server, "POST", "/v1/rooms/web/changes", Some(r#"{"reverts":9}"#)).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{v}");
    a.sync_to(3).await;
    assert_eq!(a.others.last().unwrap()["reverts"], 1);
    assert_eq!(state_of(&server, "web").await, json!({"y": 2}));
}
