//! A TensorBoard event-file writer (scalars and PNG images).
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

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, ((field << 3) | wire) as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An `Event` with a wall time, a step and either a file version or a summary.
fn event(step: i64, file_version: Option<&str>, summary: Option<&[u8]>) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time().to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step as u64);
    if let Some(v) = file_version {
        bytes_field(&mut e, 3, v.as_bytes());
    }
    if let Some(s) = summary {
        bytes_field(&mut e, 5, s);
    }
    e
}

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
        w.record(&event(0, Some("brain.Event:2"), None))?;
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

    /// Writes a scalar.
    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) -> std::io::Result<()> {
        let mut v = Vec::new();
        bytes_field(&mut v, 1, tag.as_bytes());
        key(&mut v, 2, 5);
        v.extend_from_slice(&(value as f32).to_le_bytes());
        let mut s = Vec::new();
        bytes_field(&mut s, 1, &v);
        self.record(&event(step as i64, None, Some(&s)))
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
        self.record(&event(step as i64, None, Some(&s)))
    }

    /// Flushes buffered records to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

use image::ImageEncoder;

/// Renders a confusion matrix (rows = truth) as a row-normalised heat map, `cell` pixels per cell.
pub fn confusion_image(confusion: &[Vec<u64>], cell: usize) -> (Vec<u8>, u32, u32) {
    let n = confusion.len().max(1);
    let side = n * cell;
    let mut rgb = vec![0u8; side * side * 3];
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
            for y in i * cell..(i + 1) * cell {
                for x in j * cell..(j + 1) * cell {
                    let o = (y * side + x) * 3;
                    rgb[o..o + 3].copy_from_slice(&px);
                }
            }
        }
    }
    (rgb, side as u32, side as u32)
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
        let (img, wd, ht) = confusion_image(&[vec![3, 1], vec![0, 4]], 4);
        w.image("val/confusion", &img, wd, ht, 3).unwrap();
        w.flush().unwrap();
        let recs = read_records(w.path());
        assert_eq!(recs.len(), 3);
        assert!(recs[0].windows(13).any(|x| x == b"brain.Event:2"));
        assert!(recs[1].windows(10).any(|x| x == b"train/loss"));
        assert!(recs[1].windows(4).any(|x| x == 0.5f32.to_le_bytes()));
        assert!(recs[2].windows(4).any(|x| x == b"\x89PNG"));
    }

    #[test]
    fn known_crc() {
        // crc32c("123456789") = 0xe3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
