//! The downloader against a loopback HTTP server started here, serving generated files (never
//! the network): good files land under their name, a corrupted one is rejected and leaves
//! nothing behind, archives are unpacked, and the locator fetches a dataset end to end.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use sce_data::download::{
    Remote, RemoteFile, Unpack, download_file, download_file_with, fetch, file_md5,
};
use sce_data::{DatasetKind, Locator, OpenOptions, Split};

/// Serves `files` (path → bytes) on 127.0.0.1 from a background thread; returns the base URL.
fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let path = request.url().trim_start_matches('/').to_string();
            let response = match files.get(&path) {
                Some(bytes) => tiny_http::Response::from_data(bytes.clone()),
                None => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
            };
            let _ = request.respond(response);
        }
    });
    format!("http://127.0.0.1:{port}/")
}

fn md5_of(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    std::fs::write(&path, bytes).unwrap();
    file_md5(&path).unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn good_file_is_kept_and_corrupt_file_is_rejected() {
    let good = b"the real payload".to_vec();
    let expected = md5_of(&good);
    let mut files = HashMap::new();
    files.insert("good.bin".to_string(), good.clone());
    files.insert("corrupt.bin".to_string(), b"the real paylaod".to_vec());
    let base = serve(files);
    let dir = tempfile::tempdir().unwrap();

    let mut seen = 0u64;
    let dest = dir.path().join("good.bin");
    download_file(
        &format!("{base}good.bin"),
        &dest,
        &expected,
        1 << 20,
        &mut |_, n, _| seen = n,
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), good);
    assert_eq!(seen, good.len() as u64, "progress reports every byte");

    let dest = dir.path().join("corrupt.bin");
    let err = download_file(
        &format!("{base}corrupt.bin"),
        &dest,
        &expected,
        1 << 20,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(
        !dest.exists(),
        "a corrupted download must not appear under its name"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");

    let err = download_file(
        &format!("{base}missing.bin"),
        &dir.path().join("m"),
        &expected,
        1 << 20,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing.bin"), "{err}");
}

/// A body larger than the file can be (a mirror serving something else, or without end) is
/// cut off at the file's size cap and its partial file removed; a download that cannot be
/// written (here the partial file's name is taken by a folder, as a full disk would fail it)
/// says "cannot write", not "cannot read".
#[test]
fn oversized_bodies_are_cut_off_and_write_failures_named() {
    let body = vec![7u8; 4096];
    let md5 = md5_of(&body);
    let mut files = HashMap::new();
    files.insert("big.bin".to_string(), body);
    let base = serve(files);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.bin");
    let err = download_file(
        &format!("{base}big.bin"),
        &dest,
        &md5,
        1000,
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at most 1000"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing kept"
    );

    std::fs::create_dir(sce_data::download::partial_path(&dest)).unwrap();
    let err = download_file(
        &format!("{base}big.bin"),
        &dest,
        &md5,
        1 << 20,
        &mut |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot write"), "{err}");
}

#[test]
fn archives_are_unpacked_and_mirrors_tried_in_order() {
    // A CIFAR-10-shaped tar.gz with one record per file.
    let record: Vec<u8> = std::iter::once(7u8)
        .chain((0..3072).map(|i| (i % 256) as u8))
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(record.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("cifar-10-batches-bin/{name}"),
            record.as_slice(),
        )
        .unwrap();
    }
    let archive = gz(&tar.into_inner().unwrap());
    let md5: &'static str = Box::leak(md5_of(&archive).into_boxed_str());
    let mut files = HashMap::new();
    files.insert("cifar-10-binary.tar.gz".to_string(), archive);
    let base = serve(files);
    let remote = Remote {
        // The first base answers 404 for everything: the second must be tried.
        base_urls: Box::leak(
            vec![
                Box::leak(format!("{base}nowhere/").into_boxed_str()) as &str,
                Box::leak(base.clone().into_boxed_str()) as &str,
            ]
            .into_boxed_slice(),
        ),
        files: Box::leak(
            vec![RemoteFile {
                name: "cifar-10-binary.tar.gz",
                md5,
                max_bytes: 1 << 20,
                unpack: Unpack::TarGz,
            }]
            .into_boxed_slice(),
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    fetch(&remote, dir.path(), None, &mut |_, _, _| {}).unwrap();
    assert!(DatasetKind::Cifar10.present(dir.path()));
    assert!(
        !dir.path().join("cifar-10-binary.tar.gz").exists(),
        "archive removed after unpacking"
    );
    let test = DatasetKind::Cifar10
        .open(Split::Test, dir.path(), &OpenOptions::default())
        .unwrap();
    assert_eq!(test.get(0).unwrap().label, Some(7));
}

/// The real Fashion-MNIST files served from loopback must match the published checksums and
/// land where the locator looks next time. Needs `$SCE_DATA_DIR`.
#[test]
fn locator_downloads_into_the_cache_through_a_mirror() {
    let Some(data) = std::env::var_os("SCE_DATA_DIR").map(std::path::PathBuf::from) else {
        eprintln!(
            "skipping locator_downloads_into_the_cache_through_a_mirror: SCE_DATA_DIR is not set"
        );
        return;
    };
    // Serve MNIST (canonical files) from the shared folder.
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(data.join("mnist")).unwrap() {
        let path = entry.unwrap().path();
        files.insert(
            path.file_name().unwrap().to_str().unwrap().to_string(),
            std::fs::read(&path).unwrap(),
        );
    }
    let base = serve(files);
    let cache = tempfile::tempdir().unwrap();
    let locator = Locator {
        data_dir: None,
        env_dir: None,
        cache_dir: Some(cache.path().to_path_buf()),
        download: true,
        mirror: Some(base),
    };
    let mut progress_calls = 0;
    let root = locator
        .resolve(DatasetKind::Mnist, &mut |_, _, _| progress_calls += 1)
        .unwrap();
    assert_eq!(root, cache.path().join("mnist"));
    assert!(progress_calls > 0);
    let test = DatasetKind::Mnist
        .open(Split::Test, &root, &OpenOptions::default())
        .unwrap();
    assert_eq!(test.len(), 10_000);

    // Offline (no mirror, downloads off): the error lists where it looked and what to put there.
    let offline = Locator {
        download: false,
        mirror: None,
        cache_dir: Some(cache.path().join("empty")),
        ..locator
    };
    let err = offline
        .resolve(DatasetKind::Cifar100, &mut |_, _, _| {})
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("cifar100") && message.contains("cifar-100-binary"),
        "{message}"
    );
}

/// How the throttled server sends a file: `chunk` bytes every `pause`, stalling for `stall`
/// once `stall_at` bytes are out (only when the request has no Range header).
#[derive(Clone, Copy)]
struct Throttle {
    chunk: usize,
    pause: std::time::Duration,
    stall_at: Option<usize>,
    stall: std::time::Duration,
}

struct SlowReader {
    data: Vec<u8>,
    pos: usize,
    throttle: Throttle,
    stalled: bool,
}

impl std::io::Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.stalled && self.throttle.stall_at.is_some_and(|at| self.pos >= at) {
            self.stalled = true;
            std::thread::sleep(self.throttle.stall);
        }
        std::thread::sleep(self.throttle.pause);
        let n = self
            .throttle
            .chunk
            .min(buf.len())
            .min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Serves `data` as `file.bin`, throttled, honouring `Range: bytes=N-` with 206; records the
/// ranges asked for. One thread per request, so a stalled transfer blocks nothing else.
fn serve_slowly(data: Vec<u8>, throttle: Throttle) -> (String, Arc<std::sync::Mutex<Vec<u64>>>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let data = data.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let from = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Range"))
                    .and_then(|h| {
                        h.value
                            .as_str()
                            .strip_prefix("bytes=")?
                            .trim_end_matches('-')
                            .parse::<u64>()
                            .ok()
                    });
                seen.lock().unwrap().push(from.unwrap_or(0));
                let (status, body, throttle) = match from {
                    Some(from) => (
                        206,
                        data[from as usize..].to_vec(),
                        Throttle {
                            stall_at: None,
                            ..throttle
                        },
                    ),
                    None => (200, data, throttle),
                };
                let len = body.len();
                let reader = SlowReader {
                    data: body,
                    pos: 0,
                    throttle,
                    stalled: false,
                };
                let response = tiny_http::Response::new(
                    tiny_http::StatusCode(status),
                    Vec::new(),
                    reader,
                    Some(len),
                    None,
                );
                let _ = request.respond(response);
            });
        }
    });
    (format!("http://127.0.0.1:{port}/file.bin"), ranges)
}

/// A slow but steady transfer is not cut off by a total time budget: 128 KiB at 8 KiB per
/// 100 ms takes about 1.6 s, longer than the 1 s idle timeout, and completes.
#[test]
fn a_slow_steady_download_completes() {
    let data: Vec<u8> = (0..131072u32).map(|i| (i % 251) as u8).collect();
    let md5 = md5_of(&data);
    let (url, _) = serve_slowly(
        data.clone(),
        Throttle {
            chunk: 8192,
            pause: std::time::Duration::from_millis(100),
            stall_at: None,
            stall: std::time::Duration::ZERO,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file.bin");
    let start = std::time::Instant::now();
    download_file_with(
        &url,
        &dest,
        &md5,
        1 << 20,
        &mut |_, _, _| {},
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    assert!(start.elapsed() > std::time::Duration::from_secs(1));
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

/// A transfer that stalls is abandoned after the idle timeout with its partial file kept; the
/// next attempt asks for the rest with a Range request and completes the file.
#[test]
fn a_stalled_download_is_abandoned_and_resumed() {
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
    let md5 = md5_of(&data);
    let (url, ranges) = serve_slowly(
        data.clone(),
        Throttle {
            chunk: 4096,
            pause: std::time::Duration::from_millis(1),
            stall_at: Some(16384),
            stall: std::time::Duration::from_secs(4),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file.bin");
    let idle = std::time::Duration::from_secs(1);
    let err = download_file_with(&url, &dest, &md5, 1 << 20, &mut |_, _, _| {}, idle).unwrap_err();
    assert!(err.to_string().contains("partial file"), "{err}");
    let part = sce_data::download::partial_path(&dest);
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < 65536, "{kept} bytes kept");
    assert!(!dest.exists());

    let mut last = 0;
    download_file_with(&url, &dest, &md5, 1 << 20, &mut |_, n, _| last = n, idle).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(last, 65536, "progress counts the resumed bytes too");
    assert!(!part.exists());
    assert_eq!(
        *ranges.lock().unwrap(),
        [0, kept],
        "the second request resumed"
    );
}

/// Two jobs sharing a cache: the second waits for the first's lock instead of deleting its
/// files, and the lock is released when the first is done.
#[test]
fn the_download_lock_serialises_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let held = sce_data::download::lock_dir(dir.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let _lock = sce_data::download::lock_dir(&path).unwrap();
        tx.send(()).unwrap();
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "the second job waits while the first holds the lock"
    );
    drop(held);
    rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    waiter.join().unwrap();
}
