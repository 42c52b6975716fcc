//! Edge values in client input, over real sockets against the real server (in-process, free
//! port): request ids that could not be followed, integers JSON numbers cannot carry exactly,
//! duplicate object keys and negative zero. Each case checks that the sender gets the documented
//! answer, that nothing is applied, that the session keeps working with its next `clientReqId`
//! and that another client in the room is unaffected.

mod common;

use common::{Client, Server, config, http, start};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Number.MAX_SAFE_INTEGER: the highest `clientReqId` (and `baseRev`) the server accepts.
const MAX_SAFE: u64 = (1 << 53) - 1;

async fn send_raw(c: &mut Client, text: &str) {
    c.ws.send(Message::text(text.to_owned())).await.unwrap();
}

/// A change message as text, so tests can send what `serde_json::Value` cannot hold.
fn change(id: &str, extra: &str, ops: &str) -> String {
    format!(r#"{{"type":"change","clientReqId":{id}{extra},"ops":{ops}}}"#)
}

/// The server's answer to the last message `c` sent: `{"type":"ack","rev":..,"clientReqId":..}`
/// (a change of its own in its delta stream), a `reject` or an `error`. Tests send one message
/// at a time, so the first answer is the answer to that message. Everything else is skipped.
async fn answer(c: &mut Client) -> Value {
    loop {
        let m = c.recv_raw().await;
        match m["type"].as_str() {
            Some("error" | "reject") => return m,
            Some("delta") => {
                let changes = m["changes"].as_array().unwrap();
                if let Some(e) = changes.iter().find(|e| e["client"] == c.client.as_str()) {
                    return json!({"type": "ack", "rev": e["rev"], "clientReqId": e["clientReqId"]});
                }
            }
            _ => {}
        }
    }
}

fn ack(rev: u64, id: u64) -> Value {
    json!({"type": "ack", "rev": rev, "clientReqId": id})
}

/// The room's state and revision, read over HTTP.
async fn room(server: &Server, name: &str) -> (u64, Value) {
    let (status, v) = http(server, "GET", &format!("/v1/rooms/{name}"), None).await;
    assert_eq!(status, 200, "{v}");
    (v["rev"].as_u64().unwrap(), v["state"].clone())
}

/// Asserts the session still works: a change with `id` commits at `rev`, and `peer` sees it
/// (and nothing else) next.
async fn still_works(server: &Server, name: &str, c: &mut Client, peer: &mut Client, id: u64, rev: u64) {
    send_raw(c, &change(&id.to_string(), "", &format!(r#"[{{"op":"add","path":"/ok{id}","value":{id}}}]"#)))
        .await;
    assert_eq!(answer(c).await, ack(rev, id), "the next clientReqId {id} commits");
    let d = peer.until("delta").await;
    assert_eq!(d["to"], rev, "the peer's next change is exactly this one: {d}");
    assert_eq!(d["changes"][0]["ops"][0]["path"], format!("/ok{id}"));
    assert_eq!(peer.state, room(server, name).await.1, "the peer converged");
}

fn assert_error(m: &Value, code: &str, says: &str) {
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some(code)), "{m}");
    assert!(m["message"].as_str().unwrap().contains(says), "{m} should mention {says:?}");
    assert!(m.get("clientReqId").is_none(), "{m}");
}

fn assert_reject(m: &Value, id: u64, code: &str, says: &str) {
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("reject"), Some(code)), "{m}");
    assert_eq!(m["clientReqId"], id, "{m}");
    assert!(m["message"].as_str().unwrap().contains(says), "{m} should mention {says:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_that_could_not_be_followed_are_refused() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "ids").await;
    let mut peer = Client::connect(&server, "ids").await;
    let ops = r#"[{"op":"add","path":"/x","value":1}]"#;
    // 2^64-1 used to be accepted, and then every later change was a `duplicate`.
    for id in ["18446744073709551615", "9007199254740992", "0", "-1", "1.5", "1e3", "\"2\"", "null"] {
        send_raw(&mut a, &change(id, "", ops)).await;
        assert_error(&answer(&mut a).await, "bad_message", "1..=9007199254740991");
    }
    assert_eq!(room(&server, "ids").await, (0, json!({})), "nothing was applied");
    still_works(&server, "ids", &mut a, &mut peer, 1, 1).await;
    still_works(&server, "ids", &mut a, &mut peer, 2, 2).await;

    // The range is inclusive: Number.MAX_SAFE_INTEGER itself is a valid id.
    let mut b = Client::connect(&server, "ids").await;
    send_raw(&mut b, &change(&MAX_SAFE.to_string(), "", ops)).await;
    assert_eq!(answer(&mut b).await, ack(3, MAX_SAFE));
    peer.sync_to(3).await;
    still_works(&server, "ids", &mut a, &mut peer, 3, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_revs_that_are_not_safe_integers_are_refused() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "base").await;
    let mut peer = Client::connect(&server, "base").await;
    let ops = r#"[{"op":"add","path":"/x","value":1}]"#;
    // These used to be ignored silently (-1, "3", 1.5: the change applied as if baseRev were
    // absent) or taken at face value (2^64-1).
    for (id, base) in
        [(1, "-1"), (2, "\"3\""), (3, "1.5"), (4, "18446744073709551615"), (5, "9007199254740992")]
    {
        send_raw(&mut a, &change(&id.to_string(), &format!(r#","baseRev":{base}"#), ops)).await;
        assert_reject(&answer(&mut a).await, id, "invalid", "0..=9007199254740991");
    }
    assert_eq!(room(&server, "base").await, (0, json!({})), "nothing was applied");
    still_works(&server, "base", &mut a, &mut peer, 6, 1).await;
    // Absent and null still mean "no baseRev"; 0 and the current rev are fine.
    for (id, base) in [(7, ""), (8, r#","baseRev":null"#), (9, r#","baseRev":0"#)] {
        send_raw(&mut a, &change(&id.to_string(), base, ops)).await;
        assert_eq!(answer(&mut a).await["type"], "ack", "baseRev {base:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_json_cannot_carry_exactly_are_refused() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "big").await;
    let mut peer = Client::connect(&server, "big").await;
    // 2^64 used to become the float 1.8446744073709552e19; -2^63-1 became -2^63 as a float.
    let bad = ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890", "1e300"];
    for (i, n) in bad.iter().enumerate() {
        let id = i as u64 + 1;
        let ops = format!(r#"[{{"op":"add","path":"/n","value":{{"deep":[{n}]}}}}]"#);
        send_raw(&mut a, &change(&id.to_string(), "", &ops)).await;
        let r = answer(&mut a).await;
        assert_reject(&r, id, "invalid", "send larger integers as strings");
        assert!(r["message"].as_str().unwrap().contains("/ops/0/value/deep/0"), "{r}");
    }
    let incr = r#"[{"op":"incr","path":"/n","value":18446744073709551616}]"#;
    send_raw(&mut a, &change("5", "", incr)).await;
    assert_reject(&answer(&mut a).await, 5, "invalid", "send larger integers as strings");
    assert_eq!(room(&server, "big").await, (0, json!({})), "nothing was applied");
    still_works(&server, "big", &mut a, &mut peer, 6, 1).await;

    // The edges of the exact range, and ordinary floats, are kept as they were sent.
    let ops = r#"[{"op":"add","path":"/e","value":[18446744073709551615,-9223372036854775808,1.5,-2.25e-7,3.0,1e15]}]"#;
    send_raw(&mut a, &change("7", "", ops)).await;
    assert_eq!(answer(&mut a).await["type"], "ack");
    let state = room(&server, "big").await.1;
    let e = state["e"].as_array().unwrap();
    assert_eq!(e[0].as_u64(), Some(u64::MAX));
    assert_eq!(e[1].as_i64(), Some(i64::MIN));
    assert_eq!(e[2..].iter().map(|n| n.as_f64().unwrap()).collect::<Vec<_>>(), [1.5, -2.25e-7, 3.0, 1e15]);
    assert!(e[2..].iter().all(Value::is_f64), "floats stay floats: {state}");

    // Over HTTP: the body is refused whole.
    let body = r#"{"ops":[{"op":"add","path":"/h","value":18446744073709551616}]}"#;
    let (status, v) = http(&server, "POST", "/v1/rooms/big/changes", Some(body)).await;
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_message")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("send larger integers as strings"), "{v}");
    assert_eq!(room(&server, "big").await.0, 2, "nothing was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_anywhere() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "dup").await;
    let mut peer = Client::connect(&server, "dup").await;

    // Inside a change's ops: attributable, so a `reject` with the clientReqId.
    for (id, ops, at) in [
        (1, r#"[{"op":"add","path":"/d","value":{"a":1,"a":2}}]"#, "/ops/0/value/a"),
        (
            2,
            r#"[{"op":"add","path":"/d","value":1},{"op":"add","path":"/d","path":"/e","value":1}]"#,
            "/ops/1/path",
        ),
        (3, r#"[{"op":"add","path":"/d","value":[{"x":{"k~/":1,"k~/":2}}]}]"#, "/ops/0/value/0/x/k~0~1"),
    ] {
        send_raw(&mut a, &change(&id.to_string(), "", ops)).await;
        let r = answer(&mut a).await;
        assert_reject(&r, id, "invalid", "duplicate key");
        assert!(r["message"].as_str().unwrap().contains(at), "{r} should point at {at}");
    }
    // Anywhere else in a message: an `error`.
    for raw in [
        r#"{"type":"change","clientReqId":4,"clientReqId":5,"ops":[]}"#,
        r#"{"type":"change","type":"change","clientReqId":4,"ops":[]}"#,
        r#"{"type":"change","clientReqId":4,"ops":[],"ops":[{"op":"add","path":"/d","value":1}]}"#,
        r#"{"type":"change","clientReqId":4,"mode":"rev","mode":"overwrite","ops":[]}"#,
        r#"{"type":"presence","data":{"name":"ann","name":"bob"}}"#,
        r#"{"type":"presence","data":{"cursor":{"x":1,"x":2}}}"#,
        r#"{"type":"broadcast","data":{"a":1,"a":1}}"#,
        r#"{"type":"ping","t":{"a":{"b":1,"b":1}}}"#,
    ] {
        send_raw(&mut a, raw).await;
        assert_error(&answer(&mut a).await, "bad_message", "duplicate key");
    }
    assert_eq!(room(&server, "dup").await, (0, json!({})), "nothing was applied");
    still_works(&server, "dup", &mut a, &mut peer, 4, 1).await;

    // Presence with duplicate keys was not applied: the peer's next presence is the valid one.
    a.send(json!({"type": "presence", "data": {"name": "cy"}})).await;
    let p = peer.until("presence").await;
    assert_eq!(p["peers"][a.client.as_str()], json!({"name": "cy"}), "{p}");

    // Over HTTP, in a change body or a broadcast body: 400 bad_message.
    for (path, body) in [
        ("changes", r#"{"ops":[{"op":"add","path":"/h","value":{"a":1,"a":2}}]}"#),
        ("changes", r#"{"ops":[],"ops":[{"op":"add","path":"/h","value":1}]}"#),
        ("broadcast", r#"{"data":1,"data":2}"#),
    ] {
        let (status, v) = http(&server, "POST", &format!("/v1/rooms/dup/{path}"), Some(body)).await;
        assert_eq!((status, v["code"].as_str()), (400, Some("bad_message")), "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains("duplicate key"), "{v}");
    }
    assert_eq!(room(&server, "dup").await.0, 1, "nothing was applied");
    still_works(&server, "dup", &mut a, &mut peer, 5, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_zero_is_stored_as_zero() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "zero").await;
    let mut peer = Client::connect(&server, "zero").await;
    let ops = r#"[{"op":"add","path":"/z","value":[-0,-0.0,-0e7,0.0,{"k":-0}]},{"op":"add","path":"/n","value":5}]"#;
    send_raw(&mut a, &change("1", "", ops)).await;
    assert_eq!(answer(&mut a).await["type"], "ack");
    // incr by a negative zero: the integer stays an integer (it used to become the float 5.0).
    send_raw(&mut a, &change("2", "", r#"[{"op":"incr","path":"/n","value":-0.0}]"#)).await;
    assert_eq!(answer(&mut a).await["type"], "ack");

    let (rev, state) = room(&server, "zero").await;
    assert_eq!(rev, 2);
    let z = state["z"].as_array().unwrap();
    for n in [&z[0], &z[1], &z[2], &z[4]["k"]] {
        assert_eq!(n.as_u64(), Some(0), "negative zero is stored as the integer 0: {state}");
    }
    assert!(z[3].is_f64(), "a positive 0.0 stays a float: {state}");
    assert_eq!(state["n"].as_u64(), Some(5), "{state}");
    // Everyone else received the canonical value too.
    peer.sync_to(2).await;
    assert_eq!(peer.state, state);
    assert_eq!(peer.others[0]["ops"][0]["value"][0].as_u64(), Some(0), "{:?}", peer.others);

    // A `test` for -0 matches the stored 0 (equal by value).
    send_raw(&mut a, &change("3", "", r#"[{"op":"test","path":"/z/0","value":-0}]"#)).await;
    assert_eq!(answer(&mut a).await["type"], "ack");
    // Over HTTP too.
    let (status, _) = http(
        &server,
        "POST",
        "/v1/rooms/zero/changes",
        Some(r#"{"ops":[{"op":"add","path":"/h","value":-0}]}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(room(&server, "zero").await.1["h"].as_u64(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floats_are_stored_exactly_as_sent() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "float").await;
    let mut peer = Client::connect(&server, "float").await;
    // Shortest round-trip spellings (what JSON.stringify and serde_json write). serde_json's
    // default float parser moved about one in ten of these by one unit in the last place, so the
    // author kept its value while everyone else got a neighbour.
    let sent = [
        376.69851473589443,
        908.1902743653529,
        98.24022970765111,
        -1.5962067764223722e-118,
        2.526997495613799e-222,
    ];
    let texts: Vec<String> = sent.iter().map(|x| serde_json::to_string(x).unwrap()).collect();
    let ops = format!(r#"[{{"op":"add","path":"/f","value":[{}]}}]"#, texts.join(","));
    send_raw(&mut a, &change("1", "", &ops)).await;
    assert_eq!(answer(&mut a).await, ack(1, 1));
    let state = room(&server, "float").await.1;
    let stored: Vec<u64> =
        state["f"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap().to_bits()).collect();
    assert_eq!(stored, sent.map(f64::to_bits), "{} became {state}", texts.join(","));
    peer.sync_to(1).await;
    assert_eq!(peer.state, state);
}
