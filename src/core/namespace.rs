//! The namespace layout of rooms.
//!
//! A room `r` is the namespace tuple `("room", r)`. Participant `p` publishes its tracks under
//! `("room", r, p)`: `catalog`, `video`, `audio`, `screen`, `chat`. Subscribers discover
//! publishers with SUBSCRIBE_NAMESPACE on the prefix `("room", r)`. Matching is per tuple
//! element, so room `a` never matches `a2`.

/// First element of every room namespace.
pub const ROOM_PREFIX: &str = "room";
/// The relay's own participant in every room, `room/<id>/_server` (room events). Identities
/// cannot start with `_`, so no client can publish it.
pub const SERVER_PARTICIPANT: &str = "_server";
/// Longest room id or identity.
pub const MAX_SEGMENT_LEN: usize = 64;

/// A room id or identity: 1-64 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn valid_segment(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SEGMENT_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `("room", room)`.
pub fn room_namespace(room: &str) -> Vec<String> {
    vec![ROOM_PREFIX.to_owned(), room.to_owned()]
}

/// `("room", room, participant)`.
pub fn participant_namespace(room: &str, participant: &str) -> Vec<String> {
    vec![
        ROOM_PREFIX.to_owned(),
        room.to_owned(),
        participant.to_owned(),
    ]
}

/// True when `prefix` is a whole-element prefix of `namespace`.
pub fn has_prefix<S: AsRef<str>, T: AsRef<str>>(namespace: &[S], prefix: &[T]) -> bool {
    prefix.len() <= namespace.len()
        && prefix
            .iter()
            .zip(namespace)
            .all(|(a, b)| a.as_ref() == b.as_ref())
}

/// The room a namespace belongs to, if it is a room namespace.
pub fn room_of<S: AsRef<str>>(namespace: &[S]) -> Option<&str> {
    match namespace {
        [p, room, ..] if p.as_ref() == ROOM_PREFIX => Some(room.as_ref()),
        _ => None,
    }
}

/// Human-readable form, elements joined by `/`.
pub fn path_of<S: AsRef<str>>(namespace: &[S]) -> String {
    namespace
        .iter()
        .map(|s| s.as_ref())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_whole_elements_only() {
        let ns = participant_namespace("a2", "bob");
        assert!(has_prefix(&ns, &room_namespace("a2")));
        assert!(!has_prefix(&ns, &room_namespace("a")));
        assert!(!has_prefix(&room_namespace("a"), &ns));
        assert_eq!(room_of(&ns), Some("a2"));
        assert_eq!(room_of(&["other", "x"]), None);
    }

    #[test]
    fn segments() {
        assert!(valid_segment("alice"));
        assert!(valid_segment("r-1.b_2"));
        for bad in ["", "-x", ".x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_segment(bad), "{bad:?}");
        }
    }
}
