//! Reassembly of fragmented WebSocket messages (RFC 6455 §5.4) under the message size cap.
//!
//! Pure: it is fed each data frame's opcode, FIN bit and payload, and answers with a whole message,
//! "not yet", or the close reason the frame deserves. Invariants: at most one message is being
//! assembled; a reassembled message never exceeds the cap; a reassembled text message is valid
//! UTF-8 (single-frame text is checked by fastwebsockets as it reads).

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
    partial: Option<(OpCode, Vec<u8>)>,
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
    /// The reason to close with: `Protocol` for a frame out of sequence, `TooBig` past the cap,
    /// `BadUtf8` for a reassembled text message that is not UTF-8.
    pub fn push<'a>(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &'a [u8],
    ) -> Result<Option<Message<'a>>, CloseReason> {
        match opcode {
            OpCode::Text | OpCode::Binary if self.partial.is_some() => Err(CloseReason::Protocol),
            OpCode::Text | OpCode::Binary if fin => Ok(Some((opcode, Cow::Borrowed(payload)))),
            OpCode::Text | OpCode::Binary => {
                self.partial = Some((opcode, payload.to_vec()));
                Ok(None)
            }
            OpCode::Continuation => {
                let Some((_, buf)) = self.partial.as_mut() else { return Err(CloseReason::Protocol) };
                buf.extend_from_slice(payload);
                if buf.len() > self.max {
                    return Err(CloseReason::TooBig);
                }
                if !fin {
                    return Ok(None);
                }
                let (op, message) = self.partial.take().expect("checked above");
                if op == OpCode::Text && std::str::from_utf8(&message).is_err() {
                    return Err(CloseReason::BadUtf8);
                }
                Ok(Some((op, Cow::Owned(message))))
            }
            // Control frames are not part of a message; the read loop handles them first.
            OpCode::Close | OpCode::Ping | OpCode::Pong => Err(CloseReason::Protocol),
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
        r.push(OpCode::Binary, false, b"ab").unwrap();
        assert_eq!(r.push(OpCode::Text, true, b"x"), Err(CloseReason::Protocol), "a new message mid-way");
        let mut r = Reassembler::new(4);
        r.push(OpCode::Binary, false, b"abc").unwrap();
        assert_eq!(r.push(OpCode::Continuation, true, b"de"), Err(CloseReason::TooBig));
        let mut r = Reassembler::new(4);
        r.push(OpCode::Text, false, &[0xe2, 0x82]).unwrap();
        assert_eq!(r.push(OpCode::Continuation, true, &[0x28]), Err(CloseReason::BadUtf8));
        let mut r = Reassembler::new(4);
        r.push(OpCode::Text, false, &[0xe2, 0x82]).unwrap();
        let (_, m) = r.push(OpCode::Continuation, true, &[0xac]).unwrap().unwrap();
        assert_eq!(&m[..], "€".as_bytes(), "UTF-8 split across frames is fine");
    }
}
