//! The admin HTTP API of a node (docs/DESIGN.md §8): JSON endpoints for accounts and the
//! ring, `/healthz`, Prometheus `/metrics` and a small HTML status page at `/`.
//!
//! A thin layer: handlers translate HTTP into calls on [`cm_repl::Mail`] and a
//! [`RingStatus`], and their answers back into the fixed JSON shapes. This is the only
//! crate that defines wire DTOs for operators; it holds no state of its own.
//! The API has no authentication: bind it to a loopback or management address.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use cm_repl::{Mail, MailError};
use cm_types::Address;
use cm_types::limits::ADMIN_BODY_BYTES_MAX;
use serde::{Deserialize, Serialize};

/// A ring member as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub id: u64,
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finger {
    pub start: u64,
    pub id: u64,
    pub addr: String,
}

/// `GET /api/ring`: this node's view of the ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingView {
    pub id: u64,
    pub addr: String,
    pub predecessor: Option<NodeRef>,
    pub successors: Vec<NodeRef>,
    pub fingers: Vec<Finger>,
    /// Ring keys (addresses) with data in this node's store.
    pub keys: u64,
    /// Copies of every key the ring keeps (`--replicas`).
    #[serde(default)]
    pub replicas: u64,
    /// (address, replica) pairs that differed in the last anti-entropy round: 0 when
    /// every key this node holds has its copies in place.
    #[serde(default)]
    pub out_of_sync: u64,
}

/// `GET /api/cluster`: the ring walked along successors from this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeRef>,
}

/// What the admin API needs from the ring. Implemented by the ring driver; a fixed
/// one-node implementation serves a node that has no ring yet.
pub trait RingStatus: Send + Sync + 'static {
    /// This node's current view; `keys` is filled in by the API from the store.
    fn view(&self) -> RingView;
    /// The ring in order, starting at this node, each node once.
    fn cluster(&self) -> Pin<Box<dyn Future<Output = Vec<NodeRef>> + Send + '_>>;
}

#[derive(Clone)]
struct AppState {
    mail: Mail,
    ring: Arc<dyn RingStatus>,
}

/// The router of the admin API; the binary binds it to `--http`.
pub fn router(mail: Mail, ring: Arc<dyn RingStatus>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/ring", get(ring_view))
        .route("/api/cluster", get(cluster_view))
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/users/{address}", axum::routing::delete(delete_user))
        .route("/api/users/{address}/password", put(set_password))
        .route("/api/replicas/{address}", get(local_replica))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_BYTES_MAX))
        .with_state(AppState { mail, ring })
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
        cm_types::metrics::render(cm_types::metrics::ALL),
    )
}

async fn ring_view(State(state): State<AppState>) -> Result<Json<RingView>, ApiError> {
    let mut view = state.ring.view();
    let store = state.mail.store().clone();
    view.replicas = state.mail.config().replicas as u64;
    view.out_of_sync = cm_types::metrics::ADDRESSES_OUT_OF_SYNC.get();
    view.keys = tokio::task::spawn_blocking(move || store.n_keys())
        .await
        .map_err(|error| ApiError(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
        .map_err(|error| ApiError(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    Ok(Json(view))
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

async fn status_page(State(state): State<AppState>) -> Html<String> {
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
