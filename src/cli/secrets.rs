//! Where secrets come from: files, the environment, or a prompt; never arguments.

use crate::store::keys::Secret;
use std::io::IsTerminal;
use std::path::Path;
use zeroize::Zeroizing;

/// Names of the variables that carry one secret: (passphrase, raw key).
pub type Names = (&'static str, &'static str);
pub const CURRENT: Names = ("PUSH_OPERATOR_PASSWORD", "PUSH_OPERATOR_KEY");
pub const PREVIOUS: Names = ("PUSH_OPERATOR_PREVIOUS_PASSWORD", "PUSH_OPERATOR_PREVIOUS_KEY");
pub const NEW: Names = ("PUSH_OPERATOR_NEW_PASSWORD", "PUSH_OPERATOR_NEW_KEY");

fn read(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
    );
    Ok(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string()))
}

fn env(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).map(Zeroizing::new)
}

fn password(text: Zeroizing<String>, from: &str) -> anyhow::Result<Secret> {
    if text.is_empty() {
        anyhow::bail!("the passphrase from {from} is empty");
    }
    Ok(Secret::Password(text))
}

/// The one secret given by these files or variables; two at once is an error.
pub fn given(password_file: Option<&Path>, key_file: Option<&Path>, names: Names) -> anyhow::Result<Option<Secret>> {
    let (pw_var, key_var) = names;
    let mut found = Vec::new();
    if let Some(p) = password_file {
        found.push(password(read(p)?, &p.display().to_string())?);
    }
    if let Some(p) = key_file {
        found.push(Secret::parse_raw(&read(p)?).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?);
    }
    if found.is_empty() {
        if let Some(v) = env(pw_var) {
            found.push(password(v, pw_var)?);
        }
        if let Some(v) = env(key_var) {
            found.push(Secret::parse_raw(&v).map_err(|e| anyhow::anyhow!("{key_var}: {e}"))?);
        }
    }
    if found.len() > 1 {
        anyhow::bail!("give a passphrase or a raw key, not both ({pw_var} / {key_var} and their files)");
    }
    Ok(found.pop())
}

pub fn can_prompt() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks on the terminal (twice when `confirm`).
pub fn prompt(what: &str, confirm: bool) -> anyhow::Result<Secret> {
    let first = Zeroizing::new(rpassword::prompt_password(format!("enter the {what}: "))?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password(format!("enter the {what} again: "))?);
        if *again != *first {
            anyhow::bail!("the two passphrases differ: nothing was changed");
        }
    }
    password(first, "the prompt")
}

/// The new secret of `key add` and `key passwd`.
pub fn new_secret(password_file: Option<&Path>, key_file: Option<&Path>) -> anyhow::Result<Secret> {
    match given(password_file, key_file, NEW)? {
        Some(s) => Ok(s),
        None if can_prompt() => prompt("new passphrase", true),
        None => anyhow::bail!(
            "no new key given: set PUSH_OPERATOR_NEW_PASSWORD (or PUSH_OPERATOR_NEW_KEY), or use --new-password-file (or --new-key-file)"
        ),
    }
}
