//! `--onetime`: one snapshot, every unit processed once, then exit 0 (all
//! good), 1 (a unit or reload failed) or 2 (configuration error). Each test
//! is the built binary against real etcd, files, processes and signals.

use crate::support::confdir::stage_entries;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::cmd::{confera, reserve_ports, run, run_cmd, Run};
use crate::support::confdir::ConfDir;
use crate::support::daemon::HupDaemon;
use crate::support::etcd::Etcd;

const HUP_DEADLINE: Duration = Duration::from_secs(5);

/// `confera --confdir CONF --onetime --node ETCD EXTRA...`
fn onetime(conf: &ConfDir, etcd: &Etcd, extra: &[&str]) -> Run {
    let mut args = vec![
        "--confdir",
        conf.arg(),
        "--onetime",
        "--node",
        &etcd.client_url,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `confera --confdir CONF --onetime --backend file --file DATA... EXTRA...`
fn onetime_files(conf: &ConfDir, data: &[&str], extra: &[&str]) -> Run {
    let mut args = vec!["--confdir", conf.arg(), "--onetime", "--backend", "file"];
    let paths: Vec<String> = data
        .iter()
        .map(|d| conf.path().join(d).display().to_string())
        .collect();
    for path in &paths {
        args.extend(["--file", path.as_str()]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

/// A one-template resource reading `keys` into `out/NAME.conf`, plus EXTRA lines.
fn resource(conf: &ConfDir, name: &str, template: &str, keys: &str, extra: &str) {
    conf.dest(&format!("out/{name}.conf"));
    conf.template(&format!("{name}.tera"), template);
    conf.resource(
        name,
        &format!(
            "[template]\nsrc = \"{name}.tera\"\ndest = \"out/{name}.conf\"\nkeys = {keys}\n{extra}"
        ),
    );
}

/// Starts a SIGHUP-counting daemon and adds unit `app`, rendering `/app/v`
/// into `out/app.conf`, reloading that daemon, with EXTRA settings.
fn reloading_app(conf: &ConfDir, extra: &str) -> HupDaemon {
    let daemon = HupDaemon::start(conf.path());
    let settings = format!("{extra}pid_file = \"{}\"\n", daemon.pid_file.display());
    resource(
        conf,
        "app",
        "v = {{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        &settings,
    );
    daemon
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn signals_sent(run: &Run) -> usize {
    run.stderr.matches("signalled daemon").count()
}

// --- rendering from etcd ---------------------------------------------------

#[test]
fn renders_keys_from_etcd_into_the_destination_with_the_resources_mode() {
    let etcd = Etcd::start();
    etcd.put("/app/db/url", "postgres://db");
    let conf = ConfDir::new();
    let tpl = "url = {{ getv(key=\"/app/db/url\") }}\n";
    resource(&conf, "app", tpl, r#"["/app"]"#, "mode = \"0640\"\n");

    onetime(&conf, &etcd, &[]).assert_success();

    assert_eq!(conf.read("out/app.conf"), "url = postgres://db\n");
    assert_eq!(mode_of(&conf.path().join("out/app.conf")), 0o640);
}

/// etcd-client balances requests over every endpoint, including ones that
/// refuse connections (etcdv3/etcd-client#39), so confera must skip a dead
/// node itself. Several runs in each order, since the balancer picks at random.
#[test]
fn a_dead_node_listed_beside_a_live_one_does_not_fail_the_run() {
    let etcd = Etcd::start();
    etcd.put("/app/v", "live");
    let dead = reserve_ports(1);
    let dead_url = format!("http://127.0.0.1:{}", dead.ports()[0]);
    let conf = ConfDir::new();
    resource(
        &conf,
        "app",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "",
    );

    for round in 0..3 {
        for nodes in [
            [dead_url.as_str(), etcd.client_url.as_str()],
            [etcd.client_url.as_str(), dead_url.as_str()],
        ] {
            let _ = fs::remove_file(conf.path().join("out/app.conf"));
            let args = [
                "--confdir",
                conf.arg(),
                "--onetime",
                "--node",
                nodes[0],
                "--node",
                nodes[1],
            ];
            let r = run(&args);
            assert_eq!(r.code, 0, "round {round}, nodes {nodes:?}\n{r}");
            assert_eq!(conf.read("out/app.conf"), "live\n");
        }
    }
}

#[test]
fn a_resource_key_matches_at_slash_boundaries_only() {
    let etcd = Etcd::start();
    etcd.put("/app/db", "leaf");
    etcd.put("/app/db/host", "h");
    etcd.put("/app/dbx", "x");
    etcd.put("/app/dbx/host", "hx");
    let conf = ConfDir::new();
    let tpl = "ls={% for n in ls(path=\"/app\") %}{{ n }},{% endfor %}\n\
               gets={% for e in gets(pattern=\"/app/*\") %}{{ e.key }}={{ e.value }},{% endfor %}\n\
               under={% for e in gets(pattern=\"/app/db/*\") %}{{ e.key }},{% endfor %}\n";
    resource(&conf, "app", tpl, r#"["/app/db"]"#, "");

    onetime(&conf, &etcd, &[]).assert_success();

    assert_eq!(
        conf.read("out/app.conf"),
        "ls=db,\ngets=/app/db=leaf,\nunder=/app/db/host,\n"
    );
}

#[test]
fn the_global_prefix_joins_with_the_resources_prefix() {
    let etcd = Etcd::start();
    etcd.put("/prod/fabric/node/name", "right");
    etcd.put("/fabric/node/name", "no global prefix");
    etcd.put("/prod/node/name", "no resource prefix");
    let conf = ConfDir::new();
    let tpl = "{{ getv(key=\"/node/name\") }}\n";
    resource(&conf, "app", tpl, r#"["/node"]"#, "prefix = \"/fabric\"\n");

    onetime(&conf, &etcd, &["--prefix", "/prod"]).assert_success();

    assert_eq!(conf.read("out/app.conf"), "right\n");
}

// --- other backends --------------------------------------------------------

#[test]
fn yaml_json_and_toml_data_files_merge_in_order_and_the_later_file_wins() {
    let conf = ConfDir::new();
    conf.file(
        "a.yaml",
        "app:\n  x: yaml\n  y: yaml\n  z: yaml\n  peers:\n    - 10.0.0.1\n    - {ip: 10.0.0.2}\n",
    );
    conf.file("b.json", r#"{"app": {"y": "json", "z": "json", "n": 7}}"#);
    conf.file("c.toml", "[app]\nz = \"toml\"\nup = true\n");
    let tpl = "{% for e in gets(pattern=\"/app/*\") %}{{ e.key }}={{ e.value }}\n{% endfor %}\
               peer0={{ getv(key=\"/app/peers/0\") }} peer1={{ getv(key=\"/app/peers/1/ip\") }}\n";
    resource(&conf, "app", tpl, r#"["/app"]"#, "");

    onetime_files(&conf, &["a.yaml", "b.json", "c.toml"], &[]).assert_success();

    assert_eq!(
        conf.read("out/app.conf"),
        "/app/n=7\n/app/up=true\n/app/x=yaml\n/app/y=json\n/app/z=toml\n\
         peer0=10.0.0.1 peer1=10.0.0.2\n"
    );
}

#[test]
fn the_env_backend_reads_myapp_db_url_as_key_myapp_db_url() {
    let conf = ConfDir::new();
    resource(
        &conf,
        "app",
        "{{ getv(key=\"/myapp/db/url\") }}\n",
        r#"["/myapp/db"]"#,
        "",
    );
    let mut cmd = confera();
    cmd.args(["--confdir", conf.arg(), "--onetime", "--backend", "env"])
        .env("MYAPP_DB_URL", "postgres://from-env");

    run_cmd(cmd).assert_success();

    assert_eq!(conf.read("out/app.conf"), "postgres://from-env\n");
}

// --- reloads -----------------------------------------------------------------

#[test]
fn a_changed_output_sends_one_sighup_and_an_identical_one_sends_none() {
    let etcd = Etcd::start();
    let conf = ConfDir::new();
    let daemon = reloading_app(&conf, "");
    etcd.put("/app/v", "1");

    let first = onetime(&conf, &etcd, &[]);
    first.assert_success();
    assert_eq!(signals_sent(&first), 1, "{first}");
    assert!(daemon.wait_for_hups(1, HUP_DEADLINE));

    let second = onetime(&conf, &etcd, &["--log-level", "debug"]);
    second.assert_success().assert_stderr_contains("unchanged");
    assert_eq!(signals_sent(&second), 0, "{second}");

    // A later change does arrive, and only its SIGHUP: none came in between.
    etcd.put("/app/v", "2");
    onetime(&conf, &etcd, &[]).assert_success();
    assert!(daemon.wait_for_hups(2, HUP_DEADLINE));
    assert_eq!(daemon.hups(), 2);
    assert_eq!(conf.read("out/app.conf"), "v = 2\n");
}

#[test]
fn a_failing_check_cmd_leaves_the_destination_and_sends_no_sighup() {
    let etcd = Etcd::start();
    let conf = ConfDir::new();
    let daemon = reloading_app(&conf, "check_cmd = \"false\"\n");
    conf.file("out/app.conf", "OLD\n");
    etcd.put("/app/v", "1");

    let r = onetime(&conf, &etcd, &[]);

    r.assert_code(1).assert_stderr_contains("check failed");
    assert_eq!(signals_sent(&r), 0, "{r}");
    assert_eq!(conf.read("out/app.conf"), "OLD\n");
    assert_eq!(
        stage_entries(&conf.path().join("out")),
        Vec::<String>::new()
    );
    assert_eq!(daemon.hups(), 0);
}

#[test]
fn a_check_that_rejects_a_change_keeps_the_old_file_and_the_next_good_change_reloads_once() {
    let etcd = Etcd::start();
    let conf = ConfDir::new();
    let daemon = reloading_app(&conf, "check_cmd = \"grep -q GOOD {{src}}\"\n");
    etcd.put("/app/v", "GOOD-1");
    onetime(&conf, &etcd, &[]).assert_success();
    assert!(daemon.wait_for_hups(1, HUP_DEADLINE));

    etcd.put("/app/v", "BAD");
    let rejected = onetime(&conf, &etcd, &[]);
    rejected
        .assert_code(1)
        .assert_stderr_contains("check failed");
    assert_eq!(signals_sent(&rejected), 0, "{rejected}");
    assert_eq!(conf.read("out/app.conf"), "v = GOOD-1\n");

    etcd.put("/app/v", "GOOD-2");
    onetime(&conf, &etcd, &[]).assert_success();
    assert!(daemon.wait_for_hups(2, HUP_DEADLINE));
    assert_eq!(daemon.hups(), 2, "the rejected change sent no SIGHUP");
    assert_eq!(conf.read("out/app.conf"), "v = GOOD-2\n");
}

#[test]
fn reload_cmd_runs_after_the_commit_with_dest_expanded() {
    let etcd = Etcd::start();
    let conf = ConfDir::new();
    let marker = conf.path().join("reloaded");
    let extra = format!("reload_cmd = \"cat {{{{dest}}}} > {}\"\n", marker.display());
    resource(
        &conf,
        "app",
        "v = {{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        &extra,
    );
    etcd.put("/app/v", "1");

    onetime(&conf, &etcd, &[]).assert_success();

    // The command read the committed destination through {{dest}}.
    assert_eq!(conf.read("reloaded"), "v = 1\n");
}

// `process_name` targeting is covered by src/reload/process.rs's unit tests
// (a_name_matching_one_process_of_root_signals_it and friends) and, with a
// throwaway user, by tests/integration/pid_files.rs.

// --- template sets -------------------------------------------------------------

/// A BIRD-like pair: main.conf includes inc.conf; the check reads both staged
/// copies, so it passes only if the include beside the staged main file is
/// the new one (the committed inc.conf says OLD).
fn template_set(conf: &ConfDir, daemon: &HupDaemon) {
    conf.file("out/main.conf", "OLD\n");
    conf.file("out/inc.conf", "OLD\n");
    conf.template(
        "main.tera",
        "include \"inc.conf\";\nmain = {{ getv(key=\"/app/main\") }}\n",
    );
    conf.template("inc.tera", "inc = {{ getv(key=\"/app/inc\") }}\n");
    conf.resource(
        "set",
        &format!(
            r#"check_cmd = "grep -q NEW {{{{src}}}} && grep -q NEW $(dirname {{{{src}}}})/inc.conf"
pid_file = "{}"

[[template]]
src = "main.tera"
dest = "out/main.conf"
keys = ["/app/main"]

[[template]]
src = "inc.tera"
dest = "out/inc.conf"
keys = ["/app/inc"]
"#,
            daemon.pid_file.display()
        ),
    );
}

#[test]
fn a_template_set_is_checked_with_its_staged_include_committed_together_and_reloaded_once() {
    let etcd = Etcd::start();
    let conf = ConfDir::new();
    let daemon = HupDaemon::start(conf.path());
    template_set(&conf, &daemon);
    etcd.put("/app/main", "NEW-1");
    etcd.put("/app/inc", "NEW-1");

    let r = onetime(&conf, &etcd, &[]);

    r.assert_success();
    assert_eq!(
        conf.read("out/main.conf"),
        "include \"inc.conf\";\nmain = NEW-1\n"
    );
    assert_eq!(conf.read("out/inc.conf"), "inc = NEW-1\n");
    assert_eq!(signals_sent(&r), 1, "{r}");
    assert!(daemon.wait_for_hups(1, HUP_DEADLINE));
}

#[test]
fn when_a_template_sets_check_fails_none_of_its_files_change() {
    let etcd = Etcd::start();
    let conf = ConfDir::new();
    let daemon = HupDaemon::start(conf.path());
    template_set(&conf, &daemon);
    // main.conf alone would pass; the staged include fails the check.
    etcd.put("/app/main", "NEW-1");
    etcd.put("/app/inc", "BROKEN");

    let r = onetime(&conf, &etcd, &[]);

    r.assert_code(1).assert_stderr_contains("check failed");
    assert_eq!(conf.read("out/main.conf"), "OLD\n");
    assert_eq!(conf.read("out/inc.conf"), "OLD\n");
    assert_eq!(signals_sent(&r), 0, "{r}");
    assert_eq!(daemon.hups(), 0);
}

// --- failures, dry runs and modes ------------------------------------------------

#[test]
fn a_failing_unit_does_not_stop_the_next_one_and_the_run_exits_1() {
    let etcd = Etcd::start();
    etcd.put("/app/v", "good");
    let conf = ConfDir::new();
    // `a` sorts first, so `b` runs after the failure.
    resource(
        &conf,
        "a",
        "{{ getv(key=\"/app/missing\") }}\n",
        r#"["/app"]"#,
        "",
    );
    resource(
        &conf,
        "b",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "",
    );

    let r = onetime(&conf, &etcd, &[]);

    r.assert_code(1)
        .assert_stderr_contains("resource=a")
        .assert_stderr_contains("key `/app/missing` not found");
    assert_eq!(conf.read("out/b.conf"), "good\n");
    assert!(!conf.exists("out/a.conf"));
}

#[test]
fn noop_writes_nothing_and_sends_no_signal() {
    let etcd = Etcd::start();
    etcd.put("/app/v", "new");
    let conf = ConfDir::new();
    let daemon = HupDaemon::start(conf.path());
    let pid_file = format!("pid_file = \"{}\"\n", daemon.pid_file.display());
    resource(
        &conf,
        "a",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        &pid_file,
    );
    resource(
        &conf,
        "b",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "",
    );
    conf.file("out/a.conf", "OLD\n");

    let r = onetime(&conf, &etcd, &["--noop"]);

    r.assert_success().assert_stderr_contains("would change");
    assert_eq!(conf.read("out/a.conf"), "OLD\n");
    assert!(
        !conf.exists("out/b.conf"),
        "a missing destination stays missing"
    );
    assert_eq!(
        stage_entries(&conf.path().join("out")),
        Vec::<String>::new()
    );
    assert_eq!(signals_sent(&r), 0, "{r}");
    assert_eq!(r.stdout, "", "without --diff nothing goes to stdout");
    assert_eq!(daemon.hups(), 0);
}

#[test]
fn noop_diff_prints_a_unified_diff_and_only_that_on_stdout() {
    let etcd = Etcd::start();
    etcd.put("/app/v", "new");
    let conf = ConfDir::new();
    resource(
        &conf,
        "app",
        "same\n{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "mode = \"0644\"\n",
    );
    conf.file("out/app.conf", "same\nOLD\n");
    fs::set_permissions(
        conf.path().join("out/app.conf"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let dest = conf.path().join("out/app.conf").display().to_string();

    let r = onetime(&conf, &etcd, &["--noop", "--diff"]);

    r.assert_success();
    assert_eq!(
        r.stdout,
        format!("--- {dest}\n+++ {dest}\n@@ -1,2 +1,2 @@\n same\n-OLD\n+new\n"),
        "{r}"
    );
    assert_eq!(conf.read("out/app.conf"), "same\nOLD\n");
}

#[test]
fn sync_only_writes_but_runs_no_check_and_sends_no_signal() {
    let etcd = Etcd::start();
    etcd.put("/app/v", "new");
    let conf = ConfDir::new();
    let daemon = HupDaemon::start(conf.path());
    let extra = format!(
        "check_cmd = \"false\"\npid_file = \"{}\"\n",
        daemon.pid_file.display()
    );
    resource(
        &conf,
        "app",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        &extra,
    );

    let r = onetime(&conf, &etcd, &["--sync-only"]);

    r.assert_success().assert_stderr_contains("committed");
    assert_eq!(conf.read("out/app.conf"), "new\n");
    assert_eq!(signals_sent(&r), 0, "{r}");
    assert_eq!(daemon.hups(), 0);
}

/// With `follow_symlink = true`, a link root made (in a directory only root
/// can write) is followed. Without it the link is refused: see
/// `symlinks::a_link_the_directory_owner_plants_at_dest_is_refused_…`.
#[test]
fn with_follow_symlink_a_symlinked_destination_stays_a_symlink_and_its_target_is_replaced() {
    let conf = ConfDir::new();
    conf.file("data.yaml", "app:\n  v: new\n");
    resource(
        &conf,
        "app",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "follow_symlink = true\n",
    );
    conf.file("real/target.conf", "OLD\n");
    let link = conf.path().join("out/app.conf");
    std::os::unix::fs::symlink(conf.path().join("real/target.conf"), &link).unwrap();

    onetime_files(&conf, &["data.yaml"], &[]).assert_success();

    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(conf.read("real/target.conf"), "new\n");
    assert_eq!(
        stage_entries(&conf.path().join("real")),
        Vec::<String>::new()
    );
}

#[test]
fn an_existing_destination_keeps_its_mode_and_owner_and_a_new_one_is_0644() {
    let conf = ConfDir::new();
    conf.file("data.yaml", "app:\n  v: new\n");
    resource(
        &conf,
        "kept",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "",
    );
    resource(
        &conf,
        "fresh",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "",
    );
    conf.file("out/kept.conf", "OLD\n");
    let kept = conf.path().join("out/kept.conf");
    fs::set_permissions(&kept, fs::Permissions::from_mode(0o600)).unwrap();
    let is_root = nix::unistd::geteuid().is_root();
    if is_root {
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        nix::unistd::chown(&kept, nobody, Some(nix::unistd::Gid::from_raw(65534))).unwrap();
    }
    let owner_before = fs::metadata(&kept).map(|m| (m.uid(), m.gid())).unwrap();

    onetime_files(&conf, &["data.yaml"], &["--log-level", "warn"]).assert_success();

    assert_eq!(conf.read("out/kept.conf"), "new\n");
    assert_eq!(mode_of(&kept), 0o600);
    let owner_after = fs::metadata(&kept).map(|m| (m.uid(), m.gid())).unwrap();
    assert_eq!(owner_after, owner_before, "(root: {is_root})");
    assert_eq!(mode_of(&conf.path().join("out/fresh.conf")), 0o644);
}

#[test]
fn keep_stage_file_leaves_the_staging_directory_and_a_normal_run_leaves_none() {
    let conf = ConfDir::new();
    conf.file("data.yaml", "app:\n  v: new\n");
    resource(
        &conf,
        "app",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "",
    );
    let out = conf.path().join("out");

    onetime_files(&conf, &["data.yaml"], &[]).assert_success();
    assert_eq!(stage_entries(&out), Vec::<String>::new());

    conf.file("data.yaml", "app:\n  v: newer\n");
    onetime_files(&conf, &["data.yaml"], &["--keep-stage-file"]).assert_success();
    let kept = stage_entries(&out);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].starts_with(".confera-stage-app-"), "{kept:?}");
    assert_eq!(conf.read("out/app.conf"), "newer\n");
}

#[test]
fn stale_staging_directories_of_dead_processes_are_removed_at_start() {
    let conf = ConfDir::new();
    conf.file("data.yaml", "app:\n  v: new\n");
    resource(
        &conf,
        "app",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "",
    );
    // Beyond any pid_max, so never a live process.
    let dead = ".confera-stage-app-999999999-0000abcd";
    conf.file(&format!("out/{dead}/app.conf"), "half-written");
    // This test process is alive: its directory is not stale.
    let live = format!(".confera-stage-app-{}-0000abcd", std::process::id());
    conf.file(&format!("out/{live}/app.conf"), "in progress");
    // Another unit's directory is not this unit's to remove.
    let other = ".confera-stage-other-999999999-0000abcd";
    conf.file(&format!("out/{other}/x.conf"), "not ours");

    onetime_files(&conf, &["data.yaml"], &[]).assert_success();

    let mut left = stage_entries(&conf.path().join("out"));
    left.sort();
    let mut want = vec![live, other.to_string()];
    want.sort();
    assert_eq!(
        left, want,
        "only the dead process's directory of this unit goes"
    );
}

#[test]
fn an_unreachable_etcd_fails_with_exit_2_within_seconds_naming_the_endpoint() {
    let free = reserve_ports(1);
    let url = format!("http://127.0.0.1:{}", free.ports()[0]);
    let conf = ConfDir::new();
    resource(
        &conf,
        "app",
        "{{ getv(key=\"/app/v\") }}\n",
        r#"["/app"]"#,
        "",
    );
    conf.file("out/app.conf", "OLD\n");

    let started = Instant::now();
    let r = run(&["--confdir", conf.arg(), "--onetime", "--node", &url]);
    let took = started.elapsed();

    r.assert_code(2).assert_stderr_contains(&url);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(conf.read("out/app.conf"), "OLD\n");
}

#[test]
fn a_broken_resource_file_is_reported_at_once_while_etcd_does_not_answer() {
    // A one-shot connects while the templates compile: a configuration
    // error must still win at once, not wait for the connection.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let conf = ConfDir::new();
    conf.file(
        "conf.d/app.toml",
        "[template]\nsrc = \"app.tmpl\"\ndest = [\n",
    );

    let started = Instant::now();
    let r = run(&["--confdir", conf.arg(), "--onetime", "--node", &url]);
    let took = started.elapsed();

    r.assert_code(2).assert_stderr_contains("app.toml");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

// --- settings ----------------------------------------------------------------

#[test]
fn settings_come_from_confera_toml_then_environment_then_flags() {
    let conf = ConfDir::new();
    conf.file(
        "data.yaml",
        "file:\n  v: from-file\nenv:\n  v: from-env\nflag:\n  v: from-flag\n",
    );
    conf.file(
        "confera.toml",
        &format!(
            "backend = \"file\"\nfiles = [\"{}\"]\nprefix = \"/file\"\n",
            conf.path().join("data.yaml").display()
        ),
    );
    resource(&conf, "app", "{{ getv(key=\"/v\") }}\n", r#"["/v"]"#, "");
    let base = || {
        let mut cmd = confera();
        cmd.args(["--confdir", conf.arg(), "--onetime"]);
        cmd
    };

    run_cmd(base()).assert_success();
    assert_eq!(conf.read("out/app.conf"), "from-file\n");

    let mut with_env = base();
    with_env.env("CONFERA_PREFIX", "/env");
    run_cmd(with_env).assert_success();
    assert_eq!(conf.read("out/app.conf"), "from-env\n");

    let mut with_flag = base();
    with_flag
        .env("CONFERA_PREFIX", "/env")
        .args(["--prefix", "/flag"]);
    run_cmd(with_flag).assert_success();
    assert_eq!(conf.read("out/app.conf"), "from-flag\n");
}

#[test]
fn an_unknown_key_in_confera_toml_is_exit_2_naming_the_key_and_the_file() {
    let conf = ConfDir::new();
    conf.file("confera.toml", "backend = \"file\"\nbakend = \"etcd\"\n");
    resource(&conf, "app", "x\n", r#"["/app"]"#, "");

    let r = run(&["--confdir", conf.arg(), "--onetime"]);

    r.assert_code(2)
        .assert_stderr_contains("bakend")
        .assert_stderr_contains(&conf.path().join("confera.toml").display().to_string());
    assert!(!conf.exists("out/app.conf"));
}

// --- confera check -------------------------------------------------------------

#[test]
fn check_lists_units_and_keys_and_needs_no_backend() {
    let conf = ConfDir::new();
    resource(
        &conf,
        "app",
        "{{ getv(key=\"/db/url\") }}\n",
        r#"["/db", "/cache"]"#,
        "prefix = \"/svc\"\n",
    );
    // Nothing listens here: check must not try.
    let free = reserve_ports(1);
    let url = format!("http://127.0.0.1:{}", free.ports()[0]);

    let r = run(&["--confdir", conf.arg(), "--node", &url, "check"]);

    r.assert_success();
    let dest = conf.path().join("out/app.conf");
    assert_eq!(
        r.stdout,
        format!(
            "app: app.tera -> {} (prefix /svc, keys /cache, /db)\n",
            dest.display()
        )
    );
    assert!(!dest.exists());
}

#[test]
fn check_of_a_broken_template_exits_2_naming_the_file_and_line() {
    let conf = ConfDir::new();
    resource(&conf, "app", "ok\n{% if %}\n", r#"["/app"]"#, "");

    let r = run(&["--confdir", conf.arg(), "check"]);

    r.assert_code(2)
        .assert_stderr_contains("template app.tera line 2");
}
