//! `--noop` as a CI drift check (issue 15 item 8): `--exit-code` says
//! whether anything would change, a dry run works on a machine without the
//! destination directory (links are still refused), and the diff of a
//! resource with secret keys masks only the lines that hold a secret.

use std::fs;
use std::path::Path;

use crate::example::BIRD_EXAMPLE;
use crate::support::cmd::{run, Run};
use crate::support::confdir::{copy_of_repo, ConfDir};

/// A resource printing `/a` into DEST.
fn resource(conf: &ConfDir, dest: &Path) {
    conf.template("t.tera", "a = {{ getv(key=\"/a\") }}\n")
        .resource(
            "app",
            &format!(
                "[template]\nsrc = \"t.tera\"\ndest = \"{}\"\nkeys = [\"/a\"]\n",
                dest.display()
            ),
        );
}

fn render(conf: &ConfDir, value: &str, flags: &[&str]) -> Run {
    conf.file("data.yaml", &format!("a: {value}\n"));
    conf.onetime_with_file("data.yaml", flags)
}

#[test]
fn noop_with_exit_code_exits_3_when_a_file_would_change_and_0_when_none_would() {
    let conf = ConfDir::new();
    let dest = conf.dest("out/app.conf");
    resource(&conf, &dest);
    render(&conf, "1", &[]).assert_success();

    let same = render(&conf, "1", &["--noop", "--exit-code"]);
    let changed = render(&conf, "2", &["--noop", "--exit-code"]);

    same.assert_success()
        .assert_stderr_contains("1 resource, 0 would change");
    changed
        .assert_code(3)
        .assert_stderr_contains(&format!("would change dest={}", dest.display()))
        .assert_stderr_contains("1 resource, 1 would change");
    assert_eq!(fs::read_to_string(&dest).unwrap(), "a = 1\n");
    // Without --noop there is nothing to report this way.
    render(&conf, "2", &["--exit-code"])
        .assert_code(2)
        .assert_stderr_contains("--exit-code goes with --onetime --noop");
}

#[test]
fn a_dry_run_without_the_destination_directory_reports_the_file_as_would_change() {
    let conf = ConfDir::new();
    let missing = conf.path().join("etc-bird");
    let dest = missing.join("bird.conf");
    resource(&conf, &dest);

    let dry = render(&conf, "1", &["--noop"]);
    let ci = render(&conf, "1", &["--noop", "--exit-code"]);

    dry.assert_success()
        .assert_stderr_contains(&format!("would change dest={}", dest.display()))
        .assert_stderr_contains("missing (its directory does not exist yet)");
    ci.assert_code(3);
    assert!(!missing.exists(), "a dry run creates nothing");
    // A real run still needs the directory, as confd did.
    render(&conf, "1", &[])
        .assert_code(1)
        .assert_stderr_contains("No such file or directory");
}

#[test]
fn a_dry_run_still_refuses_a_link_at_the_destination() {
    let conf = ConfDir::new();
    let dest = conf.dest("out/app.conf");
    let victim = conf.dest("victim");
    fs::write(&victim, "keep\n").unwrap();
    std::os::unix::fs::symlink(&victim, &dest).unwrap();
    resource(&conf, &dest);

    render(&conf, "1", &["--noop"])
        .assert_code(1)
        .assert_stderr_contains("refusing to write through it");
}

#[test]
fn the_diff_of_the_bundled_example_masks_only_the_lines_that_hold_a_secret() {
    let clone = copy_of_repo(BIRD_EXAMPLE);
    let confdir = clone.path().to_str().unwrap();
    run(&["--confdir", confdir, "--onetime"]).assert_success();
    let data = clone.path().join("examples/cluster.yaml");
    let yaml = fs::read_to_string(&data).unwrap();
    // A new AS for the fabric (no secret) and a new mesh password (secret).
    let changed = yaml
        .replacen("asn: 64512", "asn: 64520", 1)
        .replace("example-only-mesh-secret", "rotated-mesh-secret");
    assert_ne!(changed, yaml);
    fs::write(&data, changed).unwrap();

    let r = run(&["--confdir", confdir, "--onetime", "--noop", "--diff"]);

    r.assert_success();
    let removed: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("-  ")).collect();
    // The old AS shows, as a removed line of its own.
    assert!(
        removed.iter().any(|l| l.contains("as 64512")),
        "{}",
        r.stdout
    );
    // The old and new password never do; their lines are masked.
    for secret in ["example-only-mesh-secret", "rotated-mesh-secret"] {
        assert!(!r.stdout.contains(secret), "{}", r.stdout);
        assert!(!r.stderr.contains(secret), "{}", r.stderr);
    }
    assert!(r.stdout.contains("-<redacted>"), "{}", r.stdout);
    assert!(
        r.stdout.contains("+  password \"<redacted>\";"),
        "{}",
        r.stdout
    );
    let masked = r.stdout.lines().filter(|l| *l == "-<redacted>").count();
    assert_eq!(masked, 1, "only the password line is masked\n{}", r.stdout);
}
