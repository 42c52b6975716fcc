//! The browser files the server embeds and serves as they are (no build step): the chess demo at
//! `/`, the to-do list demo at `/todo.html` and the client library, `/client.js`, with the modules it re-exports.
//!
//! This table is the one list of them; `server` answers `GET` for exactly these paths. Invariant:
//! every file a served module imports is in the table too.

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    pub body: &'static str,
    pub content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// Every embedded file.
pub const ASSETS: &[Asset] = &[
    Asset { path: "/", body: include_str!("web/index.html"), content_type: HTML },
    Asset { path: "/client.js", body: include_str!("web/client.js"), content_type: JS },
    Asset { path: "/client/patch.js", body: include_str!("web/client/patch.js"), content_type: JS },
    Asset { path: "/client/sync.js", body: include_str!("web/client/sync.js"), content_type: JS },
    Asset { path: "/client/room.js", body: include_str!("web/client/room.js"), content_type: JS },
    Asset { path: "/client/list.js", body: include_str!("web/client/list.js"), content_type: JS },
    Asset { path: "/demo.js", body: include_str!("web/demo.js"), content_type: JS },
    Asset { path: "/todo.html", body: include_str!("web/todo.html"), content_type: HTML },
    Asset { path: "/todo.js", body: include_str!("web/todo.js"), content_type: JS },
];

/// The asset served at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}
