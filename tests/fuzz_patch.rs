//! A fuzz target for the patch engine on stable Rust (cargo-fuzz needs nightly): proptest throws
//! random documents and random op sequences, biased towards the growth attacks (`copy` of the root
//! or of a big value, repeated), at `patch::apply_within`. For every case:
//! - it never panics;
//! - on error the document is exactly as it was;
//! - on success the inverse restores the document exactly, the size it reports is the real
//!   encoded size, and that size is within the budget;
//! - no op sequence allocates far past the state limit: a counting allocator (this test binary's
//!   global allocator, counted per thread) bounds the peak heap growth during the apply.
//!
//! `FUZZ_CASES=1000000 cargo test --release --test fuzz_patch` runs millions of cases (the default
//! is a few thousand, for CI); failures found are kept in `fuzz_patch.proptest-regressions`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use ringsync::patch::{self, Budget, Op, PatchError};
use serde_json::{Value, json};

/// Counts this thread's live heap bytes and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call forwards to the system allocator with the caller's arguments unchanged; the
// bookkeeping only touches thread-local counters initialised without allocating.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller guarantees for `alloc`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller guarantees for `dealloc`.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees for `realloc`.
        let q = unsafe { System.realloc(ptr, layout, new_size) };
        if !q.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning its result and the most heap it held at once beyond what was live before.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z]{0,12}".prop_map(Value::from),
        (1usize..4096).prop_map(|n| Value::from("x".repeat(n))),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths that often exist in generated documents, the root, and some that do not.
fn arb_path() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("-".to_owned()),
        Just("x".to_owned()),
    ];
    prop::collection::vec(token, 0..4).prop_map(|t| t.iter().map(|s| format!("/{s}")).collect())
}

fn arb_op() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => (arb_path(), arb_value()).prop_map(|(p, v)| json!({"op": "add", "path": p, "value": v})),
        1 => arb_path().prop_map(|p| json!({"op": "remove", "path": p})),
        1 => (arb_path(), arb_value()).prop_map(|(p, v)| json!({"op": "replace", "path": p, "value": v})),
        1 => (arb_path(), arb_path()).prop_map(|(f, p)| json!({"op": "move", "from": f, "path": p})),
        // Copies weighted up: repeated, they are the doubling attack.
        3 => (arb_path(), arb_path()).prop_map(|(f, p)| json!({"op": "copy", "from": f, "path": p})),
        1 => (arb_path(), arb_value()).prop_map(|(p, v)| json!({"op": "test", "path": p, "value": v})),
        1 => (arb_path(), any::<i32>()).prop_map(|(p, n)| json!({"op": "incr", "path": p, "value": n})),
    ]
}

fn encoded_size(v: &Value) -> usize {
    serde_json::to_vec(v).expect("serialises").len()
}

/// Heap a change may hold beyond the budget's bytes of JSON. `Value` trees cost many times their
/// encoding: a member of a tiny object (`"c1":{"a":"x"}`, a dozen bytes) is an index slot, a map
/// entry with its hash, a key `String` and a 32-byte `Value`, plus allocator headers: about 25×
/// (a case the fuzzer found: 27 alternating copies of the root and a one-byte value held 23× the
/// limit). The point is that the growth is bounded by the limit, not 2^copies: 64× the limit
/// still catches any doubling.
fn heap_cap(limit: usize, ops_len: usize) -> usize {
    64 * limit + 4096 * ops_len + (256 << 10)
}

fn check(mut doc: Value, ops: &[Op], limit: usize) -> Result<(), TestCaseError> {
    let before = doc.clone();
    let size = encoded_size(&doc);
    let limit = limit.max(size);
    let (result, peak) = peak_growth(|| patch::apply_within(&mut doc, ops, Budget { size, limit }));
    prop_assert!(peak <= heap_cap(limit, ops.len()), "peak heap growth {} for limit {}", peak, limit);
    match result {
        Err(_) => prop_assert_eq!(&doc, &before, "a failed patch leaves the document unchanged"),
        Ok(applied) => {
            let now = encoded_size(&doc);
            prop_assert_eq!(now as i64, size as i64 + applied.size_delta, "size accounting is exact");
            prop_assert!(now <= limit, "size {} over the limit {}", now, limit);
            patch::apply(&mut doc, &applied.inverse).expect("the inverse applies");
            prop_assert_eq!(&doc, &before, "the inverse restores the document");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_patches_keep_every_promise(
        doc in prop::collection::btree_map("[a-c]", arb_value(), 0..4),
        ops in prop::collection::vec(arb_op(), 1..12),
        limit in 16usize..(256 << 10),
    ) {
        let Ok(ops) = patch::parse_patch(Value::Array(ops)) else { return Ok(()) };
        check(Value::Object(doc.into_iter().collect()), &ops, limit)?;
    }
}

proptest! {
    // Each case copies up to a megabyte: fewer cases than the random patches above.
    #![proptest_config(ProptestConfig { cases: cases() / 10, ..ProptestConfig::default() })]

    #[test]
    fn repeated_copies_stay_within_the_limit(
        blob in 1usize..(16 << 10),
        copies in 1usize..40,
        limit in 1usize..(1 << 20),
    ) {
        // The attack: a value copied to a sibling over and over, and the root into itself.
        let doc = json!({"a": "x".repeat(blob)});
        let mut ops = Vec::new();
        for i in 0..copies {
            ops.push(json!({"op": "copy", "from": if i % 2 == 0 { "" } else { "/a" }, "path": format!("/c{i}")}));
        }
        let ops = patch::parse_patch(Value::Array(ops)).expect("valid ops");
        check(doc, &ops, limit)?;
    }
}

#[test]
fn the_doubling_attack_is_refused_before_it_allocates() {
    let mut doc = json!({"a": "x".repeat(64 << 10)});
    let ops: Vec<Value> =
        (0..24).map(|i| json!({"op": "copy", "from": "", "path": format!("/d{i}")})).collect();
    let ops = patch::parse_patch(Value::Array(ops)).expect("valid ops");
    let size = encoded_size(&doc);
    let limit = 16 << 20;
    let (result, peak) = peak_growth(|| patch::apply_within(&mut doc, &ops, Budget { size, limit }));
    assert!(matches!(result, Err(PatchError::TooLarge { .. })), "{result:?}");
    assert!(peak <= heap_cap(limit, ops.len()), "peak heap growth {peak}");
    assert_eq!(encoded_size(&doc), size);
}
