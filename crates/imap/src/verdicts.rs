//! The one place where outcomes of the mail service become IMAP answers: each
//! [`Request`] of the protocol core is carried out against [`Mail`] and its result
//! (or failure) turned into the matching [`Answer`].

use cm_imap_proto::{
    Answer, Entry, Failure, FolderInfo, FolderStatus, LoginFailure, Request, Snapshot,
};
use cm_model::{FlagName, FolderId, FolderState, FolderView, MessageId};
use cm_repl::imap::Refusal;
use cm_repl::{Mail, MailError, now_ms};
use cm_types::Address;

/// What the shell knows of the session's account between requests.
#[derive(Debug, Default)]
pub struct Account {
    /// Set by a successful login.
    pub address: Option<Address>,
    /// The folder of the last snapshot: the core asks for snapshots only of the
    /// folder it selects or has selected, and for bodies and flags only of that
    /// one, so they are found by its id even if the folder is renamed meanwhile.
    pub selected: Option<FolderView>,
}

/// Carries out `request` for the session's account.
pub async fn answer(
    mail: &Mail,
    account: &mut Account,
    request: Request<MessageId>,
) -> Answer<MessageId> {
    if let Request::Login { user, password } = request {
        let started = std::time::Instant::now();
        let outcome = login(mail, &user, &password.0).await;
        cm_types::metrics::IMAP_LOGIN_SECONDS.observe_duration(started.elapsed());
        if let Ok(address) = &outcome {
            account.address = Some(address.clone());
        }
        return Answer::Login(outcome.map(|_| ()));
    }
    let address = account
        .address
        .clone()
        .expect("the core asks for account data only after a login");
    match request {
        Request::Login { .. } => unreachable!("answered above"),
        Request::Snapshot { folder } => {
            let outcome = async {
                let view = named(mail, &address, &folder).await?;
                let state = mail.numbered_folder(&address, view.id).await?;
                account.selected = Some(view.clone());
                Ok(snapshot(&view, &state))
            };
            Answer::Snapshot(outcome.await.map_err(failure))
        }
        Request::ListFolders => {
            let outcome = mail.folders(&address).await.map(|folders| {
                folders
                    .view()
                    .into_iter()
                    .map(|view| FolderInfo {
                        name: view.name,
                        subscribed: view.subscribed,
                        special_use: view.special_use.map(|use_| use_.attribute().to_owned()),
                    })
                    .collect()
            });
            Answer::Folders(outcome.map_err(|error| failure(Rejected::Mail(error))))
        }
        Request::Status { folder } => {
            let outcome = async {
                let view = named(mail, &address, &folder).await?;
                let counts = mail.numbered_folder(&address, view.id).await?.counts();
                Ok(FolderStatus {
                    n_messages: counts.n_messages,
                    uid_next: counts.uid_next,
                    uid_validity: view.uid_validity,
                    n_unseen: counts.n_unseen,
                    n_deleted: counts.n_deleted,
                })
            };
            Answer::Status(outcome.await.map_err(failure))
        }
        Request::Create { folder } => done(mail.create_folder(&address, &folder).await),
        Request::Delete { folder } => done(mail.delete_folder(&address, &folder).await),
        Request::Rename { from, to } => done(mail.rename_folder(&address, &from, &to).await),
        Request::Subscribe { folder, subscribed } => {
            done(mail.subscribe_folder(&address, &folder, subscribed).await)
        }
        Request::Append {
            folder,
            flags,
            internal_date_s,
            message,
        } => {
            let outcome = async {
                let view = named(mail, &address, &folder).await?;
                let flags = flag_names(&flags)?;
                let arrival_ms = internal_date_s
                    .and_then(|seconds| u64::try_from(seconds).ok())
                    .map_or_else(now_ms, |seconds| seconds.saturating_mul(1000));
                let uid = mail
                    .append(&address, view.id, &flags, arrival_ms, message.into())
                    .await??;
                Ok((view.uid_validity, uid))
            };
            Answer::Appended(outcome.await.map_err(failure))
        }
        Request::Bodies { ids } => {
            let Some(view) = &account.selected else {
                return Answer::Bodies(vec![None; ids.len()]);
            };
            match mail.folder_bodies(&address, view.id, &ids).await {
                Ok(bodies) => Answer::Bodies(
                    bodies
                        .into_iter()
                        .map(|body| body.map(|body| body.to_vec()))
                        .collect(),
                ),
                Err(error) => {
                    tracing::warn!(%error, "reading message bodies failed");
                    Answer::Bodies(vec![None; ids.len()])
                }
            }
        }
        Request::Store { changes } => {
            let outcome = async {
                let folder = selected_id(account)?;
                let mut parsed = Vec::with_capacity(changes.len());
                for change in changes {
                    parsed.push((
                        change.id,
                        flag_names(&change.add)?,
                        flag_names(&change.remove)?,
                    ));
                }
                mail.store_flags(&address, folder, &parsed).await??;
                Ok(())
            };
            Answer::Done(outcome.await.map_err(failure))
        }
        Request::Expunge { folder, ids } => {
            let outcome = async {
                let id = match &account.selected {
                    Some(view) if view.name == folder => view.id,
                    _ => named(mail, &address, &folder).await?.id,
                };
                mail.expunge(&address, id, &ids).await?;
                Ok(())
            };
            Answer::Done(outcome.await.map_err(failure))
        }
        Request::Copy {
            from,
            to,
            ids,
            remove_source,
        } => {
            let outcome = async {
                let from = match &account.selected {
                    Some(view) if view.name == from => view.id,
                    _ => named(mail, &address, &from).await?.id,
                };
                let to = named(mail, &address, &to).await?;
                let copied = mail
                    .copy_messages(&address, from, to.id, &ids, remove_source)
                    .await??;
                Ok((
                    to.uid_validity,
                    copied.into_iter().map(|(_, uid)| uid).collect(),
                ))
            };
            Answer::Copied(outcome.await.map_err(failure))
        }
    }
}

/// Checks the credentials. A user name that is no address is a wrong login like
/// any other: the peer learns nothing about which part was wrong.
async fn login(mail: &Mail, user: &str, password: &[u8]) -> Result<Address, LoginFailure> {
    let Some(address) = user_address(user, &mail.config().domains) else {
        return Err(LoginFailure::BadCredentials);
    };
    match mail.authenticate(&address, password).await {
        Ok(true) => {
            tracing::debug!(%address, "logged in");
            Ok(address)
        }
        Ok(false) => Err(LoginFailure::BadCredentials),
        Err(error) => {
            tracing::warn!(%error, "authentication failed to run");
            Err(LoginFailure::Unavailable)
        }
    }
}

/// Why a request was not carried out.
enum Rejected {
    Refused(Refusal),
    Mail(MailError),
}

impl From<Refusal> for Rejected {
    fn from(refusal: Refusal) -> Rejected {
        Rejected::Refused(refusal)
    }
}

impl From<MailError> for Rejected {
    fn from(error: MailError) -> Rejected {
        Rejected::Mail(error)
    }
}

fn failure(rejected: Rejected) -> Failure {
    match rejected {
        Rejected::Refused(Refusal::NoSuchFolder) => Failure::NonExistent,
        Rejected::Refused(Refusal::Exists) => Failure::AlreadyExists,
        Rejected::Refused(Refusal::Cannot) => Failure::Cannot,
        Rejected::Refused(Refusal::Limit) => Failure::Limit,
        Rejected::Mail(MailError::Invalid(reason)) => {
            tracing::debug!(%reason, "request refused");
            Failure::Cannot
        }
        Rejected::Mail(error) => {
            tracing::warn!(%error, "request failed");
            Failure::Unavailable
        }
    }
}

fn done(outcome: Result<Result<(), Refusal>, MailError>) -> Answer<MessageId> {
    Answer::Done(match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(refusal)) => Err(failure(refusal.into())),
        Err(error) => Err(failure(error.into())),
    })
}

async fn named(mail: &Mail, address: &Address, name: &str) -> Result<FolderView, Rejected> {
    mail.folder_named(address, name)
        .await?
        .ok_or(Rejected::Refused(Refusal::NoSuchFolder))
}

fn selected_id(account: &Account) -> Result<FolderId, Rejected> {
    account
        .selected
        .as_ref()
        .map(|view| view.id)
        .ok_or(Rejected::Refused(Refusal::NoSuchFolder))
}

fn flag_names(flags: &[String]) -> Result<Vec<FlagName>, Rejected> {
    flags
        .iter()
        .map(|flag| FlagName::parse(flag).map_err(|_| Rejected::Refused(Refusal::Cannot)))
        .collect()
}

/// The core's view of a numbered folder.
fn snapshot(view: &FolderView, state: &FolderState) -> Snapshot<MessageId> {
    let messages = state
        .messages()
        .into_iter()
        .map(|message| Entry {
            uid: message.uid,
            id: message.id,
            flags: message.flags.iter().map(ToString::to_string).collect(),
            size: message.size,
            internal_date_s: (message.id.arrival_ms() / 1000) as i64,
        })
        .collect();
    Snapshot {
        uid_validity: view.uid_validity,
        uid_next: state.uids.uid_next(),
        messages,
        keywords: state
            .flags
            .keywords()
            .into_iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// The account a LOGIN name (or SASL authcid) names: a full address, or a bare
/// local part in the first domain the ring serves. `None` if it is no address.
fn user_address(user: &str, domains: &[String]) -> Option<Address> {
    if user.contains('@') {
        return Address::parse(user).ok();
    }
    let domain = domains.first()?;
    Address::parse(&format!("{user}@{domain}")).ok()
}
