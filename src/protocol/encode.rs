//! Encoding of every server → client message and of the pre-encoded fragments hot frames are
//! concatenated from. Nothing here parses; nothing outside `protocol` serialises a message.
//!
//! Invariant: every function returns one complete, valid JSON text (fragments: one valid JSON
//! value or `"name":value` member), so frames built by concatenation stay valid.

use std::io::Write as _;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::{ErrorCode, Reject};
use crate::ids::{ClientId, ClientReqId, Rev};
use crate::patch::Op;

/// Encodes a patch once; the bytes are embedded in every frame that carries the change.
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    serde_json::to_vec(ops).expect("ops always serialise")
}

/// What every entry of one committed change says besides its ops: who, when, and what it
/// reverts and carries.
#[derive(Debug, Clone, Copy)]
pub struct EntryHead<'a> {
    pub rev: Rev,
    pub client: ClientId,
    /// The author's user (a token's `sub`), when it has one.
    pub user: Option<&'a str>,
    /// Commit time, ms since the Unix epoch.
    pub ts: u64,
    /// The revision this change reverts (undo, redo, `reverts`).
    pub reverts: Option<Rev>,
    /// The change's `meta` object, encoded.
    pub meta_json: Option<&'a [u8]>,
}

impl<'a> EntryHead<'a> {
    /// A plain change's head (no `reverts`, no `meta`).
    pub fn new(rev: Rev, client: ClientId, user: Option<&'a str>, ts: u64) -> Self {
        EntryHead { rev, client, user, ts, reverts: None, meta_json: None }
    }

    /// `"rev":..,"client":..,"user"?:..,"ts":..,` (the members every entry starts with).
    fn push(&self, b: &mut Vec<u8>) {
        write!(b, "\"rev\":{},\"client\":\"{}\",", self.rev, self.client).expect("vec write");
        push_user(b, self.user);
        write!(b, "\"ts\":{},", self.ts).expect("vec write");
    }

    /// `"reverts":R,` when it reverts.
    fn push_reverts(&self, b: &mut Vec<u8>) {
        if let Some(r) = self.reverts {
            write!(b, "\"reverts\":{r},").expect("vec write");
        }
    }
}

/// The one-change `delta` frame `rev-1 → rev` that every caught-up non-author is sent, and the
/// entry inside it (`{"rev":..,"client":..,"user"?:..,"ts":..,"reverts"?:..,"meta"?:..,"ops":..}`)
/// as a zero-copy slice of the same bytes, so a committed change is encoded and stored once.
pub fn change_frame(head: &EntryHead<'_>, ops_json: &[u8]) -> (Bytes, Bytes) {
    let extra = head.user.map_or(0, |u| u.len() + 16) + head.meta_json.map_or(0, |m| m.len() + 8);
    let mut b = Vec::with_capacity(128 + ops_json.len() + extra);
    write!(b, "{{\"type\":\"delta\",\"from\":{},\"to\":{},\"changes\":[", head.rev.0 - 1, head.rev)
        .expect("vec write");
    let start = b.len();
    b.push(b'{');
    head.push(&mut b);
    head.push_reverts(&mut b);
    if let Some(meta) = head.meta_json {
        b.extend_from_slice(b"\"meta\":");
        b.extend_from_slice(meta);
        b.push(b',');
    }
    b.extend_from_slice(b"\"ops\":");
    b.extend_from_slice(ops_json);
    b.push(b'}');
    let end = b.len();
    b.extend_from_slice(b"]}");
    let frame = Bytes::from(b);
    let entry = frame.slice(start..end);
    (frame, entry)
}

/// What the author's entry (its ack) says of the author's history in the room after the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stacks {
    pub can_undo: bool,
    pub can_redo: bool,
}

/// `{"rev":42,"client":"c7","user"?:..,"ts":..,"clientReqId":17,"canUndo":..,"canRedo":..}`: a
/// change as its author sees it (an ack). A revert's ack also carries `"reverts"` and its ops
/// (`ops_json`), which only the server knows.
pub fn entry_ack(head: &EntryHead<'_>, req: ClientReqId, stacks: Stacks, ops_json: Option<&[u8]>) -> Bytes {
    let extra = head.user.map_or(0, |u| u.len() + 16) + ops_json.map_or(0, |o| o.len() + 8);
    let mut b = Vec::with_capacity(112 + extra);
    b.push(b'{');
    head.push(&mut b);
    write!(b, "\"clientReqId\":{},\"canUndo\":{},\"canRedo\":{}", req.0, stacks.can_undo, stacks.can_redo)
        .expect("vec write");
    if let Some(ops) = ops_json {
        b.push(b',');
        head.push_reverts(&mut b);
        b.extend_from_slice(b"\"ops\":");
        b.extend_from_slice(ops);
    }
    b.push(b'}');
    b.into()
}

/// `"user":"alice",` when there is a user (its JSON string escaped), else nothing.
fn push_user(b: &mut Vec<u8>, user: Option<&str>) {
    if let Some(user) = user {
        b.extend_from_slice(b"\"user\":");
        serde_json::to_writer(&mut *b, user).expect("vec write");
        b.push(b',');
    }
}

/// A `delta` frame from pre-encoded entries.
pub fn delta_frame<'a>(
    from: Rev,
    to: Rev,
    entries: impl Iterator<Item = &'a [u8]>,
    size_hint: usize,
) -> Bytes {
    let mut b = Vec::with_capacity(64 + size_hint);
    write!(b, "{{\"type\":\"delta\",\"from\":{from},\"to\":{to},\"changes\":[").expect("vec write");
    push_joined(&mut b, entries);
    b.extend_from_slice(b"]}");
    b.into()
}

/// `{` + pre-encoded `"name":value` members joined by `,` + `}`.
pub fn object_of<'a>(members: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut b = Vec::with_capacity(64);
    b.push(b'{');
    push_joined(&mut b, members);
    b.push(b'}');
    b.into()
}

/// Appends pre-encoded JSON fragments separated by commas.
fn push_joined<'a>(b: &mut Vec<u8>, parts: impl Iterator<Item = &'a [u8]>) {
    for (i, part) in parts.enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(part);
    }
}

/// A `snapshot` frame from the state encoded once for its revision.
pub fn snapshot_frame(rev: Rev, last_client_req_id: ClientReqId, state_json: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(80 + state_json.len());
    write!(
        b,
        "{{\"type\":\"snapshot\",\"rev\":{rev},\"lastClientReqId\":{},\"state\":",
        last_client_req_id.0
    )
    .expect("vec write");
    b.extend_from_slice(state_json);
    b.push(b'}');
    b.into()
}

/// Encodes any serialisable message (control messages, HTTP bodies).
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    serde_json::to_vec(msg).expect("messages always serialise").into()
}

/// The first message on every connection. `presence_json` is the encoded peers object.
pub struct Welcome<'a> {
    pub client: ClientId,
    /// The connection's user (a token's `sub`); absent from the message in open mode.
    pub user: Option<&'a str>,
    pub session: &'a str,
    pub epoch: &'a str,
    pub rev: Rev,
    pub resumed: bool,
    pub last_client_req_id: ClientReqId,
    pub presence_json: &'a [u8],
    /// How many peers are present, when the room lists fewer (`--presence-peers`).
    pub presence_count: Option<usize>,
    /// Whether this connection's user can undo / redo in the room.
    pub stacks: Stacks,
}

impl Welcome<'_> {
    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(160 + self.presence_json.len());
        write!(b, "{{\"type\":\"welcome\",\"client\":\"{}\",", self.client).expect("vec write");
        push_user(&mut b, self.user);
        write!(
            b,
            "\"session\":{},\"epoch\":{},\"rev\":{},\"resumed\":{},\"lastClientReqId\":{},\"canUndo\":{},\"canRedo\":{},\"presence\":",
            Value::from(self.session),
            Value::from(self.epoch),
            self.rev,
            self.resumed,
            self.last_client_req_id.0,
            self.stacks.can_undo,
            self.stacks.can_redo,
        )
        .expect("vec write");
        b.extend_from_slice(self.presence_json);
        if let Some(count) = self.presence_count {
            write!(b, ",\"presenceCount\":{count}").expect("vec write");
        }
        b.push(b'}');
        b.into()
    }
}

/// `{"type":"reject","clientReqId":18,...}`.
pub fn reject_msg(req: ClientReqId, r: &Reject) -> Bytes {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase", tag = "type", rename = "reject")]
    struct Msg<'a> {
        client_req_id: u64,
        #[serde(flatten)]
        reject: &'a Reject,
    }
    encode(&Msg { client_req_id: req.0, reject: r })
}

/// `{"type":"error","code":..,"message":..}` plus optional extra fields.
pub fn error_msg(code: ErrorCode, message: &str, client_req_id: Option<ClientReqId>) -> Bytes {
    let mut v = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(id) = client_req_id {
        v["clientReqId"] = id.0.into();
    }
    encode(&v)
}

/// A message refused by a rate limit: for a change (`client_req_id` given) a `reject` with code
/// `rate_limited`, else an `error`; both carry `retryAfterMs`, the wait before it may succeed.
pub fn rate_limited_msg(
    client_req_id: Option<ClientReqId>,
    message: &str,
    rev: u64,
    retry_after_ms: u64,
) -> Bytes {
    let code = ErrorCode::RateLimited;
    let v = match client_req_id {
        Some(id) => serde_json::json!({
            "type": "reject", "clientReqId": id.0, "code": code, "message": message, "rev": rev,
            "retryAfterMs": retry_after_ms,
        }),
        None => {
            serde_json::json!({"type": "error", "code": code, "message": message, "retryAfterMs": retry_after_ms})
        }
    };
    encode(&v)
}

/// `{"type":"pong","t":..}`.
pub fn pong_msg(t: &Value) -> Bytes {
    encode(&serde_json::json!({"type": "pong", "t": t}))
}

/// `{"type":"presence","peers":{..}}` around an already encoded peers object, with `"count"` (the
/// peers present) in a room that lists fewer than are present.
pub fn presence_frame(peers_json: &[u8], count: Option<usize>) -> Bytes {
    let mut b = Vec::with_capacity(50 + peers_json.len());
    b.extend_from_slice(br#"{"type":"presence","peers":"#);
    b.extend_from_slice(peers_json);
    if let Some(count) = count {
        write!(b, ",\"count\":{count}").expect("vec write");
    }
    b.push(b'}');
    b.into()
}

/// `{"type":"broadcast","client":"c3","data":..}`, encoded once for all recipients.
pub fn broadcast_msg(client: ClientId, data: &Value) -> Bytes {
    encode(&serde_json::json!({"type": "broadcast", "client": client.to_string(), "data": data}))
}

/// `{"type":"dropped","broadcasts":N}`.
pub fn dropped_msg(n: u64) -> Bytes {
    encode(&serde_json::json!({"type": "dropped", "broadcasts": n}))
}

/// `{"type":"expiring","exp":1893456000}`: the connection's token expires at `exp` (seconds since
/// the Unix epoch); send a `refresh` before then.
pub fn expiring_msg(exp: u64) -> Bytes {
    encode(&serde_json::json!({"type": "expiring", "exp": exp}))
}

/// `{"type":"refreshed","exp":1893459600}`: a `refresh` was accepted; its token expires at `exp`.
pub fn refreshed_msg(exp: u64) -> Bytes {
    encode(&serde_json::json!({"type": "refreshed", "exp": exp}))
}
