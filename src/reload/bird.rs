//! Client for BIRD's control socket protocol: one connection per command,
//! spoken directly over the unix socket (no `birdc`).
//!
//! This module only talks to the socket: it never reads or writes BIRD's
//! configuration files, never signals the daemon and never logs above `debug`;
//! callers decide what a reply means for their resource.
//!
//! The protocol, as BIRD 2.0.12 speaks it: on connect the server greets with
//! `0001 BIRD 2.0.12 ready.`; the client sends one command line ended by `\n`;
//! the reply is a run of lines, each either `DDDD-text` (more follows),
//! ` text` (continues the previous code) or `DDDD text` (the final line).
//! Codes below 8000 are success or information, 8xxx are runtime errors
//! (`8002` a configuration error, `8007` access denied) and 9xxx are errors
//! parsing the command itself.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The greeting's code: `0001 BIRD 2.0.12 ready.`
const GREETING: u16 = 1;
/// `8002 file:line:col message`: the configuration did not parse.
const CONFIG_ERROR: u16 = 8002;

/// Which `configure` command to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Configure {
    /// `configure`: re-read the file BIRD was started with (`-c`).
    Plain,
    /// `configure soft`: as `Plain`, but changed filters are not re-applied
    /// to routes already imported or exported.
    Soft,
    /// `configure "path"`: switch to another file. A relative path is
    /// resolved by BIRD against its own working directory, not ours.
    File(PathBuf),
    /// `configure check ["path"]`: parse only, change nothing.
    Check(Option<PathBuf>),
}

/// A complete reply: the code of its final line and the text of every line.
///
/// Lines with code `0000` (the empty terminator of table output such as
/// `show protocols`) carry no text and are left out, as `birdc` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// True for 8xxx and 9xxx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 8000
    }

    /// The text of the final line (for one-line answers, the whole answer).
    pub fn message(&self) -> &str {
        self.lines.last().map_or("", String::as_str)
    }
}

/// What a successful `configure` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `0003 Reconfigured`. BIRD 2.0.12 answers this even when the file did
    /// not change.
    Reconfigured,
    /// `0004 Reconfiguration in progress`: accepted; protocols are still
    /// shutting down or restarting (for example one with routes was removed).
    InProgress,
    /// `0005 Reconfiguration already in progress, queueing new config`:
    /// accepted; applied when the running reconfiguration finishes.
    Queued,
    /// `0019 Nothing to do` (answered to `configure confirm`/`undo`).
    NothingToDo,
    /// `0020 Configuration OK`, the answer to `configure check`.
    CheckOk,
}

impl Outcome {
    fn from_code(code: u16) -> Option<Outcome> {
        match code {
            3 => Some(Outcome::Reconfigured),
            4 => Some(Outcome::InProgress),
            5 => Some(Outcome::Queued),
            19 => Some(Outcome::NothingToDo),
            20 => Some(Outcome::CheckOk),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot connect to BIRD's control socket {}{}", socket.display(), connect_hint(source, socket))]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("i/o error on BIRD's control socket {}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("BIRD did not answer on {} within {after:?}", socket.display())]
    Timeout { socket: PathBuf, after: Duration },
    #[error("unexpected reply on BIRD's control socket {}: {detail}", socket.display())]
    Protocol { socket: PathBuf, detail: String },
    /// BIRD could not read the configuration; `message` is BIRD's text
    /// verbatim, usually `file:line:col message`.
    #[error("BIRD rejected the configuration ({}): {message}", socket.display())]
    Config {
        socket: PathBuf,
        code: u16,
        message: String,
    },
    /// Any other answer that is not success, for example `8007 Access
    /// denied`, `9001 syntax error` or `0006 Reconfiguration ignored, shutting
    /// down`.
    #[error("BIRD refused the command: {code:04} {message}")]
    Rejected { code: u16, message: String },
    #[error("cannot pass {} to BIRD: a file name for BIRD may contain neither '\"' nor a newline", path.display())]
    InvalidPath { path: PathBuf },
    #[error("a BIRD command must be a single line, got {line:?}")]
    InvalidCommand { line: String },
}

/// The known fix for a failed connect, as a `: ...` suffix, or nothing.
fn connect_hint(err: &io::Error, socket: &Path) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => format!(
            ": the socket does not exist; is BIRD running with -s {}?",
            socket.display()
        ),
        io::ErrorKind::ConnectionRefused => {
            ": connection refused; BIRD is not running (the socket file is stale)".to_owned()
        }
        io::ErrorKind::PermissionDenied => {
            ": permission denied; run as a user that may write the socket (BIRD's group)".to_owned()
        }
        // The cause follows in the error chain.
        _ => String::new(),
    }
}

/// Send a `configure` command and map BIRD's answer.
///
/// `timeout` bounds the whole exchange: connect, greeting, command and reply.
pub async fn configure(
    socket: &Path,
    what: &Configure,
    timeout: Duration,
) -> Result<Outcome, BirdError> {
    let line = configure_line(what)?;
    let reply = exchange(socket, &line, timeout).await?;
    outcome(socket, reply)
}

/// Send one command line and return BIRD's reply, whatever its code.
pub async fn command(socket: &Path, line: &str, timeout: Duration) -> Result<Reply, BirdError> {
    if line.contains(['\n', '\r']) {
        return Err(BirdError::InvalidCommand {
            line: line.to_owned(),
        });
    }
    exchange(socket, line.as_bytes(), timeout).await
}

/// The command bytes for `what`, file names quoted as BIRD's lexer expects:
/// it has no escapes inside `"..."`, so `"` and newlines cannot be passed.
fn configure_line(what: &Configure) -> Result<Vec<u8>, BirdError> {
    let (verb, path): (&[u8], _) = match what {
        Configure::Plain => (b"configure", None),
        Configure::Soft => (b"configure soft", None),
        Configure::File(path) => (b"configure", Some(path)),
        Configure::Check(path) => (b"configure check", path.as_ref()),
    };
    let mut line = verb.to_vec();
    if let Some(path) = path {
        let bytes = path.as_os_str().as_bytes();
        if bytes.iter().any(|b| matches!(b, b'"' | b'\n')) {
            return Err(BirdError::InvalidPath { path: path.clone() });
        }
        line.extend_from_slice(b" \"");
        line.extend_from_slice(bytes);
        line.push(b'"');
    }
    Ok(line)
}

fn outcome(socket: &Path, reply: Reply) -> Result<Outcome, BirdError> {
    if let Some(outcome) = Outcome::from_code(reply.code) {
        return Ok(outcome);
    }
    let message = reply.message().to_owned();
    if reply.code == CONFIG_ERROR {
        return Err(BirdError::Config {
            socket: socket.to_owned(),
            code: reply.code,
            message,
        });
    }
    Err(BirdError::Rejected {
        code: reply.code,
        message,
    })
}

async fn exchange(socket: &Path, line: &[u8], timeout: Duration) -> Result<Reply, BirdError> {
    let reply = tokio::time::timeout(timeout, talk(socket, line))
        .await
        .map_err(|_| BirdError::Timeout {
            socket: socket.to_owned(),
            after: timeout,
        })??;
    tracing::debug!(
        socket = %socket.display(),
        command = %String::from_utf8_lossy(line),
        code = reply.code,
        "bird replied"
    );
    Ok(reply)
}

async fn talk(socket: &Path, line: &[u8]) -> Result<Reply, BirdError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| BirdError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    let io_err = |source| BirdError::Io {
        socket: socket.to_owned(),
        source,
    };
    let protocol = |detail: String| BirdError::Protocol {
        socket: socket.to_owned(),
        detail,
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);

    let greeting = read_reply(&mut read)
        .await
        .map_err(io_err)?
        .ok_or_else(|| protocol("connection closed before the greeting".to_owned()))?;
    let greeting = parse_reply(&greeting).map_err(|e| protocol(e.to_string()))?;
    if greeting.code != GREETING {
        return Err(protocol(format!(
            "expected the greeting 0001, got {:04} {}",
            greeting.code,
            greeting.message()
        )));
    }

    let mut request = line.to_vec();
    request.push(b'\n');
    write.write_all(&request).await.map_err(io_err)?;

    let lines = read_reply(&mut read)
        .await
        .map_err(io_err)?
        .ok_or_else(|| {
            protocol("connection closed before the final line of the reply".to_owned())
        })?;
    parse_reply(&lines).map_err(|e| protocol(e.to_string()))
}

/// Read lines up to and including the final `DDDD text` line (or the first
/// malformed one). `None` when the connection closes first.
async fn read_reply<R>(read: &mut R) -> io::Result<Option<Vec<String>>>
where
    R: AsyncBufReadExt + Unpin,
{
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if read.read_until(b'\n', &mut buf).await? == 0 || buf.last() != Some(&b'\n') {
            return Ok(None);
        }
        buf.pop();
        // Descriptions and interface names are bytes to BIRD; keep going.
        let line = String::from_utf8_lossy(&buf).into_owned();
        // A malformed line ends the read too: parse_reply reports it.
        let end = matches!(
            classify(&line),
            Ok(Line::Coded { last: true, .. }) | Err(())
        );
        lines.push(line);
        if end {
            return Ok(Some(lines));
        }
    }
}

/// A reply that does not follow BIRD's framing (`index` counts from 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedReply {
    #[error("empty reply")]
    Empty,
    #[error("line {} is neither `DDDD-text`, `DDDD text` nor ` text`: {line:?}", .index + 1)]
    BadLine { index: usize, line: String },
    #[error("the reply starts with a continuation line: {line:?}")]
    LeadingContinuation { line: String },
    #[error("line {} ends the reply but more lines follow", .index + 1)]
    EarlyEnd { index: usize },
    #[error("the reply has no final `DDDD text` line")]
    Unterminated,
}

/// One line of a reply, as framed by BIRD.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// `DDDD-text` (`last: false`) or `DDDD text` (`last: true`).
    Coded {
        code: u16,
        last: bool,
        text: &'a str,
    },
    /// ` text`: more text for the previous code.
    Continuation(&'a str),
    /// `+text`: an asynchronous message (log echo), not part of any reply.
    Async,
}

fn classify(line: &str) -> Result<Line<'_>, ()> {
    if let Some(text) = line.strip_prefix(' ') {
        return Ok(Line::Continuation(text));
    }
    if line.starts_with('+') {
        return Ok(Line::Async);
    }
    let bytes = line.as_bytes();
    if bytes.len() < 5 || !bytes[..4].iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    let last = match bytes[4] {
        b' ' => true,
        b'-' => false,
        _ => return Err(()),
    };
    let code = line[..4].parse().map_err(|_| ())?;
    Ok(Line::Coded {
        code,
        last,
        text: &line[5..],
    })
}

/// Parse the lines of one complete reply (without their `\n`), the last of
/// which must be the final `DDDD text` line. Asynchronous `+` lines are
/// skipped; lines with code `0000` contribute no text.
pub fn parse_reply<S: AsRef<str>>(lines: &[S]) -> Result<Reply, MalformedReply> {
    let mut texts = Vec::new();
    let mut code = None;
    let mut coded_seen = false;
    for (index, line) in lines.iter().enumerate() {
        let line = line.as_ref();
        if code.is_some() {
            return Err(MalformedReply::EarlyEnd { index: index - 1 });
        }
        match classify(line) {
            Ok(Line::Coded {
                code: c,
                last,
                text,
            }) => {
                coded_seen = true;
                if c != 0 {
                    texts.push(text.to_owned());
                }
                if last {
                    code = Some(c);
                }
            }
            Ok(Line::Continuation(text)) => {
                if !coded_seen {
                    return Err(MalformedReply::LeadingContinuation {
                        line: line.to_owned(),
                    });
                }
                texts.push(text.to_owned());
            }
            Ok(Line::Async) => {}
            Err(()) => {
                return Err(MalformedReply::BadLine {
                    index,
                    line: line.to_owned(),
                })
            }
        }
    }
    match code {
        Some(code) => Ok(Reply { code, lines: texts }),
        None if lines.is_empty() => Err(MalformedReply::Empty),
        None => Err(MalformedReply::Unterminated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(transcript: &str) -> Vec<&str> {
        transcript.lines().collect()
    }

    // Transcripts captured from BIRD 2.0.12.

    #[test]
    fn greeting_is_a_one_line_reply() {
        let reply = parse_reply(&["0001 BIRD 2.0.12 ready."]).unwrap();
        assert_eq!(reply.code, 1);
        assert_eq!(reply.lines, ["BIRD 2.0.12 ready."]);
    }

    #[test]
    fn configure_reply_keeps_the_reading_line() {
        let reply = parse_reply(&lines(
            "0002-Reading configuration from /tmp/bx/bird.conf\n0003 Reconfigured\n",
        ))
        .unwrap();
        assert_eq!(reply.code, 3);
        assert_eq!(
            reply.lines,
            [
                "Reading configuration from /tmp/bx/bird.conf",
                "Reconfigured"
            ]
        );
        assert_eq!(reply.message(), "Reconfigured");
        assert!(!reply.is_error());
    }

    #[test]
    fn continuation_lines_belong_to_the_reply() {
        let reply = parse_reply(&lines(
            "1000-BIRD 2.0.12\n1011-Router ID is 10.0.0.1\n Hostname is vm\n \
             Current server time is 2026-11-26 04:26:52.822\n0013 Daemon is up and running\n",
        ))
        .unwrap();
        assert_eq!(reply.code, 13);
        assert_eq!(
            reply.lines,
            [
                "BIRD 2.0.12",
                "Router ID is 10.0.0.1",
                "Hostname is vm",
                "Current server time is 2026-11-26 04:26:52.822",
                "Daemon is up and running",
            ]
        );
    }

    #[test]
    fn table_output_ends_with_an_empty_0000_line() {
        let reply = parse_reply(&lines(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-device1    Device     ---        up     04:26:49.490  \n\
             \x20s1         Static     master4    up     04:27:18.810  \n\
             1006-\n\
             0000 \n",
        ))
        .unwrap();
        assert_eq!(reply.code, 0);
        assert_eq!(reply.lines.len(), 4);
        assert!(reply.lines[2].starts_with("s1 "));
        assert_eq!(reply.lines[3], "");
    }

    #[test]
    fn config_error_carries_file_line_col() {
        let reply = parse_reply(&lines(
            "0002-Reading configuration from /tmp/bx/bad.conf\n\
             8002 /tmp/bx/bad.conf:3:56 syntax error, unexpected '}', expecting ';' or '{'\n",
        ))
        .unwrap();
        assert_eq!(reply.code, 8002);
        assert!(reply.is_error());
        let err = outcome(Path::new("/s"), reply).unwrap_err();
        match err {
            BirdError::Config { code, message, .. } => {
                assert_eq!(code, 8002);
                assert_eq!(
                    message,
                    "/tmp/bx/bad.conf:3:56 syntax error, unexpected '}', expecting ';' or '{'"
                );
            }
            other => panic!("expected Config, got {other:?}"),
        }
    }

    #[test]
    fn configure_codes_map_to_outcomes() {
        let cases = [
            ("0003 Reconfigured", Outcome::Reconfigured),
            ("0004 Reconfiguration in progress", Outcome::InProgress),
            (
                "0005 Reconfiguration already in progress, queueing new config",
                Outcome::Queued,
            ),
            ("0019 Nothing to do", Outcome::NothingToDo),
            ("0020 Configuration OK", Outcome::CheckOk),
        ];
        for (line, expected) in cases {
            let reply = parse_reply(&[line]).unwrap();
            assert_eq!(outcome(Path::new("/s"), reply).unwrap(), expected, "{line}");
        }
    }

    #[test]
    fn other_codes_are_rejections() {
        for (line, code) in [
            ("8007 Access denied", 8007),
            ("9001 syntax error, unexpected CF_SYM_UNDEFINED", 9001),
            ("0006 Reconfiguration ignored, shutting down", 6),
        ] {
            let reply = parse_reply(&[line]).unwrap();
            match outcome(Path::new("/s"), reply).unwrap_err() {
                BirdError::Rejected { code: c, message } => {
                    assert_eq!(c, code);
                    assert_eq!(message, &line[5..]);
                }
                other => panic!("expected Rejected for {line}, got {other:?}"),
            }
        }
    }

    #[test]
    fn undo_scheduled_line_precedes_the_outcome() {
        let reply = parse_reply(&lines(
            "0002-Reading configuration from /b.conf\n0022-Undo scheduled in 5 s\n0003 Reconfigured\n",
        ))
        .unwrap();
        assert_eq!(reply.code, 3);
        assert_eq!(reply.lines.len(), 3);
    }

    #[test]
    fn async_lines_are_skipped() {
        let reply = parse_reply(&["+ some log line", "0003 Reconfigured"]).unwrap();
        assert_eq!(reply.lines, ["Reconfigured"]);
    }

    #[test]
    fn malformed_replies_are_refused() {
        assert_eq!(parse_reply::<&str>(&[]), Err(MalformedReply::Empty));
        assert!(matches!(
            parse_reply(&["hello"]),
            Err(MalformedReply::BadLine { index: 0, .. })
        ));
        assert!(matches!(
            parse_reply(&["0003"]),
            Err(MalformedReply::BadLine { .. })
        ));
        assert!(matches!(
            parse_reply(&["00x3 Reconfigured"]),
            Err(MalformedReply::BadLine { .. })
        ));
        assert!(matches!(
            parse_reply(&[" orphan", "0003 Reconfigured"]),
            Err(MalformedReply::LeadingContinuation { .. })
        ));
        assert_eq!(
            parse_reply(&["0002-Reading configuration from /b.conf"]),
            Err(MalformedReply::Unterminated)
        );
        assert_eq!(
            parse_reply(&["0003 Reconfigured", "0003 Reconfigured"]),
            Err(MalformedReply::EarlyEnd { index: 0 })
        );
    }

    #[test]
    fn configure_lines_quote_file_names() {
        let line = |c: Configure| String::from_utf8(configure_line(&c).unwrap()).unwrap();
        assert_eq!(line(Configure::Plain), "configure");
        assert_eq!(line(Configure::Soft), "configure soft");
        assert_eq!(
            line(Configure::File("/etc/bird/sp ace.conf".into())),
            "configure \"/etc/bird/sp ace.conf\""
        );
        assert_eq!(line(Configure::Check(None)), "configure check");
        assert_eq!(
            line(Configure::Check(Some("/e/b\\x.conf".into()))),
            "configure check \"/e/b\\x.conf\""
        );
    }

    #[test]
    fn unquotable_file_names_are_refused() {
        for bad in ["/etc/a\"b.conf", "/etc/a\nb.conf"] {
            let err = configure_line(&Configure::File(bad.into())).unwrap_err();
            assert!(matches!(err, BirdError::InvalidPath { .. }), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn multi_line_commands_are_refused_before_connecting() {
        let err = command(Path::new("/nonexistent"), "show status\nconfigure", SECOND)
            .await
            .unwrap_err();
        assert!(matches!(err, BirdError::InvalidCommand { .. }), "{err:?}");
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// A fake BIRD that greets one connection, reads one command line, sends
    /// `script` in small pieces and then holds the connection open.
    async fn fake_bird(
        script: &'static str,
    ) -> (tempfile::TempDir, PathBuf, tokio::task::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bird.ctl");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
            let mut read = BufReader::new(read);
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            // Small pieces, so that lines arrive split across reads.
            for piece in script.as_bytes().chunks(7) {
                write.write_all(piece).await.unwrap();
                write.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            std::future::pending::<()>().await;
        });
        (dir, socket, task)
    }

    #[tokio::test]
    async fn reply_split_across_writes_is_reassembled() {
        let (_dir, socket, task) =
            fake_bird("0002-Reading configuration from /b.conf\n0003 Reconfigured\n").await;
        let outcome = configure(&socket, &Configure::Plain, SECOND).await.unwrap();
        assert_eq!(outcome, Outcome::Reconfigured);
        task.abort();
    }

    #[tokio::test]
    async fn a_silent_daemon_times_out() {
        let (_dir, socket, task) = fake_bird("0002-Reading configuration from /b.conf\n").await;
        let err = configure(&socket, &Configure::Plain, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BirdError::Timeout { socket: s, .. } if *s == socket),
            "{err:?}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error() {
        let (_dir, socket, task) = fake_bird("HTTP/1.1 400 Bad Request\n").await;
        let err = command(&socket, "show status", SECOND).await.unwrap_err();
        assert!(matches!(err, BirdError::Protocol { .. }), "{err:?}");
        task.abort();
    }

    #[tokio::test]
    async fn missing_socket_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bird.ctl");
        let err = command(&socket, "show status", SECOND).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, BirdError::Connect { .. }));
        assert!(text.contains("does not exist"), "{text}");
        assert!(text.contains(&socket.display().to_string()), "{text}");
    }

    #[tokio::test]
    async fn stale_socket_says_bird_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bird.ctl");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let err = command(&socket, "show status", SECOND).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("BIRD is not running"), "{text}");
    }
}
