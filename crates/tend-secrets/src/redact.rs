//! Replacing secret values in output with `[redacted:NAME]`.
//!
//! One Aho-Corasick automaton over every value finds them all in a single
//! pass, so the cost hardly depends on how many secrets a service has. Output
//! arrives in chunks that may cut a value in two; [`Redactor::push`] holds
//! back only the shortest tail that could still become a value (usually
//! nothing: a line ends in `\n`, which starts no value), so lines pass
//! through at once.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use zeroize::Zeroizing;

/// Collects the secrets to redact.
#[derive(Default)]
pub struct RedactorBuilder {
    secrets: Vec<(String, Zeroizing<Vec<u8>>)>,
}

impl RedactorBuilder {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Redacts `value` as `[redacted:NAME]`. Empty values are ignored; when two
    /// names share a value, the first name is shown.
    pub fn secret(mut self, name: &str, value: &[u8]) -> Self {
        if !value.is_empty() && !self.secrets.iter().any(|(_, v)| v.as_slice() == value) {
            self.secrets
                .push((name.to_string(), Zeroizing::new(value.to_vec())));
        }
        self
    }

    /// The redactor; `None` if there is nothing to redact.
    pub fn build(self) -> Option<Redactor> {
        if self.secrets.is_empty() {
            return None;
        }
        // A DFA: the fastest search, and a secret set is small enough for it.
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(self.secrets.iter().map(|(_, v)| v.as_slice()))
            .ok()?;
        let mut by_first: Vec<Vec<usize>> = vec![Vec::new(); 256];
        for (i, (_, v)) in self.secrets.iter().enumerate() {
            by_first[v[0] as usize].push(i);
        }
        let max_len = self.secrets.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
        let replacements = self
            .secrets
            .iter()
            .map(|(n, _)| format!("[redacted:{n}]").into_bytes())
            .collect();
        Some(Redactor {
            ac,
            patterns: self.secrets.into_iter().map(|(_, v)| v).collect(),
            replacements,
            by_first,
            max_len,
            pending: Zeroizing::new(Vec::new()),
        })
    }
}

/// Redacts a stream of output; see the module docs.
pub struct Redactor {
    ac: AhoCorasick,
    patterns: Vec<Zeroizing<Vec<u8>>>,
    replacements: Vec<Vec<u8>>,
    /// Patterns by first byte: the tail check looks at few candidates.
    by_first: Vec<Vec<usize>>,
    max_len: usize,
    /// Bytes held back because a value may continue in the next chunk.
    pending: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.patterns.len())
            .finish()
    }
}

impl Redactor {
    /// How many distinct values it redacts.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Always false: a redactor has at least one value.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Redacts a complete text.
    pub fn redact(&self, text: &[u8]) -> Vec<u8> {
        self.ac.replace_all_bytes(text, &self.replacements)
    }

    /// The first position from which the rest of `buf` is a proper prefix of
    /// some value (and may complete in the next chunk); `buf.len()` if none.
    fn hold_from(&self, buf: &[u8]) -> usize {
        let start = buf.len().saturating_sub(self.max_len.saturating_sub(1));
        for p in start..buf.len() {
            let tail = &buf[p..];
            if self.by_first[tail[0] as usize]
                .iter()
                .any(|&i| self.patterns[i].len() > tail.len() && self.patterns[i].starts_with(tail))
            {
                return p;
            }
        }
        buf.len()
    }

    /// Feeds a chunk; appends to `out` everything that can be told clean or
    /// redacted now.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        let buf: &[u8] = &self.pending;
        let hold = self.hold_from(buf);
        let mut emitted = 0;
        for m in self.ac.find_iter(buf) {
            // A match starting in the held tail may still grow into a longer value.
            if m.start() >= hold {
                break;
            }
            out.extend_from_slice(&buf[emitted..m.start()]);
            out.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            emitted = m.end();
        }
        let cut = emitted.max(hold);
        out.extend_from_slice(&buf[emitted..cut]);
        self.pending.drain(..cut);
    }

    /// The stream ended: redacts and appends what was held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let rest = self.redact(&self.pending);
        out.extend_from_slice(&rest);
        self.pending.clear();
    }

    /// Bytes held back right now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pairs: &[(&str, &str)]) -> Redactor {
        pairs
            .iter()
            .fold(RedactorBuilder::new(), |b, (n, v)| {
                b.secret(n, v.as_bytes())
            })
            .build()
            .unwrap()
    }

    fn stream(red: &mut Redactor, chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            red.push(c, &mut out);
        }
        red.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn replaces_every_value_with_its_name() {
        let red = r(&[("DB_PASSWORD", "hunter2"), ("API_KEY", "sk_live_abc")]);
        assert_eq!(
            String::from_utf8(red.redact(b"pw=hunter2 key=sk_live_abc hunter2")).unwrap(),
            "pw=[redacted:DB_PASSWORD] key=[redacted:API_KEY] [redacted:DB_PASSWORD]"
        );
        assert!(RedactorBuilder::new().secret("E", b"").build().is_none());
    }

    #[test]
    fn values_cut_across_chunks_at_every_position() {
        let text = b"start sk_live_abcdef middle hunter2\nend";
        let want = "start [redacted:K] middle [redacted:P]\nend";
        for cut in 0..text.len() {
            let mut red = r(&[("K", "sk_live_abcdef"), ("P", "hunter2")]);
            assert_eq!(
                stream(&mut red, &[&text[..cut], &text[cut..]]),
                want,
                "cut {cut}"
            );
        }
        // Byte by byte.
        let mut red = r(&[("K", "sk_live_abcdef"), ("P", "hunter2")]);
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(stream(&mut red, &chunks), want);
    }

    #[test]
    fn the_longer_value_wins_even_when_it_arrives_later() {
        let mut red = r(&[("SHORT", "abc"), ("LONG", "abcdef")]);
        assert_eq!(
            stream(&mut red, &[b"x abc", b"def y"]),
            "x [redacted:LONG] y"
        );
        let mut red = r(&[("SHORT", "abc"), ("LONG", "abcdef")]);
        assert_eq!(
            stream(&mut red, &[b"x abc", b"d y"]),
            "x [redacted:SHORT]d y"
        );
    }

    #[test]
    fn complete_lines_are_not_held_back() {
        let mut red = r(&[("P", "hunter2")]);
        let mut out = Vec::new();
        red.push(b"the password is hunter2\n", &mut out);
        assert_eq!(out, b"the password is [redacted:P]\n");
        assert_eq!(red.pending(), 0);
        out.clear();
        red.push(b"partial hun", &mut out);
        assert_eq!(out, b"partial ");
        assert_eq!(red.pending(), 3);
    }

    #[test]
    fn multi_line_values_are_redacted_too() {
        let pem = "-----BEGIN KEY-----\nMIIB\n-----END KEY-----";
        let mut red = r(&[("TLS_KEY", pem)]);
        let text = format!("loaded\n{pem}\ndone\n");
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(5).collect();
        assert_eq!(
            stream(&mut red, &chunks),
            "loaded\n[redacted:TLS_KEY]\ndone\n"
        );
    }
}
