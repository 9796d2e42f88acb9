//! TensorBoard event files: scalars and PNG images, so that `tensorboard --logdir runs` shows a
//! run while it trains.
//!
//! An event file is a sequence of TFRecords, each holding one `tensorflow.Event` protobuf.
//! The few messages needed are declared here with `prost`'s derive (field numbers from
//! TensorFlow's `event.proto` and `summary.proto`); no protobuf compiler is involved. The
//! published `tensorboard-rs` crate was not used: its last release depends on `protobuf` 2 and
//! `image` 0.23, both superseded. docs/looking.md says how the files were checked against
//! TensorBoard's own reader.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use prost::Message;

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventBody", tags = "3, 5, 7")]
    pub body: Option<EventBody>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventBody {
    /// The first event of every file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "ValueKind", tags = "2, 4")]
    pub value: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(SummaryImage),
}

/// `tensorflow.Summary.Image`: an encoded (PNG) image.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryImage {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.SessionLog`. A `START` at step N tells TensorBoard that the run restarted there
/// (a resumed run): it drops what an earlier session wrote past step N.
#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub const SESSION_START: i32 = 1;

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC of CRCs stays informative.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its checksum, the data, the data's checksum (little-endian).
fn frame(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc(data).to_le_bytes());
    record
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends events to a new `events.out.tfevents.<time>.<host>` file in a run directory. Each
/// session of a run (a resume) writes its own file, which TensorBoard reads as one run.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let secs = now() as u64;
        // Two sessions in one second (a quick resume) must not share a file.
        let path = (0..)
            .map(|n| match n {
                0 => dir.join(format!("events.out.tfevents.{secs}.{host}")),
                n => dir.join(format!("events.out.tfevents.{secs}.{host}.{n}")),
            })
            .find(|p| !p.exists())
            .expect("a free event file name exists");
        let file = File::create(&path)
            .with_context(|| format!("cannot create the event file {}", path.display()))?;
        let mut writer = Self {
            path,
            file: BufWriter::new(file),
        };
        writer.write(0, EventBody::FileVersion("brain.Event:2".into()))?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, step: usize, body: EventBody) -> anyhow::Result<()> {
        let event = Event {
            wall_time: now(),
            step: step as i64,
            body: Some(body),
        };
        self.file
            .write_all(&frame(&event.encode_to_vec()))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Scalars at `step`, one summary value each.
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> anyhow::Result<()> {
        let value = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(tag, v)| SummaryValue {
                tag: tag.to_string(),
                value: Some(ValueKind::SimpleValue(v as f32)),
            })
            .collect();
        self.write(step, EventBody::Summary(Summary { value }))
    }

    /// An RGB image at `step`, stored PNG-encoded.
    pub fn image(&mut self, step: usize, tag: &str, image: &image::RgbImage) -> anyhow::Result<()> {
        let png = super::png_bytes(image)?;
        let image = SummaryImage {
            height: image.height() as i32,
            width: image.width() as i32,
            colorspace: 3,
            encoded_image_string: png,
        };
        let value = vec![SummaryValue {
            tag: tag.to_string(),
            value: Some(ValueKind::Image(image)),
        }];
        self.write(step, EventBody::Summary(Summary { value }))
    }

    /// Marks a resumed session: TensorBoard forgets what an earlier session logged after `step`.
    pub fn session_start(&mut self, step: usize) -> anyhow::Result<()> {
        self.write(
            step,
            EventBody::SessionLog(SessionLog {
                status: SESSION_START,
            }),
        )
    }

    /// Hands what is buffered to the OS, so a TensorBoard watching the run sees it.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.file
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Reads every event of a file back, checking each record's framing and both checksums.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Event>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let at = bytes.len() - rest.len();
        let truncated = || anyhow!("{}: record at byte {at} is truncated", path.display());
        let header = rest.get(..12).ok_or_else(truncated)?;
        let length = u64::from_le_bytes(header[..8].try_into().unwrap());
        let length_crc = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if masked_crc(&header[..8]) != length_crc {
            bail!(
                "{}: record at byte {at}: bad length checksum",
                path.display()
            );
        }
        let length = usize::try_from(length).map_err(|_| truncated())?;
        let end = 12usize.checked_add(length).ok_or_else(truncated)?;
        let data = rest.get(12..end).ok_or_else(truncated)?;
        let crc = rest.get(end..end + 4).ok_or_else(truncated)?;
        if masked_crc(data) != u32::from_le_bytes(crc.try_into().unwrap()) {
            bail!("{}: record at byte {at}: bad data checksum", path.display());
        }
        events.push(
            Event::decode(data)
                .with_context(|| format!("{}: record at byte {at}", path.display()))?,
        );
        rest = &rest[end + 4..];
    }
    Ok(events)
}

/// The event files of a run directory, oldest first.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record TensorBoard's own writer (`tensorboard.summary.writer.record_writer`,
    /// PyPI tensorboard 2.21) frames around the same bytes.
    #[test]
    fn records_are_framed_as_tensorboard_frames_them() {
        let expected: [u8; 28] = [
            12, 0, 0, 0, 0, 0, 0, 0, 244, 200, 254, 10, 115, 99, 101, 45, 114, 115, 32, 101, 118,
            101, 110, 116, 96, 197, 127, 117,
        ];
        assert_eq!(frame(b"sce-rs event"), expected);
        // CRC-32C's check value (RFC 3720), under TensorFlow's mask.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn scalars_and_images_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer
            .scalars(
                3,
                &[("train/loss", 1.5), ("train/lr", 0.25), ("nan", f64::NAN)],
            )
            .unwrap();
        let image = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8, 7]));
        writer.image(0, "augmentations", &image).unwrap();
        writer.session_start(2).unwrap();
        writer.flush().unwrap();
        let path = writer.path().to_path_buf();
        assert_eq!(event_files(dir.path()), vec![path.clone()]);

        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0].body,
            Some(EventBody::FileVersion("brain.Event:2".into()))
        );
        let Some(EventBody::Summary(summary)) = &events[1].body else {
            panic!("not a summary: {:?}", events[1]);
        };
        assert_eq!(events[1].step, 3);
        let scalars: Vec<_> = summary
            .value
            .iter()
            .map(|v| (v.tag.as_str(), v.value.clone()))
            .collect();
        assert_eq!(
            scalars,
            vec![
                ("train/loss", Some(ValueKind::SimpleValue(1.5))),
                ("train/lr", Some(ValueKind::SimpleValue(0.25))),
            ],
            "a non-finite value is left out"
        );
        let Some(EventBody::Summary(summary)) = &events[2].body else {
            panic!("not a summary: {:?}", events[2]);
        };
        let Some(ValueKind::Image(stored)) = &summary.value[0].value else {
            panic!("not an image");
        };
        assert_eq!((stored.width, stored.height, stored.colorspace), (5, 4, 3));
        let decoded = image::load_from_memory(&stored.encoded_image_string)
            .unwrap()
            .to_rgb8();
        assert_eq!(decoded, image);
        assert_eq!(
            events[3].body,
            Some(EventBody::SessionLog(SessionLog {
                status: SESSION_START
            }))
        );
        assert!(events.windows(2).all(|w| w[0].wall_time <= w[1].wall_time));
    }

    #[test]
    fn damaged_records_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer.scalars(1, &[("loss", 2.0)]).unwrap();
        writer.flush().unwrap();
        let path = writer.path().to_path_buf();
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let last = flipped.len() - 6;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let error = read_events(&path).unwrap_err().to_string();
        assert!(error.contains("bad data checksum"), "{error}");

        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        let error = read_events(&path).unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
    }
}
