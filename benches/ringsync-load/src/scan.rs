//! Byte scanning for server frames, so the hot receive path never builds a JSON tree.
//!
//! The server writes its frames in a fixed field order (`protocol::delta_frame` and friends):
//! `{"type":"delta","from":A,"to":B,"changes":[...]}`, `{"type":"snapshot","rev":R,...}`. The
//! load generator only needs the type, a few numbers from the head of the frame, and every
//! `"ts":N` the writers embedded in their change values. The search is SWAR (8 bytes a step) on
//! the byte `t`, which is rare in these frames: the writers' filler is all `x`. The tests build
//! their frames with the server's own encoders, so a change of field order there fails here.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Index of the first `b` in `hay`.
pub fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    let pat = LO.wrapping_mul(u64::from(b));
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let x = u64::from_le_bytes(c.try_into().expect("8 bytes")) ^ pat;
        // The lowest set bit marks the first zero byte exactly (higher ones may be borrows).
        let t = x.wrapping_sub(LO) & !x & HI;
        if t != 0 {
            return Some(base + (t.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks.remainder().iter().position(|&x| x == b).map(|i| base + i)
}

/// Index of the first occurrence of `needle` (non-empty) in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = find_byte(&hay[from..], first) {
        let at = from + i;
        if hay[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The unsigned integer at the start of `s`, and how many bytes it took.
pub fn parse_u64(s: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    let mut len = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        len += 1;
    }
    (len > 0).then_some((n, len))
}

/// The number right after the first `key` (e.g. `"to":`) in `hay`.
pub fn num_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(hay, key)? + key.len();
    parse_u64(&hay[at..]).map(|(n, _)| n)
}

/// The string right after the first `key` (e.g. `"session":"`), up to the next quote (the
/// server's ids and tokens never contain escapes).
pub fn str_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(hay, key)? + key.len();
    let len = find_byte(&hay[at..], b'"')?;
    Some(&hay[at..at + len])
}

/// The head of a frame (where the fixed fields are), so header lookups never scan a big body.
pub fn head(p: &[u8]) -> &[u8] {
    &p[..p.len().min(96)]
}

/// The message type: the frame must start with `{"type":"`.
pub fn msg_type(p: &[u8]) -> &[u8] {
    const PREFIX: &[u8] = b"{\"type\":\"";
    if !p.starts_with(PREFIX) {
        return b"";
    }
    let rest = &p[PREFIX.len()..];
    match find_byte(&rest[..rest.len().min(32)], b'"') {
        Some(n) => &rest[..n],
        None => b"",
    }
}

/// Calls `f` with every `"ts":N` value in `hay` that opens an object (`{"ts":N`), in order: the
/// writers' stamps in change values, not the commit time `"ts"` the server puts in every change
/// entry (which always follows another member).
pub fn each_value_ts(hay: &[u8], mut f: impl FnMut(u64)) {
    let mut from = 0;
    while let Some(i) = find(&hay[from..], b"{\"ts\":") {
        let at = from + i + 6;
        from = at;
        if let Some((n, len)) = parse_u64(&hay[at..]) {
            f(n);
            from = at + len;
        }
    }
}

/// Calls `f` with every `"ts":N` value in `hay`, in order.
pub fn each_ts(hay: &[u8], mut f: impl FnMut(u64)) {
    let mut from = 0;
    while let Some(i) = find_byte(&hay[from..], b't') {
        let at = from + i;
        from = at + 1;
        if at > 0
            && hay[at - 1] == b'"'
            && hay[at + 1..].starts_with(b"s\":")
            && let Some((n, len)) = parse_u64(&hay[at + 4..])
        {
            f(n);
            from = at + 4 + len;
        }
    }
}

#[cfg(test)]
mod tests {
    use ringsync::ids::{ClientId, ClientReqId, Rev};
    use ringsync::{patch, protocol};

    use super::*;

    #[test]
    fn finds_bytes_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                let mut v = vec![b'x'; len];
                v[at] = b't';
                if at + 3 < len {
                    v[at + 3] = b't';
                }
                assert_eq!(find_byte(&v, b't'), Some(at), "len {len} at {at}");
            }
            assert_eq!(find_byte(&vec![b'x'; len], b't'), None);
        }
        // A 0x80-ish neighbour must not fool the zero-byte trick.
        assert_eq!(find_byte(&[0x75, 0x74, 0xf4, 0x74, 0, 0, 0, 0], 0x74), Some(1));
    }

    /// The change entry the server encodes for `{"ts":ts,"p":"xxxx"}` added at `/t`.
    fn entry(rev: u64, ts: u64) -> Vec<u8> {
        let ops = serde_json::json!([{"op": "add", "path": "/t", "value": {"ts": ts, "p": "xxxx"}}]);
        let ops = protocol::encode_ops(&patch::parse_patch(ops).expect("a valid patch"));
        let head = protocol::EntryHead::new(Rev(rev), ClientId(1), None, 1_700_000_000_000 + rev);
        protocol::change_frame(&head, &ops).1.to_vec()
    }

    #[test]
    fn reads_server_frames() {
        // Frames from the server's own encoders, so a change of field order there fails here.
        let head43 = protocol::EntryHead::new(Rev(43), ClientId(2), None, 1_700_000_000_043);
        let ack43 = protocol::entry_ack(&head43, ClientReqId(9), protocol::Stacks::default(), None);
        let e42 = entry(42, 123);
        let (e44, e45) = (entry(44, 77), entry(45, 1_000_000_000));
        let parts = [&e42[..], &ack43[..], &e44[..], &e45[..]];
        let d = protocol::delta_frame(Rev(41), Rev(45), parts.into_iter(), 0);
        assert_eq!(msg_type(&d), b"delta");
        assert_eq!(num_after(head(&d), b"\"from\":"), Some(41));
        assert_eq!(num_after(head(&d), b"\"to\":"), Some(45));
        let mut ts = Vec::new();
        each_value_ts(&d, |t| ts.push(t));
        assert_eq!(ts, vec![123, 77, 1_000_000_000], "the writers' stamps, not the commit times");
        let s = protocol::snapshot_frame(Rev(1_234_567), ClientReqId(3), br#"{"t":{"ts":5,"p":""}}"#);
        assert_eq!(msg_type(&s), b"snapshot");
        assert_eq!(num_after(head(&s), b"\"rev\":"), Some(1_234_567));
        let w = protocol::Welcome {
            client: ClientId(7),
            user: None,
            session: "ab12",
            epoch: "e0",
            rev: Rev(5),
            resumed: true,
            last_client_req_id: ClientReqId(0),
            presence_json: br#"{"c7":{}}"#,
            presence_count: None,
            stacks: protocol::Stacks::default(),
        }
        .encode();
        assert_eq!(msg_type(&w), b"welcome");
        assert_eq!(str_after(&w, b"\"session\":\""), Some(&b"ab12"[..]));
        assert_eq!(str_after(&w, b"\"epoch\":\""), Some(&b"e0"[..]));
        assert_eq!(num_after(&w, b"\"rev\":"), Some(5));
        assert!(find(&w, b"\"resumed\":true").is_some());
        assert_eq!(msg_type(b"[]"), b"");
    }
}
