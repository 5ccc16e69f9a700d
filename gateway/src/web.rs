//! The web chat client, embedded in the binary and served at `/`.
//!
//! The assets are plain files under `gateway/web/` (an ES module app, no build step),
//! compiled in with `include_bytes!`, so the server needs nothing beside itself. Each
//! answer carries a strong `ETag` (a hash of the bytes, computed once per process) and
//! `Cache-Control: no-cache`: browsers revalidate and get `304` until a new binary
//! serves new bytes. The page's Content-Security-Policy allows only this origin (scripts,
//! styles, fetches and the WebSocket), so injected markup could not load or run anything.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// Everything the client needs; `/` is `index.html`.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../web/app.js"),
    },
    Asset {
        path: "/confab.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../web/confab.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../web/style.css"),
    },
];

/// The policy every asset is served under: same origin only (`'self'` covers the
/// page's own `ws:`/`wss:` origin), no framing, no plugins, no inline code.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The asset a path names, if any.
pub fn find(path: &str) -> Option<(usize, &'static Asset)> {
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS.iter().enumerate().find(|(_, a)| a.path == path)
}

/// The strong validator of asset `index`: the first 8 bytes of its SHA-256, hex, quoted.
pub fn etag(index: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.bytes);
                let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!("\"{hash}\"")
            })
            .collect()
    });
    tags.get(index).map_or("\"\"", String::as_str)
}

/// Write the answer to a `GET`/`HEAD` of asset `index` into `out`: `304` when
/// `if_none_match` already names this version, else `200` with the bytes (none for HEAD).
pub fn respond(index: usize, if_none_match: Option<&[u8]>, head_only: bool, out: &mut Vec<u8>) {
    let Some(asset) = ASSETS.get(index) else {
        return;
    };
    let tag = etag(index);
    let fresh = if_none_match.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii() == tag.as_bytes() || t.trim_ascii() == b"*")
    });
    let (status, body): (&str, &[u8]) = if fresh {
        ("304 Not Modified", b"")
    } else {
        ("200 OK", asset.bytes)
    };
    let length = if fresh { 0 } else { asset.bytes.len() };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {length}\r\n\
         ETag: {tag}\r\nCache-Control: no-cache\r\n\
         Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
         Connection: close\r\n\r\n",
        asset.content_type
    );
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &[u8]) -> String {
        String::from_utf8_lossy(out).into_owned()
    }

    #[test]
    fn root_is_the_page_and_every_script_it_names_is_served() {
        let (_, page) = find("/").expect("index");
        assert_eq!(page.path, "/index.html");
        let html = std::str::from_utf8(page.bytes).expect("utf-8");
        for referenced in ["/app.js", "/style.css"] {
            assert!(html.contains(referenced), "{referenced} linked");
            assert!(find(referenced).is_some(), "{referenced} served");
        }
        let app = std::str::from_utf8(find("/app.js").expect("app").1.bytes).expect("utf-8");
        assert!(app.contains("from \"/confab.js\""));
        assert!(find("/confab.js").is_some());
        assert!(find("/secret").is_none());
        assert!(find("/../Cargo.toml").is_none());
    }

    #[test]
    fn answers_carry_type_validator_and_policy_and_revalidate_to_304() {
        let (index, asset) = find("/app.js").expect("app");
        let mut out = Vec::new();
        respond(index, None, false, &mut out);
        let answer = text(&out);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Content-Type: text/javascript; charset=utf-8\r\n"));
        assert!(answer.contains(&format!("Content-Length: {}\r\n", asset.bytes.len())));
        assert!(answer.contains("Content-Security-Policy: default-src 'self';"));
        assert!(out.ends_with(asset.bytes));

        let tag = etag(index);
        assert_ne!(
            tag,
            etag(find("/").expect("index").0),
            "tags differ per file"
        );
        let mut again = Vec::new();
        respond(
            index,
            Some(format!("\"x\", {tag}").as_bytes()),
            false,
            &mut again,
        );
        let answer = text(&again);
        assert!(
            answer.starts_with("HTTP/1.1 304 Not Modified\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("\r\n\r\n"), "no body on 304");

        let mut stale = Vec::new();
        respond(index, Some(b"\"0000000000000000\""), true, &mut stale);
        let answer = text(&stale);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.ends_with("\r\n\r\n"), "HEAD has no body");
    }
}
