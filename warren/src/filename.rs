//! Safe relative file names for downloads.
//!
//! A [`RelativePath`] can only name a file inside a base directory: it is
//! relative, every component is non-empty and neither `.` nor `..`, and no
//! component holds NUL, control characters or backslashes. Names derived
//! from URLs are sanitized into that form; names a user gives are checked
//! and refused if they break it. Workers check again before writing into a
//! shared directory, so a hostile task cannot escape it either.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest component we produce or accept, in bytes (common filesystem
/// limit: 255).
const MAX_COMPONENT: usize = 255;
/// Components we derive are cut to this, leaving room for a suffix.
const DERIVED_COMPONENT: usize = 200;
/// Longest whole relative path accepted, in bytes.
const MAX_PATH: usize = 1024;
/// Names warren uses for its own temporary files; user files may not start
/// with it.
pub const RESERVED_PREFIX: &str = ".warren";
/// The directory, inside an output directory, that holds files being
/// written before they are renamed into place.
pub const TEMP_DIR: &str = ".warren-tmp";

/// A validated `/`-separated relative path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelativePath(String);

impl RelativePath {
    /// Checks a user-given or received name.
    ///
    /// # Errors
    /// A message saying why the name could escape or is unusable.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("the name is empty".into());
        }
        if name.len() > MAX_PATH {
            return Err(format!("the name is longer than {MAX_PATH} bytes"));
        }
        if name.starts_with('/') {
            return Err("the name is an absolute path".into());
        }
        if let Some(bad) = name.chars().find(|c| c.is_control() || *c == '\\') {
            return Err(format!("the name contains the character {bad:?}"));
        }
        for component in name.split('/') {
            match component {
                "" => return Err("the name has an empty path component (//)".into()),
                "." | ".." => return Err(format!("the name contains a {component:?} component")),
                _ if component.len() > MAX_COMPONENT => {
                    return Err(format!(
                        "a path component is longer than {MAX_COMPONENT} bytes"
                    ));
                }
                _ if component.starts_with(RESERVED_PREFIX) => {
                    return Err(format!(
                        "names starting with {RESERVED_PREFIX} are reserved"
                    ));
                }
                _ => {}
            }
        }
        Ok(RelativePath(name.to_owned()))
    }

    /// The file name a URL suggests: its last non-empty path segment,
    /// percent-decoded and sanitized; the host when the path has none.
    pub fn from_url(url: &url::Url) -> Self {
        let segment = url
            .path_segments()
            .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
            .map(percent_decode)
            .unwrap_or_default();
        let sanitized = sanitize_component(&segment);
        if sanitized.is_empty() {
            let host = sanitize_component(url.host_str().unwrap_or(""));
            return RelativePath(if host.is_empty() {
                "download".into()
            } else {
                host
            });
        }
        RelativePath(sanitized)
    }

    /// The same name with `-tag` before the extension of its last
    /// component: `dir/img.jpg` → `dir/img-1a2b.jpg`.
    pub fn with_tag(&self, tag: &str) -> Self {
        let (dir, file) = match self.0.rsplit_once('/') {
            Some((dir, file)) => (Some(dir), file),
            None => (None, self.0.as_str()),
        };
        let (stem, extension) = match file.rfind('.') {
            Some(dot) if dot > 0 => (&file[..dot], &file[dot..]),
            _ => (file, ""),
        };
        let tagged = format!("{stem}-{tag}{extension}");
        RelativePath(match dir {
            Some(dir) => format!("{dir}/{tagged}"),
            None => tagged,
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which two names collide on a case-insensitive
    /// filesystem.
    pub fn collision_key(&self) -> String {
        self.0.to_lowercase()
    }

    /// The path of this name inside `base`.
    pub fn under(&self, base: &Path) -> PathBuf {
        self.0
            .split('/')
            .fold(base.to_path_buf(), |path, c| path.join(c))
    }
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// One path component that cannot escape: separators and control
/// characters become `_`, `.`/`..` and reserved names are defused, and the
/// length is capped (keeping a short extension).
fn sanitize_component(text: &str) -> String {
    let mut name: String = text
        .trim()
        .chars()
        .map(|c| {
            if c.is_control() || c == '/' || c == '\\' {
                '_'
            } else {
                c
            }
        })
        .collect();
    if name.chars().all(|c| c == '.') {
        name = name.replace('.', "_");
    }
    if name.starts_with(RESERVED_PREFIX) {
        name.insert(0, '_');
    }
    if name.len() > DERIVED_COMPONENT {
        let extension = match name.rfind('.') {
            Some(dot) if name.len() - dot <= 16 => name[dot..].to_owned(),
            _ => String::new(),
        };
        let mut cut = DERIVED_COMPONENT - extension.len();
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}{extension}", &name[..cut]);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derived(url: &str) -> String {
        RelativePath::from_url(&url::Url::parse(url).unwrap()).0
    }

    #[test]
    fn names_come_from_the_last_path_segment() {
        assert_eq!(derived("https://example.com/images/cat.jpg"), "cat.jpg");
        assert_eq!(
            derived("https://example.com/images/cat.jpg?size=2#x"),
            "cat.jpg"
        );
        assert_eq!(derived("https://example.com/a/b/"), "b");
        assert_eq!(derived("https://example.com/"), "example.com");
        assert_eq!(
            derived("https://example.com/caf%C3%A9%20menu.pdf"),
            "café menu.pdf"
        );
    }

    #[test]
    fn derived_names_cannot_escape() {
        // URL parsing already resolves dot segments, even encoded ones.
        assert_eq!(derived("https://example.com/a/%2e%2e"), "example.com");
        assert_eq!(sanitize_component(".."), "__");
        assert_eq!(sanitize_component(" . "), "_");
        assert_eq!(
            derived("https://example.com/..%2f..%2fetc%2fpasswd"),
            ".._.._etc_passwd"
        );
        assert_eq!(derived("https://example.com/x%00y%0Az"), "x_y_z");
        assert_eq!(derived("https://example.com/a%5Cb"), "a_b");
        assert_eq!(derived("https://example.com/.warren-tmp"), "_.warren-tmp");
        for url in [
            "https://example.com/a/%2e%2e",
            "https://example.com/..%2f..%2fetc%2fpasswd",
            "https://example.com/%2F",
        ] {
            let name = RelativePath::from_url(&url::Url::parse(url).unwrap());
            assert!(RelativePath::parse(name.as_str()).is_ok(), "{url} → {name}");
        }
        let long = format!("https://example.com/{}.jpeg", "x".repeat(400));
        let name = derived(&long);
        assert!(
            name.len() <= DERIVED_COMPONENT && name.ends_with(".jpeg"),
            "{name}"
        );
    }

    #[test]
    fn given_names_that_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "x\0y",
            "a\\b",
            "tab\there",
            ".warren-tmp/x",
        ] {
            assert!(RelativePath::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["a.jpg", "cats/1.jpg", "..hidden", "a b/c.d"] {
            assert!(RelativePath::parse(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn tags_go_before_the_extension() {
        let name = RelativePath::parse("dir/img.tar.gz").unwrap();
        assert_eq!(name.with_tag("ab12").as_str(), "dir/img.tar-ab12.gz");
        assert_eq!(
            RelativePath::parse("README")
                .unwrap()
                .with_tag("1")
                .as_str(),
            "README-1"
        );
        assert_eq!(
            RelativePath::parse(".profile")
                .unwrap()
                .with_tag("1")
                .as_str(),
            ".profile-1"
        );
    }

    #[test]
    fn paths_join_under_a_base() {
        let name = RelativePath::parse("a/b.txt").unwrap();
        assert_eq!(name.under(Path::new("/out")), PathBuf::from("/out/a/b.txt"));
    }
}
