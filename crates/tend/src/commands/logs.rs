//! `tend logs`.

use anyhow::Result;
use owo_colors::OwoColorize;
use tend_api::{LogEntry, LogItem};

use crate::cli::{Global, LogsArgs, Output};
use crate::output;

/// Prints a service's lines, then follows them with `-f`.
pub async fn run(g: &Global, args: LogsArgs) -> Result<()> {
    let client = super::client(g)?;
    let mut params: Vec<(&str, String)> = vec![("n", args.lines.to_string())];
    let optional = [
        ("since", args.since),
        ("until", args.until),
        ("release", args.release),
        ("instance", args.instance),
        ("stream", args.stream),
        ("level", args.level),
        ("grep", args.grep),
        ("contains", args.contains),
    ];
    params.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    if args.follow {
        params.push(("follow", "true".into()));
    }
    let color = output::color_stdout();
    let json = g.output == Output::Json;
    client
        .logs(&args.name, &params, |item| {
            match item {
                LogItem::Line(l) if json => {
                    println!("{}", serde_json::to_string(&l).unwrap_or_default())
                }
                LogItem::Line(l) => println!("{}", human(&l, color)),
                LogItem::Lagged { lagged } => {
                    eprintln!("({lagged} lines skipped: this terminal reads slower than the service writes)")
                }
            }
            true
        })
        .await?;
    Ok(())
}

/// `TIME INSTANCE LINE`, with tend's own lines and stderr told apart.
fn human(l: &LogEntry, color: bool) -> String {
    let who = match (l.stream.as_str(), &l.instance) {
        ("platform", _) => "tend".to_string(),
        (_, Some(i)) => i.clone(),
        (_, None) => "-".to_string(),
    };
    let line = if l.stream == "platform" {
        &l.message
    } else {
        &l.raw
    };
    let time = l.time.to_string();
    if !color {
        let mark = if l.stream == "stderr" { " !" } else { "" };
        return format!("{time} {who}{mark} {line}");
    }
    let who = match l.stream.as_str() {
        "platform" => who.magenta().bold().to_string(),
        "stderr" => who.yellow().to_string(),
        _ => who.cyan().to_string(),
    };
    let line = match l.level.as_deref() {
        Some("error") | Some("fatal") => line.red().to_string(),
        Some("warn") => line.yellow().to_string(),
        _ => line.to_string(),
    };
    format!("{} {who} {line}", time.dimmed())
}
