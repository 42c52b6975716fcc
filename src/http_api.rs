//! The HTTP API for game back-ends: read a room, read its recent changes, post a change, read
//! presence, post a broadcast; and the HTTP response helpers the server's other routes use.
//! Errors are always JSON `{"code":..,"message":..}`, with the status each [`ErrorCode`] maps to
//! ([`status_of`], the one place that decides it). Reads never create a room.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::ids::{ClientId, ClientReqId, Rev, RoomId};
use crate::protocol::{self, ErrorCode};
use crate::room::{ChangeRequest, Room};

/// Every response body the server sends.
pub type Body = Full<Bytes>;

/// The HTTP status for an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Conflict | ErrorCode::Stale | ErrorCode::TestFailed | ErrorCode::Duplicate => {
            StatusCode::CONFLICT
        }
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        ErrorCode::Gone => StatusCode::GONE,
        ErrorCode::Draining
        | ErrorCode::TooManyConnections
        | ErrorCode::TooManyRooms
        | ErrorCode::MemoryFull => StatusCode::SERVICE_UNAVAILABLE,
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

/// Routes `/v1/rooms/{room}/{tail}` (everything but the WebSocket).
pub async fn handle(app: &App, req: Request<Incoming>, id: &RoomId, tail: &str) -> Response<Body> {
    match (req.method().clone(), tail) {
        (Method::GET, "") => get_room(app.rooms.get(id).as_deref()),
        (Method::GET, "changes") => {
            let since = query_pairs(&req).into_iter().find(|(k, _)| k == "since").map(|(_, v)| v);
            get_changes(app.rooms.get(id).as_deref(), since.as_deref())
        }
        (Method::POST, "changes") => match read_json(app, req).await {
            Ok(body) => post_change(app, id, body),
            Err(resp) => resp,
        },
        (Method::GET, "presence") => {
            let peers = app.rooms.get(id).map(|r| r.presence.online().1).unwrap_or_default();
            json(StatusCode::OK, &json!({"peers": peers}))
        }
        (Method::POST, "broadcast") => match read_json(app, req).await {
            Ok(body) => post_broadcast(app, id, body),
            Err(resp) => resp,
        },
        (_, "" | "changes" | "presence" | "broadcast") => {
            json_error(ErrorCode::MethodNotAllowed, "method not allowed here")
        }
        _ => json_error(ErrorCode::NotFound, &format!("no route /v1/rooms/{id}/{tail}")),
    }
}

async fn read_json(app: &App, req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let limit = app.config.max_message_bytes as usize;
    let too_large =
        || json_error(ErrorCode::TooLarge, &format!("body exceeds --max-message-bytes ({limit})"));
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    let bytes: Bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => return Err(json_error(ErrorCode::BadBody, &e.to_string())),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| json_error(ErrorCode::BadMessage, &format!("body is not JSON: {e}")))
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

fn get_changes(room: Option<&Room>, since: Option<&str>) -> Response<Body> {
    let Some(since) = since.and_then(|s| s.parse::<u64>().ok()) else {
        return json_error(ErrorCode::BadSince, "?since=REV (a revision number) is required");
    };
    let Some(room) = room else {
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
    if !room.changes_after(Rev(since), &mut changes) {
        return json_error(ErrorCode::Gone, &format!("changes after {since} are no longer in the history"));
    }
    let to = changes.last().map_or(since, |c| c.rev.0);
    let entries: Vec<Value> = changes
        .iter()
        .map(|c| {
            let mut e = json!({"rev": c.rev.0, "client": c.author.to_string(), "ops": c.ops});
            if let Some(id) = c.client_req_id {
                e["clientReqId"] = id.0.into();
            }
            e
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({"epoch": room.epoch().as_str(), "from": since, "to": to, "changes": entries}),
    )
}

fn post_change(app: &App, id: &RoomId, body: Value) -> Response<Body> {
    let Value::Object(mut m) = body else {
        return json_error(ErrorCode::BadMessage, "body must be a JSON object");
    };
    let c = protocol::decode_change_body(&mut m, ClientReqId(0));
    let (mode, ops) = match (c.mode, c.ops) {
        (Ok(mode), Ok(ops)) => (mode, ops),
        (Err(message), _) => return json_error(ErrorCode::Invalid, &message),
        (_, Err(e)) => return json_error(e.clone().into(), &e.to_string()),
    };
    let room = match app.room_for_write(id) {
        Ok(r) => r,
        Err(e) => return json_error(e.code(), &e.to_string()),
    };
    let req = ChangeRequest { author: ClientId::HTTP, client_req_id: None, base_rev: c.base_rev, mode, ops };
    match app.commit(&room, req) {
        Ok(change) => json(StatusCode::OK, &json!({"rev": change.rev.0})),
        Err(r) => json(status_of(r.code), &r),
    }
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
        room.broadcasts.send(ClientId::HTTP, &data);
    }
    json(StatusCode::OK, &json!({"ok": true}))
}
