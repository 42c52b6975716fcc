//! Protocol v1: the only place that decodes client messages and encodes server messages.
//!
//! Every message is a JSON object with a `"type"`. Hot frames (`delta`, `snapshot`) are built by
//! concatenating bytes that were encoded once per committed change or once per snapshot, so a
//! change is never re-serialised per recipient. See `docs/PROTOCOL.md` for the user-facing
//! reference.

use std::io::Write as _;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::ids::{ClientId, ClientReqId, Rev};
use crate::patch::{self, Op, PatchError};

/// How a change is checked against changes its author had not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Apply whatever `baseRev` is (last writer wins, in commit order).
    #[default]
    Overwrite,
    /// Reject with `conflict` unless `baseRev` is the current revision.
    Rev,
    /// Reject with `conflict` when a change after `baseRev` touched an overlapping path.
    Paths,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "overwrite" => Some(Mode::Overwrite),
            "rev" => Some(Mode::Rev),
            "paths" => Some(Mode::Paths),
            _ => None,
        }
    }
}

/// A message that could not be decoded at all (not attributable to a change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub message: String,
}

impl DecodeError {
    /// Stable code sent in `error` messages and used as a metrics label.
    pub fn code(&self) -> &'static str {
        "bad_message"
    }
    fn new(message: impl Into<String>) -> Self {
        DecodeError { message: message.into() }
    }
}

/// A change as a client sent it. Parts that failed to parse are kept as errors so the reply can
/// be a `reject` carrying the `clientReqId`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeMsg {
    pub client_req_id: ClientReqId,
    pub base_rev: Option<Rev>,
    pub mode: Result<Mode, String>,
    pub ops: Result<Vec<Op>, PatchError>,
}

/// A decoded client → server message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Change(ChangeMsg),
    Ping { t: Value },
    Presence { data: Value },
    Broadcast { data: Value },
}

/// Decodes one text frame from a client.
///
/// # Errors
/// [`DecodeError`] when the frame is not a JSON object with a known `type` and the fields that
/// type requires.
pub fn decode_client(text: &[u8]) -> Result<ClientMsg, DecodeError> {
    let v: Value = serde_json::from_slice(text).map_err(|e| DecodeError::new(format!("not JSON: {e}")))?;
    let Value::Object(mut m) = v else {
        return Err(DecodeError::new("a message must be a JSON object"));
    };
    let ty = match m.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(DecodeError::new("\"type\" must be a string")),
        None => return Err(DecodeError::new("missing \"type\"")),
    };
    match ty.as_str() {
        "change" => {
            let client_req_id = match m.get("clientReqId").and_then(Value::as_u64) {
                Some(id) if id > 0 => ClientReqId(id),
                _ => return Err(DecodeError::new("change needs \"clientReqId\": a positive integer")),
            };
            Ok(ClientMsg::Change(decode_change_body(&mut m, client_req_id)))
        }
        "ping" => Ok(ClientMsg::Ping { t: m.remove("t").unwrap_or(Value::Null) }),
        "presence" => match m.remove("data") {
            Some(data @ Value::Object(_)) => Ok(ClientMsg::Presence { data }),
            _ => Err(DecodeError::new("presence needs \"data\": an object")),
        },
        "broadcast" => match m.remove("data") {
            Some(data) => Ok(ClientMsg::Broadcast { data }),
            None => Err(DecodeError::new("broadcast needs \"data\"")),
        },
        other => Err(DecodeError::new(format!("unknown message type {other:?}"))),
    }
}

/// Decodes the fields shared by a WebSocket `change` and an HTTP `POST .../changes` body.
pub fn decode_change_body(m: &mut serde_json::Map<String, Value>, client_req_id: ClientReqId) -> ChangeMsg {
    let base_rev = m.get("baseRev").and_then(Value::as_u64).map(Rev);
    let mode = match m.get("mode") {
        None | Some(Value::Null) => Ok(Mode::Overwrite),
        Some(Value::String(s)) => Mode::parse(s).ok_or_else(|| format!("unknown mode {s:?}")),
        Some(_) => Err("\"mode\" must be a string".to_owned()),
    };
    let ops = match m.remove("ops") {
        Some(ops) => patch::parse_patch(ops),
        None => Err(PatchError::Invalid { index: 0, message: "missing \"ops\"".into() }),
    };
    ChangeMsg { client_req_id, base_rev, mode, ops }
}

/// Encodes a patch once; the bytes are embedded in every frame that carries the change.
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    serde_json::to_vec(ops).expect("ops always serialise")
}

/// The one-change `delta` frame `rev-1 → rev` that every caught-up non-author is sent, and the
/// entry inside it (`{"rev":..,"client":..,"ops":..}`) as a zero-copy slice of the same bytes,
/// so a committed change is encoded and stored once.
pub fn change_frame(rev: Rev, client: ClientId, ops_json: &[u8]) -> (Bytes, Bytes) {
    let mut b = Vec::with_capacity(96 + ops_json.len());
    write!(b, "{{\"type\":\"delta\",\"from\":{},\"to\":{rev},\"changes\":[", rev.0 - 1).expect("vec write");
    let start = b.len();
    write!(b, "{{\"rev\":{rev},\"client\":\"{client}\",\"ops\":").expect("vec write");
    b.extend_from_slice(ops_json);
    b.push(b'}');
    let end = b.len();
    b.extend_from_slice(b"]}");
    let frame = Bytes::from(b);
    let entry = frame.slice(start..end);
    (frame, entry)
}

/// `{"rev":42,"client":"c7","clientReqId":17}`: a change as its author sees it (an ack).
pub fn entry_ack(rev: Rev, client: ClientId, req: ClientReqId) -> Bytes {
    format!("{{\"rev\":{rev},\"client\":\"{client}\",\"clientReqId\":{}}}", req.0).into_bytes().into()
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
    pub session: &'a str,
    pub epoch: &'a str,
    pub rev: Rev,
    pub resumed: bool,
    pub last_client_req_id: ClientReqId,
    pub presence_json: &'a [u8],
}

impl Welcome<'_> {
    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(160 + self.presence_json.len());
        write!(
            b,
            "{{\"type\":\"welcome\",\"client\":\"{}\",\"session\":{},\"epoch\":{},\"rev\":{},\"resumed\":{},\"lastClientReqId\":{},\"presence\":",
            self.client,
            Value::from(self.session),
            Value::from(self.epoch),
            self.rev,
            self.resumed,
            self.last_client_req_id.0,
        )
        .expect("vec write");
        b.extend_from_slice(self.presence_json);
        b.push(b'}');
        b.into()
    }
}

/// Why a change was not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    Conflict,
    Stale,
    Invalid,
    TestFailed,
    TooLarge,
    Forbidden,
}

impl RejectCode {
    pub const ALL: [RejectCode; 6] = [
        RejectCode::Conflict,
        RejectCode::Stale,
        RejectCode::Invalid,
        RejectCode::TestFailed,
        RejectCode::TooLarge,
        RejectCode::Forbidden,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Conflict => "conflict",
            RejectCode::Stale => "stale",
            RejectCode::Invalid => "invalid",
            RejectCode::TestFailed => "test_failed",
            RejectCode::TooLarge => "too_large",
            RejectCode::Forbidden => "forbidden",
        }
    }
}

impl Serialize for RejectCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A change that was not committed: what the author is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Reject {
    pub code: RejectCode,
    pub message: String,
    /// The room's revision when the change was refused.
    pub rev: u64,
    /// Revisions that conflicted (`conflict` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<u64>,
}

impl From<PatchError> for RejectCode {
    fn from(e: PatchError) -> Self {
        match e {
            PatchError::Invalid { .. } => RejectCode::Invalid,
            PatchError::TestFailed { .. } => RejectCode::TestFailed,
        }
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
pub fn error_msg(code: &str, message: &str, client_req_id: Option<ClientReqId>) -> Bytes {
    let mut v = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(id) = client_req_id {
        v["clientReqId"] = id.0.into();
    }
    encode(&v)
}

/// `{"type":"pong","t":..}`.
pub fn pong_msg(t: &Value) -> Bytes {
    encode(&serde_json::json!({"type": "pong", "t": t}))
}

/// `{"type":"presence","peers":{..}}` around an already encoded peers object.
pub fn presence_frame(peers_json: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(30 + peers_json.len());
    b.extend_from_slice(br#"{"type":"presence","peers":"#);
    b.extend_from_slice(peers_json);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn decodes_a_change() {
        let m = decode_client(br#"{"type":"change","clientReqId":3,"baseRev":7,"mode":"paths","ops":[{"op":"add","path":"/a","value":1}]}"#)
            .unwrap();
        let ClientMsg::Change(c) = m else { panic!() };
        assert_eq!(c.client_req_id, ClientReqId(3));
        assert_eq!(c.base_rev, Some(Rev(7)));
        assert_eq!(c.mode, Ok(Mode::Paths));
        assert_eq!(c.ops.unwrap().len(), 1);
    }

    #[test]
    fn attributable_errors_stay_attributable() {
        let ClientMsg::Change(c) =
            decode_client(br#"{"type":"change","clientReqId":3,"mode":"nope","ops":[{"op":"spam"}]}"#)
                .unwrap()
        else {
            panic!()
        };
        assert!(c.mode.is_err());
        assert!(c.ops.is_err());
    }

    #[test]
    fn unattributable_errors() {
        for bad in [
            &b"nope"[..],
            b"[]",
            b"{}",
            br#"{"type":1}"#,
            br#"{"type":"what"}"#,
            br#"{"type":"change","ops":[]}"#,
            br#"{"type":"change","clientReqId":0,"ops":[]}"#,
            br#"{"type":"change","clientReqId":-1,"ops":[]}"#,
            br#"{"type":"presence","data":3}"#,
            br#"{"type":"broadcast"}"#,
        ] {
            assert!(decode_client(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn frames_are_valid_json() {
        let ops = encode_ops(&patch::parse_patch(json!([{"op":"add","path":"/a","value":1}])).unwrap());
        let (single, full) = change_frame(Rev(4), ClientId(3), &ops);
        assert_eq!(
            parse(&single),
            json!({"type":"delta","from":3,"to":4,"changes":[{"rev":4,"client":"c3","ops":[{"op":"add","path":"/a","value":1}]}]})
        );
        let ack = entry_ack(Rev(5), ClientId(7), ClientReqId(17));
        let d = delta_frame(Rev(3), Rev(5), [&full[..], &ack[..]].into_iter(), 0);
        assert_eq!(
            parse(&d),
            json!({"type":"delta","from":3,"to":5,"changes":[
                {"rev":4,"client":"c3","ops":[{"op":"add","path":"/a","value":1}]},
                {"rev":5,"client":"c7","clientReqId":17}]})
        );
        let s = snapshot_frame(Rev(9), ClientReqId(2), br#"{"a":1}"#);
        assert_eq!(parse(&s), json!({"type":"snapshot","rev":9,"lastClientReqId":2,"state":{"a":1}}));
        let r = Reject { code: RejectCode::Conflict, message: "m".into(), rev: 43, conflicts: vec![43] };
        assert_eq!(
            parse(&reject_msg(ClientReqId(18), &r)),
            json!({"type":"reject","clientReqId":18,"code":"conflict","message":"m","rev":43,"conflicts":[43]})
        );
        let w = Welcome {
            client: ClientId(7),
            session: "s",
            epoch: "e",
            rev: Rev(42),
            resumed: false,
            last_client_req_id: ClientReqId(0),
            presence_json: b"{}",
        };
        assert_eq!(
            parse(&w.encode()),
            json!({"type":"welcome","client":"c7","session":"s","epoch":"e","rev":42,"resumed":false,"lastClientReqId":0,"presence":{}})
        );
    }
}
