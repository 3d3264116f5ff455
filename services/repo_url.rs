//! Repository URLs a task may name instead of a local workspace (`repo_url`), and the allow-list
//! that decides which ones a programmer fetches.
//!
//! The manager and the programmer apply the same syntax rules ([`RepoUrl::parse`]); the
//! programmer is the authority on the allow-list (it holds the credentials), the manager checks it
//! too when its configuration has a `repositories:` section, so a refused URL is INVALID_ARGUMENT
//! at Dispatch rather than a routed task that fails.
//!
//! Rules, each because git would otherwise do something a caller must not choose:
//! - only `ssh://`, `https://`, `git://`, `file://` and scp-like `user@host:path`: git's other
//!   transports include `ext::<command>`, which runs a command;
//! - no leading `-` (an option to git), no whitespace or control characters, bounded length;
//! - no credentials in the URL (`https://user:token@…`, `https://token@…`, `ssh://user:pw@…`): a
//!   programmer authenticates with its own key or token, never with the caller's, and a secret in a
//!   URL would end up in logs, task records and error messages. A refused URL is echoed only in
//!   its [`sanitize`]d form;
//! - no `.` or `..` path segment and no percent-encoded dot or slash: the allow list matches the
//!   URL as written, and git (and curl under it) resolves `file:///srv/repos/../../home/x` or
//!   `https://host/acme/../other/x` to a repository outside the pattern that allowed it.

use thiserror::Error;
use tonic::Status;
use wildmatch::WildMatch;

/// Longest accepted URL (bytes).
pub const MAX_URL_LEN: usize = 2048;

/// Transports git may use for a task repository (`GIT_ALLOW_PROTOCOL` for every remote command).
pub const ALLOWED_PROTOCOLS: &str = "ssh:https:git:file";

/// Why a `repo_url` was refused. Messages show the URL only [`sanitize`]d.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RepoUrlError {
    /// Empty, too long, a leading `-`, whitespace or control characters.
    #[error("{url:?} {reason}")]
    Malformed {
        /// The URL, sanitized.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A scheme git would run or that is not one of ours.
    #[error(
        "{url:?} uses an unsupported transport; use ssh://, https://, git://, file:// or user@host:path"
    )]
    Scheme {
        /// The URL, sanitized.
        url: String,
    },
    /// User info that can hold a secret (`user:password@`, or any user on https://).
    #[error(
        "{url:?} embeds credentials; they are refused (the programmer uses its own configured key or token)"
    )]
    Credentials {
        /// The URL, sanitized.
        url: String,
    },
    /// Not matched by any `repositories.allow` pattern.
    #[error("{url:?} is not in repositories.allow")]
    NotAllowed {
        /// The URL (it has no credentials once parsed).
        url: String,
    },
}

/// A syntactically acceptable repository URL without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl(String);

impl RepoUrl {
    /// Checks `url` against the rules in the module docs.
    pub fn parse(url: &str) -> Result<RepoUrl, RepoUrlError> {
        let malformed = |reason| RepoUrlError::Malformed {
            url: sanitize(url),
            reason,
        };
        if url.is_empty() {
            return Err(malformed("must not be empty"));
        }
        if url.len() > MAX_URL_LEN {
            return Err(malformed("is too long"));
        }
        if url.starts_with('-') {
            return Err(malformed("must not start with '-'"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed(
                "must not contain whitespace or control characters",
            ));
        }
        let lower = url.to_ascii_lowercase();
        if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") {
            return Err(malformed(
                "must not contain a percent-encoded '.', '/' or '\\'",
            ));
        }
        let (scheme, path) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme, rest.find('/').map_or("", |at| &rest[at..])),
            None => ("", url.split_once(':').map_or("", |(_, path)| path)),
        };
        // A query or fragment ends the path only where git hands the URL to curl; for file://,
        // ssh and scp-like URLs `?` and `#` are part of the path (`x#/../..` climbs).
        let path = if matches!(scheme.to_ascii_lowercase().as_str(), "https" | "git") {
            path.split(['?', '#']).next().unwrap_or("")
        } else {
            path
        };
        if path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(malformed("must not contain a '.' or '..' path segment"));
        }
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if !matches!(scheme.as_str(), "ssh" | "https" | "git" | "file") {
                    return Err(RepoUrlError::Scheme { url: sanitize(url) });
                }
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                if let Some((user, _host)) = authority.rsplit_once('@') {
                    // ssh names an account (`git@`), not a secret; anything else in user info is one.
                    if scheme != "ssh" || user.contains(':') {
                        return Err(RepoUrlError::Credentials { url: sanitize(url) });
                    }
                }
                if scheme != "file" && authority.rsplit('@').next().unwrap_or("").is_empty() {
                    return Err(malformed("names no host"));
                }
                if rest.len() == authority.len() {
                    return Err(malformed("names no repository path"));
                }
            }
            None => {
                // scp-like `user@host:path` (never `host::…` transport syntax like `ext::cmd`).
                if url.contains("::") {
                    return Err(RepoUrlError::Scheme { url: sanitize(url) });
                }
                let Some((host, path)) = url.split_once(':') else {
                    return Err(RepoUrlError::Scheme { url: sanitize(url) });
                };
                if host.contains('/') || path.is_empty() || host.rsplit('@').next() == Some("") {
                    return Err(RepoUrlError::Scheme { url: sanitize(url) });
                }
                // `user:secret@host:path` reads as host `user` to git; refuse it as the
                // credential it looks like.
                let head = url.split('/').next().unwrap_or("");
                if head
                    .rsplit_once('@')
                    .is_some_and(|(user, _)| user.contains(':'))
                {
                    return Err(RepoUrlError::Credentials { url: sanitize(url) });
                }
            }
        }
        Ok(RepoUrl(url.to_string()))
    }

    /// The URL (no credentials: [`parse`](Self::parse) refused those).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `true` for `https://` URLs (the ones an https token applies to).
    pub fn is_https(&self) -> bool {
        self.0
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }

    /// `true` for ssh URLs, explicit or scp-like (the ones an ssh key applies to).
    pub fn is_ssh(&self) -> bool {
        self.0
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("ssh://"))
            || !self.0.contains("://")
    }
}

impl std::fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `url` with any user info replaced by `***` (`https://***@host/x`), for messages about URLs
/// that were refused and may hold a secret. Query strings and fragments are dropped too.
pub fn sanitize(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    // The user info ends at the last `@` before the path (scp-like: before the first `/`).
    let end = rest.find('/').unwrap_or(rest.len());
    let end = match scheme {
        Some(_) => end,
        None => rest[..end].rfind('@').map_or(0, |at| at + 1),
    };
    let (authority, path) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None if scheme.is_none() && !authority.is_empty() => "***".to_string(),
        None => authority.to_string(),
    };
    let cleaned: String = format!("{authority}{path}")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect();
    match scheme {
        Some(s) => format!("{s}://{cleaned}"),
        None => cleaned,
    }
}

/// The `repositories.allow` patterns: wildmatch (`*` any run of characters, `?` one).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    patterns: Vec<(String, WildMatch)>,
}

impl AllowList {
    /// A list from the configured patterns (an empty list allows nothing).
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            patterns: patterns
                .into_iter()
                .map(|p| (p.as_ref().to_string(), WildMatch::new(p.as_ref())))
                .collect(),
        }
    }

    /// `true` when some pattern matches the whole URL.
    pub fn allows(&self, url: &RepoUrl) -> bool {
        self.patterns.iter().any(|(_, p)| p.matches(url.as_str()))
    }
}

/// Field `field` (a caller's `repo_url`) parsed, and — when `allow` is given — allowed; otherwise
/// INVALID_ARGUMENT `repo_url: …` with the URL sanitized.
pub fn check_repo_url(
    field: &str,
    url: &str,
    allow: Option<&AllowList>,
) -> Result<RepoUrl, Status> {
    let invalid = |e: RepoUrlError| crate::workspace::invalid(field, &e.to_string());
    let parsed = RepoUrl::parse(url).map_err(invalid)?;
    if let Some(allow) = allow {
        if !allow.allows(&parsed) {
            return Err(invalid(RepoUrlError::NotAllowed {
                url: parsed.as_str().to_string(),
            }));
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_four_transports_and_scp_syntax() {
        for url in [
            "git://git.example/repo.git",
            "https://github.com/acme/tool.git",
            "ssh://git@git.example:2222/srv/repo.git",
            "file:///srv/repos/a.git",
            "git@github.com:acme/tool.git",
            "git.example:repo",
        ] {
            RepoUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn refuses_transports_options_and_junk() {
        for url in [
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::17",
            "http://plain.example/x.git",
            "-uupload-pack=touch /tmp/x",
            "--upload-pack=x",
            "/srv/repos/a.git",
            "relative/path",
            "",
            "git://host/a b",
            "git://host/a\nb",
            "git://",
            "git:///x",
            "https://host",
            // Out of the directory an allow-list pattern names.
            "file:///srv/repos/../../home/alice/private.git",
            "https://github.com/acme/../other/x.git",
            "https://github.com/acme/./x.git",
            "https://github.com/acme/%2e%2e/other/x.git",
            "https://github.com/acme/%2E%2E%2Fother/x.git",
            "git@github.com:acme/../other/x.git",
            "git.example:../x",
            "file:///srv/repos/x#/../../home/alice/p.git",
            "ssh://git@h/srv/repos/x?/../../other.git",
        ] {
            assert!(RepoUrl::parse(url).is_err(), "{url:?} must be refused");
        }
    }

    #[test]
    fn credentials_are_refused_and_never_echoed() {
        for url in [
            "https://user:s3cret-token@github.com/acme/x.git",
            "https://s3cret-token@github.com/acme/x.git",
            "ssh://git:s3cret-token@host/x.git",
            "git://s3cret-token@host/x.git",
            "user:s3cret-token@host:x.git",
        ] {
            let e = RepoUrl::parse(url).expect_err(url);
            assert!(
                matches!(e, RepoUrlError::Credentials { .. }),
                "{url}: {e:?}"
            );
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        let s = check_repo_url(
            "repo_url",
            "https://tok:s3cret@h/x?access_token=s3cret",
            None,
        )
        .expect_err("refused");
        assert!(s.message().starts_with("repo_url: "), "{}", s.message());
        assert!(!s.message().contains("s3cret"), "{}", s.message());
    }

    #[test]
    fn sanitize_hides_user_info_queries_and_fragments() {
        assert_eq!(sanitize("https://a:b@h/x.git?t=1#f"), "https://***@h/x.git");
        assert_eq!(sanitize("git@h:x.git"), "***@h:x.git");
        assert_eq!(sanitize("git://h/x.git"), "git://h/x.git");
    }

    #[test]
    fn allow_list_matches_whole_urls() {
        let allow = AllowList::new(["git://git.example/*", "file:///srv/repos/*"]);
        let ok = |u: &str| allow.allows(&RepoUrl::parse(u).expect(u));
        assert!(ok("git://git.example/a.git"));
        assert!(ok("file:///srv/repos/b"));
        assert!(!ok("git://git.example.evil/a.git"));
        assert!(!ok("git://other/git://git.example/a"));
        assert!(!ok("file:///srv/other/b"));
        assert!(
            RepoUrl::parse("file:///srv/repos/../other/b").is_err(),
            "`*` would match it: parse refuses it first"
        );
        let s = check_repo_url("repo_url", "git://other/x", Some(&allow)).expect_err("refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "repo_url: \"git://other/x\" is not in repositories.allow"
        );
        assert!(
            !AllowList::default().allows(&RepoUrl::parse("git://h/x").expect("url")),
            "an empty list allows nothing"
        );
    }
}
