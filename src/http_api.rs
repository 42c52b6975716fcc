//! The HTTP API for game back-ends: read a room, read its recent changes, post a change, read
//! presence, post a broadcast; and the HTTP response helpers the server's other routes use.
//! Errors are always JSON `{"code":..,"message":..}`, with the status each [`ErrorCode`] maps to
//! ([`status_of`], the one place that decides it). Reads never create a room.
//!
//! Request bodies are read only by [`read_json`], within `--body-timeout` (else 408), up to
//! `--max-message-bytes` (else 413), and charged to `--max-body-bytes-in-flight` as they arrive
//! (else 503) until the request ends. A response sent before its body was read to the end says
//! `Connection: close`, and [`RequestBody`] marks the connection so the server closes it by
//! lingering: the client can then finish sending and still read that response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::{App, BodyCharge};
use crate::auth::{AuthError, Identity, Permission};
use crate::ids::{ClientId, ClientReqId, Rev, RoomId};
use crate::metrics::Refusal;
use crate::protocol::Reject;
use crate::protocol::{self, ErrorCode};
use crate::room::{Change, ChangeRequest, Extras, Outcome, Room, TimeTravel};
use crate::store::IdempotencyKey;

/// Every response body the server sends.
pub type Body = Full<Bytes>;

/// The HTTP status for an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Conflict | ErrorCode::Stale | ErrorCode::TestFailed | ErrorCode::Duplicate => {
            StatusCode::CONFLICT
        }
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Forbidden | ErrorCode::OriginNotAllowed => StatusCode::FORBIDDEN,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        ErrorCode::Gone => StatusCode::GONE,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::Draining
        | ErrorCode::TooManyConnections
        | ErrorCode::TooManyRooms
        | ErrorCode::Overloaded
        | ErrorCode::MemoryFull
        | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Invalid
        | ErrorCode::BadMessage
        | ErrorCode::BadUpgrade
        | ErrorCode::BadRoom
        | ErrorCode::BadSince
        | ErrorCode::BadBody => StatusCode::BAD_REQUEST,
    }
}

/// Query parameters as (name, value) pairs, percent-decoded.
pub fn query_pairs<B>(req: &Request<B>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(protocol::encode(body)))
        .expect("valid response")
}

/// A JSON error response, with the status its code maps to.
pub fn json_error(code: ErrorCode, message: &str) -> Response<Body> {
    json(status_of(code), &json!({"code": code, "message": message}))
}

/// A JSON error as the raw bytes of a complete HTTP/1.1 response that closes the connection, for
/// answering a socket that is refused before hyper serves it.
pub fn raw_json_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let body = protocol::encode(&json!({"code": code, "message": message}));
    let status = status_of(code);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// `resp`, telling the client that the connection closes after it (the request body was not
/// read to its end, so the connection cannot carry another request).
fn closing(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    resp
}

/// A request's body, read by [`read_json`] or not at all. Dropped before its end (refused, timed
/// out, or never read), it sets its connection's `unread` flag, which makes the server close that
/// connection by lingering (`server::linger`) rather than at once: closing a socket with unread
/// bytes makes the kernel send a reset, and clients that write their whole request before reading
/// (Node's fetch, Python's urllib) then report a broken pipe instead of the response.
pub struct RequestBody {
    inner: Incoming,
    ended: bool,
    unread: Arc<AtomicBool>,
}

impl RequestBody {
    pub fn new(inner: Incoming, unread: Arc<AtomicBool>) -> Self {
        RequestBody { inner, ended: false, unread }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if !hyper::body::Body::is_end_stream(self) {
            self.unread.store(true, Ordering::Release);
        }
    }
}

/// The answer to a request whose token is missing or refused: 401 with the JSON error body and
/// `WWW-Authenticate: Bearer` (RFC 6750).
pub fn unauthorized(e: &AuthError) -> Response<Body> {
    let mut resp = json_error(ErrorCode::Unauthorized, &e.to_string());
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    resp
}

/// Who sent `req` (its `Authorization: Bearer` token), if they hold `needed` in room `id`;
/// else the 401 or 403 to answer.
fn authorize<B>(
    app: &App,
    req: &Request<B>,
    id: &RoomId,
    needed: Permission,
) -> Result<Identity, Box<Response<Body>>> {
    let identity = app.auth.from_request(req.headers(), None).map_err(|e| Box::new(unauthorized(&e)))?;
    if identity.allows(id, needed) {
        return Ok(identity);
    }
    let message = match needed {
        Permission::Read => format!("your token does not grant read in room {id}"),
        Permission::Write => format!("your token does not grant write in room {id}"),
        Permission::Admin => format!("your token does not grant admin in room {id}"),
    };
    Err(Box::new(json_error(ErrorCode::Forbidden, &message)))
}

/// Routes `/v1/rooms/{room}/{tail}` (everything but the WebSocket). Reads need `read` in the
/// room, writes `write` (checked before the body is read).
pub async fn handle(app: &App, req: Request<RequestBody>, id: &RoomId, tail: &str) -> Response<Body> {
    let needed = match (req.method(), tail) {
        (&Method::GET, "" | "changes" | "presence") => Some(Permission::Read),
        (&Method::POST, "changes" | "broadcast") => Some(Permission::Write),
        _ => None,
    };
    let identity = match needed.map(|needed| authorize(app, &req, id, needed)) {
        Some(Ok(identity)) => Some(identity),
        // The body, if any, is left unread: the connection closes after the answer.
        Some(Err(resp)) if needed == Some(Permission::Write) => return closing(*resp),
        Some(Err(resp)) => return *resp,
        None => None,
    };
    // Reverting anyone's change takes a token granting admin (open mode grants everyone admin).
    let admin = identity.as_ref().is_some_and(|i| i.user.is_some() && i.allows(id, Permission::Admin));
    let user: Option<Arc<str>> = identity.and_then(|i| i.user).map(Arc::from);
    match (req.method().clone(), tail) {
        (Method::GET, "") => {
            let rev = query_pairs(&req).into_iter().find(|(k, _)| k == "rev").map(|(_, v)| v);
            match rev {
                Some(rev) => get_room_at(app.rooms.get(id).as_deref(), &rev),
                None => get_room(app.rooms.get(id).as_deref()),
            }
        }
        (Method::GET, "changes") => {
            let q = query_pairs(&req);
            let find = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            get_changes(app, id, find("since"), find("limit")).await
        }
        // The body's charge is held until the change is handled.
        (Method::POST, "changes") => {
            let key = match idempotency_key(req.headers()) {
                Ok(key) => key,
                Err(resp) => return closing(*resp),
            };
            match read_json(app, req).await {
                Ok((body, _charge)) => post_change(app, id, body, user, admin, key).await,
                Err(resp) => resp,
            }
        }
        (Method::GET, "presence") => {
            let peers = app.rooms.get(id).map(|r| r.presence.online().1).unwrap_or_default();
            json(StatusCode::OK, &json!({"peers": peers}))
        }
        (Method::POST, "broadcast") => match read_json(app, req).await {
            Ok((body, _charge)) => post_broadcast(app, id, body),
            Err(resp) => resp,
        },
        (_, "" | "changes" | "presence" | "broadcast") => {
            json_error(ErrorCode::MethodNotAllowed, "method not allowed here")
        }
        _ => json_error(ErrorCode::NotFound, &format!("no route /v1/rooms/{id}/{tail}")),
    }
}

/// Reads a JSON body: in full within `--body-timeout` (408), at most `--max-message-bytes` (413,
/// at once when `Content-Length` says so, else as soon as the bytes go over), charged as the bytes
/// arrive to `--max-body-bytes-in-flight` (503). The charge is returned with the value, to be held
/// until the request is handled; on a refusal it is released when this returns.
pub async fn read_json(
    app: &App,
    req: Request<RequestBody>,
) -> Result<(Value, BodyCharge<'_>), Response<Body>> {
    let limit = app.config.max_message_bytes as usize;
    let too_large =
        || closing(json_error(ErrorCode::TooLarge, &format!("body exceeds --max-message-bytes ({limit})")));
    let overloaded = || {
        Refusal::MaxBodyBytesInFlight.count();
        closing(json_error(
            ErrorCode::Overloaded,
            "the server holds --max-body-bytes-in-flight of request bodies; retry later",
        ))
    };
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    let Some(mut charge) = app.body_charge() else {
        return Err(overloaded());
    };
    let mut body = req.into_body();
    let deadline = tokio::time::Instant::now() + app.config.body_timeout;
    let mut bytes = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => return Err(json_error(ErrorCode::BadBody, &e.to_string())),
            Err(_) => {
                Refusal::BodyTimeout.count();
                return Err(closing(json_error(
                    ErrorCode::Timeout,
                    &format!("the body did not arrive within --body-timeout ({:?})", app.config.body_timeout),
                )));
            }
        };
        // Trailers carry nothing we read.
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > limit {
            return Err(too_large());
        }
        if !charge.add(data.len()) {
            return Err(overloaded());
        }
        bytes.extend_from_slice(&data);
    }
    let value = protocol::json::from_slice(&bytes)
        .map_err(|e| json_error(ErrorCode::BadMessage, &format!("body: {e}")))?;
    Ok((value, charge))
}

fn get_room(room: Option<&Room>) -> Response<Body> {
    match room {
        Some(r) => {
            let (rev, state) = r.state();
            json(StatusCode::OK, &json!({"epoch": r.epoch().as_str(), "rev": rev.0, "state": state}))
        }
        None => json(StatusCode::OK, &json!({"epoch": null, "rev": 0, "state": {}})),
    }
}

/// `GET /v1/rooms/{room}?rev=N`: the state as it was at revision N (time travel).
fn get_room_at(room: Option<&Room>, rev: &str) -> Response<Body> {
    let Ok(rev) = rev.parse::<u64>() else {
        return json_error(ErrorCode::Invalid, "?rev=N must be a revision number");
    };
    let Some(room) = room else {
        return if rev == 0 {
            json(StatusCode::OK, &json!({"epoch": null, "rev": 0, "state": {}}))
        } else {
            json_error(ErrorCode::Invalid, &format!("rev {rev} is above the current revision 0"))
        };
    };
    match room.state_at(Rev(rev)) {
        Ok(state) => {
            json(StatusCode::OK, &json!({"epoch": room.epoch().as_str(), "rev": rev, "state": state}))
        }
        Err(e @ TimeTravel::Future { .. }) => {
            json_error(ErrorCode::Invalid, &format!("rev {rev} is in the future: {e}"))
        }
        Err(e @ TimeTravel::Gone { .. }) => json_error(
            ErrorCode::Gone,
            &format!("the state at rev {rev} can no longer be reconstructed: {e}"),
        ),
    }
}

/// Most changes one `GET .../changes` returns (`?limit=` may ask for fewer).
pub const MAX_CHANGES_PAGE: usize = 10_000;

/// `GET .../changes?since=N[&limit=K]`: the changes after N, oldest first, from the ring, or
/// from the store when N is older than the ring; paged by `limit` (then `to` is where the next
/// page starts). 410 only when they are gone from the ring and the store alike.
async fn get_changes(app: &App, id: &RoomId, since: Option<&str>, limit: Option<&str>) -> Response<Body> {
    let Some(since) = since.and_then(|s| s.parse::<u64>().ok()) else {
        return json_error(ErrorCode::BadSince, "?since=REV (a revision number) is required");
    };
    let limit = match limit.map(str::parse::<usize>) {
        None => MAX_CHANGES_PAGE,
        Some(Ok(n)) if n > 0 => n.min(MAX_CHANGES_PAGE),
        Some(_) => return json_error(ErrorCode::Invalid, "?limit=K must be a positive number"),
    };
    let Some(room) = app.rooms.get(id) else {
        return if since == 0 {
            json(StatusCode::OK, &json!({"epoch": null, "from": 0, "to": 0, "changes": []}))
        } else {
            json_error(ErrorCode::BadSince, &format!("since {since} is above the current revision 0"))
        };
    };
    let head = room.rev();
    if since > head.0 {
        return json_error(
            ErrorCode::BadSince,
            &format!("since {since} is above the current revision {head}"),
        );
    }
    let mut changes = Vec::new();
    let entries: Vec<Value> = if room.changes_after(Rev(since), &mut changes) {
        changes.iter().take(limit).map(|c| c.to_json()).collect()
    } else {
        match stored_changes(app, id, since, head.0, limit).await {
            Ok(entries) => entries,
            Err(resp) => return *resp,
        }
    };
    let to = entries.last().and_then(|e| e["rev"].as_u64()).unwrap_or(since);
    json(
        StatusCode::OK,
        &json!({"epoch": room.epoch().as_str(), "from": since, "to": to, "changes": entries}),
    )
}

/// The changes after `since` (up to `head`) as the store holds them, read on a blocking thread
/// (a page of the log from disk, or a Redis round trip), not on this async worker.
async fn stored_changes(
    app: &App,
    id: &RoomId,
    since: u64,
    head: u64,
    limit: usize,
) -> Result<Vec<Value>, Box<Response<Body>>> {
    let gone = || {
        Box::new(json_error(ErrorCode::Gone, &format!("changes after {since} are no longer in the history")))
    };
    let Some(store) = app.rooms.store().cloned() else { return Err(gone()) };
    let room = id.clone();
    let read = tokio::task::spawn_blocking(move || store.changes(&room, since, limit)).await;
    let records = match read {
        Ok(Ok(records)) => records,
        Ok(Err(e)) => {
            tracing::error!(room = %id, error = %e, "cannot read stored changes");
            let message = format!("the stored history cannot be read: {e}");
            return Err(Box::new(json_error(ErrorCode::Unavailable, &message)));
        }
        Err(_) => {
            return Err(Box::new(json_error(ErrorCode::Unavailable, "the stored history cannot be read")));
        }
    };
    if records.first().is_none_or(|r| r.rev != since + 1) {
        return Err(gone());
    }
    Ok(records.iter().take_while(|r| r.rev <= head).map(crate::room::change::record_json).collect())
}

/// The `Idempotency-Key` header, if any (at most 255 visible ASCII characters).
fn idempotency_key(headers: &hyper::HeaderMap) -> Result<Option<String>, Box<Response<Body>>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    match v.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
            Ok(Some(k.to_string()))
        }
        _ => Err(Box::new(json_error(
            ErrorCode::Invalid,
            "Idempotency-Key must be 1-255 visible ASCII characters",
        ))),
    }
}

/// `POST .../changes`: a plain change, or a `reverts` (of one's own change, or anyone's with
/// `admin` in the room). Answered once the store has written it (or rolled it back: 503
/// `unavailable`). With an `Idempotency-Key`, a retry of the same request gets the first
/// answer and is not applied again (a different request under the same key gets 422).
async fn post_change(
    app: &App,
    id: &RoomId,
    body: Value,
    user: Option<Arc<str>>,
    admin: bool,
    key: Option<String>,
) -> Response<Body> {
    let fingerprint = crc32c_fingerprint(&body, user.as_deref());
    let Value::Object(mut m) = body else {
        return json_error(ErrorCode::BadMessage, "body must be a JSON object");
    };
    let room = match app.room_for_write(id) {
        Ok(r) => r,
        Err(e) => return json_error(e.code(), &e.to_string()),
    };
    let idempotency = key.map(|key| IdempotencyKey { key, fingerprint });
    if let Some(k) = &idempotency
        && let Some(resp) = replay(&room, k).await
    {
        return resp;
    }
    let c = protocol::decode_change_body(&mut m, ClientReqId(0));
    if let Some((code, message)) = c.refusal {
        return json_error(code, &message);
    }
    let (mode, ops) = match (c.mode, c.ops) {
        (Ok(mode), Ok(ops)) => (mode, ops),
        (Err(message), _) => return json_error(ErrorCode::Invalid, &message),
        (_, Err(e)) => return json_error(e.clone().into(), &e.to_string()),
    };
    let extras = Extras {
        kind: c.kind,
        meta: c.meta,
        may_revert_any: admin,
        idempotency: idempotency.clone(),
        ..Extras::default()
    };
    let req = ChangeRequest {
        author: ClientId::HTTP,
        user,
        client_req_id: None,
        base_rev: c.base_rev,
        mode,
        ops,
        extras,
    };
    if room.is_follower() {
        return forward_change(app, &room, req, idempotency.as_ref()).await;
    }
    let mut written = room.subscribe();
    // A room deleted (admin API) after the look-up refuses the change with `gone` (410).
    let committed = app.commit(&room, req);
    room.deliver();
    match committed {
        Ok(change) => match settle(&room, &change, &mut written).await {
            Outcome::Written => json(StatusCode::OK, &change.http_response()),
            Outcome::Deleted => json_error(
                ErrorCode::Gone,
                "the room was deleted (admin API) before the change was stored; it went with the room",
            ),
            Outcome::RolledBack => unavailable(&room),
            Outcome::Pending => unconfirmed(&room, change.rev.0),
        },
        // The same key committed meanwhile (a concurrent retry): its answer.
        Err(r) if r.code == ErrorCode::Duplicate && idempotency.is_some() => {
            let k = idempotency.as_ref().expect("checked");
            replay(&room, k).await.unwrap_or_else(|| unavailable(&room))
        }
        Err(r) => json(status_of(r.code), &r),
    }
}

/// [`post_change`] in a room this node follows (cluster mode): the change goes to the owner,
/// and the answer is the change as committed, once this node has taken its record, or the
/// owner's reject.
async fn forward_change(
    app: &App,
    room: &Arc<Room>,
    req: ChangeRequest,
    idempotency: Option<&IdempotencyKey>,
) -> Response<Body> {
    let answer = match app.forward_http(room, req) {
        Ok(answer) => answer,
        Err(r) => return json(status_of(r.code), &r),
    };
    match tokio::time::timeout(SETTLE_TIMEOUT, answer).await {
        Ok(Ok(Ok(change))) => json(StatusCode::OK, &change.http_response()),
        // The same key committed before (through any node): its answer.
        Ok(Ok(Err(r))) if r.code == ErrorCode::Duplicate && idempotency.is_some() => {
            let k = idempotency.expect("checked");
            replay(room, k).await.unwrap_or_else(|| unavailable(room))
        }
        Ok(Ok(Err(r))) => json(status_of(r.code), &r),
        // No answer in time, or the room's copy went away (it could not follow its owner).
        Ok(Err(_)) | Err(_) => unavailable_saying(
            room,
            format!(
                "the room's owner did not answer in time (within {} s); the change may still be applied: \
                 retry with the same Idempotency-Key to learn its outcome, or read the room",
                SETTLE_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// 503 `unavailable`: the store failed the change and the room rolled it back.
fn unavailable(room: &Room) -> Response<Body> {
    unavailable_saying(room, "the change could not be stored; it was not applied: send it again".into())
}

fn unavailable_saying(room: &Room, message: String) -> Response<Body> {
    let r = Reject::new(ErrorCode::Unavailable, message, room.rev().0);
    crate::app::count_reject(&r);
    json(status_of(r.code), &r)
}

/// The store did not confirm within [`SETTLE_TIMEOUT`] (a disk stalled, not failed): the change
/// may still be stored and applied, so the answer must not say it was not. 503 `unavailable`,
/// naming the revision it would have, so the sender can read the room or retry with the same
/// `Idempotency-Key` to learn the outcome.
fn unconfirmed(room: &Room, rev: u64) -> Response<Body> {
    let message = format!(
        "the store did not confirm the change within {} s; it may still be applied as revision {rev}: \
         retry with the same Idempotency-Key to learn its outcome, or read the room",
        SETTLE_TIMEOUT.as_secs()
    );
    unavailable_saying(room, message)
}

/// The answer an `Idempotency-Key` already got, once its change is written; `None` when the
/// key is new (or its change was rolled back).
async fn replay(room: &Arc<Room>, key: &IdempotencyKey) -> Option<Response<Body>> {
    let mut written = room.subscribe();
    match room.idempotent_answer(key)? {
        Err(()) => Some(json_error(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        )),
        Ok((rev, response)) => {
            let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
            while room.rev() < rev {
                if tokio::time::timeout_at(deadline, written.changed()).await.is_err() {
                    return Some(unconfirmed(room, rev.0));
                }
                room.idempotent_answer(key)?.ok()?;
            }
            Some(json(StatusCode::OK, &response))
        }
    }
}

/// How long an HTTP write waits for the store before answering `unavailable`.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the store has written `change` or the room rolled it back.
async fn settle(room: &Room, change: &Change, written: &mut tokio::sync::watch::Receiver<Rev>) -> Outcome {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        match room.outcome(change) {
            Outcome::Pending => {}
            done => return done,
        }
        if tokio::time::timeout_at(deadline, written.changed()).await.is_err() {
            return Outcome::Pending;
        }
    }
}

/// What identifies a request under its `Idempotency-Key`: its body and its user.
fn crc32c_fingerprint(body: &Value, user: Option<&str>) -> u64 {
    let bytes = serde_json::to_vec(body).expect("JSON values serialise");
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes), user.unwrap_or("").as_bytes());
    (u64::from(crc) << 32) | (bytes.len() as u64 & 0xffff_ffff)
}

fn post_broadcast(app: &App, id: &RoomId, body: Value) -> Response<Body> {
    let Value::Object(mut m) = body else {
        return json_error(ErrorCode::BadMessage, "body must be {\"data\": <any JSON>}");
    };
    let Some(data) = m.remove("data") else {
        return json_error(ErrorCode::BadMessage, "body must be {\"data\": <any JSON>}");
    };
    // Broadcasting to a room nobody is in reaches nobody; it does not create the room.
    if let Some(room) = app.rooms.get(id) {
        metrics::counter!(crate::metrics::BROADCASTS).increment(1);
        app.attach_room(&room);
        room.broadcasts.send(ClientId::HTTP, &data);
    }
    json(StatusCode::OK, &json!({"ok": true}))
}
