//! Unit tests of configuration loading and validation.

use super::*;

#[test]
fn unknown_keys_are_rejected() {
    let err = toml::from_str::<Config>("http_listen = \"127.0.0.1:1\"\nbogus = 1\n");
    assert!(err.unwrap_err().to_string().contains("bogus"));
}

#[test]
fn flags_override_file_and_defaults_fill_the_rest() {
    let file: Config =
        toml::from_str("http_listen = \"127.0.0.1:1\"\nmax_sessions = 7\n").expect("valid toml");
    let flags = Config {
        max_sessions: Some(9),
        ..Default::default()
    };
    let s = flags.over(file).resolve().expect("valid");
    assert_eq!(s.limits.max_sessions, 9);
    assert_eq!(s.http_listen.port(), 1);
    assert_eq!(s.quic_listen.port(), 4444);
}

#[test]
fn short_secret_and_zero_limits_are_refused() {
    let c = Config {
        token_secret: Some("short".into()),
        ..Default::default()
    };
    assert!(matches!(
        c.resolve(),
        Err(ConfigError::Invalid {
            key: "token_secret",
            ..
        })
    ));
    let c = Config {
        max_sessions: Some(0),
        ..Default::default()
    };
    assert!(c.resolve().is_err());
}

#[test]
fn secrets_come_from_files_but_not_from_both_places() {
    let dir = std::env::temp_dir().join(format!("roomcast-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, format!("{}\n", "s".repeat(40))).unwrap();
    let from_file = Config {
        token_secret_file: Some(file.clone()),
        ..Default::default()
    };
    assert_eq!(
        from_file.resolve().unwrap().token_secret,
        Some("s".repeat(40))
    );
    let both = Config {
        token_secret: Some("t".repeat(40)),
        token_secret_file: Some(file.clone()),
        ..Default::default()
    };
    assert!(matches!(
        both.resolve(),
        Err(ConfigError::Invalid {
            key: "token_secret",
            ..
        })
    ));
    let missing = Config {
        admin_password_file: Some(dir.join("absent")),
        ..Default::default()
    };
    assert!(matches!(
        missing.resolve(),
        Err(ConfigError::Invalid {
            key: "admin_password",
            ..
        })
    ));
    std::fs::remove_dir_all(dir).unwrap();
    let args = [
        "roomcast",
        "serve",
        "--token-secret=abc",
        "--admin-password",
        "x",
    ];
    let warnings = flag_secret_warnings(args.map(String::from));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(flag_secret_warnings(["--token-secret-file=/x".to_owned()]).is_empty());
}

#[test]
fn plain_http_is_served_on_loopback_only_unless_configured() {
    let at = |addr: &str, plain: Option<bool>| {
        Config {
            http_listen: Some(addr.parse().unwrap()),
            http_plain: plain,
            ..Default::default()
        }
        .resolve()
        .unwrap()
        .http_plain
    };
    assert!(at("127.0.0.1:8080", None));
    assert!(at("[::1]:8080", None));
    assert!(
        !at("0.0.0.0:8080", None),
        "every interface means the network"
    );
    assert!(!at("192.0.2.1:8080", None));
    assert!(at("0.0.0.0:8080", Some(true)));
    assert!(!at("127.0.0.1:8080", Some(false)));
}

#[test]
fn public_prefixes_are_off_by_default_and_never_open_rooms() {
    assert!(Config::default()
        .resolve()
        .expect("valid")
        .public_prefixes
        .is_empty());
    let file: Config =
        toml::from_str("public_prefixes = [\"moq-test\", \"demo\", \"demo\"]\n").expect("toml");
    assert_eq!(
        file.resolve().expect("valid").public_prefixes,
        ["demo", "moq-test"]
    );
    for bad in ["room", "a/b", "", "-x"] {
        let c = Config {
            public_prefixes: vec![bad.to_owned()],
            ..Default::default()
        };
        assert!(
            matches!(
                c.resolve(),
                Err(ConfigError::Invalid {
                    key: "public_prefixes",
                    ..
                })
            ),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn cluster_mode_needs_its_keys_and_two_different_secrets() {
    let secret = "s".repeat(40);
    let full = || Config {
        redis_url: Some("redis://127.0.0.1:6379/".into()),
        database_url: Some("postgres://roomcast@127.0.0.1/db".into()),
        node_id: Some("node-1".into()),
        cluster_secret: Some("c".repeat(40)),
        token_secret: Some(secret.clone()),
        ..Default::default()
    };
    let s = full().resolve().expect("valid cluster");
    let cluster = s.cluster.expect("cluster mode");
    assert_eq!(
        (cluster.node_id.as_str(), cluster.region.as_str()),
        ("node-1", "default")
    );
    // The secrets stay out of the settings' Debug form.
    assert!(!format!("{cluster:?}").contains("ccccc"));
    let refused = |c: Config| match c.resolve() {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("accepted: {:?}", other.map(|s| s.cluster)),
    };
    assert_eq!(
        refused(Config {
            database_url: None,
            ..full()
        }),
        "database_url"
    );
    assert_eq!(
        refused(Config {
            token_secret: None,
            ..full()
        }),
        "token_secret"
    );
    assert_eq!(
        refused(Config {
            node_id: None,
            ..full()
        }),
        "node_id"
    );
    assert_eq!(
        refused(Config {
            node_id: Some("a b".into()),
            ..full()
        }),
        "node_id"
    );
    assert_eq!(
        refused(Config {
            cluster_secret: None,
            ..full()
        }),
        "cluster_secret"
    );
    assert_eq!(
        refused(Config {
            cluster_secret: Some(secret.clone()),
            ..full()
        }),
        "cluster_secret"
    );
    assert_eq!(
        refused(Config {
            redis_url: Some("http://x/".into()),
            ..full()
        }),
        "redis_url"
    );
    assert_eq!(
        refused(Config {
            node_quic_url: Some("https://x/".into()),
            ..full()
        }),
        "node_quic_url"
    );
    assert_eq!(
        refused(Config {
            database_url: Some("mysql://x/".into()),
            ..full()
        }),
        "database_url"
    );
    // Without redis_url, no cluster.
    assert!(Config::default().resolve().unwrap().cluster.is_none());
}
