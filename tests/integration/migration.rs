//! Migrating from confd (docs/migrating-from-confd.md): the worked examples
//! in examples/confd-migration/ render what they promise, and the guide's
//! function table and behaviour notes hold.
//!
//! Each example is a confdir (`conf.d/`, `templates/`) with a data file, the
//! expected output and, under `confd/`, the original confd files it was
//! converted from (never read by confera). A test copies the example into a
//! temp dir and renders it with the file backend and `--sync-only` (the
//! examples name real daemons' check and reload, which no test host runs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::support::cmd::{confera, run, run_cmd, Run};
use crate::support::confdir::ConfDir;

/// examples/confd-migration/NAME in the source tree.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/confd-migration")
        .join(name)
}

/// A copy of example NAME in a temp dir, with the `out/` directory its
/// resources write into (confera, like confd, creates no directories).
fn copy_example(name: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("confera-migration-")
        .tempdir()
        .unwrap();
    copy_tree(&example(name), dir.path());
    fs::create_dir(dir.path().join("out")).unwrap();
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "out" {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `confera --onetime --sync-only` on the copied example with its data file,
/// and NODENAME set for templates that read it.
fn render(dir: &Path) -> Run {
    let mut cmd = confera();
    cmd.env("NODENAME", "node-a")
        .arg("--confdir")
        .arg(dir)
        .args(["--backend", "file", "--file"])
        .arg(dir.join("data.yaml"))
        .args(["--onetime", "--sync-only"]);
    run_cmd(cmd)
}

#[track_caller]
fn assert_same_file(actual: &Path, expected: &Path) {
    let read =
        |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    assert_eq!(
        read(actual),
        read(expected),
        "{} differs from {}",
        actual.display(),
        expected.display()
    );
}

/// Every example keeps its confd original beside the conversion.
#[track_caller]
fn assert_has_confd_original(dir: &Path, resource: &str, template: &str) {
    for original in [
        format!("confd/conf.d/{resource}"),
        format!("confd/templates/{template}"),
    ] {
        assert!(
            dir.join(&original).is_file(),
            "the example lacks its confd original {original}"
        );
    }
}

#[test]
fn the_nginx_upstream_example_renders_its_expected_output() {
    let dir = copy_example("nginx");
    assert_has_confd_original(dir.path(), "myapp-nginx.toml", "myapp-nginx.tmpl");

    render(dir.path()).assert_success();

    assert_same_file(
        &dir.path().join("out/myapp-nginx.conf"),
        &example("nginx").join("expected/myapp-nginx.conf"),
    );
}

#[test]
fn the_bird_peer_example_renders_its_expected_output_which_bird_accepts() {
    let dir = copy_example("bird");
    assert_has_confd_original(dir.path(), "bird.toml", "bird.cfg.tmpl");

    render(dir.path()).assert_success();

    let out = dir.path().join("out/bird.conf");
    assert_same_file(&out, &example("bird").join("expected/bird.conf"));
    let check = Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(&out)
        .output()
        .expect("run bird -p (is bird2 installed?)");
    assert!(
        check.status.success(),
        "bird -p -c rejects the output: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn the_converted_resources_pass_confera_check_and_the_confd_originals_are_not_read() {
    for (name, unit) in [("nginx", "myapp-nginx"), ("bird", "bird")] {
        let dir = copy_example(name);

        let out = run(&["check", "--confdir", dir.path().to_str().unwrap()]);

        // The nginx example checks with /usr/sbin/nginx: where nginx is not
        // installed, check says so (a render would fail) and exits 1.
        if name == "nginx" && !Path::new("/usr/sbin/nginx").exists() {
            out.assert_code(1).assert_stderr_contains(
                "error: resource myapp-nginx: check_cmd: program /usr/sbin/nginx does not exist",
            );
        } else {
            out.assert_success();
        }
        assert_eq!(out.stdout.lines().count(), 1, "{out}");
        assert!(out.stdout.starts_with(&format!("{unit}: ")), "{out}");
    }
}

/// A confdir with one unit `t` (keys `/app`, getenv allowed) rendering
/// TEMPLATE from the data file DATA (YAML).
fn one_unit(template: &str, data: &str) -> ConfDir {
    let dir = ConfDir::new();
    dir.file("data.yaml", data)
        .template("t.tera", template)
        .resource(
            "t",
            &format!(
                "[template]\nsrc = \"t.tera\"\ndest = {:?}\nkeys = [\"/app\"]\nallow_env = true\n",
                dir.dest("out/t.conf")
            ),
        );
    dir
}

/// Renders `one_unit(TEMPLATE, DATA)` once.
fn render_one(template: &str, data: &str) -> (ConfDir, Run) {
    let dir = one_unit(template, data);
    let data = dir.path().join("data.yaml");
    let mut cmd = confera();
    cmd.env("CONFERA_MIGRATION_TEST", "from the environment")
        .args(["--confdir", dir.arg(), "--backend", "file", "--file"])
        .arg(&data)
        .arg("--onetime");
    let out = run_cmd(cmd);
    (dir, out)
}

const FUNCTION_DATA: &str = r#"
app:
  path: /srv/www/index.html
  csv: a,b,c
  doc: '{"name": "web", "ports": [80, 443]}'
  list: '["x", "y"]'
  name: Web
  flag: "true"
  file: app.conf.bak
  b64: aGVsbG8=
  n: "7"
  peers:
    b: "2"
    a: "1"
    cc: "3"
"#;

/// Each line: the confd call in a comment, then its Tera form as the guide's
/// table gives it, and the expected result.
const FUNCTIONS: &[(&str, &str, &str)] = &[
    (
        r#"base "/srv/www/index.html""#,
        r#"{{ getv(key="/app/path") | base }}"#,
        "index.html",
    ),
    (
        r#"dir "/srv/www/index.html""#,
        r#"{{ getv(key="/app/path") | dir }}"#,
        "/srv/www",
    ),
    (
        r#"split $csv ",""#,
        r#"{{ getv(key="/app/csv") | split(pat=",") | last }}"#,
        "c",
    ),
    (
        r#"join (split $csv ",") "-""#,
        r#"{{ getv(key="/app/csv") | split(pat=",") | join(sep="-") }}"#,
        "a-b-c",
    ),
    (
        r#"(json $doc).name"#,
        r#"{% set doc = getv(key="/app/doc") | json %}{{ doc.name }}"#,
        "web",
    ),
    (
        r#"index (json $doc).ports 1"#,
        r#"{% set doc = getv(key="/app/doc") | json %}{{ doc.ports[1] }}"#,
        "443",
    ),
    (
        r#"jsonArray $list"#,
        r#"{{ getv(key="/app/list") | json | join(sep=",") }}"#,
        "x,y",
    ),
    (
        r#"map "k" "v""#,
        r#"{% set m = {"k": "v"} %}{{ m.k }}"#,
        "v",
    ),
    (
        r#"getenv "CONFERA_MIGRATION_TEST""#,
        r#"{{ getenv(name="CONFERA_MIGRATION_TEST") }}"#,
        "from the environment",
    ),
    (
        r#"getenv "UNSET_X" "dflt""#,
        r#"{{ getenv(name="CONFERA_UNSET_VARIABLE", default="dflt") }}"#,
        "dflt",
    ),
    (
        r#"toUpper $name"#,
        r#"{{ getv(key="/app/name") | upper }}"#,
        "WEB",
    ),
    (
        r#"toLower $name"#,
        r#"{{ getv(key="/app/name") | lower }}"#,
        "web",
    ),
    (
        r#"contains $name "e""#,
        r#"{{ "e" in getv(key="/app/name") }}"#,
        "true",
    ),
    (
        r#"replace $csv "," ";" -1"#,
        r#"{{ getv(key="/app/csv") | replace(from=",", to=";") }}"#,
        "a;b;c",
    ),
    (
        r#"trimSuffix $file ".bak""#,
        r#"{{ getv(key="/app/file") | trim_end(pat=".bak") }}"#,
        "app.conf",
    ),
    (
        r#"trimSuffix "a.x.x" ".x" (once)"#,
        r#"{% set s = "a.x.x" %}{% if s is ending_with(pat=".x") %}{{ s[:-2] }}{% else %}{{ s }}{% endif %}"#,
        "a.x",
    ),
    (
        r#"base64Encode "hello""#,
        r#"{{ "hello" | base64_encode }}"#,
        "aGVsbG8=",
    ),
    (
        r#"base64Decode $b64"#,
        r#"{{ getv(key="/app/b64") | base64_decode }}"#,
        "hello",
    ),
    (
        r#"parseBool $flag"#,
        r#"{{ getv(key="/app/flag") in ["1", "t", "T", "true", "TRUE", "True"] }}"#,
        "true",
    ),
    (
        r#"reverse (getvs "/app/peers/*")"#,
        r#"{{ getvs(pattern="/app/peers/*") | reverse | join(sep=",") }}"#,
        "3,2,1",
    ),
    (
        r#"sortByLength (ls "/app/peers")"#,
        r#"{{ ls(path="/app/peers") | sort_by_length | join(sep=",") }}"#,
        "a,b,cc",
    ),
    (
        r#"sortKVByLength (gets "/app/peers/*")"#,
        r#"{% for k in ls(path="/app/peers") | sort_by_length %}{% set kv = get(key="/app/peers/" ~ k) %}{{ kv.value }}{% endfor %}"#,
        "123",
    ),
    (
        r#"add (atoi $n) 1"#,
        r#"{{ getv(key="/app/n") | int + 1 }}"#,
        "8",
    ),
    (
        r#"sub (atoi $n) 1"#,
        r#"{{ getv(key="/app/n") | int - 1 }}"#,
        "6",
    ),
    (
        r#"mul (atoi $n) 2"#,
        r#"{{ getv(key="/app/n") | int * 2 }}"#,
        "14",
    ),
    (
        r#"div (atoi $n) 2"#,
        r#"{{ getv(key="/app/n") | int // 2 }}"#,
        "3",
    ),
    (
        r#"mod (atoi $n) 2"#,
        r#"{{ getv(key="/app/n") | int % 2 }}"#,
        "1",
    ),
    (
        r#"seq 1 3"#,
        r#"{% for i in range(start=1, end=4) %}{{ i }}{% endfor %}"#,
        "123",
    ),
    (
        r#"get "/app/name""#,
        r#"{% set kv = get(key="/app/name") %}{{ kv.key }}={{ kv.value }}"#,
        "/app/name=Web",
    ),
    (
        r#"gets "/app/peers/*""#,
        r#"{% for kv in gets(pattern="/app/peers/*") %}{{ kv.key | base }}{{ kv.value }}{% endfor %}"#,
        "a1b2cc3",
    ),
    (
        r#"getv "/app/name""#,
        r#"{{ getv(key="/app/name") }}"#,
        "Web",
    ),
    (
        r#"getv "/app/none" "dflt""#,
        r#"{{ getv(key="/app/none", default="dflt") }}"#,
        "dflt",
    ),
    (
        r#"getvs "/app/peers/*" (confd: sorted by value)"#,
        r#"{{ getvs(pattern="/app/peers/*") | sort | join(sep=",") }}"#,
        "1,2,3",
    ),
    (
        r#"exists "/app/name""#,
        r#"{{ exists(key="/app/name") }},{{ exists(key="/app/none") }}"#,
        "true,false",
    ),
    (
        r#"ls "/app/peers""#,
        r#"{{ ls(path="/app/peers") | join(sep=",") }}"#,
        "a,b,cc",
    ),
    (
        r#"lsdir "/app""#,
        r#"{{ lsdir(path="/app") | join(sep=",") }}"#,
        "peers",
    ),
    (
        r#"printf "%s-%s" $a $b"#,
        r#"{{ getv(key="/app/name") ~ "-" ~ getv(key="/app/n") }}"#,
        "Web-7",
    ),
    (
        r#"len (ls "/app/peers")"#,
        r#"{{ ls(path="/app/peers") | length }}"#,
        "3",
    ),
];

#[test]
fn the_guide_s_function_table_renders_as_it_says() {
    let mut template = String::new();
    let mut want = String::new();
    for (confd, tera, result) in FUNCTIONS {
        template.push_str(&format!("{{# {confd} #}}{tera}\n"));
        want.push_str(&format!("{result}\n"));
    }

    let (dir, out) = render_one(&template, FUNCTION_DATA);

    out.assert_success();
    let got = dir.read("out/t.conf");
    for ((confd, tera, _), (got, want)) in FUNCTIONS.iter().zip(got.lines().zip(want.lines())) {
        assert_eq!(got, want, "confd `{confd}` as `{tera}`");
    }
    assert_eq!(got, want);
}

#[test]
fn getvs_is_in_key_order_where_confd_sorted_the_values() {
    let (dir, out) = render_one(
        r#"{{ getvs(pattern="/app/*") | join(sep=",") }} {{ getvs(pattern="/app/*") | sort | join(sep=",") }}"#,
        "app:\n  a: zebra\n  b: apple\n  c: mango\n",
    );

    out.assert_success();
    assert_eq!(
        dir.read("out/t.conf"),
        "zebra,apple,mango apple,mango,zebra"
    );
}

#[test]
fn ls_and_lsdir_at_the_root_list_the_top_level() {
    let dir = ConfDir::new();
    dir.file("data.yaml", "app:\n  a: 1\n  b:\n    c: 2\n")
        .template("t.tera", r#"{{ ls(path="/") | join(sep=",") }};{{ lsdir(path="/") | join(sep=",") }};{{ ls(path="/app") | join(sep=",") }};{{ lsdir(path="/app") | join(sep=",") }}"#)
        .resource(
            "t",
            &format!(
                "[template]\nsrc = \"t.tera\"\ndest = {:?}\nkeys = [\"/app\"]\n",
                dir.dest("out/t.conf")
            ),
        );
    let data = dir.path().join("data.yaml");

    let out = run(&[
        "--confdir",
        dir.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--onetime",
    ]);

    out.assert_success();
    assert_eq!(dir.read("out/t.conf"), "app;app;a,b;b");
}

#[test]
fn what_confd_rendered_as_empty_or_no_value_is_an_error_naming_template_line_and_key() {
    let cases = [
        // A missing key without a default.
        (
            "first\n{{ getv(key=\"/app/missing\") }}",
            "line 2",
            "/app/missing",
        ),
        // An undefined variable.
        ("{{ nothing_here }}", "line 1", "nothing_here"),
        // A missing field of a JSON document (Go printed "<no value>").
        (
            "{% set doc = getv(key=\"/app/doc\") | json %}\n{{ doc.missing }}",
            "line 2",
            "missing",
        ),
        // A key outside the resource's keys.
        (
            "{{ getv(key=\"/other/key\") }}",
            "line 1",
            "not under this resource's keys",
        ),
        // getenv without allow_env is refused elsewhere; an unset variable
        // without a default is an error here (confd rendered "").
        (
            "{{ getenv(name=\"CONFERA_UNSET_VARIABLE\") }}",
            "line 1",
            "CONFERA_UNSET_VARIABLE",
        ),
    ];
    for (template, line, key) in cases {
        let (dir, out) = render_one(template, "app:\n  doc: '{\"present\": 1}'\n");

        out.assert_code(1)
            .assert_stderr_contains("t.tera")
            .assert_stderr_contains(line)
            .assert_stderr_contains(key);
        assert!(!dir.exists("out/t.conf"), "{template:?} wrote its output");
    }
}

#[test]
fn the_global_prefix_is_joined_with_the_resource_prefix() {
    let dir = ConfDir::new();
    dir.file("data.yaml", "site:\n  myapp:\n    name: joined\n")
        .template("t.tera", r#"{{ getv(key="/name") }}"#)
        .resource(
            "t",
            &format!(
                "[template]\nsrc = \"t.tera\"\ndest = {:?}\nprefix = \"/myapp\"\nkeys = [\"/name\"]\n",
                dir.dest("out/t.conf")
            ),
        );
    let data = dir.path().join("data.yaml");

    let out = run(&[
        "--confdir",
        dir.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--prefix",
        "/site",
        "--onetime",
    ]);

    out.assert_success();
    assert_eq!(dir.read("out/t.conf"), "joined");
}

/// One worked example of docs/migrating-from-confd.md: an optional
/// resource (TOML), a template, and what it renders or a piece of the
/// error it fails with.
struct GuideExample {
    name: String,
    fails: bool,
    resource: Option<String>,
    template: String,
    expected: String,
}

/// The fenced code blocks after `<!-- example: NAME -->` (or
/// `example-error`), and the data after `<!-- example-data -->`.
fn guide_examples() -> (String, Vec<GuideExample>) {
    let guide = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/migrating-from-confd.md"),
    )
    .unwrap();
    // Each fenced block: (language, text), in order, after each marker.
    let blocks_after = |at: usize| -> Vec<(String, String)> {
        let mut blocks = Vec::new();
        let mut rest = &guide[at..];
        while let Some(open) = rest.find("```") {
            // Stop at the next marker: its blocks are not ours.
            if rest[..open].contains("\n<!-- example") && !blocks.is_empty() {
                break;
            }
            let after = &rest[open + 3..];
            let (lang, body) = after.split_once('\n').unwrap();
            let close = body.find("\n```").unwrap();
            blocks.push((lang.to_string(), body[..close + 1].to_string()));
            rest = &body[close + 4..];
            if blocks.len() == 3 {
                break;
            }
        }
        blocks
    };
    let data_at = guide.find("\n<!-- example-data -->").unwrap();
    let data = blocks_after(data_at).remove(0).1;
    let mut examples = Vec::new();
    // Markers stand on a line of their own (the guide also mentions them).
    for (at, _) in guide.match_indices("\n<!-- example") {
        let at = at + 1;
        let marker = &guide[at..at + guide[at..].find("-->").unwrap()];
        let (fails, name) = if let Some(name) = marker.strip_prefix("<!-- example-error: ") {
            (true, name)
        } else if let Some(name) = marker.strip_prefix("<!-- example: ") {
            (false, name)
        } else {
            continue;
        };
        let mut blocks = blocks_after(at);
        let resource = (blocks[0].0 == "toml").then(|| blocks.remove(0).1);
        examples.push(GuideExample {
            name: name.trim().to_string(),
            fails,
            resource,
            template: blocks[0].1.clone(),
            expected: blocks[1].1.clone(),
        });
    }
    (data, examples)
}

#[test]
fn the_guide_s_worked_examples_render_as_it_says() {
    let (data, examples) = guide_examples();
    assert!(examples.len() >= 15, "found {} examples", examples.len());
    for example in examples {
        let dir = ConfDir::new();
        dir.dest("out/t.conf");
        let resource = example.resource.clone().unwrap_or_else(|| {
            "[template]\nsrc = \"t.tera\"\ndest = \"out/t.conf\"\nkeys = [\"/app\"]\nallow_env = true\n"
                .to_string()
        });
        dir.file("data.yaml", &data)
            .template("t.tera", &example.template)
            .resource("t", &resource);
        let mut cmd = confera();
        cmd.env("NODENAME", "node-a")
            .env("EMPTY", "")
            .args(["--confdir", dir.arg(), "--backend", "file", "--file"])
            .arg(dir.path().join("data.yaml"))
            .args(["--onetime", "--sync-only"]);

        let out = run_cmd(cmd);

        if example.fails {
            assert_ne!(out.code, 0, "example {}: {out}", example.name);
            assert!(
                out.stderr.contains(example.expected.trim_end()),
                "example {}: stderr lacks {:?}\n{out}",
                example.name,
                example.expected.trim_end()
            );
            assert!(!dir.exists("out/t.conf") || dir.read("out/t.conf").is_empty());
        } else {
            assert_eq!(out.code, 0, "example {}: {out}", example.name);
            assert_eq!(
                dir.read("out/t.conf"),
                example.expected,
                "example {}",
                example.name
            );
        }
    }
}

#[test]
fn template_errors_name_the_variable_the_confd_syntax_and_the_open_block() {
    let cases = [
        (
            "first\n{{ nme | bird_ident }}\n",
            1,
            "render t.tera line 2: `nme` is not defined (a filter expected a BIRD symbol name as a string or an integer here)",
        ),
        (
            "{{getv \"/app/name\"}}\n",
            2,
            "template t.tera line 1: Found string but expected }}.; `{{getv \"/app/name\"}}` is confd (Go template) syntax; in Tera, write `{{ getv(key=\"/app/name\") }}`",
        ),
        (
            "{{range getvs \"/app/*\"}}x{{end}}\n",
            2,
            "is confd (Go template) syntax; in Tera, loops are `{% for v in getvs(pattern=\"/p/*\") %}...{% endfor %}`",
        ),
        (
            "{% for x in ls(path=\"/app\") %}\n{{ x }}\n",
            2,
            "template t.tera line 3: Unexpected end of input: `{% for x in ls(path=\"/app\") %}` on line 1 is never closed: add `{% endfor %}`",
        ),
    ];
    for (template, code, fragment) in cases {
        let (dir, out) = render_one(template, "app:\n  name: web\n");

        out.assert_code(code).assert_stderr_contains(fragment);
        assert!(!dir.exists("out/t.conf"), "{template:?} wrote its output");
    }
}
