//! What the hidden `--generate-man` and `--generate-completions SHELL` options print: the man page
//! (roff, through `clap_mangen`) and the shell completions (`clap_complete`) of an adapter's binary,
//! both rendered from the one clap definition in [`crate::cli`], so they never drift from `--help`.
//! Packaging runs them (`.ci/deb.sh`); an operator who used `cargo install` can too:
//!
//! ```text
//! socks4-tokio --generate-man > /usr/local/share/man/man1/socks4-tokio.1
//! socks4-tokio --generate-completions bash > /etc/bash_completion.d/socks4-tokio
//! ```

use std::io::{self, Write};

use clap::CommandFactory;

use crate::cli::ServerArgs;

// The shells `--generate-completions` knows (clap_complete's).
pub(crate) use clap_complete::Shell;

/// The shared command line, named for the binary `name` (the derive names it after this crate):
/// its `--version`, usage, man page and completions say `name`.
pub(crate) fn command(name: &str) -> clap::Command {
    ServerArgs::command().name(name.to_owned()).bin_name(name.to_owned())
}

/// Writes the man page (section 1) of the binary `name` to `out`.
pub(crate) fn man_page(name: &str, out: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(command(name)).render(out)
}

/// Writes the completion script of the binary `name` for `shell` to `out`.
pub(crate) fn completions(shell: Shell, name: &str, out: &mut dyn Write) -> io::Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut command(name), name, &mut buf);
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn man(name: &str) -> String {
        let mut out = Vec::new();
        man_page(name, &mut out).unwrap();
        // As a reader sees it: roff escapes a hyphen as `\-`, and switches fonts with `\fB` .. `\fR`.
        let text = String::from_utf8(out).unwrap().replace("\\-", "-");
        ["\\fB", "\\fI", "\\fR", "\\fP"].iter().fold(text, |t, font| t.replace(font, ""))
    }

    #[test]
    fn the_man_page_has_every_option_and_its_variable() {
        let text = man("socks4-example");
        assert!(text.starts_with(".ie"), "roff: {}", &text[..80]);
        assert!(text.contains(".TH socks4-example 1"), "titled for the binary:\n{text}");
        let cmd = ServerArgs::command();
        let mut visible = 0;
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            visible += 1;
            assert!(text.contains(&format!("--{long}")), "--{long} is not in the man page:\n{text}");
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(text.contains(&*env), "--{long}'s variable {env} is not in the man page");
            }
        }
        assert!(visible > 30, "{visible} options");
        assert!(text.contains("hash-token"), "the subcommand");
        assert!(!text.contains("--generate-"), "the generators stay hidden");
    }

    #[test]
    fn named_for_the_binary() {
        let e = command("socks4-example").try_get_matches_from(["anything", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(e.to_string(), format!("socks4-example {}\n", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn completions_for_each_shell() {
        for (shell, marker) in [
            (Shell::Bash, "-o default socks4-example"),
            (Shell::Zsh, "#compdef socks4-example"),
            (Shell::Fish, "complete -c socks4-example"),
        ] {
            let mut out = Vec::new();
            completions(shell, "socks4-example", &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(marker), "{shell}: {marker:?} not in\n{text}");
            assert!(text.contains("listen"), "{shell}: no --listen");
            assert!(text.contains("hash-token"), "{shell}: no subcommand");
            // clap_complete offers hidden options too (it hides only hidden values): the generators
            // are completed, harmlessly; they stay out of --help and the man page.
        }
        let mut bash = Vec::new();
        completions(Shell::Bash, "socks4-example", &mut bash).unwrap();
        assert!(String::from_utf8(bash).unwrap().contains("--listen"));
    }
}
