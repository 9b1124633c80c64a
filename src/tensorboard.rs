//! A minimal TensorBoard event-file writer and reader (scalars only).
//!
//! Why our own and not the `tensorboard-rs` crate: 0.5.9 is unmaintained since 2022, pins
//! protobuf 2.28 and panics on I/O errors. We need I/O errors as `Result`s (with the file path)
//! and a flush after every write so TensorBoard shows training live, and the format is tiny:
//!
//! * The file is a sequence of TFRecords: `u64 LE length`, `u32 LE masked crc32c(length bytes)`,
//!   `data`, `u32 LE masked crc32c(data)`, where `mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`
//!   (wrapping) and crc32c is CRC-32 Castagnoli (reflected polynomial 0x82F63B78).
//! * Each record's data is a `tensorflow.Event` protobuf: `wall_time` = field 1 (double),
//!   `step` = field 2 (int64), `file_version` = field 3 (string), `summary` = field 5 (message).
//!   `Summary.value` = field 1 (repeated message); `Summary.Value`: `tag` = field 1 (string),
//!   `simple_value` = field 2 (float). The first event of a file carries
//!   `file_version = "brain.Event:2"`.
//!
//! Files are named like TensorFlow's, `events.out.tfevents.<unix secs>.<hostname>.<pid>.<n>`,
//! where `n` is a per-process counter (and the file is created with `create_new`, so two writers
//! never share a file). TensorBoard reads every `*tfevents*` file of a directory in name order;
//! [`read_dir_scalars`] does the same.
//!
//! Durability: every `scalar`/`scalars` call encodes the whole record and hands it to the OS in one
//! write, then flushes, so a crash of the process loses nothing already written and TensorBoard
//! sees progress live. (There is no fsync: a power loss may lose what the OS had not yet written.)
//!
//! [`read_scalars`] reads our own files back (used by tests and by resume logic): it checks both
//! CRCs of every record and decodes the protobuf, skipping unknown fields by wire type. A corrupt
//! or torn (truncated) record is an error naming the file and the record's byte offset.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const FILE_VERSION: &str = "brain.Event:2";

// ---------------------------------------------------------------------------------------------
// crc32c

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C_TABLE: [u32; 256] = crc32c_table();

/// CRC-32C (Castagnoli), as used by TFRecord.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8) // ((crc >> 15) | (crc << 17)) + 0xa282ead8
}

// ---------------------------------------------------------------------------------------------
// encoding

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, ((field as u64) << 3) | wire_type as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_SGROUP: u8 = 3;
const WIRE_EGROUP: u8 = 4;
const WIRE_I32: u8 = 5;

enum Payload<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(&'a str, f64)]),
}

fn encode_event(wall_time: f64, step: i64, payload: Payload) -> Vec<u8> {
    let mut ev = Vec::new();
    put_key(&mut ev, 1, WIRE_I64);
    ev.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        put_key(&mut ev, 2, WIRE_VARINT);
        put_varint(&mut ev, step as u64); // int64: two's complement, 10 bytes when negative
    }
    match payload {
        Payload::FileVersion(v) => put_bytes(&mut ev, 3, v.as_bytes()),
        Payload::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, value) in values {
                let mut val = Vec::new();
                put_bytes(&mut val, 1, tag.as_bytes());
                put_key(&mut val, 2, WIRE_I32);
                val.extend_from_slice(&(*value as f32).to_le_bytes());
                put_bytes(&mut summary, 1, &val);
            }
            put_bytes(&mut ev, 5, &summary);
        }
    }
    ev
}

fn frame_record(data: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(data.len() + 16);
    let len = (data.len() as u64).to_le_bytes();
    rec.extend_from_slice(&len);
    rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    rec.extend_from_slice(data);
    rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    rec
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

// ---------------------------------------------------------------------------------------------
// writer

/// Writes scalar summaries to a new TensorBoard event file in a directory.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl EventWriter {
    /// Creates `dir` (and parents) if needed and a new event file in it, named
    /// `events.out.tfevents.<unix secs>.<hostname>.<pid>.<counter>`, and writes the
    /// `file_version` event. Never reuses an existing file.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("cannot create TensorBoard log directory {}", dir.display())
        })?;
        let wall_time = now_secs();
        let host = hostname();
        let pid = std::process::id();
        // The counter makes names unique within this process; create_new guards against
        // everything else (another process with a recycled pid, a clock set back).
        let (path, file) = loop {
            let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(
                "events.out.tfevents.{:010}.{host}.{pid}.{n}",
                wall_time as u64
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(anyhow!(e))
                        .with_context(|| format!("cannot create event file {}", path.display()))
                }
            }
        };
        let mut writer = EventWriter {
            path,
            file: BufWriter::new(file),
        };
        writer.write_event(&encode_event(
            wall_time,
            0,
            Payload::FileVersion(FILE_VERSION),
        ))?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one scalar (stored as a 32-bit float `simple_value`) and flushes.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.write_event(&encode_event(
            now_secs(),
            step,
            Payload::Scalars(&[(tag, value)]),
        ))
    }

    /// Writes several scalars of one step as a single event and flushes. No-op when empty.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let values: Vec<(&str, f64)> = values.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        self.write_event(&encode_event(now_secs(), step, Payload::Scalars(&values)))
    }

    /// Hands everything written so far to the OS (where TensorBoard can read it).
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("cannot flush event file {}", self.path.display()))
    }

    fn write_event(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&frame_record(event))
            .with_context(|| format!("cannot write event file {}", self.path.display()))?;
        self.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// reader

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    /// The stored 32-bit `simple_value`, widened.
    pub value: f64,
    pub wall_time: f64,
}

/// Reads every scalar (`simple_value`) of an event file, in file order. Verifies both CRCs of each
/// record; a corrupt, torn or undecodable record is an error naming the file and byte offset.
/// Events without a summary (such as the `file_version` event) and summary values without a
/// `simple_value` (images, histograms, tensors) are skipped.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read event file {}", path.display()))?;
    let mut out = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let err = |msg: String| {
            anyhow!(
                "event file {}: record at byte offset {offset}: {msg}",
                path.display()
            )
        };
        let rest = &bytes[offset..];
        if rest.len() < 12 {
            return Err(err(format!(
                "torn record: {} bytes left, a record header needs 12",
                rest.len()
            )));
        }
        let len_bytes = &rest[..8];
        let len_crc = u32::from_le_bytes(rest[8..12].try_into().unwrap());
        if masked_crc32c(len_bytes) != len_crc {
            return Err(err("length checksum mismatch (corrupt file)".into()));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap());
        let available = (rest.len() - 12) as u64;
        if len > available || available - len < 4 {
            return Err(err(format!(
                "torn record: length {len} but only {available} bytes follow the header \
                 (data and a 4-byte checksum needed)"
            )));
        }
        let len = len as usize;
        let data = &rest[12..12 + len];
        let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().unwrap());
        if masked_crc32c(data) != data_crc {
            return Err(err("data checksum mismatch (corrupt file)".into()));
        }
        decode_event(data, &mut out).map_err(|e| err(format!("bad Event protobuf: {e}")))?;
        offset += 16 + len;
    }
    Ok(out)
}

/// Reads the scalars of every event file (name containing `tfevents`) in `dir`, files in name
/// order (as TensorBoard does), each file's scalars in file order.
pub fn read_dir_scalars(dir: &Path) -> Result<Vec<Scalar>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot list TensorBoard log directory {}", dir.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().contains("tfevents") && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    let mut out = Vec::new();
    for file in files {
        out.extend(read_scalars(&file)?);
    }
    Ok(out)
}

/// A protobuf field: number and value.
enum Field<'a> {
    Varint(u64),
    I64([u8; 8]),
    Len(&'a [u8]),
    I32([u8; 4]),
    Group,
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            bail!(
                "field at byte {} needs {n} bytes, {} left",
                self.pos,
                self.buf.len() - self.pos
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| anyhow!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            if i == 9 && b > 1 {
                bail!("varint overflows 64 bits at byte {}", self.pos - 1);
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        unreachable!()
    }

    /// Next field, or None at the end of the message. Groups (deprecated) are skipped whole.
    fn field(&mut self) -> Result<Option<(u32, Field<'a>)>> {
        if self.done() {
            return Ok(None);
        }
        let (number, wire) = self.key()?;
        if wire == WIRE_EGROUP {
            bail!("unmatched end-group for field {number}");
        }
        Ok(Some((number, self.value(number, wire, 0)?)))
    }

    fn key(&mut self) -> Result<(u32, u8)> {
        let at = self.pos;
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > u32::MAX as u64 >> 3 {
            bail!("invalid field number {number} at byte {at}");
        }
        Ok((number as u32, (key & 7) as u8))
    }

    fn value(&mut self, number: u32, wire: u8, depth: u32) -> Result<Field<'a>> {
        Ok(match wire {
            WIRE_VARINT => Field::Varint(self.varint()?),
            WIRE_I64 => Field::I64(self.take(8)?.try_into().unwrap()),
            WIRE_LEN => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| anyhow!("length {len} too large"))?;
                Field::Len(self.take(len)?)
            }
            WIRE_I32 => Field::I32(self.take(4)?.try_into().unwrap()),
            WIRE_SGROUP => {
                if depth >= 64 {
                    bail!("groups nested too deeply");
                }
                loop {
                    if self.done() {
                        bail!("group for field {number} has no end");
                    }
                    let (n, w) = self.key()?;
                    if w == WIRE_EGROUP {
                        if n != number {
                            bail!("group for field {number} ended by field {n}");
                        }
                        break;
                    }
                    self.value(n, w, depth + 1)?;
                }
                Field::Group
            }
            other => bail!("invalid wire type {other} for field {number}"),
        })
    }
}

fn wrong_type(message: &str, number: u32) -> anyhow::Error {
    anyhow!("{message} field {number} has an unexpected wire type")
}

fn decode_event(data: &[u8], out: &mut Vec<Scalar>) -> Result<()> {
    let mut wall_time = 0f64;
    let mut step = 0i64;
    let mut values: Vec<(String, Option<f32>)> = Vec::new();
    let mut d = Decoder::new(data);
    while let Some((number, field)) = d.field()? {
        match (number, field) {
            (1, Field::I64(b)) => wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => step = v as i64,
            // Repeated embedded messages merge: several `summary` fields concatenate values.
            (5, Field::Len(summary)) => decode_summary(summary, &mut values)?,
            (1 | 2 | 5, _) => return Err(wrong_type("Event", number)),
            _ => {} // file_version, log_message, graph_def, ...: not ours to read here
        }
    }
    out.extend(values.into_iter().filter_map(|(tag, v)| {
        v.map(|v| Scalar {
            tag,
            step,
            value: v as f64,
            wall_time,
        })
    }));
    Ok(())
}

fn decode_summary(data: &[u8], values: &mut Vec<(String, Option<f32>)>) -> Result<()> {
    let mut d = Decoder::new(data);
    while let Some((number, field)) = d.field()? {
        match (number, field) {
            (1, Field::Len(value)) => values.push(decode_value(value)?),
            (1, _) => return Err(wrong_type("Summary", number)),
            _ => {}
        }
    }
    Ok(())
}

fn decode_value(data: &[u8]) -> Result<(String, Option<f32>)> {
    let mut tag = String::new();
    let mut simple_value = None;
    let mut d = Decoder::new(data);
    while let Some((number, field)) = d.field()? {
        match (number, field) {
            (1, Field::Len(b)) => {
                tag = String::from_utf8(b.to_vec())
                    .map_err(|_| anyhow!("Summary.Value tag is not UTF-8"))?
            }
            (2, Field::I32(b)) => simple_value = Some(f32::from_le_bytes(b)),
            (1 | 2, _) => return Err(wrong_type("Summary.Value", number)),
            _ => {} // node_name, metadata, image, histo, tensor, ...
        }
    }
    Ok((tag, simple_value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn varint_encoding() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut v = Vec::new();
        put_varint(&mut v, -1i64 as u64);
        assert_eq!(v.len(), 10);
        let mut d = Decoder::new(&v);
        assert_eq!(d.varint().unwrap() as i64, -1);
    }

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        w.scalar("loss", 1, 2.5).unwrap();
        w.scalar("loss", -3, 0.1).unwrap();
        w.scalars(7, &[("a/x".to_string(), 1e-8), ("b".to_string(), f64::NAN)])
            .unwrap();
        w.scalars(8, &[]).unwrap();
        w.scalar("big", i64::MAX, f64::INFINITY).unwrap();
        let got = read_scalars(w.path()).unwrap();
        let summary: Vec<(&str, i64, f64)> = got
            .iter()
            .map(|s| (s.tag.as_str(), s.step, s.value))
            .collect();
        assert_eq!(summary.len(), 5);
        assert_eq!(summary[0], ("loss", 1, 2.5));
        assert_eq!(summary[1], ("loss", -3, 0.1f32 as f64));
        assert_eq!(summary[2], ("a/x", 7, 1e-8f32 as f64));
        assert_eq!((summary[3].0, summary[3].1), ("b", 7));
        assert!(summary[3].2.is_nan());
        assert_eq!(summary[4], ("big", i64::MAX, f64::INFINITY));
        let now = now_secs();
        assert!(got
            .iter()
            .all(|s| s.wall_time > now - 60.0 && s.wall_time <= now));
        // The first record is the file_version event.
        let bytes = std::fs::read(w.path()).unwrap();
        assert!(bytes
            .windows(FILE_VERSION.len())
            .any(|x| x == FILE_VERSION.as_bytes()));
    }

    #[test]
    fn unique_names_and_dir_order() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        let mut w1 = EventWriter::create(&sub).unwrap();
        let mut w2 = EventWriter::create(&sub).unwrap();
        assert_ne!(w1.path(), w2.path());
        w1.scalar("x", 1, 1.0).unwrap();
        w2.scalar("x", 2, 2.0).unwrap();
        std::fs::write(sub.join("unrelated.txt"), b"not an event file").unwrap();
        let all = read_dir_scalars(&sub).unwrap();
        let mut steps: Vec<i64> = all.iter().map(|s| s.step).collect();
        steps.sort();
        assert_eq!(steps, [1, 2]);
    }

    #[test]
    fn corrupted_byte_is_an_error_with_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("loss", 1, 1.0).unwrap();
        w.scalar("loss", 2, 2.0).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let good = std::fs::read(&path).unwrap();
        let first_len = 16 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let second_len =
            16 + u64::from_le_bytes(good[first_len..first_len + 8].try_into().unwrap()) as usize;

        // Every single flipped byte is detected (by one of the two CRCs).
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let e = format!("{:#}", read_scalars(&path).unwrap_err());
            assert!(e.contains(&path.display().to_string()), "{e}");
            let record_start = if i < first_len {
                0
            } else if i < first_len + second_len {
                first_len
            } else {
                first_len + second_len
            };
            assert!(
                e.contains(&format!("byte offset {record_start}:")),
                "{i}: {e}"
            );
            assert!(e.contains("checksum mismatch"), "{e}");
        }

        // A torn last record (crash mid-write) is an error at its offset.
        for cut in [1, 5, 12, 15] {
            std::fs::write(&path, &good[..good.len() - cut]).unwrap();
            let e = format!("{:#}", read_scalars(&path).unwrap_err());
            assert!(
                e.contains(&format!("byte offset {}:", first_len + second_len)),
                "{e}"
            );
            assert!(e.contains("torn record"), "{e}");
        }
        std::fs::write(&path, &good).unwrap();
        assert_eq!(read_scalars(&path).unwrap().len(), 2);
    }

    #[test]
    fn skips_unknown_fields_of_every_wire_type() {
        // An Event with unknown fields of each wire type around the known ones, and a Value
        // with an unknown field plus one without simple_value.
        let mut val = Vec::new();
        put_bytes(&mut val, 1, b"t");
        put_key(&mut val, 7, WIRE_VARINT);
        put_varint(&mut val, 12345);
        put_key(&mut val, 2, WIRE_I32);
        val.extend_from_slice(&3.5f32.to_le_bytes());
        let mut no_simple = Vec::new();
        put_bytes(&mut no_simple, 1, b"image");
        put_bytes(&mut no_simple, 4, b"png bytes");
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &val);
        put_bytes(&mut summary, 1, &no_simple);

        let mut ev = Vec::new();
        put_key(&mut ev, 9, WIRE_I64);
        ev.extend_from_slice(&[0xff; 8]);
        put_key(&mut ev, 1, WIRE_I64);
        ev.extend_from_slice(&10.0f64.to_le_bytes());
        put_key(&mut ev, 10, WIRE_I32);
        ev.extend_from_slice(&[0xff; 4]);
        put_key(&mut ev, 11, WIRE_SGROUP);
        put_key(&mut ev, 1, WIRE_VARINT);
        put_varint(&mut ev, 1);
        put_key(&mut ev, 12, WIRE_SGROUP);
        put_key(&mut ev, 12, WIRE_EGROUP);
        put_key(&mut ev, 11, WIRE_EGROUP);
        put_key(&mut ev, 2, WIRE_VARINT);
        put_varint(&mut ev, 42);
        put_bytes(&mut ev, 4, b"graph");
        put_bytes(&mut ev, 5, &summary);

        let mut out = Vec::new();
        decode_event(&ev, &mut out).unwrap();
        assert_eq!(
            out,
            [Scalar {
                tag: "t".into(),
                step: 42,
                value: 3.5,
                wall_time: 10.0
            }]
        );

        // Malformed protobuf inside a record with valid CRCs is still an error.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.out.tfevents.bad");
        let mut bytes = frame_record(&ev);
        bytes.extend(frame_record(&ev[..ev.len() - 1]));
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", read_scalars(&path).unwrap_err());
        let off = frame_record(&ev).len();
        assert!(e.contains(&format!("byte offset {off}:")), "{e}");
        assert!(e.contains("bad Event protobuf"), "{e}");
    }
}
