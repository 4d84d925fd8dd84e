//! A compiled [`Query`] filter, shared by queries (over stored blocks) and
//! followers (in the ingest path).

use memchr::memmem;

use crate::segment::{bloom_may_contain, trigrams, BlockSummary, Label};
use crate::{to_nanos, Grep, Level, Query, Stream};

/// How the text of lines is matched.
enum Matcher {
    /// `whole_buffer`: the pattern has no anchors, so searching a block's whole
    /// text column (lines joined by '\n') and verifying the line of each hit finds
    /// exactly the matching lines, much faster than one search per line.
    Regex {
        re: regex::Regex,
        whole_buffer: bool,
    },
    Substring(Box<memmem::Finder<'static>>),
    /// A needle containing a newline never matches a single line.
    Never,
}

pub(crate) struct Filter {
    pub since: Option<u64>,
    pub until: Option<u64>,
    release: Option<u32>,
    instance: Option<String>,
    stream: Option<Stream>,
    min_level: Option<Level>,
    matcher: Option<Matcher>,
    /// Alternatives of trigram sets, one of which every matching line contains
    /// (empty: no block can be skipped by its bloom filter).
    required: Vec<Vec<u32>>,
}

impl Filter {
    pub fn new(q: &Query) -> Filter {
        let matcher = q.grep.as_ref().map(|g| match g {
            Grep::Regex(re) => {
                let p = re.as_str();
                // '^', '$', \A, \z are the only constructs whose meaning changes when
                // the haystack is many lines instead of one; any mention (even escaped)
                // makes us fall back to per-line matching.
                let anchored =
                    p.contains('^') || p.contains('$') || p.contains("\\A") || p.contains("\\z");
                Matcher::Regex {
                    re: re.clone(),
                    whole_buffer: !anchored,
                }
            }
            Grep::Substring(s) if s.contains('\n') => Matcher::Never,
            Grep::Substring(s) => {
                Matcher::Substring(Box::new(memmem::Finder::new(s.as_bytes()).into_owned()))
            }
        });
        let required = match &q.grep {
            None => Vec::new(),
            Some(Grep::Substring(s)) => vec![trigrams(s.as_bytes())],
            Some(Grep::Regex(re)) => regex_literals(re.as_str()),
        };
        let required = if required.iter().any(|t| t.is_empty()) {
            Vec::new() // an alternative too short to tell: every block may match
        } else {
            required
        };
        Filter {
            required,
            since: q.since.map(to_nanos),
            until: q.until.map(to_nanos),
            release: q.release,
            instance: q.instance.clone(),
            stream: q.stream,
            min_level: q.min_level,
            matcher,
        }
    }

    /// Whether lines with this label can match.
    pub fn label_ok(&self, l: &Label) -> bool {
        self.release.is_none_or(|r| l.release == Some(r))
            && self.stream.is_none_or(|s| l.stream == s)
            && self
                .instance
                .as_deref()
                .is_none_or(|i| l.instance.as_deref() == Some(i))
    }

    /// The release part of the filter alone.
    pub fn release_ok(&self, r: Option<u32>) -> bool {
        self.release.is_none_or(|x| r == Some(x))
    }

    /// The instance part of the filter alone.
    pub fn instance_ok(&self, i: Option<&str>) -> bool {
        self.instance.as_deref().is_none_or(|x| i == Some(x))
    }

    /// Same as `label_ok` for a line in the ingest path.
    pub fn source_ok(&self, release: Option<u32>, instance: Option<&str>, stream: Stream) -> bool {
        self.release.is_none_or(|r| release == Some(r))
            && self.stream.is_none_or(|s| stream == s)
            && self.instance.as_deref().is_none_or(|i| instance == Some(i))
    }

    /// Whether a line of this level code (0 = none) passes `min_level`.
    pub fn level_ok(&self, code: u8) -> bool {
        self.min_level.is_none_or(|m| code >= m.code())
    }

    /// Whether a time (ns) is in `[since, until)`.
    pub fn time_ok(&self, t: u64) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }

    /// Whether a block with this summary may hold matching lines (labels checked separately).
    pub fn summary_ok(&self, s: &BlockSummary) -> bool {
        if s.count == 0 {
            return false;
        }
        if self.since.is_some_and(|t| s.max_time < t) || self.until.is_some_and(|t| s.min_time >= t)
        {
            return false;
        }
        if let Some(st) = self.stream {
            if s.stream_mask & (1 << st.code()) == 0 {
                return false;
            }
        }
        if let Some(m) = self.min_level {
            // Bits m.code()..=6 of the level mask.
            if s.level_mask & !((1u8 << m.code()) - 1) == 0 {
                return false;
            }
        }
        true
    }

    /// Whether `raw` passes the grep (true without one).
    pub fn text_ok(&self, raw: &str) -> bool {
        match &self.matcher {
            None => true,
            Some(Matcher::Regex { re, .. }) => re.is_match(raw),
            Some(Matcher::Substring(f)) => f.find(raw.as_bytes()).is_some(),
            Some(Matcher::Never) => false,
        }
    }

    /// Whether a block with this bloom filter may hold a line passing the grep.
    pub fn bloom_ok(&self, bloom: &[u8]) -> bool {
        self.required.is_empty() || self.required.iter().any(|t| bloom_may_contain(bloom, t))
    }

    pub fn has_grep(&self) -> bool {
        self.matcher.is_some()
    }

    /// Indexes (ascending) of the lines of a text column (lines each ended by
    /// '\n') that pass the grep. Works on the text alone, so a block without a
    /// hit costs one search and no metadata decoding.
    pub fn grep_text(&self, text: &[u8], out: &mut Vec<u32>) {
        out.clear();
        let Some(m) = &self.matcher else { return };
        let mut lines = LineCursor::default();
        match m {
            Matcher::Never => {}
            Matcher::Substring(f) => {
                let mut pos = 0;
                while pos < text.len() {
                    let Some(off) = f.find(&text[pos..]) else {
                        break;
                    };
                    let (i, _, end) = lines.locate(text, pos + off);
                    out.push(i);
                    pos = lines.next_line(end);
                }
            }
            Matcher::Regex { re, whole_buffer } => {
                let Ok(text) = std::str::from_utf8(text) else {
                    // Not written by us (we store valid UTF-8): match line by line, lossily.
                    let mut start = 0;
                    for (i, nl) in memchr::memchr_iter(b'\n', text).enumerate() {
                        if re.is_match(&String::from_utf8_lossy(&text[start..nl])) {
                            out.push(i as u32);
                        }
                        start = nl + 1;
                    }
                    return;
                };
                if !whole_buffer {
                    let mut start = 0;
                    for (i, nl) in memchr::memchr_iter(b'\n', text.as_bytes()).enumerate() {
                        if re.is_match(&text[start..nl]) {
                            out.push(i as u32);
                        }
                        start = nl + 1;
                    }
                    return;
                }
                let mut pos = 0;
                while pos < text.len() {
                    let Some(hit) = re.find_at(text, pos) else {
                        break;
                    };
                    let (i, start, end) = lines.locate(text.as_bytes(), hit.start());
                    // The hit may span lines: the line where it starts is checked alone.
                    if re.is_match(&text[start..end]) {
                        out.push(i);
                    }
                    pos = lines.next_line(end);
                }
            }
        }
    }
}

/// Literals one of which every match of `pattern` contains, as trigram sets;
/// empty when there are none usable.
///
/// Flags set through `RegexBuilder` are not in `as_str()`, so the literals of
/// every reading that could differ are united: ASCII case never matters (filters
/// and literals are lower-cased), whitespace is read with and without
/// `ignore_whitespace`, non-ASCII text with and without `case_insensitive`.
fn regex_literals(pattern: &str) -> Vec<Vec<u32>> {
    let ws = pattern.contains(char::is_whitespace);
    let non_ascii = !pattern.is_ascii();
    let mut all = Vec::new();
    for x in [false, true] {
        for i in [false, true] {
            if (x && !ws) || (i && !non_ascii) {
                continue;
            }
            let hir = regex_syntax::ParserBuilder::new()
                .ignore_whitespace(x)
                .case_insensitive(i)
                .build()
                .parse(pattern);
            let Ok(hir) = hir else { return Vec::new() };
            let lits = hir_literals(&hir);
            if lits.is_empty() {
                return Vec::new();
            }
            all.extend(lits);
        }
    }
    all
}

/// The better of the prefix and suffix literal sets of `hir` (all at least 3 bytes).
fn hir_literals(hir: &regex_syntax::hir::Hir) -> Vec<Vec<u32>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let mut best = Vec::new();
    let mut best_min = 0;
    for kind in [ExtractKind::Prefix, ExtractKind::Suffix] {
        let seq = Extractor::new().kind(kind).extract(hir);
        let Some(lits) = seq.literals() else { continue };
        if lits.is_empty() || lits.len() > 64 {
            continue;
        }
        let min = lits.iter().map(|l| l.as_bytes().len()).min().unwrap_or(0);
        if min >= 3 && min > best_min {
            best_min = min;
            best = lits.iter().map(|l| trigrams(l.as_bytes())).collect();
        }
    }
    best
}

/// Maps byte positions of a text column to line numbers, moving forward only.
#[derive(Default)]
struct LineCursor {
    /// Line number of the line starting at `at`.
    line: u32,
    at: usize,
}

impl LineCursor {
    /// (line number, start, end without '\n') of the line holding byte `p`
    /// (a '\n' belongs to the line it ends). `p` must not go backwards.
    fn locate(&mut self, text: &[u8], p: usize) -> (u32, usize, usize) {
        self.line += memchr::memchr_iter(b'\n', &text[self.at..p]).count() as u32;
        let start = memchr::memrchr(b'\n', &text[self.at..p]).map_or(self.at, |q| self.at + q + 1);
        self.at = start;
        let end = memchr::memchr(b'\n', &text[p..]).map_or(text.len(), |q| p + q);
        (self.line, start, end)
    }

    /// Moves past the line ending at `end`; returns where the next line starts.
    fn next_line(&mut self, end: usize) -> usize {
        self.line += 1;
        self.at = end + 1;
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::build_bloom;

    fn text() -> Vec<u8> {
        let mut t = Vec::new();
        for i in 0..2000 {
            t.extend_from_slice(format!("request {i:05} took {}ms\n", i % 97).as_bytes());
        }
        t.extend_from_slice(b"ERROR connection refused by Stra\xc3\x9fe\n");
        t
    }

    fn grep(g: Grep) -> Filter {
        Filter::new(&Query {
            grep: Some(g),
            ..Query::new("s")
        })
    }

    fn re(p: &str) -> Grep {
        Grep::Regex(regex::Regex::new(p).unwrap())
    }

    #[test]
    fn bloom_skips_only_blocks_without_the_literals() {
        let t = text();
        let mut bloom = Vec::new();
        build_bloom(&t, &mut bloom);
        assert!(!bloom.is_empty());
        let yes = [
            grep(Grep::Substring("request 01234".into())),
            grep(Grep::Substring("connection refused".into())),
            grep(re(r"request 0123\d took")),
            grep(re(r"(?i)error conn")),
            grep(re(r"refused|zzzzzz")),
            grep(re(r"\d+ms")), // no usable literal: never skipped
            grep(Grep::Substring("ab".into())),
            // Flags given to the builder are not in as_str(): still not skipped.
            grep(Grep::Regex(
                regex::RegexBuilder::new("error CONNECTION")
                    .case_insensitive(true)
                    .build()
                    .unwrap(),
            )),
            grep(Grep::Regex(
                regex::RegexBuilder::new("connec tion")
                    .ignore_whitespace(true)
                    .build()
                    .unwrap(),
            )),
            grep(Grep::Regex(
                regex::RegexBuilder::new("STRASSE|straẞe")
                    .case_insensitive(true)
                    .build()
                    .unwrap(),
            )),
        ];
        for (i, f) in yes.iter().enumerate() {
            assert!(f.bloom_ok(&bloom), "filter {i} wrongly skipped");
        }
        let no = [
            grep(Grep::Substring("request 99999".into())),
            grep(re(r"timeout after \d+")),
            grep(re(r"panicked|segfault")),
        ];
        for (i, f) in no.iter().enumerate() {
            assert!(!f.bloom_ok(&bloom), "filter {i} not skipped");
        }
    }

    #[test]
    fn whole_text_grep_finds_exactly_the_matching_lines() {
        let t = b"alpha 1\nbeta 22\n\ngamma 333\nbeta\n".to_vec();
        let mut out = Vec::new();
        let check = |g: Grep, want: &[u32], out: &mut Vec<u32>| {
            grep(g).grep_text(&t, out);
            assert_eq!(out, want);
        };
        check(re(r"beta"), &[1, 4], &mut out);
        check(re(r"\d+"), &[0, 1, 3], &mut out);
        check(re(r"1\s+beta"), &[], &mut out);
        check(re(r"^$"), &[2], &mut out);
        check(re(r"a$"), &[4], &mut out);
        check(re(r"\n"), &[], &mut out);
        check(re(r""), &[0, 1, 2, 3, 4], &mut out);
        check(Grep::Substring("a ".into()), &[0, 1, 3], &mut out);
        check(Grep::Substring(String::new()), &[0, 1, 2, 3, 4], &mut out);
        check(Grep::Substring("a\nb".into()), &[], &mut out);
    }
}
