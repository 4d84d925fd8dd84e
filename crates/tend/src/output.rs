//! Printing for people (tables, colour that respects NO_COLOR) and for scripts
//! (`-o json`).

use std::io::IsTerminal;

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use serde::Serialize;

use crate::cli::Output;

/// Whether stdout gets colour: a terminal, and NO_COLOR unset.
pub fn color_stdout() -> bool {
    std::io::stdout().is_terminal() && no_color_unset()
}

/// Whether stderr gets colour: a terminal, and NO_COLOR unset.
pub fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && no_color_unset()
}

fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A table with a header and no borders, like kubectl's.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(
        header
            .into_iter()
            .map(|h| Cell::new(h.into().to_uppercase())),
    );
    t
}

/// Prints `value` as JSON, or calls `human` to print it for people.
pub fn print<T: Serialize>(
    output: Output,
    value: &T,
    human: impl FnOnce(&T),
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => human(value),
    }
    Ok(())
}

/// Prints a table, trimming the trailing spaces comfy-table leaves.
pub fn print_table(t: &Table) {
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// `-` for a missing value.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The API's name of an enum value (`rolled_back`), for people.
pub fn api_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}
