//! The output relay: keeps secret values out of an instance's output files.
//!
//! An instance with secrets does not write its files itself: its stdout and
//! stderr are pipes, each read by a relay process that replaces every secret
//! value with `[redacted:NAME]` before a byte reaches the file. The relay is a
//! process of its own, in a session of its own, not the daemon: the daemon can
//! die and restart while the instance and its relays run on (the invariant of
//! this crate). A relay ends when every writer of its pipe is gone.
//!
//! The relay is the `tend` binary itself, started with [`RELAY_ARG`]; a binary
//! that embeds the process driver and gives it secrets calls [`main_if_relay`]
//! first thing in `main`. The values reach the relay in its environment
//! (`TEND_REDACT_<n>=NAME:base64(value)`), which is as private as the
//! instance's own environment that holds the same values; never on disk and
//! never in argv.

use std::io::{Read, Write};

use base64::Engine as _;
use tend_secrets::RedactorBuilder;

/// The first argument that makes the binary a relay.
pub const RELAY_ARG: &str = "__tend-output-relay";
/// Prefix of the environment variables carrying the values to redact.
pub(crate) const ENV_PREFIX: &str = "TEND_REDACT_";

/// The relay's environment for these `(name, value)` pairs.
pub(crate) fn env_for<'a>(
    secrets: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    secrets
        .enumerate()
        .map(|(i, (name, value))| {
            (
                format!("{ENV_PREFIX}{i}"),
                format!(
                    "{name}:{}",
                    base64::engine::general_purpose::STANDARD.encode(value)
                ),
            )
        })
        .collect()
}

/// Runs the relay and exits if this process was started as one.
pub fn main_if_relay() {
    if std::env::args_os().nth(1).is_some_and(|a| a == RELAY_ARG) {
        std::process::exit(run(std::io::stdin(), std::io::stdout()));
    }
}

/// Copies `input` to `output`, redacted, until end of input; returns the exit code.
///
/// Write errors (a full disk) do not stop the relay: it keeps reading, so the
/// instance never blocks on a full pipe.
pub fn run(input: impl Read, output: impl Write) -> i32 {
    let mut builder = RedactorBuilder::new();
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        if !k.starts_with(ENV_PREFIX) {
            continue;
        }
        let Some((name, b64)) = v.split_once(':') else {
            continue;
        };
        if let Ok(value) = base64::engine::general_purpose::STANDARD.decode(b64) {
            builder = builder.secret(name, &value);
        }
    }
    pump(input, output, builder)
}

/// The relay loop over any reader and writer (tests, benchmarks).
pub fn pump(mut input: impl Read, mut output: impl Write, secrets: RedactorBuilder) -> i32 {
    let mut redactor = secrets.build();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len() + 1024);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        out.clear();
        match &mut redactor {
            Some(r) => r.push(&buf[..n], &mut out),
            None => out.extend_from_slice(&buf[..n]),
        }
        let _ = output.write_all(&out);
    }
    out.clear();
    if let Some(r) = &mut redactor {
        r.finish(&mut out);
    }
    let _ = output.write_all(&out);
    let _ = output.flush();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pump_redacts_across_reads() {
        // A reader that returns a few bytes at a time, like a pipe.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(3).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        let secrets = RedactorBuilder::new().secret("TOKEN", b"s3cr3t-value");
        pump(Trickle(b"token=s3cr3t-value\nbye\n"), &mut out, secrets);
        assert_eq!(out, b"token=[redacted:TOKEN]\nbye\n");
    }

    #[test]
    fn env_encoding_round_trips_any_text() {
        let env = env_for([("K", "a:b=c\nd")].into_iter());
        assert_eq!(env[0].0, "TEND_REDACT_0");
        let (name, b64) = env[0].1.split_once(':').unwrap();
        assert_eq!(name, "K");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            b"a:b=c\nd"
        );
    }
}
