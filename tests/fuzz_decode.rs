//! A fuzz target for the decoder, on stable Rust: proptest throws arbitrary bytes, generated
//! JSON-ish text (random keys with duplicates, edge-case numbers, escapes, nesting) and byte-level
//! mutations of valid messages at `protocol::decode_client` and at `protocol::json::from_slice`
//! (the HTTP body decoder). Properties:
//! - neither ever panics, and both are deterministic;
//! - whatever `decode_client` accepts round-trips: re-encoded and decoded, it is the same message;
//! - accepted values hold no negative zero and no number outside the exact integer range, request
//!   ids and base revisions are safe integers, and a generated message with a duplicate key or an
//!   integer literal beyond 64 bits is never accepted whole;
//! - the strict JSON decoder refuses exactly what serde_json refuses, plus defects.
//!
//! `FUZZ_CASES` sets the number of cases per property (default 2,000, a few seconds);
//! `FUZZ_CASES=1000000 cargo test --release --test fuzz_decode` is the long mode. Failures
//! are saved in `tests/fuzz_decode.proptest-regressions` and replayed first on every run.

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::FileFailurePersistence;
use ringsync::protocol::json::{self, JsonError};
use ringsync::protocol::{ChangeKind, ClientMsg, MAX_SAFE_INTEGER, Mode, decode_client};
use serde_json::{Value, json};

/// Cases per property: `FUZZ_CASES`, else 2,000. (The only variable any test reads.)
fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2_000)
}

// ---- the properties ----

/// Everything that must hold for any input.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let strict = json::from_slice(bytes);
    match (&strict, serde_json::from_slice::<Value>(bytes)) {
        (Ok(v), Ok(_)) => {
            prop_assert!(clean(v), "strict JSON holds a negative zero or an inexact number: {v}");
            let again = json::from_slice(&serde_json::to_vec(v).unwrap()).unwrap();
            prop_assert_eq!(&again, v, "strict JSON round-trips");
        }
        (Err(JsonError::Defect(_)), Ok(_)) | (Err(JsonError::Syntax(_)), Err(_)) => {}
        (ours, theirs) => prop_assert!(false, "strict {ours:?} but serde_json {theirs:?}"),
    }

    let decoded = decode_client(bytes);
    prop_assert_eq!(&decoded, &decode_client(bytes), "deterministic");
    let msg = match decoded {
        Err(e) => {
            prop_assert!(!e.message.is_empty());
            return Ok(());
        }
        Ok(msg) => msg,
    };
    prop_assert!(
        strict.is_ok() || matches!(msg, ClientMsg::Change(ref c) if c.ops.is_err()),
        "a message with a defect is only accepted as a change to reject: {msg:?}"
    );
    match &msg {
        ClientMsg::Change(c) => {
            prop_assert!((1..=MAX_SAFE_INTEGER).contains(&c.client_req_id.0));
            prop_assert!(c.base_rev.is_none_or(|r| r.0 <= MAX_SAFE_INTEGER));
            if let Ok(ops) = &c.ops {
                prop_assert!(clean(&serde_json::to_value(ops).unwrap()), "{ops:?}");
            }
        }
        ClientMsg::Ping { t: v } | ClientMsg::Presence { data: v } | ClientMsg::Broadcast { data: v } => {
            prop_assert!(clean(v), "{v}");
        }
        ClientMsg::Refresh { token } => prop_assert!(token.len() <= bytes.len(), "{token}"),
    }
    if let Some(text) = encode(&msg) {
        prop_assert_eq!(decode_client(text.as_bytes()), Ok(msg), "round-trip through {}", text);
    }
    Ok(())
}

/// True when `v` holds no negative zero and no float beyond the exact integer range.
fn clean(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|x| {
            !(x == 0.0 && x.is_sign_negative())
                && (!n.is_f64() || ((i64::MIN as f64) < x && x < 2f64.powi(64)))
        }),
        Value::Array(a) => a.iter().all(clean),
        Value::Object(m) => m.values().all(clean),
        _ => true,
    }
}

/// A decoded message as a client would send it; `None` for a change with a part in error or a
/// refusal (there is nothing to re-encode).
fn encode(msg: &ClientMsg) -> Option<String> {
    let v = match msg {
        ClientMsg::Change(c) if c.refusal.is_some() => return None,
        ClientMsg::Change(c) => {
            let mode = match c.mode.as_ref().ok()? {
                Mode::Overwrite => "overwrite",
                Mode::Rev => "rev",
                Mode::Paths => "paths",
            };
            let mut v = match c.kind {
                ChangeKind::Plain => json!({"type": "change", "clientReqId": c.client_req_id.0, "mode": mode,
                    "ops": c.ops.as_ref().ok()?}),
                ChangeKind::Undo | ChangeKind::Redo => {
                    let ty = if c.kind == ChangeKind::Undo { "undo" } else { "redo" };
                    json!({"type": ty, "clientReqId": c.client_req_id.0, "mode": mode})
                }
                ChangeKind::Reverts(r) => {
                    json!({"type": "change", "clientReqId": c.client_req_id.0, "mode": mode, "reverts": r.0})
                }
            };
            if let Some(base) = c.base_rev {
                v["baseRev"] = base.0.into();
            }
            if let Some(meta) = &c.meta {
                v["meta"] = meta.clone();
            }
            v
        }
        ClientMsg::Ping { t } => json!({"type": "ping", "t": t}),
        ClientMsg::Presence { data } => json!({"type": "presence", "data": data}),
        ClientMsg::Broadcast { data } => json!({"type": "broadcast", "data": data}),
        ClientMsg::Refresh { token } => json!({"type": "refresh", "token": token}),
    };
    Some(v.to_string())
}

// ---- generated JSON-ish text ----

/// A JSON document as text will spell it: objects may repeat keys, numbers are literals.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    /// The string, and whether to spell every character as a `\u` escape.
    Str(String, bool),
    Arr(Vec<J>),
    Obj(Vec<(String, bool, J)>),
}

impl J {
    fn render(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s, escaped) => render_str(s, *escaped, out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, escaped, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render_str(k, *escaped, out);
                    out.push(':');
                    v.render(out);
                }
                out.push('}');
            }
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        self.render(&mut s);
        s
    }

    /// Whether any object repeats a key, or any number is an integer literal beyond 64 bits:
    /// a message holding one must not be accepted whole.
    fn must_be_refused(&self) -> bool {
        match self {
            J::Num(n) => {
                let integer = !n.contains(['.', 'e', 'E']);
                integer && n.parse::<u64>().is_err() && n.parse::<i64>().is_err()
            }
            J::Arr(items) => items.iter().any(J::must_be_refused),
            J::Obj(members) => {
                let mut keys: Vec<&str> = members.iter().map(|(k, _, _)| k.as_str()).collect();
                keys.sort_unstable();
                keys.windows(2).any(|w| w[0] == w[1]) || members.iter().any(|(_, _, v)| v.must_be_refused())
            }
            _ => false,
        }
    }
}

fn render_str(s: &str, escaped: bool, out: &mut String) {
    if escaped {
        out.push('"');
        for unit in s.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap());
    }
}

/// Number literals: the edges that matter here, random integers and floats in several
/// spellings, and free-form digit strings.
fn number() -> impl Strategy<Value = String> {
    let edges = select(vec![
        "0",
        "-0",
        "-0.0",
        "0.0",
        "-0e0",
        "1",
        "-1",
        "9007199254740991",
        "9007199254740992",
        "18446744073709551615",
        "18446744073709551616",
        "18446744073709551617",
        "-9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999",
        "1e19",
        "1.8446744073709552e19",
        "-9.223372036854776e18",
        "1e300",
        "-1e300",
        "1.7976931348623157e308",
        "5e-324",
        "-5e-324",
        "1e-400",
        "-1e-400",
        "2.2250738585072011e-308",
        "0.1",
        "1.5",
        "376.69851473589443",
        "1e400",
        "123456789012345678901234567890",
    ]);
    prop_oneof![
        3 => edges.prop_map(str::to_owned),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        2 => any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| serde_json::to_string(&x).unwrap()),
        1 => any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| format!("{x:e}")),
        2 => "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
    ]
}

const WORDS: &[&str] = &[
    "type",
    "change",
    "ping",
    "presence",
    "broadcast",
    "clientReqId",
    "baseRev",
    "mode",
    "ops",
    "op",
    "path",
    "from",
    "value",
    "data",
    "t",
    "add",
    "remove",
    "replace",
    "move",
    "copy",
    "test",
    "incr",
    "overwrite",
    "rev",
    "paths",
    "/a",
    "/a/0",
    "/a/-",
    "",
    "~",
    "/",
    "a",
    "b",
];

/// Keys and strings: mostly protocol words (so objects repeat keys often), sometimes anything.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![4 => select(WORDS).prop_map(str::to_owned), 1 => "\\PC{0,6}", 1 => "[\\u{0}-\\u{7f}]{0,3}"]
}

/// Any document, at most `depth` deep and about `size` nodes.
fn tree(depth: u32, size: u32) -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        3 => number().prop_map(J::Num),
        2 => (word(), prop::bool::weighted(0.1)).prop_map(|(s, e)| J::Str(s, e)),
    ];
    leaf.prop_recursive(depth, size, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((word(), prop::bool::weighted(0.1), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

fn s(text: &str) -> J {
    J::Str(text.to_owned(), false)
}

/// One op-shaped object, sometimes with a key too many.
fn op() -> impl Strategy<Value = J> {
    let kind = select(&["add", "remove", "replace", "move", "copy", "test", "incr", "nope"][..]);
    let path = select(&["/a", "/b", "/a/0", "/n", "", "/a/-"][..]);
    (kind, path.clone(), path, tree(3, 12), prop::option::weighted(0.1, (word(), tree(1, 2)))).prop_map(
        |(k, p, f, v, extra)| {
            let mut m = vec![("op".to_owned(), false, s(k)), ("path".to_owned(), false, s(p))];
            if matches!(k, "move" | "copy") {
                m.push(("from".to_owned(), false, s(f)));
            } else if k != "remove" {
                m.push(("value".to_owned(), false, v));
            }
            m.extend(extra.map(|(k, v)| (k, false, v)));
            J::Obj(m)
        },
    )
}

/// A message-shaped object: the right fields most of the time, edge values in them, and now and
/// then a field too many or a field twice.
fn message() -> impl Strategy<Value = J> {
    let member = |k: &str, v: J| (k.to_owned(), false, v);
    let id =
        prop_oneof![4 => "[1-9][0-9]{0,3}".prop_map(J::Num), 1 => number().prop_map(J::Num), 1 => tree(2, 8)];
    let base = prop::option::weighted(
        0.5,
        prop_oneof![3 => "(0|[1-9][0-9]{0,3})".prop_map(J::Num), 1 => number().prop_map(J::Num), 1 => tree(2, 8)],
    );
    let mode = prop::option::weighted(
        0.4,
        prop_oneof![4 => select(&["overwrite", "rev", "paths", "x"][..]).prop_map(s), 1 => tree(2, 8)],
    );
    let ops = prop_oneof![6 => prop::collection::vec(op(), 0..4).prop_map(J::Arr), 1 => tree(3, 16)];
    let change = (id, base, mode, ops).prop_map(move |(id, base, mode, ops)| {
        let mut m = vec![member("type", s("change")), member("clientReqId", id)];
        m.extend(base.map(|b| member("baseRev", b)));
        m.extend(mode.map(|v| member("mode", v)));
        m.push(member("ops", ops));
        m
    });
    let ping = tree(4, 24).prop_map(move |t| vec![member("type", s("ping")), member("t", t)]);
    let data = prop_oneof![
        3 => prop::collection::vec((word(), Just(false), tree(3, 16)), 0..4).prop_map(J::Obj),
        1 => tree(4, 24),
    ];
    let ty =
        prop_oneof![4 => select(&["presence", "broadcast"][..]), 1 => select(&["pong", "", "Change"][..])];
    let other = (ty, data).prop_map(move |(ty, data)| vec![member("type", s(ty)), member("data", data)]);
    let members = prop_oneof![5 => change, 1 => ping, 2 => other];
    let extra = prop::option::weighted(0.15, (word(), tree(2, 8)));
    (members, extra, prop::option::weighted(0.15, any::<Index>())).prop_map(move |(mut m, extra, twice)| {
        m.extend(extra.map(|(k, v)| (k, false, v)));
        if let Some(i) = twice {
            let again = m[i.index(m.len())].clone();
            m.push(again);
        }
        J::Obj(m)
    })
}

// ---- byte-level mutations ----

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, &'static str),
    Delete(Index, usize),
    Repeat(Index, usize),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = select(
        &[
            ",",
            ":",
            "\"",
            "{",
            "}",
            "[",
            "]",
            "\\",
            "-",
            "0",
            "-0",
            "e",
            ".",
            " ",
            "1e400",
            "\\u0000",
            "\\ud800",
            "\"a\":1,",
            "\u{e9}",
            "\u{0}",
            "\u{feff}",
            "null",
            "18446744073709551616",
        ][..],
    );
    prop_oneof![
        (any::<Index>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), token).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Repeat(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut b: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, x) => {
                let i = i.index(b.len());
                b[i] ^= x;
            }
            Mutation::Insert(i, t) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, t.bytes());
            }
            Mutation::Delete(i, n) => {
                let i = i.index(b.len());
                b.drain(i..(i + n).min(b.len()));
            }
            Mutation::Repeat(i, n) => {
                let i = i.index(b.len());
                let part = b[i..(i + n).min(b.len())].to_vec();
                b.splice(i..i, part);
            }
            Mutation::Truncate(i) => b.truncate(i.index(b.len())),
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check(&bytes)?;
    }

    #[test]
    fn json_ish_documents(doc in tree(6, 48)) {
        check(doc.text().as_bytes())?;
    }

    #[test]
    fn message_shaped_documents(msg in message()) {
        let text = msg.text();
        check(text.as_bytes())?;
        if msg.must_be_refused() {
            let whole = decode_client(text.as_bytes()).ok().and_then(|m| encode(&m));
            prop_assert!(whole.is_none(), "accepted whole despite a duplicate key or a 65-bit integer: {}", text);
        }
    }

    #[test]
    fn mutated_messages(msg in message(), mutations in prop::collection::vec(mutation(), 1..4)) {
        check(&mutate(msg.text().into_bytes(), &mutations))?;
    }
}

/// Inputs worth keeping whatever the generators do.
#[test]
fn known_edges() {
    for text in [
        r#"{"type":"change","clientReqId":1,"ops":[{"op":"add","path":"/a","value":376.69851473589443}]}"#,
        r#"{"type":"change","clientReqId":1,"ops":[{"op":"add","path":"/a","value":-0}]}"#,
        r#"{"type":"change","clientReqId":9007199254740991,"baseRev":9007199254740991,"ops":[]}"#,
        r#"{"type":"ping","t":[18446744073709551615,-9223372036854775808,5e-324,2.2250738585072014e-308,1.8446744073709e19]}"#,
        r#"{"type":"presence","data":{"\u0061":1,"b":{"\ud83d\ude00":2}}}"#,
        // Found by this target: serde_json's default float parser moved these by one ulp.
        r#"{"type":"broadcast","data":[-1.5962067764223722e-118,-7.552028559131922e-152,908.1902743653529]}"#,
    ] {
        check(text.as_bytes()).unwrap();
        assert!(decode_client(text.as_bytes()).is_ok(), "{text}");
    }
    let deep = format!(r#"{{"type":"ping","t":{}{}}}"#, "[".repeat(200), "]".repeat(200));
    check(deep.as_bytes()).unwrap();
    assert!(decode_client(deep.as_bytes()).unwrap_err().message.contains("recursion limit"));
}
