//! Id-addressed list ops over real sockets: two clients holding the same stale revision reorder
//! and insert concurrently in `paths` mode; both changes commit and both clients (and the HTTP
//! state) converge, with no element lost or duplicated. Bad list ops are rejected as `invalid`
//! with a message, over WebSocket and HTTP, and change nothing.

mod common;

use common::{Client, config, http, post_ops, start};
use serde_json::{Value, json};

fn ids(state: &Value) -> Vec<&str> {
    state["todos"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reorders_and_inserts_from_a_stale_base_all_commit_and_converge() {
    let mut server = start(config(&[])).await;
    let mut a = Client::connect(&server, "todo").await;
    let mut b = Client::connect(&server, "todo").await;
    let todos = json!([{"id": "a", "t": "milk"}, {"id": "b", "t": "eggs"}, {"id": "c", "t": "tea"}]);
    a.change("overwrite", json!([{"op": "add", "path": "/todos", "value": todos}])).await;
    a.sync_to(1).await;
    b.sync_to(1).await;

    // Both plan on rev 1 and send before reading anything of the other's.
    a.change_base(
        "paths",
        1,
        json!([
            {"op": "list_move", "path": "/todos", "id": "c", "after": null},
            {"op": "list_insert", "path": "/todos", "after": "a", "value": {"id": "x", "t": "jam"}}
        ]),
    )
    .await;
    b.change_base(
        "paths",
        1,
        json!([
            {"op": "list_move", "path": "/todos", "id": "a", "after": "c"},
            {"op": "list_insert", "path": "/todos", "after": "a", "value": {"id": "y", "t": "bread"}},
            {"op": "list_update", "path": "/todos", "id": "c", "value": {"done": true}},
            {"op": "list_remove", "path": "/todos", "id": "b"}
        ]),
    )
    .await;
    a.sync_to(3).await;
    b.sync_to(3).await;
    assert!(a.rejects.is_empty() && b.rejects.is_empty(), "{:?} {:?}", a.rejects, b.rejects);
    assert_eq!(a.state, b.state);
    let (status, got) = http(&server, "GET", "/v1/rooms/todo", None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["state"], a.state);
    let mut sorted = ids(&a.state);
    sorted.sort_unstable();
    assert_eq!(sorted, ["a", "c", "x", "y"], "nothing lost, nothing duplicated: {}", a.state);
    let c = a.state["todos"].as_array().unwrap().iter().find(|e| e["id"] == "c").unwrap();
    assert_eq!(c, &json!({"id": "c", "t": "tea", "done": true}));

    // Others see the list ops in their entries, as sent.
    let theirs = a.others.last().unwrap();
    assert_eq!(theirs["ops"][0]["op"], "list_move");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_ops_are_rejected_as_invalid_and_change_nothing() {
    let mut server = start(config(&[])).await;
    let mut a = Client::connect(&server, "bad").await;
    a.change("overwrite", json!([{"op": "add", "path": "/todos", "value": [{"id": "a"}]}, {"op": "add", "path": "/o", "value": {}}]))
        .await;
    a.sync_to(1).await;
    for (ops, says) in [
        (
            json!([{"op": "list_insert", "path": "/todos", "after": null, "value": {"id": "a"}}]),
            "already in /todos",
        ),
        (json!([{"op": "list_insert", "path": "/todos", "value": {"id": "z"}}]), "after"),
        (json!([{"op": "list_remove", "path": "/o", "id": "a"}]), "not an array"),
        (
            json!([{"op": "list_update", "path": "/todos", "id": "a", "value": {"id": "b"}}]),
            "cannot change \"id\"",
        ),
        (
            json!([{"op": "list_insert", "path": "/todos", "after": "a", "value": {"id": "n"}}, {"op": "list_insert", "path": "/todos", "after": "a", "value": {"id": "n"}}]),
            "op 1",
        ),
    ] {
        a.change("paths", ops.clone()).await;
        let r = a.until("reject").await;
        assert_eq!(r["code"], "invalid", "{ops}: {r}");
        assert!(r["message"].as_str().unwrap().contains(says), "{ops}: {r}");
    }
    let (status, body) =
        post_ops(&server, "bad", json!([{"op": "list_move", "path": "/todos", "id": "a", "after": 3}])).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid")), "{body}");
    let (_, got) = http(&server, "GET", "/v1/rooms/bad", None).await;
    assert_eq!((got["rev"].as_u64(), &got["state"]["todos"]), (Some(1), &json!([{"id": "a"}])));
    server.shutdown().await;
}
