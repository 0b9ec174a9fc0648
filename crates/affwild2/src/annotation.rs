//! Parser for one Aff-Wild2 annotation file (`<video>.txt` of the VA, AU or EXPR task).
//!
//! Format (ABAW 2020, read by wtomin's `frames_to_label` and kuhnkeF's `write_labelfile.py`):
//! line 1 is a comma-separated header (`valence,arousal`; `AU1,AU2,...`; `Neutral,Anger,...`),
//! then data line k is frame k (`0000k.jpg`). Missing labels: `-5` (VA), `-1` (AU, EXPR); a
//! frame is missing for the task if any column holds the marker. A UTF-8 BOM and CRLF or CR-only line ends
//! are accepted; everything else that is not exactly this is an error naming file, line, field.

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::task::Task;

/// The VA missing-label marker.
pub const VA_MISSING: f32 = -5.0;

/// The labels of one file, one entry per data line (frame k = index k-1).
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// `[valence, arousal]`, `None` where a column holds `-5`.
    Va(Vec<Option<[f32; 2]>>),
    /// AU rows, flattened row-major with `columns` values of 0/1 per frame; rows where
    /// `present` is false held a `-1` and are all zeros here.
    Au {
        /// AUs per row (the header length).
        columns: usize,
        /// `frames x columns` values in {0, 1}.
        values: Vec<u8>,
        /// Whether each frame's row is a label (no `-1`).
        present: Vec<bool>,
    },
    /// Class index per frame, `None` for `-1`.
    Expr(Vec<Option<u8>>),
}

/// One parsed annotation file.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnotationFile {
    /// The task the file was parsed as.
    pub task: Task,
    /// The header names (the task's vocabulary for AU and EXPR).
    pub names: Vec<String>,
    /// One label per data line.
    pub labels: Labels,
}

impl AnnotationFile {
    /// Number of data lines (= frames the file covers).
    pub fn len(&self) -> usize {
        match &self.labels {
            Labels::Va(v) => v.len(),
            Labels::Au { present, .. } => present.len(),
            Labels::Expr(v) => v.len(),
        }
    }

    /// True if the file has a header and no data line.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether data line `i` (0-based, frame `i + 1`) holds a label (no missing marker).
    pub fn is_labelled(&self, i: usize) -> bool {
        match &self.labels {
            Labels::Va(v) => v.get(i).is_some_and(|x| x.is_some()),
            Labels::Au { present, .. } => present.get(i).copied().unwrap_or(false),
            Labels::Expr(v) => v.get(i).is_some_and(|x| x.is_some()),
        }
    }

    /// The VA label of data line `i`, if this is a VA file and the line is labelled.
    pub fn va(&self, i: usize) -> Option<[f32; 2]> {
        match &self.labels {
            Labels::Va(v) => v.get(i).copied().flatten(),
            _ => None,
        }
    }

    /// The AU row of data line `i`, if this is an AU file and the line is labelled.
    pub fn au(&self, i: usize) -> Option<&[u8]> {
        match &self.labels {
            Labels::Au {
                columns,
                values,
                present,
            } if present.get(i).copied().unwrap_or(false) => {
                values.get(i * columns..(i + 1) * columns)
            }
            _ => None,
        }
    }

    /// The expression of data line `i`, if this is an EXPR file and the line is labelled.
    pub fn expr(&self, i: usize) -> Option<u8> {
        match &self.labels {
            Labels::Expr(v) => v.get(i).copied().flatten(),
            _ => None,
        }
    }
}

/// Parses one annotation file's bytes as `task`; `path` is only used in error messages.
///
/// The vocabulary comes from the header, so 8 or 12 AUs and 7 or 8 expressions all parse.
pub fn parse_annotation(
    task: Task,
    path: &Path,
    bytes: &[u8],
) -> Result<AnnotationFile, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            // Line ends as `split_lines` counts them: LF, CRLF and a lone CR.
            let valid = &bytes[..e.valid_up_to()];
            let line = 1 + valid
                .iter()
                .enumerate()
                .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && valid.get(i + 1) != Some(&b'\n')))
                .count();
            return Err(DataError::Encoding {
                path: path.to_path_buf(),
                line,
            });
        }
    };
    if text.trim().is_empty() {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    // Drop trailing blank lines (a final newline, or several); interior blank lines are errors.
    let body = text.trim_end_matches(['\n', '\r', ' ', '\t']);
    let mut lines = split_lines(body);
    let header = lines.next().unwrap_or("");
    let names = parse_header(task, path, header)?;
    let n_lines = split_lines(body).count().saturating_sub(1);
    let expr_column = [String::from("expression")];
    let mut p = RowParser {
        path,
        names: if task == Task::Expr {
            &expr_column
        } else {
            &names
        },
        line: 1,
    };
    let n_classes = names.len();
    let labels = match task {
        Task::Va => {
            let mut out = Vec::with_capacity(n_lines);
            for l in lines {
                p.line += 1;
                out.push(p.va_row(l)?);
            }
            Labels::Va(out)
        }
        Task::Au => {
            let columns = names.len();
            // Each value takes at least one input byte: never reserve more than the input.
            let mut values = Vec::with_capacity(n_lines.saturating_mul(columns).min(bytes.len()));
            let mut present = Vec::with_capacity(n_lines);
            for l in lines {
                p.line += 1;
                present.push(p.au_row(l, &mut values)?);
            }
            Labels::Au {
                columns,
                values,
                present,
            }
        }
        Task::Expr => {
            let mut out = Vec::with_capacity(n_lines);
            for l in lines {
                p.line += 1;
                out.push(p.expr_row(l, n_classes)?);
            }
            Labels::Expr(out)
        }
    };
    Ok(AnnotationFile {
        task,
        names,
        labels,
    })
}

/// The lines of `text`, ended by `\n`, `\r\n` or a lone `\r` (a file saved with classic Mac
/// line ends reads as the same lines as with Unix or Windows ones).
pub fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\n', '\r']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

fn header_error(path: &Path, message: String) -> DataError {
    DataError::Header {
        path: path.to_path_buf(),
        line: 1,
        message,
    }
}

fn parse_header(task: Task, path: &Path, line: &str) -> Result<Vec<String>, DataError> {
    let names: Vec<String> = line.split(',').map(|s| s.trim().to_string()).collect();
    if names.iter().all(|n| n.parse::<f64>().is_ok()) {
        return Err(header_error(
            path,
            format!("missing header: line 1 is data ({line:?}); expected the {task} column names"),
        ));
    }
    if let Some(i) = names.iter().position(|n| n.chars().any(char::is_control)) {
        return Err(header_error(
            path,
            format!("field {} ({:?}) holds a control character", i + 1, names[i]),
        ));
    }
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        return Err(header_error(
            path,
            format!("field {} is empty in {line:?}", i + 1),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        if !seen.insert(n) {
            return Err(header_error(
                path,
                format!("field {} ({n}) is repeated", i + 1),
            ));
        }
    }
    match task {
        Task::Va => {
            let ok = names.len() == 2
                && names[0].eq_ignore_ascii_case("valence")
                && names[1].eq_ignore_ascii_case("arousal");
            if !ok {
                return Err(header_error(
                    path,
                    format!("expected \"valence,arousal\", found {line:?}"),
                ));
            }
            Ok(vec!["valence".into(), "arousal".into()])
        }
        Task::Au => {
            for (i, n) in names.iter().enumerate() {
                let digits = n
                    .get(..2)
                    .filter(|p| p.eq_ignore_ascii_case("AU"))
                    .map(|_| &n[2..]);
                if !digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) {
                    return Err(header_error(
                        path,
                        format!("field {} ({n}): expected an AU name like AU12", i + 1),
                    ));
                }
            }
            Ok(names)
        }
        Task::Expr => {
            if names.len() < 2 {
                return Err(header_error(
                    path,
                    format!("expected at least 2 expression names, found {line:?}"),
                ));
            }
            if names.len() > u8::MAX as usize {
                return Err(header_error(
                    path,
                    format!("{} expression names is too many", names.len()),
                ));
            }
            if let Some(i) = names.iter().position(|n| n.parse::<f64>().is_ok()) {
                return Err(header_error(
                    path,
                    format!(
                        "field {} ({}): expected an expression name",
                        i + 1,
                        names[i]
                    ),
                ));
            }
            Ok(names)
        }
    }
}

struct RowParser<'a> {
    path: &'a Path,
    /// Column names: the header for VA and AU; `["expression"]` for EXPR (whose header lists
    /// the classes, while each row holds one index).
    names: &'a [String],
    line: usize,
}

/// What a field parses to before the task's range check.
enum Num {
    Int(i64),
    Float(f64),
}

impl RowParser<'_> {
    fn pathbuf(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn count_error(&self, found: usize) -> DataError {
        DataError::ColumnCount {
            path: self.pathbuf(),
            line: self.line,
            expected: self.names.len(),
            found,
        }
    }

    fn fields<'l>(&self, line: &'l str) -> impl Iterator<Item = &'l str> {
        line.split(',').map(|f| f.trim_matches([' ', '\t']))
    }

    fn check_count(&self, line: &str) -> Result<(), DataError> {
        if line.trim().is_empty() {
            return Err(self.count_error(0));
        }
        let found = line.bytes().filter(|&b| b == b',').count() + 1;
        if found != self.names.len() {
            return Err(self.count_error(found));
        }
        Ok(())
    }

    fn number(&self, col: usize, field: &str) -> Result<Num, DataError> {
        if let Ok(i) = field.parse::<i64>() {
            return Ok(Num::Int(i));
        }
        match field.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Num::Float(x)),
            Ok(_) => Err(DataError::NonFinite {
                path: self.pathbuf(),
                line: self.line,
                field: col + 1,
                name: self.names[col].clone(),
                value: field.to_string(),
            }),
            Err(_) => Err(DataError::NotANumber {
                path: self.pathbuf(),
                line: self.line,
                field: col + 1,
                name: self.names[col].clone(),
                value: field.to_string(),
            }),
        }
    }

    fn range_error(&self, col: usize, field: &str, allowed: &str) -> DataError {
        DataError::OutOfRange {
            path: self.pathbuf(),
            line: self.line,
            field: col + 1,
            name: self.names[col].clone(),
            value: field.to_string(),
            allowed: allowed.to_string(),
        }
    }

    /// An integer-valued field (`1` or `1.0`) within `lo..=hi`.
    fn integer(
        &self,
        col: usize,
        field: &str,
        lo: i64,
        hi: i64,
        allowed: &str,
    ) -> Result<i64, DataError> {
        let v = match self.number(col, field)? {
            Num::Int(i) => i,
            Num::Float(x) if x.fract() == 0.0 && x.abs() < 1e9 => x as i64,
            Num::Float(_) => return Err(self.range_error(col, field, allowed)),
        };
        if v < lo || v > hi {
            return Err(self.range_error(col, field, allowed));
        }
        Ok(v)
    }

    /// The common case (`v,a`, no spaces, valid values) without error bookkeeping; `None`
    /// sends the line to the checking path, which accepts or reports it.
    fn va_fast(line: &str) -> Option<Option<[f32; 2]>> {
        let (a, b) = line.split_once(',')?;
        let x = a.parse::<f64>().ok()?;
        let y = b.parse::<f64>().ok()?;
        let ok = |v: f64| v == VA_MISSING as f64 || (-1.0..=1.0).contains(&v);
        if !(ok(x) && ok(y)) {
            return None;
        }
        let missing = x == VA_MISSING as f64 || y == VA_MISSING as f64;
        Some((!missing).then_some([x as f32, y as f32]))
    }

    fn va_row(&self, line: &str) -> Result<Option<[f32; 2]>, DataError> {
        if let Some(r) = Self::va_fast(line) {
            return Ok(r);
        }
        self.check_count(line)?;
        let mut out = [0f32; 2];
        let mut missing = false;
        for (col, field) in self.fields(line).enumerate() {
            let x = match self.number(col, field)? {
                Num::Int(i) => i as f64,
                Num::Float(x) => x,
            };
            if x == VA_MISSING as f64 {
                missing = true;
            } else if !(-1.0..=1.0).contains(&x) {
                return Err(self.range_error(col, field, "[-1, 1], or -5 for missing"));
            }
            out[col] = x as f32;
        }
        Ok((!missing).then_some(out))
    }

    /// The common case (`0`, `1`, `-1` separated by bare commas); `None` sends the line to
    /// the checking path (and leaves `values` as it was).
    fn au_fast(line: &[u8], columns: usize, values: &mut Vec<u8>) -> Option<bool> {
        let start = values.len();
        let mut i = 0;
        let mut missing = false;
        let mut count = 0;
        let ok = loop {
            match (line.get(i), line.get(i + 1)) {
                (Some(b'0'), _) => values.push(0),
                (Some(b'1'), _) => values.push(1),
                (Some(b'-'), Some(b'1')) => {
                    values.push(0);
                    missing = true;
                    i += 1;
                }
                _ => break false,
            }
            i += 1;
            count += 1;
            match line.get(i) {
                None => break count == columns,
                Some(b',') => i += 1,
                Some(_) => break false,
            }
        };
        if !ok {
            values.truncate(start);
            return None;
        }
        if missing {
            values[start..].fill(0);
        }
        Some(!missing)
    }

    fn au_row(&self, line: &str, values: &mut Vec<u8>) -> Result<bool, DataError> {
        if let Some(r) = Self::au_fast(line.as_bytes(), self.names.len(), values) {
            return Ok(r);
        }
        self.check_count(line)?;
        let start = values.len();
        let mut missing = false;
        for (col, field) in self.fields(line).enumerate() {
            let v = match field {
                "0" => 0,
                "1" => 1,
                "-1" => -1,
                _ => self.integer(col, field, -1, 1, "0, 1, or -1 for missing")?,
            };
            missing |= v < 0;
            values.push(v.max(0) as u8);
        }
        if missing {
            values[start..].fill(0);
        }
        Ok(!missing)
    }

    fn expr_row(&self, line: &str, n_classes: usize) -> Result<Option<u8>, DataError> {
        match line.as_bytes() {
            [d] if d.is_ascii_digit() && ((d - b'0') as usize) < n_classes => {
                return Ok(Some(d - b'0'))
            }
            [b'-', b'1'] => return Ok(None),
            _ => {}
        }
        self.check_count(line)?;
        let field = line.trim_matches([' ', '\t']);
        let hi = n_classes as i64 - 1;
        let v = match field.parse::<i64>() {
            Ok(v) if (-1..=hi).contains(&v) => v,
            _ => self.integer(0, field, -1, hi, &format!("0..={hi}, or -1 for missing"))?,
        };
        Ok((v >= 0).then_some(v as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(task: Task, s: &str) -> Result<AnnotationFile, DataError> {
        parse_annotation(
            task,
            Path::new("annotations/VA_Set/Training_Set/12-24.txt"),
            s.as_bytes(),
        )
    }

    fn err(task: Task, s: &str) -> (DataError, String) {
        let e = p(task, s).expect_err("should fail");
        let m = e.to_string();
        (e, m)
    }

    /// What a row error says and where: its kind with `line:field`, or for a wrong number of
    /// fields, found of expected and the line.
    fn at(e: &DataError) -> String {
        match e {
            DataError::OutOfRange { line, field, .. } => format!("out of range at {line}:{field}"),
            DataError::NonFinite { line, field, .. } => format!("non-finite at {line}:{field}"),
            DataError::NotANumber { line, field, .. } => format!("not a number at {line}:{field}"),
            DataError::ColumnCount {
                line,
                expected,
                found,
                ..
            } => format!("{found} of {expected} fields at {line}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn va_values_and_missing_marker() {
        let f = p(
            Task::Va,
            "valence,arousal\n0.5,-0.25\n-5,-5\n0.1,-5\n-1,1\n",
        )
        .unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f.va(0), Some([0.5, -0.25]));
        assert_eq!(f.va(1), None);
        assert_eq!(f.va(2), None, "one marker column makes the frame missing");
        assert_eq!(f.va(3), Some([-1.0, 1.0]));
        assert!(!f.is_labelled(1) && f.is_labelled(3));
    }

    #[test]
    fn au_vocab_from_header_and_missing_rows() {
        let f = p(Task::Au, "AU1,AU2,AU4\n1,0,1\n-1,-1,-1\n0,-1,1\n").unwrap();
        assert_eq!(f.names, ["AU1", "AU2", "AU4"]);
        assert_eq!(f.au(0), Some(&[1u8, 0, 1][..]));
        assert_eq!(f.au(1), None);
        assert_eq!(f.au(2), None);
        let twelve =
            "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26\n1,1,1,1,1,1,1,1,1,1,1,0\n";
        let f = p(Task::Au, twelve).unwrap();
        assert_eq!(f.names.len(), 12);
        assert_eq!(f.au(0).unwrap()[11], 0);
    }

    #[test]
    fn expr_seven_and_eight_classes() {
        let f = p(
            Task::Expr,
            "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise\n0\n6\n-1\n",
        )
        .unwrap();
        assert_eq!(f.expr(1), Some(6));
        assert_eq!(f.expr(2), None);
        let (e, m) = err(
            Task::Expr,
            "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise\n7\n",
        );
        assert_eq!(at(&e), "out of range at 2:1", "{m}");
        let f = p(
            Task::Expr,
            "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n7\n",
        )
        .unwrap();
        assert_eq!(f.expr(0), Some(7));
    }

    #[test]
    fn crlf_bom_and_trailing_blank_lines_accepted() {
        let f = p(
            Task::Va,
            "\u{FEFF}valence,arousal\r\n0.5,0.5\r\n-0.5,0.25\r\n\r\n",
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f.va(1), Some([-0.5, 0.25]));
        let f = p(Task::Expr, "\u{FEFF}Neutral,Happy\r\n1\r\n0").unwrap();
        assert_eq!(f.expr(0), Some(1));
        assert_eq!(f.expr(1), Some(0));
    }

    #[test]
    fn cr_only_line_ends_read_as_lines() {
        let f = p(
            Task::Expr,
            "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise\r-1\r4\r6\r",
        )
        .unwrap();
        assert_eq!(f.names.last().map(String::as_str), Some("Surprise"));
        assert_eq!(
            (f.len(), f.expr(0), f.expr(1), f.expr(2)),
            (3, None, Some(4), Some(6))
        );
        let f = p(Task::Va, "valence,arousal\r0.5,0.5\r\n-0.5,0.25\n0,0").unwrap();
        assert_eq!((f.len(), f.va(1)), (3, Some([-0.5, 0.25])));
        let (e, _) = err(Task::Va, "valence,arousal\r0.5,0.5\rx,0\r");
        assert!(matches!(e, DataError::NotANumber { line: 3, .. }), "{e:?}");
    }

    #[test]
    fn a_control_character_in_the_header_is_an_error() {
        let (e, m) = err(Task::Expr, "Neutral,Happy\x07,Sad\n1\n");
        assert!(matches!(e, DataError::Header { line: 1, .. }), "{e:?}");
        assert!(m.contains("field 2"), "{m}");
    }

    #[test]
    fn not_a_number_names_file_line_field() {
        let (e, m) = err(Task::Va, "valence,arousal\n0.1,0.2\n0.3,abc\n");
        assert_eq!(at(&e), "not a number at 3:2");
        assert_eq!(
            m,
            "annotations/VA_Set/Training_Set/12-24.txt:3: field 2 (arousal): \"abc\" is not a number"
        );
    }

    #[test]
    fn non_finite_rejected() {
        for bad in ["nan", "NaN", "inf", "-inf", "infinity"] {
            let (e, m) = err(Task::Va, &format!("valence,arousal\n{bad},0.2\n"));
            assert_eq!(at(&e), "non-finite at 2:1", "{m}");
            assert!(m.contains("12-24.txt:2: field 1 (valence)"), "{m}");
        }
        let (e, m) = err(Task::Au, "AU1,AU2\n0,NaN\n");
        assert_eq!(at(&e), "non-finite at 2:2", "{m}");
        assert!(m.contains(":2: field 2 (AU2)"), "{m}");
    }

    #[test]
    fn out_of_range_values() {
        let (e, m) = err(Task::Va, "valence,arousal\n1.01,0\n");
        assert_eq!(at(&e), "out of range at 2:1", "{m}");
        assert!(
            m.contains("12-24.txt:2: field 1 (valence): \"1.01\""),
            "{m}"
        );
        let (e, m) = err(Task::Va, "valence,arousal\n0,-4\n");
        assert_eq!(at(&e), "out of range at 2:2", "{m}");
        let (e, m) = err(Task::Au, "AU1,AU2\n0,1\n1,2\n");
        assert_eq!(at(&e), "out of range at 3:2", "{m}");
        assert!(m.contains(":3: field 2 (AU2): \"2\""), "{m}");
        let (e, m) = err(Task::Au, "AU1,AU2\n0.5,1\n");
        assert_eq!(at(&e), "out of range at 2:1", "{m}");
        let (e, m) = err(Task::Expr, "Neutral,Anger\n-2\n");
        assert_eq!(at(&e), "out of range at 2:1", "{m}");
        assert!(
            m.contains(
                ":2: field 1 (expression): \"-2\" is out of range (0..=1, or -1 for missing)"
            ),
            "{m}"
        );
        let (e, m) = err(Task::Expr, "Neutral,Anger\n0,1\n");
        assert_eq!(at(&e), "2 of 1 fields at 2", "{m}");
        // 1.0 is an integer value and accepted.
        assert_eq!(p(Task::Au, "AU1\n1.0\n").unwrap().au(0), Some(&[1u8][..]));
    }

    #[test]
    fn wrong_column_count() {
        let (e, m) = err(Task::Va, "valence,arousal\n0.1,0.2\n0.1\n");
        assert_eq!(at(&e), "1 of 2 fields at 3", "{m}");
        assert!(m.contains("12-24.txt:3: expected 2 fields, found 1"), "{m}");
        let (e, m) = err(Task::Au, "AU1,AU2\n0,1,1\n");
        assert_eq!(at(&e), "3 of 2 fields at 2", "{m}");
        let (e, _) = err(Task::Expr, "Neutral,Anger\n0\n\n1\n");
        assert_eq!(at(&e), "0 of 1 fields at 3", "interior blank line");
    }

    #[test]
    fn header_problems() {
        let (e, m) = err(Task::Va, "0.1,0.2\n0.3,0.4\n");
        assert!(matches!(e, DataError::Header { line: 1, .. }), "{m}");
        assert!(m.contains("12-24.txt:1: header: missing header"), "{m}");
        let (e, m) = err(Task::Va, "arousal,valence\n0.1,0.2\n");
        assert!(matches!(e, DataError::Header { .. }), "{m}");
        let (e, m) = err(Task::Au, "AU1,Smile\n0,1\n");
        assert!(matches!(e, DataError::Header { .. }), "{m}");
        assert!(m.contains("field 2 (Smile)"), "{m}");
        let (e, _) = err(Task::Au, "AU1,AU1\n0,1\n");
        assert!(matches!(e, DataError::Header { .. }));
        let (e, _) = err(Task::Expr, "Neutral\n0\n");
        assert!(matches!(e, DataError::Header { .. }));
        let (e, _) = err(Task::Expr, "Neutral,,Anger\n0\n");
        assert!(matches!(e, DataError::Header { .. }));
    }

    #[test]
    fn empty_file_and_bad_utf8() {
        let (e, m) = err(Task::Va, "");
        assert!(matches!(e, DataError::EmptyFile { .. }), "{m}");
        assert!(m.contains("12-24.txt:1: empty file"), "{m}");
        let (e, _) = err(Task::Va, " \r\n\n");
        assert!(matches!(e, DataError::EmptyFile { .. }));
        let e = parse_annotation(
            Task::Va,
            Path::new("x.txt"),
            b"valence,arousal\n0,0\n\xff,0\n",
        )
        .unwrap_err();
        assert!(matches!(e, DataError::Encoding { line: 3, .. }), "{e}");
        // CR-only and CRLF line ends count as `split_lines` counts them.
        for text in [
            &b"valence,arousal\r0,0\r\xff,0\r"[..],
            b"valence,arousal\r\n0,0\r\n\xff,0\r\n",
        ] {
            let e = parse_annotation(Task::Va, Path::new("x.txt"), text).unwrap_err();
            assert!(matches!(e, DataError::Encoding { line: 3, .. }), "{e}");
        }
    }

    #[test]
    fn fast_and_checking_paths_agree() {
        // Same rows with and without spaces (spaces force the checking path).
        let rows = ["0.5,-0.25", "-5,0.3", "1,-1", "0,1.0", "-0.999,0.001"];
        for r in rows {
            let spaced = r.replace(',', " , ");
            let a = p(Task::Va, &format!("valence,arousal\n{r}\n")).unwrap();
            let b = p(Task::Va, &format!("valence,arousal\n{spaced}\n")).unwrap();
            assert_eq!(a, b, "{r}");
        }
        for r in ["0,1,-1", "1,1,1", "-1,-1,-1", "0,0,0"] {
            let spaced = r.replace(',', ", ");
            let a = p(Task::Au, &format!("AU1,AU2,AU4\n{r}\n")).unwrap();
            let b = p(Task::Au, &format!("AU1,AU2,AU4\n{spaced}\n")).unwrap();
            assert_eq!(a, b, "{r}");
        }
        for bad in ["1.0000001,0", "0,-1.5", "-5.0001,0"] {
            assert!(
                p(Task::Va, &format!("valence,arousal\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
        for bad in ["0,1", "0,1,1,", "0,1,2", "0,,1", "-1-,0,0"] {
            assert!(
                p(Task::Au, &format!("AU1,AU2,AU4\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
        let (e, _) = err(Task::Expr, "Neutral,Anger\n2\n");
        assert!(matches!(e, DataError::OutOfRange { .. }));
    }

    #[test]
    fn header_only_is_zero_frames() {
        let f = p(Task::Va, "valence,arousal\n").unwrap();
        assert!(f.is_empty());
    }
}
