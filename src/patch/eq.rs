//! JSON equality and arithmetic on JSON numbers, as RFC 6902 `test` and the `incr` extension need.
//!
//! Invariants: numbers compare by value (`1` equals `1.0`; integers are compared exactly, as
//! `i128`, before falling back to `f64`); objects compare as maps, whatever their member order;
//! adding two integers is exact and yields an integer or nothing (overflow), never a float.

use serde_json::{Map, Number, Value};

/// JSON equality with numbers compared by value (`1 == 1.0`), as RFC 6902 `test` requires.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_eq(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => objects_eq(x, y),
        _ => a == b,
    }
}

fn objects_eq(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
}

fn as_i128(n: &Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

fn number_eq(x: &Number, y: &Number) -> bool {
    match (as_i128(x), as_i128(y)) {
        (Some(a), Some(b)) => a == b,
        _ => x.as_f64() == y.as_f64(),
    }
}

/// Exact integer addition (None on overflow of both i64 and u64), else finite float addition.
pub fn add_numbers(x: &Number, y: &Number) -> Option<Number> {
    if let (Some(a), Some(b)) = (as_i128(x), as_i128(y)) {
        let s = a + b;
        return i64::try_from(s).map(Number::from).ok().or_else(|| u64::try_from(s).ok().map(Number::from));
    }
    Number::from_f64(x.as_f64()? + y.as_f64()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn test_compares_numbers_by_value() {
        assert!(json_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!json_eq(&json!(1), &json!("1")));
    }
}
