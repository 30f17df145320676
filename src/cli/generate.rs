//! Shell completions and man pages, generated from the same clap definition
//! the binary parses with, so they cannot drift from the flags it accepts.

use std::path::Path;

/// Writes the completion script of `shell` for `cmd` to `out`.
pub fn completions(
    mut cmd: clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
    out.flush()
}

/// Writes one man page for `cmd` (`volmig.1`) and one per subcommand
/// (`volmig-node.1`, …) into `dir`, creating it if needed.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)
}
