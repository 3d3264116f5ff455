//! `pas token new`: a fresh bearer token for the manager, and the line its tokens file needs.
//!
//! The token itself is printed once, on stdout, for the caller to keep (e.g. in `PAS_TOKEN`); the
//! manager only ever sees its hash (see `manager::auth`).

use crate::manager::auth::{Role, new_token, token_hash};

/// Arguments of `pas token new`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenNewArgs {
    /// Who the token is for; recorded as the owner of the tasks it dispatches.
    #[arg(long)]
    pub name: String,
    /// What it may do: `read` (status), `dispatch` (its own tasks) or `admin` (everything).
    #[arg(long, value_parser = ["read", "dispatch", "admin"])]
    pub role: String,
}

/// Runs `pas token new`.
pub fn run(args: TokenNewArgs) -> std::process::ExitCode {
    let name_ok = !args.name.is_empty()
        && !args
            .name
            .contains(|c: char| c.is_whitespace() || c == '#' || c == ';');
    let Some(role) = Role::parse(&args.role).filter(|_| name_ok) else {
        eprintln!("error: --name must be a non-empty word without spaces, '#' or ';'");
        return std::process::ExitCode::from(2);
    };
    let token = new_token();
    println!("token:  {token}");
    println!(
        "entry:  {} {} {}",
        args.name,
        role.as_str(),
        token_hash(&token)
    );
    eprintln!(
        "Add the entry line to the manager's auth.tokens_file (or its auth.tokens_env variable);\n\
         give the token to the caller (PAS_TOKEN for the pas CLI). It is not stored anywhere."
    );
    std::process::ExitCode::SUCCESS
}
