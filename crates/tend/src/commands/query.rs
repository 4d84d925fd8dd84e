//! `tend query`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::Value;

use crate::cli::{Global, Output, QueryArgs};
use crate::output::{print_table, table};

fn labels(metric: &Value) -> String {
    let Some(m) = metric.as_object() else {
        return "{}".into();
    };
    let name = m.get("__name__").and_then(Value::as_str).unwrap_or("");
    let rest: Vec<String> = m
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

/// Runs an instant or range query and prints it as a table or JSON.
pub async fn run(g: &Global, args: QueryArgs) -> Result<()> {
    let client = super::client(g)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let data = match args.range {
        None => {
            client
                .prometheus(
                    "/api/v1/query",
                    &[("query", args.expr.clone()), ("time", now.to_string())],
                )
                .await?
        }
        Some(range) => {
            client
                .prometheus(
                    "/api/v1/query_range",
                    &[
                        ("query", args.expr.clone()),
                        ("start", (now - range.as_secs_f64()).to_string()),
                        ("end", now.to_string()),
                        ("step", args.step.as_secs_f64().to_string()),
                    ],
                )
                .await?
        }
    };
    if g.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") | Some("string") => println!("{}", result[1].as_str().unwrap_or("")),
        Some("vector") => {
            let mut t = table(["series", "value"]);
            for s in result.as_array().into_iter().flatten() {
                t.add_row(vec![
                    labels(&s["metric"]),
                    s["value"][1].as_str().unwrap_or("").to_string(),
                ]);
            }
            print_table(&t);
        }
        _ => {
            for s in result.as_array().into_iter().flatten() {
                let values: Vec<&str> = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p[1].as_str())
                    .collect();
                println!("{}  {}", labels(&s["metric"]), values.join(" "));
            }
        }
    }
    Ok(())
}
