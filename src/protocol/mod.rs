//! Protocol v1: the only place that decodes client messages and encodes server messages.
//!
//! Every message is a JSON object with a `"type"`. This file decodes what clients send, through
//! [`json`] (strict JSON: no duplicate keys, exact integers, no negative zero); [`encode`](mod@encode) builds
//! what the server sends, and [`code`] is the catalogue of error codes shared by WebSocket rejects
//! and errors and HTTP error bodies. Hot frames (`delta`, `snapshot`) are built by concatenating
//! bytes that were encoded once per committed change or once per snapshot, so a change is never
//! re-serialised per recipient. See `docs/PROTOCOL.md` for the user-facing reference.
//!
//! Invariant: a decoded `clientReqId` is in `1..=MAX_SAFE_INTEGER` and a decoded `baseRev` in
//! `0..=MAX_SAFE_INTEGER`, so a JavaScript client can always hold them exactly and send a next id.
//!
//! Strict messages: every message type has a fixed set of known fields ([`known_fields`]); an
//! unknown one is refused as `invalid` (a `reject` for a change, `undo` or `redo`, whose
//! `clientReqId` is known, else an `error`), and so is a plain change with empty `ops`. `undo`
//! and `redo` decode to a [`ChangeMsg`] of their [`ChangeKind`], so they share a change's request
//! ids, dedupe and reject path.

mod code;
mod encode;
pub mod json;

pub use code::{ErrorCode, Reject};
pub use encode::*;

use serde_json::Value;

use crate::ids::{ClientReqId, Rev};
use crate::patch::{self, Op, PatchError};

/// 2^53 - 1 (JavaScript's `Number.MAX_SAFE_INTEGER`): the highest `clientReqId` and `baseRev`
/// accepted. Above it a JavaScript client could not count on to a next id.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

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
    /// The mode a `mode` field names.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "overwrite" => Some(Mode::Overwrite),
            "rev" => Some(Mode::Rev),
            "paths" => Some(Mode::Paths),
            _ => None,
        }
    }

    /// Its name in a `mode` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Overwrite => "overwrite",
            Mode::Rev => "rev",
            Mode::Paths => "paths",
        }
    }
}

/// The largest `meta` a change may carry: its compact JSON encoding, in bytes.
pub const MAX_META_BYTES: usize = 1024;

/// A message that could not be decoded at all (not attributable to a change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub message: String,
    /// `bad_message`, or `invalid` for a well-formed message with an unknown field.
    code: ErrorCode,
}

impl DecodeError {
    /// The code sent in `error` messages and used as a metrics label.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
    fn new(message: impl Into<String>) -> Self {
        DecodeError { message: message.into(), code: ErrorCode::BadMessage }
    }
    fn invalid(message: impl Into<String>) -> Self {
        DecodeError { message: message.into(), code: ErrorCode::Invalid }
    }
}

/// What a change-like message asks for: ordinary ops, or a revert the server computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangeKind {
    /// A `change` with ops.
    #[default]
    Plain,
    /// `{"type":"undo"}`: revert the newest change on the user's undo stack.
    Undo,
    /// `{"type":"redo"}`: revert the newest undo on the user's redo stack.
    Redo,
    /// A `change` with `"reverts":R`: revert revision R.
    Reverts(Rev),
}

impl ChangeKind {
    /// True for the kinds whose ops the server computes from a retained inverse.
    pub fn is_revert(self) -> bool {
        self != ChangeKind::Plain
    }
}

/// The fields each client message type may carry; any other is refused as `invalid`.
pub fn known_fields(ty: &str) -> &'static [&'static str] {
    match ty {
        "change" => &["type", "clientReqId", "baseRev", "mode", "ops", "reverts", "meta"],
        "undo" | "redo" => &["type", "clientReqId", "mode", "meta"],
        "presence" | "broadcast" => &["type", "data"],
        "ping" => &["type", "t"],
        "refresh" => &["type", "token"],
        _ => &[],
    }
}

/// The fields an HTTP `POST .../changes` body may carry.
pub const HTTP_CHANGE_FIELDS: &[&str] = &["baseRev", "mode", "ops", "reverts", "meta"];

/// The first member of `m` not in `known`, as a message.
fn unknown_field(m: &serde_json::Map<String, Value>, known: &[&str], what: &str) -> Option<String> {
    m.keys().find(|k| !known.contains(&k.as_str())).map(|k| {
        let mut k = k.clone();
        if k.len() > 64 {
            let cut = (0..=64).rev().find(|&i| k.is_char_boundary(i)).unwrap_or(0);
            k.truncate(cut);
            k.push('…');
        }
        format!("unknown field {k:?} in {what} (known: {})", known.join(", "))
    })
}

/// A change as a client sent it. Parts that failed to parse are kept as errors so the reply can
/// be a `reject` carrying the `clientReqId`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeMsg {
    pub client_req_id: ClientReqId,
    /// `None` when absent or `null` (and when unusable: then `mode` is the error).
    pub base_rev: Option<Rev>,
    /// The conflict mode, or why the conflict check cannot run: an unknown `mode`, or a
    /// `baseRev` that is not an integer in `0..=MAX_SAFE_INTEGER`.
    pub mode: Result<Mode, String>,
    /// The ops, or the first malformed one; also a duplicate key or an inexact integer inside
    /// `ops` (see [`json`]). Empty for `undo`, `redo` and `reverts`.
    pub ops: Result<Vec<Op>, PatchError>,
    /// A plain change, an `undo`, a `redo` or a `reverts` change.
    pub kind: ChangeKind,
    /// The client's `meta` object, relayed verbatim (at most [`MAX_META_BYTES`] encoded).
    pub meta: Option<Value>,
    /// Why the message must be refused although it decoded: an unknown field, empty `ops` in a
    /// plain change, a bad `reverts` or `meta`. Checked before `mode` and `ops`.
    pub refusal: Option<(ErrorCode, String)>,
}

/// A decoded client → server message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Change(ChangeMsg),
    Ping {
        t: Value,
    },
    Presence {
        data: Value,
    },
    Broadcast {
        data: Value,
    },
    /// A new token for the open connection (before the current one expires).
    Refresh {
        token: String,
    },
}

/// Decodes one text frame from a client.
///
/// # Errors
/// [`DecodeError`] when the frame is not strict JSON (see [`json`]), not an object with a known
/// `type` and the fields that type requires, or a change without a `clientReqId` in
/// `1..=MAX_SAFE_INTEGER`. A duplicate key or an inexact integer inside a change's `ops` is not
/// an error here: it is that change's `ops` error, answered with a `reject` carrying its id.
pub fn decode_client(text: &[u8]) -> Result<ClientMsg, DecodeError> {
    let parsed = json::parse(text).map_err(|e| DecodeError::new(format!("not JSON: {e}")))?;
    let in_ops_only = parsed.defects_only_inside("ops");
    let Value::Object(mut m) = parsed.value else {
        return Err(DecodeError::new("a message must be a JSON object"));
    };
    // A defect confined to `ops` may still be attributable to a change (checked below); anywhere
    // else the message cannot be trusted at all.
    let ops_defect = match parsed.defect {
        Some(d) if !in_ops_only => return Err(DecodeError::new(d.to_string())),
        d => d,
    };
    let ty = match m.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(DecodeError::new("\"type\" must be a string")),
        None => return Err(DecodeError::new("missing \"type\"")),
    };
    if let Some(d) = ops_defect.as_ref().filter(|_| ty != "change") {
        return Err(DecodeError::new(d.to_string()));
    }
    let unknown = unknown_field(&m, known_fields(&ty), &format!("a {ty:?} message"));
    let client_req_id = || match m.get("clientReqId").and_then(safe_integer) {
        Some(id) if id > 0 => Ok(ClientReqId(id)),
        _ => Err(DecodeError::new(format!(
            "{ty} needs \"clientReqId\": an integer in 1..={MAX_SAFE_INTEGER} \
             (JavaScript's Number.MAX_SAFE_INTEGER), one above the last"
        ))),
    };
    if let (Some(message), false) = (&unknown, matches!(ty.as_str(), "change" | "undo" | "redo")) {
        return match ty.as_str() {
            "ping" | "presence" | "broadcast" | "refresh" => Err(DecodeError::invalid(message.clone())),
            other => Err(DecodeError::new(format!("unknown message type {other:?}"))),
        };
    }
    match ty.as_str() {
        "change" => {
            let client_req_id = client_req_id()?;
            m.remove("type");
            m.remove("clientReqId");
            if let Some(d) = ops_defect {
                m.remove("ops");
                let mut c = decode_change_body(&mut m, client_req_id);
                let index = d.path.get(1).and_then(|i| i.parse().ok()).unwrap_or(0);
                c.ops = Err(PatchError::Invalid { index, message: d.to_string() });
                return Ok(ClientMsg::Change(c));
            }
            Ok(ClientMsg::Change(decode_change_body(&mut m, client_req_id)))
        }
        "undo" | "redo" => {
            let client_req_id = client_req_id()?;
            let kind = if ty == "undo" { ChangeKind::Undo } else { ChangeKind::Redo };
            let mode = revert_mode(m.get("mode"));
            let (meta, meta_refusal) = decode_meta(m.remove("meta"));
            let refusal = unknown.map(|message| (ErrorCode::Invalid, message)).or(meta_refusal);
            Ok(ClientMsg::Change(ChangeMsg {
                client_req_id,
                base_rev: None,
                mode,
                ops: Ok(Vec::new()),
                kind,
                meta,
                refusal,
            }))
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
        "refresh" => match m.remove("token") {
            Some(Value::String(token)) => Ok(ClientMsg::Refresh { token }),
            _ => Err(DecodeError::new("refresh needs \"token\": a string")),
        },
        other => Err(DecodeError::new(format!("unknown message type {other:?}"))),
    }
}

/// The value as an integer in `0..=MAX_SAFE_INTEGER`.
fn safe_integer(v: &Value) -> Option<u64> {
    v.as_u64().filter(|n| *n <= MAX_SAFE_INTEGER)
}

/// The conflict mode of a revert (`undo`, `redo`, `reverts`): `overwrite` applies it whatever
/// later changes did; absent (or any other mode) refuses it on conflict, which the room runs as
/// [`Mode::Paths`].
fn revert_mode(mode: Option<&Value>) -> Result<Mode, String> {
    match mode {
        None | Some(Value::Null) => Ok(Mode::Paths),
        Some(Value::String(s)) => match Mode::parse(s) {
            Some(Mode::Overwrite) => Ok(Mode::Overwrite),
            Some(_) => Ok(Mode::Paths),
            None => Err(format!("unknown mode {s:?}")),
        },
        Some(_) => Err("\"mode\" must be a string".to_owned()),
    }
}

/// A change's `meta`: absent, or an object of at most [`MAX_META_BYTES`] encoded (else the
/// refusal: `invalid` for a non-object, `too_large` over the limit).
fn decode_meta(meta: Option<Value>) -> (Option<Value>, Option<(ErrorCode, String)>) {
    match meta {
        None | Some(Value::Null) => (None, None),
        Some(v @ Value::Object(_)) => {
            let size = patch::json_size(&v);
            if size > MAX_META_BYTES {
                let message = format!("\"meta\" is {size} bytes encoded, over the limit of {MAX_META_BYTES}");
                (None, Some((ErrorCode::TooLarge, message)))
            } else {
                (Some(v), None)
            }
        }
        Some(_) => (None, Some((ErrorCode::Invalid, "\"meta\" must be a JSON object".to_owned()))),
    }
}

/// Decodes the fields shared by a WebSocket `change` and an HTTP `POST .../changes` body
/// (`m` must come from [`json`], so it holds no duplicate keys or inexact integers; a WebSocket
/// change's `type` and `clientReqId` already removed). Any member outside
/// [`HTTP_CHANGE_FIELDS`] is a refusal.
pub fn decode_change_body(m: &mut serde_json::Map<String, Value>, client_req_id: ClientReqId) -> ChangeMsg {
    let unknown = unknown_field(m, HTTP_CHANGE_FIELDS, "a change");
    let reverts = match m.get("reverts") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => safe_integer(v).filter(|r| *r > 0).map(|r| Some(Rev(r))).ok_or_else(|| {
            format!("\"reverts\" must be a revision: an integer in 1..={MAX_SAFE_INTEGER}, or absent")
        }),
    };
    let kind = match reverts {
        Ok(Some(r)) => ChangeKind::Reverts(r),
        _ => ChangeKind::Plain,
    };
    let (meta, meta_refusal) = decode_meta(m.remove("meta"));
    if kind.is_revert() {
        let ops_given = !matches!(m.get("ops"), None | Some(Value::Null))
            && m.get("ops").and_then(Value::as_array).is_none_or(|a| !a.is_empty());
        let refusal = unknown.map(|message| (ErrorCode::Invalid, message)).or(meta_refusal).or(ops_given
            .then(|| {
                let message = "a change with \"reverts\" carries no ops: the server computes them";
                (ErrorCode::Invalid, message.to_owned())
            }));
        let base_rev = m.get("baseRev").and_then(safe_integer).map(Rev);
        let mode = revert_mode(m.get("mode"));
        return ChangeMsg { client_req_id, base_rev, mode, ops: Ok(Vec::new()), kind, meta, refusal };
    }
    let refusal = unknown
        .map(|message| (ErrorCode::Invalid, message))
        .or(reverts.err().map(|message| (ErrorCode::Invalid, message)))
        .or(meta_refusal)
        .or(m.get("ops").and_then(Value::as_array).is_some_and(Vec::is_empty).then(|| {
            let message = "\"ops\" is empty: a change must carry at least one op";
            (ErrorCode::Invalid, message.to_owned())
        }));
    let base_rev = match m.get("baseRev") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => safe_integer(v).map(|r| Some(Rev(r))).ok_or_else(|| {
            format!("\"baseRev\" must be a revision: an integer in 0..={MAX_SAFE_INTEGER}, or absent")
        }),
    };
    let mode = match m.get("mode") {
        None | Some(Value::Null) => Ok(Mode::Overwrite),
        Some(Value::String(s)) => Mode::parse(s).ok_or_else(|| format!("unknown mode {s:?}")),
        Some(_) => Err("\"mode\" must be a string".to_owned()),
    };
    let ops = match m.remove("ops") {
        Some(ops) => patch::parse_patch(ops),
        None => Err(PatchError::Invalid { index: 0, message: "missing \"ops\"".into() }),
    };
    let (base_rev, mode) = match (base_rev, mode) {
        (Ok(base_rev), mode) => (base_rev, mode),
        (Err(e), _) => (None, Err(e)),
    };
    ChangeMsg { client_req_id, base_rev, mode, ops, kind, meta, refusal }
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

    fn change(text: &str) -> ChangeMsg {
        match decode_client(text.as_bytes()) {
            Ok(ClientMsg::Change(c)) => c,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn request_ids_are_safe_integers_from_one() {
        for (id, want) in [("1", 1), ("9007199254740991", MAX_SAFE_INTEGER)] {
            let c = change(&format!(r#"{{"type":"change","clientReqId":{id},"ops":[]}}"#));
            assert_eq!(c.client_req_id, ClientReqId(want));
        }
        for id in ["0", "9007199254740992", "18446744073709551615", "-1", "1.0", "\"1\"", "null"] {
            let text = format!(r#"{{"type":"change","clientReqId":{id},"ops":[]}}"#);
            let e = decode_client(text.as_bytes()).unwrap_err();
            assert!(e.message.contains("1..=9007199254740991"), "{id}: {e}");
        }
    }

    #[test]
    fn base_revs_are_safe_integers_or_absent() {
        for (base, want) in [("", None), (r#","baseRev":null"#, None), (r#","baseRev":0"#, Some(Rev(0)))] {
            let c = change(&format!(r#"{{"type":"change","clientReqId":1{base},"ops":[]}}"#));
            assert_eq!((c.base_rev, c.mode), (want, Ok(Mode::Overwrite)), "{base}");
        }
        let c = change(r#"{"type":"change","clientReqId":1,"baseRev":9007199254740991,"ops":[]}"#);
        assert_eq!(c.base_rev, Some(Rev(MAX_SAFE_INTEGER)));
        for base in ["-1", "1.5", "\"3\"", "9007199254740992", "18446744073709551615", "{}"] {
            let c = change(&format!(
                r#"{{"type":"change","clientReqId":1,"baseRev":{base},"mode":"rev","ops":[]}}"#
            ));
            let e = c.mode.unwrap_err();
            assert!(e.contains("0..=9007199254740991"), "{base}: {e}");
            assert_eq!(c.base_rev, None);
        }
    }

    #[test]
    fn defects_inside_ops_reject_the_change_and_elsewhere_the_message() {
        let c = change(
            r#"{"type":"change","clientReqId":4,"ops":[{"op":"add","path":"/a","value":1},{"op":"add","path":"/b","value":{"x":1,"x":2}}]}"#,
        );
        assert_eq!(c.client_req_id, ClientReqId(4));
        let Err(PatchError::Invalid { index, message }) = c.ops else { panic!("{:?}", c.ops) };
        assert_eq!(index, 1);
        assert!(message.contains("duplicate key at /ops/1/value/x"), "{message}");
        let c = change(
            r#"{"type":"change","clientReqId":4,"ops":[{"op":"incr","path":"/n","value":18446744073709551616}]}"#,
        );
        assert!(c.ops.unwrap_err().to_string().contains("send larger integers as strings"));

        for bad in [
            r#"{"type":"change","clientReqId":4,"clientReqId":5,"ops":[]}"#,
            r#"{"type":"change","clientReqId":4,"ops":[{"a":1,"a":1}],"mode":{"b":1,"b":1}}"#,
            r#"{"type":"change","clientReqId":4,"ops":[],"ops":[]}"#,
            r#"{"type":"change","clientReqId":4,"ops":[{"a":1,"a":1}],"ops":[]}"#,
            r#"{"type":"change","clientReqId":4,"baseRev":18446744073709551616,"ops":[]}"#,
            r#"{"type":"ping","t":{"a":1,"a":1}}"#,
            r#"{"type":"ping","ops":[{"a":1,"a":1}]}"#,
            r#"{"type":"presence","data":{"a":1,"a":1}}"#,
            r#"{"type":"broadcast","data":[-1e300]}"#,
        ] {
            let e = decode_client(bad.as_bytes()).unwrap_err();
            assert!(
                e.message.contains("duplicate key") || e.message.contains("larger integers"),
                "{bad}: {e}"
            );
        }
        // A change that cannot be attributed (bad id) stays an error, even with a defect in ops.
        let e = decode_client(br#"{"type":"change","clientReqId":0,"ops":[{"a":1,"a":1}]}"#).unwrap_err();
        assert!(e.message.contains("clientReqId"), "{e}");
    }

    #[test]
    fn negative_zero_arrives_as_zero() {
        let c = change(r#"{"type":"change","clientReqId":1,"ops":[{"op":"incr","path":"/n","value":-0.0}]}"#);
        assert_eq!(c.ops.unwrap(), patch::parse_patch(json!([{"op":"incr","path":"/n","value":0}])).unwrap());
        let ClientMsg::Presence { data } = decode_client(br#"{"type":"presence","data":{"x":-0}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(data.to_string(), r#"{"x":0}"#);
    }

    fn decode_refresh_roundtrip() -> Bytes {
        let ClientMsg::Refresh { token } = decode_client(br#"{"type":"refresh","token":"a.b.c"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(token, "a.b.c");
        assert!(decode_client(br#"{"type":"refresh","token":1}"#).is_err());
        refreshed_msg(7)
    }

    #[test]
    fn frames_are_valid_json() {
        let ops = encode_ops(&patch::parse_patch(json!([{"op":"add","path":"/a","value":1}])).unwrap());
        let (single, full) = change_frame(&EntryHead::new(Rev(4), ClientId(3), None, 1000), &ops);
        assert_eq!(
            parse(&single),
            json!({"type":"delta","from":3,"to":4,"changes":[{"rev":4,"client":"c3","ts":1000,"ops":[{"op":"add","path":"/a","value":1}]}]})
        );
        let stacks = Stacks { can_undo: true, can_redo: false };
        let ack = entry_ack(&EntryHead::new(Rev(5), ClientId(7), None, 1001), ClientReqId(17), stacks, None);
        let d = delta_frame(Rev(3), Rev(5), [&full[..], &ack[..]].into_iter(), 0);
        assert_eq!(
            parse(&d),
            json!({"type":"delta","from":3,"to":5,"changes":[
                {"rev":4,"client":"c3","ts":1000,"ops":[{"op":"add","path":"/a","value":1}]},
                {"rev":5,"client":"c7","ts":1001,"clientReqId":17,"canUndo":true,"canRedo":false}]})
        );
        // A revert: every entry says what it reverts and carries meta; the author's its ops.
        let meta = br#"{"label":"e2\u2013e4"}"#;
        let head = EntryHead {
            reverts: Some(Rev(2)),
            meta_json: Some(meta),
            ..EntryHead::new(Rev(6), ClientId(7), None, 9)
        };
        let (single, _) = change_frame(&head, &ops);
        assert_eq!(
            parse(&single)["changes"][0],
            json!({"rev":6,"client":"c7","ts":9,"reverts":2,"meta":{"label":"e2–e4"},"ops":[{"op":"add","path":"/a","value":1}]})
        );
        let ack = entry_ack(&head, ClientReqId(18), Stacks::default(), Some(&ops));
        assert_eq!(
            parse(&ack),
            json!({"rev":6,"client":"c7","ts":9,"clientReqId":18,"canUndo":false,"canRedo":false,"reverts":2,"ops":[{"op":"add","path":"/a","value":1}]})
        );
        let s = snapshot_frame(Rev(9), ClientReqId(2), br#"{"a":1}"#);
        assert_eq!(parse(&s), json!({"type":"snapshot","rev":9,"lastClientReqId":2,"state":{"a":1}}));
        let r = Reject { conflicts: vec![43], ..Reject::new(ErrorCode::Conflict, "m", 43) };
        assert_eq!(
            parse(&reject_msg(ClientReqId(18), &r)),
            json!({"type":"reject","clientReqId":18,"code":"conflict","message":"m","rev":43,"conflicts":[43]})
        );
        let w = Welcome {
            client: ClientId(7),
            user: None,
            session: "s",
            epoch: "e",
            rev: Rev(42),
            resumed: false,
            last_client_req_id: ClientReqId(0),
            presence_json: b"{}",
            presence_count: None,
            stacks: Stacks { can_undo: false, can_redo: true },
        };
        assert_eq!(
            parse(&w.encode()),
            json!({"type":"welcome","client":"c7","session":"s","epoch":"e","rev":42,"resumed":false,"lastClientReqId":0,"canUndo":false,"canRedo":true,"presence":{}})
        );
        let w = Welcome { user: Some("al\"ice"), ..w };
        assert_eq!(parse(&w.encode())["user"], json!("al\"ice"));
        let (single, _) = change_frame(&EntryHead::new(Rev(4), ClientId(3), Some("bob"), 5), &ops);
        assert_eq!(parse(&single)["changes"][0]["user"], json!("bob"));
        let ack = entry_ack(
            &EntryHead::new(Rev(5), ClientId(7), Some("bob"), 5),
            ClientReqId(17),
            Stacks::default(),
            None,
        );
        assert_eq!(
            parse(&ack),
            json!({"rev":5,"client":"c7","user":"bob","ts":5,"clientReqId":17,"canUndo":false,"canRedo":false})
        );
        assert_eq!(parse(&decode_refresh_roundtrip()), json!({"type":"refreshed","exp":7}));
    }
}
