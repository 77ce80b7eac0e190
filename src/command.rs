//! Running check and reload commands: placeholder expansion, `sh -c` in a
//! process group of its own, bounded output capture and a hard timeout.
//!
//! This module never decides what a command means (check or reload): callers
//! add that context. It never leaves a timed-out process group running.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How much of each output stream `run` keeps: the last 16 KiB.
pub const TAIL_LIMIT: usize = 16 * 1024;

/// How long `run` keeps reading after the shell exits, for output still in
/// flight. A process the command left behind that holds the pipes open (a
/// daemon started by a reload script) must not hold `run` up longer.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// How long `run` waits to reap the shell after killing its process group.
const REAP_GRACE: Duration = Duration::from_secs(1);

/// What a command that exited with status 0 printed.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    /// The last [`TAIL_LIMIT`] bytes of stdout, decoded lossily.
    pub stdout_tail: String,
    /// The last [`TAIL_LIMIT`] bytes of stderr, decoded lossily.
    pub stderr_tail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start `sh` to run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// `status` reads "exit status 1" or "killed by signal 9".
    #[error("`{command}` {}{}", status_phrase(status), stderr_suffix(stderr))]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` timed out after {timeout:?} and was killed with its process group")]
    TimedOut { command: String, timeout: Duration },
}

fn status_phrase(status: &str) -> String {
    if let Some(code) = status.strip_prefix("exit status ") {
        format!("exited with status {code}")
    } else if let Some(signal) = status.strip_prefix("killed by signal ") {
        format!("was killed by signal {signal}")
    } else {
        format!("failed ({status})")
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Expands `{{src}}`, `{{ src }}`, `{{.src}}`, `{{ .src }}` (confd's form) and
/// the same for `dest` in a command template; substituted paths are
/// shell-quoted only when they need it. Any other `{{…}}` is left as it is.
///
/// Placeholders are expected outside shell quotes: `check '{{src}}'` breaks
/// for a path that itself needs quoting.
pub fn expand(template: &str, src: &Path, dest: &Path) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = after_open[..close].trim();
        let path = match inner.strip_prefix('.').unwrap_or(inner) {
            "src" => Some(src),
            "dest" => Some(dest),
            _ => None,
        };
        match path {
            Some(path) => out.push_str(&shell_quote(&path.to_string_lossy())),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after_open[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Quotes `word` for POSIX sh, leaving it bare when every byte is safe.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `sh -c command` in its own process group with stdin from /dev/null.
///
/// Stdout and stderr are drained concurrently (a command printing megabytes
/// never blocks); only the last [`TAIL_LIMIT`] bytes of each are kept. On
/// timeout the whole process group gets SIGKILL, the shell is reaped and the
/// pipes are abandoned, so grandchildren holding them cannot delay the return.
/// After the shell exits, output still in flight is read for a short grace
/// period; processes the command left running are not waited for.
///
/// A non-zero exit is an error that carries the exit status and the stderr tail.
pub async fn run(command: &str, timeout: Duration) -> Result<CommandOutput, CommandError> {
    let mut command_line = Command::new("sh");
    command_line
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // systemd's notify socket is confera's: a child must not report for it.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .process_group(0)
        .kill_on_drop(true);
    // Registered, so that as PID 1 confera's reaper never takes its status;
    // the registration is declared first so that it ends after the child.
    let (child, waited) =
        crate::exec::reaper::spawn(&mut command_line).map_err(|source| CommandError::Spawn {
            command: command.to_owned(),
            source,
        })?;
    let _waited = waited;
    let mut child = child;
    // A run cut short (its future dropped at shutdown) kills the whole
    // group, not only the shell that kill_on_drop reaches.
    let mut group = GroupGuard(child.id());
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    // A timeout too large to represent means "no timeout", not a panic.
    let now = Instant::now();
    let deadline = now
        .checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30));

    let mut out = Tail::default();
    let mut err = Tail::default();
    let status = {
        let drain = async { tokio::join!(out.drain(stdout), err.drain(stderr)) };
        tokio::pin!(drain);
        let mut drained = false;
        let waited = loop {
            tokio::select! {
                biased;
                waited = child.wait() => break waited,
                _ = &mut drain, if !drained => drained = true,
                _ = tokio::time::sleep_until(deadline) => {
                    kill_group(&mut child).await;
                    group.0 = None;
                    return Err(CommandError::TimedOut { command: command.to_owned(), timeout });
                }
            }
        };
        // The shell exited: what it left running (a daemon a reload script
        // started) is not ours to kill.
        group.0 = None;
        if !drained {
            let _ = tokio::time::timeout(PIPE_GRACE, &mut drain).await;
        }
        // Waiting on a child we spawned only fails if something else reaped it.
        waited.map_err(|source| CommandError::Spawn {
            command: command.to_owned(),
            source,
        })?
    };

    let stderr_tail = err.into_string();
    if !status.success() {
        return Err(CommandError::Failed {
            command: command.to_owned(),
            status: describe_status(status),
            stderr: stderr_tail.trim().to_owned(),
        });
    }
    Ok(CommandOutput {
        status,
        stdout_tail: out.into_string(),
        stderr_tail,
    })
}

/// SIGKILLs a command's process group when dropped while armed. Declared
/// after the child, so it runs while the unreaped shell still holds its pid
/// (and so the group id) and no other process can have taken it.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            let _ = killpg(Pid::from_raw(id as i32), Signal::SIGKILL);
        }
    }
}

/// SIGKILLs the child's whole process group, then reaps the child.
async fn kill_group(child: &mut Child) {
    if let Some(id) = child.id() {
        // The child leads its own group (process_group(0)), so its pid is the
        // group id. ESRCH only means the group is already gone.
        let _ = killpg(Pid::from_raw(id as i32), Signal::SIGKILL);
    }
    // If the shell cannot be reaped in time (stuck in the kernel), tokio's
    // orphan reaper collects it once `child` is dropped.
    let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
}

/// "exit status 1" or "killed by signal 9".
fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The last [`TAIL_LIMIT`] bytes of a stream.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    async fn drain(&mut self, mut reader: impl AsyncRead + Unpin) {
        let mut chunk = vec![0; 16 * 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => self.push(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        // Trim only past twice the limit, so trimming is amortised O(1).
        if self.buf.len() > 2 * TAIL_LIMIT {
            self.buf.drain(..self.buf.len() - TAIL_LIMIT);
        }
    }

    fn into_string(self) -> String {
        let mut tail = &self.buf[self.buf.len().saturating_sub(TAIL_LIMIT)..];
        if tail.len() < self.buf.len() {
            // The cut may have split a UTF-8 sequence: skip its continuation bytes.
            let partial = tail
                .iter()
                .take(3)
                .take_while(|&&b| b & 0xC0 == 0x80)
                .count();
            tail = &tail[partial..];
        }
        String::from_utf8_lossy(tail).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Instant as StdInstant;

    fn expand_with(template: &str) -> String {
        expand(
            template,
            Path::new("/etc/bird/.bird.conf.stage"),
            Path::new("/etc/bird/bird.conf"),
        )
    }

    #[test]
    fn expand_replaces_every_placeholder_spelling() {
        for spelling in ["{{src}}", "{{ src }}", "{{.src}}", "{{ .src }}"] {
            assert_eq!(
                expand_with(&format!("bird -p -c {spelling}")),
                "bird -p -c /etc/bird/.bird.conf.stage",
                "{spelling}"
            );
        }
        for spelling in ["{{dest}}", "{{ dest }}", "{{.dest}}", "{{ .dest }}"] {
            assert_eq!(
                expand_with(&format!("cp {spelling} /backup")),
                "cp /etc/bird/bird.conf /backup",
                "{spelling}"
            );
        }
    }

    #[test]
    fn expand_replaces_several_placeholders_in_one_template() {
        assert_eq!(
            expand_with("diff {{src}} {{ .dest }} && echo {{.src}}"),
            "diff /etc/bird/.bird.conf.stage /etc/bird/bird.conf && echo /etc/bird/.bird.conf.stage"
        );
    }

    #[test]
    fn expand_quotes_paths_with_spaces_and_quotes() {
        let src = Path::new("/srv/my dir/it's.conf");
        let dest = Path::new("/srv/$HOME/`x`.conf");
        assert_eq!(
            expand("check {{src}} {{dest}}", src, dest),
            r"check '/srv/my dir/it'\''s.conf' '/srv/$HOME/`x`.conf'"
        );
    }

    #[tokio::test]
    async fn expand_quoting_survives_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a b'c\"$d.conf");
        std::fs::write(&src, "ok\n").unwrap();
        let output = run(&expand("cat {{src}}", &src, &src), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(output.stdout_tail, "ok\n");
    }

    #[test]
    fn expand_leaves_other_text_untouched() {
        for text in [
            "birdc configure",
            "echo {{other}} {{ .Src }} {src} {{src",
            "awk '{print $1}' }} {{",
            "",
        ] {
            assert_eq!(expand_with(text), text);
        }
    }

    #[tokio::test]
    async fn run_captures_stdout_and_stderr_of_a_successful_command() {
        let output = run("echo out; echo err >&2", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(output.status.success());
        assert_eq!(output.stdout_tail, "out\n");
        assert_eq!(output.stderr_tail, "err\n");
    }

    #[tokio::test]
    async fn run_gives_stdin_from_dev_null() {
        let output = run("cat; echo done", Duration::from_secs(2)).await.unwrap();
        assert_eq!(output.stdout_tail, "done\n");
    }

    #[tokio::test]
    async fn run_reports_a_non_zero_exit_with_its_status_and_stderr_tail() {
        let err = run(
            "echo noise; echo 'syntax error' >&2; exit 3",
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        let CommandError::Failed { status, stderr, .. } = &err else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(status, "exit status 3");
        assert_eq!(stderr, "syntax error");
        assert_eq!(
            err.to_string(),
            "`echo noise; echo 'syntax error' >&2; exit 3` exited with status 3: syntax error"
        );
    }

    #[tokio::test]
    async fn run_reports_a_command_killed_by_a_signal() {
        let err = run("kill -9 $$", Duration::from_secs(2)).await.unwrap_err();
        let CommandError::Failed { status, .. } = &err else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(status, "killed by signal 9");
        assert_eq!(err.to_string(), "`kill -9 $$` was killed by signal 9");
    }

    #[tokio::test]
    async fn run_drains_megabytes_of_output_quickly_and_keeps_only_the_tail() {
        let started = StdInstant::now();
        let output = run(
            "yes | head -c 20000000; echo the-end; head -c 100000 /dev/zero | tr '\\0' e >&2",
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(output.stdout_tail.len(), TAIL_LIMIT);
        assert!(output.stdout_tail.ends_with("y\ny\nthe-end\n"));
        assert_eq!(output.stderr_tail, "e".repeat(TAIL_LIMIT));
    }

    #[test]
    fn tail_never_starts_inside_a_utf8_sequence() {
        let mut tail = Tail::default();
        tail.push(&"é".repeat(TAIL_LIMIT).into_bytes());
        let text = tail.into_string();
        assert!(text.chars().all(|c| c == 'é'), "no replacement characters");
        assert!(text.len() >= TAIL_LIMIT - 1);
    }

    /// True once `pid` has exited (a zombie counts: nothing of it runs).
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
                matches!(state, Some("Z" | "X"))
            }
        }
    }

    fn wait_dead(pid: i32) -> bool {
        let deadline = StdInstant::now() + Duration::from_secs(1);
        while StdInstant::now() < deadline {
            if is_dead(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn read_pids(path: &PathBuf) -> Vec<i32> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| line.parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn run_kills_the_whole_process_group_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // The first sleep is a backgrounded grandchild that also holds the pipes.
        let command = format!(
            "sleep 1000 & echo $! >> {p}; sh -c 'echo $$ >> {p}; exec sleep 1000'",
            p = pids.display()
        );
        let started = StdInstant::now();
        let err = run(&command, Duration::from_millis(300)).await.unwrap_err();
        let elapsed = started.elapsed();

        assert!(
            matches!(err, CommandError::TimedOut { timeout, .. } if timeout == Duration::from_millis(300)),
            "{err:?}"
        );
        assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
        let pids = read_pids(&pids);
        assert_eq!(pids.len(), 2, "both sleeps started");
        for pid in pids {
            assert!(wait_dead(pid), "sleep {pid} is still running");
        }
    }

    #[tokio::test]
    async fn run_times_out_promptly_when_a_grandchild_keeps_the_pipes_open() {
        let started = StdInstant::now();
        let err = run("sleep 1000 & sleep 1000", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert_eq!(
            err.to_string(),
            "`sleep 1000 & sleep 1000` timed out after 300ms and was killed with its process group"
        );
    }

    #[tokio::test]
    async fn run_returns_soon_after_the_shell_exits_even_if_a_leftover_holds_the_pipes() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let command = format!("sleep 1000 & echo $! >> {}; echo started", pids.display());
        let started = StdInstant::now();
        let output = run(&command, Duration::from_secs(5)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(output.stdout_tail, "started\n");
        for pid in read_pids(&pids) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    #[tokio::test]
    async fn a_run_cut_short_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let command = format!(
            "sleep 1000 & echo $! >> {p}; echo $$ >> {p}; sleep 1000",
            p = pids.display()
        );
        let run = tokio::spawn(async move { run(&command, Duration::from_secs(100)).await });
        let deadline = StdInstant::now() + Duration::from_secs(5);
        while read_pids(&pids).len() < 2 && StdInstant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        run.abort();
        let _ = run.await;
        let pids = read_pids(&pids);
        assert_eq!(pids.len(), 2, "both started");
        for pid in pids {
            assert!(wait_dead(pid), "{pid} is still running");
        }
    }

    #[tokio::test]
    async fn run_reports_a_missing_program_as_exit_status_127() {
        let err = run("confera-no-such-program-xyz", Duration::from_secs(2))
            .await
            .unwrap_err();
        let CommandError::Failed { status, stderr, .. } = &err else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(status, "exit status 127");
        assert!(stderr.contains("not found"), "{stderr}");
    }
}
