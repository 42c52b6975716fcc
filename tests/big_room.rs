//! Big-room presence over real sockets (`--presence-peers`, docs/PROTOCOL.md "Big rooms"): past
//! the cap, peers are counted, not listed; a listed peer's leave lists the longest-waiting one;
//! the last counted message says the list is whole again; an unlisted peer's presence shows once
//! it is listed. Under the cap nothing changes (tests/presence.rs).

mod common;

use common::{Client, config, http, start};
use serde_json::{Map, Value, json};

/// Applies a presence message to a local map, as a client would; returns its `count`, if any.
fn merge(map: &mut Map<String, Value>, m: &Value) -> Option<u64> {
    for (k, v) in m["peers"].as_object().unwrap() {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    m.get("count").map(|c| c.as_u64().unwrap())
}

/// Reads presence messages into `map` until `done(map, last count seen)` holds.
async fn presence_until(
    c: &mut Client,
    map: &mut Map<String, Value>,
    count: &mut Option<u64>,
    done: impl Fn(&Map<String, Value>, Option<u64>) -> bool,
) {
    while !done(map, *count) {
        let m = c.recv().await;
        if m["type"] == "presence"
            && let Some(n) = merge(map, &m)
        {
            *count = Some(n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_peers_are_counted_and_listed_as_others_leave() {
    let server = start(config(&["--presence-peers", "2", "--memory-only"])).await;
    let mut a = Client::connect(&server, "big").await;
    let mut b = Client::connect(&server, "big").await;
    assert_eq!(b.welcome["presence"].as_object().unwrap().len(), 2);
    assert!(b.welcome.get("presenceCount").is_none(), "at the cap the list is whole: no count");

    let mut c = Client::connect(&server, "big").await;
    let welcome = c.welcome["presence"].as_object().unwrap();
    assert_eq!(welcome.keys().collect::<Vec<_>>(), [&a.client, &b.client], "the listed peers only");
    assert_eq!(c.welcome["presenceCount"], 3, "everyone present, c included");
    // An unlisted peer's presence is kept, not shown.
    c.send(json!({"type": "presence", "data": {"name": "carol"}})).await;

    // a learns of the third peer by its count (published by the server's sweep, within ~1 s),
    // never as a listed peer.
    let mut map = a.welcome["presence"].as_object().unwrap().clone();
    let mut count = None;
    presence_until(&mut a, &mut map, &mut count, |_, n| n == Some(3)).await;
    assert!(!map.contains_key(&c.client), "{map:?}");

    // b leaves (a clean close: at once): c is listed in its place, with the presence it set, and
    // the count says the list is whole again.
    b.ws.close(None).await.unwrap();
    let want = json!({"name": "carol"});
    presence_until(&mut a, &mut map, &mut count, |m, n| m.get(&c.client) == Some(&want) && n == Some(2))
        .await;
    assert_eq!(map.len(), 2, "{map:?}");

    // The HTTP API lists everyone present, listed or not.
    let (status, v) = http(&server, "GET", "/v1/rooms/big/presence", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["peers"].as_object().unwrap().len(), 2);
    c.ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_past_the_cap_welcomes_everyone_with_the_same_bounded_list() {
    let server = start(config(&["--presence-peers", "5", "--memory-only"])).await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(Client::connect(&server, "storm").await);
    }
    let listed: Vec<&Client> = clients.iter().take(5).collect();
    for (i, c) in clients.iter().enumerate() {
        let peers = c.welcome["presence"].as_object().unwrap();
        assert_eq!(peers.len(), (i + 1).min(5), "client {i}: {peers:?}");
        assert!(listed.iter().take(i + 1).all(|l| peers.contains_key(&l.client)), "the first five");
        let count = c.welcome.get("presenceCount").and_then(Value::as_u64);
        assert_eq!(count, (i >= 5).then_some(i as u64 + 1), "client {i}");
    }
    // Everyone converges on the same count.
    for c in clients.iter_mut().skip(30) {
        let mut map = c.welcome["presence"].as_object().unwrap().clone();
        let mut count = c.welcome.get("presenceCount").and_then(Value::as_u64);
        presence_until(c, &mut map, &mut count, |m, n| m.len() == 5 && n == Some(40)).await;
    }
}
