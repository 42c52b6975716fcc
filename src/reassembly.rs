//! Reassembly of fragmented WebSocket messages (RFC 6455 §5.4) under the message size cap.
//!
//! Pure: it is fed each data frame's opcode, FIN bit and payload, and answers with a whole message,
//! "not yet", or the close reason the frame deserves. Invariants: at most one message is being
//! assembled; a message never exceeds the cap, not even while it is being assembled; every text
//! message it returns is valid UTF-8, and a text message that can no longer become valid UTF-8 is
//! refused at the fragment that breaks it (fail fast, as Autobahn's 6.4.x cases expect), not at its
//! end. Control frames are the read loop's business: fed here, they are a protocol error.
//! `tests/fuzz_reassembly.rs` checks it against a plain reference model.

use std::borrow::Cow;

use fastwebsockets::OpCode;

use crate::close::CloseReason;

/// A whole message: its opcode (`Text` or `Binary`) and payload (borrowed from the frame when it
/// came in one).
pub type Message<'a> = (OpCode, Cow<'a, [u8]>);

/// The message being assembled, if any.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    opcode: OpCode,
    buf: Vec<u8>,
    /// For text: the length of the prefix already known to be whole, valid UTF-8 (what follows
    /// is at most an incomplete character).
    valid: usize,
}

impl Reassembler {
    /// Reassembles messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Reassembler { max, partial: None }
    }

    /// Feeds one data frame (`Text`, `Binary` or `Continuation`); returns the message it
    /// completes, if any.
    ///
    /// # Errors
    /// The reason to close with: `Protocol` for a frame out of sequence (or a control frame),
    /// `TooBig` past the cap, `BadUtf8` as soon as a text message cannot be valid UTF-8.
    pub fn push<'a>(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &'a [u8],
    ) -> Result<Option<Message<'a>>, CloseReason> {
        match opcode {
            OpCode::Text | OpCode::Binary if self.partial.is_some() => Err(CloseReason::Protocol),
            OpCode::Text | OpCode::Binary if payload.len() > self.max => Err(CloseReason::TooBig),
            OpCode::Text | OpCode::Binary if fin => {
                if opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
                    return Err(CloseReason::BadUtf8);
                }
                Ok(Some((opcode, Cow::Borrowed(payload))))
            }
            OpCode::Text | OpCode::Binary => {
                let mut partial = Partial { opcode, buf: payload.to_vec(), valid: 0 };
                partial.check_utf8(false)?;
                self.partial = Some(partial);
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else { return Err(CloseReason::Protocol) };
                if partial.buf.len() + payload.len() > self.max {
                    return Err(CloseReason::TooBig);
                }
                partial.buf.extend_from_slice(payload);
                partial.check_utf8(fin)?;
                if !fin {
                    return Ok(None);
                }
                let Partial { opcode, buf, .. } = self.partial.take().expect("checked above");
                Ok(Some((opcode, Cow::Owned(buf))))
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => Err(CloseReason::Protocol),
        }
    }
}

impl Partial {
    /// Checks the bytes added since the last call (text only). Before the last fragment, a
    /// trailing incomplete character is fine; each byte is checked about once overall.
    fn check_utf8(&mut self, fin: bool) -> Result<(), CloseReason> {
        if self.opcode != OpCode::Text {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.valid..]) {
            Ok(_) => {
                self.valid = self.buf.len();
                Ok(())
            }
            // `error_len() == None`: the input ends inside a character that may still complete.
            Err(e) if e.error_len().is_none() && !fin => {
                self.valid += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(CloseReason::BadUtf8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_fragmented_messages() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Text, true, b"hi").unwrap(),
            Some((OpCode::Text, Cow::Borrowed(&b"hi"[..])))
        );
        assert_eq!(r.push(OpCode::Text, false, b"ab").unwrap(), None);
        assert_eq!(r.push(OpCode::Continuation, false, b"cd").unwrap(), None);
        let (op, m) = r.push(OpCode::Continuation, true, b"e").unwrap().unwrap();
        assert_eq!((op, &m[..]), (OpCode::Text, &b"abcde"[..]));
    }

    #[test]
    fn violations_close_with_the_right_reason() {
        let mut r = Reassembler::new(4);
        assert_eq!(r.push(OpCode::Continuation, true, b"x"), Err(CloseReason::Protocol));
        assert_eq!(r.push(OpCode::Ping, true, b""), Err(CloseReason::Protocol));
        r.push(OpCode::Binary, false, b"ab").unwrap();
        assert_eq!(r.push(OpCode::Text, true, b"x"), Err(CloseReason::Protocol), "a new message mid-way");
        let mut r = Reassembler::new(4);
        r.push(OpCode::Binary, false, b"abc").unwrap();
        assert_eq!(r.push(OpCode::Continuation, true, b"de"), Err(CloseReason::TooBig));
        let mut r = Reassembler::new(4);
        assert_eq!(r.push(OpCode::Binary, false, b"abcde"), Err(CloseReason::TooBig), "a first fragment");
        assert_eq!(r.push(OpCode::Text, true, b"abcde"), Err(CloseReason::TooBig), "a whole frame");
        let mut r = Reassembler::new(4);
        r.push(OpCode::Text, false, &[0xe2, 0x82]).unwrap();
        assert_eq!(r.push(OpCode::Continuation, true, &[0x28]), Err(CloseReason::BadUtf8));
        let mut r = Reassembler::new(4);
        r.push(OpCode::Text, false, &[0xe2, 0x82]).unwrap();
        let (_, m) = r.push(OpCode::Continuation, true, &[0xac]).unwrap().unwrap();
        assert_eq!(&m[..], "€".as_bytes(), "UTF-8 split across frames is fine");
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_breaks_it() {
        let mut r = Reassembler::new(100);
        r.push(OpCode::Text, false, "κόσμε".as_bytes()).unwrap();
        // 0xED 0xA0 starts a UTF-16 surrogate: no continuation can make it valid.
        assert_eq!(r.push(OpCode::Continuation, false, &[0xed, 0xa0]), Err(CloseReason::BadUtf8));
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(OpCode::Text, false, &[b'a', 0xff]), Err(CloseReason::BadUtf8), "first fragment");
        let mut r = Reassembler::new(100);
        r.push(OpCode::Text, false, &[0xf0]).unwrap();
        assert_eq!(
            r.push(OpCode::Continuation, true, &[0x9f, 0x98]),
            Err(CloseReason::BadUtf8),
            "cut at the end"
        );
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(OpCode::Text, true, &[0xc3]), Err(CloseReason::BadUtf8), "single frame");
        let mut r = Reassembler::new(100);
        r.push(OpCode::Binary, false, &[0xff]).unwrap();
        assert!(r.push(OpCode::Continuation, true, &[0xfe]).unwrap().is_some(), "binary is not UTF-8");
    }
}
