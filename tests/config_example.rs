//! `roomcast.example.toml`, the annotated example configuration, cannot go stale: it loads as
//! it is (giving the defaults), every commented-out key loads with the value it shows (right
//! names, right types), and it names every key the relay knows.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;
use roomcast::config::Config;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("roomcast.example.toml")
}

/// The lines `# key = value` of the example, uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_loads_as_it_is_and_uncommented() {
    let as_is = Config::from_file(&example()).expect("the example as it is");
    as_is.resolve().expect("the example's settings resolve");

    let text = std::fs::read_to_string(example()).unwrap();
    let all = uncommented(&text);
    let path = std::env::temp_dir().join(format!("roomcast-example-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, &all).unwrap();
    let loaded = Config::from_file(&path);
    let _ = std::fs::remove_file(&path);
    let loaded = loaded.expect("every key of the example, uncommented");
    assert_eq!(loaded.http_listen, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(loaded.log_format, Some(roomcast::config::LogFormat::Text));
}

#[test]
fn the_example_names_every_key() {
    let text = std::fs::read_to_string(example()).unwrap();
    let named: BTreeSet<String> = uncommented(&text)
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_owned()))
        .collect();
    let known: BTreeSet<String> = Config::augment_args(clap::Command::new("roomcast"))
        .get_arguments()
        .map(|a| a.get_id().as_str().to_owned())
        .filter(|k| k != "config")
        .collect();
    let missing: Vec<_> = known.difference(&named).collect();
    let unknown: Vec<_> = named.difference(&known).collect();
    assert!(
        missing.is_empty(),
        "keys the example does not name: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys the relay does not know: {unknown:?}"
    );
}
