//! `tend secrets` and `tend server rotate-key`.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, Result};
use tend_api::SecretsChange;

use crate::cli::{Global, SecretsArgs, SecretsCommand};
use crate::output::{self, or_dash, print_table, table};

/// Lists, sets or unsets a service's secrets. Values go to the server and
/// nowhere else: never printed, never read back.
pub async fn run(g: &Global, args: SecretsArgs) -> Result<()> {
    let client = super::client(g)?;
    let (name, change) = match args.command {
        None => {
            let name = args
                .name
                .context("give a service name: tend secrets NAME")?;
            let s = client.secrets(&name).await?;
            return output::print(g.output, &s, |s| {
                if s.secrets.is_empty() {
                    println!("no secrets for {name}: tend secrets set {name} --stdin KEY");
                    return;
                }
                let mut t = table(["name", "version", "set by", "set at"]);
                for x in &s.secrets {
                    t.add_row(vec![
                        x.name.clone(),
                        format!("v{}", x.version),
                        or_dash(x.set_by.as_ref()),
                        x.set_at.to_string(),
                    ]);
                }
                print_table(&t);
                println!(
                    "secrets v{} (last change {} by {})",
                    s.version,
                    or_dash(s.updated_at),
                    or_dash(s.updated_by.as_ref())
                );
            });
        }
        Some(SecretsCommand::Set {
            name,
            pairs,
            stdin,
            no_deploy,
        }) => {
            let set = if stdin {
                let [key] = pairs.as_slice() else {
                    anyhow::bail!("with --stdin, give exactly one KEY (its value is read from standard input)");
                };
                anyhow::ensure!(
                    !key.contains('='),
                    "with --stdin, give only the KEY; the value comes from standard input"
                );
                let mut value = String::new();
                std::io::stdin()
                    .read_to_string(&mut value)
                    .context("cannot read the value from standard input (it must be UTF-8 text)")?;
                // `echo value |` and files end in a newline that is not part of the value.
                if value.ends_with('\n') {
                    value.pop();
                    if value.ends_with('\r') {
                        value.pop();
                    }
                }
                anyhow::ensure!(
                    !value.is_empty(),
                    "standard input was empty: no value for `{key}`"
                );
                BTreeMap::from([(key.clone(), value)])
            } else {
                let mut set = BTreeMap::new();
                for p in pairs {
                    // Only the key is named: the text may be a value typed without `=`.
                    let Some((k, v)) = p.split_once('=') else {
                        anyhow::bail!(
                            "an argument is not KEY=VALUE; to read a value from standard input, use --stdin KEY"
                        );
                    };
                    set.insert(k.to_string(), v.to_string());
                }
                anyhow::ensure!(
                    !set.is_empty(),
                    "nothing to set: give KEY=VALUE pairs, or --stdin KEY"
                );
                set
            };
            (
                name,
                SecretsChange {
                    set,
                    unset: vec![],
                    deploy: !no_deploy,
                },
            )
        }
        Some(SecretsCommand::Unset {
            name,
            keys,
            no_deploy,
        }) => (
            name,
            SecretsChange {
                set: BTreeMap::new(),
                unset: keys,
                deploy: !no_deploy,
            },
        ),
    };
    let changed = client.change_secrets(&name, &change).await?;
    drop(change);
    match changed.deployment {
        Some(d) => {
            eprintln!(
                "secrets v{} of {name}: rolling out as a new release",
                changed.version
            );
            super::deploy::follow(g, &client, d, false).await
        }
        None => output::print(g.output, &changed, |c| {
            println!(
                "secrets v{} of {name} staged: the next deploy rolls them out",
                c.version
            )
        }),
    }
}

/// `tend server rotate-key`: asks the server to rotate its master key.
pub async fn rotate_key(g: &Global) -> Result<()> {
    let client = super::client(g)?;
    let r = client.rotate_key().await?;
    output::print(g.output, &r, |r| {
        println!(
            "master key rotated: new key {}; {} data key(s) re-wrapped; the old key is gone from the key file",
            r.master_key_id, r.data_keys
        )
    })
}
