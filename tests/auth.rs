//! Tokens and room permissions, end to end: the real server on a free port, tokens minted here
//! with keys generated here (a random HS256 secret; an Ed25519 key pair from `openssl`), real
//! WebSocket and HTTP clients. Every wait is bounded (see `common`).

mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};

/// A directory of key files, removed when dropped.
struct Keys {
    dir: PathBuf,
    secret: Vec<u8>,
}

impl Keys {
    fn new() -> Keys {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringsync-auth-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret: Vec<u8> =
            rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric).take(48).collect();
        std::fs::write(dir.join("secret"), [&secret[..], b"\n"].concat()).unwrap();
        Keys { dir, secret }
    }

    fn secret_file(&self) -> String {
        self.dir.join("secret").to_string_lossy().into_owned()
    }

    /// Generates an Ed25519 key pair with `openssl`; returns the public key file.
    fn ed25519(&self) -> String {
        let private = self.dir.join("ed.pem");
        let public = self.dir.join("ed.pub.pem");
        let ok = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private)
            .status()
            .expect("openssl is installed (scripts/test.sh installs it)");
        assert!(ok.success());
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap();
        assert!(ok.success());
        public.to_string_lossy().into_owned()
    }

    fn hs256(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(&self.secret))
            .unwrap()
    }

    fn eddsa(&self, claims: &Value) -> String {
        let pem = std::fs::read(self.dir.join("ed.pem")).unwrap();
        let key = EncodingKey::from_ed_pem(&pem).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims for `sub` with `rooms`, valid for an hour.
fn claims(sub: &str, rooms: Value) -> Value {
    json!({"sub": sub, "exp": now() + 3600, "rooms": rooms})
}

async fn server_with(keys: &Keys, flags: &[&str]) -> Server {
    let secret = keys.secret_file();
    let mut all = vec!["--jwt-secret-file", &secret];
    all.extend_from_slice(flags);
    start(config(&all)).await
}

/// Opens a WebSocket with optional extra `Authorization` header; the upgrade always succeeds.
async fn open(server: &Server, room: &str, query: &str, bearer: Option<&str>) -> Ws {
    let mut req = server.ws_url(room, query).into_client_request().unwrap();
    if let Some(token) = bearer {
        req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("the upgrade succeeds even when the token is refused");
    ws
}

/// Connects with `token` in the query string and expects the server to close with `code`.
async fn refused(server: &Server, room: &str, token: &str) -> u16 {
    let mut ws = open(server, room, &format!("token={token}"), None).await;
    close_code(&mut ws).await
}

/// An HTTP request with optional bearer token; returns status, lower-cased head and body.
async fn http_auth(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String, Value) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("response in time").unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), serde_json::from_str(body).unwrap_or(Value::String(body.into())))
}

/// Reads messages until one of type `ty`, panicking on a close.
async fn until_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time");
        match msg.expect("open").expect("no error") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
            Message::Close(f) => panic!("closed while waiting for {ty}: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn websocket_tokens_are_checked_before_anything_happens() {
    let keys = Keys::new();
    let server = server_with(&keys, &[]).await;
    let write = claims("alice", json!({"chess:*": ["write"], "lobby": ["read"]}));

    // Valid, in the query string: the user is in `welcome`.
    let c = Client::connect_query(&server, "chess:1", &format!("token={}", keys.hs256(&write))).await;
    assert_eq!(c.welcome["user"], "alice", "{}", c.welcome);
    // Valid, in the Authorization header.
    let mut ws = open(&server, "lobby", "", Some(&keys.hs256(&write))).await;
    let w = until_type(&mut ws, "welcome").await;
    assert_eq!(w["user"], "alice");

    // Missing, expired, not yet valid, wrongly signed, malformed: 4401.
    let mut ws = open(&server, "chess:1", "", None).await;
    assert_eq!(close_code(&mut ws).await, 4401);
    let expired = json!({"sub": "alice", "exp": now() - 120, "rooms": {"chess:*": ["write"]}});
    assert_eq!(refused(&server, "chess:1", &keys.hs256(&expired)).await, 4401);
    let early =
        json!({"sub": "alice", "exp": now() + 3600, "nbf": now() + 600, "rooms": {"chess:*": ["write"]}});
    assert_eq!(refused(&server, "chess:1", &keys.hs256(&early)).await, 4401);
    let forged = Keys::new().hs256(&write);
    assert_eq!(refused(&server, "chess:1", &forged).await, 4401);
    assert_eq!(refused(&server, "chess:1", "not.a.token").await, 4401);
    let unknown = claims("alice", json!({"chess:*": ["own"]}));
    assert_eq!(refused(&server, "chess:1", &keys.hs256(&unknown)).await, 4401, "unknown permission");
    let no_sub = json!({"exp": now() + 3600, "rooms": {"chess:*": ["write"]}});
    assert_eq!(refused(&server, "chess:1", &keys.hs256(&no_sub)).await, 4401);

    // Valid but not for this room: 4403, and the room is not created.
    assert_eq!(refused(&server, "go:1", &keys.hs256(&write)).await, 4403);
    let (status, _, body) = http_auth(
        &server,
        "GET",
        "/v1/rooms/go:1",
        None,
        Some(&keys.hs256(&claims("x", json!({"*": ["read"]})))),
    )
    .await;
    assert_eq!((status, &body["epoch"]), (200, &Value::Null), "a refused connection created no room");
}

#[tokio::test]
async fn http_needs_read_to_read_and_write_to_write() {
    let keys = Keys::new();
    let server = server_with(&keys, &[]).await;
    let reader = keys.hs256(&claims("rita", json!({"r": ["read"]})));
    let writer = keys.hs256(&claims("will", json!({"r*": ["write"]})));
    let ops = r#"{"ops":[{"op":"add","path":"/a","value":1}]}"#;

    let (status, head, body) = http_auth(&server, "GET", "/v1/rooms/r", None, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let (status, _, _) = http_auth(&server, "GET", "/v1/rooms/r", None, Some("garbage")).await;
    assert_eq!(status, 401);
    let (status, _, body) = http_auth(&server, "POST", "/v1/rooms/r/changes", Some(ops), Some(&reader)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _, _) =
        http_auth(&server, "POST", "/v1/rooms/r/broadcast", Some(r#"{"data":1}"#), Some(&reader)).await;
    assert_eq!(status, 403);
    let (status, _, _) = http_auth(&server, "POST", "/v1/rooms/r/changes", Some(ops), None).await;
    assert_eq!(status, 401);
    let (status, _, _) = http_auth(&server, "GET", "/v1/rooms/other", None, Some(&reader)).await;
    assert_eq!(status, 403, "read elsewhere does not grant this room");
    let (_, _, body) = http_auth(&server, "GET", "/v1/rooms/r", None, Some(&reader)).await;
    assert_eq!(body["rev"], 0, "nothing was applied: {body}");

    let (status, _, body) = http_auth(&server, "POST", "/v1/rooms/r/changes", Some(ops), Some(&writer)).await;
    assert_eq!((status, &body["rev"]), (200, &json!(1)), "{body}");
    for path in ["/v1/rooms/r", "/v1/rooms/r/changes?since=0", "/v1/rooms/r/presence"] {
        let (status, _, body) = http_auth(&server, "GET", path, None, Some(&reader)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, _, body) = http_auth(&server, "GET", "/v1/rooms/r/changes?since=0", None, Some(&reader)).await;
    assert_eq!(body["changes"][0]["user"], "will", "{body}");
}

#[tokio::test]
async fn a_read_only_connection_cannot_change_or_broadcast_but_sets_presence() {
    let keys = Keys::new();
    let server = server_with(&keys, &[]).await;
    let ro = keys.hs256(&claims("rita", json!({"room": ["read"]})));
    let rw = keys.hs256(&claims("will", json!({"room": ["write", "read"]})));
    let mut reader = Client::connect_query(&server, "room", &format!("token={ro}")).await;
    let mut writer = Client::connect_query(&server, "room", &format!("token={rw}")).await;

    let id = reader.change("overwrite", json!([{"op": "add", "path": "/a", "value": 1}])).await;
    let reject = reader.until("reject").await;
    assert_eq!(
        (reject["clientReqId"].as_u64(), reject["code"].as_str()),
        (Some(id), Some("forbidden")),
        "{reject}"
    );
    // Processed like any reject: the same id again is a duplicate.
    reader.send(json!({"type": "change", "clientReqId": id, "ops": []})).await;
    let dup = reader.until("error").await;
    assert_eq!(dup["code"], "duplicate", "{dup}");
    reader.send(json!({"type": "broadcast", "data": "hi"})).await;
    let e = reader.until("error").await;
    assert_eq!(e["code"], "forbidden", "{e}");

    // Presence is allowed; the writer sees it with the reader's user, which the client cannot
    // override. Nothing the reader sent was applied or broadcast.
    reader.send(json!({"type": "presence", "data": {"name": "R", "user": "mallory"}})).await;
    let peers = loop {
        let p = writer.until("presence").await;
        if p["peers"][&reader.client]["name"] == "R" {
            break p["peers"].clone();
        }
    };
    assert_eq!(peers[&reader.client], json!({"user": "rita", "name": "R"}));
    writer.change("overwrite", json!([{"op": "add", "path": "/b", "value": 2}])).await;
    writer.sync_to(1).await;
    assert_eq!(writer.state, json!({"b": 2}), "the reader's change was not applied");
    assert!(writer.others.is_empty());
}

#[tokio::test]
async fn every_entry_others_see_carries_the_user() {
    let keys = Keys::new();
    let server = server_with(&keys, &[]).await;
    let alice = keys.hs256(&claims("alice", json!({"g": ["write"]})));
    let bob = keys.hs256(&claims("bob", json!({"g": ["read"]})));
    let mut a = Client::connect_query(&server, "g", &format!("token={alice}")).await;
    let mut b = Client::connect_query(&server, "g", &format!("token={bob}")).await;
    assert_eq!(b.welcome["user"], "bob");
    a.send(json!({"type": "presence", "data": {"x": 1}})).await;
    let peers = loop {
        let p = b.until("presence").await;
        if p["peers"][&a.client]["x"] == 1 {
            break p["peers"].clone();
        }
    };
    assert_eq!(peers[&a.client], json!({"user": "alice", "x": 1}));
    a.change("overwrite", json!([{"op": "add", "path": "/k", "value": 1}])).await;
    let ack = a.until("delta").await;
    assert_eq!(ack["changes"][0]["user"], "alice", "the author's ack: {ack}");
    b.sync_to(1).await;
    assert_eq!(b.others[0]["user"], "alice", "{:?}", b.others);
    assert_eq!(b.others[0]["client"], a.client.as_str());
    // A later joiner sees both users in its welcome's presence.
    let c = Client::connect_query(&server, "g", &format!("token={bob}")).await;
    assert_eq!(c.welcome["presence"][&a.client]["user"], "alice", "{}", c.welcome);
    assert_eq!(c.welcome["presence"][&b.client]["user"], "bob");
}

#[tokio::test]
async fn open_mode_keeps_the_wire_format() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "open").await;
    let mut b = Client::connect(&server, "open").await;
    assert!(a.welcome.get("user").is_none(), "{}", a.welcome);
    a.send(json!({"type": "presence", "data": {"user": "free"}})).await;
    // The join may come in a presence message of its own first.
    loop {
        let p = b.until("presence").await;
        if p["peers"][&a.client] != json!({}) {
            assert_eq!(
                p["peers"][&a.client],
                json!({"user": "free"}),
                "open mode leaves presence to clients"
            );
            break;
        }
    }
    a.change("overwrite", json!([{"op": "add", "path": "/k", "value": 1}])).await;
    b.sync_to(1).await;
    let ts = b.others[0]["ts"].clone();
    assert!(ts.is_u64(), "every entry carries its commit time: {}", b.others[0]);
    assert_eq!(
        b.others[0],
        json!({"rev": 1, "client": a.client, "ts": ts, "ops": [{"op": "add", "path": "/k", "value": 1}]})
    );
}

#[tokio::test]
async fn a_session_is_resumed_only_by_the_user_it_belongs_to() {
    let keys = Keys::new();
    let server = server_with(&keys, &[]).await;
    let alice = keys.hs256(&claims("alice", json!({"s": ["write"]})));
    let bob = keys.hs256(&claims("bob", json!({"s": ["write"]})));
    let a = Client::connect_query(&server, "s", &format!("token={alice}")).await;
    let mut ws = open(&server, "s", &format!("token={bob}&session={}", a.session), None).await;
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(f)))) => {
                assert!(f.reason.contains("another user"), "{}", f.reason);
                break u16::from(f.code);
            }
            Some(Ok(Message::Text(t))) => panic!("no welcome for another user's session: {t}"),
            other => assert!(matches!(other, Some(Ok(_))), "{other:?}"),
        }
    };
    assert_eq!(code, 4403);
    // Alice herself resumes it.
    let again = Client::connect_query(&server, "s", &format!("token={alice}&session={}", a.session)).await;
    assert_eq!(again.welcome["resumed"], true);
}

#[tokio::test]
async fn refresh_applies_new_permissions_at_once() {
    let keys = Keys::new();
    let server = server_with(&keys, &[]).await;
    let read = keys.hs256(&claims("ann", json!({"rf": ["read"]})));
    let mut c = Client::connect_query(&server, "rf", &format!("token={read}")).await;
    c.change("overwrite", json!([{"op": "add", "path": "/a", "value": 1}])).await;
    assert_eq!(c.until("reject").await["code"], "forbidden");

    // Widened: read → write, then a change commits.
    let write_claims = claims("ann", json!({"rf": ["write"]}));
    c.send(json!({"type": "refresh", "token": keys.hs256(&write_claims)})).await;
    let r = c.until("refreshed").await;
    assert_eq!(r["exp"], write_claims["exp"]);
    c.change("overwrite", json!([{"op": "add", "path": "/a", "value": 2}])).await;
    c.sync_to(1).await;
    assert_eq!(c.state, json!({"a": 2}));

    // A bad refresh token: an error, the connection stays.
    c.send(json!({"type": "refresh", "token": Keys::new().hs256(&write_claims)})).await;
    assert_eq!(c.until("error").await["code"], "unauthorized");

    // Narrowed: write → read, then a change is forbidden.
    c.send(json!({"type": "refresh", "token": read})).await;
    c.until("refreshed").await;
    c.change("overwrite", json!([{"op": "add", "path": "/a", "value": 3}])).await;
    assert_eq!(c.until("reject").await["code"], "forbidden");

    // Read lost for this room: closed with 4403.
    let elsewhere = keys.hs256(&claims("ann", json!({"other": ["write"]})));
    c.send(json!({"type": "refresh", "token": elsewhere})).await;
    assert_eq!(c.closed().await, 4403);

    // Another user's token: closed with 4403.
    let mut d = Client::connect_query(&server, "rf", &format!("token={read}")).await;
    let bob = keys.hs256(&claims("bob", json!({"rf": ["write"]})));
    d.send(json!({"type": "refresh", "token": bob})).await;
    assert_eq!(d.closed().await, 4403);
}

#[tokio::test]
async fn a_connection_is_warned_then_closed_when_its_token_expires() {
    let keys = Keys::new();
    let server = server_with(&keys, &["--jwt-leeway", "0"]).await;
    let exp = now() + 3;
    let token = keys.hs256(&json!({"sub": "eve", "exp": exp, "rooms": {"x": ["write"]}}));
    let mut c = Client::connect_query(&server, "x", &format!("token={token}")).await;
    let warning = c.until("expiring").await;
    assert_eq!(warning["exp"], exp);
    assert_eq!(c.closed().await, 4401);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_set() {
    let keys = Keys::new();
    let server =
        server_with(&keys, &["--jwt-issuer", "https://auth.example", "--jwt-audience", "ringsync"]).await;
    let base = |extra: Value| {
        let mut c = claims("ann", json!({"ia": ["read"]}));
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        keys.hs256(&c)
    };
    let good = base(json!({"iss": "https://auth.example", "aud": "ringsync"}));
    let c = Client::connect_query(&server, "ia", &format!("token={good}")).await;
    assert_eq!(c.welcome["user"], "ann");
    for bad in [
        json!({"iss": "https://evil.example", "aud": "ringsync"}),
        json!({"iss": "https://auth.example", "aud": "other"}),
        json!({"aud": "ringsync"}),
        json!({"iss": "https://auth.example"}),
    ] {
        assert_eq!(refused(&server, "ia", &base(bad.clone())).await, 4401, "{bad}");
    }
    // Without the flags, iss and aud are not checked.
    let plain = server_with(&keys, &[]).await;
    let c = Client::connect_query(&plain, "ia", &format!("token={}", base(json!({"aud": "x", "iss": "y"}))))
        .await;
    assert_eq!(c.welcome["user"], "ann");
}

#[tokio::test]
async fn ed25519_public_keys_verify_eddsa_tokens() {
    let keys = Keys::new();
    let public = keys.ed25519();
    let server = start(config(&["--jwt-public-key-file", &public])).await;
    let token = keys.eddsa(&claims("edd", json!({"ed": ["write"]})));
    let c = Client::connect_query(&server, "ed", &format!("token={token}")).await;
    assert_eq!(c.welcome["user"], "edd");
    // An HS256 token is refused: no secret is configured.
    assert_eq!(refused(&server, "ed", &keys.hs256(&claims("edd", json!({"ed": ["write"]})))).await, 4401);
    let (status, _, _) = http_auth(&server, "GET", "/v1/rooms/ed", None, Some(&token)).await;
    assert_eq!(status, 200);
}

#[test]
fn open_mode_refuses_a_public_address_unless_anonymous_is_allowed() {
    let out = binary().args(["--listen", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for flag in ["--allow-anonymous", "--jwt-secret-file", "--jwt-public-key-file"] {
        assert!(err.contains(flag), "{flag}: {err}");
    }
    let open = Spawned::start(server_command(&["--listen", "0.0.0.0:0", "--allow-anonymous"]));
    assert!(open.addr.ip().is_unspecified());
    drop(open);

    let keys = Keys::new();
    let secret = keys.secret_file();
    let with_key = Spawned::start(server_command(&["--listen", "0.0.0.0:0", "--jwt-secret-file", &secret]));
    drop(with_key);

    // Unreadable or unusable key files stop the server, naming the flag.
    let short = keys.dir.join("short");
    std::fs::write(&short, "too short").unwrap();
    let short = short.to_string_lossy().into_owned();
    for (flag, path) in [
        ("--jwt-secret-file", "/nonexistent/secret"),
        ("--jwt-secret-file", short.as_str()),
        ("--jwt-public-key-file", short.as_str()),
    ] {
        let out = binary().args(["--listen", "127.0.0.1:0", flag, path]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {path}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{err}");
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let keys = Keys::new();
    let secret = keys.secret_file();
    let log = keys.dir.join("stderr.log");
    let mut cmd = server_command(&["--jwt-secret-file", &secret]);
    cmd.env("RUST_LOG", "trace").stderr(std::fs::File::create(&log).unwrap());
    let server = Spawned::start(cmd);
    let good = keys.hs256(&claims("logan", json!({"l": ["write"]})));
    let forged = Keys::new().hs256(&claims("logan", json!({"l": ["write"]})));
    for token in [&good, &forged] {
        let url = format!("ws://{}/v1/rooms/l/ws?token={token}", server.addr);
        let (mut ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await.unwrap().unwrap();
        if token == &good {
            ws.send(Message::text(json!({"type": "refresh", "token": forged}).to_string())).await.unwrap();
            let _ = until_type(&mut ws, "error").await;
        } else {
            assert_eq!(close_code(&mut ws).await, 4401);
        }
    }
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /v1/rooms/l HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {forged}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    drop(server);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(!logs.is_empty(), "trace logging is on");
    for token in [&good, &forged] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token reached the logs");
    }
}

/// A token with `admin` on a room reaches that room's admin calls (and sees its users); `write`
/// does not, nor does any client token list the rooms (server-wide: the admin token only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_on_a_room_grants_its_admin_calls() {
    let keys = Keys::new();
    let server = server_with(&keys, &[]).await;
    let bob = keys.hs256(&claims("bob", json!({"game:*": ["write"]})));
    let op = keys.hs256(&claims("op", json!({"game:*": ["admin"]})));
    let mut ws = open(&server, "game:1", &format!("token={bob}"), None).await;
    let welcome = until_type(&mut ws, "welcome").await;
    let client = welcome["client"].as_str().unwrap().to_owned();

    let (status, _, body) = http_auth(&server, "GET", "/v1/admin/rooms/game:1", None, Some(&op)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connected"][0]["user"], "bob", "{body}");
    assert_eq!(body["connected"][0]["client"], client.as_str());
    for (token, want) in [(Some(&bob), 403), (None, 401), (Some(&"not.a.token".to_owned()), 401)] {
        let (status, _, body) =
            http_auth(&server, "GET", "/v1/admin/rooms/game:1", None, token.map(|t| t.as_str())).await;
        assert_eq!(status, want, "{body}");
    }
    // Admin on game:* is not admin elsewhere, nor server-wide.
    let (status, _, _) = http_auth(&server, "GET", "/v1/admin/rooms/lobby", None, Some(&op)).await;
    assert_eq!(status, 403);
    let (status, _, _) = http_auth(&server, "GET", "/v1/admin/rooms", None, Some(&op)).await;
    assert_eq!(status, 403);

    let kick = json!({"client": client}).to_string();
    let (status, _, body) =
        http_auth(&server, "POST", "/v1/admin/rooms/game:1/kick", Some(&kick), Some(&bob)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) =
        http_auth(&server, "POST", "/v1/admin/rooms/game:1/kick", Some(&kick), Some(&op)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(close_code(&mut ws).await, 4009);
}
