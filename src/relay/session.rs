//! One MoQ session: authenticate, then serve its requests until it ends or its token expires.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moq_transport::session::Session;
use moq_transport::setup::decode_setup_tokens;
use tokio::task::JoinSet;

use tokio_util::sync::CancellationToken;

use super::{close_code, discover, downstream, fetch, publish, upstream, Relay, Upstream};
use crate::auth::{AuthError, Claims, Grant, Scope};
use crate::core::budget::Budget;
use crate::metrics::TransportLabel;
use crate::transport::Incoming;

/// Runs session `id` to completion.
pub async fn run(relay: Relay, conn: Incoming, id: u64, address_budget: &Arc<Budget>) {
    let transport = conn.transport.clone();
    let label = conn.label();
    // The token is checked on the client's SETUP, before the relay answers with its own: a
    // client without a valid token learns nothing about the relay.
    let verdict = Arc::new(std::sync::Mutex::new(None));
    let check = {
        let (relay, verdict, url_token) = (relay.clone(), verdict.clone(), conn.url_token.clone());
        Box::new(move |setup: &moq_transport::coding::KeyValuePairs| {
            let public = relay.public_prefixes();
            // No token presented at all (none in the URL, none in SETUP): anonymous, if some
            // namespaces are open. A token presented is checked, even an empty one.
            let presented =
                url_token.is_some() || decode_setup_tokens(setup).map_or(true, |t| !t.is_empty());
            let peer = presented_token(url_token.as_deref(), setup)
                .and_then(|t| relay.verify_peer(&t)?.ok());
            let scope = match authenticate(&relay, url_token.as_deref(), setup) {
                _ if peer.is_some() => Ok(Scope::peer(peer.as_deref().unwrap_or_default())),
                Ok(claims) => Ok(Scope::with_public(claims, public)),
                Err(AuthError::MissingToken) if !presented && !public.is_empty() => {
                    Ok(Scope::anonymous(id, public))
                }
                Err(e) => Err(e),
            };
            let answer = match &scope {
                Ok(_) => Ok(()),
                Err(e) => Err((u64::from(close_code::UNAUTHORIZED), e.reason())),
            };
            *verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(scope);
            answer
        })
    };
    let accepted = tokio::time::timeout(
        relay.inner.limits.setup_timeout,
        Session::accept_checked(conn.transport, conn.kind, check),
    )
    .await;
    let verdict = verdict.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(Err(e)) = &verdict {
        relay.metrics().auth_failure(e.code());
        tracing::info!(session = id, remote = %conn.remote, code = e.code(), "session refused before SETUP");
        // The crate closed it with the reason already; this is the same close.
        return transport.close(close_code::UNAUTHORIZED, &e.reason());
    }
    let (session, publisher, subscriber) = match accepted {
        Ok(Ok((s, Some(p), Some(sub)))) => (s, p, sub),
        Ok(Ok(_)) => return transport.close(close_code::INTERNAL, "session roles missing"),
        Ok(Err(e)) => {
            tracing::debug!(session = id, error = %e, "setup failed");
            return transport.close(
                u32::try_from(e.code()).unwrap_or(super::close_code::INTERNAL),
                &e.to_string(),
            );
        }
        Err(_) => return transport.close(close_code::UNAUTHORIZED, "setup_timeout: no SETUP"),
    };
    let Some(Ok(scope)) = verdict else {
        return transport.close(close_code::INTERNAL, "internal: no verdict on the token");
    };
    let max_per_identity = relay.inner.limits.max_sessions_per_identity;
    // Sessions without a token are few: a quarter of the relay's, 4 per address.
    let _anonymous_slot = if scope.anonymous {
        match relay.anonymous_slot(conn.remote.ip()) {
            Some(slot) => Some(slot),
            None => {
                relay.metrics().refused("too_many_anonymous_sessions");
                return transport.close(
                    close_code::TOO_MANY,
                    "too_many_sessions: sessions without a token are at their maximum (for the relay, or for this address)",
                );
            }
        }
    } else {
        None
    };
    // An anonymous session is in no room: nothing to register, nobody to moderate it (its
    // grants never change; the sender lives as long as the session).
    let (_no_changes, mut grant_changes) = if scope.anonymous || scope.peer {
        let (tx, rx) = tokio::sync::watch::channel(0);
        (Some(tx), rx)
    } else {
        match relay.access().register(
            id,
            &scope.claims,
            Arc::new(transport.clone()),
            max_per_identity,
        ) {
            Ok(changes) => {
                relay.entered(&scope.claims.room);
                (None, changes)
            }
            Err(denied) => {
                relay.metrics().auth_failure(denied.code());
                return transport.close(close_code::UNAUTHORIZED, denied.reason());
            }
        }
    };
    // What this session's publications may hold in the relay's cache.
    let budget = address_budget.child("session", relay.inner.limits.session_cache_bytes);
    let gauge = relay
        .metrics()
        .sessions
        .get_or_create(&TransportLabel { transport: label })
        .clone();
    gauge.inc();
    relay
        .metrics()
        .join_seconds
        .get_or_create(&TransportLabel { transport: label })
        .observe(conn.arrived.elapsed().as_secs_f64());
    tracing::info!(session = id, transport = label, room = %scope.claims.room, identity = %scope.claims.sub, "session started");

    // An anonymous session has no token to expire; a node's credential is checked when it
    // connects (the cluster secret does not change while it runs).
    let expires_in = if scope.anonymous || scope.peer {
        Duration::from_secs(u64::from(u32::MAX))
    } else {
        scope
            .claims
            .expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    };
    let expiry = tokio::time::sleep(expires_in);
    tokio::pin!(expiry);
    let run = session.run();
    tokio::pin!(run);
    // Each request kind is awaited on its own clone (clones share the session's queues).
    publisher.accept_fetch();
    let (mut subscribes, mut discovers, mut statuses, mut track_lists, mut fetches) = (
        publisher.clone(),
        publisher.clone(),
        publisher.clone(),
        publisher.clone(),
        publisher,
    );
    let (mut announces, mut publishes) = (subscriber.clone(), subscriber);
    let mut requests = JoinSet::new();
    let (mut subscriptions, mut namespaces) = (0usize, 0usize);
    // Cancelled when the publish grant is revoked: withdraws this session's publications.
    let mut revoked = CancellationToken::new();
    let mut going_away = false;
    // What each request task is, to give its slot back however it ends.
    let mut kinds = std::collections::HashMap::new();
    let reason = loop {
        tokio::select! {
            r = &mut run => break match r {
                Ok(()) => "closed".to_owned(),
                Err(e) if e.is_graceful_close() => "closed by peer".to_owned(),
                Err(e) => e.to_string(),
            },
            _ = &mut expiry => {
                relay.metrics().auth_failure(AuthError::Expired.code());
                transport.close(close_code::UNAUTHORIZED, &AuthError::Expired.reason());
                break "token expired".to_owned();
            }
            _ = relay.inner.shutdown.cancelled() => {
                if relay.draining().is_some() {
                    transport.close(close_code::GOAWAY_TIMEOUT, "goaway_timeout: the session outlived the relay's GOAWAY");
                } else {
                    transport.close(close_code::NO_ERROR, "going_away: relay shutting down");
                }
                break "relay shutdown".to_owned();
            }
            _ = relay.inner.draining.cancelled(), if !going_away => {
                going_away = true;
                let within = relay.draining().unwrap_or_default();
                subscribes.go_away("", within.as_millis() as u64);
                tracing::info!(session = id, "GOAWAY sent");
            }
            Some(ns) = announces.published_namespace() => {
                if namespaces >= relay.inner.limits.max_namespaces_per_session {
                    relay.metrics().refused("too_many_namespaces");
                    let _ = ns.reject(
                        super::request_code::EXCESSIVE_LOAD,
                        "too_many_namespaces: this session publishes the most namespaces it may",
                    );
                    continue;
                }
                namespaces += 1;
                let source = Upstream { subscriber: announces.clone(), budget: budget.clone(), remote: false };
                let task = requests.spawn(upstream::announce(relay.clone(), scope.clone(), ns, source, revoked.clone()));
                kinds.insert(task.id(), Request::Publication);
            }
            Some(sub) = subscribes.subscribed() => {
                if let Some(reason) = subscriptions_full(&relay, subscriptions) {
                    let _ = sub.close(super::request_code::refusal(super::request_code::EXCESSIVE_LOAD, reason));
                    continue;
                }
                subscriptions += 1;
                let task = requests.spawn(downstream::subscribe(relay.clone(), scope.clone(), sub, transport.clone(), id, grant_changes.clone()));
                kinds.insert(task.id(), Request::Subscription);
            }
            Some(f) = fetches.fetch_requested() => {
                // A FETCH counts as a subscription while its response is written.
                if let Some(reason) = subscriptions_full(&relay, subscriptions) {
                    let _ = f.reject(moq_transport::message::RequestErrorCode::ExcessiveLoad, &reason);
                    continue;
                }
                subscriptions += 1;
                let task = requests.spawn(fetch::fetch(relay.clone(), scope.clone(), f, budget.clone()));
                kinds.insert(task.id(), Request::Subscription);
            }
            Some(nsub) = discovers.subscribed_namespace() => {
                // Counted with the subscriptions: each one watches the registry while it lasts.
                if let Some(reason) = subscriptions_full(&relay, subscriptions) {
                    let _ = nsub.reject(super::request_code::EXCESSIVE_LOAD, &reason);
                    continue;
                }
                subscriptions += 1;
                let task = requests.spawn(discover::subscribe_namespace(relay.clone(), scope.clone(), nsub, grant_changes.clone()));
                kinds.insert(task.id(), Request::Subscription);
            }
            Some(p) = publishes.publish_received() => {
                // Counted with the session's namespaces: a PUBLISH may publish one.
                if namespaces >= relay.inner.limits.max_namespaces_per_session {
                    relay.metrics().refused("too_many_namespaces");
                    p.close(super::request_code::refusal(
                        super::request_code::EXCESSIVE_LOAD,
                        "too_many_namespaces: this session publishes the most namespaces and tracks it may",
                    ));
                    continue;
                }
                namespaces += 1;
                let source = Upstream { subscriber: publishes.clone(), budget: budget.clone(), remote: false };
                let task = requests.spawn(publish::publish(relay.clone(), scope.clone(), p, source, revoked.clone()));
                kinds.insert(task.id(), Request::Publication);
            }
            Some(ts) = statuses.track_status_requested() => {
                // Counted as a subscription while it is answered (it may subscribe upstream).
                if let Some(reason) = subscriptions_full(&relay, subscriptions) {
                    let mut ts = ts;
                    let _ = ts.respond_error(super::request_code::EXCESSIVE_LOAD, &reason);
                    continue;
                }
                subscriptions += 1;
                let task = requests.spawn(downstream::track_status(relay.clone(), scope.clone(), ts));
                kinds.insert(task.id(), Request::Subscription);
            }
            // Answered, not left queued: the crate keeps every unanswered request.
            Some(st) = track_lists.subscribed_tracks() => {
                relay.metrics().refused("subscribe_tracks_unsupported");
                let _ = st.reject(super::request_code::NOT_SUPPORTED, "not_supported: SUBSCRIBE_TRACKS");
            }
            Ok(()) = grant_changes.changed() => {
                let grants = relay.access().grants(&scope.claims);
                tracing::info!(session = id, ?grants, "grants changed");
                if !grants.contains(&Grant::Publish) {
                    revoked.cancel();
                    revoked = CancellationToken::new();
                }
            }
            Some(done) = requests.join_next_with_id() => {
                let kind = match done {
                    Ok((id, _)) => kinds.remove(&id),
                    // A request task that panicked: its slot is given back all the same.
                    Err(e) => kinds.remove(&e.id()),
                };
                match kind {
                    Some(Request::Subscription) => subscriptions = subscriptions.saturating_sub(1),
                    Some(Request::Publication) => namespaces = namespaces.saturating_sub(1),
                    _ => {}
                }
            }
        }
    };
    // However the session ended, its connection goes with it (a peer that ended the session
    // by finishing its control stream would otherwise keep a WebTransport connection open,
    // uncounted: the crate does not close it). A no-op if it is closed already.
    transport.close(close_code::NO_ERROR, &reason);
    requests.shutdown().await;
    if !scope.anonymous && !scope.peer {
        relay.access().unregister(id, &scope.claims);
    }
    gauge.dec();
    relay.refresh_gauges();
    tracing::info!(session = id, %reason, "session ended");
}

/// The refusal reason when a session already runs `subscriptions` (SUBSCRIBE, FETCH and
/// TRACK_STATUS together) and may run no more; counted.
fn subscriptions_full(relay: &Relay, subscriptions: usize) -> Option<String> {
    let max = relay.inner.limits.max_subscriptions;
    (subscriptions >= max).then(|| {
        relay.metrics().refused("too_many_subscriptions");
        format!("too_many_subscriptions: at most {max} per session")
    })
}

/// What a finished request task was, for bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Subscription,
    /// A PUBLISH_NAMESPACE (accepted or not).
    Publication,
    Other,
}

/// The token presented in the URL query or, failing that, first in the client's SETUP.
fn presented_token(
    url_token: Option<&str>,
    setup: &moq_transport::coding::KeyValuePairs,
) -> Option<String> {
    if let Some(t) = url_token {
        return Some(t.to_owned());
    }
    let tokens = decode_setup_tokens(setup).ok()?;
    String::from_utf8(tokens.first()?.value.to_vec()).ok()
}

/// Verifies the token from the URL query or, failing that, from the client's SETUP.
fn authenticate(
    relay: &Relay,
    url_token: Option<&str>,
    setup: &moq_transport::coding::KeyValuePairs,
) -> Result<Claims, AuthError> {
    if let Some(t) = url_token {
        return relay.inner.issuer.verify(t);
    }
    let tokens = decode_setup_tokens(setup)
        .map_err(|e| AuthError::Malformed(e.reason_phrase().to_owned()))?;
    let token = tokens.first().ok_or(AuthError::MissingToken)?;
    let text = std::str::from_utf8(token.value)
        .map_err(|_| AuthError::Malformed("token is not UTF-8".into()))?;
    relay.inner.issuer.verify(text)
}
