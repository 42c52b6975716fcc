//! Protocol v1: the only place that decodes client messages and encodes server messages.
//!
//! Every message is a JSON object with a `"type"`. This file decodes what clients send;
//! [`encode`] builds what the server sends, and [`code`] is the catalogue of error codes shared by
//! WebSocket rejects and errors and HTTP error bodies. Hot frames (`delta`, `snapshot`) are built
//! by concatenating bytes that were encoded once per committed change or once per snapshot, so a
//! change is never re-serialised per recipient. See `docs/PROTOCOL.md` for the user-facing
//! reference.

mod code;
mod encode;

pub use code::{ErrorCode, Reject};
pub use encode::*;

use serde_json::Value;

use crate::ids::{ClientReqId, Rev};
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
    /// The code sent in `error` messages and used as a metrics label.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadMessage
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ClientId;
    use bytes::Bytes;
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
        let r = Reject { code: ErrorCode::Conflict, message: "m".into(), rev: 43, conflicts: vec![43] };
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
