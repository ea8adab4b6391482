//! The OpenSSH `allowed_signers` file (ssh-keygen(1), section ALLOWED SIGNERS): who may sign what, with which
//! key, and when.
//!
//! Each line is `principals [options] keytype base64-key [comment]`:
//! - `principals`: comma-separated patterns (`*` and `?` wildcards, `!` to exclude), optionally in quotes;
//! - options, comma-separated: `cert-authority`, `namespaces="pattern,…"`, `valid-after=TIME`,
//!   `valid-before=TIME`, where TIME is `YYYYMMDD[HHMM[SS]]` with an optional `Z` for UTC (without it, the
//!   local time zone, as `ssh-keygen` reads it);
//! - blank lines and lines starting with `#` are ignored; CRLF line endings are accepted.
//!
//! writeback does not accept SSH certificates, so a `cert-authority` line never authorizes a plain key.

use std::path::Path;

use base64::Engine;
use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use ssh_key::PublicKey;

use crate::plan::timestamp;

/// The environment variable that names the allowed_signers file when `--allowed-signers` is not given.
pub const ALLOWED_SIGNERS_ENV: &str = "WRITEBACK_ALLOWED_SIGNERS";

/// A malformed line of an allowed_signers file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct ParseError {
    /// The file (or other source) name.
    pub source_name: String,
    /// The 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

impl From<ParseError> for crate::Error {
    fn from(e: ParseError) -> crate::Error {
        crate::Error::Input { location: format!("{}:{}", e.source_name, e.line), message: e.message }
    }
}

/// Why a key is not allowed to sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// No line of the file holds the key.
    #[error("the key {fingerprint} is not in {source_name}")]
    KeyUnknown {
        /// The key's fingerprint.
        fingerprint: String,
        /// The allowed_signers file.
        source_name: String,
    },
    /// The key appears only as a certificate authority.
    #[error("the key {fingerprint} is listed in {source_name} only as a cert-authority (line {line}); writeback does not accept certificates, list the key itself")]
    CertificateAuthorityOnly {
        /// The key's fingerprint.
        fingerprint: String,
        /// The allowed_signers file.
        source_name: String,
        /// The first cert-authority line with the key.
        line: u64,
    },
    /// The key is listed, but not for the principal the file claims.
    #[error(
        "the file says it was signed by '{claimed}', but {source_name} lists the key {fingerprint} only for {listed}"
    )]
    PrincipalNotListed {
        /// The principal the signed file names.
        claimed: String,
        /// The key's fingerprint.
        fingerprint: String,
        /// The principals listed for the key.
        listed: String,
        /// The allowed_signers file.
        source_name: String,
    },
    /// The key is listed, but its `namespaces=` does not include this one.
    #[error("the key {fingerprint} ({principal}) is not allowed to sign '{namespace}' files ({location} allows namespaces=\"{allowed}\")")]
    NamespaceNotAllowed {
        /// The namespace asked for.
        namespace: String,
        /// The key's fingerprint.
        fingerprint: String,
        /// The principal of the line.
        principal: String,
        /// The namespaces the line allows.
        allowed: String,
        /// The line: `file:line`.
        location: String,
    },
    /// The time of the check is before the key's `valid-after`.
    #[error("the key {fingerprint} ({principal}) starts being valid at {} (valid-after at {location}), and this check is at {}; it is not trusted yet, so wait, or ask whoever keeps the allowed_signers file", timestamp::format(valid_after), timestamp::format(at))]
    NotYetValid {
        /// The bound.
        valid_after: DateTime<Utc>,
        /// The time of the check.
        at: DateTime<Utc>,
        /// The key's fingerprint.
        fingerprint: String,
        /// The principal of the line.
        principal: String,
        /// The line: `file:line`.
        location: String,
    },
    /// The time of the check is after the key's `valid-before`.
    #[error("the key {fingerprint} ({principal}) stopped being valid at {} (valid-before at {location}), and this check is at {}; what it signed is no longer trusted: ask for it to be signed again with a key that is valid now", timestamp::format(valid_before), timestamp::format(at))]
    NoLongerValid {
        /// The bound.
        valid_before: DateTime<Utc>,
        /// The time of the check.
        at: DateTime<Utc>,
        /// The key's fingerprint.
        fingerprint: String,
        /// The principal of the line.
        principal: String,
        /// The line: `file:line`.
        location: String,
    },
}

/// One line of an allowed_signers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The 1-based line number.
    pub line: u64,
    /// The principal patterns, as written (a leading `!` excludes).
    pub principals: Vec<String>,
    /// The line has `cert-authority`.
    pub cert_authority: bool,
    /// The namespace patterns of `namespaces=`, if given.
    pub namespaces: Option<Vec<String>>,
    /// `valid-after=`, if given.
    pub valid_after: Option<DateTime<Utc>>,
    /// `valid-before=`, if given.
    pub valid_before: Option<DateTime<Utc>>,
    /// The key type, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The raw public key blob.
    pub key_blob: Vec<u8>,
}

impl Entry {
    /// True when the line lets its key sign files of `namespace` (a line without `namespaces=` allows every
    /// namespace).
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|patterns| match_pattern_list(namespace, patterns) == Match::Yes)
    }
}

/// A parsed allowed_signers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSigners {
    source_name: String,
    entries: Vec<Entry>,
}

impl AllowedSigners {
    /// Parses the text of an allowed_signers file; `source_name` names it in messages.
    pub fn parse(text: &str, source_name: &str) -> Result<AllowedSigners, ParseError> {
        let mut entries = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index as u64 + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = parse_line(line, line_no).map_err(|message| ParseError {
                source_name: source_name.to_string(),
                line: line_no,
                message,
            })?;
            entries.push(entry);
        }
        Ok(AllowedSigners { source_name: source_name.to_string(), entries })
    }

    /// Reads and parses an allowed_signers file.
    pub fn load(path: &Path) -> crate::Result<AllowedSigners> {
        let bytes = std::fs::read(path).map_err(|e| crate::Error::read(path, e))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| crate::Error::input(path, "the allowed_signers file is not UTF-8 text"))?;
        Ok(AllowedSigners::parse(&text, &path.display().to_string())?)
    }

    /// The name messages use for the file.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The lines, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Checks that `key` may sign for `namespace` at time `at`, as `claimed_principal` when given. Returns the
    /// principal: the claimed one, or else the first principal of the line that allows the key.
    ///
    /// When several lines hold the key, any one that passes every check is enough; otherwise the error is
    /// the one of the line that got furthest (principal, then namespace, then validity window).
    pub fn authorize(
        &self,
        key: &PublicKey,
        namespace: &str,
        claimed_principal: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<String, TrustError> {
        self.authorize_inner(key, namespace, claimed_principal, Some(at))
    }

    /// Like [`AllowedSigners::authorize`], but without a time: used when the signing time cannot be known.
    pub fn authorize_any_time(&self, key: &PublicKey, namespace: &str) -> Result<String, TrustError> {
        self.authorize_inner(key, namespace, None, None)
    }

    fn authorize_inner(
        &self,
        key: &PublicKey,
        namespace: &str,
        claimed: Option<&str>,
        at: Option<DateTime<Utc>>,
    ) -> Result<String, TrustError> {
        let fingerprint = super::sshsig::fingerprint(key);
        let blob = key.to_bytes().unwrap_or_default();
        let mut best: Option<(u8, TrustError)> = None;
        let mut keep = |rank: u8, err: TrustError| {
            if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                best = Some((rank, err));
            }
        };
        for entry in self.entries.iter().filter(|e| e.key_blob == blob) {
            if entry.cert_authority {
                keep(
                    0,
                    TrustError::CertificateAuthorityOnly {
                        fingerprint: fingerprint.clone(),
                        source_name: self.source_name.clone(),
                        line: entry.line,
                    },
                );
                continue;
            }
            let principal = match claimed {
                Some(claimed) => {
                    if match_pattern_list(claimed, &entry.principals) != Match::Yes {
                        keep(
                            1,
                            TrustError::PrincipalNotListed {
                                claimed: claimed.to_string(),
                                fingerprint: fingerprint.clone(),
                                listed: entry.principals.join(","),
                                source_name: self.source_name.clone(),
                            },
                        );
                        continue;
                    }
                    claimed.to_string()
                }
                None => entry.principals.iter().find(|p| !p.starts_with('!')).cloned().unwrap_or_default(),
            };
            if let Some(namespaces) = &entry.namespaces {
                if match_pattern_list(namespace, namespaces) != Match::Yes {
                    keep(
                        2,
                        TrustError::NamespaceNotAllowed {
                            namespace: namespace.to_string(),
                            fingerprint: fingerprint.clone(),
                            principal: principal.clone(),
                            allowed: namespaces.join(","),
                            location: format!("{}:{}", self.source_name, entry.line),
                        },
                    );
                    continue;
                }
            }
            if let Some(at) = at {
                if let Some(after) = entry.valid_after.filter(|after| at < *after) {
                    keep(
                        3,
                        TrustError::NotYetValid {
                            valid_after: after,
                            at,
                            fingerprint: fingerprint.clone(),
                            principal,
                            location: format!("{}:{}", self.source_name, entry.line),
                        },
                    );
                    continue;
                }
                if let Some(before) = entry.valid_before.filter(|before| at > *before) {
                    keep(
                        3,
                        TrustError::NoLongerValid {
                            valid_before: before,
                            at,
                            fingerprint: fingerprint.clone(),
                            principal,
                            location: format!("{}:{}", self.source_name, entry.line),
                        },
                    );
                    continue;
                }
            }
            return Ok(principal);
        }
        Err(best
            .map(|(_, e)| e)
            .unwrap_or(TrustError::KeyUnknown { fingerprint, source_name: self.source_name.clone() }))
    }

    /// The principals (patterns, as written) listed for `key` on lines that are not `cert-authority`.
    pub fn principals_of(&self, key: &PublicKey) -> Vec<String> {
        let blob = key.to_bytes().unwrap_or_default();
        self.entries
            .iter()
            .filter(|e| e.key_blob == blob && !e.cert_authority)
            .flat_map(|e| e.principals.iter().cloned())
            .collect()
    }
}

/// The first pair of principals by which two principal lists (each as written in allowed_signers, with
/// wildcards and `!` exclusions) could name the same person: a principal of one that the other's patterns
/// match, compared case-insensitively. `None` when no name of either list is matched by the other.
pub fn principals_overlap(a: &[String], b: &[String]) -> Option<(String, String)> {
    let lower = |list: &[String]| list.iter().map(|p| p.to_lowercase()).collect::<Vec<_>>();
    let (la, lb) = (lower(a), lower(b));
    for (i, name) in la.iter().enumerate() {
        if name.starts_with('!') {
            continue;
        }
        if match_pattern_list(name, &lb) == Match::Yes {
            let by = lb.iter().position(|p| !p.starts_with('!') && match_pattern(name, p)).unwrap_or(0);
            return Some((a[i].clone(), b.get(by).cloned().unwrap_or_default()));
        }
    }
    for (i, name) in lb.iter().enumerate() {
        if name.starts_with('!') {
            continue;
        }
        if match_pattern_list(name, &la) == Match::Yes {
            let by = la.iter().position(|p| !p.starts_with('!') && match_pattern(name, p)).unwrap_or(0);
            return Some((a.get(by).cloned().unwrap_or_default(), b[i].clone()));
        }
    }
    None
}

/// The allowed_signers line that lets `key` sign as `principal` for `namespaces`, e.g.
/// `alice@contoso.com namespaces="writeback-plan" ssh-ed25519 AAAA…`.
pub fn line_for(principal: &str, key: &PublicKey, namespaces: &[&str]) -> String {
    let bare = PublicKey::new(key.key_data().clone(), "");
    format!("{principal} namespaces=\"{}\" {}", namespaces.join(","), bare.to_openssh().unwrap_or_default())
}

/// Checks that a principal can stand alone on an allowed_signers line: not empty, and free of whitespace,
/// quotes, commas and pattern characters.
pub fn check_principal(principal: &str) -> Result<(), String> {
    if principal.is_empty() {
        return Err("the principal is empty".into());
    }
    if let Some(c) = principal.chars().find(|c| c.is_whitespace() || c.is_control() || "\",*?!#".contains(*c)) {
        return Err(format!(
            "the principal '{principal}' contains {c:?}; use a plain name such as alice@contoso.com (no spaces, quotes, commas, *, ?, ! or #)"
        ));
    }
    Ok(())
}

/// Splits off the next whitespace-delimited field; a field starting with `"` runs to the closing quote, and
/// quotes inside a field (as in `namespaces="a,b"`) protect spaces.
fn next_field(rest: &str) -> Result<(&str, &str), String> {
    let rest = rest.trim_start();
    let mut in_quote = false;
    for (i, c) in rest.char_indices() {
        match c {
            '"' => in_quote = !in_quote,
            c if c.is_whitespace() && !in_quote => return Ok((&rest[..i], &rest[i..])),
            _ => {}
        }
    }
    if in_quote {
        return Err("a quote is not closed".into());
    }
    Ok((rest, ""))
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

fn is_key_type(field: &str) -> bool {
    KEY_TYPES.contains(&field) || field.ends_with("-cert-v01@openssh.com")
}

fn parse_line(line: &str, line_no: u64) -> Result<Entry, String> {
    let (principals_field, rest) = next_field(line)?;
    let principals_field = unquote(principals_field);
    let principals: Vec<String> = principals_field.split(',').map(str::to_string).collect();
    if principals.iter().any(|p| p.is_empty()) {
        return Err(format!("the principals field '{principals_field}' has an empty entry"));
    }
    let (mut field, mut rest) = next_field(rest)?;
    if field.is_empty() {
        return Err("the line has principals but no key (expected: principals [options] keytype base64-key)".into());
    }
    let mut entry = Entry {
        line: line_no,
        principals,
        cert_authority: false,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key_type: String::new(),
        key_blob: Vec::new(),
    };
    if !is_key_type(field) {
        parse_options(field, &mut entry)?;
        (field, rest) = next_field(rest)?;
        if field.is_empty() {
            return Err("the line has no key after its options".into());
        }
        if !is_key_type(field) {
            return Err(format!("'{field}' is not an SSH key type (expected e.g. ssh-ed25519)"));
        }
    }
    entry.key_type = field.to_string();
    let (b64, _comment) = next_field(rest)?;
    if b64.is_empty() {
        return Err(format!("the {field} key is missing its base64 text"));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| format!("the key text after {field} is not valid base64"))?;
    let inner = blob
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .and_then(|n| blob.get(4..4usize.checked_add(n as usize)?));
    if inner != Some(field.as_bytes()) {
        return Err(format!("the key is not a {field} key (its data names another type)"));
    }
    if field == "ssh-ed25519" {
        PublicKey::from_bytes(&blob).map_err(|e| format!("the ssh-ed25519 key is malformed: {e}"))?;
    }
    entry.key_blob = blob;
    Ok(entry)
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

fn parse_options(field: &str, entry: &mut Entry) -> Result<(), String> {
    // Split on commas outside quotes.
    let mut options = Vec::new();
    let mut start = 0;
    let mut in_quote = false;
    for (i, c) in field.char_indices() {
        match c {
            '"' => in_quote = !in_quote,
            ',' if !in_quote => {
                options.push(&field[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    options.push(&field[start..]);
    for option in options {
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("cert-authority", None) => entry.cert_authority = true,
            ("namespaces", Some(v)) => {
                let v = quoted_value(v, "namespaces")?;
                let list: Vec<String> = v.split(',').map(str::to_string).collect();
                if list.iter().any(|n| n.is_empty()) {
                    return Err(format!("namespaces=\"{v}\" has an empty entry"));
                }
                entry.namespaces = Some(list);
            }
            ("valid-after", Some(v)) => entry.valid_after = Some(parse_time(quoted_value(v, "valid-after")?)?),
            ("valid-before", Some(v)) => entry.valid_before = Some(parse_time(quoted_value(v, "valid-before")?)?),
            _ => {
                return Err(format!(
                "unknown option '{option}' (allowed: cert-authority, namespaces=\"…\", valid-after=…, valid-before=…)"
            ))
            }
        }
    }
    Ok(())
}

fn quoted_value<'a>(v: &'a str, name: &str) -> Result<&'a str, String> {
    match v.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"').ok_or_else(|| format!("the value of {name} has an unmatched quote")),
        None if v.contains('"') => Err(format!("the value of {name} has a misplaced quote")),
        None => Ok(v),
    }
}

/// Parses `YYYYMMDD[HHMM[SS]][Z]`: UTC with `Z`, else local time (as `ssh-keygen` does).
pub fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    let bad = || format!("'{raw}' is not a time of the form YYYYMMDD[HHMM[SS]][Z]");
    let (digits, utc) = match raw.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (raw, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 8 | 12 | 14) {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| digits.get(range).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    let date = NaiveDate::from_ymd_opt(num(0..4) as i32, num(4..6), num(6..8)).ok_or_else(bad)?;
    let (h, m, s) = match digits.len() {
        8 => (0, 0, 0),
        12 => (num(8..10), num(10..12), 0),
        _ => (num(8..10), num(10..12), num(12..14)),
    };
    let naive: NaiveDateTime = date.and_hms_opt(h, m, s).ok_or_else(bad)?;
    if utc {
        Ok(Utc.from_utc_datetime(&naive))
    } else {
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("'{raw}' does not exist in the local time zone; add Z and give it in UTC"))
    }
}

/// The outcome of matching a string against a pattern list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// A positive pattern matched and no negated one did.
    Yes,
    /// Nothing matched.
    No,
    /// A negated pattern matched.
    Excluded,
}

/// OpenSSH's `match_pattern_list`: any matching `!pattern` excludes; otherwise any matching pattern includes.
fn match_pattern_list(s: &str, patterns: &[String]) -> Match {
    let mut positive = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(negated) if match_pattern(s, negated) => return Match::Excluded,
            Some(_) => {}
            None if match_pattern(s, pattern) => positive = true,
            None => {}
        }
    }
    if positive {
        Match::Yes
    } else {
        Match::No
    }
}

/// Glob matching with `*` (any run) and `?` (any one character), case-sensitive.
fn match_pattern(s: &str, pattern: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut si, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == s.get(si) => {
                si += 1;
                pi += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key() -> PublicKey {
        ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap().public_key().clone()
    }

    fn b64(k: &PublicKey) -> String {
        k.to_openssh().unwrap()
    }

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    #[test]
    fn patterns() {
        assert!(match_pattern("alice@contoso.com", "*@contoso.com"));
        assert!(match_pattern("alice@contoso.com", "alic?@*"));
        assert!(!match_pattern("alice@contoso.com", "*@contoso.org"));
        assert!(match_pattern("", "*"));
        assert!(!match_pattern("a", ""));
        assert!(match_pattern("abcbd", "a*b?"));
        let list = vec!["*@contoso.com".to_string(), "!mallory@contoso.com".to_string()];
        assert_eq!(match_pattern_list("alice@contoso.com", &list), Match::Yes);
        assert_eq!(match_pattern_list("mallory@contoso.com", &list), Match::Excluded);
        assert_eq!(match_pattern_list("bob@fabrikam.com", &list), Match::No);
    }

    #[test]
    fn parses_the_forms_of_the_man_page() {
        let k = key();
        let text = format!(
            "# comment\r\n\r\n  alice@contoso.com,bob@contoso.com {k}\r\n\
             \"carol@contoso.com\" namespaces=\"writeback-plan,file\",valid-after=\"20240101\",valid-before=20991231235959Z {k} trailing comment\n\
             *@contoso.com cert-authority {k}\n",
            k = b64(&k)
        );
        let signers = AllowedSigners::parse(&text, "as").unwrap();
        assert_eq!(signers.entries().len(), 3);
        let e = &signers.entries()[1];
        assert_eq!(e.line, 4);
        assert_eq!(e.principals, vec!["carol@contoso.com"]);
        assert_eq!(e.namespaces.as_deref(), Some(&["writeback-plan".to_string(), "file".to_string()][..]));
        assert_eq!(e.valid_before, Some(Utc.with_ymd_and_hms(2099, 12, 31, 23, 59, 59).unwrap()));
        assert!(signers.entries()[2].cert_authority);
    }

    #[test]
    fn errors_name_the_line() {
        let k = b64(&key());
        for (text, needle) in [
            (format!("\nalice {k}\nbob"), "as:3: the line has principals but no key"),
            (format!("alice bogus=1 {k}"), "as:1: unknown option 'bogus=1'"),
            (format!("alice valid-after=2024 {k}"), "as:1: '2024' is not a time"),
            ("alice ssh-ed25519 !!!!".to_string(), "as:1: the key text after ssh-ed25519 is not valid base64"),
            (format!("alice namespaces=\"a {k}"), "as:1: a quote is not closed"),
            (k.replacen("ssh-ed25519", "alice ssh-rsa", 1), "as:1: the key is not a ssh-rsa key"),
        ] {
            let err = AllowedSigners::parse(&text, "as").unwrap_err();
            assert!(err.to_string().starts_with(needle), "{err} / {needle}");
        }
    }

    #[test]
    fn authorize_distinguishes_each_refusal() {
        let k = key();
        let other = key();
        let text = format!(
            "alice@contoso.com namespaces=\"writeback-plan\",valid-after=20250101Z,valid-before=20251231Z {}\n",
            b64(&k)
        );
        let s = AllowedSigners::parse(&text, "as").unwrap();
        let ns = "writeback-plan";
        assert_eq!(s.authorize(&k, ns, Some("alice@contoso.com"), t(2025, 6, 1)).unwrap(), "alice@contoso.com");
        assert_eq!(s.authorize(&k, ns, None, t(2025, 6, 1)).unwrap(), "alice@contoso.com");
        assert!(matches!(s.authorize(&other, ns, None, t(2025, 6, 1)), Err(TrustError::KeyUnknown { .. })));
        assert!(matches!(
            s.authorize(&k, "writeback-receipt", None, t(2025, 6, 1)),
            Err(TrustError::NamespaceNotAllowed { .. })
        ));
        assert!(matches!(s.authorize(&k, ns, None, t(2024, 6, 1)), Err(TrustError::NotYetValid { .. })));
        assert!(matches!(s.authorize(&k, ns, None, t(2026, 6, 1)), Err(TrustError::NoLongerValid { .. })));
        assert!(matches!(
            s.authorize(&k, ns, Some("bob@contoso.com"), t(2025, 6, 1)),
            Err(TrustError::PrincipalNotListed { .. })
        ));
    }

    #[test]
    fn cert_authority_never_authorizes_a_plain_key() {
        let k = key();
        let s = AllowedSigners::parse(&format!("*@contoso.com cert-authority {}\n", b64(&k)), "as").unwrap();
        let err = s.authorize(&k, "writeback-plan", Some("a@contoso.com"), t(2025, 1, 1)).unwrap_err();
        assert!(matches!(err, TrustError::CertificateAuthorityOnly { line: 1, .. }));
    }

    #[test]
    fn negated_principal_excludes() {
        let k = key();
        let s = AllowedSigners::parse(&format!("*@contoso.com,!eve@contoso.com {}\n", b64(&k)), "as").unwrap();
        assert!(s.authorize(&k, "writeback-plan", Some("a@contoso.com"), t(2025, 1, 1)).is_ok());
        assert!(s.authorize(&k, "writeback-plan", Some("eve@contoso.com"), t(2025, 1, 1)).is_err());
    }

    #[test]
    fn any_passing_line_is_enough() {
        let k = key();
        let text =
            format!("alice namespaces=\"writeback-receipt\" {k}\nalice namespaces=\"writeback-*\" {k}\n", k = b64(&k));
        let s = AllowedSigners::parse(&text, "as").unwrap();
        assert!(s.authorize(&k, "writeback-plan", Some("alice"), t(2025, 1, 1)).is_ok());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("20250102Z").unwrap(), Utc.with_ymd_and_hms(2025, 1, 2, 0, 0, 0).unwrap());
        assert_eq!(parse_time("202501020304Z").unwrap(), Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 0).unwrap());
        assert_eq!(parse_time("20250102030405Z").unwrap(), Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap());
        let local = Local.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap().with_timezone(&Utc);
        assert_eq!(parse_time("20250102030405").unwrap(), local);
        for bad in ["2025", "20251301", "2025010203", "20250102x", "20250102250000Z"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn principal_lists_overlap_by_the_files_pattern_rules() {
        let l = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let planner = l(&["planner@contoso.example", "pl@contoso.example"]);
        assert_eq!(
            principals_overlap(&l(&["Planner@Contoso.example"]), &planner),
            Some(("Planner@Contoso.example".into(), "planner@contoso.example".into()))
        );
        assert!(principals_overlap(&l(&["approver@contoso.example"]), &planner).is_none());
        // A wildcard on either side names everyone it matches.
        assert!(principals_overlap(&l(&["*@contoso.example"]), &planner).is_some());
        assert!(principals_overlap(&l(&["ann@contoso.example"]), &l(&["*@contoso.example"])).is_some());
        // An exclusion is not a name, and it excludes.
        let all_but_ann = l(&["*@contoso.example", "!ann@contoso.example"]);
        assert!(principals_overlap(&l(&["ann@contoso.example"]), &all_but_ann).is_none());
        assert!(principals_overlap(&l(&["!planner@contoso.example"]), &planner).is_none());
    }
}
