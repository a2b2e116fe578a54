//! SUBSCRIBE_NAMESPACE: tell a subscriber which participants publish in its room.

use moq_transport::coding::TrackNamespace;
use moq_transport::session::SubscribedNamespace;
use tokio::sync::broadcast::error::RecvError;

use super::session::Request;
use super::upstream::namespace_strings;
use super::{request_code, Relay};
use crate::auth::{Action, Scope};
use crate::core::namespace::{has_prefix, path_of};
use crate::core::registry::NamespaceChange;

/// Serves one SUBSCRIBE_NAMESPACE until the subscriber cancels it. It follows the session's
/// grants (`grant_changes`): when `subscribe` is revoked every known namespace is withdrawn
/// (NAMESPACE_DONE) and nothing more is announced; when it comes back, the current ones are.
pub async fn subscribe_namespace(
    relay: Relay,
    scope: Scope,
    mut nsub: SubscribedNamespace,
    mut grant_changes: tokio::sync::watch::Receiver<u64>,
) -> Request {
    let prefix = TrackNamespace {
        fields: nsub.info.namespace_prefix.fields.clone(),
    };
    let Some(prefix) = namespace_strings(&prefix) else {
        let _ = nsub.reject(request_code::MALFORMED, "malformed_namespace: not UTF-8");
        return Request::Other;
    };
    if let Err(e) = relay.allows(&scope, Action::Discover, &prefix) {
        relay.metrics().refused(e.code());
        tracing::info!(prefix = %path_of(&prefix), code = e.code(), "subscribe_namespace refused");
        let _ = nsub.reject(request_code::UNAUTHORIZED, &e.reason());
        return Request::Other;
    }
    let (mut changes, snapshot) = {
        let reg = relay.registry();
        (reg.changes(), reg.matching(&prefix))
    };
    if nsub.ok().is_err() {
        return Request::Other;
    }
    let mut known = std::collections::BTreeSet::new();
    for ns in snapshot {
        if announce(&mut nsub, &ns, true).is_err() {
            return Request::Other;
        }
        known.insert(ns);
    }
    let mut visible = true;
    loop {
        tokio::select! {
            _ = nsub.closed() => break,
            Ok(()) = grant_changes.changed() => {
                let now = relay.allows(&scope, Action::Discover, &prefix).is_ok();
                let result = match (visible, now) {
                    (true, false) => withdraw(&mut known, &mut nsub),
                    (false, true) => resync(&relay, &prefix, &mut known, &mut nsub),
                    _ => Ok(()),
                };
                visible = now;
                if result.is_err() {
                    break;
                }
            }
            change = changes.recv() => {
                let result = match change {
                    // Hidden: a resync catches up when the grant comes back.
                    Ok(_) | Err(RecvError::Lagged(_)) if !visible => Ok(()),
                    Ok(NamespaceChange::Added(ns)) if has_prefix(&ns, &prefix) && known.insert(ns.clone()) => {
                        announce(&mut nsub, &ns, true)
                    }
                    Ok(NamespaceChange::Removed(ns)) if known.remove(&ns) => announce(&mut nsub, &ns, false),
                    Ok(_) => Ok(()),
                    Err(RecvError::Lagged(_)) => resync(&relay, &prefix, &mut known, &mut nsub),
                    Err(RecvError::Closed) => break,
                };
                if result.is_err() {
                    break;
                }
            }
        }
    }
    Request::Other
}

fn announce(nsub: &mut SubscribedNamespace, ns: &[String], added: bool) -> Result<(), ()> {
    let Ok(tns) = TrackNamespace::try_from(ns.to_vec()) else {
        return Ok(());
    };
    let r = if added {
        nsub.namespace(&tns)
    } else {
        nsub.namespace_done(&tns)
    };
    r.map_err(|_| ())
}

/// Takes back every namespace the subscriber was told of.
fn withdraw(
    known: &mut std::collections::BTreeSet<Vec<String>>,
    nsub: &mut SubscribedNamespace,
) -> Result<(), ()> {
    for ns in std::mem::take(known) {
        announce(nsub, &ns, false)?;
    }
    Ok(())
}

/// After missing changes, diff the registry against what the subscriber was told.
fn resync(
    relay: &Relay,
    prefix: &[String],
    known: &mut std::collections::BTreeSet<Vec<String>>,
    nsub: &mut SubscribedNamespace,
) -> Result<(), ()> {
    let now: std::collections::BTreeSet<_> =
        relay.registry().matching(prefix).into_iter().collect();
    for gone in known.difference(&now).cloned().collect::<Vec<_>>() {
        announce(nsub, &gone, false)?;
    }
    for new in now.difference(known).cloned().collect::<Vec<_>>() {
        announce(nsub, &new, true)?;
    }
    *known = now;
    Ok(())
}
