//! A TensorBoard event-file writer (scalars, PNG images, markdown text and plugin summaries
//! such as the HParams plugin's).
//!
//! We replaced `tensorboard-rs` 0.5.9 for measured reasons (see the README): it panics on
//! every I/O error (a full disk would kill a run), transposes non-square images, lets two
//! writers in the same second overwrite each other's file, and pins protobuf 2.28
//! (RUSTSEC-2024-0437). The format is small: records of `u64 length, masked crc32c(length),
//! data, masked crc32c(data)`, each data an `Event` protobuf.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes one `events.out.tfevents.*` file. I/O errors are returned, never panics.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends a protobuf varint.
pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a protobuf field key (`field << 3 | wire type`).
pub(crate) fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, ((field << 3) | wire) as u64);
}

/// Appends a length-delimited protobuf field (bytes, string or message).
pub(crate) fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Appends a varint protobuf field (int32, int64, uint64, bool, enum).
pub(crate) fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

/// Appends a `double` protobuf field.
pub(crate) fn double_field(out: &mut Vec<u8>, field: u32, v: f64) {
    key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// Seconds since the Unix epoch.
pub(crate) fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `Event.file_version`, the first event of a file.
const FILE_VERSION: u32 = 3;
/// `Event.summary`: scalars, images, text, plugin data.
const SUMMARY: u32 = 5;
/// `Event.session_log`: a restart marker.
const SESSION_LOG: u32 = 7;

/// An `Event` with a wall time, a step and what it holds: `(field, bytes)`, a file version
/// ([`FILE_VERSION`]), a summary ([`SUMMARY`]) or a session log ([`SESSION_LOG`]).
fn event(step: i64, (field, what): (u32, &[u8])) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time().to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step as u64);
    bytes_field(&mut e, field, what);
    e
}

/// `tensorflow.DataType` values used here.
const DT_FLOAT: u64 = 1;
const DT_STRING: u64 = 7;
/// `SessionLog.SessionStatus.START`.
const SESSION_START: u64 = 1;
/// `SummaryMetadata.DataClass.DATA_CLASS_TENSOR`.
const DATA_CLASS_TENSOR: u64 = 2;

impl EventWriter {
    /// Creates a new event file in `dir` (unique per process and nanosecond).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let name = format!(
            "events.out.tfevents.{}.{}.{}.{}",
            now.as_secs(),
            host,
            std::process::id(),
            now.subsec_nanos()
        );
        let path = dir.join(name);
        let out = BufWriter::new(File::create(&path)?);
        let mut w = Self { path, out };
        w.record(&event(0, (FILE_VERSION, b"brain.Event:2")))?;
        Ok(w)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())
    }

    /// Writes a `SessionLog` with status START at `step`. Reading the run's event files in
    /// order, TensorBoard then discards the earlier files' events at `step` and later: those a
    /// killed run wrote after its last checkpoint, which the resumed run writes again.
    pub fn session_start(&mut self, step: u64) -> std::io::Result<()> {
        let mut log = Vec::new();
        varint_field(&mut log, 1, SESSION_START);
        self.record(&event(step as i64, (SESSION_LOG, &log)))
    }

    /// Writes a scalar.
    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) -> std::io::Result<()> {
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        key(&mut v, 2, 5);
        v.extend_from_slice(&(value as f32).to_le_bytes());
        let mut s = Vec::new();
        bytes_field(&mut s, 1, &v);
        self.record(&event(step as i64, (SUMMARY, &s)))
    }

    /// Writes an RGB image (`rgb` is row-major HxWx3).
    pub fn image(
        &mut self,
        tag: &str,
        rgb: &[u8],
        width: u32,
        height: u32,
        step: u64,
    ) -> std::io::Result<()> {
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
            .map_err(std::io::Error::other)?;
        let mut img = Vec::new();
        key(&mut img, 1, 0);
        varint(&mut img, height as u64);
        key(&mut img, 2, 0);
        varint(&mut img, width as u64);
        key(&mut img, 3, 0);
        varint(&mut img, 3);
        bytes_field(&mut img, 4, &png);
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        bytes_field(&mut v, 4, &img);
        let mut s = Vec::new();
        bytes_field(&mut s, 1, &v);
        self.record(&event(step as i64, (SUMMARY, &s)))
    }

    /// Writes a markdown text summary (TensorBoard's Text dashboard): a scalar `DT_STRING`
    /// tensor with the `text` plugin's metadata.
    pub fn text(&mut self, tag: &str, markdown: &str, step: u64) -> std::io::Result<()> {
        let mut tensor = Vec::new();
        varint_field(&mut tensor, 1, DT_STRING);
        bytes_field(&mut tensor, 2, &[]);
        bytes_field(&mut tensor, 8, markdown.as_bytes());
        self.tensor_summary(tag, "text", &[], Some(DATA_CLASS_TENSOR), &tensor, step)
    }

    /// Writes a summary that only carries plugin metadata (`plugin_name`, `content`) on an
    /// empty float tensor, as TensorBoard's own HParams summaries do.
    pub fn plugin_summary(
        &mut self,
        tag: &str,
        plugin_name: &str,
        content: &[u8],
        step: u64,
    ) -> std::io::Result<()> {
        // `make_tensor_proto([], dtype=DT_FLOAT, shape=(0,))`: dtype, shape { dim { size: 0 } }.
        let mut tensor = Vec::new();
        varint_field(&mut tensor, 1, DT_FLOAT);
        let mut dim = Vec::new();
        bytes_field(&mut dim, 2, &[]);
        bytes_field(&mut tensor, 2, &dim);
        self.tensor_summary(tag, plugin_name, content, None, &tensor, step)
    }

    /// A `Summary.Value` with `metadata` (field 9) and a `tensor` (field 8).
    fn tensor_summary(
        &mut self,
        tag: &str,
        plugin_name: &str,
        content: &[u8],
        data_class: Option<u64>,
        tensor: &[u8],
        step: u64,
    ) -> std::io::Result<()> {
        let mut plugin = Vec::new();
        bytes_field(&mut plugin, 1, plugin_name.as_bytes());
        if !content.is_empty() {
            bytes_field(&mut plugin, 2, content);
        }
        let mut meta = Vec::new();
        bytes_field(&mut meta, 1, &plugin);
        if let Some(c) = data_class {
            varint_field(&mut meta, 4, c);
        }
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        bytes_field(&mut v, 8, tensor);
        bytes_field(&mut v, 9, &meta);
        let mut s = Vec::new();
        bytes_field(&mut s, 1, &v);
        self.record(&event(step as i64, (SUMMARY, &s)))
    }

    /// Flushes buffered records to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

use image::ImageEncoder;

/// A 5x7 bitmap font: upper-case letters, digits and a little punctuation, each glyph seven
/// rows of five pixels top to bottom (`#` = ink).
/// Lower-case letters are drawn upper-case; other characters as `?`.
const FONT: &[(char, &str)] = &[
    (' ', "..... ..... ..... ..... ..... ..... ....."),
    ('0', ".###. #...# #..## #.#.# ##..# #...# .###."),
    ('1', "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###."),
    ('2', ".###. #...# ....# ...#. ..#.. .#... #####"),
    ('3', "##### ...#. ..#.. ...#. ....# #...# .###."),
    ('4', "...#. ..##. .#.#. #..#. ##### ...#. ...#."),
    ('5', "##### #.... ####. ....# ....# #...# .###."),
    ('6', "..##. .#... #.... ####. #...# #...# .###."),
    ('7', "##### ....# ...#. ..#.. .#... .#... .#..."),
    ('8', ".###. #...# #...# .###. #...# #...# .###."),
    ('9', ".###. #...# #...# .#### ....# ...#. .##.."),
    ('A', ".###. #...# #...# ##### #...# #...# #...#"),
    ('B', "####. #...# #...# ####. #...# #...# ####."),
    ('C', ".###. #...# #.... #.... #.... #...# .###."),
    ('D', "###.. #..#. #...# #...# #...# #..#. ###.."),
    ('E', "##### #.... #.... ####. #.... #.... #####"),
    ('F', "##### #.... #.... ####. #.... #.... #...."),
    ('G', ".###. #...# #.... #.### #...# #...# .####"),
    ('H', "#...# #...# #...# ##### #...# #...# #...#"),
    ('I', ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###."),
    ('J', "..### ...#. ...#. ...#. ...#. #..#. .##.."),
    ('K', "#...# #..#. #.#.. ##... #.#.. #..#. #...#"),
    ('L', "#.... #.... #.... #.... #.... #.... #####"),
    ('M', "#...# ##.## #.#.# #.#.# #...# #...# #...#"),
    ('N', "#...# #...# ##..# #.#.# #..## #...# #...#"),
    ('O', ".###. #...# #...# #...# #...# #...# .###."),
    ('P', "####. #...# #...# ####. #.... #.... #...."),
    ('Q', ".###. #...# #...# #...# #.#.# #..#. .##.#"),
    ('R', "####. #...# #...# ####. #.#.. #..#. #...#"),
    ('S', ".#### #.... #.... .###. ....# ....# ####."),
    ('T', "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."),
    ('U', "#...# #...# #...# #...# #...# #...# .###."),
    ('V', "#...# #...# #...# #...# #...# .#.#. ..#.."),
    ('W', "#...# #...# #...# #.#.# #.#.# #.#.# .#.#."),
    ('X', "#...# #...# .#.#. ..#.. .#.#. #...# #...#"),
    ('Y', "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#.."),
    ('Z', "##### ....# ...#. ..#.. .#... #.... #####"),
    ('-', "..... ..... ..... ##### ..... ..... ....."),
    ('_', "..... ..... ..... ..... ..... ..... #####"),
    ('.', "..... ..... ..... ..... ..... .##.. .##.."),
    (':', "..... .##.. .##.. ..... .##.. .##.. ....."),
    ('/', "..... ....# ...#. ..#.. .#... #.... ....."),
    ('\\', "..... #.... .#... ..#.. ...#. ....# ....."),
    ('(', "...#. ..#.. .#... .#... .#... ..#.. ...#."),
    (')', ".#... ..#.. ...#. ...#. ...#. ..#.. .#..."),
    ('%', "##..# ##..# ...#. ..#.. .#... #..## #..##"),
    ('+', "..... ..#.. ..#.. ##### ..#.. ..#.. ....."),
    ('?', ".###. #...# ....# ...#. ..#.. ..... ..#.."),
];

/// The glyph drawn for `c`.
fn glyph(c: char) -> &'static str {
    let c = c.to_ascii_uppercase();
    let find = |c: char| FONT.iter().find(|(g, _)| *g == c).map(|(_, rows)| *rows);
    find(c).or_else(|| find('?')).expect("the font has `?`")
}

/// Pixels per font pixel in [`confusion_image`].
const TEXT_SCALE: usize = 2;
/// Horizontal advance of one character (5 columns and 1 of spacing), in pixels.
const ADVANCE: usize = 6 * TEXT_SCALE;
/// Height of one character, in pixels.
const TEXT_HEIGHT: usize = 7 * TEXT_SCALE;
/// Longest label drawn, in characters.
const MAX_LABEL: usize = 12;

/// An RGB canvas with bitmap text.
struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            rgb: vec![255; width * height * 3],
        }
    }

    fn put(&mut self, x: usize, y: usize, px: [u8; 3]) {
        if x < self.width && y < self.height {
            let o = (y * self.width + x) * 3;
            self.rgb[o..o + 3].copy_from_slice(&px);
        }
    }

    fn fill(&mut self, x0: usize, y0: usize, w: usize, h: usize, px: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.put(x, y, px);
            }
        }
    }

    /// Text left to right with its top-left corner at (x, y).
    fn text(&mut self, x: usize, y: usize, text: &str, px: [u8; 3]) {
        for (k, c) in text.chars().enumerate() {
            self.glyph(c, |gx, gy| (x + k * ADVANCE + gx, y + gy), px);
        }
    }

    /// Text turned a quarter turn counter-clockwise (read bottom to top), its first character
    /// at the bottom; `x` is the left edge, `y_bottom` the lowest row.
    fn text_up(&mut self, x: usize, y_bottom: usize, text: &str, px: [u8; 3]) {
        for (k, c) in text.chars().enumerate() {
            self.glyph(
                c,
                |gx, gy| (x + gy, y_bottom.saturating_sub(k * ADVANCE + gx)),
                px,
            );
        }
    }

    /// Draws `c`, mapping each scaled font pixel (gx right, gy down) through `at`.
    fn glyph(&mut self, c: char, at: impl Fn(usize, usize) -> (usize, usize), px: [u8; 3]) {
        for (row, bits) in glyph(c).split(' ').enumerate() {
            for (col, b) in bits.bytes().enumerate() {
                if b != b'#' {
                    continue;
                }
                for dy in 0..TEXT_SCALE {
                    for dx in 0..TEXT_SCALE {
                        let (x, y) = at(col * TEXT_SCALE + dx, row * TEXT_SCALE + dy);
                        self.put(x, y, px);
                    }
                }
            }
        }
    }
}

/// Renders a confusion matrix (rows = truth, columns = prediction) as a row-normalised heat
/// map with the class names on both axes (rows on the left, columns read bottom to top along
/// the top, `TRUE` / `PRED` in the corner) and the count in every cell. `names` label the
/// classes (indices where it is short); `cell` is the smallest cell side in pixels, grown to
/// fit the longest count. Returns row-major RGB, width and height.
pub fn confusion_image(
    confusion: &[Vec<u64>],
    names: &[String],
    cell: usize,
) -> (Vec<u8>, u32, u32) {
    let n = confusion.len().max(1);
    let labels: Vec<String> = (0..n)
        .map(|i| {
            let name = names.get(i).cloned().unwrap_or_else(|| i.to_string());
            name.chars().take(MAX_LABEL).collect()
        })
        .collect();
    let longest = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let digits = confusion
        .iter()
        .flatten()
        .map(|c| c.to_string().len())
        .max()
        .unwrap_or(1);
    let cell = cell.max(digits * ADVANCE + 8).max(TEXT_HEIGHT + 8);
    let margin = longest * ADVANCE + 8;
    let side = margin + n * cell;
    let mut canvas = Canvas::new(side, side);
    let ink = [0, 0, 0];
    canvas.text(4, margin - TEXT_HEIGHT - 4, "TRUE", ink);
    canvas.text(margin - 4 * ADVANCE - 2, 4, "PRED", ink);
    for (i, label) in labels.iter().enumerate() {
        let y = margin + i * cell + (cell - TEXT_HEIGHT) / 2;
        canvas.text(4, y, label, ink);
        let x = margin + i * cell + (cell - TEXT_HEIGHT) / 2;
        canvas.text_up(x, margin - 5, label, ink);
    }
    for (i, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &c) in row.iter().enumerate() {
            let f = if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            };
            // white (0) -> dark blue (1)
            let px = [
                (255.0 * (1.0 - f)) as u8,
                (255.0 * (1.0 - 0.8 * f)) as u8,
                (255.0 - 90.0 * f) as u8,
            ];
            let (x0, y0) = (margin + j * cell, margin + i * cell);
            canvas.fill(x0, y0, cell, cell, [200, 200, 200]);
            canvas.fill(x0 + 1, y0 + 1, cell - 1, cell - 1, px);
            let count = c.to_string();
            let w = count.len() * ADVANCE - TEXT_SCALE;
            let text_px = if f > 0.5 { [255, 255, 255] } else { ink };
            canvas.text(
                x0 + (cell - w) / 2,
                y0 + (cell - TEXT_HEIGHT) / 2,
                &count,
                text_px,
            );
        }
    }
    (canvas.rgb, side as u32, side as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads records back, checking both CRCs, and returns the data parts.
    fn read_records(path: &Path) -> Vec<Vec<u8>> {
        let b = std::fs::read(path).unwrap();
        let mut i = 0;
        let mut out = Vec::new();
        while i < b.len() {
            let len = u64::from_le_bytes(b[i..i + 8].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(b[i + 8..i + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc(&b[i..i + 8]));
            let data = b[i + 12..i + 12 + len].to_vec();
            let crc = u32::from_le_bytes(b[i + 12 + len..i + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(&data));
            out.push(data);
            i += 16 + len;
        }
        out
    }

    #[test]
    fn writes_framed_records() {
        let d = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(d.path()).unwrap();
        w.scalar("train/loss", 0.5, 3).unwrap();
        let names = ["Neutral".to_string(), "Anger".to_string()];
        let (img, wd, ht) = confusion_image(&[vec![3, 1], vec![0, 4]], &names, 4);
        w.image("val/confusion", &img, wd, ht, 3).unwrap();
        w.flush().unwrap();
        let recs = read_records(w.path());
        assert_eq!(recs.len(), 3);
        assert!(recs[0].windows(13).any(|x| x == b"brain.Event:2"));
        assert!(recs[1].windows(10).any(|x| x == b"train/loss"));
        assert!(recs[1].windows(4).any(|x| x == 0.5f32.to_le_bytes()));
        assert!(recs[2].windows(4).any(|x| x == b"\x89PNG"));
    }

    /// A session start is an `Event` (tensorflow/core/util/event.proto) with the step in field
    /// 2 and in field 7 a `SessionLog` whose field 1, the status, is 1 (START), and nothing else.
    #[test]
    fn a_session_start_is_an_event_with_a_start_session_log_at_the_step() {
        let d = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(d.path()).unwrap();
        w.session_start(300).unwrap();
        w.flush().unwrap();
        let recs = read_records(w.path());
        let e = &recs[1];
        // Field 1 (wall time, fixed 64-bit), then the bytes tensorboard 2.21's event_pb2 gives
        // for `Event(step=300, session_log=SessionLog(status=START))`: `10ac023a020801`.
        assert_eq!(e[0], 1 << 3 | 1);
        assert_eq!(e[9..], [2 << 3, 0xac, 0x02, 7 << 3 | 2, 2, 1 << 3, 1]);
    }

    #[test]
    fn the_font_has_seven_rows_of_five_pixels_and_distinct_glyphs() {
        let mut seen = std::collections::HashSet::new();
        for (c, rows) in FONT {
            let rows: Vec<&str> = rows.split(' ').collect();
            assert_eq!(rows.len(), 7, "{c:?}");
            assert!(rows
                .iter()
                .all(|r| r.len() == 5 && r.bytes().all(|b| b == b'.' || b == b'#')));
            assert!(seen.insert(rows.concat()), "{c:?} repeats a glyph");
        }
        assert_eq!(glyph('a'), glyph('A'));
        assert_eq!(glyph('~'), glyph('?'));
    }

    /// Dark pixels in a rectangle of an RGB image.
    fn ink(rgb: &[u8], width: u32, x0: usize, y0: usize, w: usize, h: usize) -> usize {
        let mut n = 0;
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                let o = (y * width as usize + x) * 3;
                n += usize::from(rgb[o] < 64 && rgb[o + 1] < 64 && rgb[o + 2] < 64);
            }
        }
        n
    }

    #[test]
    fn confusion_image_labels_both_axes_and_writes_counts() {
        let names: Vec<String> = ["Neutral", "Happiness"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = [vec![3, 1], vec![0, 12345]];
        let (rgb, w, h) = confusion_image(&m, &names, 24);
        assert_eq!(w, h);
        assert_eq!(rgb.len(), (w * h * 3) as usize);
        // Labels take 9 characters; cells fit five digits.
        let margin = 9 * ADVANCE + 8;
        let cell = 5 * ADVANCE + 8;
        assert_eq!(w as usize, margin + 2 * cell);
        // Row labels on the left, column labels above, black counts in the light cells.
        assert!(ink(&rgb, w, 0, margin, margin, cell) > 20);
        assert!(ink(&rgb, w, margin, 0, cell, margin) > 20);
        assert!(ink(&rgb, w, margin + cell, margin, cell, cell) > 10);
        // The dark diagonal cell (12345 of 12345) carries white digits, no black ones.
        assert_eq!(
            ink(
                &rgb,
                w,
                margin + cell + 1,
                margin + cell + 1,
                cell - 1,
                cell - 1
            ),
            0
        );
        // "1" and "3" differ.
        let one = confusion_image(&[vec![1]], &[], 24).0;
        let three = confusion_image(&[vec![3]], &[], 24).0;
        assert_ne!(one, three);
    }

    #[test]
    fn text_and_plugin_summaries_carry_their_metadata() {
        let d = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(d.path()).unwrap();
        w.text("config", "    seed: 0", 0).unwrap();
        w.plugin_summary("_hparams_/x", "hparams", b"\x12\x00", 0)
            .unwrap();
        w.flush().unwrap();
        let recs = read_records(w.path());
        // tensor { dtype: DT_STRING, tensor_shape {}, string_val }, metadata { plugin "text" }.
        let text_tensor = [
            &[0x42, 0x11, 0x08, 0x07, 0x12, 0x00, 0x42, 0x0b][..],
            b"    seed: 0",
        ]
        .concat();
        assert!(recs[1].windows(text_tensor.len()).any(|x| x == text_tensor));
        assert!(recs[1]
            .windows(6)
            .any(|x| x == [0x0a, 0x04, b't', b'e', b'x', b't']));
        // The empty float tensor of TensorBoard's `NULL_TENSOR`.
        assert!(recs[2]
            .windows(8)
            .any(|x| x == [0x42, 0x06, 0x08, 0x01, 0x12, 0x02, 0x12, 0x00]));
        assert!(recs[2].windows(4).any(|x| x == [0x12, 0x02, 0x12, 0x00]));
    }

    #[test]
    fn known_crc() {
        // crc32c("123456789") = 0xe3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
