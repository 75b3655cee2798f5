//! Tools configured only from the home directory (rc files, init scripts) and what they pin.

use super::*;

/// One entry of [`home_tool`]: a tool that reads configuration able to run code from HOME (or
/// /etc), the files, and the settings the card quotes.
struct HomeTool {
    role: &'static str,
    /// Files relative to the child's HOME (`~/`) or absolute.
    files: &'static [&'static str],
    /// Lower-case substrings of a line that make it shown (`*` for every non-comment line).
    shown: &'static [&'static str],
}

/// The rows of [`TABLE`] for tools configured from HOME, by tool.
fn home_tool(family: &str) -> Option<HomeTool> {
    let t = match family {
        "docker" => HomeTool {
            role: "docker-config",
            files: &["~/.docker/config.json"],
            shown: &[
                "credsstore",
                "credhelpers",
                "clipluginsextradirs",
                "proxies",
                "currentcontext",
            ],
        },
        "kubectl" | "helm" | "k9s" | "kubectx" | "kustomize" => HomeTool {
            role: "kubeconfig",
            files: &["~/.kube/config"],
            shown: &[
                "command:",
                "cmd-path",
                "auth-provider",
                "proxy-url",
                "args:",
            ],
        },
        "curl" => HomeTool {
            role: "curlrc",
            files: &["~/.curlrc", "~/.config/.curlrc", "~/_curlrc"],
            shown: &["*"],
        },
        "wget" => HomeTool {
            role: "wgetrc",
            files: &["~/.wgetrc", "/etc/wgetrc", "/usr/local/etc/wgetrc"],
            shown: &["*"],
        },
        "ssh" | "scp" | "sftp" | "rsync" | "git" | "ansible" | "mosh" => HomeTool {
            role: "ssh-config",
            files: &["~/.ssh/config", "/etc/ssh/ssh_config"],
            shown: &[
                "proxycommand",
                "localcommand",
                "permitlocalcommand",
                "match",
                "knownhostscommand",
                "proxyjump",
                "remotecommand",
                "include",
                "pkcs11provider",
                "securitykeyprovider",
                "sendenv",
                "setenv",
                "forwardagent",
                "controlpath",
            ],
        },
        "aws" | "terraform" | "sam" | "cdk" => HomeTool {
            role: "aws-config",
            files: &["~/.aws/config", "~/.aws/credentials"],
            shown: &[
                "credential_process",
                "credential_source",
                "endpoint_url",
                "ca_bundle",
                "[profile",
                "source_profile",
            ],
        },
        "mysql" | "mysqldump" | "mariadb" | "mysqladmin" => HomeTool {
            role: "mysql-config",
            files: &["~/.my.cnf", "/etc/my.cnf", "/etc/mysql/my.cnf"],
            shown: &[
                "pager",
                "!include",
                "plugin",
                "init-command",
                "init_command",
                "system",
                "tee",
            ],
        },
        "psql" | "pg_dump" | "pg_restore" => HomeTool {
            role: "psqlrc",
            files: &[
                "~/.psqlrc",
                "~/.pg_service.conf",
                "/etc/postgresql-common/psqlrc",
            ],
            shown: &["*"],
        },
        _ => return None,
    };
    Some(t)
}

/// Lines of a HOME configuration file the card quotes (`shown` substrings; `*` every line that
/// is not a comment), at most 12.
fn home_detail(text: &str, shown: &[&str]) -> Option<String> {
    let all = shown.contains(&"*");
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with("--")
        })
        .filter(|l| {
            let low = l.to_ascii_lowercase();
            all || shown.iter().any(|k| low.contains(k))
        })
        .map(|l| keyveil_proto::display::clip(l, 160))
        .collect();
    let n = lines.len();
    let mut v: Vec<String> = lines.into_iter().take(12).collect();
    if n > 12 {
        v.push(format!("... {} more lines", n - 12));
    }
    (!v.is_empty()).then(|| format!("runs or redirects: {}", v.join("; ")))
}

/// Pins the HOME and system configuration of a tool from [`home_tool`]; for docker, also every
/// CLI plugin in `~/.docker/cli-plugins` (each on the card, the directory fingerprinted), and
/// for ssh the files named by literal `Include` lines.
pub(super) fn home_tools(cx: &Ctx<'_>, family: &str, out: &mut Pins) {
    let Some(t) = home_tool(family) else { return };
    let mut queue: Vec<PathBuf> = t
        .files
        .iter()
        .filter_map(|f| match f.strip_prefix("~/") {
            Some(rel) => home_file(cx, rel),
            None => Some(PathBuf::from(f)),
        })
        .collect();
    let mut n = 0;
    while let Some(f) = queue.pop() {
        n += 1;
        if n > MAX_FILES {
            out.unpinnable(&f, "more included configuration files than keyveil pins");
            break;
        }
        let Some(text) = out.add_text(t.role, &f, |x| home_detail(x, t.shown)) else {
            continue;
        };
        if t.role == "ssh-config" {
            for l in text.lines() {
                let l = l.trim();
                let Some(rest) = l
                    .get(..8)
                    .filter(|k| k.eq_ignore_ascii_case("include "))
                    .and_then(|_| l.get(8..))
                else {
                    continue;
                };
                for inc in rest.split_whitespace() {
                    let p = match inc.strip_prefix("~/") {
                        Some(r) => home_file(cx, r).unwrap_or_default(),
                        None if inc.starts_with('/') => PathBuf::from(inc),
                        // ssh_config(5): relative to ~/.ssh for the user's file, /etc/ssh else.
                        None => f.parent().unwrap_or(Path::new("/")).join(inc),
                    };
                    if inc.contains(['*', '?', '[']) {
                        if let Some(dir) = p.parent() {
                            out.add_dir("config-dir", dir, "ssh Include directory");
                            if let Ok(rd) = std::fs::read_dir(dir) {
                                queue.extend(rd.filter_map(Result::ok).map(|e| e.path()));
                            }
                        }
                    } else {
                        queue.push(p);
                    }
                }
            }
        }
    }
    if family == "docker" {
        // docker(1) CLI plugins: $DOCKER_CONFIG/cli-plugins (DOCKER_CONFIG never passes) first.
        if let Some(dir) = home_file(cx, ".docker/cli-plugins") {
            out.add_dir(
                crate::pin::path_dirs::ROLE,
                &dir,
                "docker CLI plugins (run with the environment)",
            );
            pin_dir(out, "docker-cli-plugin", &dir, |_| true);
        }
    }
}
