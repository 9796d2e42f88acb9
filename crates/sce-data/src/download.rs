//! Fetching datasets from their canonical addresses: md5-verified, written to a partial file
//! and renamed, so an interrupted or corrupted download never looks complete; an interrupted
//! one is continued (HTTP Range) by the next attempt.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::DataError;
use crate::datasets::DatasetKind;

/// How a downloaded file becomes dataset files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpack {
    /// Keep as downloaded (IDX `.gz` files are read directly).
    Keep,
    /// A `.tar.gz` archive, extracted into the dataset folder and then deleted.
    TarGz,
    /// A `.zip` archive, extracted and then deleted.
    Zip,
}

/// One file of a dataset, its md5, and the most bytes a download of it may take: about 1.2×
/// the published size, so a server sending an endless or wrong body is cut off before it fills
/// the disk, while a re-compressed mirror copy (a few bytes more) still passes to the md5 check.
#[derive(Clone, Copy, Debug)]
pub struct RemoteFile {
    pub name: &'static str,
    pub md5: &'static str,
    pub max_bytes: u64,
    pub unpack: Unpack,
}

const MB: u64 = 1 << 20;

/// Where a dataset can be downloaded from: base URLs tried in order, and its files.
#[derive(Clone, Copy, Debug)]
pub struct Remote {
    pub base_urls: &'static [&'static str],
    pub files: &'static [RemoteFile],
}

const fn keep(name: &'static str, md5: &'static str, max_bytes: u64) -> RemoteFile {
    RemoteFile {
        name,
        md5,
        max_bytes,
        unpack: Unpack::Keep,
    }
}

const MNIST_FILES: &[RemoteFile] = &[
    keep(
        "train-images-idx3-ubyte.gz",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        12 * MB,
    ),
    keep(
        "train-labels-idx1-ubyte.gz",
        "d53e105ee54ea40749a09fcbcd1e9432",
        MB / 16,
    ),
    keep(
        "t10k-images-idx3-ubyte.gz",
        "9fb629c4189551a2d022fa330f9573f3",
        2 * MB,
    ),
    keep(
        "t10k-labels-idx1-ubyte.gz",
        "ec29112dd5afa0611ce80d1b7f02629c",
        MB / 64,
    ),
];

const FASHION_MNIST_FILES: &[RemoteFile] = &[
    keep(
        "train-images-idx3-ubyte.gz",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        32 * MB,
    ),
    keep(
        "train-labels-idx1-ubyte.gz",
        "25c81989df183df01b3e8a0aad5dffbe",
        MB / 16,
    ),
    keep(
        "t10k-images-idx3-ubyte.gz",
        "bef4ecab320f06d8554ea6380940ec79",
        6 * MB,
    ),
    keep(
        "t10k-labels-idx1-ubyte.gz",
        "bb300cfdad3c16e7a12a480ee83cd310",
        MB / 64,
    ),
];

/// The canonical download of `kind`, if it has one (ImageNet and user folders do not).
/// Checksums are those published with the datasets (and used by torchvision).
pub fn remote(kind: DatasetKind) -> Option<Remote> {
    Some(match kind {
        DatasetKind::Mnist => Remote {
            base_urls: &[
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ],
            files: MNIST_FILES,
        },
        DatasetKind::FashionMnist => Remote {
            base_urls: &[
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            ],
            files: FASHION_MNIST_FILES,
        },
        DatasetKind::Cifar10 => Remote {
            base_urls: &["https://www.cs.toronto.edu/~kriz/"],
            files: &[RemoteFile {
                name: "cifar-10-binary.tar.gz",
                md5: "c32a1d4ab5d03f1284b67883e8d87530",
                max_bytes: 200 * MB,
                unpack: Unpack::TarGz,
            }],
        },
        DatasetKind::Cifar100 => Remote {
            base_urls: &["https://www.cs.toronto.edu/~kriz/"],
            files: &[RemoteFile {
                name: "cifar-100-binary.tar.gz",
                md5: "03b5dce01913d631647c71ecec9e9cb8",
                max_bytes: 200 * MB,
                unpack: Unpack::TarGz,
            }],
        },
        DatasetKind::Stl10 => Remote {
            base_urls: &["http://ai.stanford.edu/~acoates/stl10/"],
            files: &[RemoteFile {
                name: "stl10_binary.tar.gz",
                md5: "91f7769df0f17e558f3565bffb0c7dfb",
                max_bytes: 3000 * MB,
                unpack: Unpack::TarGz,
            }],
        },
        DatasetKind::TinyImagenet => Remote {
            base_urls: &["http://cs231n.stanford.edu/"],
            files: &[RemoteFile {
                name: "tiny-imagenet-200.zip",
                md5: "90528d7ca1a48142e341f4ef8d21d0de",
                max_bytes: 290 * MB,
                unpack: Unpack::Zip,
            }],
        },
        DatasetKind::Imagenet | DatasetKind::Imagenet100 | DatasetKind::Folder => return None,
    })
}

/// Download progress: bytes received so far and the total, when the server says it.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, Option<u64>);

/// The partial download of `path`: kept when a download is interrupted (a dropped
/// connection, a stall, a killed process) and continued by the next attempt. Only one process
/// downloads into a folder at a time (see [`lock_dir`]), so the name can be fixed.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Locks `dir` for downloading: an OS file lock on `dir/.download.lock`, held until the
/// returned file is dropped (or the process ends). A second job sharing the cache waits.
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, DataError> {
    std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
    let path = dir.join(".download.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(DataError::io(&path))?;
    file.lock().map_err(DataError::io(&path))?;
    Ok(file)
}

/// md5 of a file, as lowercase hex.
pub fn file_md5(path: &Path) -> Result<String, DataError> {
    let mut file = std::fs::File::open(path).map_err(DataError::io(path))?;
    let mut hasher = Md5::new();
    std::io::copy(&mut file, &mut hasher).map_err(DataError::io(path))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// How long a download may receive nothing before it is abandoned (and later resumed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Downloads `url` to `dest` if its md5 is `md5`; see [`download_file_with`].
pub fn download_file(
    url: &str,
    dest: &Path,
    md5: &str,
    max_bytes: u64,
    progress: Progress,
) -> Result<(), DataError> {
    download_file_with(url, dest, md5, max_bytes, progress, IDLE_TIMEOUT)
}

/// Downloads `url` to `dest` if its md5 is `md5`. The bytes go to [`partial_path`], which is
/// renamed only after the checksum matched. A transfer that receives nothing for `idle` (not
/// a total budget: a slow link is fine) stops with an error and keeps the partial file; the
/// next call continues it with an HTTP Range request (or starts over if the server ignores
/// ranges). A complete file with the wrong checksum is removed, and so is one that grows past
/// `max_bytes` (a server sending an endless or wrong body).
pub fn download_file_with(
    url: &str,
    dest: &Path,
    md5: &str,
    max_bytes: u64,
    progress: Progress,
    idle: Duration,
) -> Result<(), DataError> {
    let fail = |reason: String| DataError::Download {
        url: url.to_string(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(idle))
        .timeout_per_read(Some(idle))
        .http_status_as_error(false)
        .build()
        .into();
    let part = partial_path(dest);
    let offset = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url);
    if offset > 0 {
        request = request.header("Range", format!("bytes={offset}-"));
    }
    let response = request.call().map_err(|e| fail(e.to_string()))?;
    let status = response.status().as_u16();
    let resumed = match status {
        206 if offset > 0 => true,
        200 => false,
        // The partial file already holds everything the server has.
        416 if offset > 0 => return finish(&part, dest, md5),
        _ => return Err(fail(format!("HTTP status {status}"))),
    };
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let start = if resumed { offset } else { 0 };
    let total = length.map(|l| l + start);
    let too_big = |bytes: u64| {
        let _ = std::fs::remove_file(&part);
        fail(format!(
            "the server sends {bytes} bytes or more, but the file has at most {max_bytes}; \
             the mirror serves something else (partial file removed)"
        ))
    };
    if let Some(total) = total.filter(|&t| t > max_bytes) {
        return Err(too_big(total));
    }
    let mut reader = response.into_body().into_reader();
    let mut file = std::fs::File::options()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(DataError::write(&part))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut received = start;
    progress(url, received, total);
    loop {
        let n = reader.read(&mut buf).map_err(|e| {
            fail(format!(
                "{e} after {received} bytes; the partial file {} is kept and the next attempt \
                 continues it",
                part.display()
            ))
        })?;
        if n == 0 {
            break;
        }
        received += n as u64;
        if received > max_bytes {
            drop(file);
            return Err(too_big(received));
        }
        file.write_all(&buf[..n]).map_err(DataError::write(&part))?;
        progress(url, received, total);
    }
    file.sync_all().map_err(DataError::write(&part))?;
    drop(file);
    finish(&part, dest, md5)
}

/// Checks a complete download and moves it under its final name, or removes it.
fn finish(part: &Path, dest: &Path, md5: &str) -> Result<(), DataError> {
    let actual = file_md5(part)?;
    if actual != md5 {
        let _ = std::fs::remove_file(part);
        return Err(DataError::Checksum {
            path: dest.to_path_buf(),
            expected: md5.to_string(),
            actual,
        });
    }
    std::fs::rename(part, dest).map_err(DataError::write(dest))
}

/// Downloads every file of `remote` into `dir` (trying each base URL in turn) and unpacks
/// archives there. `mirror`, when set, is tried before the canonical addresses.
pub fn fetch(
    remote: &Remote,
    dir: &Path,
    mirror: Option<&str>,
    progress: Progress,
) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
    let bases: Vec<String> = mirror
        .map(|m| format!("{}/", m.trim_end_matches('/')))
        .into_iter()
        .chain(remote.base_urls.iter().map(|b| b.to_string()))
        .collect();
    for file in remote.files {
        let dest = dir.join(file.name);
        let already = dest.is_file() && file_md5(&dest)? == file.md5;
        if !already {
            let mut errors = Vec::new();
            for base in &bases {
                let url = format!("{base}{}", file.name);
                match download_file(&url, &dest, file.md5, file.max_bytes, progress) {
                    Ok(()) => {
                        errors.clear();
                        break;
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if !errors.is_empty() {
                return Err(DataError::Download {
                    url: file.name.to_string(),
                    reason: errors.join("; "),
                });
            }
        }
        match file.unpack {
            Unpack::Keep => {}
            Unpack::TarGz | Unpack::Zip => {
                unpack(&dest, dir, file.unpack)?;
                std::fs::remove_file(&dest).map_err(DataError::io(&dest))?;
            }
        }
    }
    Ok(())
}

/// Extracts an archive into a temporary folder of `dir`, then moves its top-level entries into
/// `dir`, so a partial extraction never sits under the final names.
fn unpack(archive: &Path, dir: &Path, kind: Unpack) -> Result<(), DataError> {
    let staging = dir.join(".extract.partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(DataError::io(&staging))?;
    let result = (|| {
        let file = std::fs::File::open(archive).map_err(DataError::io(archive))?;
        match kind {
            Unpack::TarGz => tar::Archive::new(flate2::read::GzDecoder::new(file))
                .unpack(&staging)
                .map_err(|e| DataError::corrupt(archive, format!("cannot extract: {e}")))?,
            Unpack::Zip => zip::ZipArchive::new(file)
                .and_then(|mut z| z.extract(&staging))
                .map_err(|e| DataError::corrupt(archive, format!("cannot extract: {e}")))?,
            Unpack::Keep => {}
        }
        for entry in std::fs::read_dir(&staging).map_err(DataError::io(&staging))? {
            let entry = entry.map_err(DataError::io(&staging))?;
            let target = dir.join(entry.file_name());
            if target.exists() {
                let _ = std::fs::remove_dir_all(&target);
                let _ = std::fs::remove_file(&target);
            }
            std::fs::rename(entry.path(), &target).map_err(DataError::io(&target))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}
