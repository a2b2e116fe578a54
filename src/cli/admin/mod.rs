//! `roomcast admin`: administration of a running server through its API, as an
//! administrator: accounts, rooms with their participants, closing a room, bans, invites.
//! Tables for people, `--json` for scripts; a refusal or an unreachable server is one line
//! on stderr and a non-zero exit.

mod client;
mod show;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use client::Api;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The server's HTTP address.
    #[arg(
        long,
        global = true,
        env = "ROOMCAST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: url::Url,
    /// Administrator to log in as.
    #[arg(
        long,
        global = true,
        env = "ROOMCAST_ADMIN_USER",
        default_value = "admin"
    )]
    pub user: String,
    /// File holding the administrator's password. Without it the password is read from
    /// ROOMCAST_ADMIN_PASSWORD, or asked for on a terminal.
    #[arg(long, global = true, env = "ROOMCAST_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// Trust an HTTPS server whose certificate has this SHA-256 (64 hex digits; `/cert-hash`
    /// and the server's start line give it), as the self-signed development certificate needs.
    #[arg(long, global = true)]
    pub cert_sha256: Option<String>,
    /// Print the server's answers as JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Log in and print a login session token (valid 24 h) for ROOMCAST_ADMIN_TOKEN, which
    /// the other commands then use instead of a password.
    Login,
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Rooms.
    #[command(subcommand)]
    Rooms(RoomsCommand),
    /// Ban an identity from a room: its sessions close and it cannot come back.
    Ban {
        room: String,
        identity: String,
        /// Why (shown to moderators).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Unban { room: String, identity: String },
    /// Mint an invite link to a room (one use).
    Invite {
        room: String,
        /// Role it gives: moderator, participant or viewer.
        #[arg(long, default_value = "participant")]
        role: String,
        /// How long it stays valid, e.g. `2h`, `7d` (at most 30 days).
        #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// List every account.
    List,
    /// Create an account; its password is generated and printed unless given.
    Create {
        name: String,
        /// Make it an administrator.
        #[arg(long)]
        admin: bool,
        /// File holding its password (`-`: standard input).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Delete an account: its sessions end and its tokens are refused.
    Delete {
        name: String,
        /// Also delete the rooms it owns (refused otherwise when it owns some).
        #[arg(long)]
        delete_rooms: bool,
    },
    /// Set an account's password (generated and printed unless given); its sessions end.
    ResetPassword {
        name: String,
        /// File holding the new password (`-`: standard input).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoomsCommand {
    /// List every room with its owner and who is in it.
    List,
    /// Close a room: everyone in it is disconnected and must join again.
    Close { room: String },
}

/// Most pages a list reads (100 entries each).
const MAX_PAGES: usize = 1000;

/// A login session token instead of a password, from the environment only (an argument would
/// show in the process list).
const TOKEN_VARIABLE: &str = "ROOMCAST_ADMIN_TOKEN";

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let mut api = Api::new(args.url.clone(), args.cert_sha256.as_deref())?;
    let token = std::env::var(TOKEN_VARIABLE)
        .ok()
        .filter(|t| !t.trim().is_empty());
    match token {
        Some(token) if !matches!(args.command, AdminCommand::Login) => {
            api.with_token(token.trim().to_owned());
        }
        _ => {
            let password = admin_password(&args)?;
            let token = api.login(&args.user, &password).await?;
            if matches!(args.command, AdminCommand::Login) {
                println!("{token}");
                return Ok(());
            }
        }
    }
    let result = command(&api, &args).await;
    api.logout().await;
    result
}

/// The administrator's password: the file, else ROOMCAST_ADMIN_PASSWORD, else a prompt.
fn admin_password(args: &AdminArgs) -> anyhow::Result<String> {
    if let Some(file) = &args.admin_password_file {
        return read_secret(file);
    }
    if let Ok(p) = std::env::var("ROOMCAST_ADMIN_PASSWORD") {
        return Ok(p);
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return rpassword::prompt_password(format!("password of {}: ", args.user))
            .context("reading the password");
    }
    bail!(
        "no password for {}: pass --admin-password-file, or set ROOMCAST_ADMIN_PASSWORD or \
         ROOMCAST_ADMIN_TOKEN",
        args.user
    )
}

/// A secret from a file (`-`: standard input), without its trailing newline.
fn read_secret(file: &std::path::Path) -> anyhow::Result<String> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A new account's password: from `file`, or generated (and shown).
fn new_password(file: Option<&PathBuf>) -> anyhow::Result<(String, bool)> {
    match file {
        Some(f) => Ok((read_secret(f)?, false)),
        None => Ok((uuid::Uuid::new_v4().simple().to_string(), true)),
    }
}

async fn command(api: &Api, args: &AdminArgs) -> anyhow::Result<()> {
    let out = show::Output { json: args.json };
    match &args.command {
        AdminCommand::Login => unreachable!("handled before"),
        AdminCommand::Users(UsersCommand::List) => {
            let users = pages(api, &["api", "admin", "users"], "users", "after").await?;
            out.users(&users);
        }
        AdminCommand::Users(UsersCommand::Create {
            name,
            admin,
            password_file,
        }) => {
            let (password, generated) = new_password(password_file.as_ref())?;
            let body = json!({"username": name, "password": password, "admin": admin});
            let mut answer = api
                .call(Method::POST, &["api", "admin", "users"], &[], Some(body))
                .await?;
            if generated {
                answer["password"] = json!(password);
            }
            out.created(&answer);
        }
        AdminCommand::Users(UsersCommand::Delete { name, delete_rooms }) => {
            let path = ["api", "admin", "users", name];
            let query = [("delete_rooms", if *delete_rooms { "true" } else { "false" })];
            out.deleted(&api.call(Method::DELETE, &path, &query, None).await?);
        }
        AdminCommand::Users(UsersCommand::ResetPassword {
            name,
            password_file,
        }) => {
            let (password, generated) = new_password(password_file.as_ref())?;
            let path = ["api", "admin", "users", name, "password"];
            let body = json!({"password": password});
            api.call(Method::PUT, &path, &[], Some(body)).await?;
            let mut answer = json!({"user": name});
            if generated {
                answer["password"] = json!(password);
            }
            out.reset(&answer);
        }
        AdminCommand::Rooms(RoomsCommand::List) => {
            let rooms = pages(api, &["api", "admin", "rooms"], "rooms", "before").await?;
            out.rooms(&rooms);
        }
        AdminCommand::Rooms(RoomsCommand::Close { room }) => {
            api.call(Method::POST, &["api", "rooms", room, "close"], &[], None)
                .await?;
            out.done(json!({"closed": room}), &format!("closed room {room}"));
        }
        AdminCommand::Ban {
            room,
            identity,
            reason,
        } => {
            let path = ["api", "rooms", room, "bans", identity];
            let body = json!({"reason": reason});
            let answer = api.call(Method::PUT, &path, &[], Some(body)).await?;
            let who = answer["identity"].as_str().unwrap_or(identity);
            out.done(answer.clone(), &format!("banned {who} from room {room}"));
        }
        AdminCommand::Unban { room, identity } => {
            let path = ["api", "rooms", room, "bans", identity];
            api.call(Method::DELETE, &path, &[], None).await?;
            let answer = json!({"room": room, "identity": identity, "banned": false});
            out.done(answer, &format!("unbanned {identity} from room {room}"));
        }
        AdminCommand::Invite { room, role, ttl } => {
            let path = ["api", "rooms", room, "invites"];
            let body = json!({"role": role, "ttl_secs": ttl.as_secs()});
            let mut answer = api.call(Method::POST, &path, &[], Some(body)).await?;
            // The web client's invite link: the page, the room and the invite in the fragment.
            let token = answer["invite"].as_str().unwrap_or_default().to_owned();
            let mut link = api.base().clone();
            link.set_query(None);
            link.set_fragment(Some(&format!("room={room}&invite={token}")));
            answer["link"] = json!(link.as_str());
            out.invite(&answer);
        }
    }
    Ok(())
}

/// Every entry of a paged list at `path`: `key` of each page, following `next_<cursor>` as
/// `cursor`.
async fn pages(api: &Api, path: &[&str], key: &str, cursor: &str) -> anyhow::Result<Vec<Value>> {
    let next = format!("next_{cursor}");
    let mut all = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let cursor_was = from.clone();
        let mut query = vec![("limit", "100")];
        if let Some(c) = &from {
            query.push((cursor, c.as_str()));
        }
        let answer = api.call(Method::GET, path, &query, None).await?;
        if let Some(entries) = answer[key].as_array() {
            all.extend(entries.iter().cloned());
        }
        match answer[next.as_str()].as_str() {
            Some(c) if cursor_was.as_deref() == Some(c) => {
                bail!("the list of {key} does not advance")
            }
            Some(c) => from = Some(c.to_owned()),
            None => return Ok(all),
        }
    }
    bail!("more than {MAX_PAGES} pages of {key}")
}
