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

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::io::{BufRead, Read};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use warren::filename::RelativePath;
use warren::protocol::{check_sha256, check_url};

use super::config::UrlInput;
use crate::error::{Error, Result};
use crate::input::Source;

/// Longest line accepted in a URL list, in bytes: far beyond any real URL
/// (browsers stop near 64 KiB too), and it bounds what one line can cost.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// Where an entry was listed, for error messages: `urls.txt:12` or
/// `argument 3`. Every line of a list shares the list's label: an origin
/// costs no allocation of its own, however long the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The list's label; `None` for a URL given as an argument. An
    /// `Arc<String>` is one pointer wide, an `Arc<str>` two.
    list: Option<Arc<String>>,
    /// The line number in the list, or the argument's number.
    number: u64,
}

impl Origin {
    /// Line `number` (from 1) of the list labelled `list`.
    pub fn line(list: &Arc<String>, number: u64) -> Origin {
        Origin {
            list: Some(Arc::clone(list)),
            number,
        }
    }

    /// The URL argument `number` (from 1).
    pub fn argument(number: u64) -> Origin {
        Origin { list: None, number }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.list {
            Some(list) => write!(f, "{list}:{}", self.number),
            None => write!(f, "argument {}", self.number),
        }
    }
}

/// One URL to fetch, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlEntry {
    /// Where it was listed, for error messages.
    pub origin: Origin,
    /// The URL, checked, as `url::Url` serializes it. Kept as text: a
    /// parsed `url::Url` is several times larger, and a list can hold
    /// millions of URLs.
    pub url: Box<str>,
    /// The expected SHA-256, lowercase hex.
    pub sha256: Option<Box<str>>,
}

/// A URL with the file name it will be saved under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedEntry {
    /// The entry as listed.
    pub listed: UrlEntry,
    /// Its file name, relative to the output directory: the one the user
    /// gave, or else the one its URL suggests, told apart from other
    /// entries' names by [`assign_names`].
    pub name: RelativePath,
    /// Whether the user gave `name`.
    pub given: bool,
}

/// Reads every list and URL of `inputs`: the lists' entries in order, then
/// the URLs given as arguments. Blocking.
///
/// # Errors
/// As [`read_list`] and [`from_arguments`]; [`Error::Usage`] when there is
/// no URL at all.
pub fn read_all(inputs: &[UrlInput]) -> Result<Vec<NamedEntry>> {
    let mut entries = Vec::new();
    let mut arguments = Vec::new();
    for input in inputs {
        match input {
            UrlInput::List(source) => {
                let list = read_list(source)?;
                // Taken whole when it is the first: extending would copy
                // it, and both copies would be in memory at once.
                if entries.is_empty() {
                    entries = list;
                } else {
                    entries.extend(list);
                }
            }
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
pub fn read_list(source: &Source) -> Result<Vec<NamedEntry>> {
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
    let shared_label = Arc::new(label.clone());
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
        let origin = Origin::line(&shared_label, line_number);
        let entry = parse_line(content, origin).map_err(bad_line)?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Entries from URLs given on the command line.
///
/// # Errors
/// [`Error::Usage`] for the first bad URL.
pub fn from_arguments(urls: &[String]) -> Result<Vec<NamedEntry>> {
    (1..)
        .zip(urls)
        .map(|(number, url)| {
            let origin = Origin::argument(number);
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

/// The entry of one line (or argument), named as given or as its URL
/// suggests.
fn parse_line(content: &str, origin: Origin) -> std::result::Result<NamedEntry, String> {
    let mut fields = content.split_whitespace();
    let url = check_url(fields.next().unwrap_or_default())?;
    let mut name = None;
    let mut sha256 = None;
    for field in fields {
        if let Some(hex) = field.strip_prefix("sha256:") {
            if sha256.is_some() {
                return Err("more than one sha256: field".into());
            }
            sha256 = Some(check_sha256(hex)?.into_boxed_str());
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
    let given = name.is_some();
    Ok(NamedEntry {
        name: name.unwrap_or_else(|| RelativePath::from_url(&url)),
        given,
        listed: UrlEntry {
            origin,
            url: url.as_str().into(),
            sha256,
        },
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

/// Gives every entry its file name, setting exact repeats aside. Works in
/// place: `entries` (as read, each named as given or as its URL suggests)
/// become the named entries, with no second copy of the list.
///
/// # Errors
/// [`Error::Usage`] when two given names collide: only the user can decide.
pub fn assign_names(mut entries: Vec<NamedEntry>) -> Result<(Vec<NamedEntry>, Vec<Repeat>)> {
    // On the whole list as written, repeats included.
    check_given_names(&entries)?;
    let repeats = set_repeats_aside(&mut entries);
    // Given names first, so that they win over derived ones.
    let mut taken = Taken::new(entries.len());
    for (i, _) in entries.iter().enumerate().filter(|(_, entry)| entry.given) {
        taken.insert(&entries, i);
    }
    for i in 0..entries.len() {
        if entries[i].given {
            continue;
        }
        if taken.conflicts(&entries, &entries[i].name) {
            entries[i].name = free_name(&taken, &entries, i);
        }
        taken.insert(&entries, i);
    }
    Ok((entries, repeats))
}

/// Checks that no two given names collide, nor one is the directory of
/// another.
///
/// # Errors
/// As [`assign_names`].
fn check_given_names(entries: &[NamedEntry]) -> Result<()> {
    let mut taken = Taken::new(entries.iter().filter(|entry| entry.given).count());
    for (i, entry) in entries.iter().enumerate().filter(|(_, entry)| entry.given) {
        let name = &entry.name;
        if let Some(other) = taken.file_holder(entries, &name.collision_key()) {
            // An error rather than a renaming: a name the user wrote is a
            // promise of where the file lands, and two different URLs under
            // one name is a mistake in the list.
            return Err(Error::Usage(format!(
                "{} and {} both name the file {name}: give one of them another name \
                 (names you give are never changed)",
                entries[other].listed.origin, entry.listed.origin
            )));
        }
        if taken.conflicts(entries, name) {
            return Err(Error::Usage(format!(
                "{}: the name {name} clashes with a file or directory another entry names",
                entry.listed.origin
            )));
        }
        taken.insert(entries, i);
    }
    Ok(())
}

/// Removes the exact repeats from `entries`, in place, and returns them,
/// each with the index its original has among the entries that remain.
fn set_repeats_aside(entries: &mut Vec<NamedEntry>) -> Vec<Repeat> {
    let repeat_of = exact_repeats(entries);
    if repeat_of.is_empty() {
        return Vec::new();
    }
    let repeated: HashSet<usize> = repeat_of.values().copied().collect();
    // Where the entries that others repeat land among the remaining ones.
    let mut kept_at: HashMap<usize, usize> = HashMap::new();
    let mut repeats = Vec::new();
    let (mut index, mut kept) = (0, 0);
    // `retain` visits the entries once each, in order.
    entries.retain(|entry| {
        let i = index;
        index += 1;
        if let Some(original) = repeat_of.get(&i) {
            repeats.push(Repeat {
                entry: entry.listed.clone(),
                of: kept_at[original],
            });
            return false;
        }
        if repeated.contains(&i) {
            kept_at.insert(i, kept);
        }
        kept += 1;
        true
    });
    repeats
}

/// For each entry that repeats an earlier one exactly (same URL, same
/// given name or none), the index of the first of them. Found by sorting
/// indexes rather than hashing copies of the entries: it costs a few bytes
/// an entry however long the list.
fn exact_repeats(entries: &[NamedEntry]) -> HashMap<usize, usize> {
    let key = |i: usize| {
        let entry = &entries[i];
        (&*entry.listed.url, entry.given.then(|| entry.name.as_str()))
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

/// A free name for entry `i`, whose name (derived from its URL) is taken:
/// that name tagged with the URL's hash; should that be taken too (another
/// URL's name may happen to look like it), the tag gets a counter until
/// the name is free. Deterministic for a given list.
fn free_name(taken: &Taken, entries: &[NamedEntry], i: usize) -> RelativePath {
    let derived = &entries[i].name;
    let tag = url_tag(&entries[i].listed.url);
    let mut name = derived.with_tag(&tag);
    // Ends: each round tries a new name and only finitely many are taken.
    let mut counter = 2u64;
    while taken.conflicts(entries, &name) {
        name = derived.with_tag(&format!("{tag}-{counter}"));
        counter += 1;
    }
    name
}

/// 8 hex digits of the URL's SHA-256: stable across runs and orders.
fn url_tag(url: &str) -> String {
    hex::encode(&Sha256::digest(url.as_bytes())[..4])
}

/// Names in use, as files and as directories, compared case-insensitively.
/// A file name is held as 32 bits of the hash of its key and the index of
/// an entry that bears it (the name itself stays in the entry): some 9
/// bytes a name, where a set of the keys themselves cost some 80. The few
/// names whose short hash another name's has already are held whole.
#[derive(Debug)]
struct Taken<S = RandomState> {
    hasher: S,
    /// Short hash of a file name's key → index of the entry bearing it.
    files: HashMap<u32, u32>,
    /// Keys of the file names `files` cannot hold (their short hash is
    /// there for another key, or their index exceeds `u32`), by index.
    colliding_files: HashMap<String, usize>,
    /// Directories the file names are in.
    dirs: HashSet<String>,
}

impl Taken {
    /// Room for `files` file names without growing (growing would hold
    /// the old table and the new at once).
    fn new(files: usize) -> Taken {
        Taken::with_hasher(RandomState::new(), files)
    }
}

impl<S: BuildHasher> Taken<S> {
    fn with_hasher(hasher: S, files: usize) -> Taken<S> {
        Taken {
            hasher,
            files: HashMap::with_capacity(files),
            colliding_files: HashMap::new(),
            dirs: HashSet::new(),
        }
    }

    /// The low 32 bits of the hash of `key`.
    fn short_hash(&self, key: &str) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    /// The index of the entry whose file name has collision key `key`, if
    /// one is inserted.
    fn file_holder(&self, entries: &[NamedEntry], key: &str) -> Option<usize> {
        let held = self.files.get(&self.short_hash(key)).map(|&i| i as usize);
        match held {
            Some(i) if entries[i].name.collision_key() == key => Some(i),
            _ if self.colliding_files.is_empty() => None,
            _ => self.colliding_files.get(key).copied(),
        }
    }

    /// Whether `name` is taken as a file or directory, or one of its
    /// directories is taken as a file.
    fn conflicts(&self, entries: &[NamedEntry], name: &RelativePath) -> bool {
        let key = name.collision_key();
        self.file_holder(entries, &key).is_some()
            || self.dirs.contains(&key)
            || parents(&key).any(|dir| self.file_holder(entries, dir).is_some())
    }

    /// Takes the name of entry `i`.
    fn insert(&mut self, entries: &[NamedEntry], i: usize) {
        let key = entries[i].name.collision_key();
        for dir in parents(&key) {
            self.dirs.insert(dir.to_owned());
        }
        match (self.files.entry(self.short_hash(&key)), u32::try_from(i)) {
            (Entry::Vacant(vacant), Ok(index)) => {
                vacant.insert(index);
            }
            (Entry::Occupied(held), _)
                if entries[*held.get() as usize].name.collision_key() == key => {}
            _ => {
                self.colliding_files.insert(key, i);
            }
        }
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

    fn list(text: &str) -> Result<Vec<NamedEntry>> {
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
        assert_eq!(&*entries[0].listed.url, "https://h/a.jpg#frag");
        assert!(entries[1].given);
        assert_eq!(entries[1].name.as_str(), "cats/b.jpg");
        assert_eq!(entries[1].listed.sha256.as_deref(), Some(sha.as_str()));
        let origin = entries[1].listed.origin.to_string();
        assert!(origin.ends_with(":4"), "{origin}");
        assert_eq!(entries[2].listed.sha256.as_deref(), Some(sha.as_str()));
        assert!(!entries[2].given);
        assert_eq!(entries[2].name.as_str(), "c", "named as its URL suggests");
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
        assert!(repeats[0].entry.origin.to_string().ends_with(":2"));
        let err =
            assign_names(list("https://h/1 x.jpg\nhttps://h/2 X.JPG\n").unwrap()).unwrap_err();
        assert!(err.to_string().contains("both name the file"), "{err}");
        let err = assign_names(list("https://h/1 a\nhttps://h/2 a/b\n").unwrap()).unwrap_err();
        assert!(err.to_string().contains("clashes"), "{err}");
    }

    #[test]
    fn a_taken_tagged_name_gets_a_counter_and_no_url_is_dropped() {
        let b = "https://h/b/x.jpg";
        let tagged = format!("x-{}.jpg", url_tag(b));
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
        assert_eq!(got[2], format!("x-{}-2.jpg", url_tag(b)), "{got:?}");
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
    fn origins_name_the_list_line_or_argument_and_share_the_label() {
        let label = Arc::new("urls.txt".to_owned());
        assert_eq!(Origin::line(&label, 12).to_string(), "urls.txt:12");
        assert_eq!(Origin::argument(3).to_string(), "argument 3");
        let entries = list("https://h/a\n\nhttps://h/b\n").unwrap();
        let origins: Vec<&Origin> = entries.iter().map(|e| &e.listed.origin).collect();
        assert!(origins[1].to_string().ends_with(":3"), "{}", origins[1]);
        let (Some(first), Some(second)) = (&origins[0].list, &origins[1].list) else {
            panic!("{origins:?}");
        };
        assert!(Arc::ptr_eq(first, second), "one label for the whole list");
    }

    #[test]
    fn entries_stay_compact_and_are_named_in_place() {
        // A list of a million URLs holds a million of these.
        assert!(
            std::mem::size_of::<NamedEntry>() <= 80,
            "{}",
            std::mem::size_of::<NamedEntry>()
        );
        let mut entries = list("https://h/a.jpg\nhttps://h/b/a.jpg\nhttps://h/c.jpg\n").unwrap();
        // No room to give back: the buffer cannot move.
        entries.shrink_to_fit();
        let buffer = entries.as_ptr();
        let (named, repeats) = assign_names(entries).unwrap();
        assert_eq!(named.as_ptr(), buffer, "the same Vec, not a copy");
        assert!(repeats.is_empty());
        assert_eq!(named.len(), 3);
        assert_eq!(&*named[1].listed.url, "https://h/b/a.jpg");
        assert_ne!(named[1].name.as_str(), "a.jpg", "renamed in place");
    }

    /// Hashes everything alike: every name's hash collides.
    #[derive(Default)]
    struct SameHash;

    impl std::hash::Hasher for SameHash {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }

    #[test]
    fn taken_names_are_exact_when_their_hashes_collide() {
        let entries = list("https://h/1 x/y.jpg\nhttps://h/b.jpg\nhttps://h/c.jpg\n").unwrap();
        let same_hash = std::hash::BuildHasherDefault::<SameHash>::default();
        let mut taken = Taken::with_hasher(same_hash, entries.len());
        for i in 0..entries.len() {
            taken.insert(&entries, i);
        }
        assert_eq!(taken.colliding_files.len(), 2, "the test collides");
        assert_eq!(taken.file_holder(&entries, "x/y.jpg"), Some(0));
        assert_eq!(taken.file_holder(&entries, "b.jpg"), Some(1));
        assert_eq!(taken.file_holder(&entries, "c.jpg"), Some(2));
        assert_eq!(taken.file_holder(&entries, "d.jpg"), None);
        let taken_as = |name: &str| taken.conflicts(&entries, &RelativePath::parse(name).unwrap());
        assert!(taken_as("C.JPG"), "case-insensitive");
        assert!(taken_as("x"), "a directory");
        assert!(taken_as("b.jpg/z"), "under a file");
        assert!(!taken_as("d.jpg"));
        assert!(!taken_as("x/z.jpg"));
    }

    #[test]
    fn arguments_are_checked_too() {
        assert!(from_arguments(&["https://h/a".into()]).is_ok());
        let upper = from_arguments(&["HTTP://h/A".into()]).unwrap();
        assert_eq!(
            &*upper[0].listed.url, "http://h/A",
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
