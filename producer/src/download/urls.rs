//! The URL list of a download job, read and validated in full before any
//! task is published, and the file name each URL gets.
//!
//! A list has one entry per line: `URL [NAME] [sha256:HEX]`, fields
//! separated by whitespace; `#` starts a comment and blank lines are
//! skipped. A bad line is an error naming its line number.
//!
//! Names come from the user (checked: they may not escape the output
//! directory) or from the URL's last path segment (sanitized). Two given
//! names that collide, compared case-insensitively, are an error: only the
//! user knows which file is which. Otherwise entries that would land on the
//! same name are told apart deterministically: given names win, and a later
//! derived name gets `-` and 8 hex digits of its URL's SHA-256 before the
//! extension (and a counter after them in the rare case that name is taken
//! too). Only exact repeats (same URL, same name) are fetched once.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read};

use sha2::{Digest, Sha256};
use warren::filename::RelativePath;
use warren::protocol::{check_sha256, check_url};

use super::config::UrlInput;
use crate::error::{Error, Result};
use crate::input::Source;

/// Longest line accepted in a URL list, in bytes: far beyond any real URL
/// (browsers stop near 64 KiB too), and it bounds what one line can cost.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// One URL to fetch, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlEntry {
    /// Where it was listed, for error messages: `urls.txt:12` or
    /// `argument 3`.
    pub origin: String,
    /// The URL.
    pub url: url::Url,
    /// The name the user gave, if any.
    pub name: Option<RelativePath>,
    /// The expected SHA-256, lowercase hex.
    pub sha256: Option<String>,
}

/// A URL with the file name it will be saved under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedEntry {
    /// The entry as listed (its `name` is the one the user gave, if any).
    pub listed: UrlEntry,
    /// Its file name, relative to the output directory.
    pub name: RelativePath,
}

/// Reads every list and URL of `inputs`: the lists' entries in order, then
/// the URLs given as arguments. Blocking.
///
/// # Errors
/// As [`read_list`] and [`from_arguments`]; [`Error::Usage`] when there is
/// no URL at all.
pub fn read_all(inputs: &[UrlInput]) -> Result<Vec<UrlEntry>> {
    let mut entries = Vec::new();
    let mut arguments = Vec::new();
    for input in inputs {
        match input {
            UrlInput::List(source) => entries.extend(read_list(source)?),
            UrlInput::Url(url) => arguments.push(url.clone()),
        }
    }
    entries.extend(from_arguments(&arguments)?);
    if entries.is_empty() {
        return Err(Error::Usage(
            "no URL to download: the lists are empty".into(),
        ));
    }
    Ok(entries)
}

/// Reads every entry of a URL list.
///
/// # Errors
/// [`Error::Open`]/[`Error::Read`] for I/O, [`Error::BadInput`] for the
/// first bad line (including one over [`MAX_LINE_BYTES`] or not UTF-8).
pub fn read_list(source: &Source) -> Result<Vec<UrlEntry>> {
    let (mut reader, label): (Box<dyn BufRead>, String) = match source {
        Source::Stdin => (Box::new(std::io::stdin().lock()), "stdin".into()),
        Source::File(path) => {
            let file = std::fs::File::open(path).map_err(|e| Error::Open {
                input: source.to_string(),
                source: e,
            })?;
            (Box::new(std::io::BufReader::new(file)), source.to_string())
        }
    };
    let mut entries = Vec::new();
    let mut buffer = Vec::new();
    for line_number in 1.. {
        let bad_line = |reason: String| Error::BadInput {
            input: label.clone(),
            reason: format!("line {line_number}: {reason}"),
        };
        buffer.clear();
        // Read at most a line ending past the limit: a list with no
        // newline in it (a binary file given by mistake) must not fill the
        // memory.
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 2)
            .read_until(b'\n', &mut buffer)
            .map_err(|e| Error::Read {
                input: label.clone(),
                source: e,
            })?;
        if read == 0 {
            break;
        }
        if buffer.last() == Some(&b'\n') {
            buffer.pop();
            if buffer.last() == Some(&b'\r') {
                buffer.pop();
            }
        }
        if buffer.len() > MAX_LINE_BYTES {
            return Err(bad_line(format!(
                "the line is longer than {} KiB",
                MAX_LINE_BYTES >> 10
            )));
        }
        let line = std::str::from_utf8(&buffer)
            .map_err(|_| bad_line("the line is not valid UTF-8".into()))?;
        let content = strip_comment(line).trim();
        if content.is_empty() {
            continue;
        }
        let entry = parse_line(content, format!("{label}:{line_number}")).map_err(bad_line)?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Entries from URLs given on the command line.
///
/// # Errors
/// [`Error::Usage`] for the first bad URL.
pub fn from_arguments(urls: &[String]) -> Result<Vec<UrlEntry>> {
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let origin = format!("argument {}", i + 1);
            parse_line(url, origin.clone())
                .map_err(|reason| Error::Usage(format!("{origin}: {reason}")))
        })
        .collect()
}

/// A `#` starts a comment at the start of a line or after whitespace; a
/// `#` inside a URL (a fragment) does not.
fn strip_comment(line: &str) -> &str {
    let mut previous_is_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && previous_is_space {
            return &line[..i];
        }
        previous_is_space = c.is_whitespace();
    }
    line
}

fn parse_line(content: &str, origin: String) -> std::result::Result<UrlEntry, String> {
    let mut fields = content.split_whitespace();
    let url = check_url(fields.next().unwrap_or_default())?;
    let mut name = None;
    let mut sha256 = None;
    for field in fields {
        if let Some(hex) = field.strip_prefix("sha256:") {
            if sha256.is_some() {
                return Err("more than one sha256: field".into());
            }
            sha256 = Some(check_sha256(hex)?);
        } else if name.is_none() {
            name = Some(
                RelativePath::parse(field)
                    .map_err(|e| format!("unusable file name {field:?}: {e}"))?,
            );
        } else {
            return Err(format!(
                "unexpected field {field:?} (expected: URL [NAME] [sha256:HEX])"
            ));
        }
    }
    Ok(UrlEntry {
        origin,
        url,
        name,
        sha256,
    })
}

/// An entry that repeats an earlier one exactly: same URL, same name (or
/// both without one). It would only fetch the same file twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeat {
    /// The repeating entry.
    pub entry: UrlEntry,
    /// Index, among the named entries, of the entry it repeats.
    pub of: usize,
}

/// Gives every entry its file name, setting exact repeats aside.
///
/// # Errors
/// [`Error::Usage`] when two given names collide: only the user can decide.
pub fn assign_names(entries: Vec<UrlEntry>) -> Result<(Vec<NamedEntry>, Vec<Repeat>)> {
    let mut taken = Taken::default();
    let mut given_by: HashMap<String, String> = HashMap::new();
    // Given names first, so that they win over derived ones.
    for entry in &entries {
        if let Some(name) = &entry.name {
            if let Some(other) = given_by.get(&name.collision_key()) {
                // An error rather than a renaming: a name the user wrote is
                // a promise of where the file lands, and two different URLs
                // under one name is a mistake in the list.
                return Err(Error::Usage(format!(
                    "{} and {} both name the file {name}: give one of them another name \
                     (names you give are never changed)",
                    other, entry.origin
                )));
            }
            if taken.conflicts(name) {
                return Err(Error::Usage(format!(
                    "{}: the name {name} clashes with a file or directory another entry names",
                    entry.origin
                )));
            }
            given_by.insert(name.collision_key(), entry.origin.clone());
            taken.insert(name);
        }
    }
    let repeat_of = exact_repeats(&entries);
    let repeated: HashSet<usize> = repeat_of.values().copied().collect();
    // Where the entries that others repeat land among the named ones.
    let mut named_at: HashMap<usize, usize> = HashMap::new();
    let mut named = Vec::with_capacity(entries.len() - repeat_of.len());
    let mut repeats = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        if let Some(original) = repeat_of.get(&i) {
            repeats.push(Repeat {
                entry,
                of: named_at[original],
            });
            continue;
        }
        if repeated.contains(&i) {
            named_at.insert(i, named.len());
        }
        let name = match &entry.name {
            Some(name) => name.clone(),
            None => {
                let name = free_name(&taken, &entry.url);
                taken.insert(&name);
                name
            }
        };
        named.push(NamedEntry {
            listed: entry,
            name,
        });
    }
    Ok((named, repeats))
}

/// For each entry that repeats an earlier one exactly (same URL, same
/// given name or none), the index of the first of them. Found by sorting
/// indexes rather than hashing copies of the entries: it costs a few bytes
/// an entry however long the list.
fn exact_repeats(entries: &[UrlEntry]) -> HashMap<usize, usize> {
    let key = |i: usize| {
        let entry = &entries[i];
        (
            entry.url.as_str(),
            entry.name.as_ref().map(RelativePath::as_str),
        )
    };
    let mut order: Vec<usize> = (0..entries.len()).collect();
    // Stable: among equal entries the first listed comes first.
    order.sort_by(|&a, &b| key(a).cmp(&key(b)));
    let mut repeat_of = HashMap::new();
    for equal in order.chunk_by(|&a, &b| key(a) == key(b)) {
        for &later in &equal[1..] {
            repeat_of.insert(later, equal[0]);
        }
    }
    repeat_of
}

/// The name a URL suggests, or, when that is taken, the same name tagged
/// with the URL's hash; should that be taken too (another URL's name may
/// happen to look like it), the tag gets a counter until the name is
/// free. Deterministic for a given list.
fn free_name(taken: &Taken, url: &url::Url) -> RelativePath {
    let derived = RelativePath::from_url(url);
    if !taken.conflicts(&derived) {
        return derived;
    }
    let tag = url_tag(url);
    let mut name = derived.with_tag(&tag);
    // Ends: each round tries a new name and only finitely many are taken.
    let mut counter = 2u64;
    while taken.conflicts(&name) {
        name = derived.with_tag(&format!("{tag}-{counter}"));
        counter += 1;
    }
    name
}

/// 8 hex digits of the URL's SHA-256: stable across runs and orders.
fn url_tag(url: &url::Url) -> String {
    hex::encode(&Sha256::digest(url.as_str().as_bytes())[..4])
}

/// Names in use, as files and as directories, compared case-insensitively.
#[derive(Debug, Default)]
struct Taken {
    files: HashSet<String>,
    dirs: HashSet<String>,
}

impl Taken {
    fn conflicts(&self, name: &RelativePath) -> bool {
        let key = name.collision_key();
        self.files.contains(&key)
            || self.dirs.contains(&key)
            || parents(&key).any(|dir| self.files.contains(dir))
    }

    fn insert(&mut self, name: &RelativePath) {
        let key = name.collision_key();
        for dir in parents(&key) {
            self.dirs.insert(dir.to_owned());
        }
        self.files.insert(key);
    }
}

/// `a/b/c` → `a`, `a/b`.
fn parents(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/').map(move |(i, _)| &key[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn list(text: &str) -> Result<Vec<UrlEntry>> {
        read_list(&Source::File(written(text).path().to_owned()))
    }

    fn written(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn names(text: &str) -> Vec<String> {
        let (named, _) = assign_names(list(text).unwrap()).unwrap();
        named.into_iter().map(|n| n.name.to_string()).collect()
    }

    #[test]
    fn lines_with_names_checksums_and_comments() {
        let sha = "a".repeat(64);
        let entries = list(&format!(
            "# images\n\nhttps://h/a.jpg#frag\nhttps://h/b.jpg  cats/b.jpg sha256:{}  # b\nhttp://h/c sha256:{sha}\n",
            sha.to_uppercase()
        ))
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].url.as_str(), "https://h/a.jpg#frag");
        assert_eq!(entries[1].name.as_ref().unwrap().as_str(), "cats/b.jpg");
        assert_eq!(entries[1].sha256.as_deref(), Some(sha.as_str()));
        assert!(entries[1].origin.ends_with(":4"), "{}", entries[1].origin);
        assert_eq!(entries[2].sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(entries[2].name, None);
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let cases = [
            (
                "https://h/a\nftp://h/b\n",
                "line 2: unsupported scheme \"ftp\"",
            ),
            ("not a url\n", "line 1: invalid URL"),
            (
                "https://h/a ../../etc/passwd\n",
                "line 1: unusable file name \"../../etc/passwd\"",
            ),
            ("https://h/a /etc/passwd\n", "absolute path"),
            ("https://h/a sha256:123\n", "not a SHA-256"),
            ("https://h/a x y\n", "unexpected field \"y\""),
        ];
        for (text, expected) in cases {
            let err = list(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
    }

    #[test]
    fn overlong_lines_are_refused_with_their_line_number() {
        let at_limit = format!("https://h/{}", "a".repeat(MAX_LINE_BYTES - 10));
        assert_eq!(at_limit.len(), MAX_LINE_BYTES);
        assert_eq!(list(&format!("{at_limit}\r\n")).unwrap().len(), 1);
        assert_eq!(list(&at_limit).unwrap().len(), 1, "no final newline");
        let err = list(&format!("https://h/a\n{at_limit}a\nhttps://h/b\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2: the line is longer than 64 KiB"),
            "{err}"
        );
        let err = list(&"x".repeat(10 * MAX_LINE_BYTES))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: the line is longer"), "{err}");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"https://h/a\nhttps://h/\xff\n").unwrap();
        let err = read_list(&Source::File(file.path().to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: the line is not valid UTF-8"), "{err}");
    }

    #[test]
    fn colliding_names_are_told_apart_deterministically() {
        let got = names("https://a/x/img.jpg\nhttps://b/y/IMG.jpg\nhttps://c/img.jpg img.jpg\n");
        // The given name wins; both derived ones get their URL's tag.
        assert_eq!(got[2], "img.jpg");
        assert!(
            got[0].starts_with("img-") && got[0].ends_with(".jpg"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("IMG-") && got[1].ends_with(".jpg"),
            "{got:?}"
        );
        assert_ne!(got[0].to_lowercase(), got[1].to_lowercase());
        assert_eq!(
            got,
            names("https://a/x/img.jpg\nhttps://b/y/IMG.jpg\nhttps://c/img.jpg img.jpg\n")
        );
    }

    #[test]
    fn repeated_urls_are_fetched_once_and_given_names_must_not_collide() {
        let (named, repeats) = assign_names(
            list("https://h/a.jpg\nhttps://h/a.jpg\nhttps://h/a.jpg b.jpg\n").unwrap(),
        )
        .unwrap();
        assert_eq!(named.len(), 2, "the same URL under another name is fetched");
        assert_eq!(repeats.len(), 1);
        assert_eq!(repeats[0].of, 0);
        assert!(repeats[0].entry.origin.ends_with(":2"));
        let err =
            assign_names(list("https://h/1 x.jpg\nhttps://h/2 X.JPG\n").unwrap()).unwrap_err();
        assert!(err.to_string().contains("both name the file"), "{err}");
        let err = assign_names(list("https://h/1 a\nhttps://h/2 a/b\n").unwrap()).unwrap_err();
        assert!(err.to_string().contains("clashes"), "{err}");
    }

    #[test]
    fn a_taken_tagged_name_gets_a_counter_and_no_url_is_dropped() {
        let b = url::Url::parse("https://h/b/x.jpg").unwrap();
        let tagged = format!("x-{}.jpg", url_tag(&b));
        let text = format!(
            "https://h/a/x.jpg\nhttps://h/c/{tagged}\n{b}\nhttps://h/d/x.jpg {tagged}-given\n\
             https://h/e/{tagged}\n"
        );
        let (named, repeats) = assign_names(list(&text).unwrap()).unwrap();
        assert!(repeats.is_empty(), "{repeats:?}");
        let got: Vec<String> = named.iter().map(|n| n.name.to_string()).collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], "x.jpg");
        assert_eq!(got[1], tagged);
        assert_eq!(got[2], format!("x-{}-2.jpg", url_tag(&b)), "{got:?}");
        let unique: HashSet<String> = got.iter().map(|n| n.to_lowercase()).collect();
        assert_eq!(unique.len(), 5, "{got:?}");
        assert_eq!(names(&text), got, "deterministic");
    }

    #[test]
    fn derived_names_avoid_directories_of_given_names() {
        let got = names("https://h/cats/1.jpg cats/1.jpg\nhttps://h/x/cats\n");
        assert_eq!(got[0], "cats/1.jpg");
        assert!(got[1].starts_with("cats-"), "{got:?}");
    }

    #[test]
    fn arguments_are_checked_too() {
        assert!(from_arguments(&["https://h/a".into()]).is_ok());
        let upper = from_arguments(&["HTTP://h/A".into()]).unwrap();
        assert_eq!(
            upper[0].url.as_str(),
            "http://h/A",
            "schemes are not case-sensitive"
        );
        let err = from_arguments(&["https://h/a".into(), "gopher://h".into()]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("argument 2: unsupported scheme"),
            "{err}"
        );
    }
}
