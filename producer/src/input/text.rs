//! Text input: numbers separated by whitespace, commas or newlines.
//!
//! `#` starts a comment that runs to the end of the line, so files written by
//! `np.savetxt` (with a header) read as they are. A trailing comma at the end
//! of a line is allowed; an empty value between two commas is an error, as is
//! anything that is not a number of the requested dtype. Every error names
//! the line. The scanner works on bytes in bounded buffers, so a file that is
//! one enormous line is no problem.

use std::io::BufRead;

use warren::Dtype;

use super::{Chunk, ChunkReader, Source};
use crate::error::{Error, Result};

/// A token longer than this is not a number.
const MAX_TOKEN_LEN: usize = 512;

/// Streams numbers out of text.
pub struct TextReader {
    input: String,
    reader: Box<dyn BufRead + Send>,
    dtype: Dtype,
    scan: ScanState,
    done: bool,
}

/// Where the scanner is, kept apart from the reader so both can be
/// borrowed at once.
#[derive(Debug)]
struct ScanState {
    /// 1-based line of the next byte.
    line: u64,
    /// A comma was seen since the last token on this line.
    comma_pending: bool,
    /// A token was seen on this line.
    token_on_line: bool,
    /// Inside a `#` comment.
    in_comment: bool,
    at_start: bool,
}

/// Why scanning stopped.
enum ScanError {
    Io(std::io::Error),
    Bad { line: u64, reason: String },
}

impl std::fmt::Debug for TextReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextReader")
            .field("input", &self.input)
            .field("dtype", &self.dtype)
            .field("scan", &self.scan)
            .finish_non_exhaustive()
    }
}

impl ScanState {
    fn end_line(&mut self) {
        self.line += 1;
        self.comma_pending = false;
        self.token_on_line = false;
        self.in_comment = false;
    }

    /// Reads the next token into `token` and returns its line, or `None` at
    /// the end of the input.
    fn next_token(
        &mut self,
        reader: &mut dyn BufRead,
        token: &mut Vec<u8>,
    ) -> std::result::Result<Option<u64>, ScanError> {
        token.clear();
        let mut token_line = self.line;
        loop {
            let buffer = reader.fill_buf().map_err(ScanError::Io)?;
            if buffer.is_empty() {
                return Ok((!token.is_empty()).then_some(token_line));
            }
            let mut consumed = 0;
            if self.at_start {
                self.at_start = false;
                if buffer.starts_with(b"\xEF\xBB\xBF") {
                    consumed = 3; // UTF-8 byte-order mark
                }
            }
            let mut finished = false;
            let mut failure = None;
            for &byte in &buffer[consumed..] {
                if self.in_comment {
                    consumed += 1;
                    if byte == b'\n' {
                        self.end_line();
                    }
                    continue;
                }
                match byte {
                    // A separator ends the token; it is left for the next call.
                    b' ' | b'\t' | b'\r' | b'\n' | b',' | b'#' if !token.is_empty() => {
                        finished = true;
                        break;
                    }
                    b'\n' => self.end_line(),
                    b' ' | b'\t' | b'\r' => {}
                    b'#' => self.in_comment = true,
                    b',' => {
                        if self.comma_pending || !self.token_on_line {
                            failure = Some("empty value before a comma".to_owned());
                            break;
                        }
                        self.comma_pending = true;
                    }
                    _ => {
                        if token.is_empty() {
                            token_line = self.line;
                        }
                        if token.len() == MAX_TOKEN_LEN {
                            failure =
                                Some(format!("a value longer than {MAX_TOKEN_LEN} characters"));
                            break;
                        }
                        token.push(byte);
                    }
                }
                consumed += 1;
            }
            reader.consume(consumed);
            if let Some(reason) = failure {
                return Err(ScanError::Bad {
                    line: self.line,
                    reason,
                });
            }
            if finished {
                self.comma_pending = false;
                self.token_on_line = true;
                return Ok(Some(token_line));
            }
        }
    }
}

impl TextReader {
    /// Reads numbers of `dtype` from `reader`.
    pub fn new(source: &Source, reader: Box<dyn BufRead + Send>, dtype: Dtype) -> Self {
        TextReader {
            input: source.to_string(),
            reader,
            dtype,
            scan: ScanState {
                line: 1,
                comma_pending: false,
                token_on_line: false,
                in_comment: false,
                at_start: true,
            },
            done: false,
        }
    }

    fn bad(&self, line: u64, reason: String) -> Error {
        Error::BadInput {
            input: self.input.clone(),
            reason: format!("line {line}: {reason}"),
        }
    }

    fn next_token(&mut self, token: &mut Vec<u8>) -> Result<Option<u64>> {
        self.scan
            .next_token(&mut self.reader, token)
            .map_err(|e| match e {
                ScanError::Io(source) => Error::Read {
                    input: self.input.clone(),
                    source,
                },
                ScanError::Bad { line, reason } => self.bad(line, reason),
            })
    }

    /// Parses one token and appends it to `out` as little-endian bytes.
    fn push_value(&self, token: &[u8], line: u64, out: &mut Vec<u8>) -> Result<()> {
        let text = std::str::from_utf8(token)
            .map_err(|_| self.bad(line, "a value that is not valid UTF-8".into()))?;
        let not_a = |what: &str| self.bad(line, format!("{text:?} is not {what}"));
        let out_of_range = || self.bad(line, format!("{text} is out of range for {}", self.dtype));
        macro_rules! int {
            ($t:ty) => {{
                let value: i128 = text.parse().map_err(|_| not_a("an integer"))?;
                let value = <$t>::try_from(value).map_err(|_| out_of_range())?;
                out.extend_from_slice(&value.to_le_bytes());
            }};
        }
        match self.dtype {
            Dtype::Float64 => {
                let value: f64 = text.parse().map_err(|_| not_a("a number"))?;
                out.extend_from_slice(&value.to_le_bytes());
            }
            Dtype::Float32 => {
                // Through f64, as numpy's loadtxt(dtype=float32) does, so the
                // elements are the ones numpy would load.
                let value: f64 = text.parse().map_err(|_| not_a("a number"))?;
                out.extend_from_slice(&(value as f32).to_le_bytes());
            }
            Dtype::Int64 => int!(i64),
            Dtype::Int32 => int!(i32),
            Dtype::Int16 => int!(i16),
            Dtype::Int8 => int!(i8),
            Dtype::Uint64 => int!(u64),
            Dtype::Uint32 => int!(u32),
            Dtype::Uint16 => int!(u16),
            Dtype::Uint8 => int!(u8),
        }
        Ok(())
    }
}

impl ChunkReader for TextReader {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn total_elements(&self) -> Option<u64> {
        None
    }

    fn next_chunk(&mut self, max_elements: usize) -> Result<Option<Chunk>> {
        if self.done {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(max_elements.min(1 << 20) * self.dtype.itemsize());
        let mut count = 0u64;
        let mut token = Vec::with_capacity(64);
        while count < max_elements as u64 {
            match self.next_token(&mut token)? {
                Some(line) => {
                    self.push_value(&token, line, &mut bytes)?;
                    count += 1;
                }
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        Ok((count > 0).then_some(Chunk { bytes, count }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};

    fn reader(text: &str, dtype: Dtype, capacity: usize) -> TextReader {
        let cursor = Cursor::new(text.as_bytes().to_vec());
        TextReader::new(
            &Source::File("data.txt".into()),
            Box::new(BufReader::with_capacity(capacity, cursor)),
            dtype,
        )
    }

    fn floats(text: &str) -> Result<Vec<f64>> {
        // A tiny buffer makes tokens straddle buffer boundaries.
        let mut r = reader(text, Dtype::Float64, 3);
        let mut values = Vec::new();
        while let Some(chunk) = r.next_chunk(2)? {
            values.extend(
                chunk
                    .bytes
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap())),
            );
        }
        Ok(values)
    }

    #[test]
    fn separators_comments_and_specials() {
        let text =
            "\u{feff}# header\n1.5, 2e3 ,-0.25\n\n  7\t8,\ninf nan -inf # tail\n123456789012";
        let values = floats(text).unwrap();
        assert_eq!(values.len(), 9);
        assert_eq!(values[..5], [1.5, 2000.0, -0.25, 7.0, 8.0]);
        assert_eq!(values[5], f64::INFINITY);
        assert!(values[6].is_nan());
        assert_eq!(values[7], f64::NEG_INFINITY);
        assert_eq!(values[8], 123456789012.0);
        assert_eq!(floats("").unwrap(), Vec::<f64>::new());
        assert_eq!(floats("# only a comment").unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn bad_tokens_name_their_line() {
        let err = floats("1\n2\n3 abc\n").unwrap_err().to_string();
        assert_eq!(err, "data.txt: line 3: \"abc\" is not a number");
        let err = floats("1,,2").unwrap_err().to_string();
        assert_eq!(err, "data.txt: line 1: empty value before a comma");
        let err = floats("1\n,2").unwrap_err().to_string();
        assert_eq!(err, "data.txt: line 2: empty value before a comma");
        let long = "9".repeat(600);
        assert!(
            floats(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than")
        );
    }

    #[test]
    fn integers_are_checked_against_their_dtype() {
        let mut r = reader("1 -2 127", Dtype::Int8, 64);
        let chunk = r.next_chunk(10).unwrap().unwrap();
        assert_eq!(chunk.bytes, vec![1u8, 0xFE, 127]);
        let mut r = reader("1\n128", Dtype::Int8, 64);
        assert_eq!(
            r.next_chunk(10).unwrap_err().to_string(),
            "data.txt: line 2: 128 is out of range for int8"
        );
        let mut r = reader("1.5", Dtype::Int64, 64);
        assert_eq!(
            r.next_chunk(10).unwrap_err().to_string(),
            "data.txt: line 1: \"1.5\" is not an integer"
        );
    }
}
