//! The public JSON Patch conformance suite (npm package `json-patch-test-suite`, pinned in
//! tests/js/package.json and installed by scripts/test.sh) run against `ringsync::patch`.
//! Every record not marked `disabled` must behave as the suite says: expected documents match
//! and every `error` record is rejected (by the parser or by apply), leaving the doc unchanged.

use std::path::PathBuf;

use ringsync::patch;
use serde_json::Value;

fn suite_file(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js/node_modules/json-patch-test-suite")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "JSON Patch suite missing at {} ({e}). Install the pinned test dependencies with \
             `npm ci --prefix tests/js` (scripts/test.sh does this).",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("suite file is JSON")
}

fn run(name: &str) -> (usize, usize) {
    let Value::Array(records) = suite_file(name) else { panic!("{name} is not an array") };
    let (mut passed, mut skipped) = (0, 0);
    for (i, rec) in records.iter().enumerate() {
        let comment = rec.get("comment").and_then(Value::as_str).unwrap_or("");
        if rec.get("disabled").and_then(Value::as_bool) == Some(true) || rec.get("patch").is_none() {
            skipped += 1;
            continue;
        }
        let mut doc = rec["doc"].clone();
        let before = doc.clone();
        let result = patch::parse_patch(rec["patch"].clone()).and_then(|ops| patch::apply(&mut doc, &ops));
        if let Some(err) = rec.get("error") {
            assert!(result.is_err(), "{name}[{i}] {comment:?}: expected error {err}, got {doc}");
            assert_eq!(doc, before, "{name}[{i}] {comment:?}: a rejected patch changed the document");
        } else {
            assert!(result.is_ok(), "{name}[{i}] {comment:?}: {result:?}");
            if let Some(expected) = rec.get("expected") {
                assert!(
                    patch::json_eq(&doc, expected),
                    "{name}[{i}] {comment:?}: got {doc}, expected {expected}"
                );
            }
        }
        passed += 1;
    }
    (passed, skipped)
}

#[test]
fn tests_json() {
    let (passed, skipped) = run("tests.json");
    assert!(passed >= 75, "only {passed} records ran");
    eprintln!("tests.json: {passed} passed, {skipped} skipped (disabled or comment-only)");
}

#[test]
fn spec_tests_json() {
    let (passed, skipped) = run("spec_tests.json");
    assert!(passed >= 16, "only {passed} records ran");
    eprintln!("spec_tests.json: {passed} passed, {skipped} skipped (disabled or comment-only)");
}
