//! Shells' startup files, and cargo's configuration.

use super::*;

// ---------------------------------------------------------------------------------------------
// cargo, rustup

pub(super) fn cargo(cx: &Ctx<'_>, _: &str, out: &mut Pins) {
    for d in up(cx.cwd) {
        for n in [".cargo/config.toml", ".cargo/config"] {
            out.add("cargo-config", &d.join(n), None);
        }
        for n in ["rust-toolchain.toml", "rust-toolchain"] {
            out.add("rust-toolchain", &d.join(n), None);
        }
    }
    for n in [".cargo/config.toml", ".cargo/config"] {
        if let Some(p) = home_file(cx, n) {
            out.add("cargo-config", &p, None);
        }
    }
    if let Some(p) = home_file(cx, ".rustup/settings.toml") {
        out.add("rustup-settings", &p, None);
    }
}

// ---------------------------------------------------------------------------------------------
// shells

pub(super) fn shell(cx: &Ctx<'_>, family: &str, out: &mut Pins) {
    let mut login = false;
    let mut interactive = false;
    for a in cx.argv.iter().skip(1) {
        if a == "--login" {
            login = true;
        } else if a == "--" || !a.starts_with('-') {
            break;
        } else if !a.starts_with("--") {
            login |= a.contains('l');
            interactive |= a.contains('i');
        }
    }
    let mut files: Vec<&str> = Vec::new();
    let zsh = family == "zsh";
    if zsh {
        files.extend(["/etc/zsh/zshenv", "/etc/zshenv", "~/.zshenv"]);
        if login {
            files.extend(["/etc/zsh/zprofile", "~/.zprofile", "~/.zlogin"]);
        }
        if interactive {
            files.extend(["/etc/zsh/zshrc", "~/.zshrc"]);
        }
    } else {
        if login {
            files.push("/etc/profile");
            if family == "bash" {
                files.extend(["~/.bash_profile", "~/.bash_login"]);
            }
            files.push("~/.profile");
        }
        if interactive && family == "bash" {
            files.extend(["/etc/bash.bashrc", "~/.bashrc"]);
        }
    }
    for f in files {
        let p = match f.strip_prefix("~/") {
            Some(rel) => match home_file(cx, rel) {
                Some(p) => p,
                None => continue,
            },
            None => PathBuf::from(f),
        };
        out.add("shell-startup", &p, None);
    }
}
