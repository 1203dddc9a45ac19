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
//!
//! A list can hold millions of URLs, and the producer holds all of them
//! until the job ends, so a [`UrlList`] keeps the text of every entry in
//! one buffer and, per entry, only a fixed-size `Slot` of offsets into
//! it: no allocation of its own per URL or name.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::io::{BufRead, Read};
use std::sync::Arc;

use hashbrown::HashTable;
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
/// `argument 3`. Every line of a list shares the list's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The list's label; `None` for a URL given as an argument.
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

/// Every entry of a job's lists and URL arguments, with its file name.
/// Entries are numbered from 0 in list order; [`assign_names`] sets exact
/// repeats apart, after which the numbers are those of the entries to
/// fetch.
#[derive(Debug, Default)]
pub struct UrlList {
    /// The URLs, checksums and names of all entries, one after another.
    text: String,
    /// The entries, in list order.
    slots: Vec<Slot>,
    /// Exact repeats, each with the number of the entry it repeats.
    repeats: Vec<(Slot, u32)>,
    /// The lists' labels, by [`Slot::list`].
    labels: Vec<Arc<String>>,
}

/// One entry: where its fields are in [`UrlList::text`], and where it was
/// listed. 32 bytes, where a `Box<str>` per field cost 16 for the pointer
/// and 16 to 32 more for the allocator's rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Where the URL starts. The SHA-256's 64 hex digits, when listed,
    /// follow the URL.
    url_start: u64,
    /// Where the file name starts: after the URL (and SHA-256), or later
    /// in the text when [`assign_names`] renamed the entry.
    name_start: u64,
    url_len: u32,
    /// The line in its list, or the argument's number.
    number: u32,
    name_len: u16,
    /// Index of its list's label, or [`ARGUMENT`].
    list: u16,
    has_sha256: bool,
    /// Whether the user gave the name.
    given: bool,
}

/// [`Slot::list`] of a URL given as an argument.
const ARGUMENT: u16 = u16::MAX;

/// Length of a SHA-256 in hex.
const SHA256_HEX: usize = 64;

/// One entry of a [`UrlList`], borrowed.
#[derive(Clone, Copy)]
pub struct NamedEntry<'a> {
    list: &'a UrlList,
    slot: &'a Slot,
}

impl std::fmt::Debug for NamedEntry<'_> {
    /// The entry, not the whole list it is in.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedEntry")
            .field("url", &self.url())
            .field("name", &self.name())
            .field("sha256", &self.sha256())
            .field("given", &self.is_given())
            .field("origin", &self.origin().to_string())
            .finish()
    }
}

impl<'a> NamedEntry<'a> {
    fn text(&self, start: u64, len: usize) -> &'a str {
        // Offsets into `text` were taken from its length when the field
        // was appended, so they fit in `usize` and fall on char boundaries.
        let start = start as usize;
        &self.list.text[start..start + len]
    }

    /// The URL, checked, as `url::Url` serializes it.
    pub fn url(&self) -> &'a str {
        self.text(self.slot.url_start, self.slot.url_len as usize)
    }

    /// The expected SHA-256, lowercase hex.
    pub fn sha256(&self) -> Option<&'a str> {
        let after_url = self.slot.url_start + u64::from(self.slot.url_len);
        self.slot
            .has_sha256
            .then(|| self.text(after_url, SHA256_HEX))
    }

    /// Its file name, relative to the output directory: the one the user
    /// gave, or else the one its URL suggests, told apart from other
    /// entries' names by [`assign_names`].
    pub fn name(&self) -> &'a str {
        self.text(self.slot.name_start, self.slot.name_len as usize)
    }

    /// [`name`](Self::name) as a path.
    pub fn path(&self) -> RelativePath {
        // invariant: every name in the list was made by `RelativePath`
        // (`parse`, `from_url`, `with_tag` of a derived name), and those
        // only make names that `parse` accepts.
        RelativePath::parse(self.name()).expect("names in a list are checked paths")
    }

    /// Whether the user gave the name.
    pub fn is_given(&self) -> bool {
        self.slot.given
    }

    /// Where it was listed.
    pub fn origin(&self) -> Origin {
        Origin {
            list: self.list.labels.get(self.slot.list as usize).cloned(),
            number: self.slot.number.into(),
        }
    }
}

/// An entry that repeats an earlier one exactly: same URL, same name (or
/// both without one). It would only fetch the same file twice.
#[derive(Debug, Clone, Copy)]
pub struct Repeat<'a> {
    /// The repeating entry.
    pub entry: NamedEntry<'a>,
    /// Number of the entry it repeats.
    pub of: usize,
}

impl UrlList {
    /// How many entries (exact repeats set apart not counted).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Entry `i`.
    ///
    /// # Panics
    /// When `i` is not below [`len`](Self::len).
    pub fn get(&self, i: usize) -> NamedEntry<'_> {
        NamedEntry {
            list: self,
            slot: &self.slots[i],
        }
    }

    /// The entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = NamedEntry<'_>> {
        self.slots
            .iter()
            .map(|slot| NamedEntry { list: self, slot })
    }

    /// The exact repeats [`assign_names`] set apart, in list order.
    pub fn repeats(&self) -> impl Iterator<Item = Repeat<'_>> {
        self.repeats.iter().map(|(slot, of)| Repeat {
            entry: NamedEntry { list: self, slot },
            of: *of as usize,
        })
    }

    /// An index of the entries by URL and file name.
    pub fn places(&self) -> Places<'_> {
        let hasher = RandomState::new();
        let mut table = HashTable::with_capacity(self.len());
        // Fits: `UrlList::push` keeps the count within `u32`.
        for (i, entry) in (0u32..).zip(self.iter()) {
            let rehash = |&j: &u32| place_key_hash(&hasher, self.get(j as usize));
            table.insert_unique(place_key_hash(&hasher, entry), i, rehash);
        }
        Places {
            list: self,
            hasher,
            table,
        }
    }

    /// Appends `text` to the buffer; returns where it starts.
    fn append(&mut self, text: &str) -> u64 {
        let start = self.text.len() as u64;
        self.text.push_str(text);
        start
    }

    /// Appends the entry of one parsed line, listed at `list`:`number`.
    fn push(&mut self, line: Line, (list, number): (u16, u64)) -> std::result::Result<(), String> {
        if u32::try_from(self.slots.len()).is_err() {
            return Err(format!("more than {} URLs in one job", u32::MAX));
        }
        let number = u32::try_from(number)
            .map_err(|_| format!("more than {} lines in one list", u32::MAX))?;
        let name_len = u16::try_from(line.name.as_str().len())
            .map_err(|_| format!("the file name is longer than {} bytes", u16::MAX))?;
        let url_start = self.append(&line.url);
        if let Some(sha256) = &line.sha256 {
            self.append(sha256);
        }
        let name_start = self.append(line.name.as_str());
        // Fits: a line is at most `MAX_LINE_BYTES`.
        self.slots.push(Slot {
            url_start,
            name_start,
            number,
            url_len: line.url.len() as u32,
            name_len,
            list,
            has_sha256: line.sha256.is_some(),
            given: line.given,
        });
        Ok(())
    }

    /// Gives entry `i` the name `name`. The old name's bytes stay in the
    /// buffer: renames are rare (only names that collide).
    fn rename(&mut self, i: usize, name: &RelativePath) {
        let name_start = self.append(name.as_str());
        let slot = &mut self.slots[i];
        slot.name_start = name_start;
        // Fits: a tagged name is a derived one (at most 200 bytes) and
        // its tag.
        slot.name_len = name.as_str().len() as u16;
    }
}

/// The entries of a [`UrlList`] by URL and file name (together unique
/// once [`assign_names`] has run): an entry number a slot in a table
/// by hash, some 5 bytes an entry, where a map of the strings cost 50.
#[derive(Debug)]
pub struct Places<'a> {
    list: &'a UrlList,
    hasher: RandomState,
    table: HashTable<u32>,
}

impl Places<'_> {
    /// The number of the entry of `url` saved as `name`, if any.
    pub fn find(&self, url: &str, name: &str) -> Option<usize> {
        let is_it = |&i: &u32| {
            let entry = self.list.get(i as usize);
            entry.url() == url && entry.name() == name
        };
        let found = self.table.find(self.hasher.hash_one((url, name)), is_it);
        found.map(|&i| i as usize)
    }
}

/// The hash [`Places`] files `entry` under.
fn place_key_hash(hasher: &RandomState, entry: NamedEntry<'_>) -> u64 {
    hasher.hash_one((entry.url(), entry.name()))
}

/// Reads every list and URL of `inputs`: the lists' entries in order, then
/// the URLs given as arguments. Blocking.
///
/// # Errors
/// As [`read_list`] and [`add_arguments`]; [`Error::Usage`] when there is
/// no URL at all.
pub fn read_all(inputs: &[UrlInput]) -> Result<UrlList> {
    let mut list = UrlList::default();
    let mut arguments = Vec::new();
    for input in inputs {
        match input {
            UrlInput::List(source) => read_list(source, &mut list)?,
            UrlInput::Url(url) => arguments.push(url.clone()),
        }
    }
    add_arguments(&arguments, &mut list)?;
    if list.is_empty() {
        return Err(Error::Usage(
            "no URL to download: the lists are empty".into(),
        ));
    }
    Ok(list)
}

/// Reads every entry of a URL list into `into`.
///
/// # Errors
/// [`Error::Open`]/[`Error::Read`] for I/O, [`Error::BadInput`] for the
/// first bad line (including one over [`MAX_LINE_BYTES`] or not UTF-8).
pub fn read_list(source: &Source, into: &mut UrlList) -> Result<()> {
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
    let list = u16::try_from(into.labels.len())
        .ok()
        .filter(|&list| list != ARGUMENT)
        .ok_or_else(|| Error::Usage(format!("more than {} URL lists", ARGUMENT - 1)))?;
    into.labels.push(Arc::new(label.clone()));
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
        let parsed = parse_line(content).map_err(bad_line)?;
        into.push(parsed, (list, line_number)).map_err(bad_line)?;
    }
    Ok(())
}

/// Adds the URLs given on the command line to `into`.
///
/// # Errors
/// [`Error::Usage`] for the first bad URL.
pub fn add_arguments(urls: &[String], into: &mut UrlList) -> Result<()> {
    for (number, url) in (1..).zip(urls) {
        parse_line(url)
            .and_then(|line| into.push(line, (ARGUMENT, number)))
            .map_err(|reason| Error::Usage(format!("{}: {reason}", Origin::argument(number))))?;
    }
    Ok(())
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

/// The fields of one line (or argument), checked.
struct Line {
    /// As `url::Url` serializes it.
    url: String,
    /// As given, or as the URL suggests.
    name: RelativePath,
    given: bool,
    sha256: Option<String>,
}

/// Parses and checks one line (or argument).
fn parse_line(content: &str) -> std::result::Result<Line, String> {
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
    Ok(Line {
        given: name.is_some(),
        name: name.unwrap_or_else(|| RelativePath::from_url(&url)),
        url: url.into(),
        sha256,
    })
}

/// Gives every entry its file name, setting exact repeats aside. Works in
/// place: the entries (as read, each named as given or as its URL
/// suggests) become the named entries.
///
/// # Errors
/// [`Error::Usage`] when two given names collide: only the user can decide.
pub fn assign_names(list: &mut UrlList) -> Result<()> {
    // On the whole list as written, repeats included.
    check_given_names(list)?;
    set_repeats_aside(list);
    // Given names first, so that they win over derived ones.
    let mut taken = Taken::new(list.len());
    for i in (0..list.len()).filter(|&i| list.get(i).is_given()) {
        taken.insert(list, i);
    }
    for i in 0..list.len() {
        if list.get(i).is_given() {
            continue;
        }
        if taken.conflicts(list, &list.get(i).path()) {
            let free = free_name(&taken, list, i);
            list.rename(i, &free);
        }
        taken.insert(list, i);
    }
    Ok(())
}

/// Checks that no two given names collide, nor one is the directory of
/// another.
///
/// # Errors
/// As [`assign_names`].
fn check_given_names(list: &UrlList) -> Result<()> {
    let mut taken = Taken::new(list.iter().filter(|entry| entry.is_given()).count());
    for (i, entry) in list
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.is_given())
    {
        let name = entry.path();
        if let Some(other) = taken.file_holder(list, &name.collision_key()) {
            // An error rather than a renaming: a name the user wrote is a
            // promise of where the file lands, and two different URLs under
            // one name is a mistake in the list.
            return Err(Error::Usage(format!(
                "{} and {} both name the file {name}: give one of them another name \
                 (names you give are never changed)",
                list.get(other).origin(),
                entry.origin()
            )));
        }
        if taken.conflicts(list, &name) {
            return Err(Error::Usage(format!(
                "{}: the name {name} clashes with a file or directory another entry names",
                entry.origin()
            )));
        }
        taken.insert(list, i);
    }
    Ok(())
}

/// Moves the exact repeats out of the entries, in place, each with the
/// number its original has among the entries that remain.
fn set_repeats_aside(list: &mut UrlList) {
    let repeat_of = exact_repeats(list);
    if repeat_of.is_empty() {
        return;
    }
    let repeated: HashSet<u32> = repeat_of.values().copied().collect();
    // Where the entries that others repeat land among the remaining ones.
    let mut kept_at: HashMap<u32, u32> = HashMap::new();
    let mut repeats = Vec::new();
    let (mut index, mut kept) = (0u32, 0u32);
    // `retain` visits the entries once each, in order.
    list.slots.retain(|slot| {
        let i = index;
        index += 1;
        if let Some(original) = repeat_of.get(&i) {
            repeats.push((*slot, kept_at[original]));
            return false;
        }
        if repeated.contains(&i) {
            kept_at.insert(i, kept);
        }
        kept += 1;
        true
    });
    list.repeats = repeats;
}

/// For each entry that repeats an earlier one exactly (same URL, same
/// given name or none), the number of the first of them. Found by sorting
/// entry numbers rather than hashing copies of the entries: it costs a few
/// bytes an entry however long the list.
fn exact_repeats(list: &UrlList) -> HashMap<u32, u32> {
    let key = |i: u32| {
        let entry = list.get(i as usize);
        (entry.url(), entry.is_given().then(|| entry.name()))
    };
    // Fits: `UrlList::push` keeps the count within `u32`.
    let mut order: Vec<u32> = (0..list.len() as u32).collect();
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
fn free_name(taken: &Taken, list: &UrlList, i: usize) -> RelativePath {
    let entry = list.get(i);
    let derived = entry.path();
    let tag = url_tag(entry.url());
    let mut name = derived.with_tag(&tag);
    // Ends: each round tries a new name and only finitely many are taken.
    let mut counter = 2u64;
    while taken.conflicts(list, &name) {
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
/// A file name is held as the number of an entry that bears it, in a
/// table by the hash of the name's key (the name itself stays in the
/// list, and the key is made again from it to compare): some 5 bytes a
/// name, where a set of the keys themselves cost some 80.
#[derive(Debug)]
struct Taken<S = RandomState> {
    hasher: S,
    /// Numbers of entries bearing the file names taken, one per name.
    files: HashTable<u32>,
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
            files: HashTable::with_capacity(files),
            dirs: HashSet::new(),
        }
    }

    /// The number of the entry whose file name has collision key `key`,
    /// if one is inserted.
    fn file_holder(&self, list: &UrlList, key: &str) -> Option<usize> {
        let is_key = |&i: &u32| file_key(list, i) == key;
        let held = self.files.find(self.hasher.hash_one(key), is_key);
        held.map(|&i| i as usize)
    }

    /// Whether `name` is taken as a file or directory, or one of its
    /// directories is taken as a file.
    fn conflicts(&self, list: &UrlList, name: &RelativePath) -> bool {
        let key = name.collision_key();
        self.file_holder(list, &key).is_some()
            || self.dirs.contains(&key)
            || parents(&key).any(|dir| self.file_holder(list, dir).is_some())
    }

    /// Takes the name of entry `i`.
    fn insert(&mut self, list: &UrlList, i: usize) {
        let key = file_key(list, i as u32);
        for dir in parents(&key) {
            self.dirs.insert(dir.to_owned());
        }
        if self.file_holder(list, &key).is_none() {
            let hasher = &self.hasher;
            let rehash = |&j: &u32| hasher.hash_one(file_key(list, j));
            // Fits: `UrlList::push` keeps the count within `u32`.
            self.files
                .insert_unique(hasher.hash_one(&key), i as u32, rehash);
        }
    }
}

/// The collision key of entry `i`'s file name.
fn file_key(list: &UrlList, i: u32) -> String {
    list.get(i as usize).path().collision_key()
}

/// `a/b/c` → `a`, `a/b`.
fn parents(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/').map(move |(i, _)| &key[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn list(text: &str) -> Result<UrlList> {
        let mut list = UrlList::default();
        read_list(&Source::File(written(text).path().to_owned()), &mut list)?;
        Ok(list)
    }

    fn arguments(urls: &[&str]) -> Result<UrlList> {
        let mut list = UrlList::default();
        let urls: Vec<String> = urls.iter().map(|&url| url.to_owned()).collect();
        add_arguments(&urls, &mut list)?;
        Ok(list)
    }

    fn named_list(text: &str) -> Result<UrlList> {
        let mut list = list(text)?;
        assign_names(&mut list)?;
        Ok(list)
    }

    fn written(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn places_find_an_entry_by_its_url_and_final_name() {
        let list = named_list("https://h/a\nhttps://h/b x.bin\nhttps://h/c/a\n").unwrap();
        let places = list.places();
        assert_eq!(places.find("https://h/b", "x.bin"), Some(1));
        let renamed = list.get(2);
        assert_ne!(renamed.name(), "a", "named apart from the first");
        assert_eq!(places.find(renamed.url(), renamed.name()), Some(2));
        assert_eq!(places.find("https://h/c/a", "a"), None);
        assert_eq!(places.find("https://h/x", "x.bin"), None);
    }

    fn names(text: &str) -> Vec<String> {
        let named = named_list(text).unwrap();
        named.iter().map(|n| n.name().to_owned()).collect()
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
        assert_eq!(entries.get(0).url(), "https://h/a.jpg#frag");
        assert_eq!(entries.get(0).sha256(), None);
        assert_eq!(entries.get(0).name(), "a.jpg");
        assert!(entries.get(1).is_given());
        assert_eq!(entries.get(1).url(), "https://h/b.jpg");
        assert_eq!(entries.get(1).name(), "cats/b.jpg");
        assert_eq!(entries.get(1).sha256(), Some(sha.as_str()));
        let origin = entries.get(1).origin().to_string();
        assert!(origin.ends_with(":4"), "{origin}");
        assert_eq!(entries.get(2).sha256(), Some(sha.as_str()));
        assert!(!entries.get(2).is_given());
        assert_eq!(entries.get(2).name(), "c", "named as its URL suggests");
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
        let err = read_list(
            &Source::File(file.path().to_owned()),
            &mut UrlList::default(),
        )
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
        let named =
            named_list("https://h/a.jpg\nhttps://h/a.jpg\nhttps://h/a.jpg b.jpg\n").unwrap();
        assert_eq!(named.len(), 2, "the same URL under another name is fetched");
        let repeats: Vec<Repeat> = named.repeats().collect();
        assert_eq!(repeats.len(), 1);
        assert_eq!(repeats[0].of, 0);
        assert!(repeats[0].entry.origin().to_string().ends_with(":2"));
        assert_eq!(repeats[0].entry.url(), "https://h/a.jpg");
        let err = named_list("https://h/1 x.jpg\nhttps://h/2 X.JPG\n").unwrap_err();
        assert!(err.to_string().contains("both name the file"), "{err}");
        let err = named_list("https://h/1 a\nhttps://h/2 a/b\n").unwrap_err();
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
        let named = named_list(&text).unwrap();
        assert_eq!(named.repeats().count(), 0);
        let got: Vec<String> = named.iter().map(|n| n.name().to_owned()).collect();
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
        let origins: Vec<Origin> = entries.iter().map(|e| e.origin()).collect();
        assert!(origins[1].to_string().ends_with(":3"), "{}", origins[1]);
        let (Some(first), Some(second)) = (&origins[0].list, &origins[1].list) else {
            panic!("{origins:?}");
        };
        assert!(Arc::ptr_eq(first, second), "one label for the whole list");
    }

    #[test]
    fn entries_stay_compact_and_are_named_in_place() {
        // A list of a million URLs holds a million of these, shaped like
        // the benchmark's (issue 13): 40-odd bytes of URL, a given name.
        let text: String = (0..1000)
            .map(|i| format!("http://127.0.0.1:8000/status/404?n={i:06} f{i:06}\n"))
            .collect();
        let entries = list(&text).unwrap();
        assert!(size_of::<Slot>() <= 32, "{}", size_of::<Slot>());
        // The list's own text less the separators (a space and a
        // newline a line), and nothing per entry beyond its slot: 80
        // bytes an entry here, where an entry of 80 bytes with an
        // allocation for its URL and one for its name took 176.
        assert_eq!(entries.len(), 1000);
        assert_eq!(entries.text.len(), text.len() - 2 * 1000);
        let mut entries = list("https://h/a.jpg\nhttps://h/b/a.jpg\nhttps://h/c.jpg\n").unwrap();
        let slots = entries.slots.as_ptr();
        assign_names(&mut entries).unwrap();
        assert_eq!(
            entries.slots.as_ptr(),
            slots,
            "the same entries, not a copy"
        );
        assert_eq!(entries.repeats().count(), 0);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries.get(1).url(), "https://h/b/a.jpg");
        assert_ne!(entries.get(1).name(), "a.jpg", "renamed in place");
        assert_eq!(entries.get(2).name(), "c.jpg");
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
        assert_eq!(same_hash.hash_one("b.jpg"), same_hash.hash_one("c.jpg"));
        let mut taken = Taken::with_hasher(same_hash, entries.len());
        for i in 0..entries.len() {
            taken.insert(&entries, i);
        }
        assert_eq!(taken.files.len(), 3);
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
        assert!(arguments(&["https://h/a"]).is_ok());
        let upper = arguments(&["HTTP://h/A"]).unwrap();
        assert_eq!(
            upper.get(0).url(),
            "http://h/A",
            "schemes are not case-sensitive"
        );
        assert_eq!(upper.get(0).origin().to_string(), "argument 1");
        let err = arguments(&["https://h/a", "gopher://h"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("argument 2: unsupported scheme"),
            "{err}"
        );
    }
}
