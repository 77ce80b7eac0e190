//! confd's command line: its single-dash long flags (`-onetime`, `-backend
//! etcdv3`, `-log-level=warning`), rewritten into confera's `--flags` before
//! clap parses, so a systemd unit or a runit script can swap the binary name
//! and nothing else. Only confd's own flag names are touched: never a short
//! flag (`-h`, `-V`), never a value, nothing after `--`.

use std::ffi::{OsStr, OsString};

use clap::CommandFactory;

use super::Cli;

/// What becomes of one of confd's flags.
enum Confd {
    /// confera has it under this long name; it takes no value.
    Switch(&'static str),
    /// confera has it under this long name; it takes a value.
    Value(&'static str),
    /// It takes no value and means nothing more to confera.
    IgnoredSwitch,
    /// It takes a value, which must be one of these, and then means nothing
    /// more to confera.
    IgnoredValue(&'static [&'static str]),
    /// confera does not support it: refused with this explanation.
    Unsupported(&'static str),
}

/// confd 0.16's flags, by name.
fn lookup(name: &str) -> Option<Confd> {
    use Confd::*;
    Some(match name {
        "backend" => Value("backend"),
        "client-ca-keys" => Value("client-ca-keys"),
        "client-cert" => Value("client-cert"),
        "client-key" => Value("client-key"),
        "confdir" => Value("confdir"),
        "config-file" => Value("config-file"),
        "file" => Value("file"),
        "interval" => Value("interval"),
        "keep-stage-file" => Switch("keep-stage-file"),
        "log-level" => Value("log-level"),
        "node" => Value("node"),
        "noop" => Switch("noop"),
        "onetime" => Switch("onetime"),
        "password" => Value("password"),
        "prefix" => Value("prefix"),
        "sync-only" => Switch("sync-only"),
        "username" => Value("username"),
        "version" => Switch("version"),
        "watch" => Switch("watch"),
        "help" => Switch("help"),
        // confd's etcd clients sent username and password only with it;
        // confera sends them whenever they are given.
        "basic-auth" => IgnoredSwitch,
        // confd applied it only to nodes found by DNS SRV, which confera
        // does not look up.
        "scheme" => IgnoredValue(&["http", "https"]),
        "client-insecure" => Unsupported(
            "confera always verifies etcd's certificate: give the CA with --client-ca-keys",
        ),
        "srv-domain" | "srv-record" => Unsupported(
            "confera does not look etcd up in DNS SRV records: list the endpoints with --node",
        ),
        "auth-token" | "auth-type" | "app-id" | "user-id" | "role-id" | "secret-id" | "path" => {
            Unsupported(
                "it belongs to confd's Vault and consul backends, which confera does not have",
            )
        }
        "table" => {
            Unsupported("it belongs to confd's DynamoDB backend, which confera does not have")
        }
        "separator" => {
            Unsupported("it belongs to confd's Redis backend, which confera does not have")
        }
        "filter" => Unsupported(
            "confera reads the data files named with --file, not a directory filtered by a glob",
        ),
        "secret-keyring" => Unsupported(
            "confera decrypts nothing: mark secret values with secret_keys in the resource instead",
        ),
        _ => return None,
    })
}

/// Rewrites confd's spellings in `args` (the program name first) into
/// confera's: `-onetime` → `--onetime`, `-backend etcdv3` →
/// `--backend=etcdv3`, `-noop=false` → nothing. An argument that is not one
/// of confd's flag names passes unchanged, and so does the value after a
/// confera `--flag` that takes one. A confd flag confera does not support is
/// an error naming it and saying why.
pub fn translate(args: impl IntoIterator<Item = OsString>) -> Result<Vec<OsString>, String> {
    let takes_value = confera_flags_with_values();
    let mut args = args.into_iter();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(args);
            break;
        }
        let (body, single_dash) = match text.strip_prefix("--") {
            Some(body) => (body, false),
            None => match text.strip_prefix('-') {
                Some(body) if !body.is_empty() => (body, true),
                _ => {
                    out.push(arg);
                    continue;
                }
            },
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        if !single_dash && takes_value.iter().any(|f| f == name) {
            // confera's own `--flag VALUE`: the next argument is a value,
            // whatever it looks like.
            out.push(arg.clone());
            if inline.is_none() {
                out.extend(args.next());
            }
            continue;
        }
        let dashes = if single_dash { "-" } else { "--" };
        match lookup(name) {
            Some(Confd::Switch(long)) => match inline.map(go_bool).transpose() {
                Ok(None | Some(true)) => out.push(format!("--{long}").into()),
                Ok(Some(false)) => {}
                Err(()) => {
                    return Err(format!(
                        "{dashes}{name}={} : {dashes}{name} is true or false",
                        inline.unwrap_or_default()
                    ))
                }
            },
            // `--file x` is confera's own form and was passed on above.
            Some(Confd::Value(long)) => {
                let value = value_of(&arg, inline, &mut args, dashes, name)?;
                let mut flag = OsString::from(format!("--{long}="));
                flag.push(value);
                out.push(flag);
            }
            Some(Confd::IgnoredSwitch) => {
                if inline.is_some_and(|v| go_bool(v).is_err()) {
                    return Err(format!("{dashes}{name} is true or false"));
                }
            }
            Some(Confd::IgnoredValue(allowed)) => {
                let value = value_of(&arg, inline, &mut args, dashes, name)?;
                if !allowed.iter().any(|a| OsStr::new(a) == value) {
                    return Err(format!(
                        "{dashes}{name} {}: use one of {}",
                        value.to_string_lossy(),
                        allowed.join(", ")
                    ));
                }
            }
            Some(Confd::Unsupported(why)) => {
                return Err(format!(
                    "confd's {dashes}{name} is not supported by confera: {why}"
                ))
            }
            // A short flag (-h, -V), a cluster of them, or confera's own
            // --flag: clap decides.
            None => out.push(arg),
        }
    }
    Ok(out)
}

/// The value of a flag given as `-name=value` or `-name value`.
fn value_of(
    arg: &OsStr,
    inline: Option<&str>,
    rest: &mut impl Iterator<Item = OsString>,
    dashes: &str,
    name: &str,
) -> Result<OsString, String> {
    match inline {
        Some(value) => Ok(value.into()),
        None => rest.next().ok_or_else(|| {
            format!(
                "{} needs a value: {dashes}{name} VALUE",
                arg.to_string_lossy()
            )
        }),
    }
}

/// Go's `strconv.ParseBool`, which confd's boolean flags use.
fn go_bool(text: &str) -> Result<bool, ()> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(()),
    }
}

/// confera's long flags that take a value (`prefix`, `node`, ...).
fn confera_flags_with_values() -> Vec<String> {
    Cli::command()
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(args: &[&str]) -> Result<Vec<String>, String> {
        let args = std::iter::once("confera").chain(args.iter().copied());
        translate(args.map(OsString::from)).map(|out| {
            out.into_iter()
                .skip(1)
                .map(|a| a.into_string().unwrap())
                .collect()
        })
    }

    #[test]
    fn confd_single_dash_flags_become_confera_flags() {
        assert_eq!(
            tr(&[
                "-onetime",
                "-backend",
                "etcdv3",
                "-node",
                "http://10.0.0.1:2379",
                "-node=http://10.0.0.2:2379",
                "-confdir",
                "/etc/confd",
                "-prefix",
                "/production",
                "-interval",
                "60",
                "-log-level=warning",
                "-noop",
                "-sync-only",
                "-keep-stage-file",
                "-config-file",
                "/etc/confd/confd.toml",
            ])
            .unwrap(),
            [
                "--onetime",
                "--backend=etcdv3",
                "--node=http://10.0.0.1:2379",
                "--node=http://10.0.0.2:2379",
                "--confdir=/etc/confd",
                "--prefix=/production",
                "--interval=60",
                "--log-level=warning",
                "--noop",
                "--sync-only",
                "--keep-stage-file",
                "--config-file=/etc/confd/confd.toml",
            ]
        );
        assert_eq!(
            tr(&[
                "-watch",
                "-file",
                "a.yaml",
                "-username",
                "u",
                "-password",
                "p"
            ])
            .unwrap(),
            ["--watch", "--file=a.yaml", "--username=u", "--password=p"]
        );
        assert_eq!(tr(&["-version"]).unwrap(), ["--version"]);
    }

    #[test]
    fn values_are_never_translated() {
        // As in Go's flag package, the argument after a flag that takes a
        // value is that value, even when it looks like a flag.
        assert_eq!(tr(&["-prefix", "-watch"]).unwrap(), ["--prefix=-watch"]);
        // The value of confera's own --flag passes as it is.
        assert_eq!(
            tr(&["--prefix", "-watch", "--node", "-onetime"]).unwrap(),
            ["--prefix", "-watch", "--node", "-onetime"]
        );
        assert_eq!(tr(&["--prefix=-noop"]).unwrap(), ["--prefix=-noop"]);
        // Positional values and values of a subcommand stay too.
        assert_eq!(
            tr(&["completions", "bash"]).unwrap(),
            ["completions", "bash"]
        );
    }

    #[test]
    fn short_flags_clusters_and_unknown_names_are_left_to_clap() {
        for args in [
            &["-h"][..],
            &["-V"],
            &["-hV"],
            &["-0"],
            &["-diff"],
            &["-x", "y"],
            &["-"],
        ] {
            assert_eq!(tr(args).unwrap(), args, "{args:?}");
        }
    }

    #[test]
    fn nothing_after_a_double_dash_is_translated() {
        assert_eq!(
            tr(&["--", "-onetime", "-node", "x"]).unwrap(),
            ["--", "-onetime", "-node", "x"]
        );
    }

    #[test]
    fn go_style_boolean_values_set_or_drop_a_switch() {
        assert_eq!(
            tr(&["-onetime=true", "-noop=false", "--watch=1", "-sync-only=F"]).unwrap(),
            ["--onetime", "--watch"]
        );
        let e = tr(&["-noop=maybe"]).unwrap_err();
        assert!(e.contains("-noop"), "{e}");
    }

    #[test]
    fn confd_flags_confera_does_not_need_are_dropped_after_checking_them() {
        assert_eq!(
            tr(&["-basic-auth", "-scheme", "https", "-onetime"]).unwrap(),
            ["--onetime"]
        );
        let e = tr(&["-scheme", "ftp"]).unwrap_err();
        assert!(
            e.contains("-scheme ftp") && e.contains("http, https"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_confd_flags_are_refused_naming_the_flag_and_why() {
        let e = tr(&["-onetime", "-srv-domain", "example.com"]).unwrap_err();
        assert!(e.contains("confd's -srv-domain is not supported"), "{e}");
        assert!(e.contains("--node"), "{e}");
        let e = tr(&["--client-insecure"]).unwrap_err();
        assert!(
            e.contains("--client-insecure") && e.contains("--client-ca-keys"),
            "{e}"
        );
        let e = tr(&["-auth-token=x"]).unwrap_err();
        assert!(e.contains("Vault"), "{e}");
    }

    #[test]
    fn a_value_flag_at_the_end_without_its_value_is_an_error() {
        let e = tr(&["-onetime", "-prefix"]).unwrap_err();
        assert!(e.contains("-prefix needs a value"), "{e}");
    }

    #[test]
    fn a_translated_command_line_parses() {
        let cli = super::super::parse_with_env(
            &[
                "-onetime",
                "-backend",
                "etcdv3",
                "-node",
                "127.0.0.1:2379",
                "-prefix",
                "/p",
                "-log-level",
                "warning",
                "-interval",
                "30",
            ],
            &[],
        )
        .unwrap();
        assert!(cli.mode.onetime);
        assert_eq!(cli.source.backend, Some(super::super::Backend::Etcdv3));
        assert_eq!(cli.source.node, ["127.0.0.1:2379"]);
        assert_eq!(cli.logging.log_level.as_deref(), Some("warn"));
        assert_eq!(cli.mode.interval, Some(30));
    }
}
