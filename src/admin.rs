//! The admin HTTP API (`/v1/admin/...`): list rooms, inspect one, kick a client, close a room,
//! delete a room. It owns who may call it ([`authorize`], the one decision) and the five actions;
//! the mechanisms it drives belong to others: a connection is closed through its session's kick
//! channel (the one a takeover uses: `Sessions::kick`), a room is deleted by the registry
//! (`Rooms::remove`, which retires it first).
//!
//! Invariants: every call is authorized before anything about a room is revealed (even its
//! existence); reads never create a room; a deleted room is retired before its sessions are
//! closed, so a handle still held by a request in flight commits nothing more (`gone`), and a
//! WebSocket admitted to it either is closed here or sees it retired when it attaches
//! (`connection::serve`). Each action carried out is counted in `ringsync_admin_actions_total` and
//! logged at info with the room and action, never a token.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::header::{AUTHORIZATION, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::auth::Permission;
use crate::close::CloseReason;
use crate::config::AdminToken;
use crate::http_api::{self, Body, RequestBody, json, json_error, query_pairs};
use crate::ids::RoomId;
use crate::metrics::AdminAction;
use crate::protocol::ErrorCode;
use crate::room::Room;
use crate::store::smallest_after;

/// Rooms per page of the list when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rooms one page of the list may hold.
pub const MAX_LIMIT: usize = 1000;

/// What [`decide`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401: credentials are required and the request carried none that are valid.
    Unauthorized,
    /// 403: valid credentials without `admin` here, or, with no credentials configured at all,
    /// a caller that is not on this machine.
    Forbidden,
}

/// The request's bearer read as a client token (JWT), for [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jwt {
    /// No `--jwt-*` key is configured (open mode).
    Off,
    /// Keys are configured and the request carried no valid token.
    Invalid,
    /// A valid token, with its permission on the call's room (`None` for the list, or no
    /// permission there).
    Valid(Option<Permission>),
}

/// Who may make an admin call: the whole decision, pure so it can be tested with any peer.
///
/// - `Authorization: Bearer <the --admin-token-file secret>` (compared in constant time) grants
///   every call.
/// - A valid client token (JWT) whose `rooms` claim grants `admin` on the call's room grants the
///   room-scoped calls (details, kick, close, delete); the list is server-wide and needs the
///   admin token. A valid token without `admin` there is 403.
/// - When credentials exist (an admin token file, or `--jwt-*` keys) anything else is 401, from
///   any peer.
/// - With no credentials configured at all (open mode, no admin token), loopback peers
///   (127.0.0.0/8, ::1, and IPv4-mapped loopback) may call and any other peer is 403, so a
///   server on a public address is not open by default. The peer is the TCP peer, never a
///   forwarded header. An unknown peer counts as not loopback.
///
/// `room` is the room a call acts on (`None` for the server-wide list).
pub fn decide(
    token: Option<&AdminToken>,
    jwt: Jwt,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    room: Option<&RoomId>,
) -> Decision {
    if let (Some(token), Some(given)) = (token, bearer(headers))
        && bool::from(token.expose().ct_eq(given.as_bytes()))
    {
        return Decision::Allow;
    }
    match jwt {
        Jwt::Valid(Some(p)) if room.is_some() && p >= Permission::Admin => return Decision::Allow,
        Jwt::Valid(_) => return Decision::Forbidden,
        Jwt::Invalid => return Decision::Unauthorized,
        Jwt::Off => {}
    }
    if token.is_some() {
        return Decision::Unauthorized;
    }
    if peer.is_some_and(|p| is_loopback(p.ip())) { Decision::Allow } else { Decision::Forbidden }
}

/// [`decide`] for a request, as the response to send when it is refused.
///
/// # Errors
/// The 401 or 403 JSON error response (boxed: it is large and rare).
pub fn authorize(
    app: &App,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    room: Option<&RoomId>,
) -> Result<(), Box<Response<Body>>> {
    let jwt = if !app.auth.tokens_required() {
        Jwt::Off
    } else {
        match bearer(headers).map(|b| app.auth.verify(b)) {
            Some(Ok(identity)) => Jwt::Valid(room.and_then(|r| identity.permission(r))),
            // The admin token itself is not a JWT: `decide` checks it first.
            _ => Jwt::Invalid,
        }
    };
    match decide(app.admin_token.as_ref(), jwt, headers, peer, room) {
        Decision::Allow => Ok(()),
        Decision::Unauthorized => {
            let mut resp = json_error(
                ErrorCode::Unauthorized,
                "the admin API needs Authorization: Bearer <the --admin-token-file secret, or a token with admin on the room>",
            );
            resp.headers_mut()
                .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
            Err(Box::new(resp))
        }
        Decision::Forbidden if jwt == Jwt::Off => Err(Box::new(json_error(
            ErrorCode::Forbidden,
            "without --admin-token-file the admin API answers only loopback callers",
        ))),
        Decision::Forbidden => Err(Box::new(json_error(
            ErrorCode::Forbidden,
            "the token does not grant admin here (listing rooms needs the --admin-token-file secret)",
        ))),
    }
}

/// The credentials of `Authorization: Bearer <credentials>`, if the header says so.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// An admin route, parsed from the path under `/v1/admin`.
enum Route<'a> {
    List,
    Room(&'a str),
    Kick(&'a str),
    Close(&'a str),
}

fn parse_route(rest: &str) -> Option<Route<'_>> {
    let rest = rest.strip_prefix("/rooms")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::List);
    }
    let rest = rest.strip_prefix('/')?;
    match rest.split_once('/') {
        None => Some(Route::Room(rest)),
        Some((room, "kick")) => Some(Route::Kick(room)),
        Some((room, "close")) => Some(Route::Close(room)),
        Some(_) => None,
    }
}

/// Serves `/v1/admin/...` for a caller at `peer` (`rest` is the path after `/v1/admin`).
pub async fn handle(
    app: &Arc<App>,
    req: Request<RequestBody>,
    peer: Option<SocketAddr>,
    rest: &str,
) -> Response<Body> {
    let route = parse_route(rest);
    let name = match &route {
        Some(Route::Room(r) | Route::Kick(r) | Route::Close(r)) => Some(*r),
        _ => None,
    };
    let room_id = name.and_then(|n| RoomId::parse(n).ok());
    // Authorized first: an unauthorized caller learns nothing, not even whether a room exists.
    if let Err(resp) = authorize(app, req.headers(), peer, room_id.as_ref()) {
        return *resp;
    }
    let method = req.method().clone();
    let Some(route) = route else {
        return json_error(ErrorCode::NotFound, &format!("no admin route {method} /v1/admin{rest}"));
    };
    if matches!(route, Route::List) {
        return match method {
            Method::GET => list(app, &req).await,
            _ => json_error(ErrorCode::MethodNotAllowed, "use GET"),
        };
    }
    let Some(id) = room_id else {
        return json_error(ErrorCode::BadRoom, "room name must be 1-128 characters of A-Z a-z 0-9 . _ - :");
    };
    // A stored room not in memory is read on a blocking thread, not on this async worker.
    // One that cannot be loaded (unreadable, or owned by another node) can still be deleted.
    if let Err(e) = app.load_stored(&id).await
        && method != Method::DELETE
    {
        return json_error(e.code(), &e.to_string());
    }
    match (route, method) {
        (Route::Room(_), Method::GET) => details(app, &id),
        (Route::Room(_), Method::DELETE) => delete(app, &id, peer).await,
        (Route::Room(_), _) => json_error(ErrorCode::MethodNotAllowed, "use GET or DELETE"),
        (Route::Kick(_), Method::POST) => match http_api::read_json(app, req).await {
            Ok((body, _charge)) => kick(app, &id, &body, peer),
            Err(resp) => resp,
        },
        (Route::Close(_), Method::POST) => close(app, &id, peer),
        (Route::Kick(_) | Route::Close(_), _) => json_error(ErrorCode::MethodNotAllowed, "use POST"),
        (Route::List, _) => unreachable!("answered above"),
    }
}

/// One room as the list and the details show it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoomSummary {
    name: String,
    /// In memory. A stored room that is not (never used since the start, or evicted while idle)
    /// is listed with its name only: reading its files to say more would load it.
    loaded: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    live: Option<LiveSummary>,
}

/// What a room in memory tells about itself.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LiveSummary {
    epoch: String,
    rev: u64,
    /// Connected WebSockets.
    clients: usize,
    ring: Ring,
    /// The state's exact encoded size.
    state_bytes: usize,
    /// What the ring of recent changes holds.
    history_bytes: usize,
}

#[derive(Serialize)]
struct Ring {
    entries: usize,
    capacity: usize,
}

fn summary(app: &App, room: &Room) -> RoomSummary {
    let (entries, capacity) = room.ring_occupancy();
    RoomSummary {
        name: room.id().to_string(),
        loaded: true,
        live: Some(LiveSummary {
            epoch: room.epoch().to_string(),
            rev: room.rev().0,
            clients: app.rooms.clients(room.id()),
            ring: Ring { entries, capacity },
            state_bytes: room.state_bytes(),
            history_bytes: room.history_bytes(),
        }),
    }
}

/// `GET /v1/admin/rooms?after=NAME&limit=N`: rooms in memory and on disk by name, after `after`,
/// at most `limit`; `next` (the `after` of the next page) when more remain.
async fn list(app: &App, req: &Request<RequestBody>) -> Response<Body> {
    let mut after = None;
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in query_pairs(req) {
        match k.as_str() {
            "after" => after = Some(v),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => {
                    return json_error(
                        ErrorCode::Invalid,
                        &format!("limit must be a number from 1 to {MAX_LIMIT}"),
                    );
                }
            },
            _ => {}
        }
    }
    // The page is the `limit` smallest names of both lists (one more tells whether more remain):
    // those of rooms in memory, and those of stored rooms (listed on a blocking thread).
    let live = smallest_after(app.rooms.all().into_iter(), |r| r.id().as_str(), after.as_deref(), limit + 1);
    let stored = match app.rooms.store().cloned() {
        Some(store) => {
            let after = after.clone();
            match tokio::task::spawn_blocking(move || store.rooms_after(after.as_deref(), limit + 1)).await {
                Ok(Ok(names)) => names,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "admin: cannot list stored rooms");
                    return json_error(ErrorCode::Unavailable, &format!("cannot list stored rooms: {e}"));
                }
                Err(_) => return json_error(ErrorCode::Unavailable, "cannot list stored rooms"),
            }
        }
        None => Vec::new(),
    };
    let mut page: Vec<RoomSummary> = live.iter().map(|r| summary(app, r)).collect();
    let in_memory: std::collections::HashSet<&str> = live.iter().map(|r| r.id().as_str()).collect();
    for name in stored {
        if !in_memory.contains(name.as_str()) {
            page.push(RoomSummary { name: name.to_string(), loaded: false, live: None });
        }
    }
    page.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more { page.last().map(|r| r.name.clone()) } else { None };
    let mut body = json!({ "rooms": page });
    if let Some(next) = next {
        body["next"] = next.into();
    }
    AdminAction::List.count();
    tracing::info!(action = "list", rooms = page.len(), "admin action");
    json(StatusCode::OK, &body)
}

/// A connected client, as the details show it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientInfo {
    /// The public client id (`c7`).
    client: String,
    /// The user its token named (`sub`); omitted in open mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// When its connection attached, in ms since the Unix epoch.
    connected_since: u64,
    /// Revisions the room is ahead of what this connection has been sent.
    lag: u64,
}

/// `GET /v1/admin/rooms/{room}`.
fn details(app: &App, id: &RoomId) -> Response<Body> {
    let Some(room) = app.rooms.get(id) else {
        return no_room(id);
    };
    let rev = room.rev().0;
    let sessions = app.sessions.of_room(&room);
    let mut clients: Vec<ClientInfo> = sessions
        .iter()
        .filter(|s| s.is_connected())
        .map(|s| ClientInfo {
            client: s.client.to_string(),
            user: s.user.as_deref().map(str::to_owned),
            connected_since: s.connected_at_ms(),
            lag: rev.saturating_sub(s.sent().0),
        })
        .collect();
    clients.sort_unstable_by(|a, b| a.connected_since.cmp(&b.connected_since).then(a.client.cmp(&b.client)));
    let mut body = serde_json::to_value(summary(app, &room)).unwrap_or(Value::Null);
    body["sessions"] = sessions.len().into();
    body["connected"] = serde_json::to_value(&clients).unwrap_or(Value::Null);
    AdminAction::Details.count();
    tracing::info!(room = %id, action = "details", "admin action");
    json(StatusCode::OK, &body)
}

/// `POST /v1/admin/rooms/{room}/kick` with `{"client":"c7"}` (and `"endSession":true` to end the
/// session too).
fn kick(app: &App, id: &RoomId, body: &Value, peer: Option<SocketAddr>) -> Response<Body> {
    let usage = "body must be {\"client\": \"c7\"} with an optional \"endSession\": true|false";
    let Some(client) = body.get("client").and_then(Value::as_str) else {
        return json_error(ErrorCode::BadMessage, usage);
    };
    let end = match body.get("endSession") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return json_error(ErrorCode::BadMessage, usage),
    };
    let Some(room) = app.rooms.get(id) else {
        return no_room(id);
    };
    let Some(session) = app.sessions.of_room(&room).into_iter().find(|s| s.client.to_string() == client)
    else {
        return json_error(ErrorCode::NotFound, &format!("no client {client} in room {id}"));
    };
    if !end && !session.is_connected() {
        return json_error(ErrorCode::NotFound, &format!("client {client} is not connected to room {id}"));
    }
    let closed = app.sessions.kick(&session, CloseReason::Kicked, end);
    AdminAction::Kick.count();
    tracing::info!(room = %id, action = "kick", client, end_session = end, peer = ?peer, "admin action");
    json(StatusCode::OK, &json!({"client": client, "closed": closed, "sessionEnded": end}))
}

/// `POST /v1/admin/rooms/{room}/close`: every connection closes with 4010; the room, its state
/// and its sessions stay.
fn close(app: &App, id: &RoomId, peer: Option<SocketAddr>) -> Response<Body> {
    let Some(room) = app.rooms.get(id) else {
        return no_room(id);
    };
    let closed = app.close_connections(&room, CloseReason::RoomClosed, false);
    AdminAction::Close.count();
    tracing::info!(room = %id, action = "close", closed, peer = ?peer, "admin action");
    json(StatusCode::OK, &json!({"room": id.as_str(), "closed": closed}))
}

/// `DELETE /v1/admin/rooms/{room}`: the room leaves the registry (retired first, so nothing more
/// commits to it), every connection closes with 4011 and every session of it ends; the next use
/// of the name creates a fresh room with a new epoch.
pub async fn delete(app: &Arc<App>, id: &RoomId, peer: Option<SocketAddr>) -> Response<Body> {
    // The look-up may read the disk, and the store's delete waits for its writer thread (a log
    // record and its sync, then the files' removal): both on a blocking thread, not on this
    // async worker.
    let (a, i) = (app.clone(), id.clone());
    let removed = tokio::task::spawn_blocking(move || match a.rooms.try_get(&i) {
        Ok(None) => Ok(None),
        // A stored room that cannot be loaded now (its data unreadable, or no room for it in
        // memory) is deleted all the same: that is how an operator clears data the server
        // cannot read.
        Ok(Some(_)) | Err(_) => a.rooms.remove(&i).map(Some),
    })
    .await;
    let room = match removed {
        Ok(Ok(Some(room))) => room,
        Ok(Ok(None)) => return no_room(id),
        Ok(Err(e)) => {
            tracing::error!(room = %id, error = %e, "cannot delete the room's stored data");
            let message = format!("the room left memory but its stored data could not be deleted: {e}");
            return json_error(ErrorCode::Unavailable, &message);
        }
        Err(_) => return json_error(ErrorCode::Unavailable, "the delete did not finish; try again"),
    };
    // `None`: the room was only stored (and could not be loaded), so nobody was connected.
    let closed = room.map_or(0, |room| app.close_connections(&room, CloseReason::RoomDeleted, true));
    AdminAction::Delete.count();
    tracing::info!(room = %id, action = "delete", closed, peer = ?peer, "admin action");
    json(StatusCode::OK, &json!({"room": id.as_str(), "deleted": true, "closed": closed}))
}

fn no_room(id: &RoomId) -> Response<Body> {
    json_error(ErrorCode::NotFound, &format!("no room {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn token(s: &str) -> AdminToken {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ringsync-admin-unit-{}-{n}", std::process::id()));
        std::fs::write(&path, s).unwrap();
        let c = crate::config::Config::from_flags(&["--admin-token-file", path.to_str().unwrap()]).unwrap();
        let t = c.read_admin_token().unwrap().unwrap();
        std::fs::remove_file(&path).unwrap();
        t
    }

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn without_a_token_only_loopback_peers_are_served() {
        let none = HeaderMap::new();
        let room = RoomId::parse("r").unwrap();
        for peer in ["127.0.0.1:5000", "127.8.9.10:1", "[::1]:80", "[::ffff:127.0.0.1]:80"] {
            let peer: SocketAddr = peer.parse().unwrap();
            assert_eq!(decide(None, Jwt::Off, &none, Some(peer), None), Decision::Allow, "{peer}");
            assert_eq!(decide(None, Jwt::Off, &none, Some(peer), Some(&room)), Decision::Allow, "{peer}");
        }
        for peer in
            ["10.0.0.1:5000", "192.168.1.2:80", "[2001:db8::1]:443", "[::ffff:10.0.0.1]:80", "0.0.0.0:1"]
        {
            let peer: SocketAddr = peer.parse().unwrap();
            assert_eq!(decide(None, Jwt::Off, &none, Some(peer), None), Decision::Forbidden, "{peer}");
            // A bearer does not help when no token is configured.
            assert_eq!(
                decide(None, Jwt::Off, &with_auth("Bearer x"), Some(peer), Some(&room)),
                Decision::Forbidden
            );
        }
        assert_eq!(
            decide(None, Jwt::Off, &none, None, None),
            Decision::Forbidden,
            "an unknown peer is not loopback"
        );
    }

    #[test]
    fn with_a_token_only_its_bearer_is_served_from_anywhere() {
        let t = token("s3cret");
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let remote: SocketAddr = "203.0.113.9:1".parse().unwrap();
        for peer in [local, remote] {
            assert_eq!(
                decide(Some(&t), Jwt::Off, &with_auth("Bearer s3cret"), Some(peer), None),
                Decision::Allow
            );
            assert_eq!(
                decide(Some(&t), Jwt::Off, &with_auth("bearer  s3cret "), Some(peer), None),
                Decision::Allow
            );
            for wrong in ["Bearer s3cre", "Bearer s3cretx", "Basic s3cret", "s3cret", "Bearer "] {
                assert_eq!(
                    decide(Some(&t), Jwt::Off, &with_auth(wrong), Some(peer), None),
                    Decision::Unauthorized,
                    "{wrong}"
                );
            }
            assert_eq!(
                decide(Some(&t), Jwt::Off, &HeaderMap::new(), Some(peer), None),
                Decision::Unauthorized
            );
        }
    }

    #[test]
    fn a_client_token_grants_room_calls_where_it_says_admin() {
        let room = RoomId::parse("r").unwrap();
        let none = HeaderMap::new();
        let remote: SocketAddr = "203.0.113.9:1".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for token in [None, Some(token("s3cret"))] {
            let t = token.as_ref();
            let admin = Jwt::Valid(Some(Permission::Admin));
            assert_eq!(decide(t, admin, &none, Some(remote), Some(&room)), Decision::Allow);
            // The list is server-wide: a client token never lists rooms.
            assert_eq!(decide(t, admin, &none, Some(remote), None), Decision::Forbidden);
            for p in [None, Some(Permission::Read), Some(Permission::Write)] {
                assert_eq!(decide(t, Jwt::Valid(p), &none, Some(remote), Some(&room)), Decision::Forbidden);
            }
            // With keys configured, loopback is no exemption: a local reverse proxy would open it.
            assert_eq!(decide(t, Jwt::Invalid, &none, Some(local), Some(&room)), Decision::Unauthorized);
            assert_eq!(decide(t, Jwt::Invalid, &none, Some(local), None), Decision::Unauthorized);
        }
        let t = token("s3cret");
        assert_eq!(
            decide(Some(&t), Jwt::Invalid, &with_auth("Bearer s3cret"), Some(remote), None),
            Decision::Allow
        );
    }

    #[test]
    fn routes_parse() {
        assert!(matches!(parse_route("/rooms"), Some(Route::List)));
        assert!(matches!(parse_route("/rooms/"), Some(Route::List)));
        assert!(matches!(parse_route("/rooms/a"), Some(Route::Room("a"))));
        assert!(matches!(parse_route("/rooms/a/kick"), Some(Route::Kick("a"))));
        assert!(matches!(parse_route("/rooms/a/close"), Some(Route::Close("a"))));
        assert!(parse_route("/rooms/a/b/c").is_none());
        assert!(parse_route("/roomsx").is_none());
        assert!(parse_route("").is_none());
    }
}
