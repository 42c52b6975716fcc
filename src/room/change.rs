//! What a change is on its way in ([`ChangeRequest`]) and once committed ([`Change`]): the ops as
//! applied, their inverse, the paths they touched, and every byte form it is sent in, encoded
//! once at commit.
//!
//! Invariant: `wire` is a zero-copy slice of `delta_frame`, so a committed change's bytes are held
//! once; `wire_ack` exists exactly when the author gave a `clientReqId`. Every entry carries the
//! commit time `ts`; a revert's entries carry `reverts`, and its ack its ops as well. What a change keeps alive
//! ([`Change::footprint`]) is what the ring's byte budget and the memory budget count.

use std::mem::size_of;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use super::history::UserKey;
use crate::ids::{ClientId, ClientReqId, Rev};
use crate::memory::{self, Heap, Origin};
use crate::patch::{Applied, Op, Pointer};
use crate::protocol::{self, ChangeKind, EntryHead, Mode, Stacks};

/// A change submitted for commit.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub author: ClientId,
    /// The author's user (a token's `sub`), shown in the change's entries; `None` in open mode.
    pub user: Option<Arc<str>>,
    pub client_req_id: Option<ClientReqId>,
    /// The revision the author had seen; required by `rev` and `paths` modes.
    pub base_rev: Option<Rev>,
    pub mode: Mode,
    pub ops: Vec<Op>,
    /// What it reverts, its `meta`, and whether its author may revert anyone's change.
    pub extras: Extras,
}

impl ChangeRequest {
    /// The request as JSON, for a node that forwards it to the room's owner (cluster mode): every
    /// field the owner needs to commit it as its author's, an HTTP `Idempotency-Key` included.
    pub fn to_wire(&self) -> Value {
        let (kind, reverts) = match self.extras.kind {
            ChangeKind::Plain => (0, None),
            ChangeKind::Undo => (1, None),
            ChangeKind::Redo => (2, None),
            ChangeKind::Reverts(r) => (3, Some(r.0)),
        };
        let ops: Value = serde_json::from_slice(&protocol::encode_ops(&self.ops)).expect("ops are JSON");
        serde_json::json!({
            "author": self.author.0,
            "user": self.user.as_deref(),
            "clientReqId": self.client_req_id.map(|c| c.0),
            "baseRev": self.base_rev.map(|r| r.0),
            "mode": self.mode.as_str(),
            "ops": ops,
            "kind": kind,
            "reverts": reverts,
            "meta": self.extras.meta,
            "mayRevertAny": self.extras.may_revert_any,
            "session": self.extras.session.as_deref(),
            "idempotency": self.extras.idempotency.as_ref().map(|k| serde_json::json!({"key": k.key, "fingerprint": k.fingerprint})),
        })
    }

    /// A request [`to_wire`](ChangeRequest::to_wire) wrote.
    ///
    /// # Errors
    /// When `v` is not what `to_wire` writes.
    pub fn from_wire(v: &Value) -> Result<ChangeRequest, String> {
        let u64_of = |k: &str| v.get(k).and_then(Value::as_u64);
        let str_of = |k: &str| v.get(k).and_then(Value::as_str).map(Arc::<str>::from);
        let author = u64_of("author").ok_or("no author")?;
        let mode = v.get("mode").and_then(Value::as_str).and_then(Mode::parse).ok_or("no mode")?;
        let ops = crate::patch::parse_patch(v.get("ops").cloned().unwrap_or(Value::Null))
            .map_err(|e| format!("ops: {e}"))?;
        let kind = match (u64_of("kind"), u64_of("reverts")) {
            (Some(0), _) => ChangeKind::Plain,
            (Some(1), _) => ChangeKind::Undo,
            (Some(2), _) => ChangeKind::Redo,
            (Some(3), Some(r)) => ChangeKind::Reverts(Rev(r)),
            _ => return Err("no kind".into()),
        };
        let meta = v.get("meta").filter(|m| !m.is_null()).cloned();
        Ok(ChangeRequest {
            author: ClientId(author),
            user: str_of("user"),
            client_req_id: u64_of("clientReqId").map(ClientReqId),
            base_rev: u64_of("baseRev").map(Rev),
            mode,
            ops,
            extras: Extras {
                kind,
                meta,
                may_revert_any: v.get("mayRevertAny").and_then(Value::as_bool).unwrap_or(false),
                session: str_of("session"),
                idempotency: v.get("idempotency").and_then(|k| {
                    Some(crate::store::IdempotencyKey {
                        key: k.get("key")?.as_str()?.to_string(),
                        fingerprint: k.get("fingerprint")?.as_u64()?,
                    })
                }),
            },
        })
    }
}

/// The parts of a change request beyond plain ops (all absent by default).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// A plain change, or an undo, redo or `reverts` (then `ops` is empty: the room computes
    /// them, and `mode` `overwrite` applies the revert despite conflicts).
    pub kind: ChangeKind,
    /// The client's `meta` object, stored and relayed verbatim.
    pub meta: Option<Value>,
    /// The author holds `admin` in the room: a `reverts` may name anyone's change.
    pub may_revert_any: bool,
    /// The author's session token, stored with the change so its dedupe state survives a
    /// restart (`None` over HTTP).
    pub session: Option<Arc<str>>,
    /// An HTTP `Idempotency-Key` and its request's fingerprint: a retry is answered from the
    /// change it committed, never applied twice.
    pub idempotency: Option<crate::store::IdempotencyKey>,
}

/// A committed change, shared by the ring and every writer that sends it.
#[derive(Debug)]
pub struct Change {
    pub rev: Rev,
    pub author: ClientId,
    /// The author's user (a token's `sub`); `None` in open mode.
    pub user: Option<Arc<str>>,
    pub client_req_id: Option<ClientReqId>,
    /// The ops as applied.
    pub ops: Vec<Op>,
    /// Applying these to the state at `rev` gives the state at `rev - 1`.
    pub inverse: Vec<Op>,
    /// Paths read or written, for `paths`-mode conflict checks.
    pub touched: Vec<Pointer>,
    /// The arrays its id-addressed list ops edited (`paths` mode treats them apart: see
    /// `conflict`).
    pub list_touched: Vec<Pointer>,
    pub committed_at: Instant,
    /// Commit time, ms since the Unix epoch (`ts` in its entries).
    pub ts: u64,
    /// A plain change, an undo, a redo or a `reverts`.
    pub kind: ChangeKind,
    /// The revision this change reverted (undo, redo, `reverts`).
    pub reverts: Option<Rev>,
    /// The client's `meta` object.
    pub meta: Option<Value>,
    /// Whose undo stack it went on (see [`UserKey`]); `None` for HTTP changes without a user.
    pub key: Option<UserKey>,
    /// Set when the store could not write it and the room rolled it back (it was never
    /// delivered; its author is rejected `unavailable`).
    pub rolled_back: std::sync::atomic::AtomicBool,
    /// `{"rev":..,"client":..,"ts":..,"ops":..}`, encoded once (a slice of `delta_frame`).
    pub wire: Bytes,
    /// `{"rev":..,"client":..,"ts":..,"clientReqId":..,"canUndo":..,"canRedo":..}` for the
    /// author (when it has a request id); a revert's also carries `reverts` and `ops`.
    pub wire_ack: Option<Bytes>,
    /// The whole `delta` frame `rev-1 → rev` for everyone but the author, shared by every
    /// caught-up connection.
    pub delta_frame: Bytes,
}

impl Change {
    /// Builds the committed change at `rev` from its request (whose `ops` are the ops as
    /// applied), its ops encoded once (`ops_json`), what applying them returned, and what the
    /// author's entry says: `stacks` (after this commit), `reverts`, the commit time `ts`. Also
    /// returns its [`footprint`](Change::footprint), for the ring's budget.
    pub(super) fn encode(
        rev: Rev,
        req: ChangeRequest,
        ops_json: &[u8],
        applied: Applied,
        done: Committed,
    ) -> (Arc<Change>, usize) {
        let user = req.user.as_deref();
        let meta_json =
            req.extras.meta.as_ref().map(|m| serde_json::to_vec(m).expect("JSON values serialise"));
        let head = EntryHead {
            rev,
            client: req.author,
            user,
            ts: done.ts,
            reverts: done.reverts,
            meta_json: meta_json.as_deref(),
        };
        let (delta_frame, wire) = protocol::change_frame(&head, ops_json);
        let ack_ops = done.reverts.map(|_| ops_json);
        let change = Change {
            rev,
            author: req.author,
            wire_ack: req.client_req_id.map(|id| protocol::entry_ack(&head, id, done.stacks, ack_ops)),
            user: req.user,
            client_req_id: req.client_req_id,
            ops: req.ops,
            inverse: applied.inverse,
            touched: applied.touched,
            list_touched: applied.list_touched,
            committed_at: Instant::now(),
            ts: done.ts,
            kind: req.extras.kind,
            reverts: done.reverts,
            meta: req.extras.meta,
            key: done.key,
            rolled_back: Default::default(),
            wire,
            delta_frame,
        };
        let held = change.footprint();
        (Arc::new(change), held)
    }

    /// The bytes this change keeps alive while something holds it: itself (in its `Arc`), its
    /// decoded ops and inverse (every `Value` tree, pointer and string in them), the paths it
    /// touched, and its encoded frames, each block with the allocator's overhead. A 1,000-op
    /// change holds about seven times its encoded size.
    pub fn footprint(&self) -> usize {
        self.heap().total()
    }

    /// The heap blocks behind [`Change::footprint`].
    pub fn heap(&self) -> Heap {
        // `delta_frame` was allocated with room for its header, and slicing it out as `wire`
        // gives it a shared header block; the ack is its own small block.
        let frames = Heap::block(self.delta_frame.len() + 64)
            + Heap::block(4 * size_of::<usize>())
            + Heap::block(self.wire_ack.as_ref().map_or(0, Bytes::len));
        Heap::block(2 * size_of::<usize>() + size_of::<Change>())
            + Heap::block(self.user.as_ref().map_or(0, |u| u.len() + 2 * size_of::<usize>()))
            + memory::ops_heap(&self.ops, Origin::Parsed)
            + memory::ops_heap(&self.inverse, Origin::Built)
            + memory::pointers_heap(&self.touched)
            + memory::pointers_heap(&self.list_touched)
            + self.meta.as_ref().map_or(Heap::default(), memory::value_heap)
            + frames
    }

    /// The entry as the HTTP API lists it (`GET .../changes`): everything its entries say.
    pub fn to_json(&self) -> Value {
        let mut e = serde_json::json!({"rev": self.rev.0, "client": self.author.to_string()});
        if let Some(user) = &self.user {
            e["user"] = Value::from(&**user);
        }
        if let Some(id) = self.client_req_id {
            e["clientReqId"] = id.0.into();
        }
        e["ts"] = self.ts.into();
        if let Some(r) = self.reverts {
            e["reverts"] = r.0.into();
        }
        if let Some(meta) = &self.meta {
            e["meta"] = meta.clone();
        }
        e["ops"] = serde_json::to_value(&self.ops).expect("ops serialise");
        e
    }

    /// What `POST .../changes` answers for it (and a retry with its `Idempotency-Key`).
    pub fn http_response(&self) -> Value {
        let mut body = serde_json::json!({"rev": self.rev.0, "ts": self.ts});
        if let Some(r) = self.reverts {
            body["reverts"] = r.0.into();
            body["ops"] = serde_json::to_value(&self.ops).expect("ops serialise");
        }
        body
    }

    /// The entry a given recipient should see: an ack for its own change, else the full entry.
    pub fn entry_for(&self, recipient: ClientId) -> &[u8] {
        match &self.wire_ack {
            Some(ack) if self.author == recipient => ack,
            _ => &self.wire,
        }
    }
}

/// A stored record as the HTTP API lists it (the same fields as [`Change::to_json`]).
pub fn record_json(r: &crate::store::Record) -> Value {
    let mut e = serde_json::json!({"rev": r.rev, "client": ClientId(r.author).to_string()});
    if let Some(user) = &r.user {
        e["user"] = Value::from(user.as_str());
    }
    if let Some(id) = r.client_req_id {
        e["clientReqId"] = id.into();
    }
    e["ts"] = r.ts.into();
    if let Some(rev) = r.reverts.filter(|_| r.kind != 0) {
        e["reverts"] = rev.into();
    }
    if let Some(meta) = r.meta.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()) {
        e["meta"] = meta;
    }
    e["ops"] = serde_json::from_str(&r.ops).unwrap_or(Value::Null);
    e
}

/// What the room decided at commit, for the change's entries.
#[derive(Debug, Clone)]
pub(super) struct Committed {
    pub ts: u64,
    pub reverts: Option<Rev>,
    pub key: Option<UserKey>,
    pub stacks: Stacks,
}
