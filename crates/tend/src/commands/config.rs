//! `tend config`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use tend_api::ConfigChange;

use crate::cli::{ConfigArgs, ConfigCommand, Global};
use crate::output::{self, or_dash, print_table, table};

/// Lists, sets or unsets a service's config vars.
pub async fn run(g: &Global, args: ConfigArgs) -> Result<()> {
    let client = super::client(g)?;
    let (name, change) = match args.command {
        None => {
            let name = args.name.context("give a service name: tend config NAME")?;
            let c = client.config(&name).await?;
            return output::print(g.output, &c, |c| {
                if c.vars.is_empty() {
                    println!("no config vars for {name}: tend config set {name} KEY=VALUE");
                    return;
                }
                let mut t = table(["name", "value"]);
                for (k, v) in &c.vars {
                    t.add_row(vec![k.clone(), v.clone()]);
                }
                print_table(&t);
                println!(
                    "config v{} (last change {} by {})",
                    c.version,
                    or_dash(c.updated_at),
                    or_dash(c.updated_by.as_ref())
                );
            });
        }
        Some(ConfigCommand::Set {
            name,
            pairs,
            from_file,
            no_deploy,
        }) => {
            let mut set = BTreeMap::new();
            if let Some(file) = from_file {
                set.extend(read_env_file(&file)?);
            }
            for p in pairs {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("`{p}` is not KEY=VALUE"))?;
                set.insert(k.to_string(), v.to_string());
            }
            anyhow::ensure!(
                !set.is_empty(),
                "nothing to set: give KEY=VALUE pairs or --from-file"
            );
            (
                name,
                ConfigChange {
                    set,
                    unset: vec![],
                    deploy: !no_deploy,
                },
            )
        }
        Some(ConfigCommand::Unset {
            name,
            keys,
            no_deploy,
        }) => (
            name,
            ConfigChange {
                set: BTreeMap::new(),
                unset: keys,
                deploy: !no_deploy,
            },
        ),
    };
    let changed = client.change_config(&name, &change).await?;
    match changed.deployment {
        Some(d) => {
            eprintln!(
                "config v{} of {name}: rolling out as a new release",
                changed.version
            );
            super::deploy::follow(g, &client, d, false).await
        }
        None => output::print(g.output, &changed, |c| {
            println!(
                "config v{} of {name} staged: the next deploy rolls it out",
                c.version
            )
        }),
    }
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped, `export ` and
/// matching quotes around the value removed.
fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut vars = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .with_context(|| format!("{}:{}: expected KEY=VALUE", path.display(), i + 1))?;
        let v = v.trim();
        let v = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(a, b)| v.strip_prefix(*a).and_then(|x| x.strip_suffix(*b)))
            .unwrap_or(v);
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}
