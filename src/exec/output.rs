//! The exec child's output when `prefix` is set: each line of its stdout and
//! stderr is written to confera's own stdout and stderr with the prefix in
//! front, one write per line, so lines never interleave mid-line with
//! confera's log. Without a prefix the child inherits confera's descriptors
//! and nothing here runs.
//!
//! It never blocks the child for long and never grows without bound: a line
//! longer than [`MAX_LINE`] is written in pieces, and a closed stdout or
//! stderr drops what is written while the child's pipe is still drained.

use std::io::Write;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest line kept whole; a longer one is cut into pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;

/// Which of confera's streams a child's stream goes to.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Copies `from` to `to`, line by line, each line after `prefix`, until
/// `from` ends (the child and everything holding its pipe are gone).
pub async fn copy_lines(mut from: impl AsyncRead + Unpin, prefix: String, to: Stream) {
    let mut lines = Lines::new(prefix);
    let mut chunk = vec![0; 8 * 1024];
    loop {
        match from.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => lines.push(&chunk[..n], |line| write(to, line)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    lines.finish(|line| write(to, line));
}

fn write(to: Stream, line: &[u8]) {
    // A closed stream is not the child's problem: drop the line.
    let _ = match to {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(line).and_then(|()| out.flush())
        }
        Stream::Stderr => std::io::stderr().lock().write_all(line),
    };
}

/// Splits bytes into prefixed lines.
struct Lines {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl Lines {
    fn new(prefix: String) -> Lines {
        Lines {
            prefix: prefix.into_bytes(),
            partial: Vec::new(),
        }
    }

    /// Emits every complete line in `partial` + `bytes`, with its newline.
    fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = bytes.split_at(end + 1);
            self.partial.extend_from_slice(line);
            self.emit(&mut emit);
            bytes = rest;
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            self.partial.push(b'\n');
            self.emit(&mut emit);
            self.partial = rest;
        }
    }

    /// Emits what is left, ended with a newline.
    fn finish(mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            self.partial.push(b'\n');
            self.emit(&mut emit);
        }
    }

    fn emit(&mut self, emit: &mut impl FnMut(&[u8])) {
        let mut line = Vec::with_capacity(self.prefix.len() + self.partial.len());
        line.extend_from_slice(&self.prefix);
        line.append(&mut self.partial);
        emit(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(prefix: &str, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut lines = Lines::new(prefix.to_owned());
        for chunk in chunks {
            lines.push(chunk, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        lines.finish(|l| out.push(String::from_utf8_lossy(l).into_owned()));
        out
    }

    #[test]
    fn every_line_gets_the_prefix_however_the_chunks_fall() {
        assert_eq!(
            lines("[bird] ", &[b"one\ntw", b"o\n", b"\nthree"]),
            [
                "[bird] one\n",
                "[bird] two\n",
                "[bird] \n",
                "[bird] three\n"
            ]
        );
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_into_pieces() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let out = lines("> ", &[&long, b"\n"]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), 2 + MAX_LINE + 1);
        assert_eq!(out[2], format!("> {}\n", "x".repeat(10)));
    }
}
