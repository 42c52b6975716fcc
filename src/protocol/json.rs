//! Strict JSON decoding of everything a client sends (WebSocket messages and HTTP bodies), in one
//! pass: serde_json's parser drives a visitor that builds the [`Value`] and checks each object key
//! and number as it goes. JSON allows what a sync server must not accept silently:
//! - **Duplicate keys** (`{"a":1,"a":2}`): parsers disagree on which one wins, so a server and a
//!   client (or two clients) could read different documents. Refused.
//! - **Integers beyond 64 bits** (`18446744073709551616`): serde_json turns them into the nearest
//!   `f64`, silently changing the value. Every `f64` at or above 2^64 or at or below -2^63 is a
//!   whole number, and the server cannot tell an integer that lost its low digits from a float
//!   written that way, so such numbers are refused in any spelling (`1e300` too). The exact range
//!   is [`EXACT_RANGE`] (`i64::MIN..=u64::MAX`); other floats stay floats.
//! - **Negative zero** (`-0`, `-0.0`): becomes the integer `0`, so the state never holds a
//!   negative zero (which some clients print as `0` and others as `-0`).
//!
//! Invariants: a [`Value`] from [`from_slice`] holds no duplicate keys (none were sent), no
//! negative zero, and no float outside the exact range. Nesting is limited by serde_json's
//! recursion limit (128 levels), exactly as `serde_json::from_slice` does.
//!
//! [`parse`] does not stop at the first defect: it reports the first one with its JSON pointer,
//! and whether every defect sits inside one top-level member, so a defect confined to a change's
//! `ops` can be answered with that change's `reject` instead of a bare `error`.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// The integers a JSON number can carry exactly here: `i64` below zero, `u64` from zero.
pub const EXACT_RANGE: &str = "-9223372036854775808..=18446744073709551615";

/// What makes a syntactically valid JSON text unacceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefectKind {
    /// A key that appears twice in one object.
    DuplicateKey,
    /// A number that is whole and outside [`EXACT_RANGE`].
    InexactInteger,
}

/// The first defect in a JSON text, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defect {
    pub kind: DefectKind,
    /// The unescaped pointer segments from the root to the duplicated key or the number.
    pub path: Vec<String>,
}

impl Defect {
    /// The RFC 6901 pointer to the defect (`""` for the whole document).
    pub fn pointer(&self) -> String {
        self.path.iter().map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect()
    }
}

/// The longest pointer a message quotes; longer ones are cut (keys can be long).
const MAX_QUOTED_POINTER: usize = 200;

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut at = self.pointer();
        if at.is_empty() {
            at = "the top level".to_owned();
        } else if at.len() > MAX_QUOTED_POINTER {
            let cut = (0..=MAX_QUOTED_POINTER).rev().find(|&i| at.is_char_boundary(i)).unwrap_or(0);
            at.truncate(cut);
            at.push('…');
        }
        match self.kind {
            DefectKind::DuplicateKey => {
                write!(f, "duplicate key at {at}: a key may appear only once per object")
            }
            DefectKind::InexactInteger => write!(
                f,
                "number at {at} is a whole number outside {EXACT_RANGE} and cannot be kept exact; \
                 send larger integers as strings"
            ),
        }
    }
}

/// Why a JSON text was refused by [`from_slice`].
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all, or nested deeper than 128 levels.
    #[error("not JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    /// Valid JSON that cannot be accepted as is.
    #[error("{0}")]
    Defect(Defect),
}

/// A parsed JSON text with its defects. Where a defect was, `value` holds a placeholder: a
/// `Parsed` with a defect must be refused, never used.
#[derive(Debug)]
pub struct Parsed {
    pub value: Value,
    /// The first defect, if any.
    pub defect: Option<Defect>,
    /// How many top-level places (members of a top-level object, or its duplicated keys) hold
    /// defects.
    places: usize,
}

impl Parsed {
    /// True when there are defects and every one lies inside the value of the top-level member
    /// `key` (not at the member itself: a duplicated `key` is outside).
    pub fn defects_only_inside(&self, key: &str) -> bool {
        self.defect.as_ref().is_some_and(|d| self.places == 1 && d.path.len() >= 2 && d.path[0] == key)
    }
}

/// Parses one JSON text strictly: any defect is an error.
///
/// # Errors
/// [`JsonError::Syntax`] when `bytes` is not one JSON text (or nests deeper than 128);
/// [`JsonError::Defect`] for the first duplicate key or inexact integer.
pub fn from_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    let parsed = parse(bytes)?;
    match parsed.defect {
        None => Ok(parsed.value),
        Some(d) => Err(JsonError::Defect(d)),
    }
}

/// Parses one JSON text, collecting defects instead of stopping at them.
///
/// # Errors
/// The serde_json error when `bytes` is not one JSON text (or nests deeper than 128).
pub fn parse(bytes: &[u8]) -> Result<Parsed, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut st = State::default();
    let value = ValueSeed { st: &mut st, top: true }.deserialize(&mut de)?;
    de.end()?;
    let defect = st.first.map(|(kind, mut path)| {
        path.reverse();
        Defect { kind, path }
    });
    Ok(Parsed { value, defect, places: st.places })
}

/// What the visitor has found so far.
#[derive(Default)]
struct State {
    defects: usize,
    /// The first defect; its path is built innermost segment first, as the recursion unwinds.
    first: Option<(DefectKind, Vec<String>)>,
    places: usize,
}

impl State {
    /// Records a defect at `segment` of the value being visited.
    fn record(&mut self, kind: DefectKind, segment: Option<String>) {
        self.defects += 1;
        if self.first.is_none() {
            self.first = Some((kind, segment.into_iter().collect()));
        }
    }

    /// Called by a container after visiting a child: when the first defect was found inside
    /// that child (there was none before it), the child's segment goes on its path.
    fn descended(&mut self, defects_before: usize, segment: impl FnOnce() -> String) {
        if defects_before == 0
            && self.defects > 0
            && let Some((_, path)) = &mut self.first
        {
            path.push(segment());
        }
    }
}

/// Deserialises one value; `top` for the document itself.
struct ValueSeed<'s> {
    st: &'s mut State,
    top: bool,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Value, E> {
        // serde_json hands over integers beyond u64/i64 as the nearest f64 (and `-0` as -0.0).
        // Every f64 at or beyond these bounds is whole, so the check needs no `fract()`.
        const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
        const MINUS_TWO_POW_63: f64 = -9_223_372_036_854_775_808.0;
        if x == 0.0 && x.is_sign_negative() {
            return Ok(Value::from(0u64));
        }
        if x >= TWO_POW_64 || x <= MINUS_TWO_POW_63 {
            self.st.record(DefectKind::InexactInteger, None);
            return Ok(Value::Null);
        }
        // serde_json never produces a non-finite number (it reports "number out of range").
        Number::from_f64(x).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let st = self.st;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        loop {
            let before = st.defects;
            let Some(v) = seq.next_element_seed(ValueSeed { st: &mut *st, top: false })? else {
                break;
            };
            let index = out.len();
            st.descended(before, || index.to_string());
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let st = self.st;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let before = st.defects;
            let v = map.next_value_seed(ValueSeed { st: &mut *st, top: false })?;
            let inside = st.defects > before;
            st.descended(before, || key.clone());
            let duplicate = match out.entry(key) {
                Entry::Vacant(e) => {
                    e.insert(v);
                    false
                }
                Entry::Occupied(e) => {
                    st.record(DefectKind::DuplicateKey, Some(e.key().clone()));
                    true
                }
            };
            if self.top {
                st.places += usize::from(inside) + usize::from(duplicate);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defect(text: &str) -> (DefectKind, String) {
        match from_slice(text.as_bytes()) {
            Err(JsonError::Defect(d)) => (d.kind, d.pointer()),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn valid_json_parses_as_serde_json_does() {
        for text in [
            "null",
            "true",
            r#""a\"\u00e9\ud83d\ude00""#,
            "[]",
            "{}",
            r#"{"a":[1,-2,3.5,{"b":null,"c":"d"}],"e":{"f":18446744073709551615,"g":-9223372036854775808}}"#,
            "1e15",
            "  [1 , 2 ]  ",
            "0.1",
            "-2.5e-300",
            "9223372036854775807",
        ] {
            let ours = from_slice(text.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
            assert_eq!(ours.to_string(), theirs.to_string(), "{text}: same kinds of numbers");
        }
        // Key order is kept (the crate uses serde_json's preserve_order).
        let v = from_slice(br#"{"z":1,"a":2,"m":3}"#).unwrap();
        assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["z", "a", "m"]);
    }

    #[test]
    fn duplicate_keys_are_defects_with_their_pointer() {
        assert_eq!(defect(r#"{"a":1,"a":2}"#), (DefectKind::DuplicateKey, "/a".into()));
        assert_eq!(defect(r#"{"a":{"b":1,"b":1}}"#), (DefectKind::DuplicateKey, "/a/b".into()));
        assert_eq!(
            defect(r#"[0,[{"x":1},{"y~/":1,"y~/":{}}]]"#),
            (DefectKind::DuplicateKey, "/1/1/y~0~1".into())
        );
        // "\u0061" is "a": duplicates are found after unescaping.
        assert_eq!(defect(r#"{"a":1,"\u0061":2}"#), (DefectKind::DuplicateKey, "/a".into()));
        // Only the first defect is reported; a second one does not move its pointer.
        assert_eq!(
            defect(r#"{"a":[{"k":1,"k":2}],"b":{"c":1,"c":1}}"#),
            (DefectKind::DuplicateKey, "/a/0/k".into())
        );
        // Same key in different objects is fine.
        assert!(from_slice(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":1}]}"#).is_ok());
    }

    #[test]
    fn integers_that_cannot_be_kept_exact_are_defects() {
        for n in [
            "18446744073709551616",
            "-9223372036854775809",
            "99999999999999999999999",
            "1e300",
            "1.8446744073709552e19",
            "-1e19",
        ] {
            assert_eq!(defect(&format!("[{n}]")), (DefectKind::InexactInteger, "/0".into()), "{n}");
        }
        assert_eq!(defect("18446744073709551616"), (DefectKind::InexactInteger, String::new()));
        let msg = from_slice(br#"{"x":[1e20]}"#).unwrap_err().to_string();
        assert!(msg.contains("/x/0") && msg.contains("send larger integers as strings"), "{msg}");
        // The edges are exact and stay integers; floats inside the range stay floats.
        let v = from_slice(b"[18446744073709551615,-9223372036854775808,1.8446744073709e19,-9.2e18,1.5]")
            .unwrap();
        assert_eq!(v[0].as_u64(), Some(u64::MAX));
        assert_eq!(v[1].as_i64(), Some(i64::MIN));
        assert!(v[2].is_f64() && v[3].is_f64() && v[4].is_f64(), "{v}");
    }

    #[test]
    fn negative_zero_becomes_the_integer_zero() {
        let v = from_slice(b"[-0,-0.0,-0e5,-0.0E-3,-1e-400,0.0,0]").unwrap();
        assert_eq!(v, json!([0, 0, 0, 0, 0, 0.0, 0]));
        for n in v.as_array().unwrap() {
            assert!(!n.as_f64().unwrap().is_sign_negative(), "{v}");
        }
        assert!(v[5].is_f64(), "positive 0.0 stays a float");
        assert_eq!(v.to_string(), "[0,0,0,0,0,0.0,0]");
    }

    #[test]
    fn syntax_errors_and_the_depth_limit_are_serde_jsons() {
        for bad in ["", "{", "[1,]", r#"{"a" 1}"#, "1 2", "nul", "[1e400]", "\"\\x\""] {
            assert!(matches!(from_slice(bad.as_bytes()), Err(JsonError::Syntax(_))), "{bad:?}");
        }
        let ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
        assert!(from_slice(ok.as_bytes()).is_ok());
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let e = from_slice(deep.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("recursion limit exceeded"), "{e}");
        assert_eq!(
            serde_json::from_str::<Value>(&deep).unwrap_err().to_string(),
            e.strip_prefix("not JSON: ").unwrap(),
            "the same limit as serde_json::from_slice"
        );
    }

    #[test]
    fn defects_are_located_by_top_level_member() {
        let p = |t: &str| parse(t.as_bytes()).unwrap();
        assert!(p(r#"{"ops":[{"a":1,"a":1}],"x":1}"#).defects_only_inside("ops"));
        assert!(p(r#"{"ops":[{"a":1,"a":1},[1e300]]}"#).defects_only_inside("ops"));
        assert!(!p(r#"{"ops":[{"a":1,"a":1}],"x":{"b":1,"b":1}}"#).defects_only_inside("ops"));
        assert!(!p(r#"{"ops":[],"ops":[]}"#).defects_only_inside("ops"), "the member itself is duplicated");
        assert!(!p(r#"{"ops":[{"a":1,"a":1}],"ops":[]}"#).defects_only_inside("ops"));
        assert!(!p(r#"{"ops":1e300}"#).defects_only_inside("ops"));
        assert!(!p(r#"{"x":{"a":1,"a":1}}"#).defects_only_inside("ops"));
        assert!(!p(r#"[{"ops":[{"a":1,"a":1}]}]"#).defects_only_inside("ops"), "not a top-level member");
        assert!(!p(r#"{"ops":[{"a":1}]}"#).defects_only_inside("ops"), "no defect at all");
    }

    #[test]
    fn long_pointers_are_cut_in_messages() {
        let key = "é".repeat(500);
        let text = format!(r#"{{"{key}":1,"{key}":2}}"#);
        let msg = from_slice(text.as_bytes()).unwrap_err().to_string();
        assert!(msg.len() < 400 && msg.contains('…'), "{msg}");
    }
}
