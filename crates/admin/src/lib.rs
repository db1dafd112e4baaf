//! The admin HTTP API of a node (docs/DESIGN.md §8): JSON endpoints for accounts and the
//! ring, `/healthz`, Prometheus `/metrics` and a small HTML status page at `/`.
//!
//! A thin layer: handlers translate HTTP into calls on [`cm_repl::Mail`] and a
//! [`RingStatus`], and their answers back into the fixed JSON shapes. This is the only
//! crate that defines wire DTOs for operators; it holds no state of its own.
//!
//! Every `/api/*` route needs `Authorization: Bearer TOKEN` with the node's
//! [`AdminToken`] (docs/DESIGN.md §8, §10); `/healthz` and `/metrics` stay open for probes
//! and scrapers, and the status page at `/` shows the ring only to a caller that
//! presents the token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use cm_repl::{Mail, MailError};
pub use cm_ring::{NodeRef, RingView};
use cm_types::Address;
use cm_types::limits::ADMIN_BODY_BYTES_MAX;
use serde::{Deserialize, Serialize};

/// `GET /api/ring`: the ring's own view of this node (`cm_ring::RingView`, the one
/// type of it), with what only the node's store and replication know.
#[derive(Serialize)]
struct RingResponse {
    #[serde(flatten)]
    view: RingView,
    /// Ring keys (addresses) with data in this node's store.
    keys: u64,
    /// Copies of every key the ring keeps (`--replicas`).
    replicas: u64,
    /// (address, replica) pairs that differed in the last anti-entropy round: 0 when
    /// every key this node holds has its copies in place.
    out_of_sync: u64,
}

/// `GET /api/cluster`: the ring walked along successors from this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeRef>,
}

/// What the admin API needs from the ring. Implemented by the ring driver; a fixed
/// one-node implementation serves a node that has no ring yet.
pub trait RingStatus: Send + Sync + 'static {
    /// This node's current view.
    fn view(&self) -> RingView;
    /// The ring in order, starting at this node, each node once.
    fn cluster(&self) -> Pin<Box<dyn Future<Output = Vec<NodeRef>> + Send + '_>>;
}

/// The shortest admin token accepted: 128 bits as hex. A generated token has 256.
pub const ADMIN_TOKEN_CHARS_MIN: usize = 32;
/// The longest admin token accepted (a token file is read whole).
pub const ADMIN_TOKEN_CHARS_MAX: usize = 1024;

/// The secret every `/api/*` request must present. Its `Debug` hides it, so that it
/// never reaches a log.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the admin token must be {ADMIN_TOKEN_CHARS_MIN} to {ADMIN_TOKEN_CHARS_MAX} characters, got {0}"
    )]
    Length(usize),
    #[error("the admin token may hold only printable ASCII without spaces")]
    Characters,
}

impl AdminToken {
    /// A token as read from a file (surrounding whitespace and the final newline
    /// dropped). It must be printable ASCII, as it travels in an HTTP header.
    pub fn new(text: &str) -> Result<AdminToken, TokenError> {
        let text = text.trim();
        if !(ADMIN_TOKEN_CHARS_MIN..=ADMIN_TOKEN_CHARS_MAX).contains(&text.len()) {
            return Err(TokenError::Length(text.len()));
        }
        if !text.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(TokenError::Characters);
        }
        Ok(AdminToken(text.into()))
    }

    /// The token itself, for a client that sends it.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`. The comparison
    /// takes the same time wherever the first differing byte is, so that a caller
    /// cannot find the token byte by byte from response times.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq as _;
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let Some(presented) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return false;
        };
        bool::from(presented.ct_eq(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AdminToken(..)")
    }
}

#[derive(Clone)]
struct AppState {
    mail: Mail,
    ring: Arc<dyn RingStatus>,
    token: AdminToken,
    host_names: Arc<[String]>,
}

/// The router of the admin API; the binary binds it to `--http`. `host_names` are
/// the DNS names (lower case) under which operators reach the API besides IP
/// addresses and `localhost`.
pub fn router(
    mail: Mail,
    ring: Arc<dyn RingStatus>,
    token: AdminToken,
    host_names: Vec<String>,
) -> Router {
    let state = AppState {
        mail,
        ring,
        token,
        host_names: host_names.into(),
    };
    let api = Router::new()
        .route("/api/ring", get(ring_view))
        .route("/api/cluster", get(cluster_view))
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/users/{address}", axum::routing::delete(delete_user))
        .route("/api/users/{address}/password", put(set_password))
        .route("/api/replicas/{address}", get(local_replica))
        .route("/api/queue", get(list_queue))
        .route("/api/queue/{id}", axum::routing::delete(delete_queued))
        .route("/api/queue/{id}/retry", axum::routing::post(retry_queued))
        // Any other `/api/` path too: an unknown route must not tell a caller without
        // the token which routes exist.
        .route("/api/{*rest}", axum::routing::any(not_found))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_foreign_hosts,
        ))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_BYTES_MAX))
        .with_state(state)
}

/// Refuses a request whose `Host` is a DNS name this node does not answer to: a web
/// page that rebinds its own name to this address (DNS rebinding) can make a browser
/// send requests here, and they carry that page's name. IP literals and `localhost`
/// are always accepted; requests without `Host` come from no browser.
async fn refuse_foreign_hosts(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|value| value.to_str().unwrap_or("\u{0}"));
    match host {
        Some(host) if !host_is_ours(host, &state.host_names) => ApiError(
            StatusCode::MISDIRECTED_REQUEST,
            "this node does not answer to that host name".to_owned(),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Whether `host` (a `Host` header: name or address, maybe with a port) is an IP
/// literal, `localhost`, or one of `names`.
fn host_is_ours(host: &str, names: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: "[::1]:8000".
        return rest
            .split_once(']')
            .is_some_and(|(address, _)| address.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|known| known.eq_ignore_ascii_case(name))
}

/// Runs before every `/api/*` handler (and before its body is read): 401 with
/// `WWW-Authenticate: Bearer` unless the request carries the token.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.token.admits(request.headers()) {
        return next.run(request).await;
    }
    cm_types::metrics::ADMIN_UNAUTHORIZED.increment();
    let mut response = ApiError(
        StatusCode::UNAUTHORIZED,
        "this API needs the node's admin token: send Authorization: Bearer TOKEN (see --admin-token-file, DATA/admin.token)".to_owned(),
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such API route".to_owned())
}

/// An error answer: `{"error": "..."}` with a status code.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<MailError> for ApiError {
    fn from(error: MailError) -> ApiError {
        let status = match &error {
            MailError::NoSuchAccount => StatusCode::NOT_FOUND,
            MailError::AccountExists => StatusCode::CONFLICT,
            MailError::Invalid(_) => StatusCode::BAD_REQUEST,
            MailError::InUse => StatusCode::CONFLICT,
            MailError::Unavailable(_) | MailError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%error, "admin request failed");
        }
        ApiError(status, error.to_string())
    }
}

fn parse_address(text: &str) -> Result<Address, ApiError> {
    Address::parse(text).map_err(|error| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid address {text:?}: {error}"),
        )
    })
}

/// Axum's own JSON rejections are plain text; wrap them in our error shape.
fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(value)| value)
        .map_err(|rejection| ApiError(rejection.status(), rejection.body_text()))
}

/// 200 when the node serves; 503 while it is still being handed the data of the
/// keys it replicates (after joining with an empty store), when it refuses reads.
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.mail.local().is_syncing() {
        (StatusCode::SERVICE_UNAVAILABLE, "catching up\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        cm_types::metrics::render_all(),
    )
}

async fn ring_view(State(state): State<AppState>) -> Result<Json<RingResponse>, ApiError> {
    let store = state.mail.store().clone();
    let keys = tokio::task::spawn_blocking(move || store.n_keys())
        .await
        .map_err(|error| ApiError(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
        .map_err(|error| ApiError(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    Ok(Json(RingResponse {
        view: state.ring.view(),
        keys,
        replicas: state.mail.config().replicas as u64,
        out_of_sync: cm_types::metrics::ADDRESSES_OUT_OF_SYNC.get(),
    }))
}

async fn cluster_view(State(state): State<AppState>) -> Json<ClusterView> {
    Json(ClusterView {
        nodes: state.ring.cluster().await,
    })
}

#[derive(Serialize)]
struct UserList {
    users: Vec<Address>,
}

async fn list_users(State(state): State<AppState>) -> Result<Json<UserList>, ApiError> {
    Ok(Json(UserList {
        users: state.mail.list_accounts().await?,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    address: String,
    password: String,
}

async fn create_user(
    State(state): State<AppState>,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let user = json_body(body)?;
    let address = parse_address(&user.address)?;
    state.mail.create_account(&address, &user.password).await?;
    tracing::info!(%address, "account created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "address": address })),
    ))
}

async fn delete_user(
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> Result<StatusCode, ApiError> {
    let address = parse_address(&address)?;
    state.mail.delete_account(&address).await?;
    tracing::info!(%address, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(state): State<AppState>,
    Path(address): Path<String>,
    body: Result<Json<NewPassword>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let address = parse_address(&address)?;
    let body = json_body(body)?;
    state.mail.set_password(&address, &body.password).await?;
    tracing::info!(%address, "password changed");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/replicas/{address}`: this node's own copy of one address (not a
/// quorum read), so an operator can see what each replica holds.
async fn local_replica(
    State(state): State<AppState>,
    Path(address): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let address = parse_address(&address)?;
    let (account, mailbox) = state.mail.local_replica(&address).await?;
    let messages: Vec<serde_json::Value> = mailbox
        .received
        .iter()
        .map(|(id, size)| serde_json::json!({ "id": id, "size": size, "deleted": mailbox.tombstones.contains_key(id) }))
        .collect();
    let tombstones: Vec<String> = mailbox.tombstones.keys().map(ToString::to_string).collect();
    Ok(Json(serde_json::json!({
        "address": address,
        "account": account.map(|account| serde_json::json!({
            "deleted": account.deleted,
            "version": { "wall_ms": account.version.wall_ms, "counter": account.version.counter, "node": account.version.node },
        })),
        "messages": messages,
        "visible": mailbox.visible().count(),
        "tombstones": tombstones,
    })))
}

/// Entries of the outbound queue listed at most by `GET /api/queue`.
const QUEUE_LIST_ENTRIES_MAX: usize = 10_000;

/// One outbound queue entry as `GET /api/queue` shows it (docs/DESIGN.md §12).
#[derive(Serialize)]
struct QueueEntryView {
    id: String,
    /// Empty for the null sender `<>`.
    sender: String,
    /// The recipients still waiting for delivery.
    recipients: Vec<String>,
    attempts: usize,
    /// Unix milliseconds of the next attempt.
    next_attempt: u64,
    last_error: Option<String>,
    created: u64,
}

#[derive(Serialize)]
struct QueueView {
    entries: Vec<QueueEntryView>,
}

/// `GET /api/queue`: the entries this node holds a copy of, oldest first.
async fn list_queue(State(state): State<AppState>) -> Result<Json<QueueView>, ApiError> {
    let mut held = state.mail.outbound_held(QUEUE_LIST_ENTRIES_MAX).await?;
    held.sort_by_key(|entry| (entry.created_ms, entry.id));
    let entries = held
        .into_iter()
        .map(|entry| QueueEntryView {
            id: entry.id.to_string(),
            sender: entry.sender.clone(),
            recipients: entry.pending().cloned().collect(),
            attempts: entry.attempts.len(),
            next_attempt: entry.next_attempt.1,
            last_error: entry.last_error().map(ToOwned::to_owned),
            created: entry.created_ms,
        })
        .collect();
    Ok(Json(QueueView { entries }))
}

fn parse_queue_id(text: &str) -> Result<cm_model::MessageId, ApiError> {
    text.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid queue entry id {text:?}: 32 hexadecimal digits"),
        )
    })
}

fn no_such_entry(id: &cm_model::MessageId) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no queue entry {id} on this node (GET /api/queue lists the ones it holds)"),
    )
}

/// `POST /api/queue/{id}/retry`: the entry is due at once (its next attempt within
/// a second, at the coordinator of its key).
async fn retry_queued(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_queue_id(&id)?;
    if !state.mail.retry_outbound(id).await? {
        return Err(no_such_entry(&id));
    }
    tracing::info!(%id, "outbound entry retried by an operator");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/queue/{id}`: the entry is removed without delivery or bounce.
async fn delete_queued(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_queue_id(&id)?;
    if !state.mail.delete_outbound(id).await? {
        return Err(no_such_entry(&id));
    }
    tracing::info!(%id, "outbound entry deleted by an operator");
    Ok(StatusCode::NO_CONTENT)
}

/// The status page shows the ring only to a caller with the token; a browser, which
/// cannot send it, gets a page that says where to look instead.
async fn status_page(State(state): State<AppState>, headers: HeaderMap) -> Html<String> {
    if !state.token.admits(&headers) {
        return Html(
            "<!doctype html><meta charset=utf-8><title>chordmail node</title>\
             <h1>chordmail node</h1><p>The ring view needs the node's admin token \
             (<code>Authorization: Bearer</code>); try <code>chordmail ring --node URL</code>. \
             Open to all: <a href=/healthz>/healthz</a> · <a href=/metrics>/metrics</a></p>"
                .to_owned(),
        );
    }
    let view = state.ring.view();
    let cluster = state.ring.cluster().await;
    let row = |node: &NodeRef| {
        format!(
            "<tr><td>{}</td><td>{}</td></tr>",
            node.id,
            escape(&node.addr)
        )
    };
    let nodes: String = cluster.iter().map(row).collect();
    let successors: String = view.successors.iter().map(row).collect();
    let predecessor = view
        .predecessor
        .as_ref()
        .map(row)
        .unwrap_or_else(|| "<tr><td colspan=2>none</td></tr>".into());
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>chordmail node {id}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:0 1em;text-align:left}}</style>\
         <h1>chordmail node {id}</h1><p>ring address {addr}</p>\
         <h2>Predecessor</h2><table>{predecessor}</table>\
         <h2>Successors</h2><table><tr><th>id</th><th>address</th></tr>{successors}</table>\
         <h2>Ring ({n} nodes)</h2><table><tr><th>id</th><th>address</th></tr>{nodes}</table>\
         <p><a href=/api/ring>/api/ring</a> · <a href=/api/cluster>/api/cluster</a> · <a href=/metrics>/metrics</a></p>",
        id = view.id,
        addr = escape(&view.addr),
        n = cluster.len(),
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt as _;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    struct LoneRing;

    impl RingStatus for LoneRing {
        fn view(&self) -> RingView {
            RingView {
                id: 1,
                addr: "127.0.0.1:5000".to_owned(),
                predecessor: None,
                successors: Vec::new(),
                fingers: Vec::new(),
            }
        }

        fn cluster(&self) -> Pin<Box<dyn Future<Output = Vec<NodeRef>> + Send + '_>> {
            Box::pin(async { Vec::new() })
        }
    }

    fn request(method: &str, path: &str, body: &str, authorization: Option<&str>) -> Request {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(Body::from(body.to_owned())).unwrap()
    }

    /// Every `/api/*` route, with a body that would change something if it ran.
    const ROUTES: &[(&str, &str, &str)] = &[
        ("GET", "/api/ring", ""),
        ("GET", "/api/cluster", ""),
        ("GET", "/api/users", ""),
        (
            "POST",
            "/api/users",
            r#"{"address":"mallory@example.org","password":"pw"}"#,
        ),
        (
            "PUT",
            "/api/users/alice@example.org/password",
            r#"{"password":"taken over"}"#,
        ),
        ("DELETE", "/api/users/alice@example.org", ""),
        ("GET", "/api/replicas/alice@example.org", ""),
        ("GET", "/api/queue", ""),
        (
            "POST",
            "/api/queue/00000000000000000000000000000001/retry",
            "",
        ),
        ("DELETE", "/api/queue/00000000000000000000000000000001", ""),
        ("GET", "/api/no-such-route", ""),
    ];

    /// Goal: no `/api/*` route runs without the token. Method: call every route with
    /// no header, a wrong token, a token that is a prefix of the right one, the right
    /// one under another scheme, and check 401 + `WWW-Authenticate: Bearer`; then
    /// check the account is as before (same password, no new account), and that the
    /// same calls with the token are answered by their handlers.
    #[tokio::test]
    async fn every_api_route_needs_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let mail = Mail::open_for_tests(dir.path());
        let alice = Address::parse("alice@example.org").unwrap();
        mail.create_account(&alice, "secret").await.unwrap();
        let app = router(
            mail.clone(),
            Arc::new(LoneRing),
            AdminToken::new(TOKEN).unwrap(),
            Vec::new(),
        );
        let wrong = format!("Bearer {}", TOKEN.replace('0', "1"));
        let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
        let longer = format!("Bearer {TOKEN}0");
        let other_scheme = format!("Basic {TOKEN}");
        let refusals = [
            None,
            Some(wrong.as_str()),
            Some(prefix.as_str()),
            Some(longer.as_str()),
            Some(other_scheme.as_str()),
            Some("Bearer "),
        ];
        for (method, path, body) in ROUTES {
            for authorization in refusals {
                let response = app
                    .clone()
                    .oneshot(request(method, path, body, authorization))
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {authorization:?}"
                );
                assert_eq!(
                    response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
                    "Bearer"
                );
            }
        }
        assert_eq!(mail.list_accounts().await.unwrap(), vec![alice.clone()]);
        assert!(
            mail.authenticate(&alice, b"secret").await.unwrap(),
            "the password is unchanged"
        );

        let bearer = format!("Bearer {TOKEN}");
        for (method, path, body) in ROUTES {
            let status = app
                .clone()
                .oneshot(request(method, path, body, Some(&bearer)))
                .await
                .unwrap()
                .status();
            let expected = match (*method, *path) {
                (_, path) if path.starts_with("/api/queue/") => StatusCode::NOT_FOUND,
                ("POST", _) => StatusCode::CREATED,
                ("DELETE", _) | ("PUT", _) => StatusCode::NO_CONTENT,
                (_, "/api/no-such-route") => StatusCode::NOT_FOUND,
                _ => StatusCode::OK,
            };
            assert_eq!(status, expected, "{method} {path} with the token");
        }
    }

    /// Goal: probes and scrapers need no token, and the status page leaks nothing
    /// without it. Method: GET each without a header and look at status and body.
    #[tokio::test]
    async fn health_metrics_and_an_empty_status_page_are_open() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(
            Mail::open_for_tests(dir.path()),
            Arc::new(LoneRing),
            AdminToken::new(TOKEN).unwrap(),
            vec!["mail.example.org".to_owned()],
        );
        for path in ["/healthz", "/metrics", "/"] {
            let response = app
                .clone()
                .oneshot(request("GET", path, "", None))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
        let page = |authorization: Option<String>| {
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(request("GET", "/", "", authorization.as_deref()))
                    .await
                    .unwrap();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                String::from_utf8(bytes.to_vec()).unwrap()
            }
        };
        assert!(!page(None).await.contains("127.0.0.1:5000"));
        assert!(
            page(Some(format!("Bearer {TOKEN}")))
                .await
                .contains("127.0.0.1:5000")
        );
    }

    /// Goal: the queue routes show, retry and delete the entries this node holds,
    /// in the shape of docs/DESIGN.md §12. Method: an entry queued through the mail
    /// service, deferred an hour; list it, retry it (due now), delete it (gone).
    #[tokio::test]
    async fn the_queue_is_listed_retried_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mail = Mail::open_for_tests(dir.path());
        let app = router(
            mail.clone(),
            Arc::new(LoneRing),
            AdminToken::new(TOKEN).unwrap(),
            Vec::new(),
        );
        let bearer = format!("Bearer {TOKEN}");
        let call = |method: &'static str, path: String| {
            let app = app.clone();
            let bearer = bearer.clone();
            async move {
                let response = app
                    .oneshot(request(method, &path, "", Some(&bearer)))
                    .await
                    .unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&body).ok(),
                )
            }
        };
        let sender = Address::parse("alice@example.org").unwrap();
        let recipient = Address::parse("bob@b.test").unwrap();
        let id = mail
            .enqueue(
                Some(&sender),
                &[recipient],
                bytes::Bytes::from_static(b"x\r\n"),
            )
            .await
            .unwrap();
        let mut entry = mail.outbound_held(1).await.unwrap().remove(0);
        entry.next_attempt = (mail.next_version(), cm_repl::now_ms() + 3_600_000);
        mail.update_outbound(entry).await.unwrap();

        let (status, listed) = call("GET", "/api/queue".to_owned()).await;
        assert_eq!(status, StatusCode::OK);
        let entries = listed.unwrap()["entries"].clone();
        assert_eq!(entries.as_array().unwrap().len(), 1);
        assert_eq!(entries[0]["id"], id.to_string());
        assert_eq!(entries[0]["sender"], "alice@example.org");
        assert_eq!(entries[0]["recipients"], serde_json::json!(["bob@b.test"]));
        assert_eq!(entries[0]["attempts"], 0);
        assert!(entries[0]["next_attempt"].as_u64().unwrap() > cm_repl::now_ms());

        let retried = call("POST", format!("/api/queue/{id}/retry")).await;
        assert_eq!(retried.0, StatusCode::NO_CONTENT);
        let due = mail.outbound_due(cm_repl::now_ms() + 10, 10).await.unwrap();
        assert_eq!(due.due.len(), 1, "a retried entry is due at once");
        assert_eq!(
            call("POST", "/api/queue/not-hex/retry".to_owned()).await.0,
            StatusCode::BAD_REQUEST
        );

        assert_eq!(
            call("DELETE", format!("/api/queue/{id}")).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call("DELETE", format!("/api/queue/{id}")).await.0,
            StatusCode::NOT_FOUND
        );
        let (_, listed) = call("GET", "/api/queue".to_owned()).await;
        assert_eq!(listed.unwrap()["entries"], serde_json::json!([]));
    }

    /// Goal: a rebound DNS name cannot reach the API, even with the token. Method:
    /// the same request under several `Host` headers.
    #[tokio::test]
    async fn foreign_host_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(
            Mail::open_for_tests(dir.path()),
            Arc::new(LoneRing),
            AdminToken::new(TOKEN).unwrap(),
            vec!["mail.example.org".to_owned()],
        );
        for (host, expected) in [
            ("127.0.0.1:8000", StatusCode::OK),
            ("[::1]:8000", StatusCode::OK),
            ("localhost:8000", StatusCode::OK),
            ("Mail.Example.org:8000", StatusCode::OK),
            ("mail.example.org", StatusCode::OK),
            ("attacker.example:8000", StatusCode::MISDIRECTED_REQUEST),
            ("[evil]:8000", StatusCode::MISDIRECTED_REQUEST),
        ] {
            let mut request = request("GET", "/api/users", "", Some(&format!("Bearer {TOKEN}")));
            request
                .headers_mut()
                .insert(header::HOST, host.parse().unwrap());
            let status = app.clone().oneshot(request).await.unwrap().status();
            assert_eq!(status, expected, "{host}");
        }
    }

    #[test]
    fn short_or_odd_tokens_are_refused() {
        assert!(AdminToken::new(&format!("{TOKEN}\n")).is_ok());
        assert_eq!(AdminToken::new("short").unwrap_err(), TokenError::Length(5));
        assert_eq!(
            AdminToken::new(&format!("{TOKEN} {TOKEN}")).unwrap_err(),
            TokenError::Characters
        );
        assert_eq!(
            format!("{:?}", AdminToken::new(TOKEN).unwrap()),
            "AdminToken(..)"
        );
    }
}
