//! Problems found in a manifest, and how they are shown to people and machines.
//!
//! One [`ManifestError`] carries every problem of a file so a developer fixes
//! them all in one round trip. It renders three ways: plain text (stable, for
//! API responses and `NO_COLOR`), ANSI-coloured text with the same layout, and
//! through miette's [`Diagnostic`] for callers that already use miette.

use std::fmt::{self, Write as _};
use std::ops::Range;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One thing wrong with a manifest, located in its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Byte range in the source that is at fault (may be empty: a point).
    pub span: Range<usize>,
    /// 1-based line of `span.start`.
    pub line: usize,
    /// 1-based column of `span.start`, counted in characters.
    pub column: usize,
    /// What is wrong, as one sentence.
    pub message: String,
    /// Short text shown next to the underline.
    pub label: String,
    /// How to fix it, when we know.
    pub help: Option<String>,
}

impl Problem {
    /// Builds a problem, clamping `span` to `source` and computing line and column.
    pub(crate) fn new(
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> Self {
        let span = clamp_span(source, span);
        let (line, column) = line_column(source, span.start);
        Self {
            span,
            line,
            column,
            message: message.into(),
            label: label.into(),
            help,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let label = (!self.label.is_empty()).then(|| self.label.clone());
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            label,
            self.span.clone(),
        ))))
    }
}

/// A manifest that could not be accepted, with every problem found in it.
#[derive(Clone)]
pub struct ManifestError {
    source: NamedSource<String>,
    problems: Vec<Problem>,
}

impl ManifestError {
    /// Wraps `problems` found in `source`; sorts them by position.
    pub(crate) fn new(file_name: &str, source: &str, mut problems: Vec<Problem>) -> Self {
        if problems.is_empty() {
            // Callers only build an error when something is wrong; this keeps the
            // "at least one problem" invariant even if one of them forgets why.
            problems.push(Problem::new(
                source,
                0..0,
                "the manifest was rejected without a reason (this is a bug in tend)",
                "",
                None,
            ));
        }
        problems.sort_by_key(|p| (p.span.start, p.span.end));
        Self {
            source: NamedSource::new(file_name, source.to_string()).with_language("TOML"),
            problems,
        }
    }

    /// The file name used in locations (`tend.toml`, `services/web/tend.toml`).
    pub fn file_name(&self) -> &str {
        self.source.name()
    }

    /// The manifest's source text.
    pub fn source_text(&self) -> &str {
        self.source.inner()
    }

    /// Every problem found, in source order; never empty.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// A report for API responses: `{file, problems: [{line, column, message, label, help}]}`.
    pub fn report(&self) -> ManifestReport {
        ManifestReport {
            file: self.file_name().to_string(),
            problems: self
                .problems
                .iter()
                .map(|p| ProblemReport {
                    line: p.line,
                    column: p.column,
                    message: p.message.clone(),
                    label: p.label.clone(),
                    help: p.help.clone(),
                })
                .collect(),
        }
    }

    /// [`Self::report`] as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!(self.report())
    }

    /// Renders every problem rustc-style; `color` adds ANSI colours, same layout.
    pub fn render(&self, color: bool) -> String {
        let style = if color { Style::ANSI } else { Style::PLAIN };
        let mut out = String::new();
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            render_problem(
                &mut out,
                self.file_name(),
                self.source_text(),
                problem,
                &style,
            );
        }
        if self.problems.len() > 1 {
            let _ = writeln!(
                out,
                "\n{}: {}",
                style.error("error"),
                style.bold(&format!(
                    "{} has {} problems",
                    self.file_name(),
                    self.problems.len()
                ))
            );
        }
        out
    }
}

impl fmt::Debug for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // NamedSource's Debug hides the source; show what helps in a test failure.
        f.debug_struct("ManifestError")
            .field("file", &self.file_name())
            .field("problems", &self.problems)
            .finish()
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(first) = self.problems.first() else {
            return write!(f, "{}: invalid manifest", self.file_name());
        };
        write!(
            f,
            "{}:{}:{}: {}",
            self.file_name(),
            first.line,
            first.column,
            first.message
        )?;
        match self.problems.len() {
            1 => Ok(()),
            2 => write!(f, " (and 1 more problem)"),
            n => write!(f, " (and {} more problems)", n - 1),
        }
    }
}

impl std::error::Error for ManifestError {}

/// The first problem is the headline; the others are related diagnostics that
/// miette renders against the same source, each with its own snippet.
impl Diagnostic for ManifestError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("tend::manifest"))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.problems.first()?.help()
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.problems.first()?.labels()
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        let rest = self.problems.get(1..).filter(|rest| !rest.is_empty())?;
        Some(Box::new(rest.iter().map(|p| p as &dyn Diagnostic)))
    }
}

/// What the API returns for an invalid manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ManifestReport {
    /// The manifest's file name.
    pub file: String,
    /// Every problem, in source order.
    pub problems: Vec<ProblemReport>,
}

/// One problem in a [`ManifestReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProblemReport {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// Short text for the underlined span.
    pub label: String,
    /// How to fix it, when known.
    pub help: Option<String>,
}

/// Colours for the renderer; the plain style is the identity.
struct Style {
    ansi: bool,
}

impl Style {
    const PLAIN: Style = Style { ansi: false };
    const ANSI: Style = Style { ansi: true };

    fn paint(&self, code: &str, text: &str) -> String {
        if self.ansi {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn error(&self, text: &str) -> String {
        self.paint("1;31", text)
    }

    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    fn gutter(&self, text: &str) -> String {
        self.paint("1;34", text)
    }

    fn help(&self, text: &str) -> String {
        self.paint("1;36", text)
    }
}

/// Writes one problem in the rustc layout:
///
/// ```text
/// error: unknown key `instance` in [run]
///  --> tend.toml:9:1
///   |
/// 9 | instance = 2
///   | ^^^^^^^^ unknown key
///   |
///   = help: did you mean `instances`?
/// ```
fn render_problem(out: &mut String, file: &str, source: &str, p: &Problem, style: &Style) {
    let line_no = p.line.to_string();
    let pad = " ".repeat(line_no.len());
    let bar = style.gutter("|");
    let (text, prefix, carets) = snippet(source, &p.span);

    let _ = writeln!(out, "{}: {}", style.error("error"), style.bold(&p.message));
    let _ = writeln!(
        out,
        "{pad}{} {file}:{}:{}",
        style.gutter("-->"),
        p.line,
        p.column
    );
    let _ = writeln!(out, "{pad} {bar}");
    let _ = writeln!(out, "{} {bar} {text}", style.gutter(&line_no));
    let mut underline = format!("{prefix}{}", "^".repeat(carets));
    if !p.label.is_empty() {
        underline.push(' ');
        underline.push_str(&p.label);
    }
    let _ = writeln!(out, "{pad} {bar} {}", style.error(&underline));
    if let Some(help) = &p.help {
        let _ = writeln!(out, "{pad} {bar}");
        // Continuation lines line up with the text after "= help: ".
        let indent = format!("{pad}         ");
        let mut lines = help.lines();
        let first = lines.next().unwrap_or_default();
        let _ = writeln!(out, "{pad} {} {first}", style.help("= help:"));
        for line in lines {
            let _ = writeln!(out, "{indent}{line}");
        }
    }
}

/// The source line holding `span.start` (made printable), the whitespace that
/// puts a caret under `span.start`, and how many carets cover the span on
/// that line (at least one, so an empty span still points somewhere).
fn snippet(source: &str, span: &Range<usize>) -> (String, String, usize) {
    let start = span.start.min(source.len());
    let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[start..]
        .find('\n')
        .map_or(source.len(), |i| start + i);
    let line = &source[line_start..line_end];
    let line = line.strip_suffix('\r').unwrap_or(line);
    let before_len = start - line_start;
    // The span may start inside a stripped "\r"; clamp to the visible text.
    let before = line.get(..before_len.min(line.len())).unwrap_or(line);
    let rest = &line[before.len()..];

    let text: String = line.chars().map(printable).collect();
    let prefix: String = before
        .chars()
        .filter(|c| *c != '\u{feff}')
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let covered = span.end.saturating_sub(start).min(rest.len());
    let covered = rest
        .char_indices()
        .take_while(|(i, _)| *i < covered)
        .count();
    (text, prefix, covered.max(1))
}

/// Keeps terminals safe and carets aligned: control characters (which a
/// malicious manifest could use to rewrite the screen) become U+FFFD.
fn printable(c: char) -> char {
    match c {
        '\t' => '\t',
        '\u{feff}' => '\u{fffd}',
        c if c.is_control() => '\u{fffd}',
        c => c,
    }
}

/// Moves both ends of `span` inside `source` and onto character boundaries.
fn clamp_span(source: &str, span: Range<usize>) -> Range<usize> {
    let floor = |mut i: usize| {
        i = i.min(source.len());
        while !source.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = floor(span.start);
    if span.end <= span.start {
        // An empty (or reversed) span is a point: keep it one.
        return start..start;
    }
    let mut end = span.end.min(source.len()).max(start);
    while !source.is_char_boundary(end) {
        end += 1;
    }
    start..end
}

/// 1-based line and character column of byte offset `at`, clamped into `source`.
pub(crate) fn location(source: &str, at: usize) -> (usize, usize) {
    line_column(source, clamp_span(source, at..at).start)
}

/// 1-based line and character column of byte offset `at` (on a char boundary).
fn line_column(source: &str, at: usize) -> (usize, usize) {
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    // A byte-order mark is invisible, so it does not move the column.
    let column = before[line_start..]
        .chars()
        .filter(|c| *c != '\u{feff}')
        .count()
        + 1;
    (line, column)
}

/// Quotes user text for a message: control characters escaped, long text cut.
pub(crate) fn show(s: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() || c == '\u{feff}' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let src = "a = 1\néé = \"x\"\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        // "éé" is 4 bytes but 2 characters.
        assert_eq!(line_column(src, 10), (2, 3));
        assert_eq!(line_column("\u{feff}[x]", 3), (1, 1));
    }

    #[test]
    fn spans_are_clamped_to_char_boundaries() {
        let src = "é";
        assert_eq!(clamp_span(src, 1..1), 0..0);
        assert_eq!(clamp_span(src, 0..1), 0..2);
        assert_eq!(clamp_span(src, 5..9), 2..2);
        let (from, to) = (2, 0);
        assert_eq!(clamp_span(src, from..to), 2..2);
    }

    #[test]
    fn snippet_underlines_the_span_on_its_line() {
        let (text, prefix, carets) = snippet("x = 1\n\tfoo = 2\r\n", &(7..10));
        assert_eq!(text, "\tfoo = 2");
        assert_eq!(prefix, "\t");
        assert_eq!(carets, 3);
        // A span reaching past the line end stops at the line end.
        let (_, prefix, carets) = snippet("ab\ncd", &(1..5));
        assert_eq!((prefix.as_str(), carets), (" ", 1));
        // An empty span at the end of the file still gets a caret.
        let (text, _, carets) = snippet("ab\n", &(3..3));
        assert_eq!((text.as_str(), carets), ("", 1));
    }

    #[test]
    fn control_characters_are_not_printed() {
        let (text, _, _) = snippet("a\x1b[2Jb", &(0..1));
        assert_eq!(text, "a\u{fffd}[2Jb");
        assert_eq!(show("a\nb"), "a\\nb");
        assert_eq!(show(&"x".repeat(100)).chars().count(), 61);
    }
}
