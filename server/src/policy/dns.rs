//! DNS names and DNS patterns: validation, normalisation and matching.
//!
//! Both requested names and policy (or token) patterns are parsed into a list
//! of [`Label`]s, lower-cased. A requested name may hold a `*` only as its
//! single leftmost label (a wildcard certificate); a pattern may hold `*` as
//! any whole label except the rightmost. Matching is label by label over
//! lists of equal length, so `*` stands for exactly one label and never
//! matches a dot.

use std::net::IpAddr;

/// Longest DNS name in presentation form, without a trailing dot (RFC 1035).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// One label of a parsed name or pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    /// `*`: in a pattern, any one label; in a requested name, a wildcard.
    Any,
    /// A literal label, lower-case.
    Literal(String),
}

/// Whether `*` may appear where a request puts it, or where a pattern does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A name a CSR asks for: `*` only as the single leftmost label.
    Requested,
    /// A policy or token pattern: `*` as any whole label but the rightmost.
    Pattern,
}

/// A validated, lower-cased DNS name or pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DnsName {
    labels: Vec<Label>,
    text: String,
}

impl DnsName {
    /// Validates `input` and normalises it to lower case.
    pub(crate) fn parse(input: &str, mode: Mode) -> Result<Self, DnsNameError> {
        check_characters(input)?;
        if input.parse::<IpAddr>().is_ok() {
            return Err(DnsNameError::IpAddress);
        }
        let text = input.to_ascii_lowercase();
        if text.ends_with('.') {
            return Err(DnsNameError::TrailingDot);
        }
        if text.len() > MAX_NAME_LEN {
            return Err(DnsNameError::NameTooLong { length: text.len() });
        }
        let raw: Vec<&str> = text.split('.').collect();
        let last = raw.len() - 1;
        let mut labels = Vec::with_capacity(raw.len());
        for (index, label) in raw.iter().enumerate() {
            if *label == "*" {
                match mode {
                    Mode::Requested if index != 0 => {
                        return Err(DnsNameError::WildcardNotLeftmost);
                    }
                    Mode::Pattern if index == last => {
                        return Err(DnsNameError::WildcardRightmost);
                    }
                    _ => labels.push(Label::Any),
                }
                continue;
            }
            check_label(label)?;
            labels.push(Label::Literal((*label).to_owned()));
        }
        if labels.len() < 2 {
            return Err(DnsNameError::SingleLabel);
        }
        if let Some(Label::Literal(tld)) = labels.last() {
            if tld.bytes().all(|b| b.is_ascii_digit()) {
                return Err(DnsNameError::NumericTopLabel);
            }
        }
        if mode == Mode::Requested && labels.first() == Some(&Label::Any) && labels.len() < 3 {
            return Err(DnsNameError::WildcardTooBroad);
        }
        Ok(Self { labels, text })
    }

    /// The lower-cased name or pattern.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// True for a requested wildcard certificate name (`*.example.com`).
    pub(crate) fn is_wildcard(&self) -> bool {
        self.labels.first() == Some(&Label::Any)
    }

    /// True when every name `other` stands for is also covered by `self`:
    /// `self` is a pattern, `other` a requested name or a narrower pattern.
    pub(crate) fn covers(&self, other: &DnsName) -> bool {
        labels_cover(&self.labels, &other.labels)
    }
}

/// Why a DNS name or pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DnsNameError {
    #[error("is empty")]
    Empty,
    #[error("contains a NUL byte")]
    Nul,
    #[error("contains the non-ASCII character {0:?}; IDNs must be written in punycode (xn--…)")]
    NonAscii(char),
    #[error("contains a control character or space")]
    ControlOrSpace,
    #[error("is an IP address; put IP addresses in the ip list")]
    IpAddress,
    #[error("ends with a dot; write the name without the trailing dot")]
    TrailingDot,
    #[error("is {length} characters long; at most 253 are allowed")]
    NameTooLong { length: usize },
    #[error("has an empty label (leading dot or two dots in a row)")]
    EmptyLabel,
    #[error("has the label {label:?} longer than 63 characters")]
    LabelTooLong { label: String },
    #[error(
        "has the character {character:?} in label {label:?}; labels are letters, digits and '-'"
    )]
    BadCharacter { label: String, character: char },
    #[error("has the label {label:?} starting or ending with '-'")]
    HyphenAtEdge { label: String },
    #[error("has the label {label:?} with '--' in positions 3-4, reserved for xn-- (punycode)")]
    ReservedHyphens { label: String },
    #[error("has the label {label:?}, which is not valid IDNA punycode")]
    InvalidPunycode { label: String },
    #[error("has '*' inside the label {label:?}; '*' may only be a whole label")]
    PartialWildcard { label: String },
    #[error(
        "has '*' outside the leftmost label, or more than one '*'; only '*.name' is a wildcard"
    )]
    WildcardNotLeftmost,
    #[error("ends in '*'; the rightmost label of a pattern must be literal")]
    WildcardRightmost,
    #[error("is a wildcard over fewer than two labels")]
    WildcardTooBroad,
    #[error("has a single label; a name needs at least two")]
    SingleLabel,
    #[error("has an all-numeric rightmost label")]
    NumericTopLabel,
}

/// True when `pattern` covers `candidate` label by label: a `*` in the
/// pattern covers any one label (a `*` included), a literal only itself.
pub(crate) fn labels_cover(pattern: &[Label], candidate: &[Label]) -> bool {
    pattern.len() == candidate.len()
        && pattern
            .iter()
            .zip(candidate)
            .all(|(want, have)| match (want, have) {
                (Label::Any, _) => true,
                (Label::Literal(want), Label::Literal(have)) => want == have,
                (Label::Literal(_), Label::Any) => false,
            })
}

/// Refuses the empty string, NUL, non-ASCII, control characters and spaces.
fn check_characters(input: &str) -> Result<(), DnsNameError> {
    if input.is_empty() {
        return Err(DnsNameError::Empty);
    }
    for character in input.chars() {
        if character == '\0' {
            return Err(DnsNameError::Nul);
        }
        if !character.is_ascii() {
            return Err(DnsNameError::NonAscii(character));
        }
        if character.is_ascii_control() || character == ' ' {
            return Err(DnsNameError::ControlOrSpace);
        }
    }
    Ok(())
}

/// Checks one lower-cased literal label: LDH, 1–63 characters, no hyphen at
/// either end, `--` in positions 3-4 only as the `xn--` punycode prefix.
fn check_label(label: &str) -> Result<(), DnsNameError> {
    if label.is_empty() {
        return Err(DnsNameError::EmptyLabel);
    }
    if label.contains('*') {
        return Err(DnsNameError::PartialWildcard {
            label: label.to_owned(),
        });
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(DnsNameError::LabelTooLong {
            label: label.to_owned(),
        });
    }
    if let Some(character) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(DnsNameError::BadCharacter {
            label: label.to_owned(),
            character,
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(DnsNameError::HyphenAtEdge {
            label: label.to_owned(),
        });
    }
    if label.get(2..4) == Some("--") && !label.starts_with("xn--") {
        return Err(DnsNameError::ReservedHyphens {
            label: label.to_owned(),
        });
    }
    if label.starts_with("xn--") {
        check_punycode(label)?;
    }
    Ok(())
}

/// An `xn--` label must be what IDNA itself would write for some valid
/// Unicode label: it decodes, the decoded label passes UTS #46 processing
/// with the STD3 rules and hyphen checks, and encoding it again gives back
/// exactly this label. That refuses undecodable punycode, labels that
/// decode to plain ASCII or to disallowed code points, and non-canonical
/// encodings that would make two different-looking names the same one.
fn check_punycode(label: &str) -> Result<(), DnsNameError> {
    match idna::domain_to_ascii_strict(label) {
        Ok(canonical) if canonical == label => Ok(()),
        _ => Err(DnsNameError::InvalidPunycode {
            label: label.to_owned(),
        }),
    }
}
