//! RFC 6901 JSON Pointer: parsed once into unescaped reference tokens, printed back escaped, and
//! resolved against a document.
//!
//! Invariants: a `Pointer` always holds unescaped tokens (`~0`/`~1` are decoded on parse and
//! re-encoded on display, so parse and display round-trip); an array index token is `0` or digits
//! without a leading zero (no signs, no `-`: the caller handles `-` where RFC 6902 allows it).
//! Resolution never creates anything: a missing step is an `Invalid` error naming the op.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::PatchError;

/// An RFC 6901 JSON Pointer, parsed once into unescaped reference tokens.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    /// The whole document (`""`).
    pub fn root() -> Self {
        Pointer { tokens: Vec::new() }
    }

    /// Parses `""` or `/a/b~1c`.
    ///
    /// # Errors
    /// A non-empty pointer that does not start with `/`, or a `~` not followed by `0` or `1`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(Pointer::root());
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("JSON Pointer {s:?} must start with '/'"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            if !raw.contains('~') {
                tokens.push(raw.to_owned());
                continue;
            }
            let mut tok = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => tok.push('~'),
                        Some('1') => tok.push('/'),
                        _ => return Err(format!("JSON Pointer {s:?} has a bad '~' escape")),
                    }
                } else {
                    tok.push(c);
                }
            }
            tokens.push(tok);
        }
        Ok(Pointer { tokens })
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// True when one pointer equals the other or lies above or below it.
    pub fn overlaps(&self, other: &Pointer) -> bool {
        self.tokens.iter().zip(&other.tokens).all(|(a, b)| a == b)
    }

    /// True when `self` is a proper ancestor of `other`.
    pub(super) fn is_proper_prefix_of(&self, other: &Pointer) -> bool {
        self.tokens.len() < other.tokens.len() && self.overlaps(other)
    }

    pub(super) fn parent(&self) -> Pointer {
        Pointer { tokens: self.tokens[..self.tokens.len().saturating_sub(1)].to_vec() }
    }

    pub(super) fn with_last(&self, last: String) -> Pointer {
        let mut p = self.parent();
        p.tokens.push(last);
        p
    }
}

impl Pointer {
    /// The pointer as text (`/a/b~1c`), built in one allocation: the one place that escapes
    /// tokens (`Display` and `Serialize` write it).
    pub fn encoded(&self) -> String {
        let mut s = String::with_capacity(self.tokens.iter().map(|t| t.len() + 1).sum());
        for t in &self.tokens {
            s.push('/');
            if t.bytes().any(|b| b == b'~' || b == b'/') {
                for c in t.chars() {
                    match c {
                        '~' => s.push_str("~0"),
                        '/' => s.push_str("~1"),
                        c => s.push(c),
                    }
                }
            } else {
                s.push_str(t);
            }
        }
        s
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encoded())
    }
}

impl fmt::Debug for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pointer({self})")
    }
}

impl Serialize for Pointer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // One string and one `serialize_str` beat `collect_str`'s formatter, piece by piece (every
        // op of every change is encoded, and stored rooms encode their inverses too).
        s.serialize_str(&self.encoded())
    }
}

impl<'de> Deserialize<'de> for Pointer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pointer::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses an array index token strictly (RFC 6901: `0` or no leading zero, digits only).
pub(super) fn array_index(tok: &str, i: usize) -> Result<usize, PatchError> {
    let ok =
        !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit()) && (tok == "0" || !tok.starts_with('0'));
    if !ok {
        return Err(PatchError::invalid(i, format!("{tok:?} is not an array index")));
    }
    tok.parse().map_err(|_| PatchError::invalid(i, format!("array index {tok} is too large")))
}

/// The value `path` points to in `doc`; errors name op `i`.
pub(super) fn get_ref<'a>(doc: &'a Value, path: &Pointer, i: usize) -> Result<&'a Value, PatchError> {
    get_ref_in(doc, path.tokens(), i)
}

/// [`get_ref`], mutably.
pub(super) fn get_mut<'a>(doc: &'a mut Value, path: &Pointer, i: usize) -> Result<&'a mut Value, PatchError> {
    get_mut_in(doc, path.tokens(), i)
}

/// The container `path` names a member of (`path` without its last token), without allocating
/// the parent pointer; the root's parent is the root.
pub(super) fn parent_ref<'a>(doc: &'a Value, path: &Pointer, i: usize) -> Result<&'a Value, PatchError> {
    let t = path.tokens();
    get_ref_in(doc, &t[..t.len().saturating_sub(1)], i)
}

/// [`parent_ref`], mutably.
pub(super) fn parent_mut<'a>(
    doc: &'a mut Value,
    path: &Pointer,
    i: usize,
) -> Result<&'a mut Value, PatchError> {
    let t = path.tokens();
    get_mut_in(doc, &t[..t.len().saturating_sub(1)], i)
}

fn missing(tokens: &[String], i: usize) -> PatchError {
    PatchError::invalid(i, format!("path {} does not exist", Pointer { tokens: tokens.to_vec() }))
}

fn get_ref_in<'a>(doc: &'a Value, tokens: &[String], i: usize) -> Result<&'a Value, PatchError> {
    let mut cur = doc;
    for tok in tokens {
        cur = match cur {
            Value::Object(m) => m.get(tok.as_str()),
            Value::Array(a) => a.get(array_index(tok, i)?),
            _ => None,
        }
        .ok_or_else(|| missing(tokens, i))?;
    }
    Ok(cur)
}

fn get_mut_in<'a>(doc: &'a mut Value, tokens: &[String], i: usize) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for tok in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(tok.as_str()),
            Value::Array(a) => a.get_mut(array_index(tok, i)?),
            _ => None,
        }
        .ok_or_else(|| missing(tokens, i))?;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_escapes_round_trip() {
        let p = Pointer::parse("/a~1b/c~0d/").unwrap();
        assert_eq!(p.tokens(), ["a/b", "c~d", ""]);
        assert_eq!(p.to_string(), "/a~1b/c~0d/");
        assert!(Pointer::parse("a").is_err());
        assert!(Pointer::parse("/a~2").is_err());
    }

    #[test]
    fn overlap_is_prefix_either_way() {
        let a = Pointer::parse("/board/e2").unwrap();
        let b = Pointer::parse("/board").unwrap();
        let c = Pointer::parse("/board/e4").unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a) && a.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(Pointer::root().overlaps(&a));
    }
}
