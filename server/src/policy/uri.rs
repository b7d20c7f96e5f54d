//! URI names and URI patterns: a strict check, normalisation and matching.
//!
//! This is not a general RFC 3986 parser, and deliberately so: it accepts
//! only the hierarchical shape that mTLS identities use,
//! `scheme://host[:port][/segment…]` (`spiffe://prod.example.org/ns/x/sa/y`,
//! `https://api.example.com/v1/orders`), whose characters are all drawn from
//! a whitelist. Every URI it accepts is a valid RFC 3986 URI; it refuses,
//! rather than interprets, everything whose meaning a relying party might
//! read differently from us:
//!
//! - userinfo (`user@host`), queries (`?`) and fragments (`#`);
//! - percent-encoding (`%2F` would be one segment to us and two to a relying
//!   party that decodes it), dot segments (`.`, `..`) and empty segments
//!   (`a//b`, a trailing `/`), which normalisation would rewrite;
//! - IP-literal hosts (`[::1]`), URIs without an authority (`urn:…`,
//!   `mailto:…`) and relative references;
//! - for `spiffe`, anything the SPIFFE ID specification forbids (a port,
//!   path characters other than letters, digits, `.`, `-` and `_`).
//!
//! Scheme and host compare case-insensitively (they are lower-cased), the
//! port exactly (`:443` is not the same as no port), the path
//! case-sensitively; `""` and `"/"` are both the empty path. In a pattern, `*` is one whole host label (never
//! the rightmost) or one whole path segment, and never matches a `/` or `.`.

use super::dns::{labels_cover, Label};

/// Longest URI accepted, in bytes.
const MAX_URI_LEN: usize = 2048;
/// Longest host, in bytes.
const MAX_HOST_LEN: usize = 253;
/// Longest host label, in bytes.
const MAX_LABEL_LEN: usize = 63;

/// Whether `*` may appear (patterns) or not (requested URIs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A URI a CSR asks for: no `*` anywhere.
    Requested,
    /// A policy or token pattern: `*` as a whole host label or path segment.
    Pattern,
}

/// A validated URI or URI pattern, scheme and host lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UriName {
    scheme: String,
    host: Vec<Label>,
    port: Option<u16>,
    segments: Vec<Label>,
    text: String,
}

impl UriName {
    /// Validates `input` against the strict shape described in the module doc.
    pub(crate) fn parse(input: &str, mode: Mode) -> Result<Self, UriError> {
        if input.is_empty() {
            return Err(UriError::Empty);
        }
        if input.len() > MAX_URI_LEN {
            return Err(UriError::TooLong {
                length: input.len(),
            });
        }
        if let Some(character) = input
            .chars()
            .find(|c| !c.is_ascii() || c.is_ascii_control() || *c == ' ')
        {
            return Err(UriError::ForbiddenCharacter(character));
        }
        if input.contains('?') {
            return Err(UriError::Query);
        }
        if input.contains('#') {
            return Err(UriError::Fragment);
        }
        if input.contains('%') {
            return Err(UriError::PercentEncoding);
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(if input.contains(':') {
                UriError::NoAuthority
            } else {
                UriError::NotAbsolute
            });
        };
        let scheme = parse_scheme(scheme)?;
        let spiffe = scheme == "spiffe";
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(UriError::Userinfo);
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (authority, None),
        };
        if spiffe && port.is_some() {
            return Err(UriError::SpiffePort);
        }
        let host_text = host.to_ascii_lowercase();
        let host = parse_host(&host_text, mode)?;
        let segments = parse_path(path, mode, spiffe)?;
        Ok(Self {
            // Valid now, so the SDK's canonical form is the one the agent
            // compares certificates by.
            text: certmint::wire::canonical_uri(input),
            scheme,
            host,
            port,
            segments,
        })
    }

    /// The URI with scheme and host lower-cased.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// True when every URI `other` stands for is also covered by `self`:
    /// same scheme and port, host and path covered label by label and
    /// segment by segment.
    pub(crate) fn covers(&self, other: &UriName) -> bool {
        self.scheme == other.scheme
            && self.port == other.port
            && labels_cover(&self.host, &other.host)
            && labels_cover(&self.segments, &other.segments)
    }
}

/// Why a URI or URI pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum UriError {
    #[error("is empty")]
    Empty,
    #[error("is {length} characters long; at most 2048 are allowed")]
    TooLong { length: usize },
    #[error("contains the forbidden character {0:?} (NUL, control, space or non-ASCII)")]
    ForbiddenCharacter(char),
    #[error("has a query ('?'); queries are not allowed")]
    Query,
    #[error("has a fragment ('#'); fragments are not allowed")]
    Fragment,
    #[error("has percent-encoding ('%'); write the characters plainly")]
    PercentEncoding,
    #[error("is not absolute; write scheme://host/path")]
    NotAbsolute,
    #[error("has no authority; only scheme://host/path URIs are supported")]
    NoAuthority,
    #[error("has the invalid scheme {0:?}")]
    BadScheme(String),
    #[error("has userinfo ('@' before the host); userinfo is not allowed")]
    Userinfo,
    #[error("has the invalid port {0:?}")]
    BadPort(String),
    #[error("is a SPIFFE ID with a port; SPIFFE IDs have none")]
    SpiffePort,
    #[error("is a SPIFFE ID ending in '/'; SPIFFE IDs have no trailing '/'")]
    SpiffeTrailingSlash,
    #[error("has an empty host")]
    EmptyHost,
    #[error("has a host longer than 253 characters")]
    HostTooLong,
    #[error("has the invalid host label {0:?}; labels are 1-63 of letters, digits, '-' and '_'")]
    BadHostLabel(String),
    #[error("has '*' in the rightmost host label; it must be literal")]
    WildcardRightmostHostLabel,
    #[error("has a '*'; requested URIs are exact, only patterns hold '*'")]
    WildcardInRequest,
    #[error("has '*' inside {0:?}; '*' may only be a whole host label or path segment")]
    PartialWildcard(String),
    #[error("has an empty path segment ('//' or a trailing '/')")]
    EmptySegment,
    #[error("has a dot segment ('.' or '..')")]
    DotSegment,
    #[error("has the character {character:?} in the path segment {segment:?}")]
    BadPathCharacter { segment: String, character: char },
}

/// `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`, lower-cased.
fn parse_scheme(scheme: &str) -> Result<String, UriError> {
    let mut characters = scheme.chars();
    let valid = characters.next().is_some_and(|c| c.is_ascii_alphabetic())
        && characters.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if valid {
        Ok(scheme.to_ascii_lowercase())
    } else {
        Err(UriError::BadScheme(scheme.to_owned()))
    }
}

/// 1 to 65535, decimal digits only.
fn parse_port(port: &str) -> Result<u16, UriError> {
    let bad = || UriError::BadPort(port.to_owned());
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(number) => Ok(number),
    }
}

/// A registered name of labels `[a-z0-9_-]{1,63}` (host already lower-cased).
fn parse_host(host: &str, mode: Mode) -> Result<Vec<Label>, UriError> {
    if host.is_empty() {
        return Err(UriError::EmptyHost);
    }
    if host.len() > MAX_HOST_LEN {
        return Err(UriError::HostTooLong);
    }
    let raw: Vec<&str> = host.split('.').collect();
    let last = raw.len() - 1;
    let mut labels = Vec::with_capacity(raw.len());
    for (index, label) in raw.into_iter().enumerate() {
        if label == "*" {
            match mode {
                Mode::Requested => return Err(UriError::WildcardInRequest),
                Mode::Pattern if index == last => return Err(UriError::WildcardRightmostHostLabel),
                Mode::Pattern => labels.push(Label::Any),
            }
            continue;
        }
        if label.contains('*') {
            return Err(wildcard_error(mode, label));
        }
        let valid = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
        if !valid {
            return Err(UriError::BadHostLabel(label.to_owned()));
        }
        labels.push(Label::Literal(label.to_owned()));
    }
    Ok(labels)
}

/// `""` or `"/"` (no segments), or `/segment(/segment)*` of non-empty,
/// non-dot segments drawn from a whitelist of RFC 3986 `pchar`s.
fn parse_path(path: &str, mode: Mode, spiffe: bool) -> Result<Vec<Label>, UriError> {
    if spiffe && path == "/" {
        return Err(UriError::SpiffeTrailingSlash);
    }
    if path.is_empty() || path == "/" {
        return Ok(Vec::new());
    }
    // The caller split the path off at its first '/', so it starts with one.
    let body = path.strip_prefix('/').unwrap_or(path);
    let mut segments = Vec::new();
    for segment in body.split('/') {
        if segment.is_empty() {
            return Err(UriError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(UriError::DotSegment);
        }
        if segment == "*" {
            match mode {
                Mode::Requested => return Err(UriError::WildcardInRequest),
                Mode::Pattern => segments.push(Label::Any),
            }
            continue;
        }
        if segment.contains('*') {
            return Err(wildcard_error(mode, segment));
        }
        let allowed = |c: char| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '.' | '_')
                || (!spiffe
                    && matches!(
                        c,
                        '~' | '!'
                            | '$'
                            | '&'
                            | '\''
                            | '('
                            | ')'
                            | '+'
                            | ','
                            | ';'
                            | '='
                            | ':'
                            | '@'
                    ))
        };
        if let Some(character) = segment.chars().find(|c| !allowed(*c)) {
            return Err(UriError::BadPathCharacter {
                segment: segment.to_owned(),
                character,
            });
        }
        segments.push(Label::Literal(segment.to_owned()));
    }
    Ok(segments)
}

/// A `*` that is not a whole label or segment.
fn wildcard_error(mode: Mode, part: &str) -> UriError {
    match mode {
        Mode::Requested => UriError::WildcardInRequest,
        Mode::Pattern => UriError::PartialWildcard(part.to_owned()),
    }
}
