//! Security: TLS and authentication to a real etcd, secret values kept out
//! of logs, errors and diffs, file safety of staging and commits (modes,
//! owners, symlinks), and the template sandbox.
//!
//! The TLS etcd is started here (the shared fixture speaks plain HTTP): a CA,
//! a server certificate for 127.0.0.1 and client certificates are generated
//! per test with rcgen.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::support::cmd::{
    confera, reserve_ports, run, run_cmd, stop_child, wait_until, Daemon, KillOnDrop, PortLease,
    Run,
};
use crate::support::confdir::ConfDir;
use crate::support::etcd::Etcd;

const DEADLINE: Duration = Duration::from_secs(10);

// --- TLS ---------------------------------------------------------------------

#[test]
fn tls_with_a_trusted_ca_and_a_client_certificate_renders() {
    let pki = Pki::new();
    let etcd = TlsEtcd::start(&pki);
    etcd.put("/app/name", "over-tls");
    let dir = app_confdir();

    let run = run(&tls_args(&dir, &etcd, Some(pki.client()), &pki.ca));

    run.assert_success();
    assert_eq!(dir.read("out/app.conf"), "name=over-tls\n");
}

#[test]
fn tls_without_a_client_certificate_is_refused_with_exit_2_naming_the_endpoint() {
    let pki = Pki::new();
    let etcd = TlsEtcd::start(&pki);
    let dir = app_confdir();

    let run = run(&tls_args(&dir, &etcd, None, &pki.ca));

    run.assert_code(2)
        .assert_stderr_contains(&format!("etcd at {}", etcd.url));
    assert!(!dir.exists("out/app.conf"), "{run}");
}

#[test]
fn tls_with_an_untrusted_ca_is_refused_with_exit_2_naming_the_endpoint() {
    let pki = Pki::new();
    let etcd = TlsEtcd::start(&pki);
    let dir = app_confdir();

    // The right client certificate, but a CA that did not sign etcd's.
    let run = run(&tls_args(&dir, &etcd, Some(pki.client()), &pki.rogue_ca));

    run.assert_code(2)
        .assert_stderr_contains(&format!("etcd at {}", etcd.url))
        .assert_stderr_contains("certificate");
    assert!(!dir.exists("out/app.conf"), "{run}");
}

#[test]
fn tls_with_a_client_certificate_from_another_ca_is_refused_with_exit_2() {
    let pki = Pki::new();
    let etcd = TlsEtcd::start(&pki);
    let dir = app_confdir();

    let run = run(&tls_args(&dir, &etcd, Some(pki.rogue_client()), &pki.ca));

    run.assert_code(2)
        .assert_stderr_contains(&format!("etcd at {}", etcd.url));
    assert!(!dir.exists("out/app.conf"), "{run}");
}

#[test]
fn plain_http_to_a_tls_endpoint_is_refused_with_exit_2() {
    let pki = Pki::new();
    let etcd = TlsEtcd::start(&pki);
    let dir = app_confdir();
    let plain = etcd.url.replace("https://", "http://");

    let run = run(&["--confdir", dir.arg(), "--node", &plain, "--onetime"]);

    run.assert_code(2)
        .assert_stderr_contains(&format!("etcd at {plain}"));
}

// --- authentication ----------------------------------------------------------

const ROOT_PASSWORD: &str = "Zq7-root-pass-w0rd";

#[test]
fn auth_with_the_right_password_renders_and_never_logs_it() {
    let etcd = auth_etcd();
    let dir = app_confdir();

    let flag = run(&[
        "--confdir",
        dir.arg(),
        "--node",
        &etcd.client_url,
        "--username",
        "root",
        "--password",
        ROOT_PASSWORD,
        "--onetime",
        "--log-level",
        "debug",
    ]);
    let mut cmd = confera();
    cmd.env("CONFERA_PASSWORD", ROOT_PASSWORD).args([
        "--confdir",
        dir.arg(),
        "--node",
        &etcd.client_url,
        "--username",
        "root",
        "--onetime",
        "--log-level",
        "debug",
        "--log-format",
        "json",
    ]);
    let env = run_cmd(cmd);

    for run in [&flag, &env] {
        run.assert_success();
        assert_not_shown(run, ROOT_PASSWORD);
    }
    assert_eq!(dir.read("out/app.conf"), "name=authenticated\n");
}

#[test]
fn auth_with_a_wrong_password_is_exit_2_with_a_clear_message_and_no_password() {
    let etcd = auth_etcd();
    let dir = app_confdir();
    let wrong = "Wr0ng-pass-Kx9";

    let run = run(&[
        "--confdir",
        dir.arg(),
        "--node",
        &etcd.client_url,
        "--username",
        "root",
        "--password",
        wrong,
        "--onetime",
        "--log-level",
        "debug",
    ]);

    run.assert_code(2)
        .assert_stderr_contains(&format!("etcd at {}", etcd.client_url))
        .assert_stderr_contains("authentication failed")
        .assert_stderr_contains("check --username and --password");
    assert_not_shown(&run, wrong);
    assert!(!dir.exists("out/app.conf"), "{run}");
}

#[test]
fn in_watch_mode_a_refused_login_keeps_the_old_file_and_recovers_without_a_restart() {
    let etcd = auth_etcd();
    let dir = app_confdir();
    fs::write(dir.path().join("out/app.conf"), "OLD\n").unwrap();
    let later = "L4ter-root-pass";
    let mut confera = Daemon::spawn(&[
        "--confdir",
        dir.arg(),
        "--node",
        &etcd.client_url,
        "--username",
        "root",
        "--password",
        later,
        "--watch",
    ]);

    // etcd refuses the login: reported, retried, and the old file stays.
    assert!(confera.wait_for_log("authentication failed", Duration::from_secs(10)));
    assert!(confera.wait_for_log("keeping the current files", Duration::from_secs(10)));
    assert_eq!(dir.read("out/app.conf"), "OLD\n");

    // The operator fixes the credentials on etcd's side; no restart of confera.
    let endpoint = format!("--endpoints={}", etcd.client_url);
    let mut passwd = Command::new("etcdctl")
        .args([
            &endpoint,
            &format!("--user=root:{ROOT_PASSWORD}"),
            "user",
            "passwd",
            "root",
            "--interactive=false",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run etcdctl");
    use std::io::Write;
    writeln!(passwd.stdin.take().unwrap(), "{later}").unwrap();
    assert!(passwd.wait().unwrap().success());

    assert!(
        wait_until(Duration::from_secs(40), || dir
            .try_read("out/app.conf")
            .as_deref()
            == Some("name=authenticated\n")),
        "not recovered:\n{}",
        confera.log()
    );
    assert_eq!(confera.terminate(), 0);
    assert!(
        !confera.log().contains(later),
        "the password reached the log"
    );
}

#[test]
fn auth_without_credentials_is_refused_by_an_etcd_with_auth_enabled() {
    let etcd = auth_etcd();
    let dir = app_confdir();

    let run = run(&[
        "--confdir",
        dir.arg(),
        "--node",
        &etcd.client_url,
        "--onetime",
    ]);

    // etcd answers an unauthenticated read with "user name is empty".
    run.assert_code(2)
        .assert_stderr_contains(&format!("etcd at {}", etcd.client_url));
    assert!(!dir.exists("out/app.conf"), "{run}");
}

#[test]
fn help_and_man_page_never_show_the_password_from_the_environment() {
    let secret = "Env-pass-Qw3rty";
    for args in [&["--help"][..], &["-h"], &["man"]] {
        let mut cmd = confera();
        cmd.env("CONFERA_PASSWORD", secret).args(args);
        let run = run_cmd(cmd);

        run.assert_success()
            .assert_stdout_contains("CONFERA_PASSWORD");
        assert_not_shown(&run, secret);
    }
}

// --- secrets -----------------------------------------------------------------

const OLD_SECRET: &str = "old-Secret-0ld";
const NEW_SECRET: &str = "new-Secret-N3w";

#[test]
fn a_secret_unit_shows_no_value_in_logs_or_in_a_noop_diff() {
    let dir = ConfDir::new();
    let dest = dir.dest("out/peer.conf");
    fs::write(&dest, format!("password {OLD_SECRET}\n")).unwrap();
    secret_peer_unit(&dir, "secret = true");

    let run = run_file_backend(&dir, &["--noop", "--diff"]);

    run.assert_success()
        .assert_stdout_contains("not shown")
        .assert_stderr_contains("would change");
    assert_not_shown(&run, NEW_SECRET);
    assert_not_shown(&run, OLD_SECRET);
    assert_not_shown(&run, "192.0.2.1");
    assert_eq!(
        fs::read_to_string(&dest).unwrap(),
        format!("password {OLD_SECRET}\n"),
        "--noop writes nothing"
    );
}

#[test]
fn a_secret_unit_commits_its_destination_0600_unless_the_resource_sets_a_mode() {
    let dir = ConfDir::new();
    secret_peer_unit(&dir, "secret = true");
    // An existing world-readable file is tightened too.
    let dest = dir.dest("out/peer.conf");
    fs::write(&dest, "old\n").unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o644)).unwrap();
    dir.resource(
        "moded",
        &format!(
            "[template]\nsrc = \"peer.tera\"\ndest = \"{}\"\nkeys = [\"/bgp\"]\nmode = \"0640\"\nsecret = true\n",
            dir.dest("out/moded.conf").display()
        ),
    );
    dir.resource(
        "keyed",
        &format!(
            "[template]\nsrc = \"peer.tera\"\ndest = \"{}\"\nkeys = [\"/bgp\"]\nsecret_keys = [\"/bgp/passwords/*\"]\n",
            dir.dest("out/keyed.conf").display()
        ),
    );

    let run = run_file_backend(&dir, &[]);

    run.assert_success();
    assert_not_shown(&run, NEW_SECRET);
    assert_eq!(mode_of(&dest), 0o600, "secret = true defaults to 0600");
    assert_eq!(
        mode_of(&dir.dest("out/keyed.conf")),
        0o600,
        "so do secret_keys"
    );
    assert_eq!(
        mode_of(&dir.dest("out/moded.conf")),
        0o640,
        "an explicit mode wins"
    );
    assert!(dir.read("out/peer.conf").contains(NEW_SECRET));
}

#[test]
fn secret_keys_are_redacted_in_a_noop_diff_old_and_new_while_other_values_show() {
    let dir = ConfDir::new();
    let dest = dir.dest("out/peer.conf");
    fs::write(
        &dest,
        format!("peer 192.0.2.9\npassword {OLD_SECRET}\nlocal as 65001\n"),
    )
    .unwrap();
    secret_peer_unit(&dir, "secret_keys = [\"/bgp/passwords/*\"]");

    let run = run_file_backend(&dir, &["--noop", "--diff"]);

    run.assert_success()
        .assert_stdout_contains("+peer 192.0.2.1\n")
        .assert_stdout_contains("+password <redacted>\n")
        .assert_stdout_contains("-<redacted>\n")
        .assert_stdout_contains(" local as 65001\n");
    assert_not_shown(&run, NEW_SECRET);
    assert_not_shown(&run, OLD_SECRET);
}

#[test]
fn a_secret_that_fails_validation_is_redacted_in_the_error_and_the_key_named() {
    let dir = ConfDir::new();
    dir.template(
        "peer.tera",
        "peer {{ getv(key=\"/bgp/peer\") | ipv4 }}\nneighbor {{ getv(key=\"/bgp/passwords/a\") | ipv4 }}\n",
    );
    secret_keys_unit(&dir);

    let run = run_file_backend(&dir, &[]);

    run.assert_code(1)
        .assert_stderr_contains("the value (from a secret key, not shown) is not an IPv4 address")
        .assert_stderr_contains("(value of key `/bgp/passwords/a`)");
    assert_not_shown(&run, NEW_SECRET);
    assert!(!dir.exists("out/peer.conf"));
}

#[test]
fn a_non_secret_value_that_fails_validation_is_shown_in_the_error() {
    let dir = ConfDir::new();
    dir.template("peer.tera", "peer {{ getv(key=\"/bgp/asn\") | ipv4 }}\n");
    secret_keys_unit(&dir);

    let run = run_file_backend(&dir, &[]);

    run.assert_code(1)
        .assert_stderr_contains("\"65001\" is not an IPv4 address");
}

/// Validation errors quote values with Rust's `{:?}`, which escapes `"` and
/// `\`: redacting only the raw value lets the escaped form through.
#[test]
fn a_secret_with_quotes_or_backslashes_is_redacted_in_validation_errors_too() {
    for secret in [r#"quo"te-Secr3t"#, r"back\slash-Secr3t", "tab\tSecr3t"] {
        let dir = ConfDir::new();
        dir.template(
            "peer.tera",
            "neighbor {{ getv(key=\"/bgp/passwords/a\") | ipv4 }}\n",
        );
        secret_keys_unit(&dir);
        write_peer_data(&dir, secret);

        let run = run_file_backend(&dir, &[]);

        run.assert_code(1)
            .assert_stderr_contains("is not an IPv4 address");
        assert_not_shown(&run, "Secr3t");
    }
}

#[test]
fn bird_string_refusing_a_secret_names_the_position_but_not_the_value() {
    let dir = ConfDir::new();
    dir.template(
        "peer.tera",
        "password {{ getv(key=\"/bgp/passwords/a\") | bird_string }};\n",
    );
    secret_keys_unit(&dir);
    write_peer_data(&dir, "pa\"ss-Secr3t");

    let run = run_file_backend(&dir, &[]);

    run.assert_code(1)
        .assert_stderr_contains("cannot be a BIRD string")
        .assert_stderr_contains("at character 3");
    assert_not_shown(&run, "Secr3t");
}

/// A checker that quotes the offending line (as `nginx -t` does) must not
/// carry a secret into confera's error.
#[test]
fn a_failing_check_does_not_echo_secret_values() {
    let dir = ConfDir::new();
    dir.template("peer.tera", PEER_TEMPLATE);
    dir.resource(
        "peer",
        &format!(
            "[template]\nsrc = \"peer.tera\"\ndest = \"{}\"\nkeys = [\"/bgp\"]\nsecret = true\ncheck_cmd = \"grep -n password {{{{src}}}} >&2; exit 1\"\n",
            dir.dest("out/peer.conf").display()
        ),
    );
    write_peer_data(&dir, NEW_SECRET);

    let run = run_file_backend(&dir, &[]);

    run.assert_code(1).assert_stderr_contains("check failed");
    assert_not_shown(&run, NEW_SECRET);
    assert!(!dir.exists("out/peer.conf"));
}

#[test]
fn secrets_changed_in_etcd_never_reach_the_watch_logs() {
    let etcd = Etcd::start();
    etcd.put("/bgp/peer", "192.0.2.1");
    etcd.put("/bgp/asn", "65001");
    etcd.put("/bgp/passwords/a", OLD_SECRET);
    let dir = ConfDir::new();
    secret_peer_unit(&dir, "secret_keys = [\"/bgp/passwords/*\"]");
    let dest = dir.dest("out/peer.conf");

    let mut daemon = Daemon::spawn(&[
        "--confdir",
        dir.arg(),
        "--node",
        &etcd.client_url,
        "--watch",
        "--wait",
        "10ms:100ms",
        "--log-level",
        "trace",
    ]);
    assert!(
        crate::support::cmd::wait_until(DEADLINE, || read_or_empty(&dest).contains(OLD_SECRET)),
        "first render\n{}",
        daemon.log()
    );
    etcd.put("/bgp/passwords/a", NEW_SECRET);
    assert!(
        crate::support::cmd::wait_until(DEADLINE, || read_or_empty(&dest).contains(NEW_SECRET)),
        "second render\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), 0);

    let log = daemon.log();
    assert!(log.contains("committed"), "{log}");
    for secret in [OLD_SECRET, NEW_SECRET] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

// --- files -------------------------------------------------------------------

/// The check runs while the staged file exists, so it sees what a local user
/// could: the staging directory is 0711 (others may open a file by name, as
/// a daemon running `configure check` as its own user must, but can neither
/// list nor create entries), and the file already has its final mode, so it
/// never shows more than the committed file will. Even under umask 000.
#[test]
fn staging_cannot_be_listed_or_written_by_others_and_the_staged_file_has_its_final_mode() {
    let dir = ConfDir::new();
    let record = dir.dest("stat.txt");
    dir.template("app.tera", "x\n");
    dir.resource(
        "app",
        &format!(
            "[template]\nsrc = \"app.tera\"\ndest = \"{}\"\nmode = \"0640\"\ncheck_cmd = \"stat -c '%a %u %F' {{{{src}}}} \\\"$(dirname {{{{src}}}})\\\" > {}\"\n",
            dir.dest("out/app.conf").display(),
            record.display()
        ),
    );
    let mut cmd = confera();
    cmd.args([
        "--confdir",
        dir.arg(),
        "--backend",
        "env",
        "--onetime",
        "--keep-stage-file",
    ]);
    with_umask_000(&mut cmd);

    let run = run_cmd(cmd);

    run.assert_success();
    let uid = nix::unistd::geteuid().as_raw();
    assert_eq!(
        fs::read_to_string(&record).unwrap(),
        format!("640 {uid} regular file\n711 {uid} directory\n")
    );
    let stage_dirs = stage_dirs(&dir.path().join("out"));
    assert_eq!(stage_dirs.len(), 1, "--keep-stage-file keeps it");
    assert_eq!(mode_of(&stage_dirs[0]), 0o711);
    assert_eq!(mode_of(&dir.dest("out/app.conf")), 0o640);
}

#[test]
fn without_keep_stage_file_no_staging_directory_is_left_behind() {
    let dir = ConfDir::new();
    dir.template("app.tera", "x\n");
    dir.resource("app", &unit_toml("app.tera", &dir.dest("out/app.conf"), ""));

    run(&["--confdir", dir.arg(), "--backend", "env", "--onetime"]).assert_success();

    assert!(stage_dirs(&dir.path().join("out")).is_empty());
    assert_eq!(dir.read("out/app.conf"), "x\n");
}

#[test]
fn an_existing_destination_keeps_its_mode_and_owner_unless_the_resource_sets_them() {
    let dir = ConfDir::new();
    dir.template("app.tera", "new\n");
    let keep = dir.dest("out/keep.conf");
    let set = dir.dest("out/set.conf");
    for dest in [&keep, &set] {
        fs::write(dest, "old\n").unwrap();
        fs::set_permissions(dest, fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(dest, Some(1234), Some(1234)).unwrap();
    }
    dir.resource("keep", &unit_toml("app.tera", &keep, ""));
    dir.resource(
        "set",
        &unit_toml(
            "app.tera",
            &set,
            "mode = \"0604\"\nowner = \"0\"\ngroup = \"0\"\n",
        ),
    );

    run(&["--confdir", dir.arg(), "--backend", "env", "--onetime"]).assert_success();

    let kept = fs::metadata(&keep).unwrap();
    assert_eq!(fs::read_to_string(&keep).unwrap(), "new\n");
    assert_eq!(
        (kept.mode() & 0o7777, kept.uid(), kept.gid()),
        (0o640, 1234, 1234)
    );
    let changed = fs::metadata(&set).unwrap();
    assert_eq!(fs::read_to_string(&set).unwrap(), "new\n");
    assert_eq!(
        (changed.mode() & 0o7777, changed.uid(), changed.gid()),
        (0o604, 0, 0)
    );
}

/// Links are refused by default, even root's; `follow_symlink = true`
/// follows a link root owns in a directory only root can write. What a
/// local user can plant is in `symlinks`.
#[test]
fn a_symlinked_destination_is_refused_unless_follow_symlink_and_then_the_link_is_kept() {
    let dir = ConfDir::new();
    dir.template("app.tera", "new\n");
    let target = dir.dest("real/app.conf");
    fs::write(&target, "old\n").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.dest("etc/app.conf");
    std::os::unix::fs::symlink("../real/app.conf", &link).unwrap();
    dir.resource("app", &unit_toml("app.tera", &link, ""));

    run(&["--confdir", dir.arg(), "--backend", "env", "--onetime"])
        .assert_code(1)
        .assert_stderr_contains(&format!(
            "{} is a symbolic link to ../real/app.conf: refusing to write through it",
            link.display()
        ));
    assert_eq!(fs::read_to_string(&target).unwrap(), "old\n");

    dir.resource(
        "app",
        &unit_toml("app.tera", &link, "follow_symlink = true\n"),
    );
    run(&["--confdir", dir.arg(), "--backend", "env", "--onetime"]).assert_success();

    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("../real/app.conf"),
        "the link itself is untouched"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "new\n");
    assert_eq!(mode_of(&target), 0o640);
    assert!(stage_dirs(&dir.path().join("real")).is_empty());
    assert!(stage_dirs(&dir.path().join("etc")).is_empty());
}

/// With `follow_symlink = true`, root's link whose target does not exist
/// yet (a fresh install pointing /etc/x.conf into a config volume) is
/// followed too, and the target created.
#[test]
fn with_follow_symlink_a_dangling_admin_link_creates_its_target_and_keeps_the_link() {
    let dir = ConfDir::new();
    dir.template("app.tera", "new\n");
    let target = dir.dest("real/app.conf");
    let link = dir.dest("etc/app.conf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    dir.resource(
        "app",
        &unit_toml("app.tera", &link, "follow_symlink = true\n"),
    );

    let run = run(&["--confdir", dir.arg(), "--backend", "env", "--onetime"]);

    run.assert_success();
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{run}"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "new\n");
}

/// Stale staging directories of dead runs are removed at start-up. Someone
/// who can write to the destination directory may plant entries under those
/// names; removing them must never follow a link out of the directory.
#[test]
fn entries_planted_under_stale_staging_names_are_removed_without_following_links() {
    let dir = ConfDir::new();
    dir.template("app.tera", "x\n");
    let dest = dir.dest("out/app.conf");
    let out = dest.parent().unwrap();
    dir.resource("app", &unit_toml("app.tera", &dest, ""));
    let victim = dir.dest("victim/precious.conf");
    fs::write(&victim, "keep me\n").unwrap();
    let victim_dir = victim.parent().unwrap();
    // A symlink to a directory, named like a dead process's staging dir.
    let linked = out.join(".confera-stage-app-999999999-00000001");
    std::os::unix::fs::symlink(victim_dir, &linked).unwrap();
    // A real directory holding links to the victim and its directory.
    let planted = out.join(".confera-stage-app-999999998-00000002");
    fs::create_dir(&planted).unwrap();
    std::os::unix::fs::symlink(&victim, planted.join("app.conf")).unwrap();
    std::os::unix::fs::symlink(victim_dir, planted.join("sub")).unwrap();

    run(&["--confdir", dir.arg(), "--backend", "env", "--onetime"]).assert_success();

    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert_eq!(fs::read_dir(victim_dir).unwrap().count(), 1);
    assert!(
        fs::symlink_metadata(&linked).is_err(),
        "the planted link is removed"
    );
    assert!(
        fs::symlink_metadata(&planted).is_err(),
        "the planted dir is removed"
    );
    assert_eq!(fs::read_to_string(&dest).unwrap(), "x\n");
}

// --- template sandbox --------------------------------------------------------

/// Functions that other template engines (Tera 1, Jinja, confd) offer and
/// that would run commands, read files, reach the network or the clock.
const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "get_env(name=\"HOME\")",
    "env(name=\"HOME\")",
    "read_file(path=\"/etc/passwd\")",
    "load_data(path=\"/etc/passwd\")",
    "include_file(path=\"/etc/passwd\")",
    "file(path=\"/etc/passwd\")",
    "exec(command=\"id\")",
    "run(command=\"id\")",
    "shell(command=\"id\")",
    "system(command=\"id\")",
    "fetch(url=\"http://127.0.0.1/\")",
    "http_get(url=\"http://127.0.0.1/\")",
    "lookup_ip(name=\"localhost\")",
    "now()",
    "get_random(end=10)",
];

#[test]
fn templates_have_no_function_to_run_commands_read_files_or_reach_the_network() {
    for call in FORBIDDEN_FUNCTIONS {
        let name = call.split('(').next().unwrap();
        let dir = ConfDir::new();
        dir.template("app.tera", &format!("{{{{ {call} }}}}\n"));
        dir.resource("app", &unit_toml("app.tera", &dir.dest("out/app.conf"), ""));

        let run = run(&["--confdir", dir.arg(), "check"]);

        run.assert_code(2)
            .assert_stderr_contains(&format!("Unknown function `{name}`"))
            .assert_stderr_contains("app.tera");
    }
}

#[test]
fn templates_have_no_filter_to_run_commands_or_read_files() {
    for filter in [
        "read_file",
        "exec",
        "shell",
        "filesizeformat",
        "date",
        "env",
    ] {
        let dir = ConfDir::new();
        dir.template(
            "app.tera",
            &format!("{{{{ \"/etc/passwd\" | {filter} }}}}\n"),
        );
        dir.resource("app", &unit_toml("app.tera", &dir.dest("out/app.conf"), ""));

        let run = run(&["--confdir", dir.arg(), "check"]);

        run.assert_code(2)
            .assert_stderr_contains(&format!("Unknown filter `{filter}`"));
    }
}

#[test]
fn include_and_extends_reach_only_templates_in_the_templates_directory() {
    for tag in [
        "{% include \"/etc/passwd\" %}",
        "{% include \"../conf.d/app.toml\" %}",
        "{% extends \"/etc/hostname\" %}",
    ] {
        let dir = ConfDir::new();
        dir.template("app.tera", &format!("{tag}\n"));
        dir.resource("app", &unit_toml("app.tera", &dir.dest("out/app.conf"), ""));

        let run = run(&["--confdir", dir.arg(), "check"]);

        run.assert_code(2);
        assert!(!run.stderr.contains("root:x:0:0"), "{run}");
        assert!(!dir.exists("out/app.conf"));
    }
}

#[test]
fn getenv_works_only_where_the_resource_sets_allow_env() {
    let dir = ConfDir::new();
    dir.template(
        "env.tera",
        "home={{ getenv(name=\"SECURITY_TEST_VAR\") }}\n",
    );
    dir.resource(
        "allowed",
        &unit_toml(
            "env.tera",
            &dir.dest("out/allowed.conf"),
            "allow_env = true\n",
        ),
    );
    dir.resource(
        "denied",
        &unit_toml("env.tera", &dir.dest("out/denied.conf"), ""),
    );
    let mut cmd = confera();
    cmd.env("SECURITY_TEST_VAR", "from-env").args([
        "--confdir",
        dir.arg(),
        "--backend",
        "env",
        "--onetime",
    ]);

    let run = run_cmd(cmd);

    run.assert_code(1)
        .assert_stderr_contains("getenv is disabled")
        .assert_stderr_contains("allow_env = true");
    assert_eq!(dir.read("out/allowed.conf"), "home=from-env\n");
    assert!(!dir.exists("out/denied.conf"));
}

// --- helpers -----------------------------------------------------------------

/// `conf.d/app.toml` reading `/app/name` into `out/app.conf`.
fn app_confdir() -> ConfDir {
    let dir = ConfDir::new();
    dir.template("app.tera", "name={{ getv(key=\"/app/name\") }}\n");
    dir.resource(
        "app",
        &format!(
            "[template]\nsrc = \"app.tera\"\ndest = \"{}\"\nkeys = [\"/app\"]\n",
            dir.path().join("out/app.conf").display()
        ),
    );
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    dir
}

/// A `[template]` resource with SRC, DEST and extra lines.
fn unit_toml(src: &str, dest: &Path, extra: &str) -> String {
    format!(
        "[template]\nsrc = \"{src}\"\ndest = \"{}\"\n{extra}",
        dest.display()
    )
}

const PEER_TEMPLATE: &str = "peer {{ getv(key=\"/bgp/peer\") | ipv4 }}\npassword {{ getv(key=\"/bgp/passwords/a\") }}\nlocal as {{ getv(key=\"/bgp/asn\") }}\n";

/// `conf.d/peer.toml` rendering [`PEER_TEMPLATE`] into `out/peer.conf`, with
/// SECRET_LINE (`secret = true` or `secret_keys = [...]`), and `data.yaml`
/// holding [`NEW_SECRET`].
fn secret_peer_unit(dir: &ConfDir, secret_line: &str) {
    dir.template("peer.tera", PEER_TEMPLATE);
    dir.resource(
        "peer",
        &unit_toml(
            "peer.tera",
            &dir.dest("out/peer.conf"),
            &format!("keys = [\"/bgp\"]\n{secret_line}\n"),
        ),
    );
    write_peer_data(dir, NEW_SECRET);
}

/// `conf.d/peer.toml` with `secret_keys = ["/bgp/passwords/*"]` for a
/// template the test writes itself.
fn secret_keys_unit(dir: &ConfDir) {
    dir.resource(
        "peer",
        &unit_toml(
            "peer.tera",
            &dir.dest("out/peer.conf"),
            "keys = [\"/bgp\"]\nsecret_keys = [\"/bgp/passwords/*\"]\n",
        ),
    );
    write_peer_data(dir, NEW_SECRET);
}

/// `data.json` with a peer, an ASN and PASSWORD under `/bgp/passwords/a`.
fn write_peer_data(dir: &ConfDir, password: &str) {
    let data = serde_json::json!({
        "bgp": {"peer": "192.0.2.1", "asn": "65001", "passwords": {"a": password}}
    });
    dir.file("data.json", &data.to_string());
}

/// `--onetime` on the file backend (`data.json`) at debug level, plus ARGS.
fn run_file_backend(dir: &ConfDir, args: &[&str]) -> Run {
    let data = dir.path().join("data.json");
    let mut all = vec![
        "--confdir",
        dir.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--onetime",
        "--log-level",
        "debug",
    ];
    all.extend_from_slice(args);
    run(&all)
}

#[track_caller]
fn assert_not_shown(run: &Run, secret: &str) {
    assert!(
        !run.stderr.contains(secret) && !run.stdout.contains(secret),
        "{secret:?} appears in confera's output\n{run}"
    );
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn read_or_empty(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// confera's staging directories in DIR.
fn stage_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".confera-stage-"))
        })
        .collect();
    found.sort();
    found
}

fn with_umask_000(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            Ok(())
        });
    }
}

/// A plain etcd (the shared fixture) with `/app/name` set, a root user with
/// [`ROOT_PASSWORD`], and authentication enabled.
fn auth_etcd() -> Etcd {
    let etcd = Etcd::start();
    etcd.put("/app/name", "authenticated");
    let endpoint = format!("--endpoints={}", etcd.client_url);
    etcdctl(&[&endpoint, "user", "add", &format!("root:{ROOT_PASSWORD}")]);
    etcdctl(&[&endpoint, "auth", "enable"]);
    etcd
}

/// Runs etcdctl with ARGS; panics with its output unless it succeeds.
#[track_caller]
fn etcdctl(args: &[&str]) -> Output {
    let output = etcdctl_output(args);
    assert!(
        output.status.success(),
        "etcdctl {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn etcdctl_output(args: &[&str]) -> Output {
    Command::new("etcdctl")
        .args(["--dial-timeout=1s", "--command-timeout=3s"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl (is etcd-client installed?)")
}

fn tls_args<'a>(
    dir: &'a ConfDir,
    etcd: &'a TlsEtcd,
    client: Option<(&'a Path, &'a Path)>,
    ca: &'a Path,
) -> Vec<&'a str> {
    let mut args = vec![
        "--confdir",
        dir.arg(),
        "--node",
        &etcd.url,
        "--client-ca-keys",
        ca.to_str().unwrap(),
        "--onetime",
        "--log-level",
        "debug",
    ];
    if let Some((cert, key)) = client {
        args.extend([
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
        ]);
    }
    args
}

/// Test certificates, as PEM files in a temp dir: a CA, a server certificate
/// for 127.0.0.1 and a client certificate signed by it; and a rogue CA with
/// its own client certificate.
struct Pki {
    _dir: TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_ca: PathBuf,
    rogue_client_cert: PathBuf,
    rogue_client_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("confera-pki-")
            .tempdir()
            .expect("create the PKI's temp dir");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            fs::write(&path, pem).unwrap();
            path
        };
        let (ca, ca_key) = make_ca("confera test CA");
        let (rogue, rogue_key) = make_ca("rogue CA");
        let server = |usage| vec![usage, ExtendedKeyUsagePurpose::ClientAuth];
        let (server_cert, server_key) = make_leaf(
            "etcd",
            &["127.0.0.1", "localhost"],
            server(ExtendedKeyUsagePurpose::ServerAuth),
            &ca,
            &ca_key,
        );
        let client = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (client_cert, client_key) = make_leaf("confera", &[], client.clone(), &ca, &ca_key);
        let (rogue_cert, rogue_client_key) = make_leaf("confera", &[], client, &rogue, &rogue_key);
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            rogue_ca: write("rogue-ca.pem", &rogue.pem()),
            rogue_client_cert: write("rogue-client.pem", &rogue_cert),
            rogue_client_key: write("rogue-client-key.pem", &rogue_client_key),
            _dir: dir,
        }
    }

    fn client(&self) -> (&Path, &Path) {
        (&self.client_cert, &self.client_key)
    }

    fn rogue_client(&self) -> (&Path, &Path) {
        (&self.rogue_client_cert, &self.rogue_client_key)
    }
}

fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("generate a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert, key)
}

/// A certificate for CN and SANS signed by the CA; (cert PEM, key PEM).
fn make_leaf(
    cn: &str,
    sans: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> (String, String) {
    let key = KeyPair::generate().expect("generate a key");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("certificate parameters");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    let cert = params
        .signed_by(&key, ca, ca_key)
        .expect("sign the certificate");
    (cert.pem(), key.serialize_pem())
}

/// A single-member etcd serving clients only over TLS with client
/// certificate authentication, on free loopback ports; stopped on Drop.
struct TlsEtcd {
    /// `https://127.0.0.1:P`
    url: String,
    etcdctl_tls: Vec<String>,
    _ports: PortLease,
    dir: TempDir,
    child: Child,
}

impl TlsEtcd {
    fn start(pki: &Pki) -> TlsEtcd {
        let dir = tempfile::Builder::new()
            .prefix("confera-tls-etcd-")
            .tempdir()
            .expect("create etcd's temp dir");
        let name = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let etcdctl_tls = vec![
            format!("--cacert={}", pki.ca.display()),
            format!("--cert={}", pki.client_cert.display()),
            format!("--key={}", pki.client_key.display()),
        ];
        for _ in 0..5 {
            let ports = reserve_ports(3);
            let &[client, peer, metrics] = ports.ports() else {
                unreachable!()
            };
            let url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = dir.path().join("etcd.log");
            let log_file = fs::File::create(&log).unwrap();
            let child = Command::new("etcd")
                .arg(format!("--name={name}"))
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster={name}={peer_url}"))
                .arg(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"))
                .arg(format!("--cert-file={}", pki.server_cert.display()))
                .arg(format!("--key-file={}", pki.server_key.display()))
                .arg(format!("--trusted-ca-file={}", pki.ca.display()))
                .arg("--client-cert-auth")
                .arg("--heartbeat-interval=10")
                .arg("--election-timeout=100")
                .arg("--logger=zap")
                .arg("--log-level=warn")
                .arg("--log-outputs=stderr")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .current_dir(dir.path())
                .spawn()
                .expect("spawn etcd (is etcd installed?)");
            let mut child = KillOnDrop::new(child);
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = child.get().try_wait().unwrap() {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    assert!(
                        text.contains("address already in use"),
                        "TLS etcd exited with {status}:\n{text}"
                    );
                    let _ = fs::remove_dir_all(dir.path().join("data"));
                    break;
                }
                let mut args = vec![format!("--endpoints={url}"), "endpoint".into()];
                args.extend(etcdctl_tls.iter().cloned());
                args.push("health".into());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                if etcdctl_output(&args).status.success() {
                    return TlsEtcd {
                        url,
                        etcdctl_tls,
                        _ports: ports,
                        dir,
                        child: child.into_inner(),
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "TLS etcd was not healthy within {DEADLINE:?}:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("TLS etcd did not start: its ports were taken 5 times in a row");
    }

    fn put(&self, key: &str, value: &str) {
        let mut args = vec![format!("--endpoints={}", self.url)];
        args.extend(self.etcdctl_tls.iter().cloned());
        args.extend(["put".into(), key.into(), value.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        etcdctl(&args);
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(3));
        if std::thread::panicking() {
            eprintln!(
                "--- TLS etcd log\n{}",
                fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
        }
    }
}
