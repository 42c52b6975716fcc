//! Fuzzing `reassembly::Reassembler`: random sequences of frames (opcode, FIN bit, payload length;
//! payloads cut from a stream of mixed one- to four-byte UTF-8 characters, so cuts fall inside
//! characters, with the odd corrupt byte) fed to it and to a plain reference model, frame by frame.
//! It never panics, answers exactly as the model does (message, "not yet", or the close reason),
//! never returns a message over the cap, and every text message it returns is UTF-8.
//!
//! Bounded by default (`DEFAULT_CASES` sequences). For a long run set `FUZZ_CASES`, e.g.
//! `FUZZ_CASES=1000000 cargo test --release --test fuzz_reassembly` (only these fuzz
//! tests read it).

use std::borrow::Cow;

use fastwebsockets::OpCode;
use proptest::prelude::*;
use ringsync::close::CloseReason;
use ringsync::reassembly::Reassembler;

const DEFAULT_CASES: u32 = 2_000;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES)
}

/// One frame as generated: what it is, and where its payload comes from.
#[derive(Debug, Clone)]
struct FrameSpec {
    opcode: OpCode,
    fin: bool,
    len: usize,
    /// Replace the payload's middle byte with 0xFF (never valid in UTF-8).
    corrupt: bool,
}

/// A data message split into frames, or a stray frame between messages.
#[derive(Debug, Clone)]
enum Item {
    Message { binary: bool, fragments: Vec<usize> },
    Stray(OpCode, bool, usize),
}

fn item(max: usize) -> impl Strategy<Value = Item> {
    let message = (any::<bool>(), prop::collection::vec(0..=max / 2 + 2, 1..6))
        .prop_map(|(binary, fragments)| Item::Message { binary, fragments });
    let opcode = prop_oneof![
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Continuation),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
        Just(OpCode::Close),
    ];
    let stray = (opcode, any::<bool>(), 0..=max + 3).prop_map(|(op, fin, len)| Item::Stray(op, fin, len));
    prop_oneof![12 => message, 1 => stray]
}

/// Frames: mostly well-formed messages (some over the cap), now and then a stray frame, a flipped
/// FIN bit or a corrupt byte.
fn frames(max: usize) -> impl Strategy<Value = Vec<FrameSpec>> {
    let items = prop::collection::vec(item(max), 1..12);
    let mutations = prop::collection::vec((prop::bool::weighted(0.03), prop::bool::weighted(0.03)), 64);
    (items, mutations).prop_map(|(items, mutations)| {
        let mut out = Vec::new();
        for item in items {
            match item {
                Item::Message { binary, fragments } => {
                    let n = fragments.len();
                    for (i, len) in fragments.into_iter().enumerate() {
                        let opcode = match (i, binary) {
                            (0, true) => OpCode::Binary,
                            (0, false) => OpCode::Text,
                            _ => OpCode::Continuation,
                        };
                        out.push(FrameSpec { opcode, fin: i + 1 == n, len, corrupt: false });
                    }
                }
                Item::Stray(opcode, fin, len) => out.push(FrameSpec { opcode, fin, len, corrupt: false }),
            }
        }
        for (f, (flip, corrupt)) in out.iter_mut().zip(mutations) {
            f.fin ^= flip;
            f.corrupt = corrupt;
        }
        out
    })
}

/// A stream of UTF-8 text to cut payloads from: characters of every encoded length.
fn text_source() -> Vec<u8> {
    "a€ßκ😀b~é中𝄞z ".repeat(64).into_bytes()
}

/// The payloads for `frames`, cut one after another from the text source.
fn payloads(frames: &[FrameSpec]) -> Vec<Vec<u8>> {
    let source = text_source();
    let mut at = 0;
    frames
        .iter()
        .map(|f| {
            let mut p: Vec<u8> = (0..f.len).map(|i| source[(at + i) % source.len()]).collect();
            at += f.len;
            if f.corrupt && !p.is_empty() {
                let mid = p.len() / 2;
                p[mid] = 0xff;
            }
            p
        })
        .collect()
}

/// What one frame gets.
type Answer = Result<Option<(OpCode, Vec<u8>)>, CloseReason>;

/// The reference: the message so far is kept whole and re-checked from its start at each frame.
struct Model {
    max: usize,
    partial: Option<(OpCode, Vec<u8>)>,
}

/// Whether no continuation can make `bytes` valid UTF-8 (an incomplete last character is fine).
fn broken_utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_err_and(|e| e.error_len().is_some())
}

impl Model {
    fn push(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) -> Answer {
        let (op, buf) = match opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => return Err(CloseReason::Protocol),
            OpCode::Continuation => {
                let Some((op, mut buf)) = self.partial.take() else { return Err(CloseReason::Protocol) };
                buf.extend_from_slice(payload);
                (op, buf)
            }
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(CloseReason::Protocol);
                }
                (opcode, payload.to_vec())
            }
        };
        if buf.len() > self.max {
            return Err(CloseReason::TooBig);
        }
        if op == OpCode::Text && (broken_utf8(&buf) || (fin && std::str::from_utf8(&buf).is_err())) {
            return Err(CloseReason::BadUtf8);
        }
        if fin {
            return Ok(Some((op, buf)));
        }
        self.partial = Some((op, buf));
        Ok(None)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn reassembly_matches_the_reference_model(
        (max, frames) in (1usize..48).prop_flat_map(|max| (Just(max), frames(max))),
    ) {
        let payloads = payloads(&frames);
        let mut real = Reassembler::new(max);
        let mut model = Model { max, partial: None };
        for (i, (f, payload)) in frames.iter().zip(&payloads).enumerate() {
            let got: Answer = real
                .push(f.opcode, f.fin, payload)
                .map(|m| m.map(|(op, bytes): (OpCode, Cow<'_, [u8]>)| (op, bytes.into_owned())));
            let want = model.push(f.opcode, f.fin, payload);
            prop_assert_eq!(&got, &want, "frame {} of {:?}", i, frames);
            if let Ok(Some((op, message))) = &got {
                prop_assert!(message.len() <= max, "a message over the cap");
                prop_assert!(*op != OpCode::Text || std::str::from_utf8(message).is_ok());
            }
            // An error closes the connection: nothing more is read.
            if got.is_err() {
                break;
            }
        }
    }
}

/// The generator reaches every answer, so the comparison above is not vacuous.
#[test]
fn the_generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut messages, mut fragmented, mut seen) = (0, 0, std::collections::HashSet::new());
    for _ in 0..2_000 {
        let frames = frames(24).new_tree(&mut runner).unwrap().current();
        let mut model = Model { max: 24, partial: None };
        for (f, p) in frames.iter().zip(&payloads(&frames)) {
            match model.push(f.opcode, f.fin, p) {
                Ok(Some(_)) => {
                    messages += 1;
                    fragmented += usize::from(f.opcode == OpCode::Continuation);
                }
                Ok(None) => {}
                Err(reason) => {
                    seen.insert(reason.label());
                    break;
                }
            }
        }
    }
    eprintln!("{messages} messages, {fragmented} fragmented, endings {seen:?}");
    assert!(messages > 500 && fragmented > 100, "{messages} messages, {fragmented} fragmented");
    for reason in [CloseReason::Protocol, CloseReason::TooBig, CloseReason::BadUtf8] {
        assert!(seen.contains(reason.label()), "{reason:?} never produced");
    }
}
