//! Measures of a JSON document: its encoded size without encoding it ([`json_size`]), its nesting
//! depth ([`depth`]), and the check that keeps every state within [`MAX_DEPTH`].
//!
//! Invariant: `json_size(v)` equals `serde_json::to_vec(v).len()` for every value.

use serde::Serialize;
use serde_json::Value;

use super::PatchError;
use super::pointer::Pointer;

/// Deepest nesting a document may reach (containers from the root, as serde_json's parser
/// allows). Keeping every state within it keeps every recursive walk (clone, encode, drop) far
/// from the stack's end, whatever a client sends.
pub const MAX_DEPTH: usize = 128;

/// Length of `v` encoded as compact JSON, without allocating it.
pub fn json_size<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, v).expect("counting never fails");
    c.0
}

/// Nesting depth of a value (0 for a scalar), walked with an explicit stack.
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}

pub(super) fn check_depth(path: &Pointer, value: &Value, i: usize) -> Result<(), PatchError> {
    check_depth_at(path.tokens().len(), value, i)
}

/// [`check_depth`] for a value placed `tokens` levels below the root.
pub(super) fn check_depth_at(tokens: usize, value: &Value, i: usize) -> Result<(), PatchError> {
    if !value.is_array() && !value.is_object() {
        return Ok(());
    }
    if tokens + depth(value) > MAX_DEPTH {
        return Err(PatchError::invalid(
            i,
            format!("the document would nest deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(())
}
