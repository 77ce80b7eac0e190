//! Verified BIRD reload: `confera::reload::bird` speaks BIRD's control protocol to a
//! real BIRD 2 and reports what BIRD answered.

use std::fs;
use std::time::Duration;

use confera::reload::bird::{command, configure, BirdError, Configure, Outcome};

use crate::support::bird::Bird;

const TIMEOUT: Duration = Duration::from_secs(5);
const BASE: &str = "router id 10.0.0.1;\nprotocol device {}\n";
const STATIC_S1: &str = "protocol static s1 { ipv4; route 10.9.0.0/24 blackhole; }\n";
/// Missing `;` after `blackhole`: BIRD stops at the `}` in column 56.
const BROKEN_S2: &str = "protocol static s2 { ipv4; route 10.8.0.0/24 blackhole }\n";

#[tokio::test]
async fn configure_on_an_unchanged_config_reconfigures() {
    let bird = Bird::start(BASE);

    // BIRD 2.0.12 answers `0003 Reconfigured` even when nothing changed;
    // `0019 Nothing to do` is its answer to `configure confirm`/`undo` only.
    let outcome = configure(&bird.socket, &Configure::Plain, TIMEOUT).await;

    assert_eq!(outcome.unwrap(), Outcome::Reconfigured);
    bird.wait_for("one reconfiguration", |b| b.reconfigurations() == 1);
}

#[tokio::test]
async fn configure_applies_a_changed_config_file() {
    let bird = Bird::start(BASE);
    bird.write_config(&format!("{BASE}{STATIC_S1}"));

    let outcome = configure(&bird.socket, &Configure::Plain, TIMEOUT).await;

    assert_eq!(outcome.unwrap(), Outcome::Reconfigured);
    let protocols = bird.protocols();
    assert!(
        protocols.contains("s1 ") && protocols.contains("Static"),
        "{protocols}"
    );
}

#[tokio::test]
async fn a_syntax_error_is_a_config_error_with_file_line_col_and_bird_keeps_the_old_config() {
    let bird = Bird::start(&format!("{BASE}{STATIC_S1}"));
    // Line 1 is the fixture's `log` line, so s2 is on line 4.
    bird.write_config(&format!("{BASE}{BROKEN_S2}"));

    let err = configure(&bird.socket, &Configure::Plain, TIMEOUT)
        .await
        .unwrap_err();

    match &err {
        BirdError::Config {
            socket,
            code,
            message,
        } => {
            assert_eq!(socket, &bird.socket);
            assert_eq!(*code, 8002);
            let at = format!("{}:4:56 ", bird.config.display());
            assert!(
                message.starts_with(&at),
                "{message:?} should start with {at:?}"
            );
            assert!(err.to_string().contains(message.as_str()), "{err}");
        }
        other => panic!("expected BirdError::Config, got {other:?}"),
    }
    let status = command(&bird.socket, "show status", TIMEOUT).await.unwrap();
    assert_eq!(status.code, 13, "{status:?}");
    assert_eq!(status.message(), "Daemon is up and running");
    let protocols = bird.protocols();
    assert!(
        protocols.contains("s1 ") && !protocols.contains("s2 "),
        "{protocols}"
    );
    assert_eq!(bird.reconfigurations(), 0);
}

#[tokio::test]
async fn configure_check_parses_a_file_without_applying_it() {
    let bird = Bird::start(BASE);
    let good = bird.dir().join("good.conf");
    let bad = bird.dir().join("bad.conf");
    fs::write(&good, format!("{BASE}{STATIC_S1}")).unwrap();
    fs::write(&bad, format!("{BASE}{BROKEN_S2}")).unwrap();

    let good_outcome = configure(&bird.socket, &Configure::Check(Some(good)), TIMEOUT).await;
    let bad_outcome = configure(&bird.socket, &Configure::Check(Some(bad.clone())), TIMEOUT).await;

    assert_eq!(good_outcome.unwrap(), Outcome::CheckOk);
    match bad_outcome {
        Err(BirdError::Config { message, .. }) => {
            let at = format!("{}:3:56 ", bad.display());
            assert!(
                message.starts_with(&at),
                "{message:?} should start with {at:?}"
            );
        }
        other => panic!("expected BirdError::Config, got {other:?}"),
    }
    assert!(!bird.protocols().contains("s1 "));
    assert_eq!(bird.reconfigurations(), 0);
}

#[tokio::test]
async fn configure_file_switches_to_another_file_whose_includes_resolve_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    fs::create_dir(&etc).unwrap();
    fs::write(etc.join("bird.conf"), BASE).unwrap();
    let bird = Bird::with_config_path(dir, etc.join("bird.conf"));
    let next = bird.dir().join("next");
    fs::create_dir(&next).unwrap();
    fs::write(next.join("static.conf"), STATIC_S1).unwrap();
    fs::write(
        next.join("bird conf"),
        format!("{BASE}include \"static.conf\";\n"),
    )
    .unwrap();

    let outcome = configure(
        &bird.socket,
        &Configure::File(next.join("bird conf")),
        TIMEOUT,
    )
    .await;

    assert_eq!(outcome.unwrap(), Outcome::Reconfigured);
    assert!(bird.protocols().contains("s1 "));
}

#[tokio::test]
async fn a_missing_socket_is_a_connect_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("bird.ctl");

    let err = configure(&missing, &Configure::Plain, TIMEOUT)
        .await
        .unwrap_err();

    assert!(
        matches!(&err, BirdError::Connect { socket, .. } if socket == &missing),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(text.contains("does not exist"), "{text}");
}
