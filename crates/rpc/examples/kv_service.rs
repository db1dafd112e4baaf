//! A key-value store as a service: methods `put` (body `KEY VALUE`), `get`, `del`
//! (body `KEY`) and `list`. Status 0 on success, 1 for a missing key, 2 for bad
//! input. The data live in memory and in a file (rewritten after each change), so
//! the store survives restarts of the runner.
//!
//! `cargo run -p cm-rpc --example kv_service -- 127.0.0.1:15000 kv@localhost PASSWORD [DIR]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cm_rpc::{Reply, Request, Service, ServiceConfig};

/// Keys and values are single lines of text of bounded size.
const KEY_BYTES_MAX: usize = 256;
const VALUE_BYTES_MAX: usize = 64 * 1024;
const KEYS_MAX: usize = 100_000;

struct Store {
    entries: BTreeMap<String, String>,
    path: PathBuf,
}

impl Store {
    fn load(path: PathBuf) -> Store {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let entries = text
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Store { entries, path }
    }

    /// Temporary file, fsync, rename: a crash leaves the old or the new contents.
    fn save(&self) -> std::io::Result<()> {
        let temporary = self.path.with_extension("tmp");
        let mut text = String::new();
        for (key, value) in &self.entries {
            text.push_str(&format!("{key}\t{value}\n"));
        }
        std::fs::write(&temporary, text)?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, &self.path)
    }

    fn handle(&mut self, request: &Request) -> Reply {
        let text = String::from_utf8_lossy(&request.body);
        let text = text.trim_end_matches('\n');
        let answer = |status: u8, body: String| Reply {
            status,
            body: body.into_bytes(),
        };
        let valid_key = |key: &str| {
            !key.is_empty() && key.len() <= KEY_BYTES_MAX && !key.contains(char::is_whitespace)
        };
        match request.method.as_str() {
            "put" => {
                let Some((key, value)) = text.split_once(' ') else {
                    return answer(2, "put wants KEY VALUE\n".to_owned());
                };
                if !valid_key(key) || value.len() > VALUE_BYTES_MAX || value.contains(['\n', '\t'])
                {
                    return answer(2, "bad key or value\n".to_owned());
                }
                if !self.entries.contains_key(key) && self.entries.len() >= KEYS_MAX {
                    return answer(2, "store full\n".to_owned());
                }
                self.entries.insert(key.to_owned(), value.to_owned());
                match self.save() {
                    Ok(()) => answer(0, "ok\n".to_owned()),
                    Err(error) => answer(1, format!("cannot save: {error}\n")),
                }
            }
            "get" => match self.entries.get(text) {
                Some(value) => answer(0, format!("{value}\n")),
                None => answer(1, format!("no key {text}\n")),
            },
            "del" => match self.entries.remove(text) {
                Some(_) => match self.save() {
                    Ok(()) => answer(0, "ok\n".to_owned()),
                    Err(error) => answer(1, format!("cannot save: {error}\n")),
                },
                None => answer(1, format!("no key {text}\n")),
            },
            "list" => answer(
                0,
                self.entries.keys().map(|key| format!("{key}\n")).collect(),
            ),
            other => answer(
                2,
                format!("unknown method {other}; use put, get, del or list\n"),
            ),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: kv_service HOST:SMTP_PORT[/POP3_PORT] ACCOUNT PASSWORD [DIR]";
    let (Some(server), Some(account), Some(password)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("{usage}");
    };
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| format!("chordmail-rpc-state/{account}")),
    );
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(Mutex::new(Store::load(dir.join("kv.tsv"))));
    let config = ServiceConfig::new(
        vec![server.parse()?],
        &account,
        &password,
        dir.join("replies"),
    );
    let service = Service::new(config)?;
    service
        .run(move |request| {
            let store = Arc::clone(&store);
            async move { store.lock().expect("kv lock").handle(&request) }
        })
        .await?;
    Ok(())
}
