//! A strict reader for GLUE's tab-separated files: no quoting (fields hold bare `"`), an
//! optional UTF-8 byte-order mark, `\n` or `\r\n` line ends, and an error naming file and
//! line for anything unexpected, never a silent skip.

use std::path::Path;

use crate::error::{Error, Result};

/// One data line split into fields, with its 1-based line number.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    pub line: usize,
    pub fields: Vec<&'a str>,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Splits `bytes` (the whole file) into rows of exactly `columns` fields.
/// `path` is used only in error messages.
pub fn parse_rows<'a>(bytes: &'a [u8], columns: usize, path: &Path) -> Result<Vec<Row<'a>>> {
    let error = |line: usize, message: String| Error::Data {
        path: path.to_path_buf(),
        line: Some(line),
        message,
    };
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    // A final line terminator leaves one empty piece behind; some official files have none.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let line = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text = std::str::from_utf8(raw).map_err(|e| {
                error(
                    line,
                    format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                )
            })?;
            if text.is_empty() {
                return Err(error(
                    line,
                    format!("empty line, expected {columns} tab-separated fields"),
                ));
            }
            let fields: Vec<&str> = text.split('\t').collect();
            if fields.len() != columns {
                return Err(error(
                    line,
                    format!(
                        "{} tab-separated fields, expected {columns}{}",
                        fields.len(),
                        if fields.len() < columns {
                            " (truncated row?)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Ok(Row { line, fields })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(bytes: &[u8], columns: usize) -> Result<Vec<Vec<String>>> {
        parse_rows(bytes, columns, Path::new("f.tsv")).map(|rows| {
            rows.into_iter()
                .map(|r| r.fields.iter().map(|f| f.to_string()).collect())
                .collect()
        })
    }

    #[test]
    fn strips_bom_and_carriage_returns_and_keeps_quotes() {
        let parsed = rows(b"\xEF\xBB\xBFa\tb\r\n\"x\tsay \"hi\n", 2).unwrap();
        assert_eq!(parsed, [["a", "b"], ["\"x", "say \"hi"]]);
    }

    #[test]
    fn accepts_a_missing_final_newline() {
        assert_eq!(rows(b"a\tb\nc\td", 2).unwrap().len(), 2);
    }

    #[test]
    fn errors_name_file_line_and_expectation() {
        let err = rows(b"a\tb\nc\n", 2).unwrap_err().to_string();
        assert_eq!(
            err,
            "f.tsv:2: 1 tab-separated fields, expected 2 (truncated row?)"
        );
        let err = rows(b"a\tb\n\nc\td\n", 2).unwrap_err().to_string();
        assert_eq!(err, "f.tsv:2: empty line, expected 2 tab-separated fields");
        let err = rows(b"a\tb\n\xFFc\td\n", 2).unwrap_err().to_string();
        assert_eq!(err, "f.tsv:2: invalid UTF-8 at byte 0 of the line");
    }
}
