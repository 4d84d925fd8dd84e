//! `tend tokens`.

use anyhow::Result;
use tend_api::CreateToken;

use crate::cli::{Global, TokensArgs, TokensCommand};
use crate::output::{self, or_dash, print_table, table};

/// Runs a tokens command.
pub async fn run(g: &Global, args: TokensArgs) -> Result<()> {
    let client = super::client(g)?;
    match args.command.unwrap_or(TokensCommand::List { all: false }) {
        TokensCommand::List { all } => {
            let tokens = client.tokens(all).await?;
            output::print(g.output, &tokens, |tokens| {
                let mut t = table([
                    "name",
                    "role",
                    "teams",
                    "created",
                    "expires",
                    "last used",
                    "revoked",
                ]);
                for tok in tokens {
                    t.add_row(vec![
                        tok.name.to_string(),
                        if tok.admin { "admin" } else { "member" }.to_string(),
                        tok.teams
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        tok.created_at.to_string(),
                        or_dash(tok.expires_at),
                        or_dash(tok.last_used_at),
                        or_dash(tok.revoked_at),
                    ]);
                }
                print_table(&t);
            })
        }
        TokensCommand::Create {
            name,
            teams,
            admin,
            expires_in,
        } => {
            let req = CreateToken {
                name: super::name("token", &name)?,
                teams: teams
                    .iter()
                    .map(|t| super::name("team", t))
                    .collect::<Result<_>>()?,
                admin,
                expires_in,
            };
            let created = client.create_token(&req).await?;
            output::print(g.output, &created, |c| {
                println!("{}", c.token);
                eprintln!(
                    "token `{}` created; this is the only time its secret is shown",
                    c.info.name
                );
            })
        }
        TokensCommand::Revoke { name } => {
            let info = client.revoke_token(&name).await?;
            output::print(g.output, &info, |i| println!("token `{}` revoked", i.name))
        }
    }
}
