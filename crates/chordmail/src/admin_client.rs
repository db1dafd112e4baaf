//! `chordmail user`, `ring` and `queue`: clients of a node's admin HTTP API.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cli::{
    QueueAction, QueueArgs, RingArgs, TokenArgs, UserAction, UserArgs, UserWithPassword,
};

/// The environment variable the clients read the admin token from when no
/// `--token-file` is given (docs/DESIGN.md §8).
const TOKEN_ENV: &str = "CHORDMAIL_TOKEN";
/// The token file of `chordmail up` with its default `--data`, the last resort.
const UP_TOKEN_FILE: &str = "chordmail-data/up/admin.token";

/// The admin token: `--token-file`, else `$CHORDMAIL_TOKEN`, else `up`'s token file.
fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let from_file = |path: &std::path::Path| -> anyhow::Result<String> {
        let token = crate::trust::read_token_file(path, "the token file")
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(token.secret().to_owned())
    };
    if let Some(path) = &args.token_file {
        return from_file(path);
    }
    if let Ok(token) = std::env::var(TOKEN_ENV)
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let up_file = std::path::Path::new(UP_TOKEN_FILE);
    if up_file.exists() {
        return from_file(up_file);
    }
    bail!(
        "no admin token: pass --token-file DATA/admin.token (the node logs its path at start), \
         or set {TOKEN_ENV}"
    )
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

fn url(node: &str, path: &str) -> String {
    let base = if node.contains("://") {
        node.to_owned()
    } else {
        format!("http://{node}")
    };
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Sends a request with the admin token and returns (status, JSON body or Null),
/// naming the node on failure.
fn call(
    node: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let agent = agent();
    let target = url(node, path);
    let bearer = format!("Bearer {token}");
    let response = match (method, body) {
        ("GET", _) => agent.get(&target).header("Authorization", &bearer).call(),
        ("DELETE", _) => agent
            .delete(&target)
            .header("Authorization", &bearer)
            .call(),
        ("POST", Some(body)) => agent
            .post(&target)
            .header("Authorization", &bearer)
            .send_json(body),
        ("PUT", Some(body)) => agent
            .put(&target)
            .header("Authorization", &bearer)
            .send_json(body),
        _ => unreachable!("every admin call pairs its method with a body as written above"),
    };
    let mut response = response
        .with_context(|| format!("cannot reach the admin API at {target}: is the node running?"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status == 401 {
        bail!(
            "the node at {target} refused the admin token (HTTP 401): pass the node's token with \
             --token-file DATA/admin.token or {TOKEN_ENV}"
        );
    }
    Ok((status, value))
}

fn error_text(status: u16, value: &Value) -> String {
    match value.get("error").and_then(Value::as_str) {
        Some(reason) => format!("{reason} (HTTP {status})"),
        None => format!("HTTP {status}"),
    }
}

fn read_password(source: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if source == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the password from stdin")?;
    } else {
        cm_tls::cluster::check_private_file(std::path::Path::new(source))
            .map_err(|error| anyhow::anyhow!("--password-file: {error}"))?;
        text = std::fs::read_to_string(source)
            .with_context(|| format!("cannot read --password-file {source}"))?;
    }
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        bail!(
            "the password in {} is empty",
            if source == "-" { "stdin" } else { source }
        );
    }
    Ok(password)
}

fn encode_path_segment(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"@.-_+".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

pub fn user(args: UserArgs) -> anyhow::Result<()> {
    let Some(node) = args.node.as_deref() else {
        bail!("--node URL is required, e.g. --node http://127.0.0.1:8000");
    };
    let token = token(&args.token)?;
    let call =
        |method: &str, path: &str, body: Option<Value>| call(node, &token, method, path, body);
    match args.action {
        UserAction::Add(UserWithPassword {
            address,
            password_file,
        }) => {
            let password = read_password(&password_file)?;
            let (status, value) = call(
                "POST",
                "/api/users",
                Some(json!({ "address": address, "password": password })),
            )?;
            match status {
                201 => println!("created {address}"),
                _ => bail!("cannot create {address}: {}", error_text(status, &value)),
            }
        }
        UserAction::Passwd(UserWithPassword {
            address,
            password_file,
        }) => {
            let password = read_password(&password_file)?;
            let path = format!("/api/users/{}/password", encode_path_segment(&address));
            let (status, value) = call("PUT", &path, Some(json!({ "password": password })))?;
            match status {
                204 => println!("password of {address} changed"),
                _ => bail!(
                    "cannot change the password of {address}: {}",
                    error_text(status, &value)
                ),
            }
        }
        UserAction::Del { address } => {
            let (status, value) = call(
                "DELETE",
                &format!("/api/users/{}", encode_path_segment(&address)),
                None,
            )?;
            match status {
                204 => println!("deleted {address}"),
                _ => bail!("cannot delete {address}: {}", error_text(status, &value)),
            }
        }
        UserAction::List => {
            let (status, value) = call("GET", "/api/users", None)?;
            if status != 200 {
                bail!("cannot list users: {}", error_text(status, &value));
            }
            for user in value["users"].as_array().into_iter().flatten() {
                println!("{}", user.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

pub fn queue(args: QueueArgs) -> anyhow::Result<()> {
    let Some(node) = args.node.as_deref() else {
        bail!("--node URL is required, e.g. --node http://127.0.0.1:8000");
    };
    let token = token(&args.token)?;
    match args.action {
        QueueAction::List => {
            let (status, value) = call(node, &token, "GET", "/api/queue", None)?;
            if status != 200 {
                bail!("cannot list the queue: {}", error_text(status, &value));
            }
            let entries = value["entries"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<32}  {:<24}  {:>8}  {:<13}  RECIPIENTS / LAST ERROR",
                "ID", "SENDER", "ATTEMPTS", "NEXT IN"
            );
            let now_ms = cm_repl::now_ms();
            for entry in &entries {
                let next_ms = entry["next_attempt"].as_u64().unwrap_or(0);
                let next_in = format!("{} s", next_ms.saturating_sub(now_ms) / 1000);
                let sender = match entry["sender"].as_str().unwrap_or_default() {
                    "" => "<>",
                    sender => sender,
                };
                let recipients: Vec<&str> = entry["recipients"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<32}  {:<24}  {:>8}  {:<13}  {}",
                    entry["id"].as_str().unwrap_or("?"),
                    sender,
                    entry["attempts"],
                    next_in,
                    recipients.join(", ")
                );
                if let Some(error) = entry["last_error"].as_str() {
                    println!("{:>84}{error}", "");
                }
            }
            println!("{} entries", entries.len());
        }
        QueueAction::Retry { id } => {
            let path = format!("/api/queue/{}/retry", encode_path_segment(&id));
            let (status, value) = call(node, &token, "POST", &path, Some(json!({})))?;
            match status {
                204 => println!("{id} will be tried again within a second"),
                _ => bail!("cannot retry {id}: {}", error_text(status, &value)),
            }
        }
        QueueAction::Delete { id } => {
            let path = format!("/api/queue/{}", encode_path_segment(&id));
            let (status, value) = call(node, &token, "DELETE", &path, None)?;
            match status {
                204 => println!("deleted {id}"),
                _ => bail!("cannot delete {id}: {}", error_text(status, &value)),
            }
        }
    }
    Ok(())
}

pub fn ring(args: RingArgs) -> anyhow::Result<()> {
    let token = token(&args.token)?;
    let (status, cluster) = call(&args.node, &token, "GET", "/api/cluster", None)?;
    if status != 200 {
        bail!(
            "cannot read the cluster view: {}",
            error_text(status, &cluster)
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cluster)?);
        return Ok(());
    }
    let (status, view) = call(&args.node, &token, "GET", "/api/ring", None)?;
    if status != 200 {
        bail!("cannot read the ring view: {}", error_text(status, &view));
    }
    let node_text =
        |node: &Value| format!("{} ({})", node["id"], node["addr"].as_str().unwrap_or("?"));
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    println!("{:>20}  {:<22}  ", "ID", "RING ADDRESS");
    for node in &nodes {
        let me = node["id"] == view["id"];
        println!(
            "{:>20}  {:<22}  {}",
            node["id"],
            node["addr"].as_str().unwrap_or("?"),
            if me { "<- this node" } else { "" }
        );
    }
    println!();
    println!(
        "{} nodes; this node {} holds {} keys",
        nodes.len(),
        node_text(&view),
        view["keys"]
    );
    match view.get("predecessor").filter(|value| !value.is_null()) {
        Some(predecessor) => println!("predecessor: {}", node_text(predecessor)),
        None => println!("predecessor: none"),
    }
    let successors: Vec<String> = view["successors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(node_text)
        .collect();
    println!("successors:  {}", successors.join(", "));
    Ok(())
}
