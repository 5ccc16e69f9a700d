//! The HTTP `/v1` API: accounts, login, token refresh, history. The contract is
//! `gateway/API.md`. Handlers run on whichever shard accepted the connection and ask the
//! user's home shard (and the conversation's owner) over the mesh.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use wire::message::{ErrorCode, HistoryPage};

use crate::auth::{self, password, Claims, TokenKind};
use crate::chat::{self, ApiError, ShardMsg};
use crate::session::live;
use crate::shard::Shard;

/// Largest request body accepted: a `POST /v1/messages` with a body of the wire maximum,
/// base64 in JSON (4/3 of it), fits with room for the other fields.
pub const HTTP_BODY_BYTES_MAX: usize = 128 * 1024;
const _: () =
    assert!(wire::limits::MESSAGE_BODY_BYTES_MAX / 3 * 4 + 8 * 1024 <= HTTP_BODY_BYTES_MAX);

/// A long poll waits this long when the request names no time.
pub const LONG_POLL_DEFAULT_MS: u64 = 25_000;

/// History page size when the request names none.
pub const HISTORY_PAGE_DEFAULT: usize = 50;

/// Longest device name kept.
pub const DEVICE_NAME_BYTES_MAX: usize = 64;

/// A response: status, JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    fn json<T: Serialize>(status: u16, value: &T) -> Response {
        Response {
            status,
            body: serde_json::to_string(value).unwrap_or_default(),
        }
    }
}

impl From<ApiError> for Response {
    fn from(error: ApiError) -> Response {
        Response::json(
            error.http_status(),
            &serde_json::json!({"error": {"code": error.code.as_str(), "message": error.message}}),
        )
    }
}

/// The parts of a request the API needs.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
    #[serde(default, with = "wire::json::u64_str")]
    device_id: u64,
    #[serde(default)]
    device_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Serialize)]
struct LoginAnswer {
    #[serde(with = "wire::json::u64_str")]
    user_id: u64,
    #[serde(with = "wire::json::u64_str")]
    device_id: u64,
    access_token: String,
    #[serde(with = "wire::json::u64_str")]
    access_expires_ms: u64,
    refresh_token: String,
    #[serde(with = "wire::json::u64_str")]
    refresh_expires_ms: u64,
}

/// Whether `path` belongs to this API.
pub fn owns(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// Answer one API request.
pub async fn handle(shard: &Rc<Shard>, request: Request<'_>) -> Response {
    let result = match (request.method, request.path) {
        ("POST", "/v1/users") => register(shard, request.body).await,
        ("POST", "/v1/login") => login(shard, request.body).await,
        ("POST", "/v1/token/refresh") => refresh(shard, request.body).await,
        ("GET", path) if path.starts_with("/v1/conversations/") => history(shard, &request).await,
        ("GET", path) if path == "/v1/users" || path.starts_with("/v1/users/") => {
            lookup_user(shard, &request).await
        }
        ("POST", "/v1/messages") => send_message(shard, &request).await,
        ("POST", "/v1/poll") => poll(shard, &request).await,
        ("GET", "/v1/discover") => discover(shard, &request),
        (_, "/v1/users" | "/v1/login" | "/v1/token/refresh" | "/v1/messages" | "/v1/poll") => Err(
            ApiError::new(ErrorCode::InvalidArgument, "method not allowed"),
        ),
        _ => Err(ApiError::new(ErrorCode::NotFound, "no such endpoint")),
    };
    result.unwrap_or_else(Response::from)
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("bad JSON body: {e}")))
}

async fn register(shard: &Rc<Shard>, body: &[u8]) -> Result<Response, ApiError> {
    let body: RegisterBody = parse(body)?;
    let invalid =
        |e: password::CredentialError| ApiError::new(ErrorCode::InvalidArgument, e.to_string());
    password::check_username(&body.username).map_err(invalid)?;
    password::check_password(&body.password).map_err(invalid)?;
    let params = shard.config.password;
    let secret = body.password;
    let hashed = glommio::executor()
        .spawn_blocking(move || password::hash_password(&secret, &params))
        .await
        .map_err(|e| {
            tracing::error!(%e, "password hashing failed");
            ApiError::new(ErrorCode::Internal, "password hashing failed")
        })?;
    let user_id = chat::user_id_of(&body.username);
    let home = shard.user_home(user_id);
    let username = body.username;
    shard
        .call(home, |reply| ShardMsg::Register {
            user_id,
            username,
            password_hash: hashed,
            reply,
        })
        .await??;
    Ok(Response::json(
        201,
        &serde_json::json!({"user_id": user_id.to_string()}),
    ))
}

async fn login(shard: &Rc<Shard>, body: &[u8]) -> Result<Response, ApiError> {
    let body: LoginBody = parse(body)?;
    if password::check_username(&body.username).is_err()
        || body.password.len() > password::PASSWORD_BYTES_MAX
    {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "wrong username or password",
        ));
    }
    let mut device_name = body.device_name;
    if device_name.len() > DEVICE_NAME_BYTES_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("device_name is longer than {DEVICE_NAME_BYTES_MAX} bytes"),
        ));
    }
    if device_name.is_empty() {
        device_name = "device".to_string();
    }
    let user_id = chat::user_id_of(&body.username);
    let home = shard.user_home(user_id);
    let (password, device_id) = (body.password, body.device_id);
    let device_id = shard
        .call(home, |reply| ShardMsg::Login {
            user_id,
            password,
            device_id,
            device_name,
            reply,
        })
        .await??;
    Ok(issue(shard, user_id, device_id))
}

async fn refresh(shard: &Rc<Shard>, body: &[u8]) -> Result<Response, ApiError> {
    let body: RefreshBody = parse(body)?;
    let claims = auth::verify(
        &shard.token_key,
        &body.refresh_token,
        chat::now_ms(),
        TokenKind::Refresh,
    )
    .map_err(|e| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            format!("bad refresh token: {e}"),
        )
    })?;
    let home = shard.user_home(claims.user_id);
    let (user_id, device_id) = (claims.user_id, claims.device_id);
    let exists = shard
        .call(home, |reply| ShardMsg::DeviceExists {
            user_id,
            device_id,
            reply,
        })
        .await?;
    if !exists {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "unknown device"));
    }
    Ok(issue(shard, user_id, device_id))
}

/// A fresh access + refresh token pair.
fn issue(shard: &Shard, user_id: u64, device_id: u64) -> Response {
    let now = chat::now_ms();
    let access_expires_ms = now.saturating_add(shard.config.access_token_ttl_ms);
    let refresh_expires_ms = now.saturating_add(shard.config.refresh_token_ttl_ms);
    let token = |kind, expires_ms| {
        auth::sign(
            &shard.token_key,
            &Claims {
                kind,
                user_id,
                device_id,
                expires_ms,
            },
        )
    };
    Response::json(
        200,
        &LoginAnswer {
            user_id,
            device_id,
            access_token: token(TokenKind::Access, access_expires_ms),
            access_expires_ms,
            refresh_token: token(TokenKind::Refresh, refresh_expires_ms),
            refresh_expires_ms,
        },
    )
}

/// `GET /v1/users/{id}` or `GET /v1/users?username=`: a user's id and name, for clients
/// that show names (group members, senders) or start a group by username.
async fn lookup_user(shard: &Rc<Shard>, request: &Request<'_>) -> Result<Response, ApiError> {
    bearer(shard, request.authorization)?;
    let (user_id, wanted) = match request.path.strip_prefix("/v1/users/") {
        Some(id) => {
            let id = id.parse::<u64>().map_err(|_| {
                ApiError::new(ErrorCode::InvalidArgument, "user id must be a number")
            })?;
            (id, None)
        }
        None => {
            let username = query_param(request.query, "username").ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    "give ?username= or /v1/users/{id}",
                )
            })?;
            if password::check_username(username).is_err() {
                return Err(ApiError::new(ErrorCode::NotFound, "no such user"));
            }
            (chat::user_id_of(username), Some(username))
        }
    };
    let username = chat::user_name(shard, user_id, wanted).await?;
    Ok(Response::json(
        200,
        &serde_json::json!({"user_id": user_id.to_string(), "username": username}),
    ))
}

/// The raw value of query parameter `name` (the first one), if present.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `GET /v1/discover?username=` (or `?user_id=`): which node serves this user's
/// connections (its home node), so a client connects there first instead of being
/// redirected. No token needed: it runs before login and says only where a name lives.
/// `here` is true when this node is that node; a single node always answers `here`.
fn discover(shard: &Rc<Shard>, request: &Request<'_>) -> Result<Response, ApiError> {
    let param = |name: &str| query_param(request.query, name);
    let user_id = match (param("username"), param("user_id")) {
        (Some(username), _) => {
            if password::check_username(username).is_err() {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    "not a valid username",
                ));
            }
            chat::user_id_of(username)
        }
        (None, Some(id)) => id
            .parse::<u64>()
            .map_err(|_| ApiError::new(ErrorCode::InvalidArgument, "user_id must be a number"))?,
        (None, None) => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "give ?username= or ?user_id=",
            ))
        }
    };
    let node = shard.node_of(shard.user_home(user_id));
    let mut answer = serde_json::json!({
        "user_id": user_id.to_string(),
        "node": node,
        "here": node == shard.node_id,
    });
    if let Some(cluster) = shard.cluster.as_ref() {
        if !cluster.shared.is_up(node) {
            return Err(ApiError::unavailable(
                "this user's home node is unavailable; retry later",
            ));
        }
        if let Some(info) = cluster.with_view(|view| view.node(node).cloned()) {
            answer["http"] = info.http.to_string().into();
            answer["tcp"] = info.tcp.to_string().into();
            answer["ws"] = format!("ws://{}/ws", info.http).into();
        }
    }
    Ok(Response::json(200, &answer))
}

/// `GET /v1/conversations/{id}/messages?before=&after=&limit=`
async fn history(shard: &Rc<Shard>, request: &Request<'_>) -> Result<Response, ApiError> {
    let claims = bearer(shard, request.authorization)?;
    let rest = request.path.trim_start_matches("/v1/conversations/");
    let id = rest
        .strip_suffix("/messages")
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such endpoint"))?;
    let conversation_id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            "conversation id must be a number",
        )
    })?;
    let (mut before, mut after, mut limit) = (0u64, 0u64, 0usize);
    for pair in request.query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("{key} must be a number"),
                )
            })
        };
        match key {
            "before" => before = number()?,
            "after" => after = number()?,
            "limit" => limit = number()?.min(u32::MAX as u64) as usize,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown query parameter {key:?}"),
                ))
            }
        }
    }
    let home = shard.user_home(claims.user_id);
    let user_id = claims.user_id;
    let member = shard
        .call(home, |reply| ShardMsg::IsMember {
            user_id,
            conversation_id,
            reply,
        })
        .await?;
    if !member {
        return Err(ApiError::forbidden());
    }
    let page: HistoryPage =
        live::history_page(shard, user_id, conversation_id, before, after, limit).await?;
    Ok(Response::json(200, &page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PollBody {
    /// The cursor of the last answer received (none: start a new session).
    #[serde(default)]
    cursor: Option<String>,
    /// How long to wait for something, at most 30 000 [default: 25 000].
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `POST /v1/messages`: the body is a wire `Send` in its JSON form; the answer its `Ack`.
async fn send_message(shard: &Rc<Shard>, request: &Request<'_>) -> Result<Response, ApiError> {
    let claims = bearer(shard, request.authorization)?;
    let send: wire::message::Send = parse(request.body)?;
    let frame = wire::message::Frame {
        request_id: 0,
        body: wire::message::Body::Send(send),
    };
    wire::message::validate(&frame).map_err(|e| match e {
        wire::WireError::Capacity(_) => ApiError::new(ErrorCode::TooLarge, e.to_string()),
        _ => ApiError::new(ErrorCode::InvalidArgument, e.to_string()),
    })?;
    let wire::message::Body::Send(send) = frame.body else {
        return Err(ApiError::new(ErrorCode::Internal, "unreachable"));
    };
    let (user_id, device_id) = (claims.user_id, claims.device_id);
    let ack = shard
        .call(shard.user_home(user_id), |reply| ShardMsg::HttpSend {
            user_id,
            device_id,
            send,
            reply,
        })
        .await??;
    Ok(Response::json(200, &ack))
}

/// `POST /v1/poll`: frames for this device after the cursor, waiting if there are none.
async fn poll(shard: &Rc<Shard>, request: &Request<'_>) -> Result<Response, ApiError> {
    let claims = bearer(shard, request.authorization)?;
    let body: PollBody = if request.body.is_empty() {
        PollBody {
            cursor: None,
            timeout_ms: None,
        }
    } else {
        parse(request.body)?
    };
    let wait = std::time::Duration::from_millis(body.timeout_ms.unwrap_or(LONG_POLL_DEFAULT_MS))
        .min(crate::poll::LONG_POLL_MAX);
    let (user_id, device_id, cursor) = (claims.user_id, claims.device_id, body.cursor);
    let answer = shard
        .call(shard.user_home(user_id), |reply| ShardMsg::Poll {
            user_id,
            device_id,
            cursor,
            wait,
            reply,
        })
        .await??;
    // Each frame exactly as the JSON subprotocol sends it.
    let mut out = String::with_capacity(64 + answer.frames.len() * 256);
    out.push_str("{\"cursor\":");
    out.push_str(&serde_json::to_string(&answer.cursor).unwrap_or_default());
    out.push_str(",\"frames\":[");
    for (i, frame) in answer.frames.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&wire::json::to_json(frame));
    }
    out.push_str("]}");
    Ok(Response {
        status: 200,
        body: out,
    })
}

fn bearer(shard: &Shard, authorization: Option<&str>) -> Result<Claims, ApiError> {
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "missing Authorization: Bearer token",
            )
        })?;
    auth::verify(
        &shard.token_key,
        token.trim(),
        chat::now_ms(),
        TokenKind::Access,
    )
    .map_err(|e| ApiError::new(ErrorCode::Unauthenticated, format!("bad token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_as_the_documented_json() {
        let response = Response::from(ApiError::new(ErrorCode::Conflict, "username is taken"));
        assert_eq!(response.status, 409);
        assert_eq!(
            response.body,
            r#"{"error":{"code":"conflict","message":"username is taken"}}"#
        );
    }

    #[test]
    fn login_body_reads_string_ids_and_rejects_unknown_fields() {
        let body: LoginBody =
            parse(br#"{"username":"al","password":"p","device_id":"7"}"#).unwrap();
        assert_eq!(body.device_id, 7);
        assert!(parse::<LoginBody>(br#"{"username":"a","password":"p","x":1}"#).is_err());
        assert!(parse::<RegisterBody>(b"not json").is_err());
    }
}
