//! The shape of the crate, checked: modules import one way down the layer table below, and the
//! synchronous core imports nothing from the async shell (no `.await`, no `async`, no sockets, no
//! metrics, only `tokio::sync`). A new module must be given a layer here, so the shape cannot rot
//! silently. Reads `src/` as text; comments are ignored.

use std::collections::BTreeMap;
use std::path::Path;

/// Lowest layer first. A module may import modules of lower layers only (never its own layer's
/// other modules, never a higher one).
const LAYERS: &[&[&str]] = &[
    // The synchronous core.
    &["ids", "patch", "ring"],
    // The storage seam and its stores (synchronous: the file store runs its own thread).
    &["store"],
    &["memory"],
    &["protocol"],
    &["presence", "broadcast"],
    &["room"],
    &["rooms"],
    // The shell.
    &["config", "close", "web"],
    &["metrics"],
    &["auth", "guard"],
    &["session"],
    &["app"],
    // Cluster mode's handling of what the Redis store reads (it commits through the app).
    &["cluster"],
    &["writer", "reassembly"],
    &["connection", "http_api"],
    // The admin API uses http_api's response and body helpers.
    &["admin"],
    &["server"],
    &["main", "lib"],
];

/// Layers `0..CORE` are the synchronous core.
const CORE: usize = 7;

/// External paths the core must not use.
const SHELL_ONLY: &[&str] = &[
    "hyper",
    "hyper_util",
    "http_body_util",
    "fastwebsockets",
    "metrics",
    "tokio::net",
    "tokio::io",
    "tokio::time",
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`room/catchup.rs` → `room`).
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().expect("non-empty path").as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Source without comments (doc links are not imports).
fn code_only(src: &str) -> String {
    src.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every crate module `code` refers to (`crate::x`, `crate::{x, y::z}`, and `ringsync::x` in the
/// binary).
fn imports(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["crate::", "ringsync::"] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String =
                        item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        out.push(name);
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Every layering violation in one file of module `module`.
fn violations(module: &str, code: &str) -> Vec<String> {
    let Some(own) = layer_of(module) else {
        return vec![format!("module `{module}` has no layer in tests/layering.rs")];
    };
    let mut found = Vec::new();
    for target in imports(code) {
        if target == module || target == "self" || target == "super" {
            continue;
        }
        match layer_of(&target) {
            None => found.push(format!("`{module}` imports `{target}`, which has no layer")),
            Some(l) if l >= own => found.push(format!(
                "`{module}` (layer {own}) imports `{target}` (layer {l}): imports must point down the table"
            )),
            Some(_) => {}
        }
    }
    if own < CORE {
        for word in [".await", "async "] {
            if code.contains(word) {
                found.push(format!("core module `{module}` contains `{word}`"));
            }
        }
        for path in SHELL_ONLY {
            let uses = [format!("use {path}"), format!(" {path}::"), format!("({path}::")];
            if uses.iter().any(|u| code.contains(u.as_str())) {
                found.push(format!("core module `{module}` uses `{path}`"));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_down_the_layer_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut modules = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        // There is no src/bin: the load generator is its own crate under benches/.
        let module = module_of(rel);
        modules.push(module.clone());
        let code = code_only(&std::fs::read_to_string(file).expect("readable source"));
        let found = violations(&module, &code);
        if !found.is_empty() {
            problems.insert(rel.display().to_string(), found);
        }
    }
    assert!(problems.is_empty(), "layering violations: {problems:#?}");
    for layer in LAYERS {
        for m in *layer {
            assert!(modules.iter().any(|x| x == m), "tests/layering.rs names `{m}`, which is not in src/");
        }
    }
}

#[test]
fn the_checker_catches_what_it_should() {
    assert!(violations("room", "use crate::session::Session;").iter().any(|v| v.contains("point down")));
    assert!(
        violations("connection", "use crate::{app::App, http_api};").iter().any(|v| v.contains("http_api"))
    );
    assert!(violations("presence", "fn f() { crate::metrics::hot(); }").len() == 1);
    assert!(violations("room", "async fn f() { g().await }").len() == 2);
    assert!(violations("ring", "use hyper::Request;").iter().any(|v| v.contains("hyper")));
    assert!(violations("room", "use tokio::sync::watch;").is_empty());
    assert!(violations("nowhere", "").iter().any(|v| v.contains("no layer")));
    assert!(violations("server", "use crate::{app::App, connection, web};\nuse ringsync::x;").len() == 1);
    assert!(violations("main", "use ringsync::server; use ringsync::app::App;").is_empty());
    // Doc links are not imports.
    assert!(imports(&code_only("//! See [`crate::server`].\nfn f() {}")).is_empty());
}
